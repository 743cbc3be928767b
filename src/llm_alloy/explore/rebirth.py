"""Introspection-Rebirth (IR): a sliding-window likelihood-ratio test (SWBLRT) per node.

Training changes the target, so a node's long-run posterior goes stale. At the start of each loop after the
first, every node whose window is full is tested: does the window's own loss rate differ from the long-run
belief? If so (p-value below the threshold) the node is reborn: its posterior keeps only the window.

Extensions (the defaults are the paper's test):
- reference="pre_window": the window is compared with the evidence *before* it (the posterior minus the
  window's own counts) instead of with a posterior that already contains it, so the test asks "recent vs
  older" rather than "recent vs everything including recent" (which pulls p0 toward the window and costs
  power). With nothing before the window (a node just reborn, or whose whole history is the window) there
  is nothing to compare with and the node is not tested.
- test="two_sample" (needs reference="pre_window"): the likelihood-ratio test of equal loss rates in the
  window and in the pre-window evidence, with the pooled rate as the null. The one-sample test treats p0
  as exact, which over-rejects when the pre-window evidence is short (right after a rebirth, say); the
  two-sample statistic accounts for both samples' noise and tends to the one-sample one as the pre-window
  evidence grows. Still chi-square(1) and two-sided: a shift in either direction is detected.
- recent="loop": the recent sample is the node's outcomes since the start of its last closed exploration loop
  (at a loop-start check: exactly the last loop's outcomes, all measured on one target), or its window if
  that is longer. The target changes only when it is trained, so the candidate change points are known:
  the loop boundaries. Testing everything measured since the last one, instead of only its last W outcomes,
  uses all the post-change evidence a heavily sampled node has; a rebirth keeps that whole sample. Meant
  with reference="pre_window" (recent vs everything before it).
- Cadence is the caller's choice: the paper calls `apply_rebirth` at loop starts only. Calling it after
  every exploration step as well tests a node before many post-shift outcomes have been folded into its
  reference (see `llm_alloy.explore.simulate.run_allocation(rebirth_every=...)` for the measured effect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from scipy.stats import chi2

from llm_alloy.explore.bandit import posterior_mode

if TYPE_CHECKING:
    from llm_alloy.explore.tree import KnowledgeTree, Node

DEFAULT_THRESHOLD = 0.1

Reference = Literal["posterior", "pre_window"]
Test = Literal["one_sample", "two_sample"]
Recent = Literal["window", "loop"]
REFERENCES: tuple[str, ...] = ("posterior", "pre_window")
TESTS: tuple[str, ...] = ("one_sample", "two_sample")
RECENTS: tuple[str, ...] = ("window", "loop")


@dataclass(frozen=True)
class RebirthDecision:
    """Outcome of one full-window test; alpha/beta is the posterior to keep (reset only when reborn)."""

    reborn: bool
    pvalue: float
    llr: float
    p0: float
    p1: float
    successes: int
    n: int
    alpha: float
    beta: float


def window_llr(successes: int, n: int, p0: float, eps: float = 1e-9) -> float:
    """2 [S ln(p1/p0) + (n-S) ln((1-p1)/(1-p0))] with p1 = S/n and eps inside the logs.

    eps keeps S = 0, S = n and p0 in {0, 1} finite; a zero count multiplies a finite log, so no 0 * inf.
    The statistic is non-negative in exact arithmetic; the clamp removes eps-sized negatives.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    p1 = successes / n
    failures = n - successes
    llr = 2.0 * (
        successes * math.log((p1 + eps) / (p0 + eps)) + failures * math.log((1.0 - p1 + eps) / (1.0 - p0 + eps))
    )
    return max(llr, 0.0)


def rebirth_pvalue(successes: int, n: int, p0: float, eps: float = 1e-9) -> float:
    """Upper tail of chi-square(1) at the window's LLR."""
    return float(chi2.sf(window_llr(successes, n, p0, eps), 1))


def check_options(reference: str, test: str, recent: str = "window") -> None:
    """Raise ValueError for an unknown reference, test or recent sample, or a two-sample test against a
    reference that contains the recent sample (the two samples would overlap)."""
    if recent not in RECENTS:
        raise ValueError(f"unknown rebirth recent sample {recent!r}; known: {', '.join(RECENTS)}")
    if reference not in REFERENCES:
        raise ValueError(f"unknown rebirth reference {reference!r}; known: {', '.join(REFERENCES)}")
    if test not in TESTS:
        raise ValueError(f"unknown rebirth test {test!r}; known: {', '.join(TESTS)}")
    if test == "two_sample" and reference != "pre_window":
        raise ValueError("test='two_sample' needs reference='pre_window' (the posterior contains the window)")


def pre_window_posterior(alpha: float, beta: float, successes: int, n: int) -> tuple[float, float]:
    """The posterior of the outcomes before the window: the window's counts taken back out of (alpha, beta).

    Exact for a tree node, whose posterior always contains its window (a rebirth keeps exactly the window,
    later outcomes go to both). A window larger than the evidence (an edited file) is clamped at the prior.
    """
    return max(alpha - successes, 1.0), max(beta - (n - successes), 1.0)


def two_sample_llr(successes: int, n: int, ref_successes: float, ref_n: float, eps: float = 1e-9) -> float:
    """Likelihood-ratio statistic for "window rate == reference rate", pooled rate under the null.

    2 [S ln(p1/p) + (n-S) ln((1-p1)/(1-p)) + S0 ln(q/p) + (n0-S0) ln((1-q)/(1-p))], p1 = S/n, q = S0/n0,
    p = (S+S0)/(n+n0): the sum of the two one-sample statistics against the pooled rate. Reference counts may
    be fractional (pseudo-counts read off a posterior). With n0 = 0 the statistic is 0 (nothing to compare).
    """
    if ref_n < 0 or not 0 <= ref_successes <= ref_n:
        raise ValueError(f"need 0 <= ref_successes <= ref_n, got ref_successes={ref_successes}, ref_n={ref_n}")
    if ref_n == 0:
        return 0.0
    pooled = (successes + ref_successes) / (n + ref_n)
    return window_llr(successes, n, pooled, eps) + window_llr(ref_successes, ref_n, pooled, eps)


def rebirth_decision(
    alpha: float,
    beta: float,
    window: Sequence[int],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    size: int,
    reference: Reference = "posterior",
    test: Test = "one_sample",
) -> RebirthDecision | None:
    """Test one node; None while the window holds fewer than `size` outcomes (too little evidence), and, for
    reference="pre_window", when no evidence precedes the window. p0 in the decision is the reference rate."""
    check_options(reference, test)
    if len(window) < size:
        return None
    return segment_decision(alpha, beta, int(sum(window[-size:])), size, threshold, reference=reference, test=test)


def segment_decision(
    alpha: float,
    beta: float,
    successes: int,
    n: int,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    reference: Reference = "posterior",
    test: Test = "one_sample",
) -> RebirthDecision | None:
    """The test on a recent sample given by its counts (the last n outcomes, `successes` of them 1).

    None, for reference="pre_window", when no evidence precedes the sample. A rebirth keeps the sample.
    """
    check_options(reference, test)
    if n <= 0:
        raise ValueError(f"need a non-empty recent sample, got n={n}")
    ref_alpha, ref_beta = alpha, beta
    if reference == "pre_window":
        ref_alpha, ref_beta = pre_window_posterior(alpha, beta, successes, n)
        if ref_alpha + ref_beta <= 2.0:
            return None
    p0 = posterior_mode(ref_alpha, ref_beta)
    if test == "two_sample":
        # The reference posterior's evidence as (fractional) counts; their proportion is its mode p0.
        llr = two_sample_llr(successes, n, ref_alpha - 1.0, ref_alpha + ref_beta - 2.0)
    else:
        llr = window_llr(successes, n, p0)
    pvalue = float(chi2.sf(llr, 1))
    reborn = pvalue < threshold
    if reborn:
        alpha, beta = 1.0 + successes, 1.0 + n - successes
    return RebirthDecision(reborn, pvalue, llr, p0, successes / n, successes, n, alpha, beta)


def recent_sample(node: Node, size: int, recent: Recent = "window") -> tuple[int, int] | None:
    """(successes, n) of the node's recent sample; None while its window holds fewer than `size` outcomes.

    "window": the last `size` outcomes. "loop": the outcomes of its last closed loop plus those recorded
    since (`Node.history[-1]` and `loop_n`), when that is more than the window; a suffix of the node's
    outcomes either way, so taking it out of the posterior leaves exactly what came before it.
    """
    if len(node.window) < size:
        return None
    successes, n = int(sum(node.window[-size:])), size
    if recent == "loop" and node.history:
        last = node.history[-1]
        if last.n + node.loop_n > n:
            successes, n = last.successes + node.loop_successes, last.n + node.loop_n
    return successes, n


def apply_rebirth(
    tree: KnowledgeTree,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    reference: Reference = "posterior",
    test: Test = "one_sample",
    recent: Recent = "window",
    tested: list[tuple[str, ...]] | None = None,
) -> list[tuple[str, ...]]:
    """Test every node of the tree, rebirth those that fail; returns the reborn paths (none for a global tree).

    The paper calls this at the start of every loop after the first. With reference="pre_window" it may also
    be called after every exploration step: a node is tested on its latest window against what preceded it,
    and calling it twice without new outcomes rebirths nothing twice. `tested`, if given, receives the path
    of every node actually tested (full window, and a pre-window reference where one is asked for).
    """
    check_options(reference, test, recent)
    if tree.window is None:
        return []
    reborn = []
    for node in tree.iter_nodes():
        sample = recent_sample(node, tree.window, recent)
        if sample is None:
            continue
        decision = segment_decision(node.alpha, node.beta, *sample, threshold, reference=reference, test=test)
        if decision is not None and tested is not None:
            tested.append(node.path)
        if decision is not None and decision.reborn:
            node.alpha, node.beta = decision.alpha, decision.beta
            reborn.append(node.path)
    return reborn
