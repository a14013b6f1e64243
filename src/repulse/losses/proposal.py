"""Twist / proposal losses (`--actor_loss_type` ctl, ctl_nosecondterm, dpg, sixo, sixo_approxneg;
docs/algorithms/twist.md).

The proposal q is trained towards sigma(s) ∝ p(s) phi(s) from its own samples, self-normalised per prompt.
Common inputs (P prompt groups x N samples, rows contiguous per prompt, response-aligned so that column t is
step t of every row, i.e. right-padded):
- log_psi [B, T]: log psi_t(s_{1:t}) on the proposal samples, WITH gradient (see models/proposal.py);
- base_token_logps [B, T]: log p(s_t | s_<t) under the base model (detached);
- proposal_token_logps [B, T]: log q(s_t | s_<t) stored at sampling time (detached);
- log_phi [B]: log potential; action_mask [B, T]; group_size N.
Padded positions may hold garbage: they contribute 0 to every sum and mean. Every loss returns a scalar.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from repulse.losses.reductions import masked_mean, zero_invalid
from repulse.losses.weights import group_softmax, sigma_weights


def _carry_last_valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """At each padded position, the value at the row's last valid position before it: [B, T] -> [B, T]."""
    positions = torch.arange(x.shape[1], device=x.device).expand_as(x)
    last_valid = torch.where(mask.bool(), positions, 0).cummax(dim=1).values
    return x.gather(1, last_valid)


def ctl_pi_weights(
    log_psi: torch.Tensor,
    base_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    cumulative_psi: bool = False,
) -> torch.Tensor:
    """CTL negative weights w̄^π_{i,t} = softmax_group(Σ_{τ≤t} log p + log psi_t - Σ_{τ≤t} log q): [B, T], detached.

    Padded tokens count as deterministic padding (log p = log q = 0), so a finished sample keeps its place in
    pi_t. Its log psi_t there is 0 for per-token twists (psi = q(pad)/p(pad) = 1; the reference behaviour), or
    with `cumulative_psi` (policy_psi_q_p_s_1_to_t) the cumulative twist carried from its last valid token;
    then p psi / q ≡ 1 and the weights are exactly uniform.
    """
    mask = action_mask.bool()
    prefix = (zero_invalid(base_token_logps, mask) - zero_invalid(proposal_token_logps, mask)).cumsum(dim=1)
    log_w = prefix + zero_invalid(log_psi.detach(), mask)
    if cumulative_psi:
        log_w = _carry_last_valid(log_w, mask)
    return group_softmax(log_w, group_size)


def ctl_loss(
    log_psi: torch.Tensor,
    base_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    *,
    second_term: bool = True,
    cumulative_psi: bool = False,
) -> torch.Tensor:
    """Contrastive twist learning (Zhao et al. 2024; `ctl`, `ctl_nosecondterm`).

    L = -(1/(P N)) Σ_i masked_mean_t[(w̄^σ_i - w̄^π_{i,t}) log psi_t(s^i_{1:t})], whose gradient estimates
    Σ_t (E_{π_t}[∇ log psi_t] - E_σ[∇ log psi_t]). second_term=False drops w̄^π (SNIS maximum likelihood on
    sigma-reweighted samples). `cumulative_psi`: see ctl_pi_weights.
    """
    w_sigma = sigma_weights(base_token_logps, proposal_token_logps, log_phi, action_mask, group_size)
    coef = w_sigma.unsqueeze(1).expand_as(log_psi)
    if second_term:
        coef = coef - ctl_pi_weights(
            log_psi, base_token_logps, proposal_token_logps, action_mask, group_size, cumulative_psi
        )
    return -masked_mean(coef * zero_invalid(log_psi, action_mask), action_mask, dim=-1).mean()


def dpg_loss(
    log_psi: torch.Tensor,
    base_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    *,
    log_psi_all: torch.Tensor,
    base_logps_all: torch.Tensor,
) -> torch.Tensor:
    """Distributional policy gradient, one-step CTL (`dpg`).

    With q̄_t(v) = softmax_v(log p(v|s_<t) + log psi_t(s_<t, v)) (detached, full vocabulary):
    L = -(1/(P N)) Σ_i masked_mean_t w̄^σ_i [log psi_t(s^i_{1:t}) - Σ_v q̄_t(v) log psi_t(s^i_<t, v)].
    log_psi_all [B, T, V] (with gradient), base_logps_all [B, T, V]: base log-probs or logits (normalised here).
    For policy_psi_q_p_s_t, q̄ = q and the gradient is -E_σ[∇ log q(s_t|s_<t)], i.e. it minimises KL(σ || q).
    """
    w_sigma = sigma_weights(base_token_logps, proposal_token_logps, log_phi, action_mask, group_size)
    log_psi_all = zero_invalid(log_psi_all, action_mask)
    base_all = zero_invalid(F.log_softmax(base_logps_all.detach(), dim=-1), action_mask)
    q_bar = torch.softmax(base_all + log_psi_all.detach(), dim=-1)
    expected = (q_bar * log_psi_all).sum(dim=-1)
    per_token = w_sigma.unsqueeze(1) * (zero_invalid(log_psi, action_mask) - expected)
    return -masked_mean(per_token, action_mask, dim=-1).mean()


def sixo_loss(
    log_psi: torch.Tensor,
    base_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    *,
    log_psi_neg: torch.Tensor,
    neg_action_mask: torch.Tensor,
) -> torch.Tensor:
    """SIXO: classify sigma-samples against p-samples with the link sigmoid(log psi_t) (`sixo`).

    L = -(1/(P N)) Σ_i [masked_mean_t w̄^σ_i log sigmoid(log psi_t(s^i))
                       + (1/N) masked_mean_t log(1 - sigmoid(log psi_t(s'^i)))],
    with s'^i [B, T'] fresh samples from the base model for the same prompts (log_psi_neg, neg_action_mask);
    each term is averaged over its own sequence's valid tokens.
    """
    w_sigma = sigma_weights(base_token_logps, proposal_token_logps, log_phi, action_mask, group_size)
    positive = w_sigma * masked_mean(F.logsigmoid(zero_invalid(log_psi, action_mask)), action_mask, dim=-1)
    # log(1 - sigmoid(x)) = logsigmoid(-x), without the cancellation.
    negative = masked_mean(F.logsigmoid(-zero_invalid(log_psi_neg, neg_action_mask)), neg_action_mask, dim=-1)
    negative = negative / group_size
    return -(positive + negative).mean()


def sixo_approxneg_loss(
    log_psi: torch.Tensor,
    base_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """SIXO with the negatives approximated by the proposal samples reweighted towards p (`sixo_approxneg`).

    w̄^p_i = softmax_group(Σ_t log p - Σ_t log q) and
    L = -(1/(P N)) Σ_i masked_mean_t[w̄^σ_i log sigmoid(log psi_t) + w̄^p_i log(1 - sigmoid(log psi_t))].
    """
    w_sigma = sigma_weights(base_token_logps, proposal_token_logps, log_phi, action_mask, group_size)
    w_p = sigma_weights(base_token_logps, proposal_token_logps, torch.zeros_like(log_phi), action_mask, group_size)
    psi = zero_invalid(log_psi, action_mask)
    per_token = w_sigma.unsqueeze(1) * F.logsigmoid(psi) + w_p.unsqueeze(1) * F.logsigmoid(-psi)
    return -masked_mean(per_token, action_mask, dim=-1).mean()


# --actor_loss_type -> loss. Every entry takes (log_psi, base_token_logps, proposal_token_logps, log_phi,
# action_mask, group_size) plus the keyword-only extras of PROPOSAL_LOSS_EXTRAS. ppo / reinforce: losses/policy.py.
PROPOSAL_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ctl": ctl_loss,
    "ctl_nosecondterm": functools.partial(ctl_loss, second_term=False),
    "dpg": dpg_loss,
    "sixo": sixo_loss,
    "sixo_approxneg": sixo_approxneg_loss,
}
PROPOSAL_LOSS_EXTRAS: dict[str, tuple[str, ...]] = {
    "ctl": ("cumulative_psi",),
    "ctl_nosecondterm": (),
    "dpg": ("log_psi_all", "base_logps_all"),
    "sixo": ("log_psi_neg", "neg_action_mask"),
    "sixo_approxneg": (),
}
