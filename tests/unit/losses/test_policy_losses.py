"""PPO clip and value losses, REINFORCE, negative training and neg-REINFORCE against hand values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.policy import (
    neg_reinforce_loss,
    neg_training_loss,
    ppo_policy_loss,
    reinforce_loss,
    sequence_loglik,
    value_loss,
)

NAN = float("nan")


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_ppo_at_ratio_one_is_the_vanilla_policy_gradient():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    log_probs = logps.clone().requires_grad_()
    out = ppo_policy_loss(log_probs, logps, adv, mask, eps_clip=0.2)
    per_seq = (adv * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(out.loss, -per_seq.mean())
    out.loss.backward()
    vanilla = logps.clone().requires_grad_()
    (-((vanilla * adv * mask).sum(1) / mask.sum(1)).mean()).backward()
    torch.testing.assert_close(log_probs.grad, vanilla.grad)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == pytest.approx(0.0)


def test_ppo_clipping_engages_beyond_one_plus_minus_eps():
    # ratios 1.5, 0.5, 0.5 with A = +1, +1, -1 and eps 0.2:
    # -min(1.5, 1.2) = -1.2 (clipped, no gradient); -min(0.5, 0.8) = -0.5 (unclipped);
    # -min(-0.5, -0.8) = 0.8 (clipped, no gradient); the 4th position is padding.
    log_probs = torch.log(t([1.5, 0.5, 0.5, 1.0])).requires_grad_()
    old = t([0.0, 0.0, 0.0, NAN])
    adv = t([1.0, 1.0, -1.0, NAN])
    mask = torch.tensor([[True, True, True, False]])
    out = ppo_policy_loss(log_probs, old, adv, mask, eps_clip=0.2)
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)
    out.loss.backward()
    torch.testing.assert_close(log_probs.grad, t([0.0, -0.5 / 3, 0.0, 0.0]))
    assert out.clip_fraction.item() == 1.0
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5)]
    assert out.approx_kl.item() == pytest.approx(sum(k3) / 3)


def test_value_loss_hand_values_with_and_without_clipping():
    # t0: V 1.0, V_old 0.5, G 2 -> clipped 0.7: max(1.69, 1) ; t1: V 2, V_old 2.5, G 1 -> clipped 2.3: max(1.69, 1)
    # t2: V 1.5, V_old 1.0, G 1.2 -> clipped 1.2: max(0, 0.09); t3 padding
    values = t([1.0, 2.0, 1.5, NAN]).requires_grad_()
    old, returns = t([0.5, 2.5, 1.0, NAN]), t([2.0, 1.0, 1.2, NAN])
    mask = torch.tensor([[True, True, True, False]])
    clipped = value_loss(values, old, returns, mask, value_clip=0.2)
    assert clipped.item() == pytest.approx(0.5 * (1.69 + 1.69 + 0.09) / 3)
    assert value_loss(values, old, returns, mask, value_clip=None).item() == pytest.approx(0.5 * (1 + 1 + 0.09) / 3)
    clipped.backward()
    # only the unclipped branch of t2 carries gradient: 0.5 * 2 (V - G) / 3
    torch.testing.assert_close(values.grad, t([0.0, 0.0, 0.3 / 3, 0.0]))


def test_reinforce_loss_uses_the_per_token_mean_and_detaches_advantages():
    logps = t([-1.0, -3.0], [-4.0, NAN]).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    adv = t(1.0, 0.5).requires_grad_()
    loss = reinforce_loss(logps, mask, adv)  # l = (-2, -4): mean(2 * 1, 4 * 0.5)
    assert loss.item() == pytest.approx(2.0)
    assert reinforce_loss(logps, mask, adv, token_reduction="sum").item() == pytest.approx((4 * 1 + 4 * 0.5) / 2)
    loss.backward()
    assert adv.grad is None
    torch.testing.assert_close(logps.grad, t([-0.25, -0.25], [-0.25, 0.0]))
    with pytest.raises(ValueError, match="token_reduction"):
        sequence_loglik(logps, mask, "max")


def test_neg_training_loss_hand_value_and_alpha_over_n_scaling():
    logps = t([-1.0, -3.0], [-4.0, NAN]).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    weights = t(0.25, 0.75).requires_grad_()
    loss = neg_training_loss(logps, mask, weights)  # mean(0.25 * -2, 0.75 * -4)
    assert loss.item() == pytest.approx(-1.75)
    loss.backward()
    assert weights.grad is None
    torch.testing.assert_close(logps.grad, t([0.0625, 0.0625], [0.375, 0.0]))
    # One group of N identical samples with uniform weights: the term is ℓ / N (the paper's alpha / N scaling).
    same = t([-2.0, -2.0], [-2.0, -2.0], [-2.0, -2.0], [-2.0, -2.0])
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    assert neg_training_loss(same, torch.ones(4, 2, dtype=torch.bool), uniform).item() == pytest.approx(-2.0 / 4)


def test_neg_reinforce_premultiplies_the_token_logprobs_by_the_weights():
    logps = t([-1.0, -3.0], [-4.0, NAN]).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    weights, adv = t(0.25, 0.75), t(2.0, -1.0)
    loss = neg_reinforce_loss(logps, mask, weights, adv)  # mean(-(0.25 * -2) * 2, -(0.75 * -4) * -1)
    assert loss.item() == pytest.approx((1.0 - 3.0) / 2)
    loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1, 1] == 0
