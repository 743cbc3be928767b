from __future__ import annotations

import json

import numpy as np
import pytest

from llm_alloy.logs.embeddings import EmbeddingTable
from llm_alloy.logs.matrix import ArmMatrix, Normalizer
from llm_alloy.logs.synthetic import synthetic_logs
from llm_alloy.route import ROUTER_KINDS, RouterError, argmax_cheapest, load_router, make_router
from llm_alloy.route.evaluate import best_single_arm, compare
from llm_alloy.route.train import RouteTrainConfig, RoutingData, evaluate_router, fit_router, train_router

# Small budgets keep the whole file to seconds; the synthetic clusters are easy enough for them.
FAST = {
    "knn": {"k": 20},
    "mlp": {"hidden": 64, "epochs": 60, "patience": 8},
    "svm": {},
    "mf": {"rank": 32, "epochs": 60, "patience": 8},
    "graph": {"hidden": 32, "epochs": 20, "patience": 5},
}


@pytest.fixture(scope="module")
def logs():
    return synthetic_logs(600, 8, 6, dim=64, seed=0)


@pytest.fixture(scope="module")
def data(logs):
    return RoutingData.build(logs.matrix, logs.embeddings, embedding_model="synthetic")


@pytest.fixture(scope="module")
def fitted(data):
    """One router per (kind, scenario), fitted once for the module."""
    cache = {}

    def get(kind: str, scenario: str):
        if (kind, scenario) not in cache:
            cache[kind, scenario] = fit_router(kind, data, scenario, FAST[kind])
        return cache[kind, scenario]

    return get


def test_all_five_kinds_are_registered():
    assert set(ROUTER_KINDS) == {"knn", "mlp", "svm", "mf", "graph"}


@pytest.mark.parametrize("scenario", ["performance_first", "balance"])
@pytest.mark.parametrize("kind", list(FAST))
def test_router_beats_the_best_single_arm(kind, scenario, data, fitted):
    table = compare(
        {"router": fitted(kind, scenario).route(data.embeddings["test"])}, data.splits["test"], data.splits["train"],
        data.normalizer, [scenario], data.arm_cost,
    )
    router, best, oracle = (table.row(scenario, name).reward for name in ("router", "best single arm", "oracle"))
    assert router > best + 0.05, table.to_markdown()
    assert router <= oracle + 1e-9


@pytest.mark.parametrize("kind", list(FAST))
def test_save_load_round_trip_gives_identical_predictions(kind, data, fitted, tmp_path):
    router = fitted(kind, "performance_first")
    router.save(tmp_path / kind)
    meta = json.loads((tmp_path / kind / "router.json").read_text())
    assert meta["kind"] == kind and meta["arms"] == data.splits["train"].arms
    assert meta["embedding_model"] == "synthetic" and meta["normalizer"]["performance_range"]
    assert not list(tmp_path.glob(f"{kind}/*.pkl"))
    loaded = load_router(tmp_path / kind)
    X = data.embeddings["test"]
    np.testing.assert_array_equal(loaded.predict(X), router.predict(X))
    np.testing.assert_array_equal(loaded.route(X), router.route(X))
    np.testing.assert_array_equal(loaded.arm_cost, router.arm_cost)


@pytest.mark.parametrize("kind", list(FAST))
def test_nan_cells_are_masked_not_read_as_zero(kind, logs):
    # Arm 1 is logged only where it scored 1 and arm 2 nowhere: reading holes as 0 would rank arm 1
    # low; masking them makes it the best arm everywhere.
    rng = np.random.default_rng(0)
    X = logs.embeddings[:300]
    R = rng.uniform(0.2, 0.6, size=(300, 8))
    R[:, 1] = np.where(rng.random(300) < 0.3, 1.0, np.nan)
    R[:, 2] = np.nan
    params = {**FAST[kind], **({"epochs": 40} if kind in ("mlp", "mf", "graph") else {})}
    router = make_router(kind, logs.matrix.arms, params).fit(X[:250], R[:250], X[250:], R[250:])
    predicted = router.predict(X[250:])
    assert np.isfinite(predicted).all()
    assert (router.route(X[250:]) == 1).mean() > 0.9


def test_knn_averages_the_neighbours_logged_rewards():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    R = np.array([[1.0, np.nan], [0.0, 0.5], [0.3, 0.2]])
    router = make_router("knn", ["a", "b"], {"k": 2}).fit(X, R)
    np.testing.assert_allclose(router.predict(np.array([[1.0, 0.05]])), [[0.5, 0.5]])
    weighted = make_router("knn", ["a", "b"], {"k": 2, "weighted": True}).fit(X, R)
    query = np.array([[0.0, 1.0]], dtype=np.float32)  # neighbours: row 2 (cos 1) and row 1 (cos ~0.11)
    w = X[1] @ query[0] / np.linalg.norm(X[1])
    np.testing.assert_allclose(weighted.predict(query), [[(0.3 + 0.0 * w) / (1 + w), (0.2 + 0.5 * w) / (1 + w)]], rtol=1e-5)
    # no neighbour logged arm b -> its mean training reward
    router = make_router("knn", ["a", "b"], {"k": 1}).fit(X, R)
    np.testing.assert_allclose(router.predict(np.array([[1.0, 0.0]])), [[1.0, 0.35]])


def test_ties_go_to_the_cheaper_arm_and_nan_never_wins():
    scores = np.array([[0.5, 0.5, 0.2], [0.1, np.nan, 0.1], [np.nan, 0.3, 0.3 - 1e-9]])
    cost = np.array([3.0, 1.0, 2.0])
    assert argmax_cheapest(scores, cost).tolist() == [1, 2, 1]
    router = make_router("knn", ["expensive", "cheap"], {"k": 1}, arm_cost=[2.0, 1.0])
    router.fit(np.eye(2, dtype=np.float32), np.array([[1.0, 1.0], [0.0, 1.0]]))
    assert router.route_names(np.eye(2, dtype=np.float32)) == ["cheap", "cheap"]


@pytest.mark.parametrize("kind", ["knn", "mlp"])
def test_cost_first_routes_to_the_cheap_arm(kind, logs):
    # Every arm costs the same except a weak but nearly free one: performance-first ignores it,
    # cost-first (0.2 perf - 0.8 cost) should take it almost always.
    matrix = logs.matrix.subset(np.arange(len(logs.matrix.query_ids)))
    cheap = int(np.nanmean(matrix.performance, axis=0).argmin())
    matrix.cost = np.where(np.isnan(matrix.cost), np.nan, 1e-3)
    matrix.cost[:, cheap] = 1e-6
    data = RoutingData.build(matrix, logs.embeddings, embedding_model="synthetic")
    X = data.embeddings["test"]
    performance_first = fit_router(kind, data, "performance_first", FAST[kind]).route(X)
    cost_first = fit_router(kind, data, "cost_first", FAST[kind]).route(X)
    assert (performance_first == cheap).mean() < 0.1
    assert (cost_first == cheap).mean() > 0.9


def test_best_single_arm_is_chosen_on_train_not_test():
    arms = ["a", "b"]
    train = ArmMatrix(["1", "2"], arms, ["t", "t"], ["", ""], np.array([[1.0, 0.0], [1.0, 0.0]]),
                      np.ones((2, 2)), np.full((2, 2), np.nan))
    test = ArmMatrix(["3", "4"], arms, ["t", "t"], ["", ""], np.array([[0.0, 1.0], [0.0, 1.0]]),
                     np.ones((2, 2)), np.full((2, 2), np.nan))
    normalizer = Normalizer.fit(train)
    assert best_single_arm(normalizer.reward(train), np.ones(2)) == 0
    table = compare({"router": np.array([1, 1])}, test, train, normalizer, ["performance_first"], np.ones(2))
    assert table.row("performance_first", "best single arm").method == "best single arm (a)"
    assert table.row("performance_first", "best single arm").reward == 0.0
    assert table.row("performance_first", "router").reward == 1.0
    assert table.row("performance_first", "oracle").reward == 1.0
    assert table.row("performance_first", "random").reward == 0.5
    assert "| performance_first | oracle |" in table.to_markdown()


def test_bad_input_gives_clear_errors(data, fitted, tmp_path):
    router = fitted("knn", "performance_first")
    with pytest.raises(RouterError, match="dim 3, the router was trained on dim 64"):
        router.predict(np.zeros((2, 3)))
    with pytest.raises(RouterError, match="unknown router kind 'tree'"):
        make_router("tree", ["a"])
    with pytest.raises(RouterError, match="mlp router params: hiden: unknown field"):
        make_router("mlp", ["a"], {"hiden": 3})
    with pytest.raises(RouterError, match=r"rewards_train has shape \(2, 3\), expected \(2, 2 arms\)"):
        make_router("knn", ["a", "b"]).fit(np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(RouterError, match="missing router.json"):
        load_router(tmp_path)
    with pytest.raises(RouterError, match="predict\\(\\) before fit"):
        make_router("svm", ["a"]).predict(np.zeros((1, 2)))


def test_train_and_evaluate_from_files(logs, tmp_path):
    from llm_alloy.logs.io import write_logs

    small = synthetic_logs(300, 5, 4, dim=32, seed=5)
    write_logs(small.to_records(), tmp_path / "logs.jsonl")
    EmbeddingTable(small.matrix.query_ids, small.embeddings, "synthetic-32", "none").save(tmp_path / "emb")
    config = RouteTrainConfig(logs=tmp_path / "logs.jsonl", embeddings=tmp_path / "emb", router="knn",
                              params={"k": 10}, scenario="balance")
    result = train_router(config, tmp_path / "router", progress=False)
    assert (tmp_path / "router" / "router.safetensors").is_file()
    assert result.router.embedding_model == "synthetic-32"
    router_row = result.table.row("balance", "router (knn)")
    assert router_row.reward > result.table.row("balance", "best single arm").reward
    again = evaluate_router(tmp_path / "router", tmp_path / "logs.jsonl", "test", tmp_path / "emb")
    assert again.rows == result.table.rows
    all_scenarios = evaluate_router(tmp_path / "router", small.matrix, "test", small.embeddings,
                                    ["performance_first", "balance", "cost_first"])
    assert {r.scenario for r in all_scenarios.rows} == {"performance_first", "balance", "cost_first"}
    with pytest.raises(RouterError, match="trained on synthetic-32 embeddings, the table holds other"):
        evaluate_router(tmp_path / "router", small.matrix, "test",
                        EmbeddingTable(small.matrix.query_ids, small.embeddings, "other", "none"))


def test_training_embeds_query_texts_with_minilm_when_no_table_is_given(tmp_path):
    from llm_alloy.logs.io import write_logs

    topics = ["the tax rules on capital gains", "a recipe for sourdough bread", "training a neural network"]
    small = synthetic_logs(90, 4, 3, dim=8, seed=6, missing=0.0)
    small.matrix.queries = [f"Question {i} about {topics[c]}" for i, c in enumerate(small.clusters)]
    write_logs(small.to_records(), tmp_path / "logs.jsonl")
    config = RouteTrainConfig(logs=tmp_path / "logs.jsonl", router="knn", params={"k": 5}, test=0.3)
    result = train_router(config, tmp_path / "router", progress=False)
    assert result.router.embedding_model == "minilm-l6" and result.router.dim == 384
    table = result.table
    assert table.row("performance_first", "router").reward > table.row("performance_first", "best single arm").reward


def test_bad_params_fail_before_the_logs_are_read(tmp_path):
    config = RouteTrainConfig(logs=tmp_path / "absent.jsonl", router="graph", params={"layer": 3})
    with pytest.raises(RouterError, match="graph router params: layer: unknown field"):
        train_router(config, tmp_path / "router")
