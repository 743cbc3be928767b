"""Routing benchmark: train time, CPU inference throughput and test reward of the five routers.

    python benchmarks/routing.py [--queries 6400] [--arms 40] [--clusters 64] [--quick] [--out PATH]

A synthetic log set (llm_alloy.logs.synthetic) of queries x arms cells (default 6,400 x 40 = 256k rows,
the size of LLMFusionBench's train split) with precomputed 384-d unit embeddings; queries are split by
hashed query id (70/10/20). Each router is trained with its default hyperparameters once per scenario;
the timing columns are from the performance-first run. Throughput is route() over all queries in one
call (best of 3), latency is one route() call for a single query (median of 200). Targets of the issue:
training < 60 s for kNN, MLP and MF; >= 20k queries/s. The load average is printed because the machine
may be shared: timings on a busy machine are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from llm_alloy.logs.matrix import SCENARIOS
from llm_alloy.logs.synthetic import synthetic_logs
from llm_alloy.route.base import ROUTER_KINDS
from llm_alloy.route.train import RoutingData, evaluate_on, fit_router

TRAIN_TARGET_S = {"knn": 60.0, "mlp": 60.0, "mf": 60.0}
THROUGHPUT_TARGET = 20_000


def throughput(router, X: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        router.route(X)
        best = min(best, time.perf_counter() - start)
    return len(X) / best


def latency_ms(router, X: np.ndarray, calls: int = 200) -> float:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        router.route(X[i % len(X)][None, :])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=6400)
    parser.add_argument("--arms", type=int, default=40)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--routers", nargs="+", default=list(ROUTER_KINDS), choices=list(ROUTER_KINDS))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="600 queries x 8 arms, to check the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "routing.md")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.arms, args.clusters = 600, 8, 6

    lines = ["# Routing benchmark\n", f"Load average (1/5/15 min) at start: {load()}; "
             f"{os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; python {platform.python_version()}.\n"]
    start = time.perf_counter()
    logs = synthetic_logs(args.queries, args.arms, args.clusters, dim=args.dim, seed=args.seed)
    generate_s = time.perf_counter() - start
    data = RoutingData.build(logs.matrix, logs.embeddings, embedding_model=f"synthetic-{args.dim}")
    sizes = {name: len(part.query_ids) for name, part in data.splits.items()}
    lines.append(
        f"Synthetic logs: {args.queries} queries x {args.arms} arms = {logs.matrix.performance.size:,} cells "
        f"({np.isnan(logs.matrix.performance).mean():.1%} missing), {args.clusters} clusters, {args.dim}-d "
        f"embeddings, generated in {generate_s:.2f} s; split {sizes}.\n"
    )
    print(lines[-1])

    X_all = np.concatenate([data.embeddings[s] for s in ("train", "validation", "test")])
    timing_rows, reward_rows, baselines = [], [], {}
    for kind in args.routers:
        for scenario in args.scenarios:
            start = time.perf_counter()
            router = fit_router(kind, data, scenario)
            train_s = time.perf_counter() - start
            table = evaluate_on(router, data, "test")
            reward_rows.append((kind, scenario, table.row(scenario, "router")))
            for method in ("best single arm", "oracle", "random"):
                baselines[scenario, method] = table.row(scenario, method)
            if scenario == args.scenarios[0]:
                qps, single = throughput(router, X_all), latency_ms(router, X_all)
                fit = router.training.get("fit", {})
                timing_rows.append((kind, train_s, qps, single, fit.get("epochs_run"), load()))
            print(f"{kind:6s} {scenario:18s} train {train_s:6.2f} s  reward {reward_rows[-1][2].reward:.4f}  load {load()}",
                  flush=True)

    lines.append(f"## Training and inference (scenario {args.scenarios[0]}, CPU)\n")
    lines.append("| router | train s | target | inference queries/s (batch) | latency ms (1 query) | epochs | load after |")
    lines.append("|---|---:|---|---:|---:|---:|---|")
    for kind, train_s, qps, single, epochs, load_after in timing_rows:
        target = TRAIN_TARGET_S.get(kind)
        verdict = ("< 60 s " + ("met" if train_s < target else "MISSED")) if target else "-"
        qps_mark = "" if qps >= THROUGHPUT_TARGET else " (below 20k)"
        lines.append(
            f"| {kind} | {train_s:.2f} | {verdict} | {qps:,.0f}{qps_mark} | {single:.2f} | {epochs or '-'} | {load_after} |"
        )

    lines.append(f"\n## Test reward ({sizes['test']} test queries; best single arm chosen on train)\n")
    header = " | ".join(f"{s} reward | perf | cost" for s in args.scenarios)
    lines.append(f"| method | {header} |")
    lines.append("|---|" + "---:|" * (3 * len(args.scenarios)))
    by_method: dict[str, dict[str, object]] = {}
    for kind, scenario, row in reward_rows:
        by_method.setdefault(kind, {})[scenario] = row
    for (scenario, method), row in baselines.items():
        by_method.setdefault(method, {})[scenario] = row
    for method, rows in by_method.items():
        cells = " | ".join(
            f"{rows[s].reward:.4f} | {rows[s].performance:.4f} | {rows[s].cost:.4f}" for s in args.scenarios
        )
        lines.append(f"| {method} | {cells} |")
    lines.append(f"\nLoad average at end: {load()}.")
    lines.append(
        "\nNotes: inference is one batch of all test queries with precomputed embeddings. kNN is an exact "
        "brute-force search (one matrix product and a top-k against every training query), so its "
        "throughput is bound by the CPU's matrix-product speed and falls under load; the torch routers "
        "run on one thread (their networks are too small to gain from more)."
    )

    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
