"""Allocation benchmark: Bohdi's allocators against baselines and oracles on the simulated learner.

    python benchmarks/allocation.py [--seeds 50] [--budgets 2000 4000 8000] [--quick] [--out results.md]

Each (scenario, allocator, seed) is run once at the largest budget; smaller budgets read that run's checkpoint,
which is exact because no allocator or scenario depends on the budget. Figures are means over seeds with
their standard error; samples-to-reach figures carry a bootstrap standard error over seeds. The learner and
the scenarios are fixed in llm_alloy.explore.simulate.

IR is run twice: the paper's test (checks at loop starts, the window against the whole posterior) and the
extension (same cadence; the last loop's outcomes, or the window if longer, against the evidence before them,
by a two-sample likelihood-ratio test); an ablation on skill_shift separates the extension's parts, and a
stationary learner (the heterogeneous domains with ceiling = floor, built here, not a benchmark scenario)
calibrates each test's false-alarm rate where nothing changes at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_alloy.explore.simulate import (
    SCENARIOS,
    DomainSpec,
    JudgeModel,
    Scenario,
    reborn_within_window,
    run_allocation,
    samples_to_reach,
)

LOOP_SIZE = 200
WINDOW = 20
BOOTSTRAP = 400
# The IR extension: the last loop's outcomes (or the window, if longer) against everything before them.
IR_EXTENSION = (("reference", "pre_window"), ("test", "two_sample"), ("recent", "loop"))


@dataclass(frozen=True)
class Contender:
    label: str
    allocator: str
    window: int | None = None
    rebirth: tuple[tuple[str, str], ...] = ()  # apply_rebirth options
    every: str = "loop"  # IR cadence (run_allocation's rebirth_every)
    params: tuple[tuple[str, object], ...] = ()  # allocator parameters


CONTENDERS = (
    Contender("uniform", "uniform"),
    Contender("fixed", "fixed"),
    Contender("loss_rate", "loss_rate"),
    Contender("dynabranches", "dynabranches"),
    Contender("dynabranches+IR", "dynabranches", WINDOW),
    Contender("dynabranches+IR-ext", "dynabranches", WINDOW, IR_EXTENSION),
    Contender("learning_progress", "learning_progress"),
    Contender("learning_progress(h=32)", "learning_progress", params=(("horizon", 32),)),
    Contender("balance", "balance"),
    Contender("oracle_greedy", "oracle_greedy"),
    Contender("oracle_maxmin", "oracle_maxmin"),
)
LP_TOLERANCE = {"unlearnable": 0.02}  # check (a): allowed mean-accuracy loss to uniform; 0.01 elsewhere
BALANCE_TARGET = 1 / 3
IR_TARGET = 0.9
STRETCH_TARGET = 1 / 3
LP_LABELS = ("learning_progress", "learning_progress(h=32)")
# IR ablation on skill_shift: (label, apply_rebirth options, cadence). Run at ABLATION_BUDGET: every
# shifted node's deadline falls well before it.
ABLATION = (
    ("paper: window vs posterior, loop starts", (), "loop"),
    ("window vs pre-window, loop starts", (("reference", "pre_window"),), "loop"),
    ("window vs pre-window, 2-sample, loop starts", (("reference", "pre_window"), ("test", "two_sample")), "loop"),
    ("window vs pre-window, 2-sample, every step", (("reference", "pre_window"), ("test", "two_sample")), "step"),
    ("last loop vs pre-loop, 1-sample, loop starts", (("reference", "pre_window"), ("recent", "loop")), "loop"),
    ("extension: last loop vs pre-loop, 2-sample, loop starts", IR_EXTENSION, "loop"),
)
ABLATION_BUDGET = 4000
_HETEROGENEOUS = SCENARIOS["heterogeneous"]
STATIONARY = Scenario(
    "stationary",
    "calibration only: the heterogeneous domains frozen at their floors (ceiling = floor), no shift",
    tuple(DomainSpec(d.name, d.floor, d.floor, d.tau, d.sources) for d in _HETEROGENEOUS.domains),
    _HETEROGENEOUS.fixed_mix,
)


@dataclass
class Alarms:
    """Rebirths on nodes that never shifted: per IR test of such a node, and per 1000 of their outcomes."""

    rebirths: int
    tests: int
    outcomes: int

    def __add__(self, other: Alarms) -> Alarms:
        return Alarms(self.rebirths + other.rebirths, self.tests + other.tests, self.outcomes + other.outcomes)

    def text(self) -> str:
        return (
            f"{self.rebirths / max(self.tests, 1):.4f} per test ({self.rebirths}/{self.tests}), "
            f"{1000 * self.rebirths / max(self.outcomes, 1):.2f} per 1000 outcomes"
        )


@dataclass
class Runs:
    accuracy: np.ndarray  # seeds x checkpoints x domains
    reborn: dict[int, list[bool]]  # shifted domain -> per seed (where defined)
    alarms: Alarms


def _one(args: tuple[Scenario, Contender, int, int, str]) -> tuple[np.ndarray, dict[int, bool | None], Alarms]:
    scenario, contender, seed, budget, ties = args
    result = run_allocation(
        scenario, contender.allocator, budget, seed,
        loop_size=LOOP_SIZE, window=contender.window, judge=JudgeModel(ties=ties),
        rebirth_every=contender.every, rebirth_params=dict(contender.rebirth), allocator_params=dict(contender.params),
    )
    reborn = {d: reborn_within_window(result, d, WINDOW) for d in result.shift_loops}
    steady = [d for d in range(result.accuracy.shape[1]) if d not in result.shift_loops]
    alarms = Alarms(
        sum(d in steady for _, d in result.rebirth_checks),
        sum(int(tested[steady].sum()) for tested in result.check_tested),
        int(result.outcome_counts[:, steady].sum()),
    )
    return result.accuracy, reborn, alarms


def _collect(chunk: list[tuple[np.ndarray, dict[int, bool | None], Alarms]]) -> Runs:
    reborn: dict[int, list[bool]] = {}
    for _, flags, _ in chunk:
        for d, flag in flags.items():
            if flag is not None:
                reborn.setdefault(d, []).append(flag)
    return Runs(np.array([c[0] for c in chunk]), reborn, sum((c[2] for c in chunk), Alarms(0, 0, 0)))


def run_all(seeds: int, budget: int, ties: str, workers: int) -> tuple[dict[tuple[str, str], Runs], dict[str, Runs]]:
    """The main grid, keyed (scenario, contender), and the IR ablation and calibration runs, keyed by label."""
    jobs = [(SCENARIOS[s], c, seed, budget, ties) for s in SCENARIOS for c in CONTENDERS for seed in range(seeds)]
    extra: list[tuple[str, Scenario, Contender, int]] = [
        (label, SCENARIOS["skill_shift"], Contender(label, "dynabranches", WINDOW, options, every), min(ABLATION_BUDGET, budget))
        for label, options, every in ABLATION
    ]
    extra += [
        (f"stationary/{c.label}", STATIONARY, c, min(ABLATION_BUDGET, budget))
        for c in CONTENDERS if c.window is not None
    ]
    jobs += [(scenario, c, seed, b, ties) for _, scenario, c, b in extra for seed in range(seeds)]
    with ProcessPoolExecutor(workers) as pool:
        outputs = list(pool.map(_one, jobs, chunksize=4))
    runs: dict[tuple[str, str], Runs] = {}
    grid = len(SCENARIOS) * len(CONTENDERS) * seeds
    for start in range(0, grid, seeds):
        scenario, contender = jobs[start][0], jobs[start][1]
        runs[scenario.name, contender.label] = _collect(outputs[start : start + seeds])
    others = {label: _collect(outputs[grid + i * seeds : grid + (i + 1) * seeds]) for i, (label, *_) in enumerate(extra)}
    return runs, others


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclass
class Row:
    mean: tuple[float, float]
    minimum: tuple[float, float]
    gap: tuple[float, float]
    reach: float  # samples until the seed-averaged mean accuracy reaches uniform's at this budget
    reach_boot: np.ndarray  # the same, on bootstrap resamples of the seeds (nan: never reached)


def _bootstrap_indices(seeds: int) -> np.ndarray:
    """Seed resamples shared by every contender (paired: the level and the curve come from the same draw)."""
    return np.random.default_rng(12345).integers(seeds, size=(BOOTSTRAP, seeds))


def summarise(runs: dict[tuple[str, str], Runs], budgets: list[int]) -> dict[tuple[str, int, str], Row]:
    rows = {}
    samples = np.arange(max(budgets) // LOOP_SIZE + 1) * LOOP_SIZE
    for scenario in SCENARIOS:
        uniform_seeds = runs[scenario, "uniform"].accuracy.mean(axis=2)
        uniform_curve = uniform_seeds.mean(axis=0)
        boot = _bootstrap_indices(len(uniform_seeds))
        uniform_boot = uniform_seeds[boot].mean(axis=1)  # resamples x checkpoints
        for budget in budgets:
            at = budget // LOOP_SIZE
            for contender in CONTENDERS:
                acc = runs[scenario, contender.label].accuracy
                final = acc[:, at, :]
                per_seed = acc.mean(axis=2)
                curves = per_seed[boot].mean(axis=1)
                rows[scenario, budget, contender.label] = Row(
                    _mean_se(final.mean(axis=1)),
                    _mean_se(final.min(axis=1)),
                    _mean_se(final.max(axis=1) - final.min(axis=1)),
                    samples_to_reach(samples, per_seed.mean(axis=0), uniform_curve[at]),
                    np.array([samples_to_reach(samples, c, u[at]) for c, u in zip(curves, uniform_boot)]),
                )
    return rows


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.4f} ± {pair[1]:.4f}"


def _boot_se(values: np.ndarray, digits: int = 0) -> str:
    """'± se' over the resamples that reached the level, and how many did not."""
    finite = values[np.isfinite(values)]
    text = f" ± {finite.std(ddof=1):.{digits}f}" if len(finite) > 1 else ""
    missing = len(values) - len(finite)
    return text + (f" ({missing}/{len(values)} resamples never)" if missing else "")


def _reach(row: Row, largest: int) -> str:
    value = f"> {largest}" if np.isnan(row.reach) else f"{row.reach:.0f}"
    return value + _boot_se(row.reach_boot)


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
                    f"{_fmt(row.gap)} | {_reach(row, max(budgets))} |"
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


def _rate(flags: list[bool]) -> str:
    rate = float(np.mean(flags))
    se = np.sqrt(rate * (1 - rate) / len(flags))
    return f"{rate:.2f} ± {se:.4f} of {len(flags)} seeds"


def checks(
    rows: dict[tuple[str, int, str], Row],
    runs: dict[tuple[str, str], Runs],
    others: dict[str, Runs],
    budgets: list[int],
) -> list[str]:
    largest = max(budgets)
    lines = [
        "(a) learning_progress loses at most 0.02 (unlearnable) / 0.01 (elsewhere) mean accuracy to uniform "
        "(default horizon 8 | option horizon 32):"
    ]
    for scenario in SCENARIOS:
        tolerance = LP_TOLERANCE.get(scenario, 0.01)
        for budget in budgets:
            parts = []
            for label in LP_LABELS:
                diff = rows[scenario, budget, label].mean[0] - rows[scenario, budget, "uniform"].mean[0]
                parts.append(f"{_verdict(diff >= -tolerance)} LP - uniform = {diff:+.4f} (margin {diff + tolerance:+.4f})")
            lines.append(f"  {scenario} @ {budget}: {' | '.join(parts)}")
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
    lines.append(
        f"(c) after a skill shift, IR (window {WINDOW}) rebirths the node within one window in >= 90% of seeds "
        "(paper default | extension, same threshold 0.1):"
    )
    names = SCENARIOS["skill_shift"].names
    paper, extension = runs["skill_shift", "dynabranches+IR"], runs["skill_shift", "dynabranches+IR-ext"]
    def verdict(flags: list[bool]) -> str:
        if not flags:
            return "MISS n/a (no seed reached the deadline)"
        rate = float(np.mean(flags))
        return f"{_verdict(rate >= IR_TARGET)} {_rate(flags)} (margin {rate - IR_TARGET:+.2f})"

    for d in sorted(set(paper.reborn) | set(extension.reborn)):
        lines.append(
            f"  {names[d]}: paper {verdict(paper.reborn.get(d, []))} | extension {verdict(extension.reborn.get(d, []))}"
        )
    lines.append("  false alarms (rebirths of nodes that never shifted; on a learning target these nodes do drift):")
    for scenario in SCENARIOS:
        lines.append(
            f"    {scenario}: paper {runs[scenario, 'dynabranches+IR'].alarms.text()} | "
            f"extension {runs[scenario, 'dynabranches+IR-ext'].alarms.text()}"
        )
    lines.append(
        f"    stationary learner (calibration, budget {min(ABLATION_BUDGET, largest)}; nominal <= 0.1 per test): "
        f"paper {others['stationary/dynabranches+IR'].alarms.text()} | "
        f"extension {others['stationary/dynabranches+IR-ext'].alarms.text()}"
    )
    lines.append(f"  ablation on skill_shift (budget {min(ABLATION_BUDGET, largest)}; detection per shifted domain; false alarms):")
    for label, _, _ in ABLATION:
        ablation = others[label]
        detected = ", ".join(f"{names[d]} {_rate(f)}" for d, f in sorted(ablation.reborn.items()))
        lines.append(f"    {label}: {detected}; {ablation.alarms.text()}")
    lines.append(
        "(d) stretch: fraction of uniform -> oracle_greedy distance closed in samples to reach uniform's mean at the "
        f"largest budget (target for learning_progress >= {STRETCH_TARGET:.2f}; default horizon 8, option horizon 32):"
    )
    for scenario in SCENARIOS:
        uniform, oracle = rows[scenario, largest, "uniform"], rows[scenario, largest, "oracle_greedy"]
        closed = {c.label: _closed(uniform.reach, oracle.reach, rows[scenario, largest, c.label].reach) for c in CONTENDERS[1:-2]}
        lines.append(f"  {scenario}: samples uniform {uniform.reach:.0f}, oracle_greedy {oracle.reach:.0f}")
        for label in LP_LABELS:
            row = rows[scenario, largest, label]
            boot = np.array([_closed(u, o, v) for u, o, v in zip(uniform.reach_boot, oracle.reach_boot, row.reach_boot)])
            lines.append(
                f"    {_verdict(closed[label] >= STRETCH_TARGET)} {label}: {_reach(row, largest)} samples, closes "
                f"{_figure(closed[label])}{_boot_se(boot, 4)} (margin {_figure(closed[label] - STRETCH_TARGET)})"
            )
        lines.append(f"    for scale, closed: {', '.join(f'{label} {_figure(value)}' for label, value in closed.items())}")
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
    runs, others = run_all(seeds, max(budgets), args.ties, args.workers)
    rows = summarise(runs, budgets)
    header = [
        "# Allocation benchmark (simulated learner)",
        "",
        f"`python benchmarks/allocation.py {' '.join(sys.argv[1:] if argv is None else argv)}`: {seeds} seeds, "
        f"budgets {budgets} training samples in loops of {LOOP_SIZE} (400 questions explored per loop), judge ties "
        f"-> {args.ties}. Mean ± standard error over seeds of true accuracy (equal-weight mean over domains). "
        "'samples to uniform's mean': training samples at which the seed-averaged mean accuracy first reaches "
        "uniform's at that budget (interpolated between loops; runs stop at the largest budget), ± a bootstrap "
        f"standard error over seeds ({BOOTSTRAP} resamples, the level resampled with the curve). "
        "dynabranches+IR is the paper's Introspection-Rebirth; dynabranches+IR-ext the extension "
        "(apply_rebirth reference='pre_window', test='two_sample', recent='loop', threshold 0.1, at loop starts). "
        "learning_progress(h=32) is the learning_progress allocator with horizon=32 (an option; default 8).",
        "",
        *(f"- **{s.name}**: {s.description}" for s in SCENARIOS.values()),
        "",
    ]
    report = [*header, *table(rows, budgets), "", "```", *checks(rows, runs, others, budgets), "```", ""]
    report.append(f"Wall time {time.perf_counter() - started:.0f} s with {args.workers} workers.")
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
