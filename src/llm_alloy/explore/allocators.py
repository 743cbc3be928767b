"""Allocators: where to explore next and what mix to train on, as small strategy objects chosen by name.

An allocator only answers "which of these arms?" at one level of the tree. `sample_path` and
`draw_training_mix` walk the tree with it, so every allocator gets the same descent, unk handling and
empty-node exclusion.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal, Mapping, Sequence

import numpy as np

from llm_alloy.explore.bandit import posterior_mean, thompson_draw
from llm_alloy.explore.tree import HISTORY_LOOPS, Arm, KnowledgeTree, LoopStat, Node

Signal = Literal["loss", "error"]
"""The outcome the pipeline records in the tree for an allocator.

loss: 1 when a source's answer was judged better than the target's (the paper's reward).
error: 1 when the target is wrong on a question with a checkable answer (a verifier, or two or more sources
agreeing); questions without one are stored without an outcome.
"""

SproutFn = Callable[[tuple[str, ...], int], "str | None"]
MAX_SPROUT_FAILURES = 10


class Allocator(ABC):
    name: ClassVar[str]
    signal: ClassVar[Signal] = "loss"

    @abstractmethod
    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        """Index of the arm to follow. An unk `Arm` is among the arms only when opening a domain is allowed."""


ALLOCATORS: dict[str, type[Allocator]] = {}


def register(cls: type[Allocator]) -> type[Allocator]:
    ALLOCATORS[cls.name] = cls
    return cls


def make_allocator(name: str, **params: object) -> Allocator:
    try:
        cls = ALLOCATORS[name]
    except KeyError:
        raise ValueError(f"unknown allocator {name!r}; known: {', '.join(sorted(ALLOCATORS))}") from None
    accepted = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"allocator {name!r} got unknown parameter(s) {unknown}; accepts: {sorted(accepted) or 'none'}")
    return cls(**params)


def _thompson_argmax(arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
    draws = thompson_draw([a.alpha for a in arms], [a.beta for a in arms], rng)
    return int(np.argmax(draws))


def _unk_index(arms: Sequence[Node | Arm]) -> int | None:
    return next((i for i, arm in enumerate(arms) if isinstance(arm, Arm)), None)


def _loop_stats(node: Node, last: int) -> tuple[LoopStat, ...]:
    """The last `last` loops, the one in progress included, oldest first (a hashable memo key)."""
    if node.loop_n:
        closed = node.history[max(len(node.history) - last + 1, 0) :]
        return (*closed, LoopStat(node.trained, node.loop_n, node.loop_successes))
    return tuple(node.history[-last:])


def _weighted_pick(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Categorical draw; cheaper than Generator.choice for the handful of arms of one level."""
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


@register
@dataclasses.dataclass(frozen=True)
class Uniform(Allocator):
    """Every arm (unk included) equally likely: the data-mix baseline."""

    name: ClassVar[str] = "uniform"

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        return int(rng.integers(len(arms)))


@register
@dataclasses.dataclass(frozen=True)
class Fixed(Allocator):
    """Given proportions over main domains, uniform below them: the static-mixture baseline.

    Meant for seeded trees: a main domain missing from the proportions, and the root's unk arm, get weight 0.
    If no named domain exists yet, it falls back to uniform so an empty tree can still grow.
    """

    name: ClassVar[str] = "fixed"
    proportions: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(w < 0 for w in self.proportions.values()) or sum(self.proportions.values()) <= 0:
            raise ValueError(f"fixed proportions must be non-negative with a positive sum, got {dict(self.proportions)}")

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        top_level = any(isinstance(a, Node) and len(a.path) == 1 for a in arms)
        weights = np.array([self.proportions.get(a.name, 0.0) if isinstance(a, Node) else 0.0 for a in arms])
        if not top_level or weights.sum() <= 0:
            return int(rng.integers(len(arms)))
        return _weighted_pick(weights, rng)


@register
@dataclasses.dataclass(frozen=True)
class LossRate(Allocator):
    """Sample arms in proportion to their posterior mean loss rate (no exploration bonus beyond the prior)."""

    name: ClassVar[str] = "loss_rate"

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        return _weighted_pick(np.array([posterior_mean(a.alpha, a.beta) for a in arms]), rng)


@register
@dataclasses.dataclass(frozen=True)
class DynaBranches(Allocator):
    """The paper's allocator: Thompson sampling on every arm's Beta posterior over the target's loss rate."""

    name: ClassVar[str] = "dynabranches"

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        return _thompson_argmax(arms, rng)


@register
@dataclasses.dataclass(frozen=True)
class Balance(Allocator):
    """Thompson sampling on the target's own recent error rate, to even out per-domain accuracy.

    Loss to the sources mixes the target's weakness with the sources' strength: where every source is weak the
    target rarely "loses", however poor it is. So this allocator records `error` outcomes instead (the target
    is wrong on a question with a checkable answer), and its posterior discounts each past loop by `discount`,
    so a domain that has caught up stops drawing data within a few loops instead of after its whole history
    is outweighed. Thompson on error rates sends nearly every draw to the weakest domain once the posteriors
    are sharp, which is the max-min allocation; discount=1 recovers a plain (undiscounted) posterior.
    The unk arm competes with its own Beta posterior, as in DynaBranches.
    """

    name: ClassVar[str] = "balance"
    signal: ClassVar[Signal] = "error"
    discount: float = 0.7

    def __post_init__(self) -> None:
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        posteriors = [
            (a.alpha, a.beta) if isinstance(a, Arm) else _discounted_posterior(_loop_stats(a, HISTORY_LOOPS), self.discount)
            for a in arms
        ]
        alphas, betas = zip(*posteriors)
        return int(np.argmax(thompson_draw(alphas, betas, rng)))


@functools.lru_cache(maxsize=4096)
def _discounted_posterior(stats: tuple[LoopStat, ...], discount: float) -> tuple[float, float]:
    weights = discount ** np.arange(len(stats) - 1, -1, -1)
    successes = float(sum(w * s.successes for w, s in zip(weights, stats)))
    n = float(sum(w * s.n for w, s in zip(weights, stats)))
    return 1.0 + successes, 1.0 + n - successes


@register
@dataclasses.dataclass(frozen=True)
class LearningProgress(Allocator):
    """Send data where the target's loss is moving: value = change of its loss rate per trained sample.

    For each domain, a weighted least-squares line through its last `horizon` loops' loss rates against the
    number of samples of that domain trained so far gives a slope and its standard error (binomial noise); the
    arm's Thompson draw is |s| with s ~ N(slope, se^2). The absolute value (absolute learning progress, as in
    curriculum learning) matters: a domain whose loss *rose* (forgetting, a skill drop) shows a positive slope
    and must win data back, not be shunned as "negative progress". A domain whose loss stopped moving draws
    near zero and loses to domains still improving, so it stops receiving data; one with too little training
    spread to fit a line (fewer than two distinct trained counts) is left to the exploration floor: with
    probability `floor` a draw is uniform over the domains, so nothing is starved for good and a stalled
    domain is re-measured.
    Whether to open a new domain is decided first by the loss posteriors (as DynaBranches), since a slope is
    not comparable with the unk arm's probability.
    Horizon trade-off (measured on the simulated learner, benchmarks/results/allocation.md): a loop measures a
    domain's loss rate on only tens of questions and the slopes that separate domains are small, so horizon 8
    leaves them mostly noise and allocates almost uniformly (safe, little gain); horizon = HISTORY_LOOPS (32)
    separates them (about 0.45 of the way to the greedy oracle in samples) but reads a sudden skill jump as a
    steep slope and keeps feeding a domain that has stopped moving (-0.019 mean accuracy to uniform on the
    skill-shift scenario at 4000 samples). The default stays 8. `discount` < 1 down-weights older loops
    (discount**age) to follow a bending curve more closely, at the cost of noise.
    """

    name: ClassVar[str] = "learning_progress"
    horizon: int = 8
    floor: float = 0.1
    discount: float = 1.0

    def __post_init__(self) -> None:
        if self.horizon < 2 or not 0 <= self.floor <= 1 or not 0 < self.discount <= 1:
            raise ValueError(
                f"need horizon >= 2, 0 <= floor <= 1 and 0 < discount <= 1, got horizon={self.horizon}, "
                f"floor={self.floor}, discount={self.discount}"
            )

    def choose(self, arms: Sequence[Node | Arm], rng: np.random.Generator) -> int:
        unk = _unk_index(arms)
        if unk is not None and _thompson_argmax(arms, rng) == unk:
            return unk
        domains = [i for i in range(len(arms)) if i != unk]
        if rng.random() >= self.floor:
            fits = np.array([_loss_trend(_loop_stats(arms[i], self.horizon), self.discount) for i in domains])
            if not np.isnan(fits[:, 0]).all():
                draws = np.abs(rng.normal(fits[:, 0], fits[:, 1]))
                return domains[int(np.nanargmax(draws))]
        return domains[int(rng.integers(len(domains)))]


@functools.lru_cache(maxsize=4096)
def _loss_trend(stats: tuple[LoopStat, ...], discount: float = 1.0) -> tuple[float, float]:
    """Weighted least-squares slope of loss rate against trained samples, and its standard error (nan, nan if
    the loops measured fewer than two distinct trained counts). discount < 1 down-weights a loop by
    discount**age (age 0 = the newest), so a fit follows the recent stretch of the curve."""
    ages = np.arange(len(stats) - 1, -1, -1)
    keep = [i for i, s in enumerate(stats) if s.n]
    stats, ages = tuple(stats[i] for i in keep), ages[keep]
    x = np.array([s.trained for s in stats], dtype=float)
    if len(set(x)) < 2:
        return float("nan"), float("nan")
    n = np.array([s.n for s in stats], dtype=float)
    y = (np.array([s.successes for s in stats]) + 0.5) / (n + 1.0)
    # One binomial noise level from the pooled rate: per-loop rates as their own variance would favour lucky loops.
    pooled = float(np.clip(np.average(y, weights=n), 0.05, 0.95))
    w = n * discount**ages / (pooled * (1.0 - pooled))
    x_mean = np.average(x, weights=w)
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    slope = float(np.sum(w * (x - x_mean) * (y - np.average(y, weights=w)))) / sxx
    return slope, 1.0 / np.sqrt(sxx)


def sample_path(
    tree: KnowledgeTree,
    allocator: Allocator,
    rng: np.random.Generator,
    sprout: SproutFn | None = None,
    max_failures: int = MAX_SPROUT_FAILURES,
) -> tuple[str, ...] | None:
    """Descend from the root to a leaf at max depth (DynaBranches path sampling).

    When the unk arm wins, sprout(parent_path, level) names a new domain (level 1 = main domain): on success
    the domain is added and the descent continues below it; on None (or a name already there) the level is
    drawn again. After `max_failures` failures in this path the failing unk arm is disabled and the path
    abandoned (None).
    Without a sprout callable unk is never chosen, so None also means a node with no child to descend to.
    """
    path: tuple[str, ...] = ()
    failures = 0
    while len(path) < tree.max_depth:
        parent = tree.node(path)
        arms: list[Node | Arm] = list(parent.children.values())
        unk = parent.unk
        if sprout is not None and unk is not None and not unk.disabled:
            arms.append(unk)
        if not arms:
            return None
        arm = arms[allocator.choose(arms, rng)]
        if isinstance(arm, Node):
            path = arm.path
            continue
        name = sprout(path, len(path) + 1)
        if name is not None and name not in parent.children:
            tree.add_child(path, name)
            arm.alpha += 1
            path = (*path, name)
            continue
        arm.beta += 1
        arm.failures += 1
        failures += 1
        if failures >= max_failures:
            arm.disable()
            return None
    return path


def _usable_pools(tree: KnowledgeTree, min_answer_chars: int) -> dict[tuple[str, ...], list[dict]]:
    """Usable records of every node whose subtree has any (a node's entry is its own leaf pool or empty)."""
    usable: dict[tuple[str, ...], list[dict]] = {}
    for leaf in tree.leaves():
        records = [r for r in leaf.pool if len(str(r.get("answer", ""))) > min_answer_chars]
        if records:
            for depth in range(1, len(leaf.path)):
                usable.setdefault(leaf.path[:depth], [])
            usable[leaf.path] = records
    return usable


def draw_training_mix(
    tree: KnowledgeTree, allocator: Allocator, rng: np.random.Generator, n: int, min_answer_chars: int = 30
) -> list[dict]:
    """n records drawn by descending with the allocator, skipping unk and nodes with no usable record.

    Each draw counts as trained on every node of its path (what learning-progress reads). Returns [] when the
    tree holds no usable record yet.
    """
    usable = _usable_pools(tree, min_answer_chars)
    records: list[dict] = []
    if not usable:
        return records
    for _ in range(n):
        node = tree.root
        while node.children:
            arms = [child for child in node.children.values() if child.path in usable]
            node = arms[allocator.choose(arms, rng)]
        pool = usable[node.path]
        records.append(pool[int(rng.integers(len(pool)))])
        tree.mark_trained(node.path)
    return records
