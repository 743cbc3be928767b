"""Matrix-factorisation router (RouteLLM-style bilinear model).

score(q, a) = w . (v_a * W q) + b_a with a learned unit-norm embedding v_a per arm, a linear projection
W of the query embedding and a per-arm bias. RouteLLM trains it with a pairwise loss on "which model
won"; here it regresses each arm's reward on logged cells, like every other router, so its scores are
rewards and the cost-aware tie-break applies unchanged.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from llm_alloy.route.neural import TorchParams, TorchRouter


class MfParams(TorchParams):
    rank: int = Field(128, ge=1, description="dimension of the arm embeddings and of the projected query")
    lr: float = Field(3e-3, gt=0)


class BilinearNetwork(nn.Module):
    def __init__(self, dim: int, n_arms: int, rank: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, rank, bias=False)
        self.arm_embedding = nn.Parameter(torch.randn(n_arms, rank))
        self.weight = nn.Parameter(torch.ones(rank))
        self.output_bias = nn.Parameter(torch.zeros(n_arms))

    def forward(self, x):
        arms = F.normalize(self.arm_embedding, dim=1)
        return (self.project(x) * self.weight) @ arms.T + self.output_bias


class MfRouter(TorchRouter):
    kind = "mf"
    Params = MfParams
    params: MfParams

    def build_network(self) -> nn.Module:
        return BilinearNetwork(self.dim, len(self.arms), self.params.rank)
