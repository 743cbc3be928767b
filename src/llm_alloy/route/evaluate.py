"""Scoring arm choices: a router against the best single arm, an oracle and random choice.

Every figure is a mean over the split's queries of the chosen arm's outcome, on the scales of
FusionFactory's Table 4 (normalised performance and cost, reward = alpha * perf - beta * cost) plus
the raw cost in dollars. The best single arm is chosen on the TRAINING split (choosing it on the test
split, as the paper's baseline does, flatters the baseline with test knowledge). A chosen arm without
a logged outcome for a query is left out of the means and counted in `coverage`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llm_alloy.logs.matrix import ArmMatrix, Normalizer
from llm_alloy.route.base import argmax_cheapest


@dataclass(frozen=True)
class RoutingRow:
    scenario: str
    method: str
    reward: float
    performance: float  # normalised
    cost: float  # normalised
    cost_usd: float  # mean dollars per query
    coverage: float  # fraction of queries whose chosen arm has a logged outcome


@dataclass
class RoutingTable:
    split: str
    n_queries: int
    rows: list[RoutingRow]

    def row(self, scenario: str, method_prefix: str) -> RoutingRow:
        for row in self.rows:
            if row.scenario == scenario and row.method.startswith(method_prefix):
                return row
        raise KeyError(f"no row for scenario '{scenario}' and method '{method_prefix}'")

    def to_dicts(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def to_markdown(self) -> str:
        lines = [
            "| scenario | method | reward | performance | cost (norm.) | cost (USD/query) | coverage |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.scenario} | {r.method} | {r.reward:.4f} | {r.performance:.4f} | {r.cost:.4f} "
                f"| {r.cost_usd:.3g} | {r.coverage:.3f} |"
            )
        return "\n".join(lines)


@dataclass
class Outcomes:
    """Per-query, per-arm values of one split under one scenario."""

    reward: np.ndarray
    performance: np.ndarray
    cost: np.ndarray
    cost_usd: np.ndarray

    @classmethod
    def of(cls, matrix: ArmMatrix, normalizer: Normalizer, scenario: str) -> "Outcomes":
        return cls(
            normalizer.reward(matrix, scenario), normalizer.performance(matrix), normalizer.cost(matrix), matrix.cost
        )

    def chosen(self, choice: np.ndarray, scenario: str, method: str) -> RoutingRow:
        rows = np.arange(len(choice))
        picked = {name: getattr(self, name)[rows, choice] for name in ("reward", "performance", "cost", "cost_usd")}
        logged = np.isfinite(picked["reward"])
        means = {name: _mean(values[logged]) for name, values in picked.items()}
        return RoutingRow(scenario, method, coverage=float(logged.mean()) if len(logged) else float("nan"), **means)

    def uniform_random(self, scenario: str) -> RoutingRow:
        """Expected outcome of picking uniformly among each query's logged arms (no sampling noise)."""
        logged = np.isfinite(self.reward)
        has_any = logged.any(axis=1)
        means = {}
        for name in ("reward", "performance", "cost", "cost_usd"):
            values = np.where(logged, getattr(self, name), 0.0).sum(axis=1) / np.maximum(logged.sum(axis=1), 1)
            means[name] = _mean(values[has_any])
        return RoutingRow(scenario, "random", coverage=float(has_any.mean()) if len(has_any) else float("nan"), **means)


def best_single_arm(train_reward: np.ndarray, arm_cost: np.ndarray) -> int:
    """The arm with the highest mean training reward over its logged cells, the cheaper on ties."""
    logged = np.isfinite(train_reward)
    mean = np.where(logged, train_reward, 0.0).sum(axis=0) / np.maximum(logged.sum(axis=0), 1)
    mean = np.where(logged.any(axis=0), mean, np.nan)
    return int(argmax_cheapest(mean[None, :], arm_cost)[0])


def compare(
    choices: dict[str, np.ndarray],
    evaluated: ArmMatrix,
    train: ArmMatrix,
    normalizer: Normalizer,
    scenarios: list[str],
    arm_cost: np.ndarray,
    split: str = "test",
) -> RoutingTable:
    """Rows per scenario: each named choice vector, the best single arm (chosen on `train`), the oracle
    (the best logged arm of every query, cheapest on ties) and uniform random choice."""
    n = len(evaluated.query_ids)
    rows = []
    for scenario in scenarios:
        outcomes = Outcomes.of(evaluated, normalizer, scenario)
        for method, choice in choices.items():
            rows.append(outcomes.chosen(np.asarray(choice), scenario, method))
        best = best_single_arm(normalizer.reward(train, scenario), arm_cost)
        rows.append(outcomes.chosen(np.full(n, best), scenario, f"best single arm ({evaluated.arms[best]})"))
        rows.append(outcomes.chosen(argmax_cheapest(outcomes.reward, arm_cost), scenario, "oracle"))
        rows.append(outcomes.uniform_random(scenario))
    return RoutingTable(split, n, rows)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
