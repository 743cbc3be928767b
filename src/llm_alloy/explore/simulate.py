"""A simulated learner: a benchmark and test instrument for allocators, where the right allocation is known.

Model (all per domain d):
- The target's true accuracy follows a saturating learning curve in its *experience* e_d:
  acc_d = floor_d + (ceiling_d - floor_d) (1 - exp(-e_d / tau_d)). ceiling == floor is an unlearnable domain.
- Training a loop adds the loop's samples of d to e_d, after every other domain's experience decays by
  exp(-forgetting * samples trained elsewhere) (interference: training on A erodes B).
- A skill shift at a given total of trained samples resets d's curve to start at a new accuracy (a jump up, or
  a drop that can be relearned toward the old ceiling).
- Each source answers correctly with its own fixed per-domain accuracy, independently of the target.
- Judge: the target loses (reward 1) when it is wrong and some source is right; a correct target is never
  judged worse than a correct source (ties="target"), or loses the tie to one of the K correct sources with
  probability K/(K+1) (ties="uniform", a style-blind judge picking among correct answers). With probability
  `noise` the verdict is instead a uniform pick among the n+1 answers.
- Verified questions (for the `error` signal): two or more sources right, i.e. they agree (wrong answers are
  assumed not to agree); the outcome is then whether the target is wrong.
The oracles read the true curves, so they are reference points, not methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from llm_alloy.explore.allocators import draw_training_mix, make_allocator, sample_path
from llm_alloy.explore.rebirth import apply_rebirth
from llm_alloy.explore.tree import KnowledgeTree

# Long enough to pass the pipeline's usable-answer filter (answers longer than 30 characters).
SIMULATED_ANSWER = "a simulated best answer, long enough to train on"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    floor: float
    ceiling: float
    tau: float
    sources: tuple[float, ...]


@dataclass(frozen=True)
class SkillShift:
    """After `at` trained samples in total, the target's accuracy in `domain` becomes `accuracy`."""

    domain: str
    at: int
    accuracy: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    domains: tuple[DomainSpec, ...]
    fixed_mix: dict[str, float]
    shifts: tuple[SkillShift, ...] = ()
    forgetting: float = 2e-5

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]


@dataclass(frozen=True)
class JudgeModel:
    ties: Literal["target", "uniform"] = "target"
    noise: float = 0.1


@dataclass(frozen=True)
class Outcomes:
    loss: np.ndarray  # 1 = a source was judged better than the target
    error: np.ndarray  # 1 = target wrong; meaningful only where verified
    verified: np.ndarray


class SimulatedLearner:
    """A target whose per-domain accuracy moves with the samples it is trained on (see the module docstring)."""

    def __init__(self, scenario: Scenario, judge: JudgeModel = JudgeModel()) -> None:
        self.scenario = scenario
        self.judge = judge
        self.floor = np.array([d.floor for d in scenario.domains], dtype=float)
        self.ceiling = np.array([d.ceiling for d in scenario.domains], dtype=float)
        self.tau = np.array([d.tau for d in scenario.domains], dtype=float)
        self.sources = np.array([d.sources for d in scenario.domains], dtype=float)
        self.experience = np.zeros(len(scenario.domains))
        self.trained = 0
        self._pending_shifts = sorted(scenario.shifts, key=lambda s: s.at)

    def accuracy(self, experience: np.ndarray | None = None) -> np.ndarray:
        e = self.experience if experience is None else experience
        return self.floor + (self.ceiling - self.floor) * (1.0 - np.exp(-e / self.tau))

    def experience_after(self, counts: np.ndarray) -> np.ndarray:
        """Experience after training `counts` (rows of per-domain counts broadcast), without shifts."""
        counts = np.asarray(counts, dtype=float)
        elsewhere = counts.sum(axis=-1, keepdims=True) - counts
        return self.experience * np.exp(-self.scenario.forgetting * elsewhere) + counts

    def train(self, counts: np.ndarray) -> list[str]:
        """Train one loop's per-domain sample counts; returns the domains whose skill shifted."""
        self.experience = self.experience_after(counts)
        self.trained += int(np.sum(counts))
        shifted = []
        while self._pending_shifts and self._pending_shifts[0].at <= self.trained:
            shift = self._pending_shifts.pop(0)
            d = self.scenario.names.index(shift.domain)
            self.floor[d] = shift.accuracy
            self.ceiling[d] = max(self.ceiling[d], shift.accuracy)
            self.experience[d] = 0.0
            shifted.append(shift.domain)
        return shifted

    def outcomes(self, domains: np.ndarray, rng: np.random.Generator) -> Outcomes:
        """Judge one question per entry of `domains` (domain indices)."""
        m, n_sources = len(domains), self.sources.shape[1]
        target_right = rng.random(m) < self.accuracy()[domains]
        sources_right = (rng.random((m, n_sources)) < self.sources[domains]).sum(axis=1)
        loss = ~target_right & (sources_right > 0)
        if self.judge.ties == "uniform":
            loss |= target_right & (rng.random(m) * (sources_right + 1) < sources_right)
        noisy = rng.random(m) < self.judge.noise
        loss[noisy] = rng.random(int(noisy.sum())) < n_sources / (n_sources + 1)
        return Outcomes(loss.astype(int), (~target_right).astype(int), sources_right >= 2)


def _greedy_pick(learner: SimulatedLearner, candidates: np.ndarray) -> int:
    return int(np.argmax(learner.accuracy(learner.experience_after(candidates)).mean(axis=1)))


def _maxmin_pick(learner: SimulatedLearner, candidates: np.ndarray) -> int:
    """The weakest domain that can still improve (lexicographic max-min); greedy once none can."""
    now = learner.accuracy(learner.experience_after(candidates[0] - np.eye(len(candidates))[0]))
    gain = np.diag(learner.accuracy(learner.experience_after(candidates))) - now
    improvable = gain > 1e-9
    if not improvable.any():
        return _greedy_pick(learner, candidates)
    return int(np.argmin(np.where(improvable, now, np.inf)))


ORACLES: dict[str, Callable[[SimulatedLearner, np.ndarray], int]] = {
    "oracle_greedy": _greedy_pick,
    "oracle_maxmin": _maxmin_pick,
}


@dataclass
class RunResult:
    scenario: str
    allocator: str
    seed: int
    samples: np.ndarray  # trained samples at each checkpoint: 0, loop_size, 2 loop_size, ...
    accuracy: np.ndarray  # true per-domain accuracy at each checkpoint (checkpoints x domains)
    train_counts: np.ndarray  # per loop and domain
    outcome_counts: np.ndarray  # outcomes recorded in the tree, per loop and domain
    rebirths: list[tuple[int, int]] = field(default_factory=list)  # (loop at whose start / during which, domain)
    shift_loops: dict[int, int] = field(default_factory=dict)  # domain index -> loop after whose training
    # One entry per IR check, in order: outcomes recorded so far per domain, and which domains were tested.
    check_seen: list[np.ndarray] = field(default_factory=list)
    check_tested: list[np.ndarray] = field(default_factory=list)
    rebirth_checks: list[tuple[int, int]] = field(default_factory=list)  # (check index, domain index)

    @property
    def mean_accuracy(self) -> np.ndarray:
        return self.accuracy.mean(axis=1)


def run_allocation(
    scenario: Scenario,
    allocator_name: str,
    budget: int,
    seed: int,
    loop_size: int = 200,
    explore_steps: int = 2,
    explore_batch: int = 200,
    window: int | None = None,
    rebirth_threshold: float = 0.1,
    judge: JudgeModel = JudgeModel(),
    allocator_params: dict | None = None,
    rebirth_every: Literal["loop", "step"] = "loop",
    rebirth_params: dict | None = None,
) -> RunResult:
    """Run the Bohdi loop on a simulated learner with `budget` training samples, in loops of `loop_size`.

    Allocators run the real machinery on a one-level tree seeded with the scenario's domains: IR checks (when
    `window` is set), `explore_steps` batches of paths sampled from the tree as it stood before the batch,
    outcomes recorded, then the training mix drawn from the pools. The oracles skip the tree and spend each
    sample by reading the learner's true curves.

    IR cadence: rebirth_every="loop" (the paper) checks at the start of every loop after the first;
    "step" checks after every exploration step instead (the check after a loop's last step sees the same tree
    as the next loop's start, so it replaces that one). The real pipeline gets "step" by calling
    `apply_rebirth` after each exploration step. rebirth_params go to `apply_rebirth` (reference, test).
    """
    if budget % loop_size:
        raise ValueError(f"budget {budget} must be a multiple of loop_size {loop_size}")
    if rebirth_every not in ("loop", "step"):
        raise ValueError(f"rebirth_every must be 'loop' or 'step', got {rebirth_every!r}")
    rebirth_params = dict(rebirth_params or {})
    rng = np.random.default_rng(seed)
    learner = SimulatedLearner(scenario, judge)
    k, loops = len(scenario.domains), budget // loop_size
    accuracy = [learner.accuracy()]
    train_counts = np.zeros((loops, k), dtype=int)
    outcome_counts = np.zeros((loops, k), dtype=int)
    result = RunResult(scenario.name, allocator_name, seed, np.arange(loops + 1) * loop_size, np.empty(0), train_counts, outcome_counts)

    if allocator_name in ORACLES:
        pick = ORACLES[allocator_name]
        for loop in range(loops):
            for _ in range(loop_size):
                train_counts[loop, pick(learner, train_counts[loop] + np.eye(k, dtype=int))] += 1
            _train(learner, train_counts[loop], loop, result)
            accuracy.append(learner.accuracy())
        result.accuracy = np.array(accuracy)
        return result

    params = dict(allocator_params or {})
    if allocator_name == "fixed":
        params.setdefault("proportions", scenario.fixed_mix)
    allocator = make_allocator(allocator_name, **params)
    tree = KnowledgeTree.seeded(scenario.names, max_depth=1, window=window)
    index = {name: i for i, name in enumerate(scenario.names)}
    records = [{"question": name, "answer": SIMULATED_ANSWER, "domain": i} for i, name in enumerate(scenario.names)]

    def check(loop: int) -> None:
        if window is None:
            return
        tested: list[tuple[str, ...]] = []
        reborn = apply_rebirth(tree, rebirth_threshold, tested=tested, **rebirth_params)
        number = len(result.check_seen)
        result.check_seen.append(outcome_counts[: loop + 1].sum(axis=0))
        result.check_tested.append(np.isin(np.arange(k), [index[path[0]] for path in tested]))
        for path in reborn:
            result.rebirths.append((loop, index[path[0]]))
            result.rebirth_checks.append((number, index[path[0]]))

    for loop in range(loops):
        if loop and rebirth_every == "loop":
            check(loop)
        for _ in range(explore_steps):
            paths = [sample_path(tree, allocator, rng) for _ in range(explore_batch)]
            domains = np.array([index[path[0]] for path in paths])
            judged = learner.outcomes(domains, rng)
            if allocator.signal == "loss":
                rewards = judged.loss.tolist()
            else:
                rewards = [int(e) if v else None for e, v in zip(judged.error, judged.verified)]
            for path, d, reward in zip(paths, domains, rewards):
                tree.record(path, reward, records[d])
                outcome_counts[loop, d] += reward is not None
            if rebirth_every == "step":
                check(loop)
        tree.close_exploration()
        mix = draw_training_mix(tree, allocator, rng, loop_size)
        train_counts[loop] = np.bincount([r["domain"] for r in mix], minlength=k)
        _train(learner, train_counts[loop], loop, result)
        accuracy.append(learner.accuracy())
    result.accuracy = np.array(accuracy)
    return result


def _train(learner: SimulatedLearner, counts: np.ndarray, loop: int, result: RunResult) -> None:
    for name in learner.train(counts):
        result.shift_loops[learner.scenario.names.index(name)] = loop


def samples_to_reach(samples: np.ndarray, curve: np.ndarray, level: float) -> float:
    """Samples at which `curve` first reaches `level`, interpolated between checkpoints; nan if it never does."""
    reached = np.flatnonzero(curve >= level)
    if not reached.size:
        return float("nan")
    i = int(reached[0])
    if i == 0:
        return float(samples[0])
    rise = curve[i] - curve[i - 1]
    return float(samples[i - 1] + (samples[i] - samples[i - 1]) * (level - curve[i - 1]) / rise)


def reborn_within_window(result: RunResult, domain: int, window: int) -> bool | None:
    """Was the node reborn by the first IR check whose window holds only post-shift outcomes?

    "Within one window" means: at a check whose window holds at least one post-shift outcome of the domain and
    no later than the first check that has seen `window` of them, whatever the cadence of the checks. None if
    the domain never shifted or the run ended before that check.
    """
    shifted = result.shift_loops.get(domain)
    if shifted is None:
        return None
    if result.check_seen:
        before = int(result.outcome_counts[: shifted + 1, domain].sum())
        post = np.array([seen[domain] for seen in result.check_seen]) - before
        full = np.flatnonzero(post >= window)
        if not full.size:
            return None
        deadline = int(full[0])
        return any(d == domain and 0 < post[c] and c <= deadline for c, d in result.rebirth_checks)
    # A result built by hand without check records: checks at loop starts.
    seen = np.cumsum(result.outcome_counts[shifted + 1 :, domain])  # seen[j]: outcomes before the check at loop shifted + 2 + j
    full = np.flatnonzero(seen >= window)
    if not full.size:
        return None
    deadline = shifted + 2 + int(full[0])
    return any(d == domain and shifted + 1 < loop <= deadline for loop, d in result.rebirths)


def _scenario_domains(law: tuple[float, float, float]) -> tuple[DomainSpec, ...]:
    return (
        DomainSpec("Mathematics", 0.30, 0.70, 1500, (0.85, 0.65, 0.75)),
        DomainSpec("Programming", 0.35, 0.75, 1000, (0.85, 0.70, 0.75)),
        DomainSpec("Physics", 0.45, 0.70, 800, (0.75, 0.75, 0.75)),
        DomainSpec("History", 0.60, 0.80, 400, (0.70, 0.85, 0.75)),
        DomainSpec("Law", *law, (0.65, 0.80, 0.70)),
        DomainSpec("Literature", 0.65, 0.80, 300, (0.75, 0.80, 0.75)),
    )


# A reasoning-heavy static mixture of the kind common in SFT recipes, fixed before any run.
_FIXED_MIX = {"Mathematics": 0.25, "Programming": 0.25, "Physics": 0.15, "History": 0.10, "Law": 0.10, "Literature": 0.15}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "heterogeneous",
            "six learnable domains with different starting points, ceilings and learning rates",
            _scenario_domains((0.40, 0.65, 600)),
            _FIXED_MIX,
        ),
        Scenario(
            "unlearnable",
            "as heterogeneous, but the target cannot learn Law (ceiling = floor = 0.30) while the sources are strong",
            _scenario_domains((0.30, 0.30, 600)),
            _FIXED_MIX,
        ),
        Scenario(
            "skill_shift",
            "as heterogeneous, and after 1000 samples Mathematics jumps to 0.72 while Literature drops to 0.25",
            _scenario_domains((0.40, 0.65, 600)),
            _FIXED_MIX,
            shifts=(SkillShift("Mathematics", 1000, 0.72), SkillShift("Literature", 1000, 0.25)),
        ),
    )
}
