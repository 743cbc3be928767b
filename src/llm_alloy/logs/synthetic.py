"""Synthetic multi-LLM logs with a known answer: which arm is best for which cluster of queries.

Queries are drawn around cluster centres on the unit sphere of the embedding space. Arm 0 is a
generalist, fairly good everywhere and the best single arm on average, and also the most expensive;
every cluster has a specialist arm that beats it there and is weak elsewhere. A router that reads the
embedding can therefore beat the best single arm, and one that does not cannot. Everything is drawn
with array operations, so 250k (query, arm) cells take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm_alloy.logs.matrix import ArmMatrix
from llm_alloy.logs.schema import LogRecord, arm_name, parse_arm, render_prompt

GENERALIST_PERFORMANCE = 0.65
SPECIALIST_PERFORMANCE = 0.9
BACKGROUND_PERFORMANCE = (0.15, 0.45)  # an arm outside the clusters it specialises in


@dataclass
class SyntheticLogs:
    matrix: ArmMatrix
    embeddings: np.ndarray  # (Q, dim) float32, unit rows
    best_arm_per_cluster: np.ndarray  # (n_clusters,) arm index with the highest expected performance
    clusters: np.ndarray  # (Q,) cluster of each query
    expected_performance: np.ndarray  # (n_clusters, n_arms) the success probability behind the draws

    def to_records(self) -> list[LogRecord]:
        """One LogRecord per logged cell (NaN holes produce no record), for the file-based path."""
        m = self.matrix
        records = []
        for i, query_id in enumerate(m.query_ids):
            for j, arm in enumerate(m.arms):
                if np.isnan(m.performance[i, j]):
                    continue
                model, style = parse_arm(arm)
                records.append(
                    LogRecord(
                        query_id=query_id, arm=arm, model=model, prompt_style=style, task=m.tasks[i],
                        task_description=m.task_descriptions.get(m.tasks[i], ""), query=m.queries[i],
                        prompt=render_prompt(m.queries[i], style), ground_truth="1", metric="exact",
                        response="1" if m.performance[i, j] >= 0.5 else "0",
                        performance=float(m.performance[i, j]), cost=float(m.cost[i, j]),
                        llm_judge=None if np.isnan(m.judge[i, j]) else float(m.judge[i, j]),
                        judge_model="synthetic" if not np.isnan(m.judge[i, j]) else None,
                        finish_reason="stop",
                    )
                )
        return records


def synthetic_arms(n_arms: int) -> list[str]:
    """Arm names in LLMFusionBench's interleaved order: model0, model0_think, model1, ..."""
    return [arm_name(f"model{j // 2:02d}", "direct" if j % 2 == 0 else "think") for j in range(n_arms)]


def synthetic_logs(
    n_queries: int,
    n_arms: int,
    n_clusters: int,
    dim: int = 384,
    seed: int = 0,
    n_tasks: int = 3,
    spread: float = 0.6,
    binary: bool = True,
    noise: float = 0.1,
    missing: float = 0.02,
) -> SyntheticLogs:
    """A query x arm log set with a known best arm per cluster.

    `spread` is the query noise around its centre (about the cosine distance to it); `binary` draws
    Bernoulli performance, else the expected performance plus Gaussian `noise`, clipped to [0, 1];
    `missing` is the fraction of cells left as NaN (a failed call); tasks are assigned per cluster.
    """
    if n_arms < 3 or n_clusters < 1 or n_queries < n_clusters or dim < 2:
        raise ValueError(
            f"synthetic_logs: need n_arms >= 3, n_clusters >= 1, n_queries >= n_clusters, dim >= 2 "
            f"(got {n_arms}, {n_clusters}, {n_queries}, {dim})"
        )
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_clusters, dim)))
    clusters = rng.permutation(np.arange(n_queries) % n_clusters)  # balanced cluster sizes
    embeddings = _unit(centres[clusters] + spread * rng.standard_normal((n_queries, dim)) / np.sqrt(dim))

    # Specialists cycle over arms 1..A-1 so that different arms win different clusters.
    best = 1 + rng.permutation(np.arange(n_clusters) % (n_arms - 1))
    expected = rng.uniform(*BACKGROUND_PERFORMANCE, size=(n_clusters, n_arms))
    expected[:, 0] = GENERALIST_PERFORMANCE
    expected[np.arange(n_clusters), best] = SPECIALIST_PERFORMANCE

    p = expected[clusters]
    if binary:
        performance = (rng.random(p.shape) < p).astype(float)
    else:
        performance = np.clip(p + noise * rng.standard_normal(p.shape), 0.0, 1.0)
    # Per-call prices stay near a per-arm level (log-uniform, 1e-5..1e-3 USD); the generalist costs most.
    price = np.exp(rng.uniform(np.log(1e-5), np.log(1e-3), size=n_arms))
    price[0] = 2e-3
    cost = price[None, :] * rng.lognormal(0.0, 0.1, size=p.shape)
    judge = np.clip(0.8 * performance + 0.1 + 0.1 * rng.standard_normal(p.shape), 0.0, 1.0)

    holes = rng.random(p.shape) < missing
    for values in (performance, cost, judge):
        values[holes] = np.nan

    tasks = [f"task{c % n_tasks}" for c in clusters]
    matrix = ArmMatrix(
        query_ids=[f"q{i:07d}" for i in range(n_queries)],
        arms=synthetic_arms(n_arms),
        tasks=tasks,
        queries=[f"synthetic query {i} about topic {c}" for i, c in enumerate(clusters)],
        performance=performance,
        cost=cost,
        judge=judge,
        task_descriptions={f"task{t}": f"synthetic task {t}" for t in range(min(n_tasks, n_clusters))},
    )
    return SyntheticLogs(matrix, embeddings.astype(np.float32), best, clusters, expected)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
