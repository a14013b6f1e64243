"""Twist / proposal learning with the base model frozen (METHODS §4.2, §13 E2): q_xi learns sigma ∝ p_0 e^{beta r}
with CTL, DPG or SIXO from its own samples."""

from __future__ import annotations

from typing import Any

from repulse.generation.generate import SamplingParams
from repulse.rl.experience import RewardSettings, f_q_terms, make_proposal_experience
from repulse.rl.importance import (
    effective_sample_size,
    log_importance_weights,
    normalized_group_weights,
    sequence_logprob,
)
from repulse.rl.rollout import sample_rollout
from repulse.trainers.updates import ProposalUpdater


class TwistTrainer:
    def __init__(
        self,
        updater: ProposalUpdater,
        base,
        reward_source,
        tokenizer,
        sampling: SamplingParams,
        rewards: RewardSettings,
        *,
        group_size: int,
        micro_train_batch_size: int,
        max_epochs: int,
        strategy: Any,
        rollout_batch_size: int = 64,
    ) -> None:
        self.updater, self.model, self.base = updater, updater.model, base
        self.reward_source, self.tokenizer, self.sampling, self.rewards = reward_source, tokenizer, sampling, rewards
        self.group_size, self.micro, self.max_epochs = group_size, micro_train_batch_size, max_epochs
        self.strategy, self.rollout_batch_size = strategy, rollout_batch_size
        self.samples_used = 0

    def state_dict(self) -> dict[str, Any]:
        return {"samples_used": self.samples_used, "updater": self.updater.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_used = state["samples_used"]
        self.updater.load_state_dict(state["updater"])

    def step(self, prompt_ids: list[list[int]]) -> dict[str, float]:
        roll = sample_rollout(
            self.model, self.tokenizer, prompt_ids, self.group_size, self.sampling, batch_size=self.rollout_batch_size
        ).to(self.strategy.device)
        self.samples_used += roll.sequences.shape[0]
        exp = make_proposal_experience(roll, self.model, self.base, self.reward_source, self.rewards)
        base_logps = self.updater.base_logps(exp, self.base)
        mask = roll.action_mask
        log_w = log_importance_weights(
            sequence_logprob(base_logps, mask), exp.log_phi, sequence_logprob(exp.behaviour_logps, mask)
        )
        weights = normalized_group_weights(log_w, self.group_size)
        negatives = None
        if self.updater.loss_type == "sixo":  # exact negatives: fresh samples from the base model
            negatives = sample_rollout(
                self.base,
                self.tokenizer,
                prompt_ids,
                self.group_size,
                self.sampling,
                batch_size=self.rollout_batch_size,
            ).to(self.strategy.device)
        losses = []
        n = exp.raw_rewards.shape[0]
        for _ in range(self.max_epochs):
            for start in range(0, n, self.micro):
                stop = min(start + self.micro, n)
                neg_rows = negatives.rows(start, stop) if negatives is not None else None
                losses.append(self.updater.update(exp.rows(start, stop), self.base, neg_rows))
        return {
            "proposal_loss": sum(m["proposal_loss"] for m in losses) / len(losses),
            "reward_mean": exp.raw_rewards.mean().item(),
            "f_q": f_q_terms(exp, base_logps).mean().item(),
            "ess_fraction": effective_sample_size(weights, self.group_size).mean().item() / self.group_size,
            "samples_used": float(self.samples_used),
        }
