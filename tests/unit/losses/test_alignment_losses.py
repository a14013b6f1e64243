"""DPO / IPO / cDPO, KTO, KD and PRM losses against hand-derived values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.kd import kd_loss
from repulse.losses.kto import kto_kl_estimate, kto_loss
from repulse.losses.preference import dpo_loss
from repulse.losses.prm import prm_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_is_ln2_when_policy_equals_reference():
    logps = t(-3.0, -7.5, -1.25)
    out = dpo_loss(logps, logps - 2, logps, logps - 2, beta=0.1)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert torch.equal(out.chosen_rewards, torch.zeros(3, dtype=torch.float64))


def test_dpo_hand_value_and_rewards():
    # h = (pi_c - pi_r) - (ref_c - ref_r) = (-1 - -3) - (-2 - -2) = 2; beta = 0.5 -> -log sigmoid(1)
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert out.chosen_rewards.item() == pytest.approx(0.5 * (-1 - -2))
    assert out.rejected_rewards.item() == pytest.approx(0.5 * (-3 - -2))


def test_cdpo_mixes_both_directions():
    # eps = 0.2, beta h = 1: 0.8 log(1 + e^-1) + 0.2 log(1 + e^1)
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.2)
    expected = 0.8 * math.log(1 + math.exp(-1)) + 0.2 * math.log(1 + math.exp(1))
    assert out.loss.item() == pytest.approx(expected)


def test_ipo_is_squared_distance_to_half_inverse_beta():
    # h = 2, beta = 0.1: (2 - 5)^2 = 9; the minimum sits at h = 1 / (2 beta)
    assert dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.1, ipo=True).loss.item() == pytest.approx(9.0)
    assert dpo_loss(t(3.0), t(-2.0), t(0.0), t(0.0), beta=0.1, ipo=True).loss.item() == pytest.approx(0.0)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = t(-2.0).requires_grad_(), t(-2.0).requires_grad_()
    dpo_loss(chosen, rejected, t(-2.0), t(-2.0), beta=1.0).loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    assert chosen.grad.item() == pytest.approx(-0.5)  # d/dh -log sigmoid(h) at 0 = -1/2


def test_kto_closed_form_with_zero_kl_and_equal_weights():
    # r = +1 desirable, r = -2 undesirable, beta = 1, z0 = 0:
    # (1 - sigmoid(1) + 1 - sigmoid(2)) / 2
    out = kto_loss(t(0.0, -3.0), t(-1.0, -1.0), torch.tensor([True, False]), t(0.0), beta=1.0)
    expected = ((1 - 1 / (1 + math.exp(-1))) + (1 - 1 / (1 + math.exp(-2)))) / 2
    assert out.loss.item() == pytest.approx(expected)
    assert out.rewards.tolist() == pytest.approx([1.0, -2.0])


def test_kto_weights_and_reference_point():
    out = kto_loss(t(0.0), t(-1.0), torch.tensor([True]), t(0.5), beta=2.0, desirable_weight=3.0)
    assert out.loss.item() == pytest.approx(3 * (1 - 1 / (1 + math.exp(-2 * (1 - 0.5)))))
    assert kto_kl_estimate(t(-1.0, -2.0), t(-2.0, -2.0)).item() == pytest.approx(0.5)
    assert kto_kl_estimate(t(-3.0), t(-1.0)).item() == 0.0  # clamped at 0


def test_kd_is_zero_when_student_equals_teacher_and_matches_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert kd_loss(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-12)
    student = torch.randn(2, 3, 5, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    kl = (p * (p.log() - torch.log_softmax(student, -1))).sum(-1)
    assert kd_loss(student, logits, mask).item() == pytest.approx(kl[mask].mean().item())


def test_prm_loss_ignores_non_marker_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, dtype=torch.float64)
    markers = torch.tensor([[False, True, False, True]])
    label_ids = torch.tensor([2, 4])
    targets = t(1.0, 0.0, 0.3, 0.7).view(2, 2)
    loss, acc = prm_loss(logits, markers, targets, label_ids)
    changed = logits.clone()
    changed[0, [0, 2]] += 100.0  # non-marker positions: no effect
    assert prm_loss(changed, markers, targets, label_ids)[0].item() == pytest.approx(loss.item())
    logp = torch.log_softmax(logits[0, [1, 3]][:, label_ids], -1)
    assert loss.item() == pytest.approx(-(targets * logp).sum(-1).mean().item())
    assert 0.0 <= acc.item() <= 1.0
