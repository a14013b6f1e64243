"""Self-normalised importance weights: masked sums (padding-invariant), per-group softmax, -inf, ESS."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.reductions import masked_sum
from repulse.losses.weights import (
    effective_sample_size,
    group_softmax,
    log_weights,
    negative_weights,
    sigma_weights,
    uniform_group_weights,
)
from repulse.rl.potentials import is_bad, log_potential


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _batch(seed=0, batch=8, length=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    target = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    proposal = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    log_phi = torch.randn(batch, generator=g, dtype=torch.float64)
    return target, proposal, log_phi, mask


def _repad(x, mask, width, g):
    """Each row's valid tokens at a random offset inside `width` columns; garbage (inf, nan, huge) elsewhere."""
    garbage = t(float("inf"), float("-inf"), float("nan"), 1e30, -7.0)
    out = garbage[torch.randint(0, 5, (x.shape[0], width), generator=g)]
    new_mask = torch.zeros(x.shape[0], width, dtype=torch.bool)
    for i in range(x.shape[0]):
        n = int(mask[i].sum())
        start = int(torch.randint(0, width - n + 1, (1,), generator=g))
        out[i, start : start + n], new_mask[i, start : start + n] = x[i, :n], True
    return out, new_mask


def test_weights_are_invariant_to_padding():
    target, proposal, log_phi, mask = _batch()
    weights = sigma_weights(target, proposal, log_phi, mask, group_size=4)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        state = g.get_state()
        target2, mask2 = _repad(target, mask, 9, g)
        g.set_state(state)  # the same offsets for the proposal log-probs
        proposal2, _ = _repad(proposal, mask, 9, g)
        torch.testing.assert_close(sigma_weights(target2, proposal2, log_phi, mask2, 4), weights, rtol=1e-12, atol=0)
    # The test has power: summing without the mask changes the weights.
    naive = group_softmax(target.sum(-1) + log_phi - (proposal * mask).sum(-1), 4)
    assert not torch.allclose(naive, weights)


def test_sequence_logprob_and_log_weights_by_hand():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logps = t([-1.0, -2.0, float("nan")], [-0.5, float("inf"), 3.0])
    torch.testing.assert_close(masked_sum(logps, mask, dim=-1), t(-3.0, -0.5))
    proposal = t([-2.0, -2.0, float("-inf")], [-1.0, float("nan"), 0.0])
    # log w = Σ log p + log phi - Σ log q: -3 + 2 - (-4) and -0.5 + 1 - (-1); its mean over q's samples is f_q
    torch.testing.assert_close(log_weights(logps, proposal, t(2.0, 1.0), mask), t(3.0, 1.5))


def test_group_softmax_sums_to_one_per_group():
    log_w = t(0.0, math.log(3.0), 5.0, 5.0, -1e4, 7.0)
    w = group_softmax(log_w, group_size=2)
    torch.testing.assert_close(w, t(0.25, 0.75, 0.5, 0.5, 0.0, 1.0))
    torch.testing.assert_close(w.reshape(3, 2).sum(1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="whole number of groups"):
        group_softmax(log_w, group_size=4)


def test_minus_infinity_entries_and_groups():
    inf = float("inf")
    w = group_softmax(t(-inf, 0.0, -inf, -inf), group_size=2)
    assert w.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert effective_sample_size(w, 2).tolist() == [1.0, 0.0]


def test_weights_carry_no_gradient():
    log_w = t(0.0, 1.0).requires_grad_()
    assert not group_softmax(log_w, 2).requires_grad


def test_uniform_weights_and_ess():
    w = uniform_group_weights(6, 3, dtype=torch.float64)
    torch.testing.assert_close(w, torch.full((6,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(effective_sample_size(w, 3), t(3.0, 3.0))
    torch.testing.assert_close(effective_sample_size(t(0.5, 0.5, 0.0, 1.0, 0.0, 0.0), 3), t(2.0, 1.0))
    torch.testing.assert_close(effective_sample_size(t(1.0, 3.0), 2), t(16 / 10))  # unnormalised is fine too


def test_indicator_weights_of_good_samples_become_zero():
    rewards = t(-7.0, 1.0, 2.0, 3.0)
    log_phi = log_potential(rewards, "indicator_below_threshold", beta=1.0, threshold=-5.0, reward_cap=1e4)
    zeros, mask = torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.bool)
    weights = group_softmax(log_phi, group_size=2)  # p = q: log w = log phi
    out = negative_weights(zeros, zeros, log_phi, mask, 2, only=is_bad(log_phi))
    # group 0: the bad sample keeps its ~1 weight; group 1 has no bad sample, so it contributes nothing
    torch.testing.assert_close(out, t(1.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(weights[2:], t(0.5, 0.5))
    torch.testing.assert_close(negative_weights(zeros, zeros, log_phi, mask, 2), weights)
