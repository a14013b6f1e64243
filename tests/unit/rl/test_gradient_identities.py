"""With exact sigma weights the RePULSe negative-training gradient (token sums) is
∇ log P_theta(bad) for the indicator potential and ∇ log Z_theta for phi = e^{beta r}, on an enumerable toy
with two prompts (one group each) and padded, garbage-filled token positions.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from repulse.losses.policy import neg_training_loss
from repulse.losses.reductions import masked_sum
from repulse.losses.weights import group_softmax
from repulse.rl.potentials import log_potential

V, T, PAD = 5, 2, 2  # vocabulary, response length, extra padded columns
SEQS = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [25, 2]


def _toy():
    """A tabular autoregressive model per prompt: logits1 [2, V], logits2 [2, V, V]; a reward with a rare bad token."""
    g = torch.Generator().manual_seed(0)
    logits1 = torch.randn(2, V, generator=g, dtype=torch.float64)
    logits2 = torch.randn(2, V, V, generator=g, dtype=torch.float64)
    logits1[:, 4] -= 2.0
    logits2[..., 4] -= 2.0
    quality = torch.randn(V, generator=g, dtype=torch.float64) * 0.5
    reward = quality[SEQS].sum(-1) - 6.0 * (SEQS == 4).any(-1)
    return logits1.requires_grad_(), logits2.requires_grad_(), reward


def _token_logps(logits1, logits2, prompt):
    first = torch.log_softmax(logits1[prompt], -1)[SEQS[:, 0]]
    second = torch.log_softmax(logits2[prompt], -1)[SEQS[:, 0], SEQS[:, 1]]
    return torch.stack([first, second], 1)  # [25, 2]


def _padded_batch(logits1, logits2):
    """Both prompts' full enumerations as 2 groups of 25 rows, with PAD garbage columns that depend on theta."""
    rows = torch.cat([_token_logps(logits1, logits2, p) for p in (0, 1)])
    garbage = 1e3 * logits1.sum() + torch.full((rows.shape[0], PAD), float("nan"), dtype=torch.float64)
    mask = torch.cat(
        [torch.ones(rows.shape[0], T, dtype=torch.bool), torch.zeros(rows.shape[0], PAD, dtype=torch.bool)], 1
    )
    return torch.cat([rows, garbage], 1), mask


def _exact_log_expectation(logits1, logits2, phi):
    """Σ_prompts log Σ_s p(s | prompt) phi(s), by enumeration."""
    return sum(torch.log((_token_logps(logits1, logits2, p).sum(-1).exp() * phi).sum()) for p in (0, 1))


def _neg_training_grad(rm_type, beta, threshold):
    logits1, logits2, reward = _toy()
    token_logps, mask = _padded_batch(logits1, logits2)
    log_phi = log_potential(reward.repeat(2), rm_type, beta, threshold, reward_cap=1e4)
    # Exact sigma over each prompt's whole output space: a uniform "proposal" over the enumeration.
    uniform = torch.full_like(log_phi, -math.log(len(SEQS)))
    log_w = masked_sum(token_logps.detach(), mask, dim=-1) + log_phi - uniform
    weights = group_softmax(log_w, group_size=len(SEQS))
    loss = neg_training_loss(token_logps, mask, weights, token_reduction="sum") * len(log_phi)
    grads = torch.autograd.grad(loss, (logits1, logits2))
    return grads, (logits1, logits2, reward)


@pytest.mark.parametrize("rm_type", ["indicator_below_threshold", "rlhf"])
def test_neg_training_gradient_is_grad_log_partition(rm_type):
    beta, threshold = (1.0, -3.0) if rm_type == "indicator_below_threshold" else (-2.0, -3.0)
    grads, (logits1, logits2, reward) = _neg_training_grad(rm_type, beta, threshold)
    # indicator: phi = 1[r < tau] -> log P(bad); rlhf: phi = e^{beta r} -> log Z
    phi = (reward < threshold).double() if rm_type == "indicator_below_threshold" else torch.exp(beta * reward)
    p_bad = _token_logps(logits1, logits2, 0).sum(-1).exp()[reward < threshold].sum()
    assert 1e-3 < p_bad < 0.2  # bad outputs are rare but present
    exact = torch.autograd.grad(_exact_log_expectation(logits1, logits2, phi), (logits1, logits2))
    for got, want in zip(grads, exact):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert all(g.abs().max() > 1e-2 for g in exact)


def test_the_mean_reduction_is_not_the_exact_gradient():
    # With token means the fixed-length toy halves the gradient: the "sum" variant is the exact one.
    grads_sum, _ = _neg_training_grad("rlhf", -2.0, -3.0)
    logits1, logits2, reward = _toy()
    token_logps, mask = _padded_batch(logits1, logits2)
    log_phi = log_potential(reward.repeat(2), "rlhf", -2.0, -3.0, 1e4)
    weights = group_softmax(masked_sum(token_logps.detach(), mask, dim=-1) + log_phi, len(SEQS))
    loss = neg_training_loss(token_logps, mask, weights) * len(log_phi)
    grads_mean = torch.autograd.grad(loss, (logits1, logits2))
    for mean, total in zip(grads_mean, grads_sum):
        torch.testing.assert_close(mean, total / T)
