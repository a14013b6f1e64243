"""Potentials log phi(s) from reward-model scores (`--rm_type`, docs/algorithms/harmlessness.md) and reward transforms
(`--reward_transform`). All functions map rewards [B] -> [B].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RM_TYPES = ("rlhf", "indicator_below_threshold", "exp_beta_toxicity_class_logprob")
LEGACY_RM_TYPES = (
    "exp_beta_rew_p_continuation",
    "exp_beta_rew_p_continuation_divided_by_p",
    "p_continuation",
    "exp_beta_toxicity",
    "exp_beta_sentiment_class_logprob",
    "sentiment_threshold",
    "p_last_tokens",
    "toy_test",
)
REWARD_TRANSFORMS = ("minus_alpha_exp_beta_r", "minus_alpha_ind", None)
# The indicator potential is 1[r < tau] + eps, so log phi stays finite (log eps) for samples that are not bad.
INDICATOR_EPS = 1e-16
# A sample counts as "bad" when phi > 2 eps (the reference code's test `exp(log phi) > 2 * eps`).
INDICATOR_BAD_LOG_PHI = math.log(2 * INDICATOR_EPS)


def log_potential(
    rewards: torch.Tensor, rm_type: str, beta: float, threshold: float = -5.0, reward_cap: float = 10000.0
) -> torch.Tensor:
    """log phi(s) for the target sigma(s) ∝ p(s) phi(s) (the reference code's potentials
    with multiply_by_beta=True).

    - "rlhf": beta * min(r, cap). (PPO / REINFORCE rewards are the beta = 1 case: min(r, cap).)
    - "indicator_below_threshold": log(1[r < threshold] + 1e-16); requires beta = 1 (`--target_dist_beta 1`).
    - "exp_beta_toxicity_class_logprob": beta * log P(toxic) = beta * (-softplus(r)) for a non-toxic logit r.
    """
    if rm_type == "rlhf":
        return beta * rewards.clamp(max=reward_cap)
    if rm_type == "indicator_below_threshold":
        if beta != 1:
            raise ValueError(f"--rm_type indicator_below_threshold needs --target_dist_beta 1, got {beta}")
        return torch.log((rewards < threshold).to(rewards.dtype) + INDICATOR_EPS)
    if rm_type == "exp_beta_toxicity_class_logprob":
        return beta * -F.softplus(rewards)
    if rm_type in LEGACY_RM_TYPES:
        raise NotImplementedError(f"--rm_type {rm_type} is legacy in the reference code and not implemented")
    raise ValueError(f"--rm_type: unknown value {rm_type!r}; choose from {RM_TYPES}")


@dataclass(frozen=True)
class Potential:
    """How a reward becomes log phi: `--rm_type`, `--threshold`, `--reward_cap`. beta is an argument, not a
    setting, so that the annealed beta of harmlessness training is the only one."""

    rm_type: str = "rlhf"
    threshold: float = -5.0
    reward_cap: float = 10000.0

    def log_phi(self, rewards: torch.Tensor, beta: float) -> torch.Tensor:
        return log_potential(rewards, self.rm_type, beta, self.threshold, self.reward_cap)

    def bad(self, log_phi: torch.Tensor) -> torch.Tensor | None:
        """For the indicator potential, which samples are bad ([B] bool: only they get negative weight); else None."""
        return is_bad(log_phi) if self.rm_type == "indicator_below_threshold" else None


def is_bad(log_phi: torch.Tensor) -> torch.Tensor:
    """[B] bool: phi(s) is not ~0, i.e. the sample satisfies the indicator potential."""
    return log_phi > INDICATOR_BAD_LOG_PHI


def transform_reward(
    rewards: torch.Tensor, kind: str | None, alpha: float = 0.0, beta: float = 1.0, threshold: float = -5.0
) -> torch.Tensor:
    """The "reward transformation" baseline; applied to base samples only.

    - None: r unchanged.
    - "minus_alpha_exp_beta_r": r - alpha exp(beta r) (alpha = `--rew_trans_alpha`, beta = `--rew_trans_beta`;
      with beta < 0 the penalty grows without bound for very negative r).
    - "minus_alpha_ind": r - alpha 1[r < threshold].
    """
    if kind is None:
        return rewards
    if kind == "minus_alpha_exp_beta_r":
        return rewards - alpha * torch.exp(beta * rewards)
    if kind == "minus_alpha_ind":
        return rewards - alpha * (rewards < threshold).to(rewards.dtype)
    raise ValueError(f"--reward_transform: unknown value {kind!r}; choose from {REWARD_TRANSFORMS}")
