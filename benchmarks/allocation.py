"""Allocation benchmark: Bohdi's allocators against baselines and oracles on the simulated learner.

    python benchmarks/allocation.py [--seeds 50] [--budgets 2000 4000 8000] [--quick] [--out results.md]

Each (scenario, allocator, seed) is run once at the largest budget; smaller budgets read that run's checkpoint,
which is exact because no allocator or scenario depends on the budget. Figures are means over seeds with
their standard error. The learner and the scenarios are fixed in llm_alloy.explore.simulate.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_alloy.explore.simulate import SCENARIOS, JudgeModel, reborn_within_window, run_allocation, samples_to_reach

LOOP_SIZE = 200
WINDOW = 20


@dataclass(frozen=True)
class Contender:
    label: str
    allocator: str
    window: int | None = None


CONTENDERS = (
    Contender("uniform", "uniform"),
    Contender("fixed", "fixed"),
    Contender("loss_rate", "loss_rate"),
    Contender("dynabranches", "dynabranches"),
    Contender("dynabranches+IR", "dynabranches", WINDOW),
    Contender("learning_progress", "learning_progress"),
    Contender("balance", "balance"),
    Contender("oracle_greedy", "oracle_greedy"),
    Contender("oracle_maxmin", "oracle_maxmin"),
)
LP_TOLERANCE = {"unlearnable": 0.02}  # check (a): allowed mean-accuracy loss to uniform; 0.01 elsewhere
BALANCE_TARGET = 1 / 3
IR_TARGET = 0.9
STRETCH_TARGET = 1 / 3


@dataclass
class Runs:
    accuracy: np.ndarray  # seeds x checkpoints x domains
    reborn: dict[int, list[bool]]  # shifted domain -> per seed (where defined)
    false_alarms: float  # rebirths per IR check on nodes that never shifted


def _one(args: tuple[str, Contender, int, int, str]) -> tuple[np.ndarray, dict[int, bool | None], int, int]:
    scenario_name, contender, seed, budget, ties = args
    result = run_allocation(
        SCENARIOS[scenario_name], contender.allocator, budget, seed,
        loop_size=LOOP_SIZE, window=contender.window, judge=JudgeModel(ties=ties),
    )
    reborn = {d: reborn_within_window(result, d, WINDOW) for d in result.shift_loops}
    steady = [d for d in range(result.accuracy.shape[1]) if d not in result.shift_loops]
    alarms = sum(d in steady for _, d in result.rebirths)
    checks = (len(result.train_counts) - 1) * len(steady)
    return result.accuracy, reborn, alarms, checks


def run_all(seeds: int, budget: int, ties: str, workers: int) -> dict[tuple[str, str], Runs]:
    jobs = [(s, c, seed, budget, ties) for s in SCENARIOS for c in CONTENDERS for seed in range(seeds)]
    with ProcessPoolExecutor(workers) as pool:
        outputs = list(pool.map(_one, jobs, chunksize=4))
    runs: dict[tuple[str, str], Runs] = {}
    for start in range(0, len(jobs), seeds):
        scenario, contender = jobs[start][0], jobs[start][1]
        chunk = outputs[start : start + seeds]
        reborn: dict[int, list[bool]] = {}
        for _, flags, _, _ in chunk:
            for d, flag in flags.items():
                if flag is not None:
                    reborn.setdefault(d, []).append(flag)
        alarms, checks = sum(c[2] for c in chunk), sum(c[3] for c in chunk)
        runs[scenario, contender.label] = Runs(np.array([c[0] for c in chunk]), reborn, alarms / max(checks, 1))
    return runs


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclass
class Row:
    mean: tuple[float, float]
    minimum: tuple[float, float]
    gap: tuple[float, float]
    reach: float  # samples until the seed-averaged mean accuracy reaches uniform's at this budget


def summarise(runs: dict[tuple[str, str], Runs], budgets: list[int]) -> dict[tuple[str, int, str], Row]:
    rows = {}
    samples = np.arange(max(budgets) // LOOP_SIZE + 1) * LOOP_SIZE
    for scenario in SCENARIOS:
        uniform_curve = runs[scenario, "uniform"].accuracy.mean(axis=2).mean(axis=0)
        for budget in budgets:
            at = budget // LOOP_SIZE
            for contender in CONTENDERS:
                acc = runs[scenario, contender.label].accuracy
                final = acc[:, at, :]
                curve = acc.mean(axis=2).mean(axis=0)
                rows[scenario, budget, contender.label] = Row(
                    _mean_se(final.mean(axis=1)),
                    _mean_se(final.min(axis=1)),
                    _mean_se(final.max(axis=1) - final.min(axis=1)),
                    samples_to_reach(samples, curve, uniform_curve[at]),
                )
    return rows


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def _reach(value: float, largest: int) -> str:
    return f"> {largest}" if np.isnan(value) else f"{value:.0f}"


def table(rows: dict[tuple[str, int, str], Row], budgets: list[int]) -> list[str]:
    lines = [
        "| scenario | budget | allocator | mean acc | min-domain acc | max-min gap | samples to uniform's mean |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        for budget in budgets:
            for contender in CONTENDERS:
                row = rows[scenario, budget, contender.label]
                lines.append(
                    f"| {scenario} | {budget} | {contender.label} | {_fmt(row.mean)} | {_fmt(row.minimum)} | "
                    f"{_fmt(row.gap)} | {_reach(row.reach, max(budgets))} |"
                )
    return lines


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _figure(value: float) -> str:
    return "never" if np.isnan(value) else f"{value:+.2f}"


def _closed(baseline: float, reference: float, value: float) -> float:
    """Fraction of the baseline -> reference distance that `value` covers (nan when undefined)."""
    if baseline == reference or np.isnan(value):
        return float("nan")
    return (baseline - value) / (baseline - reference)


def checks(rows: dict[tuple[str, int, str], Row], runs: dict[tuple[str, str], Runs], budgets: list[int]) -> list[str]:
    largest = max(budgets)
    lines = ["(a) learning_progress loses at most 0.02 (unlearnable) / 0.01 (elsewhere) mean accuracy to uniform:"]
    for scenario in SCENARIOS:
        tolerance = LP_TOLERANCE.get(scenario, 0.01)
        for budget in budgets:
            diff = rows[scenario, budget, "learning_progress"].mean[0] - rows[scenario, budget, "uniform"].mean[0]
            lines.append(
                f"  {_verdict(diff >= -tolerance)} {scenario} @ {budget}: LP - uniform = {diff:+.4f} "
                f"(margin {diff + tolerance:+.4f})"
            )
    lines.append("(b) balance closes >= 1/3 of uniform -> oracle_maxmin in max-min gap at the largest budget:")
    for scenario in SCENARIOS:
        uniform, oracle = rows[scenario, largest, "uniform"].gap[0], rows[scenario, largest, "oracle_maxmin"].gap[0]
        balance = _closed(uniform, oracle, rows[scenario, largest, "balance"].gap[0])
        ir = _closed(uniform, oracle, rows[scenario, largest, "dynabranches+IR"].gap[0])
        lines.append(
            f"  {_verdict(balance >= BALANCE_TARGET)} {scenario} @ {largest}: balance closes {balance:.2f} "
            f"(margin {balance - BALANCE_TARGET:+.2f}); dynabranches+IR closes {ir:.2f}; "
            f"gaps uniform {uniform:.3f}, oracle_maxmin {oracle:.3f}"
        )
    lines.append(f"(c) after a skill shift, IR (window {WINDOW}) rebirths the node within one window in >= 90% of seeds:")
    shift_runs = runs["skill_shift", "dynabranches+IR"]
    names = SCENARIOS["skill_shift"].names
    for d, flags in sorted(shift_runs.reborn.items()):
        rate = float(np.mean(flags))
        lines.append(
            f"  {_verdict(rate >= IR_TARGET)} {names[d]}: {rate:.2f} of {len(flags)} seeds (margin {rate - IR_TARGET:+.2f})"
        )
    lines.append(f"  for scale: rebirths per IR check on nodes that never shifted: {shift_runs.false_alarms:.3f}")
    lines.append(
        "(d) stretch: fraction of uniform -> oracle_greedy distance closed in samples to reach uniform's mean at the "
        f"largest budget (target for learning_progress >= {STRETCH_TARGET:.2f}):"
    )
    for scenario in SCENARIOS:
        uniform, oracle = rows[scenario, largest, "uniform"].reach, rows[scenario, largest, "oracle_greedy"].reach
        closed = {c.label: _closed(uniform, oracle, rows[scenario, largest, c.label].reach) for c in CONTENDERS[1:-2]}
        lp = closed["learning_progress"]
        lines.append(
            f"  {_verdict(lp >= STRETCH_TARGET)} {scenario}: samples uniform {uniform:.0f}, oracle_greedy {oracle:.0f}; "
            f"closed: {', '.join(f'{label} {_figure(value)}' for label, value in closed.items())}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--quick", action="store_true", help="10 seeds, budgets 1000 2000: a smoke run")
    parser.add_argument("--ties", choices=["target", "uniform"], default="target", help="judge tie model (see simulate.py)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the report as markdown here")
    args = parser.parse_args(argv)
    seeds, budgets = (10, [1000, 2000]) if args.quick else (args.seeds, sorted(args.budgets))
    if seeds < 2 or any(b % LOOP_SIZE for b in budgets):
        parser.error(f"need >= 2 seeds and budgets that are multiples of {LOOP_SIZE}")

    started = time.perf_counter()
    runs = run_all(seeds, max(budgets), args.ties, args.workers)
    rows = summarise(runs, budgets)
    header = [
        "# Allocation benchmark (simulated learner)",
        "",
        f"`python benchmarks/allocation.py {' '.join(sys.argv[1:] if argv is None else argv)}`: {seeds} seeds, "
        f"budgets {budgets} training samples in loops of {LOOP_SIZE} (400 questions explored per loop), judge ties "
        f"-> {args.ties}. Mean ± standard error over seeds of true accuracy (equal-weight mean over domains). "
        "'samples to uniform's mean': training samples at which the seed-averaged mean accuracy first reaches "
        "uniform's at that budget (interpolated between loops; runs stop at the largest budget).",
        "",
        *(f"- **{s.name}**: {s.description}" for s in SCENARIOS.values()),
        "",
    ]
    report = [*header, *table(rows, budgets), "", "```", *checks(rows, runs, budgets), "```", ""]
    report.append(f"Wall time {time.perf_counter() - started:.0f} s with {args.workers} workers.")
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
