"""Beta-Bernoulli bandit arithmetic shared by the knowledge tree, the allocators and Introspection-Rebirth.

A node's posterior is Beta(alpha, beta) over the probability that the target *loses* there (reward 1),
so a high draw marks a weakness worth sending questions to.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def update_posterior(alpha: float, beta: float, reward: int) -> tuple[float, float]:
    """Conjugate update for one Bernoulli outcome."""
    if reward not in (0, 1):
        raise ValueError(f"reward must be 0 or 1, got {reward!r}")
    return alpha + reward, beta + 1 - reward


def thompson_draw(alpha: ArrayLike, beta: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """One posterior draw per arm (vectorised over arms)."""
    return rng.beta(np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float))


def posterior_mean(alpha: float, beta: float) -> float:
    return alpha / (alpha + beta)


def posterior_mode(alpha: float, beta: float) -> float:
    """Most probable loss rate; the mean where the mode is undefined.

    At the uniform prior (alpha + beta == 2) every value is a mode; the mean (0.5) is the neutral choice.
    Arms below the prior (possible only for a reborn-then-edited file) fall back to the mean too, since the
    Beta density is then unbounded at an edge and the formula leaves [0, 1].
    """
    if alpha < 1 or beta < 1 or alpha + beta <= 2:
        return posterior_mean(alpha, beta)
    return (alpha - 1) / (alpha + beta - 2)
