"""Training and evaluating a router from log files: splits by query id, train-only normalisation,
rewards per scenario, embeddings from a table or computed with the packaged encoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llm_alloy.logs.embeddings import EmbeddingTable, embed_texts
from llm_alloy.logs.matrix import SCENARIOS, ArmMatrix, Normalizer, Split
from llm_alloy.logs.schema import LogRecord
from llm_alloy.route.base import Router, RouterError, check_params, load_router, make_router, masked_mean
from llm_alloy.route.evaluate import RoutingTable, compare

Scenario = Literal["performance_first", "balance", "cost_first", "judge"]


class RouteTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    logs: Path = Field(description="log records: .jsonl, .parquet or a saved HF dataset directory")
    embeddings: Path | None = Field(
        None, description="an EmbeddingTable directory keyed by query id; default: embed the query texts"
    )
    router: Literal["knn", "mlp", "svm", "mf", "graph"] = "knn"
    params: dict[str, Any] = Field(default_factory=dict, description="hyperparameters of the router kind")
    scenario: Scenario = "performance_first"
    embedding_model: str = Field("minilm-l6", description="encoder used when `embeddings` is not given")
    arms: list[str] | None = Field(None, description="route among these arms only (e.g. the small-model pool)")
    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)
    split_salt: str = ""
    log_cost: bool = Field(False, description="normalise log(cost) instead of cost")


@dataclass
class RoutingData:
    """A log matrix split by query id, with the embeddings of each split and the train-fitted scales."""

    splits: dict[Split, ArmMatrix]
    embeddings: dict[Split, np.ndarray]
    normalizer: Normalizer
    embedding_model: str

    @classmethod
    def build(
        cls,
        matrix: ArmMatrix,
        embeddings: EmbeddingTable | np.ndarray | None = None,
        embedding_model: str = "minilm-l6",
        validation: float = 0.1,
        test: float = 0.2,
        salt: str = "",
        log_cost: bool = False,
        progress: bool = False,
    ) -> "RoutingData":
        """`embeddings`: a table keyed by query id, an array aligned with the matrix rows, or None to
        embed the matrix's query texts with `embedding_model`."""
        if isinstance(embeddings, EmbeddingTable):
            vectors, embedding_model = embeddings.lookup(matrix.query_ids), embeddings.encoder
        elif embeddings is None:
            vectors = embed_texts(matrix.queries, model=embedding_model, progress=progress)
        else:
            vectors = np.asarray(embeddings, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(matrix.query_ids):
                raise RouterError(f"embeddings of shape {vectors.shape} do not match {len(matrix.query_ids)} queries")
        splits = matrix.split(validation, test, salt)
        row = {query_id: i for i, query_id in enumerate(matrix.query_ids)}
        by_split = {name: vectors[[row[q] for q in part.query_ids]] for name, part in splits.items()}
        if not splits["train"].query_ids:
            raise RouterError("no training queries after the split (too few queries, or test + validation = 1)")
        return cls(splits, by_split, Normalizer.fit(splits["train"], log_cost=log_cost), embedding_model)

    def rewards(self, split: Split, scenario: str) -> np.ndarray:
        return self.normalizer.reward(self.splits[split], scenario)

    def edge_features(self, split: Split, scenario: str) -> np.ndarray:
        """(Q, A, 3): reward, normalised performance, normalised cost (GraphRouter's edge features)."""
        matrix = self.splits[split]
        parts = (self.rewards(split, scenario), self.normalizer.performance(matrix), self.normalizer.cost(matrix))
        return np.stack(parts, axis=2)

    @property
    def arm_cost(self) -> np.ndarray:
        """Mean training cost (USD) per arm: the tie-break order for routing."""
        return masked_mean(self.splits["train"].cost)


@dataclass
class TrainResult:
    router: Router
    directory: Path
    table: RoutingTable  # on the test split


def fit_router(
    kind: str,
    data: RoutingData,
    scenario: str = "performance_first",
    params: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    progress: bool = False,
) -> Router:
    if scenario not in (*SCENARIOS, "judge"):
        raise RouterError(f"unknown scenario '{scenario}' (known: {', '.join([*SCENARIOS, 'judge'])})")
    router = make_router(
        kind, data.splits["train"].arms, params, arm_cost=data.arm_cost, scenario=scenario,
        embedding_model=data.embedding_model, normalizer=data.normalizer.to_dict(), training=training,
    )
    router.progress = progress
    validation = data.splits["validation"].query_ids
    side = {"edge_features": data.edge_features("train", scenario)} if router.uses_edge_features else {}
    router.fit(
        data.embeddings["train"],
        data.rewards("train", scenario),
        data.embeddings["validation"] if validation else None,
        data.rewards("validation", scenario) if validation else None,
        **side,
    )
    return router


def evaluate_on(
    router: Router, data: RoutingData, split: Split = "test", scenarios: Sequence[str] | None = None
) -> RoutingTable:
    """The router's choices on `split` against the baselines, under each scenario (default: its own)."""
    choice = router.route(data.embeddings[split])
    return compare(
        {f"router ({router.kind})": choice}, data.splits[split], data.splits["train"], data.normalizer,
        list(scenarios or [router.scenario]), router.arm_cost, split,
    )


def train_router(config: RouteTrainConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train the configured router, save it to `out_dir` and evaluate it on the test split."""
    check_params(config.router, config.params)
    matrix = load_matrix(config.logs, config.arms)
    table = EmbeddingTable.load(config.embeddings) if config.embeddings else None
    data = RoutingData.build(
        matrix, table, config.embedding_model, config.validation, config.test, config.split_salt, config.log_cost,
        progress=progress,
    )
    training = {
        "config": config.model_dump(mode="json"),
        "queries": {name: len(part.query_ids) for name, part in data.splits.items()},
    }
    router = fit_router(config.router, data, config.scenario, config.params, training, progress)
    directory = router.save(out_dir)
    test_scenarios = [config.scenario] if data.splits["test"].query_ids else []
    return TrainResult(router, directory, evaluate_on(router, data, "test", test_scenarios))


def evaluate_router(
    router_dir: str | Path,
    logs: str | Path | ArmMatrix | Sequence[LogRecord],
    split: Split = "test",
    embeddings: str | Path | EmbeddingTable | np.ndarray | None = None,
    scenarios: Sequence[str] | None = None,
) -> RoutingTable:
    """A saved router on `split` of `logs`, split exactly as in training (same fractions and salt),
    against the best single arm (chosen on the training split), the oracle and random choice."""
    router = load_router(router_dir)
    config = router.training.get("config", {})
    matrix = load_matrix(logs, router.arms)
    if isinstance(embeddings, (str, Path)):
        embeddings = EmbeddingTable.load(embeddings)
    if isinstance(embeddings, EmbeddingTable) and embeddings.encoder != router.embedding_model:
        raise RouterError(
            f"{router_dir}: the router was trained on {router.embedding_model} embeddings, "
            f"the table holds {embeddings.encoder}"
        )
    data = RoutingData.build(
        matrix, embeddings, router.embedding_model, config.get("validation", 0.1), config.get("test", 0.2),
        config.get("split_salt", ""), config.get("log_cost", False),
    )
    if router.normalizer is not None:  # the scales the router was trained with, not refitted ones
        data.normalizer = Normalizer.from_dict(router.normalizer)
    return evaluate_on(router, data, split, scenarios)


def load_matrix(logs: str | Path | ArmMatrix | Sequence[LogRecord], arms: list[str] | None = None) -> ArmMatrix:
    """An ArmMatrix from a log file, records or a matrix; with `arms`, exactly those columns."""
    if isinstance(logs, ArmMatrix):
        matrix = logs
        if arms is not None and arms != matrix.arms:
            unknown = [a for a in arms if a not in matrix.arms]
            if unknown:
                raise RouterError(f"arms not in the logs: {', '.join(unknown)}")
            matrix = _select_arms(matrix, [matrix.arms.index(a) for a in arms])
        return matrix
    if isinstance(logs, (str, Path)):
        from llm_alloy.logs.io import read_logs

        logs = read_logs(logs)
    records = list(logs)
    if not records:
        raise RouterError("no log records")
    present = {r.arm for r in records}
    unknown = [a for a in arms or [] if a not in present]
    if unknown:
        raise RouterError(f"arms not in the logs: {', '.join(unknown)}")
    return ArmMatrix.from_records(records, arms)


def _select_arms(matrix: ArmMatrix, columns: list[int]) -> ArmMatrix:
    return ArmMatrix(
        list(matrix.query_ids), [matrix.arms[j] for j in columns], list(matrix.tasks), list(matrix.queries),
        matrix.performance[:, columns], matrix.cost[:, columns], matrix.judge[:, columns],
        dict(matrix.task_descriptions),
    )
