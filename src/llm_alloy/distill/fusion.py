"""Fusing several sources' aligned top-k distributions into one distillation target per position.

Every source arrives already mapped onto the target's tokenization and vocabulary (`AlignedSources`):
at each target position a sparse top-k list of target ids with log-probabilities. A fusion method
only decides per-sequence source weights; `combine` turns weights + sparse lists into one sparse
distribution per position, and `fusion_loss` is the cross-entropy of the target against it.

Methods are small strategy objects chosen by name with declared parameters (`make_fusion`):
  mince    FuseLLM's best variant: per sequence, the source with the lowest cross-entropy on the text.
  avgce    weighted average, weights softmax(-CE / tau) over sources.
  fusionx  a learned selector (trained jointly with the target) keeps the top-K sources per sequence and
           weights them by softmax(scores) x running source strength, with a load-balancing feedback loss.
"""

from __future__ import annotations

import difflib
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class AlignedSources:
    """S sources on a batch of B target sequences of T positions, top-k entries each.

    ids: Long (S,B,T,k) target vocabulary ids, -1 where an entry has no target token.
    logprobs: (S,B,T,k) log-probabilities, renormalised over the entries with an id (others ignored).
    valid: Bool (S,B,T) whether the source has a distribution aligned to that target position.
    ce: (S,B) each source's mean next-token NLL on the sequence text (its own tokenization).
    """

    ids: Tensor
    logprobs: Tensor
    valid: Tensor
    ce: Tensor

    @property
    def num_sources(self) -> int:
        return self.ids.shape[0]

    def to(self, device: torch.device | str) -> "AlignedSources":
        return AlignedSources(self.ids.to(device), self.logprobs.to(device), self.valid.to(device), self.ce.to(device))

    def probs(self) -> Tensor:
        """(S,B,T,k) probabilities, zero at entries without an id and at invalid positions."""
        keep = (self.ids >= 0) & self.valid[..., None]
        return torch.where(keep, self.logprobs.float().exp(), torch.zeros((), device=self.ids.device))


@dataclass
class FusedDistribution:
    """One sparse distribution per target position, plus what the fusion decided.

    ids: Long (B,T,M) target ids, each id at most once per position, -1 padding.
    probs: (B,T,M) sums to 1 at positions some source covers, 0 elsewhere.
    weights: (B,S) per-sequence source weights (rows sum to 1).
    aux_loss: scalar added to the training loss (the selector's feedback; zero for fixed rules).
    """

    ids: Tensor
    probs: Tensor
    weights: Tensor
    aux_loss: Tensor

    @property
    def mask(self) -> Tensor:
        """(B,T) positions with a fused distribution."""
        return self.probs.sum(-1) > 0


def merge_sparse(ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the values of repeated ids along the last axis: (..., M) -> (..., M) with unique ids.

    Sort, mark the first of each run of equal ids, and scatter-add every value into its run's slot;
    runs fill the leading slots, the rest is id -1 with value 0. Entries with id < 0 are dropped.
    """
    values = torch.where(ids >= 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    sorted_ids, order = ids.sort(dim=-1)
    sorted_values = values.gather(-1, order)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    slot = starts.long().cumsum(-1) - 1
    merged_values = torch.zeros_like(sorted_values).scatter_add(-1, slot, sorted_values)
    # Every member of a run carries the same id, so colliding writes agree.
    merged_ids = torch.full_like(sorted_ids, -1).scatter(-1, slot, sorted_ids)
    merged_values = torch.where(merged_ids >= 0, merged_values, torch.zeros_like(merged_values))
    return merged_ids, merged_values


def combine(sources: AlignedSources, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mix the sources' sparse lists with per-sequence weights (B,S) into (ids, probs) of (B,T,S*k).

    At a position some sources do not cover, the weights of those that do are renormalised, so a
    source missing locally does not shrink the target there; a position no weighted source covers
    gets zero mass and drops out of the loss.
    """
    per_position = weights.transpose(0, 1)[..., None] * sources.valid  # (S,B,T)
    total = per_position.sum(0, keepdim=True)
    per_position = per_position / total.clamp_min(torch.finfo(per_position.dtype).tiny)
    mixed = sources.probs() * per_position[..., None]  # (S,B,T,k)
    S, B, T, k = sources.ids.shape
    ids = sources.ids.permute(1, 2, 0, 3).reshape(B, T, S * k)
    mixed = mixed.permute(1, 2, 0, 3).reshape(B, T, S * k)
    # Sources weighted 0 keep their ids in the support with zero mass: no effect on the loss's value,
    # but a straight-through gradient (FusionX) can still tell how more weight on them would help.
    ids, probs = merge_sparse(ids, mixed)
    mass = probs.sum(-1, keepdim=True)
    probs = torch.where(mass > 0, probs / mass.clamp_min(torch.finfo(probs.dtype).tiny), probs)
    return ids, probs


def fusion_loss(target_logits: Tensor, fused: FusedDistribution, mask: Tensor | None = None) -> Tensor:
    """Mean over covered positions of -sum_j p_j log q(id_j): the target's cross-entropy to the fused
    distribution (KL up to the fused entropy). Gathers the few fused ids instead of materialising a
    full-vocabulary log-softmax copy."""
    logits = target_logits.float()
    log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, fused.ids.clamp_min(0))
    per_position = (fused.probs * (log_normaliser - picked)).sum(-1)
    covered = fused.mask if mask is None else fused.mask & mask.bool()
    if not covered.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact on a batch with nothing to distil
    return per_position[covered].mean()


# --- registry -------------------------------------------------------------------------------------------


class FusionConfigError(ValueError):
    """An unknown fusion method or parameter, or a parameter value out of range; one line."""


@dataclass(frozen=True)
class Parameter:
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda value: True
    requirement: str = ""


class Fusion(nn.Module):
    """A fusion method: per-sequence source weights (and an auxiliary loss) from aligned sources.

    Fixed rules have no parameters; learned ones (FusionX) are nn.Modules trained with the target,
    which is why every method is a module: the trainer puts `fusion.parameters()` in its optimiser.
    """

    name: ClassVar[str]
    parameters_declared: ClassVar[dict[str, Parameter]] = {}

    def __init__(self, num_sources: int, **params: Any) -> None:
        super().__init__()
        self.num_sources = num_sources
        for key, value in params.items():
            setattr(self, key, value)

    @abstractmethod
    def weights(self, sources: AlignedSources, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B,S) per-sequence weights summing to 1, and a scalar auxiliary loss."""

    def forward(self, sources: AlignedSources, labels: Tensor | None = None) -> FusedDistribution:
        """labels: (B,T) the gold next target token at each position, < 0 where there is none."""
        if sources.num_sources != self.num_sources:
            raise ValueError(f"fusion {self.name!r} was built for {self.num_sources} sources, got {sources.num_sources}")
        weights, aux = self.weights(sources, labels)
        ids, probs = combine(sources, weights)
        return FusedDistribution(ids, probs, weights, aux)


FUSIONS: dict[str, type[Fusion]] = {}


def register(cls: type[Fusion]) -> type[Fusion]:
    FUSIONS[cls.name] = cls
    return cls


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def make_fusion(name: str, num_sources: int, **params: Any) -> Fusion:
    """A fusion method by name, its declared parameters filled with defaults and checked."""
    cls = FUSIONS.get(name)
    if cls is None:
        raise FusionConfigError(
            f"unknown fusion method {name!r} (known: {', '.join(sorted(FUSIONS))}){_did_you_mean(name, list(FUSIONS))}"
        )
    if num_sources < 1:
        raise FusionConfigError(f"fusion {name!r} needs at least one source")
    declared = cls.parameters_declared
    for key in params:
        if key not in declared:
            raise FusionConfigError(
                f"fusion {name!r} has no parameter {key!r} (accepts: {', '.join(declared) or 'none'})"
                f"{_did_you_mean(key, list(declared))}"
            )
    values = {key: params.get(key, spec.default) for key, spec in declared.items()}
    for key, value in values.items():
        spec = declared[key]
        if not spec.check(value):
            raise FusionConfigError(f"fusion {name!r}: {key} must be {spec.requirement}, got {value!r}")
    return cls(num_sources, **values)


@register
class MinCE(Fusion):
    """Per sequence, all weight on the source with the lowest cross-entropy on the text (FuseLLM)."""

    name: ClassVar[str] = "mince"

    def weights(self, sources: AlignedSources, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        best = sources.ce.argmin(0)  # (B,)
        weights = nn.functional.one_hot(best, self.num_sources).float()
        return weights, sources.ce.new_zeros(())


@register
class AvgCE(Fusion):
    """Weighted average of all sources, weights softmax(-CE / tau) over sources per sequence."""

    name: ClassVar[str] = "avgce"
    parameters_declared: ClassVar[dict[str, Parameter]] = {
        "tau": Parameter(1.0, "temperature of softmax(-CE / tau): small -> MinCE, large -> uniform",
                         lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
    }
    tau: float

    def weights(self, sources: AlignedSources, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        weights = torch.softmax(-sources.ce.float().transpose(0, 1) / self.tau, dim=-1)
        return weights, sources.ce.new_zeros(())


def sequence_features(sources: AlignedSources, labels: Tensor | None) -> Tensor:
    """(B,S,5) cheap per-source features of each sequence, no gradient: CE, CE relative to the mean
    of the sources, mean entropy of the top-k lists, agreement of the top-1 with the gold token, and
    the share of target positions the source covers."""
    with torch.no_grad():
        probs = sources.probs()
        valid = sources.valid.float()
        count = valid.sum(-1).clamp_min(1.0)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # (S,B,T)
        mean_entropy = (entropy * valid).sum(-1) / count
        if labels is None:
            agreement = torch.zeros_like(mean_entropy)
        else:
            top1 = sources.ids.gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1)  # (S,B,T)
            judged = sources.valid & (labels >= 0)
            hits = ((top1 == labels) & judged).float().sum(-1)
            agreement = hits / judged.float().sum(-1).clamp_min(1.0)
        ce = sources.ce.float()
        coverage = valid.mean(-1)
        features = torch.stack([ce, ce - ce.mean(0, keepdim=True), mean_entropy, agreement, coverage], dim=-1)
    return features.transpose(0, 1)


def load_balance(gates: Tensor) -> Tensor:
    """Coefficient of variation of the mean gate per source over the batch: 0 when every source gets
    the same share, growing as the selector concentrates on a few (mixture-of-experts balancing)."""
    usage = gates.mean(0)
    return usage.std(unbiased=False) / usage.mean().clamp_min(1e-12)


@register
class FusionX(Fusion):
    """Adaptive selection (FusionX): a selector scores each source per sequence from cheap features,
    keeps the top-K, and weights them by softmax(scores) scaled by each source's running strength.

    The selector is one small MLP shared by all sources plus a learned per-source bias, so it can judge
    a source both from the sequence at hand and from who it is. Running strength is an exponential
    average of each source's top-1 agreement with the gold token (floored so a chosen source always
    counts a little): it damps sources that the evidence says are weak without any gradient.

    The top-K cut is not differentiable (with K = 1 the kept weight is always 1), so the weights are
    straight-through: their value is the top-K weighting, their gradient that of the same weighting
    over all sources. The selector thus learns from the fusion loss which sources would help, kept or
    not. The feedback loss (`balance_coef` x load_balance of softmax(scores) over all sources) keeps it
    from collapsing on one subset.
    """

    name: ClassVar[str] = "fusionx"
    parameters_declared: ClassVar[dict[str, Parameter]] = {
        "top_k": Parameter(None, "sources kept per sequence (default: all but one, at least one)",
                           lambda v: v is None or (isinstance(v, int) and v >= 1), "an integer >= 1"),
        "hidden": Parameter(16, "width of the selector MLP", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "balance_coef": Parameter(0.01, "weight of the load-balancing feedback loss",
                                  lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
        "strength_momentum": Parameter(0.9, "momentum of the running source strength (0: last batch only)",
                                       lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
        "min_strength": Parameter(0.05, "floor of the running strength of a source",
                                  lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]"),
    }
    top_k: int | None
    hidden: int
    balance_coef: float
    strength_momentum: float
    min_strength: float

    def __init__(self, num_sources: int, **params: Any) -> None:
        super().__init__(num_sources, **params)
        if self.top_k is None:
            self.top_k = max(1, num_sources - 1)
        if self.top_k > num_sources:
            raise FusionConfigError(f"fusion 'fusionx': top_k={self.top_k} exceeds the {num_sources} sources")
        self.scorer = nn.Sequential(nn.Linear(5, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
        self.source_bias = nn.Parameter(torch.zeros(num_sources))
        self.register_buffer("strength", torch.ones(num_sources))
        self.register_buffer("strength_seen", torch.zeros((), dtype=torch.bool))

    def scores(self, sources: AlignedSources, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        features = sequence_features(sources, labels)
        return self.scorer(features).squeeze(-1) + self.source_bias, features

    def _update_strength(self, agreement: Tensor) -> None:
        observed = agreement.mean(0).clamp_min(self.min_strength)
        if not bool(self.strength_seen):
            self.strength.copy_(observed)
            self.strength_seen.fill_(True)
        else:
            self.strength.mul_(self.strength_momentum).add_(observed * (1 - self.strength_momentum))

    def weights(self, sources: AlignedSources, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        scores, features = self.scores(sources, labels)
        if self.training and labels is not None:
            with torch.no_grad():
                self._update_strength(features[..., 3])
        strength = self.strength.clamp_min(self.min_strength)
        gates = torch.softmax(scores.float(), dim=-1)
        kept = torch.zeros_like(gates, dtype=torch.bool).scatter(-1, scores.topk(self.top_k, dim=-1).indices, True)
        hard = torch.where(kept, gates * strength, torch.zeros_like(gates))
        hard = hard / hard.sum(-1, keepdim=True)
        soft = gates * strength
        soft = soft / soft.sum(-1, keepdim=True)
        weights = hard.detach() + (soft - soft.detach())  # exactly `hard` in value
        return weights, self.balance_coef * load_balance(gates)
