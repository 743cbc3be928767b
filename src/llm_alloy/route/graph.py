"""Graph router: reward prediction on a query-arm bipartite graph, in plain torch (no PyG).

Nodes are the training queries (input: their embedding) and the arms (a learned vector each, so a
model's direct and think arms are distinct nodes, unlike GraphRouter's shared description features).
A logged training cell (q, a) is an edge with features (reward, normalised performance, normalised
cost; or the reward alone). Each query is also linked to its k most similar training queries.

Message passing (`layers` rounds, default 2), all dense or sparse matrix products:
  arm -> query:   mean over the query's edges of (W0 + sum_f feat_f * W_f) h_a, an edge-conditioned
                  linear message, so "arm a scored r here" is not reduced to an arm-blind average;
  query -> arm:   the same in the other direction, averaged over the arm's edges;
  query -> query: mean of the k nearest training queries' states;
  update:         h <- LayerNorm(h + GELU(S h + messages)).
The reward of edge (q, a) is decoded from the final states of q and a and the edge's own features.

A new query has no logged edges. It is linked to its k nearest training queries and borrows their
edges: edge (q, a) gets the mean of the neighbours' (q', a) edges (indicator = the fraction of
neighbours that logged a, features = their mean). Training mirrors this exactly. Each optimiser step
makes one fold of the training queries "cold": their own edges are replaced by borrowed ones (their
neighbours never include themselves) and their rewards are the targets; the other queries keep a
random (1 - mask_rate) of their edges visible (GraphRouter's random edge masking). An epoch cycles
through `folds` folds, i.e. takes `folds` optimiser steps (GraphRouter took one per epoch). Early
stopping uses the validation queries, predicted exactly as at inference: every training edge
visible, each new query linked to its neighbours. The training graph (embeddings, edge tensor,
neighbour lists) is saved with the weights, so a loaded router predicts without the logs.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from llm_alloy.route.base import RouterError, masked_mean
from llm_alloy.route.knn import nearest
from llm_alloy.route.neural import TorchParams, TorchRouter, hold_out_rows, masked_mse, reward_tensors, torch_threads


class GraphParams(TorchParams):
    hidden: int = Field(64, ge=1, description="width of the node states")
    layers: int = Field(2, ge=1, description="message-passing rounds")
    neighbours: int = Field(50, ge=1, description="training neighbours linked to each query")
    mask_rate: float = Field(0.5, ge=0, lt=1, description="fraction of a context query's edges hidden per step")
    folds: int = Field(4, ge=2, description="cold folds per epoch = optimiser steps per epoch")
    epochs: int = Field(150, ge=1)
    lr: float = Field(3e-3, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class GraphLayer(nn.Module):
    def __init__(self, hidden: int, n_features: int, dropout: float) -> None:
        super().__init__()
        scale = hidden**-0.5
        self.to_query = nn.Parameter(torch.randn(n_features + 1, hidden, hidden) * scale)
        self.to_arm = nn.Parameter(torch.randn(n_features + 1, hidden, hidden) * scale)
        self.from_neighbours = nn.Linear(hidden, hidden)
        self.query_self = nn.Linear(hidden, hidden)
        self.arm_self = nn.Linear(hidden, hidden)
        self.query_norm = nn.LayerNorm(hidden)
        self.arm_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h_query, h_arm, edges, neighbour_mean):
        """edges: (Q, A, F + 1) = visible-edge indicator followed by the edge features times it;
        neighbour_mean: (Q, hidden) mean state of each query's neighbours."""
        degree_q = edges[..., 0].sum(1, keepdim=True).clamp_min(1.0)
        degree_a = edges[..., 0].sum(0).unsqueeze(1).clamp_min(1.0)
        arm_messages = torch.einsum("ad,fde->fae", h_arm, self.to_query)  # one message per feature channel
        query_messages = torch.einsum("qd,fde->fqe", h_query, self.to_arm)
        to_query = torch.einsum("qaf,fae->qe", edges, arm_messages) / degree_q
        to_arm = torch.einsum("qaf,fqe->ae", edges, query_messages) / degree_a
        neighbours = self.from_neighbours(neighbour_mean)
        new_query = self.query_norm(h_query + self.dropout(F.gelu(self.query_self(h_query) + to_query + neighbours)))
        new_arm = self.arm_norm(h_arm + self.dropout(F.gelu(self.arm_self(h_arm) + to_arm)))
        return new_query, new_arm


class GraphNetwork(nn.Module):
    """The learned weights plus the training graph as buffers; `forward(x)` predicts new queries."""

    def __init__(self, train_x, train_edges, train_neighbours, n_arms: int, p: GraphParams) -> None:
        super().__init__()
        dim, n_features = train_x.shape[1], train_edges.shape[2] - 1
        self.register_buffer("train_x", torch.as_tensor(train_x))
        self.register_buffer("train_edges", torch.as_tensor(train_edges))
        self.register_buffer("train_neighbours", torch.as_tensor(train_neighbours))
        self.neighbours = train_neighbours.shape[1]
        self.query_in = nn.Linear(dim, p.hidden)
        self.arm_embedding = nn.Parameter(torch.randn(n_arms, p.hidden) * 0.1)
        self.layers = nn.ModuleList(GraphLayer(p.hidden, n_features, p.dropout) for _ in range(p.layers))
        self.decode_query = nn.Linear(p.hidden, p.hidden)
        self.decode_arm = nn.Linear(p.hidden, p.hidden, bias=False)
        self.decode_edge = nn.Linear(n_features + 1, p.hidden, bias=False)
        self.decode_out = nn.Linear(p.hidden, 1, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(n_arms))
        self.neighbour_average = row_average(self.train_neighbours, len(train_x))
        self._context: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def borrowed_edges(self, average: torch.Tensor) -> torch.Tensor:
        """(B, A, F + 1): for each query, the mean of its neighbours' edges (`average` is the sparse
        (B, n_train) neighbour-averaging matrix). The indicator channel becomes the fraction of
        neighbours that logged the arm, the feature channels their mean times that fraction, which
        is how the linear edge-conditioned messages weigh an edge anyway."""
        n_train, n_arms, channels = self.train_edges.shape
        flat = torch.sparse.mm(average, self.train_edges.reshape(n_train, n_arms * channels))
        return flat.reshape(-1, n_arms, channels)

    def propagate(self, edges: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(query states, arm states) of the training graph after each round, round 0 first."""
        h_query, h_arm = self.query_in(self.train_x), self.arm_embedding
        states = [(h_query, h_arm)]
        for layer in self.layers:
            h_query, h_arm = layer(h_query, h_arm, edges, torch.sparse.mm(self.neighbour_average, h_query))
            states.append((h_query, h_arm))
        return states

    def decode(self, h_query: torch.Tensor, h_arm: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Reward of every (query, arm) edge from both end states and the edge's own (for a new
        query: borrowed) features."""
        joint = self.decode_query(h_query).unsqueeze(1) + self.decode_arm(h_arm).unsqueeze(0) + self.decode_edge(edges)
        return self.decode_out(F.gelu(joint)).squeeze(-1) + self.output_bias

    def freeze(self) -> None:
        """Cache the training graph's states with every edge visible (call after the weights are final)."""
        with torch.no_grad():
            self._context = self.propagate(self.train_edges)

    def predict_new(self, x: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Rewards for new queries (unit rows) linked to their `neighbours` among the training queries."""
        context = self._context if self._context is not None else self.propagate(self.train_edges)
        average = row_average(neighbours, len(self.train_x))
        edges = self.borrowed_edges(average)
        h_query = self.query_in(x)
        for layer, (train_query, train_arm) in zip(self.layers, context):
            h_query, _ = layer(h_query, train_arm, edges, torch.sparse.mm(average, train_query))
        return self.decode(h_query, context[-1][1], edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_new(x, nearest(x, self.train_x, self.neighbours)[1])


def row_average(neighbours: torch.Tensor, n_columns: int) -> torch.Tensor:
    """Sparse (len(neighbours), n_columns) matrix whose product averages each row's neighbours:
    no (rows, k, width) gather in memory, and a fast backward pass."""
    rows, k = neighbours.shape
    index = torch.stack([torch.arange(rows).repeat_interleave(k), neighbours.reshape(-1)])
    values = torch.full((rows * k,), 1.0 / k)
    return torch.sparse_coo_tensor(index, values, (rows, n_columns), check_invariants=True).coalesce()


def edge_tensor(logged: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(Q, A, F + 1) float32: the logged indicator, then the features zeroed where not logged."""
    features = np.where(logged[..., None], np.nan_to_num(features), 0.0)
    return np.concatenate([logged[..., None], features], axis=2).astype(np.float32)


class GraphRouter(TorchRouter):
    kind = "graph"
    Params = GraphParams
    params: GraphParams
    uses_edge_features = True

    def _fit(self, X, R, X_val, R_val, edge_features: np.ndarray | None = None, **side) -> None:
        if edge_features is None:
            edge_features = R[..., None]
        if edge_features.shape[:2] != R.shape:
            raise RouterError(f"graph router: edge_features has shape {edge_features.shape}, expected {R.shape} + (F,)")
        p = self.params
        if X_val is None:
            train, val = hold_out_rows(len(X), p.validation_fraction, p.seed)
            if val is not None:
                X, R, edge_features, X_val, R_val = X[train], R[train], edge_features[train], X[val], R[val]
        if len(X) < 2:
            raise RouterError("graph router: needs at least 2 training queries")
        with torch_threads(p.threads):
            self._build_graph(X, R, edge_features)
            self._train_graph(R, X_val, R_val)

    def _build_graph(self, X: np.ndarray, R: np.ndarray, edge_features: np.ndarray) -> None:
        keys = F.normalize(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), dim=1)
        k = min(self.params.neighbours, len(X) - 1)
        self._graph = {
            "train_x": keys,
            "train_edges": torch.from_numpy(edge_tensor(np.isfinite(R), edge_features)),
            "train_neighbours": nearest(keys, keys, k, exclude_self=True)[1],
        }

    def build_network(self) -> nn.Module:
        g = self._graph
        return GraphNetwork(g["train_x"], g["train_edges"], g["train_neighbours"], len(self.arms), self.params)

    def _train_graph(self, R: np.ndarray, X_val: np.ndarray | None, R_val: np.ndarray | None) -> None:
        p = self.params
        torch.manual_seed(p.seed)
        generator = torch.Generator().manual_seed(p.seed)
        self.network = network = self.build_network()
        with torch.no_grad():
            network.output_bias.copy_(torch.from_numpy(masked_mean(R).astype(np.float32)))
        rewards, logged = reward_tensors(R)
        if X_val is not None:
            val_x = F.normalize(torch.from_numpy(X_val), dim=1)
            validation = (val_x, nearest(val_x, network.train_x, network.neighbours)[1], *reward_tensors(R_val))
        else:
            validation = None
        optimizer = torch.optim.AdamW(network.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        edges = network.train_edges
        borrowed = network.borrowed_edges(network.neighbour_average)
        n_queries = len(edges)

        best_loss, best_state, best_epoch, stale, losses = float("inf"), None, 0, 0, []
        epochs = tqdm(range(p.epochs), desc="train graph", disable=not self.progress, leave=False)
        for epoch in epochs:
            network.train()
            for cold in torch.randperm(n_queries, generator=generator).tensor_split(p.folds):
                if len(cold) == 0:
                    continue
                keep = (torch.rand(edges.shape[:2], generator=generator) >= p.mask_rate).float()
                visible = edges * keep.unsqueeze(-1)
                visible[cold] = borrowed[cold]  # cold queries see only their neighbours' edges, as new ones do
                states = network.propagate(visible)
                prediction = network.decode(states[-1][0][cold], states[-1][1], visible[cold])
                loss = masked_mse(prediction, rewards[cold], logged[cold])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            if validation is None:
                continue
            network.eval()
            with torch.no_grad():
                val_loss = masked_mse(network.predict_new(validation[0], validation[1]), *validation[2:]).item()
            epochs.set_postfix(val_mse=f"{val_loss:.4f}")
            if val_loss < best_loss - 1e-7:
                best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(network.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= p.patience:
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        network.freeze()
        self.training["fit"] = {
            "epochs_run": epoch + 1, "best_epoch": (best_epoch if validation is not None else epoch) + 1,
            "best_val_mse": best_loss if validation is not None else None,
            "steps": len(losses), "last_train_mse": losses[-1] if losses else None,
        }

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return super()._predict(np.ascontiguousarray(F.normalize(torch.from_numpy(X), dim=1).numpy()))

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self._graph = {name: torch.from_numpy(tensors[name]) for name in ("train_x", "train_edges", "train_neighbours")}
        super()._restore(tensors)
        self.network.freeze()
