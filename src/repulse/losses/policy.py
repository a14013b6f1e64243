"""Base-model (policy) losses: PPO clip and value loss (docs/algorithms/ppo.md), REINFORCE, RePULSe negative
training and its REINFORCE variant (docs/algorithms/harmlessness.md).

Per-token tensors are [B, T] over response positions with `action_mask` [B, T] marking valid tokens; padded
positions may hold garbage and are replaced by 0 before any arithmetic. ℓ(s) is the per-token MEAN
log-likelihood masked_mean_t log p(s_t | s_<t) (the paper's choice); token_reduction="sum" gives the sequence
log-likelihood, for which the estimators are exact gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from repulse.losses.reductions import masked_mean, masked_sum, zero_invalid

TOKEN_REDUCTIONS = ("mean", "sum")


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    clip_fraction: torch.Tensor  # scalar, detached: share of valid tokens with |ratio - 1| > eps
    approx_kl: torch.Tensor  # scalar, detached: token mean of (ratio - 1) - log ratio (k3, estimates KL(old||new))


def sequence_loglik(
    token_logps: torch.Tensor, action_mask: torch.Tensor, token_reduction: str = "mean"
) -> torch.Tensor:
    """ℓ(s): masked mean ("mean", the paper's choice) or masked sum ("sum") of token log-probs: [B, T] -> [B]."""
    if token_reduction == "mean":
        return masked_mean(token_logps, action_mask, dim=-1)
    if token_reduction == "sum":
        return masked_sum(token_logps, action_mask, dim=-1)
    raise ValueError(f"token_reduction must be one of {TOKEN_REDUCTIONS}, got {token_reduction!r}")


def ppo_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    eps_clip: float = 0.2,
) -> PolicyLossOutput:
    """Clipped PPO surrogate: mean over sequences of masked_mean_t[-min(ρ A, clip(ρ, 1±ε) A)].

    ρ_t = exp(log π(s_t) - log π_old(s_t)). All inputs [B, T]; old_log_probs and advantages are detached.
    """
    mask = action_mask.bool()
    log_ratio = zero_invalid(log_probs, mask) - zero_invalid(old_log_probs.detach(), mask)
    ratio = log_ratio.exp()
    adv = zero_invalid(advantages.detach(), mask)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - eps_clip, 1 + eps_clip) * adv)
    loss = -masked_mean(surrogate, mask, dim=-1).mean()
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        clip_fraction = zero_invalid(((ratio - 1).abs() > eps_clip).to(ratio.dtype), mask).sum() / tokens
        approx_kl = zero_invalid((ratio - 1) - log_ratio, mask).sum() / tokens
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    action_mask: torch.Tensor,
    value_clip: float | None = 0.2,
) -> torch.Tensor:
    """PPO value loss: 0.5 mean_seq masked_mean_t max((V_old + clip(V - V_old, ±ε) - G)², (V - G)²).

    value_clip=None: plain 0.5 mean_seq masked_mean_t (V - G)². All inputs [B, T].
    """
    mask = action_mask.bool()
    v, g = zero_invalid(values, mask), zero_invalid(returns.detach(), mask)
    squared = (v - g) ** 2
    if value_clip is not None:
        v_old = zero_invalid(old_values.detach(), mask)
        clipped = v_old + (v - v_old).clamp(-value_clip, value_clip)
        squared = torch.max((clipped - g) ** 2, squared)
    return 0.5 * masked_mean(squared, mask, dim=-1).mean()


def reinforce_loss(
    token_logps: torch.Tensor, action_mask: torch.Tensor, advantages: torch.Tensor, token_reduction: str = "mean"
) -> torch.Tensor:
    """REINFORCE: L_RF = (1/(P N)) Σ_i -ℓ(s_i) A_i with A_i = R_i - b_i [B] (detached).

    token_logps [B, T] with gradient. Baselines come from rl/advantages.reinforce_advantages.
    """
    return -(sequence_loglik(token_logps, action_mask, token_reduction) * advantages.detach()).mean()


def neg_training_loss(
    token_logps: torch.Tensor, action_mask: torch.Tensor, weights: torch.Tensor, token_reduction: str = "mean"
) -> torch.Tensor:
    """RePULSe negative training term: (1/(P N)) Σ_i w̄_i ℓ(s̃_i), to be MINIMISED.

    token_logps [B, T]: log p_theta on the proposal samples s̃ (with gradient); weights [B]: normalised per
    prompt (detached here). The caller adds alpha times this to L_RF. Because w̄ sums to 1 per prompt and the
    loss averages over P N rows, the effective coefficient is alpha / N per prompt (kept on purpose, as in
    the reference code, so the paper's alpha values transfer). With token_reduction="sum" and exact sigma weights
    its gradient is (1/(P N)) Σ_prompts ∇ log Z_theta.
    """
    return (sequence_loglik(token_logps, action_mask, token_reduction) * weights.detach()).mean()


def neg_reinforce_loss(
    token_logps: torch.Tensor,
    action_mask: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    token_reduction: str = "mean",
) -> torch.Tensor:
    """The negative part of `neg_reinforce`: REINFORCE on the proposal samples with the token
    log-probs pre-multiplied by w̄_i, i.e. (1/(P N)) Σ_i -w̄_i ℓ(s̃_i) A_i.

    advantages [B] = R̃ - b with R̃ = beta r̄ - c Σ_t log(p_theta / p_0) (rl.advantages.neg_reinforce_returns) and
    the baseline from `--neg_baseline_type` (rl.advantages.reinforce_advantages). The caller adds alpha times this
    to L_RF. Note the sign as specified: samples with a higher R̃ (with beta < 0, the WORSE ones) are pushed up.
    """
    weighted = zero_invalid(token_logps, action_mask) * weights.detach().unsqueeze(1)
    return reinforce_loss(weighted, action_mask, advantages, token_reduction)


class PThetaLoss(NamedTuple):
    loss: torch.Tensor  # rl + alpha * negative (scalar, with gradient)
    rl: torch.Tensor  # the REINFORCE term on p_theta's own samples
    negative: torch.Tensor | None  # the negative term on proposal samples (None when it is off)


def p_theta_loss(
    base_token_logps: torch.Tensor,
    base_mask: torch.Tensor,
    advantages: torch.Tensor,
    neg_token_logps: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    *,
    alpha: float = 0.0,
    neg_advantages: torch.Tensor | None = None,
) -> PThetaLoss:
    """p_theta's loss in harmlessness training: L_RF + alpha x the negative term.

    base_token_logps [B, T] (with gradient) on p_theta's samples with REINFORCE advantages [B]; neg_token_logps
    [B', T'] (with gradient) on the proposal samples with their weights [B'] (losses.weights.negative_weights).
    The negative term is neg_training_loss, or with `neg_advantages` (`neg_reinforce`) minus neg_reinforce_loss:
    with beta < 0 the worst samples have the highest advantage and must be pushed DOWN, so that REINFORCE loss
    enters with the opposite sign (the paper's description leaves the sign open). Without proposal samples or with
    alpha 0 the loss is plain REINFORCE.
    """
    rl = reinforce_loss(base_token_logps, base_mask, advantages)
    if neg_token_logps is None or weights is None or alpha == 0:
        return PThetaLoss(rl, rl, None)
    if neg_advantages is None:
        negative = neg_training_loss(neg_token_logps, neg_mask, weights)
    else:
        negative = -neg_reinforce_loss(neg_token_logps, neg_mask, weights, neg_advantages)
    return PThetaLoss(rl + alpha * negative, rl, negative)
