"""Introspection-Rebirth (IR): a sliding-window likelihood-ratio test (SWBLRT) per node.

Training changes the target, so a node's long-run posterior goes stale. At the start of each loop after the
first, every node whose window is full is tested: does the window's own loss rate differ from the long-run
belief? If so (p-value below the threshold) the node is reborn: its posterior keeps only the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from scipy.stats import chi2

from llm_alloy.explore.bandit import posterior_mode

if TYPE_CHECKING:
    from llm_alloy.explore.tree import KnowledgeTree

DEFAULT_THRESHOLD = 0.1


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


def rebirth_decision(
    alpha: float, beta: float, window: Sequence[int], threshold: float = DEFAULT_THRESHOLD, *, size: int
) -> RebirthDecision | None:
    """Test one node; None while the window holds fewer than `size` outcomes (too little evidence)."""
    if len(window) < size:
        return None
    recent = window[-size:]
    successes = int(sum(recent))
    p0 = posterior_mode(alpha, beta)
    llr = window_llr(successes, size, p0)
    pvalue = float(chi2.sf(llr, 1))
    reborn = pvalue < threshold
    if reborn:
        alpha, beta = 1.0 + successes, 1.0 + size - successes
    return RebirthDecision(reborn, pvalue, llr, p0, successes / size, successes, size, alpha, beta)


def apply_rebirth(tree: KnowledgeTree, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[str, ...]]:
    """Test every node of the tree, rebirth those that fail; returns the reborn paths (none for a global tree)."""
    if tree.window is None:
        return []
    reborn = []
    for node in tree.iter_nodes():
        decision = rebirth_decision(node.alpha, node.beta, node.window, threshold, size=tree.window)
        if decision is not None and decision.reborn:
            node.alpha, node.beta = decision.alpha, decision.beta
            reborn.append(node.path)
    return reborn
