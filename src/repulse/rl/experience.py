"""Experience: a rollout with its rewards, KL to the reference, stored sampling log-probs and potentials."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from repulse.rl.importance import sequence_logprob
from repulse.rl.kl import kl_k1
from repulse.rl.potentials import log_potential, transform_reward
from repulse.rl.rollout import Rollout, response_token_logps


@dataclass
class RewardSettings:
    rm_type: str = "rlhf"
    beta: float = 1.0
    threshold: float = -5.0
    reward_cap: float = 10000.0
    transform: str | None = None
    transform_alpha: float = 0.0
    transform_beta: float = 1.0
    kl_coef: float = 0.0


@dataclass
class Experience:
    """Per row: raw_rewards [B] (the reward model's score), returns [B] (transformed, capped reward minus the
    KL penalty), kl [B, T] (log p_old - log p_ref per token), behaviour_logps [B, T] (the sampling model's
    log-probs at sampling time), log_phi [B] (log potential, proposal experience only)."""

    rollout: Rollout
    raw_rewards: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    behaviour_logps: torch.Tensor
    log_phi: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Experience:
        return Experience(
            self.rollout.select(index),
            self.raw_rewards[index],
            self.returns[index],
            self.kl[index],
            self.behaviour_logps[index],
            None if self.log_phi is None else self.log_phi[index],
        )

    def rows(self, start: int, stop: int) -> Experience:
        return Experience(
            self.rollout.rows(start, stop),
            self.raw_rewards[start:stop],
            self.returns[start:stop],
            self.kl[start:stop],
            self.behaviour_logps[start:stop],
            None if self.log_phi is None else self.log_phi[start:stop],
        )


def score(reward_source: Callable, rollout: Rollout) -> torch.Tensor:
    return reward_source(rollout.prompts, rollout.responses).to(rollout.sequences.device).float()


def make_base_experience(
    rollout: Rollout, sampler, reference, reward_source, settings: RewardSettings, *, need_behaviour_logps: bool = True
) -> Experience:
    """Samples from p_theta (METHODS §2.3): transformed, capped reward, minus c times the summed k1 KL.

    With `need_behaviour_logps` off and no KL penalty the scoring pass is skipped (REINFORCE's loss needs only the
    update's own forward): behaviour_logps and kl are zeros, as the KL is when c = 0.
    """
    raw = score(reward_source, rollout)
    if need_behaviour_logps or settings.kl_coef > 0:
        behaviour = response_token_logps(sampler, rollout)
    else:
        behaviour = torch.zeros(rollout.action_mask.shape, device=rollout.sequences.device)
    ref = response_token_logps(reference, rollout) if settings.kl_coef > 0 else behaviour
    kl = kl_k1(behaviour, ref, rollout.action_mask)
    reward = transform_reward(
        raw, settings.transform, settings.transform_alpha, settings.transform_beta, settings.threshold
    )
    reward = reward.clamp(max=settings.reward_cap)
    returns = reward - settings.kl_coef * kl.sum(-1)
    return Experience(rollout, raw, returns, kl, behaviour)


def make_proposal_experience(rollout: Rollout, proposal, base, reward_source, settings: RewardSettings) -> Experience:
    """Samples from q (METHODS §2.4): stored log q, and log phi = beta * min(r, cap) (or the indicator)."""
    raw = score(reward_source, rollout)
    behaviour = response_token_logps(proposal, rollout)
    log_phi = log_potential(raw, settings.rm_type, settings.beta, settings.threshold, settings.reward_cap)
    zeros = torch.zeros_like(behaviour)
    return Experience(rollout, raw, raw.clone(), zeros, behaviour, log_phi)


def with_potential(experience: Experience, settings: RewardSettings) -> Experience:
    """The base samples used as proposal samples (--use_base_as_proposal): log phi recomputed on them."""
    log_phi = log_potential(
        experience.raw_rewards, settings.rm_type, settings.beta, settings.threshold, settings.reward_cap
    )
    return Experience(
        experience.rollout,
        experience.raw_rewards,
        experience.returns,
        experience.kl,
        experience.behaviour_logps,
        log_phi,
    )


def f_q_terms(experience: Experience, target_logps: torch.Tensor) -> torch.Tensor:
    """log p(s) + log phi(s) - log q(s) per row: its mean lower-bounds log Z (an ELBO)."""
    mask = experience.rollout.action_mask
    return (
        sequence_logprob(target_logps, mask) + experience.log_phi - sequence_logprob(experience.behaviour_logps, mask)
    )
