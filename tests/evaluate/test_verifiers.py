import time

import pytest

from llm_alloy.evaluate.verifiers import (
    check_code,
    check_exact,
    check_math,
    check_numeric,
    extract_code,
    final_answer,
    run_code_tests,
    verify_answer,
)


def test_final_answer_extraction():
    assert final_answer("Let me think.\nSo the answer is 42.") == "42"
    assert final_answer(r"We get \boxed{7/2} in the end") == "7/2"
    assert final_answer("line one\nParis") == "Paris"
    # nested braces: the whole boxed expression, not a fall-through to the last line
    assert final_answer("so \\boxed{\\frac{1}{2}}\nDone.") == "\\frac{1}{2}"


def test_exact_numeric_and_math():
    assert check_exact("The final answer: **Paris**", "paris")
    assert not check_exact("Lyon", "Paris")
    assert check_numeric("so in total 1,234.5 apples", "1234.5")
    assert check_numeric("about 3.1415927", "3.14159265", tolerance=1e-6)
    assert not check_numeric("no number here", "4")
    assert check_math(r"the answer is $\frac{1}{2}$", "0.5")
    assert not check_math(r"the answer is $\frac{1}{3}$", "0.5")


def test_code_runs_tests_in_a_sandbox():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert extract_code(answer).startswith("def add")
    assert check_code(answer, "assert add(2, 3) == 5")
    assert not check_code(answer, "assert add(2, 3) == 6")
    assert not check_code("no code block at all", "assert True")


def test_code_limits_time_and_memory(tmp_path):
    started = time.monotonic()
    assert run_code_tests("while True:\n    pass", "", timeout_s=1.0).reason == "timeout"
    assert time.monotonic() - started < 5
    assert run_code_tests("blob = bytearray(4 * 1024**3)", "", memory_mb=256).reason == "failed"
    # It runs in an empty temporary folder, not where the caller is.
    assert run_code_tests("import os", f"assert os.getcwd() != {str(tmp_path)!r} and not os.listdir('.')").passed


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown verifier kind"):
        verify_answer("regex", "a", "b")
