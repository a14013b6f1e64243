"""Experience: a rollout with what the updates read, row-aligned ([B] or [B, T] per field).

The sampler records the log-probs it drew each token with, so making experience runs no model on its own
samples again: the only passes here are the frozen reference's (for a KL penalty, or the twist target p_0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from repulse.rl.kl import kl_k1
from repulse.rl.potentials import transform_reward
from repulse.rl.rollout import Rollout, response_token_logps


@dataclass(frozen=True)
class RewardShaping:
    """The reward of p's own samples before the KL penalty: the optional transform of the reward-transform
    baseline (`--reward_transform`, with its alpha and beta), capped at `--reward_cap`."""

    transform: str | None = None
    alpha: float = 0.0
    beta: float = 1.0
    threshold: float = -5.0
    reward_cap: float = 10000.0

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return transform_reward(raw, self.transform, self.alpha, self.beta, self.threshold).clamp(max=self.reward_cap)


@dataclass
class Experience:
    """rollout; raw_rewards [B] (the reward source's scores); returns [B] (shaped reward minus the KL penalty);
    kl [B, T] (k1 per token, log p_sampler - log p_ref; zeros without a KL penalty); behaviour_logps [B, T] (the
    sampling model's log-probs at sampling time); log_phi [B] (log potential, when the samples serve as proposal
    samples); target_logps [B, T] (the frozen base p_0's log-probs, twist learning)."""

    rollout: Rollout
    raw_rewards: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    behaviour_logps: torch.Tensor
    log_phi: torch.Tensor | None = None
    target_logps: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.action_mask

    def __len__(self) -> int:
        return self.raw_rewards.shape[0]

    def select(self, index: torch.Tensor) -> Experience:
        """The rows in `index` order (a micro-batch)."""

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[index]

        return Experience(
            self.rollout.select(index),
            self.raw_rewards[index],
            self.returns[index],
            self.kl[index],
            self.behaviour_logps[index],
            pick(self.log_phi),
            pick(self.target_logps),
        )


def score(reward_source: Callable, rollout: Rollout) -> torch.Tensor:
    """One reward per row from (prompt texts, response texts): [B] float on the rollout's device."""
    return reward_source(rollout.prompts, rollout.responses).to(rollout.sequences.device).float()


def policy_experience(
    rollout: Rollout, raw: torch.Tensor, reference, shaping: RewardShaping, kl_coef: float
) -> Experience:
    """Samples from the policy p_theta: R = shaped reward - c Σ_t k1_t, with the k1 KL between the
    sampling log-probs and the frozen reference's (one reference pass, only when c > 0)."""
    behaviour = rollout.logps
    kl = torch.zeros_like(behaviour)
    if kl_coef > 0:
        kl = kl_k1(behaviour, response_token_logps(reference, rollout), rollout.action_mask)
    return Experience(rollout, raw, shaping(raw) - kl_coef * kl.sum(-1), kl, behaviour)


def proposal_experience(rollout: Rollout, raw: torch.Tensor, log_phi: torch.Tensor, target=None) -> Experience:
    """Samples from the proposal q: log q at sampling and log phi; with a frozen `target` (p_0 in
    twist learning) also its log-probs, once for the whole buffer."""
    target_logps = response_token_logps(target, rollout) if target is not None else None
    zeros = torch.zeros_like(rollout.logps)
    return Experience(rollout, raw, raw.clone(), zeros, rollout.logps, log_phi, target_logps)


def with_potential(experience: Experience, log_phi: torch.Tensor) -> Experience:
    """p_theta's own samples used as proposal samples (--use_base_as_proposal): the same rows with log phi."""
    return replace(experience, log_phi=log_phi)
