"""kNN router: the predicted reward of an arm is its mean reward over the k most similar training queries.

FusionFactory voted on the neighbours' single best-arm labels; averaging their per-arm rewards keeps
the information that several arms were good and how good. The search is exact: one matrix product per
batch of queries against the stored (unit-normalised) training embeddings, then a top-k.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from llm_alloy.logs.embeddings import unit_rows
from llm_alloy.route.base import Router, RouterParams, masked_mean

BATCH = 2048


class KnnParams(RouterParams):
    k: int = Field(50, ge=1, description="neighbours per query (capped at the number of training queries)")
    weighted: bool = Field(False, description="weight neighbours by their cosine similarity instead of equally")


def nearest(x: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (len(x), k), of the most cosine-similar rows of `keys` (both
    with unit rows); with `exclude_self`, x is keys and row i never finds itself.

    Exact search: one matrix product and a top-k per batch, all in torch (torch's top-k is several
    times faster than numpy's argpartition, and mixing numpy's and torch's thread pools in one loop
    makes them fight over the cores)."""
    values, indices = [], []
    for start in range(0, max(len(x), 1), BATCH):
        similarity = x[start : start + BATCH] @ keys.T
        if exclude_self:
            rows = torch.arange(similarity.shape[0])
            similarity[rows, rows + start] = -torch.inf
        top = similarity.topk(k, dim=1, sorted=False)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


class KnnRouter(Router):
    kind = "knn"
    Params = KnnParams
    params: KnnParams

    def _fit(self, X, R, X_val, R_val, **side) -> None:
        self.keys = unit_rows(X)
        logged = np.isfinite(R)
        self.rewards = np.where(logged, R, 0.0).astype(np.float32)
        self.logged = logged.astype(np.float32)
        # An arm none of the neighbours tried falls back to its mean training reward.
        self.prior = masked_mean(R).astype(np.float32)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        k = min(self.params.k, len(self.keys))
        rewards, logged = torch.from_numpy(self.rewards), torch.from_numpy(self.logged)
        with torch.inference_mode():
            similarity, neighbours = nearest(torch.from_numpy(unit_rows(X)), torch.from_numpy(self.keys), k)
            weights = similarity.clamp_min(0.0) if self.params.weighted else torch.ones_like(similarity)
            weights = weights.unsqueeze(2)
            total = (rewards[neighbours] * weights).sum(1)
            count = (logged[neighbours] * weights).sum(1)
            prediction = torch.where(count > 0, total / count.clamp_min(1e-12), torch.from_numpy(self.prior))
        return prediction.numpy()

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"keys": self.keys, "rewards": self.rewards, "logged": self.logged, "prior": self.prior}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.keys, self.rewards = tensors["keys"], tensors["rewards"]
        self.logged, self.prior = tensors["logged"], tensors["prior"]
