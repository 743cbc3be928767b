from __future__ import annotations

import time

import numpy as np
import pytest

from llm_alloy.logs.matrix import ArmMatrix
from llm_alloy.logs.schema import parse_arm
from llm_alloy.logs.synthetic import synthetic_logs


def test_shapes_units_and_holes():
    logs = synthetic_logs(500, 6, 5, dim=32, seed=3, missing=0.05)
    m = logs.matrix
    assert m.performance.shape == m.cost.shape == m.judge.shape == (500, 6)
    assert logs.embeddings.shape == (500, 32) and logs.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(logs.embeddings, axis=1), 1.0, atol=1e-5)
    holes = np.isnan(m.performance)
    assert 0.02 < holes.mean() < 0.08
    assert np.array_equal(holes, np.isnan(m.cost)) and np.array_equal(holes, np.isnan(m.judge))
    assert set(np.unique(m.performance[~holes])) == {0.0, 1.0}
    assert len(set(m.query_ids)) == 500 and len(set(m.arms)) == 6
    assert [parse_arm(a)[1] for a in m.arms[:2]] == ["direct", "think"]


def test_deterministic_per_seed():
    a, b, c = (synthetic_logs(200, 4, 3, dim=16, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.matrix.performance, b.matrix.performance)
    assert not np.array_equal(a.embeddings, c.embeddings)


def test_known_best_arm_per_cluster_and_a_generalist_best_on_average():
    logs = synthetic_logs(6000, 8, 6, dim=64, seed=0, missing=0.0)
    perf = logs.matrix.performance
    best = logs.best_arm_per_cluster
    assert len(set(best.tolist())) == 6  # different arms win different clusters
    for cluster, arm in enumerate(best):
        means = perf[logs.clusters == cluster].mean(axis=0)
        assert means.argmax() == arm
        assert means[arm] > means[0] + 0.15  # the specialist clearly beats the generalist here
    overall = perf.mean(axis=0)
    assert overall.argmax() == 0 and 0 not in best
    # the generalist is also the most expensive arm, so cost matters for balance / cost-first
    assert np.nanmean(logs.matrix.cost, axis=0).argmax() == 0


def test_queries_sit_near_their_cluster():
    logs = synthetic_logs(300, 5, 4, dim=128, seed=1)
    centres = np.stack([logs.embeddings[logs.clusters == c].mean(axis=0) for c in range(4)])
    nearest = (logs.embeddings @ centres.T).argmax(axis=1)
    assert (nearest == logs.clusters).mean() > 0.98


def test_continuous_performance():
    logs = synthetic_logs(200, 4, 2, dim=8, binary=False, noise=0.05, seed=2)
    values = logs.matrix.performance[np.isfinite(logs.matrix.performance)]
    assert values.min() >= 0 and values.max() <= 1 and len(np.unique(values)) > 100


def test_records_round_trip_to_the_same_matrix():
    logs = synthetic_logs(60, 4, 3, dim=8, seed=4, missing=0.1)
    records = logs.to_records()
    assert len(records) == int(np.isfinite(logs.matrix.performance).sum())
    back = ArmMatrix.from_records(records, logs.matrix.arms)
    assert back.query_ids == logs.matrix.query_ids and back.tasks == logs.matrix.tasks
    for name in ("performance", "cost", "judge"):
        np.testing.assert_array_equal(getattr(back, name), getattr(logs.matrix, name))
    first = records[0]
    assert first.prompt.startswith(first.query) and first.model == parse_arm(first.arm)[0]


def test_250k_cells_generate_quickly():
    start = time.perf_counter()
    logs = synthetic_logs(6400, 40, 64, seed=0)
    elapsed = time.perf_counter() - start
    assert logs.matrix.performance.size == 256_000
    assert elapsed < 5.0  # about 0.3 s on an idle core; generous for a shared machine


@pytest.mark.parametrize("args", [(100, 2, 3), (100, 5, 0), (3, 5, 4)])
def test_bad_sizes_are_rejected(args):
    with pytest.raises(ValueError, match="synthetic_logs"):
        synthetic_logs(*args)
