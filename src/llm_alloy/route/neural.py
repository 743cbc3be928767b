"""Shared machinery of the torch routers: masked reward regression with early stopping, and
state dicts as safetensors arrays."""

from __future__ import annotations

import copy
from abc import abstractmethod
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from llm_alloy.route.base import Router, RouterParams, masked_mean

PREDICT_BATCH = 8192


class TorchParams(RouterParams):
    epochs: int = Field(300, ge=1, description="upper bound; early stopping usually ends sooner")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(20, ge=1, description="epochs without a better validation loss before stopping")
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="held out of the training rows when no validation split is given"
    )
    seed: int = 0
    threads: int = Field(
        1, ge=1, description="CPU threads for torch; networks this small lose more to thread sync than they gain"
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over logged cells only: an unlogged cell says nothing about the arm."""
    return ((prediction - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def reward_tensors(R: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards with 0 in the holes, 1/0 mask of logged cells), float32."""
    logged = np.isfinite(R)
    return torch.from_numpy(np.where(logged, R, 0.0).astype(np.float32)), torch.from_numpy(logged.astype(np.float32))


class TorchRouter(Router):
    """A router whose predictor is one torch module mapping (Q, D) embeddings to (Q, A) rewards.

    The module exposes `output_bias` (A,), initialised to each arm's mean training reward so the
    network starts from the best-single-arm prediction and learns the query-dependent part."""

    Params = TorchParams
    params: TorchParams

    @abstractmethod
    def build_network(self) -> nn.Module:
        """A fresh module for self.dim inputs and len(self.arms) outputs."""

    def _fit(self, X, R, X_val, R_val, **side) -> None:
        with torch_threads(self.params.threads):
            self._train(X, R, X_val, R_val)

    def _train(self, X, R, X_val, R_val) -> None:
        p = self.params
        torch.manual_seed(p.seed)
        generator = torch.Generator().manual_seed(p.seed)
        if X_val is None:
            train, val = hold_out_rows(len(X), p.validation_fraction, p.seed)
            if val is not None:
                X, R, X_val, R_val = X[train], R[train], X[val], R[val]
        self.network = self.build_network()
        with torch.no_grad():
            self.network.output_bias.copy_(torch.from_numpy(masked_mean(R).astype(np.float32)))
        x, (r, m) = torch.from_numpy(X), reward_tensors(R)
        validation = None if X_val is None else (torch.from_numpy(X_val), *reward_tensors(R_val))
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=p.lr, weight_decay=p.weight_decay)

        best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
        epochs = tqdm(range(p.epochs), desc=f"train {self.kind}", disable=not self.progress, leave=False)
        for epoch in epochs:
            self.network.train()
            for rows in torch.randperm(len(x), generator=generator).split(p.batch_size):
                loss = masked_mse(self.network(x[rows]), r[rows], m[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if validation is None:
                continue
            self.network.eval()
            with torch.no_grad():
                val_loss = masked_mse(self.network(validation[0]), validation[1], validation[2]).item()
            epochs.set_postfix(val_mse=f"{val_loss:.4f}")
            if val_loss < best_loss - 1e-7:
                best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(self.network.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= p.patience:
                    break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.eval()
        self.training["fit"] = {
            "epochs_run": epoch + 1,
            "best_epoch": (best_epoch if validation is not None else epoch) + 1,
            "best_val_mse": best_loss if validation is not None else None,  # no validation rows: last epoch
        }

    def _predict(self, X: np.ndarray) -> np.ndarray:
        with torch_threads(self.params.threads), torch.inference_mode():
            starts = range(0, max(len(X), 1), PREDICT_BATCH)
            return torch.cat([self.network(torch.from_numpy(X[i : i + PREDICT_BATCH])) for i in starts]).numpy()

    def _tensors(self) -> dict[str, np.ndarray]:
        return {name: value.detach().cpu().numpy() for name, value in self.network.state_dict().items()}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.network = self.build_network()
        self.network.load_state_dict({name: torch.from_numpy(value) for name, value in tensors.items()})
        self.network.eval()


def hold_out_rows(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(training rows, validation rows) for early stopping when no validation split is given;
    no validation rows when there are too few to spare."""
    n_val = int(round(fraction * n_rows))
    if n_val < 1 or n_rows - n_val < 1:
        return np.arange(n_rows), None
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
