"""Self-normalised importance weights toward sigma(s) ∝ p(s) phi(s) from proposal samples s ~ q
(docs/algorithms/harmlessness.md).

Rows are P prompt groups x N samples, contiguous per prompt; every normalisation is within a group. Sequence
log-probs are MASKED sums over the response tokens (the reference code's p-update summed over every position,
which lets padding leak into the weights). Weights carry no gradient.
"""

from __future__ import annotations

import torch

from repulse.losses.reductions import masked_sum


def check_groups(batch_size: int, group_size: int) -> None:
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} rows is not a whole number of groups of {group_size}")


def log_weights(
    target_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
) -> torch.Tensor:
    """log w_i = Σ_t log p(s_it) + log phi(s_i) - Σ_t log q(s_it): [B, T], [B, T], [B], [B, T] -> [B], detached.

    For s ~ q its mean is f_q, a lower bound on log Z = log E_p[phi] (an ELBO).
    """
    target = masked_sum(target_token_logps.detach(), action_mask, dim=-1)
    proposal = masked_sum(proposal_token_logps.detach(), action_mask, dim=-1)
    return target + log_phi.detach() - proposal


def group_softmax(log_w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Softmax over the N samples of each prompt group: [B, ...] -> [B, ...], detached.

    Rows [p*N, (p+1)*N) form group p; trailing dims (e.g. t) are independent. -inf entries get weight 0 and a
    group whose entries are all -inf gets all-zero weights (not nan).
    """
    check_groups(log_w.shape[0], group_size)
    grouped = log_w.detach().reshape(log_w.shape[0] // group_size, group_size, *log_w.shape[1:])
    top = grouped.amax(dim=1, keepdim=True)
    # An all -inf group would give (-inf) - (-inf) = nan: shift by 0 instead, so every exp is 0.
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    unnorm = torch.exp(grouped - top)
    total = unnorm.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, unnorm / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(unnorm))
    return weights.reshape(log_w.shape)


def sigma_weights(
    target_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """w̄^σ_i = softmax over i's group of log w_i (see log_weights): [B], detached."""
    return group_softmax(log_weights(target_token_logps, proposal_token_logps, log_phi, action_mask), group_size)


def uniform_group_weights(
    batch_size: int, group_size: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """w̄_i = 1/N (`--uniform_reweight`): [B]."""
    check_groups(batch_size, group_size)
    return torch.full((batch_size,), 1.0 / group_size, dtype=dtype, device=device)


def negative_weights(
    target_token_logps: torch.Tensor,
    proposal_token_logps: torch.Tensor,
    log_phi: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    *,
    uniform: bool = False,
    only: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weights of RePULSe's negative term on proposal samples: [B], detached.

    sigma_weights toward p_theta phi (target_token_logps = log p_theta, proposal_token_logps = log q at sampling),
    or 1/N with `uniform`. `only` [B] bool (the indicator potential's "is bad"): other samples get weight 0 after
    normalising, not renormalised, so a group without a bad sample contributes nothing.
    """
    if uniform:
        weights = uniform_group_weights(log_phi.shape[0], group_size, device=log_phi.device).to(target_token_logps)
    else:
        weights = sigma_weights(target_token_logps, proposal_token_logps, log_phi, action_mask, group_size)
    if only is not None:
        weights = torch.where(only, weights, torch.zeros_like(weights))
    return weights


def effective_sample_size(weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """ESS per prompt group, (Σ w)² / Σ w² (= 1 / Σ w̄² for normalised weights): [B] -> [P], in [1, N].

    A group of all-zero weights has ESS 0.
    """
    check_groups(weights.shape[0], group_size)
    grouped = weights.detach().reshape(-1, group_size)
    total, squares = grouped.sum(dim=1), (grouped**2).sum(dim=1)
    return torch.where(squares > 0, total**2 / squares.clamp(min=torch.finfo(squares.dtype).tiny), 0.0)
