"""The RePULSe update's pure functions against exact expectations on an enumerable toy with a NON-uniform proposal
(tests/unit/rl/enumerable_toy.py): batches hold every response in proportion to its probability, so the weights,
the p_theta loss and the CTL loss must give exactly sigma, -N/(N-1) grad E_p[r] + (alpha/N) grad log Z, and the
gradient of the CTL objective. Each test's docstring names the mutations of the code it catches (each was made,
and turned the test red).
"""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.policy import p_theta_loss
from repulse.losses.proposal import ctl_loss
from repulse.losses.weights import negative_weights
from repulse.rl.advantages import reinforce_advantages
from repulse.rl.potentials import Potential
from tests.unit.rl import enumerable_toy as toy

BETA, THRESHOLD, ALPHA = -2.0, -3.0, 20.0
POTENTIALS = {
    "rlhf": (Potential("rlhf", THRESHOLD), BETA),  # phi = e^{beta r}: the target of log Z
    "indicator": (Potential("indicator_below_threshold", THRESHOLD), 1.0),  # phi = 1[r < tau]: log P(bad)
}


def log_phi_of(leaves: torch.Tensor, kind: str) -> torch.Tensor:
    potential, beta = POTENTIALS[kind]
    return potential.log_phi(toy.rewards()[leaves], beta)


def exact_log_phi(kind: str) -> torch.Tensor:
    """[25] log phi of every leaf, with log 0 = -inf for the indicator (exactly P(bad), no epsilon)."""
    if kind == "indicator":
        return torch.where(toy.rewards() < THRESHOLD, 0.0, -math.inf).double()
    return BETA * toy.rewards()


def weights_of(table: torch.Tensor, leaves: torch.Tensor, kind: str, pad: int = 2) -> torch.Tensor:
    """negative_weights on the proposal batch `leaves` (drawn from q), as the trainer calls it."""
    p_tokens, mask = toy.token_logps(table.detach(), leaves, pad)
    q_tokens, _ = toy.token_logps(toy.log_table(toy.Q_COUNTS), leaves, pad)
    log_phi = log_phi_of(leaves, kind)
    potential, _ = POTENTIALS[kind]
    return negative_weights(p_tokens, q_tokens, log_phi, mask, toy.N, only=potential.bad(log_phi))


@pytest.mark.parametrize("kind", ["rlhf", "indicator"])
def test_negative_weights_on_proposal_samples_are_exactly_sigma(kind):
    """Summed by response within each prompt group, the weights of q's samples are sigma ∝ p_theta phi.

    Catches: dropping -log q from the weights (they become ∝ q p phi), flipping its sign (∝ q^2 p phi), summing
    the log-probs over padding (NaN), normalising over the whole batch instead of each prompt group.
    """
    table = toy.log_table(toy.P_COUNTS)
    leaves = toy.batch_leaves(toy.Q_COUNTS)
    got = toy.per_leaf(weights_of(table, leaves, kind), leaves)
    for g, prompt in enumerate(toy.PROMPTS):
        sigma = torch.softmax(toy.leaf_log_probs(table, prompt) + exact_log_phi(kind), 0)
        torch.testing.assert_close(got[g], sigma, rtol=1e-9, atol=1e-14)
        p = toy.leaf_log_probs(table, prompt).exp()
        assert not torch.allclose(sigma, p, atol=1e-3)  # sigma is a real tilt of p ...
        q = toy.leaf_log_probs(toy.log_table(toy.Q_COUNTS), prompt).exp()
        assert not torch.allclose(sigma, q, atol=1e-3)  # ... and q is not sigma: the weights do the work


def exact_objectives(table: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over prompts of E_p[r], sum over prompts of log E_p[phi]) by enumeration, differentiable."""
    expected, log_z = 0.0, 0.0
    for prompt in toy.PROMPTS:
        log_p = toy.leaf_log_probs(table, prompt)
        expected = expected + (log_p.exp() * toy.rewards()).sum()
        log_z = log_z + torch.logsumexp(log_p + exact_log_phi(kind), 0)
    return expected, log_z


def p_loss_terms(table: torch.Tensor, kind: str):
    """p_theta_loss on p's samples (RLOO advantages of the raw reward) and q's samples (negative weights)."""
    base = toy.batch_leaves(toy.P_COUNTS)
    base_tokens, base_mask = toy.token_logps(table, base, pad=2)
    adv = reinforce_advantages(toy.rewards()[base], toy.N, "expectation")
    neg = toy.batch_leaves(toy.Q_COUNTS)
    neg_tokens, neg_mask = toy.token_logps(table, neg, pad=2)
    weights = weights_of(table, neg, kind)
    return p_theta_loss(base_tokens, base_mask, adv, neg_tokens, neg_mask, weights, alpha=ALPHA)


@pytest.mark.parametrize("kind", ["rlhf", "indicator"])
def test_p_theta_loss_gradient_is_exact(kind):
    """grad L = (1/P) sum over prompts (1/T) [-N/(N-1) grad E_p[r] + (alpha/N) grad log E_p[phi]]: the REINFORCE
    term with the leave-one-out baseline over an exact batch, and the negative term, whose gradient is grad log Z
    (grad log P(bad) with the indicator potential) with coefficient alpha/N per prompt.

    Catches: dropping or flipping -log q in the weights; flipping the sign of the negative term; the alpha/N scale
    (a sum over rows instead of the mean, or alpha without the 1/N); the token mean replaced by a sum (a factor T).
    """
    table = toy.log_table(toy.P_COUNTS).requires_grad_()
    out = p_loss_terms(table, kind)
    rl_grad, neg_grad = (
        torch.autograd.grad(out.rl, table, retain_graph=True)[0],
        torch.autograd.grad(out.negative, table)[0],
    )
    expected, log_z = exact_objectives(table, kind)
    p, n = len(toy.PROMPTS), toy.N
    want_rl = -(n / (n - 1)) / (p * toy.T) * torch.autograd.grad(expected, table, retain_graph=True)[0]
    want_neg = 1 / (p * n * toy.T) * torch.autograd.grad(log_z, table)[0]
    torch.testing.assert_close(rl_grad, want_rl, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(neg_grad, want_neg, rtol=1e-9, atol=1e-13)
    total = torch.autograd.grad(p_loss_terms(table, kind).loss, table)[0]
    torch.testing.assert_close(total, want_rl + ALPHA * want_neg, rtol=1e-9, atol=1e-13)
    assert want_neg.abs().max() > 1e-4 and (ALPHA * want_neg).abs().max() > 0.05 * want_rl.abs().max()


def twist_tables(prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A modulated twist log psi_t = m_t with q ∝ p e^{m} equal to q's counts: m_t = log q_t - log p_t plus a
    constant per prefix, which leaves q unchanged but not the intermediate targets pi_t ∝ p(s_1:t) psi_t."""
    g = torch.Generator().manual_seed(1)
    log_p, log_q = (
        torch.log_softmax(toy.log_table(toy.P_COUNTS), -1),
        torch.log_softmax(toy.log_table(toy.Q_COUNTS), -1),
    )
    m1 = log_q[prompt] - log_p[prompt] + torch.randn((), generator=g, dtype=torch.float64)
    m2 = log_q - log_p + torch.randn(toy.V, 1, generator=g, dtype=torch.float64)
    return m1.requires_grad_(), m2.requires_grad_()


def ctl_objective(m1: torch.Tensor, m2: torch.Tensor, prompt: int, log_sigma: torch.Tensor) -> torch.Tensor:
    """sum_t [log sum_{s_1:t} p(s_1:t) psi_t(s_1:t) - E_sigma log psi_t] = sum_t KL(sigma_1:t || pi_t) + const."""
    log_p = torch.log_softmax(toy.log_table(toy.P_COUNTS), -1)
    s1, s2 = toy.SEQS[:, 0], toy.SEQS[:, 1]
    sigma = log_sigma.exp()
    first = torch.logsumexp(log_p[prompt] + m1, 0) - (sigma * m1[s1]).sum()
    second = torch.logsumexp(log_p[prompt][s1] + log_p[s1, s2] + m2[s1, s2], 0) - (sigma * m2[s1, s2]).sum()
    return first + second


def test_ctl_loss_gradient_is_exact_with_a_non_uniform_proposal():
    """On q's samples, grad CTL = (1/(N T)) grad sum_t KL(sigma_1:t || pi_t) with pi_t ∝ p(s_1:t) psi_t(s_1:t) and
    sigma ∝ p e^{beta r} (Zhao et al. 2024), for a twist whose psi_t are not normalised.

    Catches: dropping -log q in the sigma weights or in the pi_t weights' prefix sums; flipping the sign of the
    second (pi_t) term, or dropping it (ctl_nosecondterm); flipping the sign of the loss.
    """
    prompt = toy.PROMPTS[0]
    leaves = toy.multiset(toy.Q_COUNTS, prompt)
    m1, m2 = twist_tables(prompt)
    s1, s2 = toy.SEQS[leaves, 0], toy.SEQS[leaves, 1]
    log_psi = torch.stack([m1[s1], m2[s1, s2]], 1)
    p_tokens = toy.leaf_token_logps(toy.log_table(toy.P_COUNTS), prompt)[leaves]
    q_tokens = toy.leaf_token_logps(toy.log_table(toy.Q_COUNTS), prompt)[leaves]
    mask = torch.ones(toy.N, toy.T, dtype=torch.bool)
    # q ∝ p e^m is the proposal the rows were drawn from
    log_p, q = torch.log_softmax(toy.log_table(toy.P_COUNTS), -1), torch.tensor(toy.Q_COUNTS).double() / toy.M
    torch.testing.assert_close(torch.softmax(log_p[prompt] + m1.detach(), 0), q[prompt])
    torch.testing.assert_close(torch.softmax(log_p + m2.detach(), -1), q)
    loss = ctl_loss(log_psi, p_tokens, q_tokens, BETA * toy.rewards()[leaves], mask, toy.N)
    got = torch.autograd.grad(loss, (m1, m2), retain_graph=True)
    log_sigma = torch.log_softmax(toy.leaf_log_probs(toy.log_table(toy.P_COUNTS), prompt) + BETA * toy.rewards(), 0)
    want = torch.autograd.grad(ctl_objective(m1, m2, prompt, log_sigma) / (toy.N * toy.T), (m1, m2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
    # the pi_t term matters here (with psi_t = q_t / p_t it would vanish in expectation)
    without = torch.autograd.grad(
        ctl_loss(log_psi, p_tokens, q_tokens, BETA * toy.rewards()[leaves], mask, toy.N, second_term=False), m2
    )[0]
    assert (without - got[1]).abs().max() > 0.1 * got[1].abs().max()
