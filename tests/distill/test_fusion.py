"""Fusion math on hand-made tensors: no models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_alloy.distill.fusion import (
    AlignedSources,
    FusedDistribution,
    FusionConfigError,
    combine,
    fusion_loss,
    load_balance,
    make_fusion,
    merge_sparse,
)


def random_sources(S=3, B=2, T=5, k=4, V=12, seed=0, p_unmapped=0.2, p_invalid=0.2) -> AlignedSources:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (S, B, T, k), generator=g)
    ids[torch.rand(S, B, T, k, generator=g) < p_unmapped] = -1
    ids[..., 0] = torch.randint(0, V, (S, B, T), generator=g)  # at least one mapped entry per row
    logits = torch.randn(S, B, T, k, generator=g).masked_fill(ids < 0, float("-inf"))
    valid = torch.rand(S, B, T, generator=g) >= p_invalid
    ce = torch.rand(S, B, generator=g) * 5
    return AlignedSources(ids, torch.log_softmax(logits, -1), valid, ce)


def dense(ids: torch.Tensor, probs: torch.Tensor, V: int) -> torch.Tensor:
    out = torch.zeros(*ids.shape[:-1], V, dtype=probs.dtype)
    keep = ids >= 0
    return out.scatter_add(-1, ids.clamp_min(0), torch.where(keep, probs, torch.zeros_like(probs)))


def reference_mix(sources: AlignedSources, weights: torch.Tensor, V: int) -> torch.Tensor:
    """Per-position loop: weighted sum of the valid sources' dense distributions, renormalised."""
    S, B, T, _ = sources.ids.shape
    out = torch.zeros(B, T, V)
    for b in range(B):
        for t in range(T):
            total = torch.zeros(V)
            for s in range(S):
                if sources.valid[s, b, t]:
                    row = dense(sources.ids[s, b, t], sources.logprobs[s, b, t].exp(), V)
                    total += weights[b, s] * row
            if total.sum() > 0:
                out[b, t] = total / total.sum()
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 6), min_size=1, max_size=12), st.integers(0, 10_000))
def test_merge_sparse_sums_duplicates_into_unique_ids(raw_ids, seed):
    ids = torch.tensor(raw_ids)
    values = torch.rand(len(raw_ids), generator=torch.Generator().manual_seed(seed))
    merged_ids, merged_values = merge_sparse(ids, values)
    kept = merged_ids[merged_ids >= 0]
    assert len(set(kept.tolist())) == len(kept) == len(set(i for i in raw_ids if i >= 0))
    torch.testing.assert_close(dense(merged_ids, merged_values, 7), dense(ids, values, 7))
    assert (merged_values[merged_ids < 0] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_combine_matches_a_per_position_reference(seed):
    V = 12
    sources = random_sources(seed=seed, V=V)
    weights = torch.softmax(torch.randn(2, 3, generator=torch.Generator().manual_seed(seed)), -1)
    ids, probs = combine(sources, weights)
    torch.testing.assert_close(dense(ids, probs, V), reference_mix(sources, weights, V))
    covered = sources.valid.any(0)
    torch.testing.assert_close(probs.sum(-1)[covered], torch.ones(int(covered.sum())))
    assert (probs.sum(-1)[~covered] == 0).all()


def test_fusion_loss_is_cross_entropy_to_the_dense_fused_distribution():
    V = 12
    sources = random_sources(V=V)
    fused = make_fusion("avgce", 3)(sources)
    logits = torch.randn(2, 5, V)
    target = dense(fused.ids, fused.probs, V)
    per_position = -(target * torch.log_softmax(logits, -1)).sum(-1)
    expected = per_position[fused.mask].mean()
    torch.testing.assert_close(fusion_loss(logits, fused), expected)


def test_mince_takes_the_lowest_ce_source_per_sequence():
    S, B, T, k = 3, 4, 3, 2
    # Source s only proposes ids in its own range, so the fused ids reveal who was picked.
    ids = torch.stack([torch.randint(10 * s, 10 * s + 10, (B, T, k)) for s in range(S)])
    logprobs = torch.log_softmax(torch.randn(S, B, T, k), -1)
    ce = torch.tensor([[1.0, 3.0, 2.0, 0.5], [2.0, 1.0, 2.5, 0.7], [3.0, 2.0, 0.1, 0.6]])
    sources = AlignedSources(ids, logprobs, torch.ones(S, B, T, dtype=torch.bool), ce)
    fused = make_fusion("mince", S)(sources)
    best = [0, 1, 2, 0]
    torch.testing.assert_close(fused.weights, torch.nn.functional.one_hot(torch.tensor(best), S).float())
    for b, s in enumerate(best):
        picked = fused.ids[b][fused.probs[b] > 0]
        assert ((picked >= 10 * s) & (picked < 10 * s + 10)).all()


def test_avgce_weights_are_softmax_of_negative_ce_over_tau():
    sources = random_sources()
    for tau in (0.5, 1.0, 4.0):
        fused = make_fusion("avgce", 3, tau=tau)(sources)
        torch.testing.assert_close(fused.weights.sum(-1), torch.ones(2))
        torch.testing.assert_close(fused.weights, torch.softmax(-sources.ce.T / tau, -1))


def test_load_balance_is_zero_when_balanced_and_grows_with_collapse():
    balanced = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    alternating = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    leaning = torch.tensor([[0.7, 0.3], [0.7, 0.3]])
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert load_balance(balanced) == 0 and load_balance(alternating) == 0
    assert 0 < load_balance(leaning) < load_balance(collapsed)


def test_fusionx_keeps_exactly_k_sources_and_its_aux_is_the_scaled_balance():
    sources = random_sources(S=5, B=6)
    fusion = make_fusion("fusionx", 5, top_k=2, balance_coef=0.5)
    fused = fusion(sources, labels=torch.randint(0, 12, (6, 5)))
    assert ((fused.weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(fused.weights.sum(-1), torch.ones(6))
    assert fused.aux_loss > 0  # two of five sources per sequence cannot be balanced on a batch this small
    assert make_fusion("fusionx", 5).top_k == 4


def test_gradients_reach_the_selector_and_the_target_logits():
    torch.manual_seed(0)
    sources = random_sources(S=3, B=4)
    fusion = make_fusion("fusionx", 3, top_k=1)
    logits = torch.randn(4, 5, 12, requires_grad=True)
    fused = fusion(sources, labels=torch.randint(0, 12, (4, 5)))
    (fusion_loss(logits, fused) + fused.aux_loss).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_invalid_positions_and_unmapped_entries_contribute_nothing():
    V = 12
    sources = random_sources(V=V, p_invalid=0.4, p_unmapped=0.4)
    fusion = make_fusion("avgce", 3)
    fused = fusion(sources)
    # Garbage where the contract says "ignore": log-probs of -1 entries and of invalid positions.
    noisy = AlignedSources(sources.ids, sources.logprobs.clone(), sources.valid, sources.ce)
    noisy.logprobs[sources.ids < 0] = 3.0
    noisy.logprobs[~sources.valid] = torch.randn(int((~sources.valid).sum()), 4)
    again = fusion(noisy)
    torch.testing.assert_close(dense(again.ids, again.probs, V), dense(fused.ids, fused.probs, V))
    logits = torch.randn(2, 5, V, requires_grad=True)
    fusion_loss(logits, fused).backward()
    uncovered = ~sources.valid.any(0)
    assert uncovered.any()
    assert (logits.grad[uncovered] == 0).all()


def test_fusion_loss_without_covered_positions_is_zero_and_differentiable():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    empty = FusedDistribution(torch.full((1, 3, 2), -1), torch.zeros(1, 3, 2), torch.ones(1, 1), torch.zeros(()))
    loss = fusion_loss(logits, empty)
    loss.backward()
    assert loss == 0 and logits.grad is not None


def test_the_selector_learns_to_prefer_the_source_the_target_agrees_with():
    """With the target fixed, minimising the fusion loss moves the hard top-1 choice onto the matching
    source: the straight-through gradient reaches the selector even though the kept weight is always 1."""
    torch.manual_seed(0)
    S, B, T, V = 2, 8, 6, 10
    ids = torch.arange(V).expand(S, B, T, V).clone()
    good = torch.log_softmax(torch.randn(B, T, V) * 3, -1)
    bad = torch.log_softmax(torch.randn(B, T, V) * 3, -1)
    sources = AlignedSources(ids, torch.stack([bad, good]), torch.ones(S, B, T, dtype=torch.bool), torch.ones(S, B))
    fusion = make_fusion("fusionx", S, top_k=1, balance_coef=0.0)
    with torch.no_grad():
        fusion.source_bias[0] = 1.0  # start on the wrong source
    optimiser = torch.optim.Adam(fusion.parameters(), lr=0.05)
    assert fusion(sources).weights[:, 1].sum() == 0
    for _ in range(60):
        optimiser.zero_grad()
        fusion_loss(good, fusion(sources)).backward()
        optimiser.step()
    assert (fusion(sources).weights[:, 1] == 1).all()


def test_running_strength_follows_agreement_in_training_only():
    S, B, T = 2, 3, 4
    ids = torch.zeros(S, B, T, 1, dtype=torch.long)
    ids[1] = 5
    sources = AlignedSources(ids, torch.zeros(S, B, T, 1), torch.ones(S, B, T, dtype=torch.bool), torch.ones(S, B))
    labels = torch.full((B, T), 5)  # source 1 always right, source 0 never
    fusion = make_fusion("fusionx", S, top_k=2, min_strength=0.1).eval()
    fusion(sources, labels)
    assert fusion.strength.tolist() == [1.0, 1.0]
    fusion.train()(sources, labels)
    torch.testing.assert_close(fusion.strength, torch.tensor([0.1, 1.0]))


def test_make_fusion_rejects_unknown_names_and_bad_values_with_one_line():
    with pytest.raises(FusionConfigError, match="did you mean 'mince'"):
        make_fusion("minc", 2)
    with pytest.raises(FusionConfigError, match="did you mean 'tau'"):
        make_fusion("avgce", 2, taus=1.0)
    with pytest.raises(FusionConfigError, match="tau must be a number > 0"):
        make_fusion("avgce", 2, tau=0)
    with pytest.raises(FusionConfigError, match="exceeds"):
        make_fusion("fusionx", 2, top_k=3)
