import numpy as np
import pytest

from llm_alloy.explore.bandit import posterior_mean, posterior_mode, thompson_draw, update_posterior


def test_update_posterior_counts_losses_in_alpha():
    assert update_posterior(1.0, 1.0, 1) == (2.0, 1.0)
    assert update_posterior(2.0, 1.0, 0) == (2.0, 2.0)
    with pytest.raises(ValueError):
        update_posterior(1.0, 1.0, 2)


def test_thompson_draws_are_reproducible_with_a_seed():
    a = thompson_draw([2, 5, 1], [3, 1, 8], np.random.default_rng(7))
    b = thompson_draw([2, 5, 1], [3, 1, 8], np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, thompson_draw([2, 5, 1], [3, 1, 8], np.random.default_rng(8)))


def test_thompson_prefers_the_arm_where_the_target_loses_most():
    rng = np.random.default_rng(0)
    # Arm 1: the target lost 30 of 40 questions; arm 0: 10 of 40.
    wins = np.bincount([int(np.argmax(thompson_draw([11, 31], [31, 11], rng))) for _ in range(2000)], minlength=2)
    assert wins[1] > 0.99 * 2000


def test_mode_and_its_mean_fallback():
    assert posterior_mode(4, 2) == pytest.approx(0.75)
    assert posterior_mode(1, 1) == 0.5  # alpha + beta == 2: mode undefined
    assert posterior_mode(1, 5) == 0.0
    assert posterior_mean(3, 1) == 0.75
