"""Logs as query x arm matrices, the shape every router learns from.

A missing (query, arm) cell is NaN, never a zero: an arm that failed on a query tells nothing about
how well it answers. Normalisation statistics are fitted on the training split only and then applied
to every split, so test queries never leak into the scale the router learns on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np

from llm_alloy.logs.schema import LogRecord

Split = Literal["train", "validation", "test"]

SCENARIOS: dict[str, tuple[float, float]] = {
    "performance_first": (1.0, 0.0),
    "balance": (0.5, 0.5),
    "cost_first": (0.2, 0.8),
}
"""(alpha, beta) of reward = alpha * normalised performance - beta * normalised cost (FusionFactory)."""


def split_of(query_id: str, validation: float = 0.1, test: float = 0.2, salt: str = "") -> Split:
    """A stable, leak-free split: a hash of the query id, so every arm of a query lands in the same
    split, and adding or removing other queries never moves this one."""
    digest = hashlib.sha256(f"{salt}{query_id}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    if unit < test:
        return "test"
    if unit < test + validation:
        return "validation"
    return "train"


@dataclass
class ArmMatrix:
    """Per-query, per-arm outcomes. Rows follow `query_ids`, columns follow `arms`."""

    query_ids: list[str]
    arms: list[str]
    tasks: list[str]
    queries: list[str]
    performance: np.ndarray  # (Q, A) float, NaN = missing
    cost: np.ndarray  # (Q, A) US dollars, NaN = missing
    judge: np.ndarray  # (Q, A) float, NaN = not judged
    task_descriptions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[LogRecord], arms: list[str] | None = None) -> "ArmMatrix":
        records = list(records)
        query_ids = list(dict.fromkeys(r.query_id for r in records))
        arm_list = arms or sorted({r.arm for r in records})
        row = {q: i for i, q in enumerate(query_ids)}
        col = {a: j for j, a in enumerate(arm_list)}
        shape = (len(query_ids), len(arm_list))
        # Several samples of one (query, arm) cell are averaged: each is one noisy draw of the same arm.
        sums = {name: np.zeros(shape) for name in ("performance", "cost", "judge")}
        counts = {name: np.zeros(shape) for name in sums}
        tasks, queries = [""] * len(query_ids), [""] * len(query_ids)
        descriptions: dict[str, str] = {}
        for r in records:
            i, j = row[r.query_id], col.get(r.arm)
            tasks[i], queries[i] = r.task, r.query
            descriptions.setdefault(r.task, r.task_description)
            if j is None:
                continue
            for name, value in (("performance", r.performance), ("cost", r.cost), ("judge", r.llm_judge)):
                if value is not None:
                    sums[name][i, j] += value
                    counts[name][i, j] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            performance, cost, judge = (np.where(counts[n] > 0, sums[n] / counts[n], np.nan) for n in sums)
        return cls(query_ids, arm_list, tasks, queries, performance, cost, judge, descriptions)

    def subset(self, rows: np.ndarray | list[int]) -> "ArmMatrix":
        rows = np.asarray(rows, dtype=int)
        return ArmMatrix(
            [self.query_ids[i] for i in rows],
            list(self.arms),
            [self.tasks[i] for i in rows],
            [self.queries[i] for i in rows],
            self.performance[rows],
            self.cost[rows],
            self.judge[rows],
            dict(self.task_descriptions),
        )

    def split(self, validation: float = 0.1, test: float = 0.2, salt: str = "") -> dict[Split, "ArmMatrix"]:
        labels = np.array([split_of(q, validation, test, salt) for q in self.query_ids])
        return {name: self.subset(np.flatnonzero(labels == name)) for name in ("train", "validation", "test")}


@dataclass
class Normalizer:
    """Per-task min-max scales of performance and cost, fitted on training rows only.

    `log_cost` scales log1p(cost in micro-dollars) instead of cost: one expensive arm (a reasoning model)
    otherwise squeezes every other arm's cost to zero.
    """

    performance_range: dict[str, tuple[float, float]]
    cost_range: dict[str, tuple[float, float]]
    log_cost: bool = False

    @classmethod
    def fit(cls, train: ArmMatrix, log_cost: bool = False) -> "Normalizer":
        tasks = np.array(train.tasks)
        perf_range, cost_range = {}, {}
        for task in sorted(set(train.tasks)):
            rows = tasks == task
            perf_range[task] = _finite_range(train.performance[rows])
            cost_range[task] = _finite_range(_cost_scale(train.cost[rows], log_cost))
        return cls(perf_range, cost_range, log_cost)

    def _scale(self, values: np.ndarray, tasks: list[str], ranges: dict[str, tuple[float, float]]) -> np.ndarray:
        fallback = _finite_range(np.array(list(ranges.values()), dtype=float))
        low = np.array([ranges.get(t, fallback)[0] for t in tasks])[:, None]
        high = np.array([ranges.get(t, fallback)[1] for t in tasks])[:, None]
        span = np.where(high > low, high - low, 1.0)
        return np.clip((values - low) / span, 0.0, 1.0)

    def performance(self, matrix: ArmMatrix) -> np.ndarray:
        return self._scale(matrix.performance, matrix.tasks, self.performance_range)

    def cost(self, matrix: ArmMatrix) -> np.ndarray:
        return self._scale(_cost_scale(matrix.cost, self.log_cost), matrix.tasks, self.cost_range)

    def reward(self, matrix: ArmMatrix, scenario: str = "performance_first") -> np.ndarray:
        """(Q, A) reward on normalised values; NaN where the arm has no scored response."""
        if scenario == "judge":
            return matrix.judge.copy()
        alpha, beta = scenario_weights(scenario)
        return alpha * self.performance(matrix) - beta * self.cost(matrix)

    def to_dict(self) -> dict:
        return {
            "performance_range": {t: list(r) for t, r in self.performance_range.items()},
            "cost_range": {t: list(r) for t, r in self.cost_range.items()},
            "log_cost": self.log_cost,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Normalizer":
        return cls(
            {t: (float(a), float(b)) for t, (a, b) in data["performance_range"].items()},
            {t: (float(a), float(b)) for t, (a, b) in data["cost_range"].items()},
            bool(data.get("log_cost", False)),
        )


def scenario_weights(scenario: str) -> tuple[float, float]:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario '{scenario}' (known: {', '.join([*SCENARIOS, 'judge'])})")
    return SCENARIOS[scenario]


def _cost_scale(cost: np.ndarray, log_cost: bool) -> np.ndarray:
    return np.log1p(cost * 1e6) if log_cost else cost


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    return (float(finite.min()), float(finite.max()))
