"""Task metrics: the FusionBench metrics with their leniencies fixed, on hand-written responses."""

import pytest

from llm_alloy.evaluate.task_metrics import (
    MetricError,
    TaskScore,
    extract_choice,
    extract_program,
    normalize_text,
    score_response,
)


def value(metric, response, truth, **details):
    score = score_response(metric, response, truth, **details)
    assert isinstance(score, TaskScore)
    return score.value


# -- substring -------------------------------------------------------------------------------------
def test_substring_matches_normalised_whole_words():
    assert value("substring", "The capital of France is PARIS.", "Paris") == 1.0
    assert value("substring", "It was written by William Shakespeare, in 1597.", "william shakespeare") == 1.0
    assert value("substring", "The Eiffel tower", "the eiffel tower!") == 1.0  # articles and punctuation
    assert value("substring", "Lyon", "Paris") == 0.0
    # FusionBench's plain `in` would pass these.
    assert value("substring", "There are 10 of them", "1") == 0.0
    assert value("substring", "concatenate", "cat") == 0.0


def test_substring_keeps_decimals_and_drops_thousands_separators():
    assert normalize_text("It costs 3.5 dollars.") == "it costs 3.5 dollars"
    assert value("substring", "about 3.5 metres", "35") == 0.0
    assert value("substring", "about 3.5 metres", "3.5") == 1.0
    assert value("substring", "population 1,000 people", "1000") == 1.0


def test_substring_true_false_must_name_exactly_one_side():
    assert value("substring", "True.", "True") == 1.0
    assert value("substring", "The statement is false", "False") == 1.0
    assert value("substring", "It could be true or false.", "True") == 0.0
    assert value("substring", "It could be true or false.", "False") == 0.0
    assert value("substring", "Yes and no.", "yes") == 0.0
    assert value("substring", "No.", "yes") == 0.0
    assert score_response("substring", "True or false", "True").details["reason"].startswith("names both")


def test_substring_empty_ground_truth_is_not_a_match():
    score = score_response("substring", "anything at all", " . ")
    assert score.value == 0.0 and score.details["reason"] == "empty ground truth"


def test_answer_tags_are_read_first():
    assert value("substring", "Maybe Lyon? <answer>Paris</answer>", "paris") == 1.0
    assert value("substring", "Paris is nice, but <answer>Lyon</answer>", "paris") == 0.0
    assert value("numeric", "after 3 steps <answer>42</answer> (checked 7 times)", "42") == 1.0


# -- exact -----------------------------------------------------------------------------------------
def test_exact_compares_the_final_answer():
    assert value("exact", "The answer is elppa.", "elppa") == 1.0
    assert value("exact", "**BANANA**", "banana") == 1.0
    assert value("exact", "elppa is wrong, it's apple", "elppa") == 0.0


# -- choice ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response,letter",
    [
        ("(B)", "B"),
        ("B)", "B"),
        ("Answer: B", "B"),
        ("answer: **B**", "B"),
        ("**B**", "B"),
        ("The final answer is [C].", "C"),
        ("ANSWER IS D", "D"),
        ("B. Mars is red because of iron oxide.", "B"),
        ("C", "C"),
        ("the answer is (c)", "C"),
        ("<answer>D</answer>", "D"),
        ("Option (A) is wrong and (B) too, so the answer is (C).", "C"),
        ("I would say (A)... no wait, (D).", "D"),
        ("The answer is a bird that cannot fly.", None),
        ("I don't know.", None),
        ("", None),
    ],
)
def test_choice_letter_extraction(response, letter):
    assert extract_choice(response) == letter


def test_choice_stated_answer_beats_later_mentions():
    response = "The answer is (B). Option (C) is tempting, and (D) is a distractor."
    assert extract_choice(response) == "B"
    assert value("choice", response, "B") == 1.0
    assert value("choice", response, "(C)") == 0.0


def test_choice_valid_letters_and_bad_ground_truth():
    assert value("choice", "(E)", "E") == 1.0
    assert value("choice", "(E)", "A", choices="ABCD") == 0.0  # E is no option here
    assert score_response("choice", "(E)", "A", choices="ABCD").details["chosen"] is None
    with pytest.raises(MetricError, match="not one of the letters"):
        score_response("choice", "(A)", "Paris")
    with pytest.raises(MetricError, match="not one of the letters ABCD"):
        score_response("choice", "(A)", "E", choices="ABCD")
    with pytest.raises(MetricError, match="must be option letters"):
        score_response("choice", "(A)", "A", choices="A-D")


# -- numeric and math ------------------------------------------------------------------------------
def test_numeric_keeps_decimals():
    assert value("numeric", "The answer is 3.5", "35") == 0.0
    assert value("numeric", "The answer is 3.5", "3.5") == 1.0
    assert value("numeric", "Answer: 1,234 apples.", "1234") == 1.0
    assert value("numeric", "She has $24.75 left.", "24.75") == 1.0
    # GSM8K ground truths are full solutions with the result after ####.
    assert value("numeric", "So he has 29 pencils.", "3 * 12 = 36, 36 - 7 = 29\n#### 29") == 1.0
    assert value("numeric", "no idea", "29") == 0.0
    assert score_response("numeric", "Answer: -4.5", "-4.5").details["answer"] == -4.5


def test_numeric_ground_truth_without_a_number():
    with pytest.raises(MetricError, match="holds no number"):
        score_response("numeric", "42", "forty-two")


def test_math_uses_math_verify():
    assert value("math", r"so the result is $\boxed{\frac{1}{2}}$", r"\boxed{0.5}") == 1.0
    assert value("math", r"so the result is $\boxed{\frac{1}{3}}$", r"\boxed{0.5}") == 0.0


# -- code ------------------------------------------------------------------------------------------
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]


def test_code_program_extraction():
    assert extract_program("[BEGIN]\ndef f():\n    return 1\n[DONE]") == "def f():\n    return 1"
    assert extract_program("sure [begin] ```python\ndef f():\n    return 1\n``` [Done]") == "def f():\n    return 1"
    assert extract_program("```py\n    def f():\n        return 2\n```") == "def f():\n    return 2"
    assert extract_program("[BEGIN]\ndef f():\n    return 3") == "def f():\n    return 3"  # cut off before [DONE]
    assert extract_program("def f(): return 1") is None
    assert extract_program("[BEGIN]   [DONE]") is None


def test_code_pass_at_1_runs_the_tests():
    good = "[BEGIN]\ndef add(a, b):\n    return a + b\n[DONE]"
    wrong = "[BEGIN]\ndef add(a, b):\n    return a - b\n[DONE]"
    assert value("code", good, "", tests=TESTS) == 1.0
    assert value("code", good, "\n".join(TESTS)) == 1.0  # tests given as the ground truth
    failed = score_response("code", wrong, "", tests=TESTS)
    assert failed.value == 0.0 and failed.details["reason"] == "failed"
    assert score_response("code", "def add(a, b): return a + b", "", tests=TESTS).details["reason"] == "no code"
    looping = score_response("code", "[BEGIN]\ndef add(a, b):\n    while True: pass\n[DONE]", "", tests=TESTS, timeout_s=1.0)
    assert looping.value == 0.0 and looping.details["reason"] == "timeout"


def test_code_without_tests():
    with pytest.raises(MetricError, match="no tests"):
        score_response("code", "[BEGIN]x = 1[DONE]", "")


# -- dispatch --------------------------------------------------------------------------------------
def test_unknown_metric_and_option():
    with pytest.raises(MetricError, match="unknown metric 'bleu' \\(known: substring, exact, choice, numeric, math, code\\)"):
        score_response("bleu", "a", "b")
    with pytest.raises(MetricError, match="numeric: unknown option\\(s\\) tests"):
        score_response("numeric", "1", "1", tests=["assert True"])
