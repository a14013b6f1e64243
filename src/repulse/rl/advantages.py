"""Advantages and baselines: GAE for PPO (docs/algorithms/ppo.md), RLOO / hard-coded baselines for REINFORCE.

Batch layout: P prompt groups x N samples, rows contiguous per prompt (rows [p*N, (p+1)*N) share prompt p).
Per-token tensors are [B, T] over response positions, `action_mask` [B, T] bool marks the valid tokens
(EOS action included); padded positions may hold garbage and never reach a result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repulse.losses.reductions import zero_invalid

BASELINE_TYPES = ("expectation", "hardcoded", "other_expectation", None)


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B, ...] -> [P, N, ...]; B must be a multiple of N."""
    if group_size < 1 or x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} rows is not a whole number of groups of {group_size}")
    return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, action_mask: torch.Tensor, gamma: float, lambd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    delta_t = r_t + gamma V_{t+1} - V_t with V and r zeroed outside the mask (so V beyond the last valid
    token is 0), A_t = sum_k (gamma lambda)^k delta_{t+k}, returns G_t = A_t + V_t. Works for left- or
    right-padded rows as long as each row's valid tokens are contiguous.

    Args: rewards, values: [B, T]; action_mask: [B, T]. Returns (advantages [B, T], returns [B, T]), both
    detached and 0 at padded positions.
    """
    mask = action_mask.bool()
    r, v = zero_invalid(rewards.detach(), mask), zero_invalid(values.detach(), mask)
    advantages = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        next_value = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = delta + gamma * lambd * running
        advantages[:, t] = running
    advantages = zero_invalid(advantages, mask)
    return advantages, zero_invalid(advantages + v, mask)


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
    shift_mean: bool = True,
    total: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> torch.Tensor:
    """(x - mean) / max(std, eps) over the valid entries of x [B, T] (advantage whitening).

    mean and (biased) std are taken over every valid token of the whole tensor; with shift_mean=False the
    mean is added back (scale only). Padded positions come back as 0. `total` sums a dict of floats over the
    processes that each hold a share of the batch (an all-reduce), so that the mean and std are the whole batch's
    (the valid tokens' count and sum, then their squared deviations: the same two passes one process makes).
    """
    m = mask.bool()
    values = zero_invalid(x, m)
    if total is None:
        count = m.sum().clamp(min=1)
        mean = values.sum() / count
        var = zero_invalid((x - mean) ** 2, m).sum() / count
    else:
        sums = total({"count": float(m.sum()), "sum": values.double().sum().item()})
        count = max(sums["count"], 1.0)
        mean = sums["sum"] / count
        var = total({"squares": zero_invalid((x.double() - mean) ** 2, m).sum().item()})["squares"] / count
        var = torch.tensor(var, dtype=x.dtype, device=x.device)
    out = (values - mean) / var.sqrt().clamp(min=eps)
    if not shift_mean:
        out = out + mean
    return zero_invalid(out, m)


def rloo_baseline(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out mean of the other N-1 returns in each prompt group: b_i = (sum_j R_j - R_i) / (N - 1).

    returns: [B] -> [B]. `--reinforce_baseline_type expectation`; needs N >= 2.
    """
    if group_size < 2:
        raise ValueError(f"the RLOO baseline needs at least 2 samples per prompt, got group_size={group_size}")
    grouped = _groups(returns, group_size)
    return ((grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)).reshape(returns.shape)


def group_mean_baseline(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean of the N returns of each prompt group (self included), broadcast back to [B].

    R_i - mean = (N-1)/N (R_i - b_i^RLOO): the reference code's "expectation" baseline is this one, a
    constant rescaling of the RLOO advantage.
    """
    grouped = _groups(returns, group_size)
    return grouped.mean(dim=1, keepdim=True).expand_as(grouped).reshape(returns.shape)


def reinforce_advantages(
    returns: torch.Tensor,
    group_size: int,
    baseline_type: str | None,
    hardcoded: float = 0.0,
    other: torch.Tensor | None = None,
) -> torch.Tensor:
    """R - b for REINFORCE (`--reinforce_baseline_type` / `--neg_baseline_type`). [B] -> [B].

    "expectation": RLOO leave-one-out mean; "hardcoded": b = `hardcoded`; "other_expectation": b = the mean
    of `other` [B] within each prompt group (e.g. the base samples' returns for the proposal samples);
    None: b = 0. Detached.
    """
    returns = returns.detach()
    if baseline_type is None:
        return returns
    if baseline_type == "expectation":
        return returns - rloo_baseline(returns, group_size)
    if baseline_type == "hardcoded":
        return returns - hardcoded
    if baseline_type == "other_expectation":
        if other is None or other.shape != returns.shape:
            raise ValueError("baseline 'other_expectation' needs `other` rewards shaped like the returns")
        return returns - group_mean_baseline(other.detach(), group_size)
    raise ValueError(f"--reinforce_baseline_type: unknown baseline {baseline_type!r}; choose from {BASELINE_TYPES}")


def last_valid_index(action_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true entry of each row of action_mask [B, T] -> [B] (0 for an empty row)."""
    positions = torch.arange(action_mask.shape[1], device=action_mask.device)
    return torch.where(action_mask.bool(), positions, 0).amax(dim=1)


def per_token_rewards(
    kl: torch.Tensor, sequence_reward: torch.Tensor, action_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """rho_t = -c kl_t on every valid token plus the sequence reward at the last valid token.

    kl: [B, T] per-token k1 KL; sequence_reward: [B]; returns [B, T], 0 at padded positions.
    """
    mask = action_mask.bool()
    rewards = zero_invalid(-kl_coef * kl, mask)
    last = last_valid_index(mask).unsqueeze(1)
    rewards = rewards.scatter_add(1, last, sequence_reward.to(rewards.dtype).unsqueeze(1))
    return zero_invalid(rewards, mask)


def neg_reinforce_returns(
    log_phi: torch.Tensor, token_kl: torch.Tensor, action_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """The proposal samples' "reward" for `neg_reinforce`: beta r̄ - c Σ_t log(p_theta / p_0).

    log_phi [B] (= beta min(r, cap)); token_kl [B, T] = log p_theta - log p_0 per token (detached). -> [B].
    """
    return log_phi.detach() - kl_coef * zero_invalid(token_kl.detach(), action_mask).sum(dim=-1)
