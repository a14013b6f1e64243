"""Pairwise reward-model losses against hand-derived values.

With d = r_c - r_r - m:  sigmoid loss = -log sigmoid(d) = log(1 + e^{-d}) = logexp loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.preference import PAIRWISE_LOSSES, pairwise_logexp_loss, pairwise_sigmoid_loss

LOSSES = [pairwise_sigmoid_loss, pairwise_logexp_loss]


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_equal_rewards_give_ln2(loss_fn):
    r = torch.tensor([0.3, -2.0, 5.0])
    assert loss_fn(r, r.clone()).item() == pytest.approx(math.log(2.0), abs=1e-6)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_gap_of_one(loss_fn):
    chosen, rejected = torch.tensor([1.5]), torch.tensor([0.5])
    assert loss_fn(chosen, rejected).item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)
    # Swapped: the model prefers the rejected answer by 1.
    assert loss_fn(rejected, chosen).item() == pytest.approx(math.log(1 + math.exp(1.0)), abs=1e-6)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_margin_shifts_the_gap(loss_fn):
    chosen, rejected = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    # Gap 1 minus margin 1 -> d = 0 -> ln 2; gap 1 minus margin 3 -> d = -2 -> log(1 + e^2).
    assert loss_fn(chosen, rejected, torch.tensor([1.0, 1.0])).item() == pytest.approx(math.log(2.0), abs=1e-6)
    expected = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2  # mean over the two pairs
    assert loss_fn(chosen, rejected, torch.tensor([1.0, 3.0])).item() == pytest.approx(expected, abs=1e-6)
    # A zero margin is the same as none.
    assert loss_fn(chosen, rejected, torch.zeros(2)).item() == loss_fn(chosen, rejected).item()


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_mean_over_pairs(loss_fn):
    chosen, rejected = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(2.0) + math.log(1 + math.exp(-1.0))) / 2
    assert loss_fn(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_and_logexp_agree():
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(64, generator=gen, dtype=torch.float64) * 5
    rejected = torch.randn(64, generator=gen, dtype=torch.float64) * 5
    margin = torch.rand(64, generator=gen, dtype=torch.float64)
    for m in (None, margin):
        a = pairwise_sigmoid_loss(chosen, rejected, m)
        b = pairwise_logexp_loss(chosen, rejected, m)
        assert abs(a.item() - b.item()) < 1e-12


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_gradient_signs_and_values(loss_fn):
    # d/d r_c of log(1 + e^{-(r_c - r_r)}) = -sigmoid(r_r - r_c); at equal rewards -1/2, divided by B = 2 pairs.
    chosen = torch.tensor([0.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0], requires_grad=True)
    loss_fn(chosen, rejected).backward()
    assert (chosen.grad < 0).all()  # raising the chosen reward lowers the loss
    assert (rejected.grad > 0).all()  # raising the rejected reward raises it
    assert torch.allclose(chosen.grad, -rejected.grad)
    expected = [-0.5 / 2, -1 / (1 + math.exp(1.0)) / 2]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_registry():
    assert PAIRWISE_LOSSES["sigmoid"] is pairwise_sigmoid_loss
    assert PAIRWISE_LOSSES["logexp"] is pairwise_logexp_loss


def test_sigmoid_loss_large_gap_is_finite():
    # -log sigmoid(-200) = 200 (to float precision); the chosen answer is far worse.
    loss = pairwise_sigmoid_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert loss.item() == pytest.approx(200.0)


def test_logexp_loss_large_gap_is_finite():
    chosen = torch.tensor([0.0], requires_grad=True)
    loss = pairwise_logexp_loss(chosen, torch.tensor([200.0]))
    loss.backward()
    assert loss.item() == pytest.approx(200.0)
    assert chosen.grad.item() == pytest.approx(-1.0)
