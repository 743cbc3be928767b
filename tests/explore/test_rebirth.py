import math

import numpy as np
import pytest
from scipy.stats import chi2

from llm_alloy.explore.rebirth import apply_rebirth, rebirth_decision, rebirth_pvalue, window_llr
from llm_alloy.explore.tree import KnowledgeTree


def test_llr_matches_direct_computation():
    s, n, p0 = 7, 20, 0.4
    p1 = s / n
    direct = 2 * (s * math.log(p1 / p0) + (n - s) * math.log((1 - p1) / (1 - p0)))
    assert window_llr(s, n, p0) == pytest.approx(direct, rel=1e-6)
    assert rebirth_pvalue(s, n, p0) == pytest.approx(chi2.sf(direct, 1), rel=1e-6)
    assert window_llr(8, 20, 0.4) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.2])
def test_rebirth_exactly_when_llr_exceeds_the_chi2_critical_value(threshold):
    critical = chi2.ppf(1 - threshold, 1)
    alpha, beta = 61.0, 41.0  # long-run loss rate 0.6
    for s in range(21):
        window = [1] * s + [0] * (20 - s)
        decision = rebirth_decision(alpha, beta, window, threshold, size=20)
        assert decision.reborn == (decision.llr > critical), s
        if decision.reborn:
            assert (decision.alpha, decision.beta) == (1 + s, 1 + 20 - s)
        else:
            assert (decision.alpha, decision.beta) == (alpha, beta)


def test_all_failures_and_all_successes_are_finite_and_reborn():
    zero = rebirth_decision(50.0, 50.0, [0] * 20, size=20)
    full = rebirth_decision(50.0, 50.0, [1] * 20, size=20)
    for decision in (zero, full):
        assert math.isfinite(decision.llr) and decision.reborn
    assert (zero.alpha, zero.beta) == (1, 21)
    assert (full.alpha, full.beta) == (21, 1)
    # p0 at the edge (a posterior that never saw a loss) stays finite too.
    assert math.isfinite(window_llr(5, 20, 0.0)) and math.isfinite(window_llr(0, 20, 1.0))


def test_short_history_is_not_tested():
    assert rebirth_decision(5.0, 5.0, [1] * 19, size=20) is None
    assert rebirth_decision(5.0, 5.0, [], size=20) is None


def test_uniform_prior_uses_the_mean():
    calm = rebirth_decision(1.0, 1.0, [1, 0] * 10, size=20)
    assert calm.p0 == 0.5 and not calm.reborn
    assert rebirth_decision(1.0, 1.0, [1] * 20, size=20).reborn


def test_very_long_history():
    decision = rebirth_decision(6e9 + 1, 4e9 + 1, [1] * 12 + [0] * 8, size=20)
    assert math.isfinite(decision.llr) and not decision.reborn
    shifted = rebirth_decision(6e9 + 1, 4e9 + 1, [0] * 18 + [1] * 2, size=20)
    assert shifted.reborn and np.isfinite(shifted.pvalue)


def test_apply_rebirth_resets_only_nodes_whose_window_disagrees():
    tree = KnowledgeTree.seeded(["Stale", "Steady"], max_depth=1, window=20)
    for _ in range(200):
        tree.record(("Stale",), 1)
    for reward in [0, 1] * 100:
        tree.record(("Steady",), reward)
    for _ in range(20):
        tree.record(("Stale",), 0)  # the target caught up
    assert apply_rebirth(tree) == [("Stale",)]
    assert (tree.node(("Stale",)).alpha, tree.node(("Stale",)).beta) == (1, 21)
    assert apply_rebirth(KnowledgeTree.seeded(["A"], max_depth=1, window=None)) == []
