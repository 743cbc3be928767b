"""Task metrics for multi-LLM logs: one float in [0, 1] per response, plus what the check saw.

The metrics of LLMFusionBench, with their known faults fixed where it is cheap:
- `substring` (FusionBench's `cem`): the normalised ground truth must occur in the normalised response
  as whole words ("10" does not contain "1"), decimals survive normalisation ("3.5" is not "35"), an
  empty ground truth scores 0 instead of matching everything, and a yes/no or true/false answer passes
  only when the response names exactly one side of the pair ("true or false?" earns nothing).
- `exact`: the stated final answer equals the ground truth after light normalisation.
- `choice` (`em_mc`): the chosen letter in any common format, "(B)", "B)", "**B**", "Answer: B",
  not only parenthesised ones; a stated answer beats letters merely mentioned.
- `numeric` (`GSM8K`): the last number of the stated answer, decimals kept.
- `math`: math-verify equivalence of the final answer.
- `code`: pass@1 of the program between [BEGIN] and [DONE] (or in a fenced block) against the tests,
  run in the sandboxed runner of `llm_alloy.evaluate.verifiers`.
Every metric but `code` reads the last `<answer>...</answer>` span when the response has one, so
thought-template prompts that ask for answer tags are scored on the tagged answer.
"""

from __future__ import annotations

import inspect
import re
import string
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

from llm_alloy.evaluate.verifiers import (
    check_exact,
    check_math,
    check_numeric,
    extract_code,
    final_answer,
    last_number,
    run_code_tests,
)


class MetricError(ValueError):
    """A metric that cannot be applied: unknown id, or a ground truth it cannot read (one line)."""


@dataclass(frozen=True)
class TaskScore:
    value: float
    details: dict[str, Any] = field(default_factory=dict)


ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def answer_span(response: str) -> str:
    """The last `<answer>` span when there is one, else the whole response."""
    tagged = ANSWER_TAG.findall(response)
    return tagged[-1].strip() if tagged else response


# -- substring -------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# Every punctuation mark except a point between two digits, so decimals keep their value.
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[" + re.escape(string.punctuation) + "]")
_OPPOSITES = {"true": "false", "false": "true", "yes": "no", "no": "yes"}


def normalize_text(text: str) -> str:
    text = _THOUSANDS.sub("", text.lower())
    text = _PUNCTUATION.sub("", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains_words(words: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(words[i : i + n] == needle for i in range(len(words) - n + 1))


def substring_score(response: str, ground_truth: str) -> TaskScore:
    truth = normalize_text(ground_truth).split()
    if not truth:
        return TaskScore(0.0, {"reason": "empty ground truth"})
    words = normalize_text(answer_span(response)).split()
    if len(truth) == 1 and truth[0] in _OPPOSITES:
        both = truth[0] in words and _OPPOSITES[truth[0]] in words
        if both:
            return TaskScore(0.0, {"reason": f"names both '{truth[0]}' and '{_OPPOSITES[truth[0]]}'"})
    found = _contains_words(words, truth)
    return TaskScore(float(found), {"reason": "contains" if found else "missing"})


# -- choice letters --------------------------------------------------------------------------------
def _letter_patterns(letters: str) -> tuple[re.Pattern, list[re.Pattern]]:
    upper, any_case = f"[{letters}]", f"[{letters}{letters.lower()}]"
    # "answer is (b)", "Answer: **B**", "final answer: B." -- an undecorated letter must be upper case,
    # so that "the answer is a bird" does not read as option A.
    stated = re.compile(
        r"(?i:answer\s*(?:is|:|=)?\s*(?:option|choice)?)\s*:?\s*"
        rf"(?:\*\*\s*\(?\s*({any_case})\s*\)?\s*\*\*|\(\s*({any_case})\s*\)|\[\s*({any_case})\s*\]|({upper})(?![\w']))",
    )
    decorated = [
        re.compile(rf"\(\s*({any_case})\s*\)"),  # (B)
        re.compile(rf"(?<![\w(])({upper})\)"),  # B)
        re.compile(rf"\*\*\s*({upper})\s*\*\*"),  # **B**
        re.compile(rf"\[\s*({upper})\s*\]"),  # [B]
    ]
    return stated, decorated


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen option letter: the last stated answer, else the last decorated letter, else a
    response that opens with (or is only) a letter."""
    text = answer_span(response)
    stated, decorated = _letter_patterns(letters)
    statements = list(stated.finditer(text))
    if statements:
        return next(g for g in statements[-1].groups() if g).upper()
    found = [(m.start(), m.group(1)) for pattern in decorated for m in pattern.finditer(text)]
    if found:
        return max(found)[1].upper()
    opening = re.match(rf"\s*\**\s*([{letters}])(?:\s*$|[.:)])", text)
    return opening.group(1) if opening else None


def choice_score(response: str, ground_truth: str, choices: str | None = None) -> TaskScore:
    letters = (choices or "ABCDEFGHIJ").upper()
    if not re.fullmatch(r"[A-Z]+", letters):
        raise MetricError(f"choice: choices {choices!r} must be option letters, e.g. 'ABCD'")
    truth = re.fullmatch(r"\W*([A-Za-z])\W*", ground_truth.strip())
    if truth is None or truth.group(1).upper() not in letters:
        raise MetricError(f"choice: ground truth {ground_truth!r} is not one of the letters {letters}")
    chosen = extract_choice(response, letters)
    return TaskScore(float(chosen == truth.group(1).upper()), {"chosen": chosen})


# -- the rest --------------------------------------------------------------------------------------
def exact_score(response: str, ground_truth: str) -> TaskScore:
    span = answer_span(response)
    return TaskScore(float(check_exact(span, ground_truth)), {"answer": final_answer(span)})


def numeric_score(response: str, ground_truth: str, tolerance: float = 1e-6) -> TaskScore:
    if last_number(ground_truth) is None:
        raise MetricError(f"numeric: ground truth {ground_truth!r} holds no number")
    span = answer_span(response)
    return TaskScore(float(check_numeric(span, ground_truth, tolerance)), {"answer": last_number(final_answer(span))})


def math_score(response: str, ground_truth: str) -> TaskScore:
    return TaskScore(float(check_math(answer_span(response), ground_truth)))


_BEGIN_DONE = re.compile(r"\[BEGIN\](.*?)(?:\[DONE\]|\Z)", re.DOTALL | re.IGNORECASE)


def extract_program(response: str) -> str | None:
    """The code between [BEGIN] and [DONE] (a fence inside is unwrapped), else the last fenced block."""
    marked = _BEGIN_DONE.findall(response)
    if marked and marked[-1].strip():
        inner = marked[-1]
        return textwrap.dedent(extract_code(inner) or inner).strip("\n")
    fenced = extract_code(response)
    return None if fenced is None else textwrap.dedent(fenced).strip("\n")


def code_score(
    response: str, ground_truth: str, tests: str | list[str] | None = None, timeout_s: float = 5.0
) -> TaskScore:
    """pass@1: the extracted program followed by the tests (from `tests`, else the ground truth)."""
    test_code = "\n".join(tests) if isinstance(tests, list) else (tests or ground_truth)
    if not test_code.strip():
        raise MetricError("code: no tests to run (give 'tests' or put them in the ground truth)")
    program = extract_program(response)
    if program is None:
        return TaskScore(0.0, {"reason": "no code"})
    run = run_code_tests(program, test_code, timeout_s=timeout_s)
    return TaskScore(float(run.passed), {"reason": run.reason})


METRICS: dict[str, Callable[..., TaskScore]] = {
    "substring": substring_score,
    "exact": exact_score,
    "choice": choice_score,
    "numeric": numeric_score,
    "math": math_score,
    "code": code_score,
}


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise MetricError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")


def score_response(metric: str, response: str, ground_truth: str, **details: Any) -> TaskScore:
    """Score one response. `details` are the metric's options: `tests` and `timeout_s` (code),
    `choices` (the valid letters, e.g. "ABCD"), `tolerance` (numeric)."""
    check_metric(metric)
    accepted = list(inspect.signature(METRICS[metric]).parameters)[2:]
    unknown = sorted(set(details) - set(accepted))
    if unknown:
        raise MetricError(f"{metric}: unknown option(s) {', '.join(unknown)} (accepted: {', '.join(accepted) or 'none'})")
    return METRICS[metric](response, ground_truth, **details)
