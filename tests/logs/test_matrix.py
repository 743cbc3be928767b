"""Query x arm matrices: leak-free splits, train-only normalisation, rewards, NaN for missing cells."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from llm_alloy.logs.matrix import SCENARIOS, ArmMatrix, Normalizer, split_of
from llm_alloy.logs.schema import LogRecord

ARMS = ["small", "small_think", "large"]


def record(query_id: str, arm: str, task: str = "gsm8k", performance: float | None = 1.0, cost: float = 1e-5,
           judge: float | None = None) -> LogRecord:
    model = arm.removesuffix("_think")
    style = "think" if arm.endswith("_think") else "direct"
    return LogRecord(query_id=query_id, arm=arm, model=model, prompt_style=style, task=task, query=f"text of {query_id}",
                     performance=performance, cost=cost, llm_judge=judge)


def full_log(n_queries: int, seed: int = 0) -> list[LogRecord]:
    rng = random.Random(seed)
    return [
        record(f"q{i}", arm, task="gsm8k" if i % 2 else "mbpp", performance=float(rng.random() < 0.5),
               cost=rng.uniform(1e-6, 1e-4))
        for i in range(n_queries) for arm in ARMS
    ]


# --- splits ---


def test_split_of_is_a_pure_function_of_the_id_and_salt():
    ids = [f"q{i}" for i in range(500)]
    first = [split_of(q) for q in ids]
    assert [split_of(q) for q in reversed(ids)] == first[::-1]
    assert [split_of(q, salt="other") for q in ids] != first


def test_split_fractions_follow_the_requested_sizes():
    labels = [split_of(f"query-{i}", validation=0.1, test=0.2) for i in range(4000)]
    assert labels.count("test") / 4000 == pytest.approx(0.2, abs=0.03)
    assert labels.count("validation") / 4000 == pytest.approx(0.1, abs=0.03)
    assert set(labels) == {"train", "validation", "test"}


def test_every_arm_of_a_query_lands_in_one_split_with_its_values():
    records = full_log(60)
    random.Random(1).shuffle(records)  # file order must not matter
    matrix = ArmMatrix.from_records(records, arms=ARMS)
    splits = matrix.split()
    seen = [q for part in splits.values() for q in part.query_ids]
    assert sorted(seen) == sorted(matrix.query_ids) and len(seen) == len(set(seen))
    for name, part in splits.items():
        for i, query_id in enumerate(part.query_ids):
            assert split_of(query_id) == name
            row = matrix.query_ids.index(query_id)
            np.testing.assert_array_equal(part.performance[i], matrix.performance[row])
            np.testing.assert_array_equal(part.cost[i], matrix.cost[row])
            assert part.tasks[i] == matrix.tasks[row]


def test_adding_queries_never_moves_an_existing_one():
    before = ArmMatrix.from_records(full_log(80)).split()
    grown = full_log(200, seed=5)
    random.Random(2).shuffle(grown)
    after = ArmMatrix.from_records(grown).split()
    for name in ("train", "validation", "test"):
        assert set(before[name].query_ids) <= set(after[name].query_ids)


# --- missing cells ---


def test_missing_cells_are_nan_not_zero():
    records = [
        record("q1", "small", performance=1.0, cost=2e-6, judge=0.5),
        record("q1", "large", performance=None, cost=3e-6),  # answered but not scored
        record("q2", "small_think", performance=0.0, cost=1e-6, judge=0.0),  # q2 has no small / large
    ]
    matrix = ArmMatrix.from_records(records, arms=ARMS)
    assert matrix.query_ids == ["q1", "q2"]
    nan = np.nan
    np.testing.assert_array_equal(matrix.performance, [[1.0, nan, nan], [nan, 0.0, nan]])
    np.testing.assert_array_equal(matrix.cost, [[2e-6, nan, 3e-6], [nan, 1e-6, nan]])
    np.testing.assert_array_equal(matrix.judge, [[0.5, nan, nan], [nan, 0.0, nan]])
    reward = Normalizer.fit(matrix).reward(matrix, "balance")
    assert np.isnan(reward[0, 1]) and np.isnan(reward[0, 2]) and np.isfinite(reward[0, 0])
    assert np.isnan(Normalizer.fit(matrix).reward(matrix, "judge")[0, 2])


def test_arms_default_to_sorted_names_and_unknown_arms_are_left_out():
    records = [record("q1", "large"), record("q1", "small")]
    assert ArmMatrix.from_records(records).arms == ["large", "small"]
    only_small = ArmMatrix.from_records(records, arms=["small"])
    assert only_small.performance.shape == (1, 1)


# --- normalisation ---


def two_task_matrix() -> ArmMatrix:
    # gsm8k costs span 1e-6..5e-6, mbpp 1e-5..9e-5: each task is scaled on its own range.
    records = [
        record("g1", "small", "gsm8k", 0.0, 1e-6), record("g1", "large", "gsm8k", 1.0, 5e-6),
        record("g2", "small", "gsm8k", 1.0, 3e-6), record("g2", "large", "gsm8k", 1.0, 5e-6),
        record("m1", "small", "mbpp", 0.0, 1e-5), record("m1", "large", "mbpp", 0.5, 9e-5),
    ]
    return ArmMatrix.from_records(records, arms=["small", "large"])


def test_normaliser_is_per_task_min_max():
    matrix = two_task_matrix()
    normalizer = Normalizer.fit(matrix)
    assert normalizer.cost_range == {"gsm8k": (1e-6, 5e-6), "mbpp": (1e-5, 9e-5)}
    np.testing.assert_allclose(normalizer.cost(matrix), [[0.0, 1.0], [0.5, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(normalizer.performance(matrix), [[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])


def test_rewards_per_scenario_are_alpha_perf_minus_beta_cost():
    matrix = two_task_matrix()
    normalizer = Normalizer.fit(matrix)
    perf, cost = normalizer.performance(matrix), normalizer.cost(matrix)
    for scenario, (alpha, beta) in SCENARIOS.items():
        np.testing.assert_allclose(normalizer.reward(matrix, scenario), alpha * perf - beta * cost)
    # Row g2 by hand: both arms solve it; the cheaper one wins unless only performance counts.
    assert normalizer.reward(matrix, "balance")[1].tolist() == pytest.approx([0.25, 0.0])
    assert normalizer.reward(matrix, "cost_first")[1].tolist() == pytest.approx([0.2 - 0.4, 0.2 - 0.8])
    assert normalizer.reward(matrix, "performance_first")[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown scenario 'speed'"):
        normalizer.reward(matrix, "speed")


def test_normaliser_fitted_on_train_ignores_test_statistics():
    records = full_log(300)
    matrix = ArmMatrix.from_records(records, arms=ARMS)
    splits = matrix.split()
    fitted = Normalizer.fit(splits["train"])

    # The same training rows with wildly different test rows: the normaliser must not move.
    distorted = [
        r.model_copy(update={"cost": r.cost * 1000}) if split_of(r.query_id) == "test" else r for r in records
    ]
    refitted = Normalizer.fit(ArmMatrix.from_records(distorted, arms=ARMS).split()["train"])
    assert refitted.to_dict() == fitted.to_dict()

    test = ArmMatrix.from_records(distorted, arms=ARMS).split()["test"]
    cost = fitted.cost(test)
    assert np.all((cost >= 0) & (cost <= 1))  # out-of-range test costs are clipped, not rescaled
    assert np.all(cost == 1.0)
    train_costs = splits["train"].cost[np.array(splits["train"].tasks) == "gsm8k"]
    assert fitted.cost_range["gsm8k"] == (train_costs.min(), train_costs.max())


def test_unseen_task_falls_back_to_the_overall_training_range():
    normalizer = Normalizer.fit(two_task_matrix())
    unseen = ArmMatrix.from_records([record("x1", "small", "trivia_qa", 1.0, 5e-5)], arms=["small"])
    # The fallback spans all training cost ranges: 1e-6 .. 9e-5.
    assert normalizer.cost(unseen)[0, 0] == pytest.approx((5e-5 - 1e-6) / (9e-5 - 1e-6))


def test_log_cost_compresses_an_expensive_outlier():
    records = [record("q1", "small", cost=1e-6), record("q1", "small_think", cost=2e-6), record("q1", "large", cost=1e-3)]
    matrix = ArmMatrix.from_records(records, arms=ARMS)
    linear, logged = Normalizer.fit(matrix).cost(matrix)[0], Normalizer.fit(matrix, log_cost=True).cost(matrix)[0]
    assert linear[1] < 0.002  # the outlier squeezes the cheap arms together
    expected = (np.log1p(2.0) - np.log1p(1.0)) / (np.log1p(1000.0) - np.log1p(1.0))
    assert logged[1] == pytest.approx(expected) and logged[2] == 1.0


def test_normaliser_survives_json():
    matrix = two_task_matrix()
    normalizer = Normalizer.fit(matrix, log_cost=True)
    restored = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    for scenario in SCENARIOS:
        np.testing.assert_array_equal(restored.reward(matrix, scenario), normalizer.reward(matrix, scenario))


def test_samples_of_one_cell_are_averaged_and_unscored_ones_ignored():
    records = [
        record("q0", "small", performance=1.0, cost=2e-5),
        record("q0", "small", performance=0.0, cost=4e-5).model_copy(update={"sample_index": 1}),
        record("q0", "small", performance=None, cost=6e-5).model_copy(update={"sample_index": 2}),
    ]
    matrix = ArmMatrix.from_records(records, arms=ARMS)
    assert matrix.performance[0, 0] == pytest.approx(0.5)
    assert matrix.cost[0, 0] == pytest.approx(4e-5)
    assert np.isnan(matrix.performance[0, 1]) and np.isnan(matrix.judge[0, 0])
