"""The router interface, the registry of router kinds, and saving/loading as safetensors + JSON.

Every router regresses the scenario's per-arm reward from the query embedding (NaN cells are
masked, never read as zero) and routes by argmax. Binary task metrics make exact ties common, so
ties go to the arm that was cheaper on the training split, not to whichever comes first in the list
(FusionFactory's first-in-list rule biased its labels toward small models).
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from llm_alloy.config import describe_validation_error
from llm_alloy.files import write_atomic

TENSORS_FILE = "router.safetensors"
META_FILE = "router.json"
FORMAT_VERSION = 1
TIE_TOLERANCE = 1e-6

ROUTER_KINDS: dict[str, str] = {
    "knn": "llm_alloy.route.knn:KnnRouter",
    "mlp": "llm_alloy.route.mlp:MlpRouter",
    "svm": "llm_alloy.route.svm:SvmRouter",
    "mf": "llm_alloy.route.mf:MfRouter",
    "graph": "llm_alloy.route.graph:GraphRouter",
}
"""kind -> 'module:Class', imported on demand so that only the chosen router's libraries load."""


class RouterError(ValueError):
    """A router that cannot be built, trained, fed or loaded; the message says what is wrong."""


class RouterParams(BaseModel):
    """Hyperparameters of one router kind; each kind extends this."""

    model_config = ConfigDict(extra="forbid")


class Router(ABC):
    kind: ClassVar[str]
    Params: ClassVar[type[RouterParams]] = RouterParams
    uses_edge_features: ClassVar[bool] = False
    """True for routers whose `fit` also reads per-cell side features (the graph router)."""
    progress: bool = False
    """Show a progress bar while fitting (routers with long training loops)."""

    def __init__(
        self,
        arms: list[str],
        params: RouterParams | dict[str, Any] | None = None,
        *,
        arm_cost: np.ndarray | list[float] | None = None,
        scenario: str = "performance_first",
        embedding_model: str = "minilm-l6",
        normalizer: dict | None = None,
        training: dict | None = None,
    ) -> None:
        if not arms:
            raise RouterError(f"{self.kind} router: no arms")
        self.arms = list(arms)
        self.params = self.Params() if params is None else _parse_params(self.Params, params, self.kind)
        cost = np.zeros(len(arms)) if arm_cost is None else np.asarray(arm_cost, dtype=float)
        if cost.shape != (len(arms),):
            raise RouterError(f"{self.kind} router: arm_cost has shape {cost.shape}, expected ({len(arms)},)")
        self.arm_cost = cost
        self.scenario = scenario
        self.embedding_model = embedding_model
        self.normalizer = normalizer
        self.training = dict(training or {})
        self.dim: int | None = None

    # --- what each kind implements -------------------------------------------------------------

    @abstractmethod
    def _fit(self, X: np.ndarray, R: np.ndarray, X_val: np.ndarray | None, R_val: np.ndarray | None, **side) -> None:
        """Learn from embeddings X (Q, D) and rewards R (Q, A) with NaN for unlogged cells."""

    @abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray:
        """(Q, A) predicted reward for validated float32 embeddings."""

    @abstractmethod
    def _tensors(self) -> dict[str, np.ndarray]:
        """Everything learned, as named arrays for safetensors."""

    @abstractmethod
    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        """Rebuild the fitted state from `_tensors()` output (self.dim and self.params are set)."""

    # --- the public interface -------------------------------------------------------------------

    def fit(
        self,
        X_train: np.ndarray,
        rewards_train: np.ndarray,
        X_val: np.ndarray | None = None,
        rewards_val: np.ndarray | None = None,
        **side: np.ndarray,
    ) -> "Router":
        X = self._check_embeddings(X_train, "X_train", expect_dim=False)
        R = self._check_rewards(rewards_train, len(X), "rewards_train")
        if not np.isfinite(R).any():
            raise RouterError(f"{self.kind} router: rewards_train has no logged cell")
        self.dim = X.shape[1]
        if (X_val is None) != (rewards_val is None):
            raise RouterError(f"{self.kind} router: give both X_val and rewards_val, or neither")
        if X_val is not None:
            X_val = self._check_embeddings(X_val, "X_val")
            rewards_val = self._check_rewards(rewards_val, len(X_val), "rewards_val")
        self._fit(X, R, X_val, rewards_val, **side)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.dim is not None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(Q, A) predicted reward of every arm for every query embedding."""
        if not self.is_fitted:
            raise RouterError(f"{self.kind} router: predict() before fit() or load")
        return self._predict(self._check_embeddings(X, "X"))

    def route(self, X: np.ndarray) -> np.ndarray:
        """(Q,) index of the chosen arm per query: the highest predicted reward, cheapest on ties."""
        return argmax_cheapest(self.predict(X), self.arm_cost)

    def route_names(self, X: np.ndarray) -> list[str]:
        return [self.arms[j] for j in self.route(X)]

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        if not self.is_fitted:
            raise RouterError(f"{self.kind} router: save() before fit()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: np.ascontiguousarray(value) for name, value in self._tensors().items()}
        save_file(tensors, str(directory / TENSORS_FILE))
        meta = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params.model_dump(mode="json"),
            "arms": self.arms,
            "arm_cost": self.arm_cost.tolist(),
            "dim": self.dim,
            "scenario": self.scenario,
            "embedding_model": self.embedding_model,
            "normalizer": self.normalizer,
            "training": self.training,
        }
        write_atomic(directory / META_FILE, json.dumps(meta, indent=2))
        return directory

    # --- input checks -------------------------------------------------------------------------

    def _check_embeddings(self, X: np.ndarray, name: str, expect_dim: bool = True) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise RouterError(f"{self.kind} router: {name} must be (queries, dim), got shape {X.shape}")
        if expect_dim and self.dim is not None and X.shape[1] != self.dim:
            raise RouterError(
                f"{self.kind} router: {name} has dim {X.shape[1]}, the router was trained on dim {self.dim} "
                f"({self.embedding_model})"
            )
        if not np.isfinite(X).all():
            raise RouterError(f"{self.kind} router: {name} contains NaN or inf")
        return X

    def _check_rewards(self, R: np.ndarray, n_queries: int, name: str) -> np.ndarray:
        R = np.asarray(R, dtype=np.float64)
        if R.shape != (n_queries, len(self.arms)):
            raise RouterError(
                f"{self.kind} router: {name} has shape {R.shape}, expected ({n_queries}, {len(self.arms)} arms)"
            )
        return R


def argmax_cheapest(scores: np.ndarray, arm_cost: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Per row, the column with the highest score; among columns within `tolerance` of it, the one
    with the lowest cost (then the lowest index). NaN scores never win."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(arm_cost)), np.nan_to_num(arm_cost, nan=np.inf)))  # cheapest first
    ranked = scores[:, order]
    near_best = ranked >= ranked.max(axis=1, keepdims=True) - tolerance
    return order[near_best.argmax(axis=1)]


def masked_mean(R: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over logged (finite) cells; 0 where nothing is logged."""
    mask = np.isfinite(R)
    counts = mask.sum(axis=axis)
    return np.where(mask, R, 0.0).sum(axis=axis) / np.maximum(counts, 1)


def router_class(kind: str) -> type[Router]:
    if kind not in ROUTER_KINDS:
        raise RouterError(f"unknown router kind '{kind}' (known: {', '.join(ROUTER_KINDS)})")
    module, name = ROUTER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def check_params(kind: str, params: RouterParams | dict[str, Any] | None) -> RouterParams:
    """The validated hyperparameters of `kind`: bad ones fail before any data is loaded."""
    cls = router_class(kind)
    return cls.Params() if params is None else _parse_params(cls.Params, params, kind)


def make_router(kind: str, arms: list[str], params: RouterParams | dict[str, Any] | None = None, **options) -> Router:
    return router_class(kind)(arms, params, **options)


def load_router(directory: str | Path) -> Router:
    """The router saved in `directory` (router.json + router.safetensors); never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    for name in (META_FILE, TENSORS_FILE):
        if not (directory / name).is_file():
            raise RouterError(f"{directory}: not a saved router (missing {name})")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except json.JSONDecodeError as error:
        raise RouterError(f"{directory / META_FILE}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(meta, dict):
        raise RouterError(f"{directory / META_FILE}: expected a JSON object")
    missing = [key for key in ("kind", "params", "arms", "dim") if key not in meta]
    if missing:
        raise RouterError(f"{directory / META_FILE}: missing field {', '.join(missing)}")
    if meta.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise RouterError(f"{directory / META_FILE}: format {meta['format']} is not supported (expected {FORMAT_VERSION})")
    cls = router_class(meta["kind"])
    router = cls(
        meta["arms"],
        meta["params"],
        arm_cost=meta.get("arm_cost"),
        scenario=meta.get("scenario", "performance_first"),
        embedding_model=meta.get("embedding_model", "minilm-l6"),
        normalizer=meta.get("normalizer"),
        training=meta.get("training"),
    )
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except SafetensorError as error:
        raise RouterError(f"{directory / TENSORS_FILE}: unreadable ({error})") from None
    router.dim = int(meta["dim"])
    try:
        router._restore(tensors)
    except KeyError as error:
        raise RouterError(f"{directory / TENSORS_FILE}: missing tensor {error}") from None
    return router


def _parse_params(cls: type[RouterParams], params: RouterParams | dict[str, Any], kind: str) -> RouterParams:
    if isinstance(params, cls):
        return params
    if isinstance(params, RouterParams):
        params = params.model_dump()
    try:
        return cls.model_validate(params)
    except ValidationError as error:
        raise RouterError(describe_validation_error(f"{kind} router params", error)) from None
