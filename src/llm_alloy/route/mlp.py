"""MLP router: one network with a shared hidden layer and one output per arm, regressing each arm's
reward (FusionFactory fitted a separate one-hidden-unit MLP per arm on 0/1 "was best" labels)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from llm_alloy.route.neural import TorchParams, TorchRouter


class MlpParams(TorchParams):
    hidden: int = Field(256, ge=1, description="width of each hidden layer")
    layers: int = Field(1, ge=1, description="number of hidden layers")
    dropout: float = Field(0.1, ge=0, lt=1)


class MlpNetwork(nn.Module):
    def __init__(self, dim: int, n_arms: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, n_arms)

    @property
    def output_bias(self) -> nn.Parameter:
        return self.head.bias

    def forward(self, x):
        return self.head(self.body(x))


class MlpRouter(TorchRouter):
    kind = "mlp"
    Params = MlpParams
    params: MlpParams

    def build_network(self) -> nn.Module:
        p = self.params
        return MlpNetwork(self.dim, len(self.arms), p.hidden, p.layers, p.dropout)
