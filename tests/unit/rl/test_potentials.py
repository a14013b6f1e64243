"""--rm_type potentials and --reward_transform transforms against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.rl.potentials import is_bad, log_potential, transform_reward


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_rlhf_potential_is_beta_times_capped_reward():
    out = log_potential(t(-2.0, 0.5, 30.0), "rlhf", beta=-10.0, threshold=-5.0, reward_cap=10.0)
    torch.testing.assert_close(out, t(20.0, -5.0, -100.0))


def test_indicator_potential_and_badness():
    out = log_potential(t(-7.0, -5.0, 1.0), "indicator_below_threshold", beta=1.0, threshold=-5.0, reward_cap=1e4)
    torch.testing.assert_close(out, t(math.log(1 + 1e-16), math.log(1e-16), math.log(1e-16)))
    assert is_bad(out).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="--target_dist_beta"):
        log_potential(t(0.0), "indicator_below_threshold", beta=-5.0, threshold=-5.0, reward_cap=1e4)


def test_toxicity_class_logprob_potential():
    # r = logit of the non-toxic class: log P(toxic) = log(1 - sigmoid(r)) = -softplus(r)
    r = t(-3.0, 0.0, 4.0)
    expected = 2.0 * torch.log(1 - torch.sigmoid(r))
    out = log_potential(r, "exp_beta_toxicity_class_logprob", beta=2.0, threshold=-5.0, reward_cap=1e4)
    torch.testing.assert_close(out, expected)


def test_unknown_and_legacy_rm_types_raise():
    with pytest.raises(ValueError, match="--rm_type"):
        log_potential(t(0.0), "nonsense", 1.0, -5.0, 1e4)
    with pytest.raises(NotImplementedError, match="legacy"):
        log_potential(t(0.0), "toy_test", 1.0, -5.0, 1e4)


def test_reward_transforms_hand_values():
    r = t(-6.0, -1.0, 2.0)
    torch.testing.assert_close(transform_reward(r, None), r)
    out = transform_reward(r, "minus_alpha_exp_beta_r", alpha=0.5, beta=-1.0)
    torch.testing.assert_close(out, t(-6 - 0.5 * math.exp(6), -1 - 0.5 * math.e, 2 - 0.5 * math.exp(-2)))
    torch.testing.assert_close(transform_reward(r, "minus_alpha_ind", alpha=3.0, threshold=-5.0), t(-9.0, -1.0, 2.0))
    with pytest.raises(ValueError, match="--reward_transform"):
        transform_reward(r, "exp")
