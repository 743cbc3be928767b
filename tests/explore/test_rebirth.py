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


# --- extensions: pre-window reference, two-sample test, loop-sized recent sample ---------------------------

from llm_alloy.explore.bandit import posterior_mode  # noqa: E402
from llm_alloy.explore.rebirth import (  # noqa: E402
    check_options,
    pre_window_posterior,
    recent_sample,
    segment_decision,
    two_sample_llr,
)
from llm_alloy.explore.tree import LoopStat  # noqa: E402


def _tree_with(outcomes, window=20):
    tree = KnowledgeTree.seeded(["A"], max_depth=1, window=window)
    for reward in outcomes:
        tree.record(("A",), reward)
    return tree, tree.node(("A",))


def test_pre_window_reference_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    outcomes = [int(x) for x in rng.random(137) < 0.6] + [int(x) for x in rng.random(20) < 0.2]
    _, node = _tree_with(outcomes)
    before, recent = outcomes[:-20], outcomes[-20:]
    direct_p0 = sum(before) / len(before)  # mode of Beta(1 + S_before, 1 + F_before)
    assert pre_window_posterior(node.alpha, node.beta, sum(recent), 20) == (1 + sum(before), 1 + len(before) - sum(before))
    decision = rebirth_decision(node.alpha, node.beta, node.window, size=20, reference="pre_window")
    assert decision.p0 == pytest.approx(direct_p0)
    assert decision.llr == pytest.approx(window_llr(sum(recent), 20, direct_p0))
    # The paper's reference contains the window, so its p0 sits between the two rates.
    paper = rebirth_decision(node.alpha, node.beta, node.window, size=20)
    assert paper.p0 == pytest.approx(sum(outcomes) / len(outcomes))
    assert decision.llr > paper.llr


def test_pre_window_without_earlier_evidence_is_not_tested():
    _, node = _tree_with([1, 0] * 10)
    assert rebirth_decision(node.alpha, node.beta, node.window, size=20, reference="pre_window") is None
    assert rebirth_decision(node.alpha, node.beta, node.window, size=20) is not None  # the paper still tests
    # Right after a rebirth the posterior is exactly the window: a second call changes nothing.
    tree, node = _tree_with([1] * 200 + [0] * 20)
    assert apply_rebirth(tree, reference="pre_window") == [("A",)]
    assert (node.alpha, node.beta) == (1, 21)
    tested = []
    assert apply_rebirth(tree, reference="pre_window", tested=tested) == [] and tested == []


def test_pre_window_clamps_at_the_prior_when_the_window_exceeds_the_evidence():
    assert pre_window_posterior(3.0, 2.0, 5, 10) == (1.0, 1.0)
    assert rebirth_decision(3.0, 2.0, [1] * 5 + [0] * 5, size=10, reference="pre_window") is None


def test_two_sample_llr_matches_direct_computation():
    s, n, s0, n0 = 5, 20, 60.0, 100.0
    p1, q, p = s / n, s0 / n0, (s + s0) / (n + n0)
    direct = 2 * (
        s * math.log(p1 / p) + (n - s) * math.log((1 - p1) / (1 - p)) + s0 * math.log(q / p) + (n0 - s0) * math.log((1 - q) / (1 - p))
    )
    assert two_sample_llr(s, n, s0, n0) == pytest.approx(direct, rel=1e-6)
    assert two_sample_llr(6, 20, 30.0, 100.0) == pytest.approx(0.0, abs=1e-9)  # equal rates
    assert two_sample_llr(5, 20, 0.0, 0.0) == 0.0  # nothing to compare with
    # A long reference makes it the one-sample test against the reference's rate; a short one is more cautious.
    assert two_sample_llr(5, 20, 6e8, 1e9) == pytest.approx(window_llr(5, 20, 0.6), rel=1e-4)
    assert two_sample_llr(5, 20, 12.0, 20.0) < window_llr(5, 20, 0.6)
    with pytest.raises(ValueError):
        two_sample_llr(5, 20, 30.0, 20.0)


def test_two_sample_decision_and_edge_counts():
    _, node = _tree_with([1] * 60 + [0] * 40 + [0] * 20)
    decision = rebirth_decision(node.alpha, node.beta, node.window, size=20, reference="pre_window", test="two_sample")
    assert decision.p0 == pytest.approx(0.6) and decision.reborn
    assert decision.llr == pytest.approx(two_sample_llr(0, 20, 60.0, 100.0))
    assert (decision.alpha, decision.beta) == (1, 21)
    for window in ([0] * 20, [1] * 20):  # S = 0 and S = n against a reference at an edge stay finite
        for ref in ((1.0, 101.0), (101.0, 1.0)):
            d = segment_decision(ref[0] + sum(window), ref[1] + 20 - sum(window), sum(window), 20, reference="pre_window", test="two_sample")
            assert math.isfinite(d.llr) and 0 <= d.pvalue <= 1


def test_unknown_or_inconsistent_options_are_rejected():
    for kwargs in ({"reference": "prior"}, {"test": "three_sample"}, {"test": "two_sample"}):
        with pytest.raises(ValueError):
            rebirth_decision(5.0, 5.0, [1] * 20, size=20, **kwargs)
    with pytest.raises(ValueError, match="recent"):
        check_options("pre_window", "one_sample", "epoch")
    with pytest.raises(ValueError, match="two_sample"):
        apply_rebirth(KnowledgeTree.seeded(["A"], max_depth=1), test="two_sample")
    with pytest.raises(ValueError):
        segment_decision(5.0, 5.0, 0, 0)


def test_recent_sample_is_the_last_loop_when_longer_than_the_window():
    tree, node = _tree_with([1] * 30)
    assert recent_sample(node, 20, "loop") == (20, 20)  # no closed loop yet: the window
    tree.close_exploration()
    assert node.history[-1] == LoopStat(0, 30, 30)
    assert recent_sample(node, 20, "window") == (20, 20)
    assert recent_sample(node, 20, "loop") == (30, 30)
    for reward in [0] * 5:
        tree.record(("A",), reward)
    assert recent_sample(node, 20, "loop") == (30, 35)  # the last loop plus the one in progress
    tree.close_exploration()
    for reward in [0] * 10:
        tree.record(("A",), reward)
    tree.close_exploration()
    assert recent_sample(node, 20, "loop") == (5, 20)  # a short loop: the window, 5 ones then 15 zeros
    assert recent_sample(_tree_with([1] * 19)[1], 20, "loop") is None


def test_loop_sample_sees_a_shift_that_a_diluted_window_misses():
    # 400 outcomes at 0.6, then one loop of 150 at 0.35: the paper's window test compares its last 20 with a
    # posterior that already holds the 150; the loop test compares the 150 with the 400 before them.
    rng = np.random.default_rng(3)
    tree = KnowledgeTree.seeded(["A"], max_depth=1, window=20)
    for reward in (rng.random(400) < 0.6).astype(int):
        tree.record(("A",), int(reward))
    tree.close_exploration()
    shifted = [1] * 42 + [0] * 88 + [1, 0] * 10  # 52 of 150, the last 20 at the long-run rate 0.5
    for reward in shifted:
        tree.record(("A",), reward)
    tree.close_exploration()
    node = tree.node(("A",))
    alpha, beta = node.alpha, node.beta
    assert rebirth_decision(alpha, beta, node.window, size=20).reborn is False
    assert apply_rebirth(tree, reference="pre_window", test="two_sample", recent="loop") == [("A",)]
    assert (node.alpha, node.beta) == (1 + 52, 1 + 98)
    assert posterior_mode(node.alpha, node.beta) == pytest.approx(52 / 150)
