"""The best responses to one query, shared by thought templates and distillation.

A response that scored 0 (or was never scored) is never "top": it would teach a wrong answer, and
with binary metrics zeros are most of the pool. Direct and think arms of a model often answer with
the same text; near-identical responses are kept once, so K selected responses are K distinct ones.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Collection, Iterable, Literal

from llm_alloy.logs.schema import LogRecord

Criterion = Literal["perf", "judge", "hybrid"]
CRITERIA: tuple[str, ...] = ("perf", "judge", "hybrid")
HYBRID_SHORTLIST = 5
"""Hybrid: this many by performance, then re-ranked by the judge (FusionFactory's default)."""


class SelectionError(ValueError):
    """Selection asked for something impossible (unknown criterion, k < 1, mixed queries)."""


def group_by_query(records: Iterable[LogRecord]) -> dict[str, list[LogRecord]]:
    """Records per query id, in first-seen order (rows are keyed by id, not by position)."""
    groups: dict[str, list[LogRecord]] = defaultdict(list)
    for record in records:
        groups[record.query_id].append(record)
    return dict(groups)


def normalised_text(text: str) -> str:
    """What "near-identical" compares: case and whitespace differences do not make a new answer."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _missing_last(value: float | None) -> float:
    """Descending sort key: unscored values rank below every scored one."""
    return -value if value is not None and not math.isnan(value) else math.inf


def _by_performance(record: LogRecord) -> tuple:
    return (_missing_last(record.performance), record.cost, record.arm, record.sample_index)


def _by_judge(record: LogRecord) -> tuple:
    return (_missing_last(record.llm_judge), record.cost, record.arm, record.sample_index)


def top_responses(
    records: Iterable[LogRecord],
    criterion: Criterion,
    k: int,
    pool: Collection[str] | None = None,
) -> list[LogRecord]:
    """Up to k best responses of one query, best first.

    perf: (performance desc, cost asc); judge: (judge desc, cost asc), unjudged last; hybrid: the
    top 5 by perf re-ranked by judge. Ties beyond cost break by arm name, so the choice is stable.
    `pool` keeps only those arms (e.g. the small models). Scoreless responses are never selected.
    """
    if criterion not in CRITERIA:
        raise SelectionError(f"unknown criterion '{criterion}' (known: {', '.join(CRITERIA)})")
    if k < 1:
        raise SelectionError(f"k must be at least 1, got {k}")
    records = list(records)
    if len({r.query_id for r in records}) > 1:
        raise SelectionError("top_responses takes the records of one query; group them with group_by_query")
    candidates = [
        r
        for r in records
        if (pool is None or r.arm in pool) and r.performance and r.response.strip()
    ]
    ranked = _distinct(sorted(candidates, key=_by_judge if criterion == "judge" else _by_performance))
    if criterion == "hybrid":
        ranked = sorted(ranked[:HYBRID_SHORTLIST], key=_by_judge)
    return ranked[:k]


def _distinct(ranked: list[LogRecord]) -> list[LogRecord]:
    """The best-ranked copy of each near-identical response."""
    seen: set[str] = set()
    kept = []
    for record in ranked:
        key = normalised_text(record.response)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept
