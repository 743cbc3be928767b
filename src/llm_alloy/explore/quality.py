"""Quality gates an answer must pass before a judge's verdict may pick it."""

from __future__ import annotations


def repetition_coverage(text: str, min_unit: int = 4, max_unit: int = 80) -> float:
    """The largest share of the text covered by back-to-back repeats of one substring.

    Degenerate generations loop ("the the the", a sentence over and over); a fluent answer rarely
    repeats a unit more than a few times in a row.
    """
    n = len(text)
    if n < 2 * min_unit:
        return 0.0
    best = 0
    for unit in range(min_unit, min(max_unit, n // 2) + 1):
        run = 0
        for i in range(unit, n):
            if text[i] == text[i - unit]:
                run += 1
                # A span counts once the unit has appeared at least twice in a row.
                if run >= unit and run + unit > best:
                    best = run + unit
            else:
                run = 0
    return best / n


def is_degenerate(text: str, threshold: float = 0.5) -> bool:
    return repetition_coverage(text) >= threshold


def is_cut_off(text: str, finish_reason: str) -> bool:
    """Stopped by the token limit, or an unclosed code block."""
    return finish_reason == "length" or text.count("```") % 2 == 1


def passes_gates(text: str, finish_reason: str) -> bool:
    return bool(text.strip()) and not is_cut_off(text, finish_reason) and not is_degenerate(text)
