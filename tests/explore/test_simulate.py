import numpy as np
import pytest

from llm_alloy.explore.simulate import (
    SCENARIOS,
    DomainSpec,
    Scenario,
    SimulatedLearner,
    SkillShift,
    reborn_within_window,
    run_allocation,
    samples_to_reach,
)

WEAK_STRONG = Scenario(
    "weak_strong",
    "two domains where the target trails strong sources, one where it matches them",
    (
        DomainSpec("Algebra", 0.2, 0.3, 500, (0.9, 0.9)),
        DomainSpec("Chemistry", 0.25, 0.35, 500, (0.9, 0.85)),
        DomainSpec("Poetry", 0.9, 0.9, 500, (0.9, 0.9)),
    ),
    {"Algebra": 1, "Chemistry": 1, "Poetry": 1},
)


def test_learning_curve_forgetting_and_shift():
    scenario = Scenario(
        "s", "", (DomainSpec("A", 0.2, 0.8, 100, (0.9,)), DomainSpec("B", 0.3, 0.3, 100, (0.9,))), {},
        shifts=(SkillShift("B", 300, 0.7),), forgetting=1e-3,
    )
    learner = SimulatedLearner(scenario)
    learner.train(np.array([100, 0]))
    assert learner.accuracy()[0] == pytest.approx(0.2 + 0.6 * (1 - np.exp(-1)))
    learner.train(np.array([0, 100]))
    assert learner.experience[0] == pytest.approx(100 * np.exp(-0.1))  # forgetting while B trains
    assert learner.accuracy()[1] == pytest.approx(0.3)  # unlearnable: ceiling == floor
    assert learner.train(np.array([100, 0])) == ["B"]
    assert learner.accuracy()[1] == pytest.approx(0.7)


def test_judge_loss_rate_matches_the_model():
    learner = SimulatedLearner(WEAK_STRONG)
    domains = np.zeros(200_000, dtype=int)
    out = learner.outcomes(domains, np.random.default_rng(0))
    some_source_right = 1 - 0.1 * 0.1
    expected = 0.9 * (0.8 * some_source_right) + 0.1 * (2 / 3)
    assert out.loss.mean() == pytest.approx(expected, abs=0.005)
    assert out.verified.mean() == pytest.approx(0.81, abs=0.005)


def test_runs_are_reproducible():
    a = run_allocation(SCENARIOS["heterogeneous"], "learning_progress", 1000, seed=3)
    b = run_allocation(SCENARIOS["heterogeneous"], "learning_progress", 1000, seed=3)
    assert np.array_equal(a.accuracy, b.accuracy) and np.array_equal(a.train_counts, b.train_counts)
    assert a.train_counts.sum() == 1000 and a.accuracy.shape == (6, 6)


def test_dynabranches_spends_the_budget_where_the_target_is_weak():
    result = run_allocation(WEAK_STRONG, "dynabranches", 2000, seed=0)
    per_domain = result.train_counts.sum(axis=0)
    assert per_domain[:2].sum() > 0.85 * per_domain.sum()
    uniform = run_allocation(WEAK_STRONG, "uniform", 2000, seed=0).train_counts.sum(axis=0)
    assert per_domain[2] < 0.5 * uniform[2]


def test_ir_rebirths_a_node_soon_after_a_large_skill_shift():
    scenario = Scenario(
        "big_shift", "", WEAK_STRONG.domains, WEAK_STRONG.fixed_mix, shifts=(SkillShift("Algebra", 1000, 0.95),)
    )
    flags = [
        reborn_within_window(run_allocation(scenario, "dynabranches", 3000, seed, window=20), 0, 20) for seed in range(20)
    ]
    decided = [flag for flag in flags if flag is not None]
    # Not all: a false alarm just before the shift can reset the node to a noisy window that then starves it.
    assert len(decided) >= 15 and np.mean(decided) >= 0.7


def test_oracles_read_the_truth():
    greedy = run_allocation(SCENARIOS["unlearnable"], "oracle_greedy", 2000, seed=0)
    maxmin = run_allocation(SCENARIOS["heterogeneous"], "oracle_maxmin", 4000, seed=0)
    assert greedy.train_counts[:, 4].sum() == 0  # never trains the unlearnable Law
    final = maxmin.accuracy[-1]
    uniform = run_allocation(SCENARIOS["heterogeneous"], "uniform", 4000, seed=0).accuracy[-1]
    assert final.max() - final.min() < uniform.max() - uniform.min()


def test_samples_to_reach_interpolates():
    samples = np.array([0, 100, 200])
    assert samples_to_reach(samples, np.array([0.1, 0.3, 0.5]), 0.4) == pytest.approx(150)
    assert np.isnan(samples_to_reach(samples, np.array([0.1, 0.3, 0.5]), 0.6))


def test_rebirth_cadence_and_options_reach_the_tree():
    scenario = SCENARIOS["skill_shift"]
    with pytest.raises(ValueError, match="rebirth_every"):
        run_allocation(scenario, "dynabranches", 400, seed=0, window=20, rebirth_every="outcome")
    loop = run_allocation(scenario, "dynabranches", 1200, seed=0, window=20)
    step = run_allocation(scenario, "dynabranches", 1200, seed=0, window=20, rebirth_every="step")
    assert len(loop.check_seen) == 5 and len(step.check_seen) == 12  # loop starts after the first; every step
    assert all(seen.sum() == 400 * (i + 1) for i, seen in enumerate(loop.check_seen))
    assert all(seen.sum() == 200 * (i + 1) for i, seen in enumerate(step.check_seen))
    assert [c for c, _ in loop.rebirth_checks] == sorted(c for c, _ in loop.rebirth_checks)
    assert len(loop.rebirths) == len(loop.rebirth_checks)
    with pytest.raises(ValueError, match="two_sample"):
        run_allocation(scenario, "dynabranches", 400, seed=0, window=20, rebirth_params={"test": "two_sample"})
    assert run_allocation(scenario, "dynabranches", 400, seed=0).check_seen == []  # no window, no IR


def test_reborn_within_window_counts_checks_with_post_shift_outcomes_up_to_the_first_full_window():
    def result(seen, rebirths):
        r = run_allocation(WEAK_STRONG, "uniform", 400, seed=0)
        r.outcome_counts = np.array([[50, 0, 0], [30, 0, 0]])  # 50 outcomes of domain 0 up to the shift
        r.shift_loops = {0: 0}
        r.check_seen = [np.array([s, 0, 0]) for s in seen]
        r.rebirth_checks = [(c, 0) for c in rebirths]
        return r

    seen = [50, 60, 69, 70, 90]  # post-shift outcomes 0, 10, 19, 20, 40: the deadline is the 4th check
    assert reborn_within_window(result(seen, [3]), 0, 20) is True
    assert reborn_within_window(result(seen, [1]), 0, 20) is True
    assert reborn_within_window(result(seen, [0]), 0, 20) is False  # before any post-shift outcome
    assert reborn_within_window(result(seen, [4]), 0, 20) is False  # too late
    assert reborn_within_window(result([50, 60], [1]), 0, 20) is None  # the run ended first
    assert reborn_within_window(result(seen, [3]), 1, 20) is None  # never shifted


def test_ir_extension_rebirths_soon_after_a_large_skill_shift():
    scenario = Scenario(
        "big_shift", "", WEAK_STRONG.domains, WEAK_STRONG.fixed_mix, shifts=(SkillShift("Algebra", 1000, 0.95),)
    )
    params = {"reference": "pre_window", "test": "two_sample", "recent": "loop"}
    flags = [
        reborn_within_window(run_allocation(scenario, "dynabranches", 2000, seed, window=20, rebirth_params=params), 0, 20)
        for seed in range(20)
    ]
    decided = [flag for flag in flags if flag is not None]
    assert len(decided) >= 15 and np.mean(decided) >= 0.9
