"""Self-normalised importance weights towards sigma_theta ∝ p_theta phi (METHODS §2.4, §2.5).

All sequence log-probs are MASKED sums over the response tokens: the reference code's p-update summed over
every position (METHODS §12 item 1), which lets padding leak into the weights. Rows are P prompt groups x N
samples, contiguous per prompt; every normalisation is within a group.
"""

from __future__ import annotations

import torch

from repulse.losses.proposal import group_softmax, sequence_sum
from repulse.rl.potentials import is_bad


def sequence_logprob(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(s) = Σ_t log p(s_t | s_<t) over valid tokens: [B, T] -> [B]. Garbage under a false mask is ignored."""
    return sequence_sum(token_logps, mask)


def log_importance_weights(
    target_logp: torch.Tensor, log_phi: torch.Tensor, proposal_logp: torch.Tensor
) -> torch.Tensor:
    """log w_i = log p_theta(s_i) + log phi(s_i) - log q(s_i): [B] each -> [B] (METHODS §2.5)."""
    return target_logp + log_phi - proposal_logp


def f_q(target_logp: torch.Tensor, log_phi: torch.Tensor, proposal_logp: torch.Tensor) -> torch.Tensor:
    """ELBO terms log p(s) + log phi(s) - log q(s) for s ~ q: [B] (METHODS §2.4). E_q[f_q] <= log Z."""
    return log_importance_weights(target_logp, log_phi, proposal_logp).detach()


def normalized_group_weights(log_w: torch.Tensor, group_size: int) -> torch.Tensor:
    """w̄_i = softmax of log w over the N samples of i's prompt: [B] -> [B], sums to 1 per group, detached.

    -inf entries get weight 0; a group whose log-weights are all -inf gets all-zero weights (not nan).
    """
    return group_softmax(log_w, group_size)


def uniform_group_weights(
    batch_size: int, group_size: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """w̄_i = 1/N (`--uniform_reweight`): [B]."""
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} rows is not a whole number of groups of {group_size}")
    return torch.full((batch_size,), 1.0 / group_size, dtype=dtype, device=device)


def zero_weights_where_not_bad(weights: torch.Tensor, log_phi: torch.Tensor) -> torch.Tensor:
    """For `--rm_type indicator_below_threshold`: after normalising, samples with phi ≈ 0 get weight 0.

    weights, log_phi: [B] -> [B]. Not renormalised, so a group without a bad sample contributes nothing instead
    of spreading uniform weight over good samples (METHODS §2.5).
    """
    return torch.where(is_bad(log_phi), weights, torch.zeros_like(weights))


def effective_sample_size(weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """ESS per prompt group, (Σ w)² / Σ w² (= 1 / Σ w̄² for normalised weights): [B] -> [P], in [1, N].

    A group of all-zero weights has ESS 0.
    """
    if group_size < 1 or weights.shape[0] % group_size:
        raise ValueError(f"batch of {weights.shape[0]} rows is not a whole number of groups of {group_size}")
    grouped = weights.detach().reshape(-1, group_size)
    total, squares = grouped.sum(dim=1), (grouped**2).sum(dim=1)
    return torch.where(squares > 0, total**2 / squares.clamp(min=torch.finfo(squares.dtype).tiny), 0.0)


def snis_weights(
    target_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """The p-update weights in one call: normalized_group_weights(log_importance_weights(masked sums)) -> [B]."""
    log_w = log_importance_weights(
        sequence_logprob(target_token_logps, action_mask), log_phi, sequence_logprob(proposal_token_logps, action_mask)
    )
    return normalized_group_weights(log_w, group_size)
