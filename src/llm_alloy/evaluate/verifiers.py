"""Programmatic answer checks: exact, numeric, math (math-verify) and code run against tests.

Code runs in a separate Python process in an empty temporary folder, isolated from the user's site
(-I), with CPU-time, address-space and wall-clock limits: generated code is untrusted.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, nested braces included (\\boxed{\\frac{1}{2}})."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[begin:position].strip()
    return None


def final_answer(text: str) -> str:
    """The part of a free-text answer that states the result."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    marked = re.findall(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", text, flags=re.IGNORECASE)
    if marked:
        return marked[-1].strip().rstrip(".")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else ""


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[*`$\"']", "", text)).strip().lower()


def check_exact(answer: str, reference: str) -> bool:
    return _normal(final_answer(answer)) == _normal(reference)


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def check_numeric(answer: str, reference: str, tolerance: float = 1e-6) -> bool:
    expected, got = last_number(reference), last_number(final_answer(answer))
    if got is None:
        got = last_number(answer)
    if expected is None or got is None:
        return False
    return abs(got - expected) <= tolerance * max(1.0, abs(expected))


def check_math(answer: str, reference: str) -> bool:
    from math_verify import parse, verify

    gold = parse(reference if "$" in reference or "\\" in reference else f"${reference}$")
    return bool(gold) and verify(gold, parse(answer))


def extract_code(answer: str) -> str | None:
    blocks = CODE_BLOCK.findall(answer)
    return blocks[-1] if blocks else None


@dataclass
class CodeRun:
    passed: bool
    reason: str  # "passed", "failed", "timeout", "no code"


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    return apply


def run_code_tests(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512) -> CodeRun:
    with tempfile.TemporaryDirectory(prefix="alloy-verify-") as folder:
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-c", f"{code}\n\n{tests}\n"],
                cwd=folder,
                capture_output=True,
                timeout=timeout_s,
                preexec_fn=_limits(memory_mb, int(timeout_s) + 1),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return CodeRun(False, "timeout")
    if result.returncode == -signal.SIGXCPU:  # the CPU-time limit, a timeout by another clock
        return CodeRun(False, "timeout")
    return CodeRun(result.returncode == 0, "passed" if result.returncode == 0 else "failed")


def check_code(answer: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512) -> bool:
    code = extract_code(answer)
    return code is not None and run_code_tests(code, tests, timeout_s, memory_mb).passed


def verify_answer(kind: str, answer: str, reference: str, tolerance: float = 1e-6, timeout_s: float = 5.0, memory_mb: int = 512) -> bool:
    """`reference` is the expected answer, or for code the test statements."""
    if kind == "exact":
        return check_exact(answer, reference)
    if kind == "numeric":
        return check_numeric(answer, reference, tolerance)
    if kind == "math":
        return check_math(answer, reference)
    if kind == "code":
        return check_code(answer, reference, timeout_s, memory_mb)
    raise ValueError(f"unknown verifier kind '{kind}' (known: exact, numeric, math, code)")
