"""RePULSe harmlessness training (METHODS §2): p_theta trained with REINFORCE (+ negative training on
samples from a learned proposal q_xi of sigma_theta ∝ p_theta e^{beta r}); q_xi trained with a twist loss.

One `step(prompt_ids)`:
 1. (num_q_updates - 1) extra q-only updates on fresh q samples;
 2. N samples per prompt from p_theta (base experience) and, for RePULSe, N from q (proposal experience);
 3. max_epochs passes over the stored samples in micro-batches of whole prompt groups: q update then p
    update (or p first with update_base_first), both from log-probs recorded before either update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repulse.generation.generate import SamplingParams
from repulse.infra.checkpoint import load_optional_state, optional_state
from repulse.rl.experience import (
    Experience,
    RewardSettings,
    f_q_terms,
    make_base_experience,
    make_proposal_experience,
    with_potential,
)
from repulse.rl.rollout import sample_rollout
from repulse.trainers.updates import BaseUpdateSettings, ProposalUpdater, update_base_actor


@dataclass
class HarmlessnessSettings:
    group_size: int
    max_epochs: int = 1
    micro_train_batch_size: int = 8
    num_q_updates: int = 1
    separate_proposal: bool = True
    update_base_first: bool = False
    rollout_batch_size: int = 64


class HarmlessnessTrainer:
    def __init__(
        self,
        *,
        base,
        proposal: ProposalUpdater | None,
        initial,
        reward_source,
        tokenizer,
        base_optimizer,
        base_scheduler,
        sampling: SamplingParams,
        rewards: RewardSettings,
        update: BaseUpdateSettings,
        settings: HarmlessnessSettings,
        strategy: Any,
    ) -> None:
        self.model = base
        self.proposal = proposal
        self.initial = initial
        self.reward_source = reward_source
        self.tokenizer = tokenizer
        self.base_optimizer, self.base_scheduler = base_optimizer, base_scheduler
        self.sampling, self.rewards, self.update, self.settings = sampling, rewards, update, settings
        self.strategy = strategy
        self.samples_used = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_used": self.samples_used,
            "base_optimizer": optional_state(self.base_optimizer),
            "base_scheduler": optional_state(self.base_scheduler),
            "proposal": optional_state(self.proposal),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_used = state["samples_used"]
        load_optional_state(self.base_optimizer, state["base_optimizer"])
        load_optional_state(self.base_scheduler, state["base_scheduler"])
        load_optional_state(self.proposal, state["proposal"])

    def _sample(self, model, prompt_ids: list[list[int]]):
        roll = sample_rollout(
            model,
            self.tokenizer,
            prompt_ids,
            self.settings.group_size,
            self.sampling,
            batch_size=self.settings.rollout_batch_size,
        )
        self.samples_used += roll.sequences.shape[0]
        return roll.to(self.strategy.device)

    def proposal_experience(self, prompt_ids: list[list[int]]) -> Experience:
        roll = self._sample(self.proposal.model, prompt_ids)
        return make_proposal_experience(roll, self.proposal.model, self.model, self.reward_source, self.rewards)

    def micro_batches(self, n_rows: int):
        size = self.settings.micro_train_batch_size
        for _ in range(self.settings.max_epochs):
            for start in range(0, n_rows, size):
                yield start, min(start + size, n_rows)

    def step(self, prompt_ids: list[list[int]]) -> dict[str, float]:
        metrics: dict[str, list[float]] = {}
        separate = self.proposal is not None and self.settings.separate_proposal
        for _ in range(self.settings.num_q_updates - 1 if separate else 0):
            extra = self.proposal_experience(prompt_ids)
            for a, b in self.micro_batches(extra.raw_rewards.shape[0]):
                add(metrics, self.proposal.update(extra.rows(a, b), self.model))
        # p's own sampling log-probs matter only when its samples double as proposal samples (the KL term, when
        # c > 0, computes them anyway): p's loss on them is REINFORCE, which reads its update pass only.
        base = make_base_experience(
            self._sample(self.model, prompt_ids),
            self.model,
            self.initial,
            self.reward_source,
            self.rewards,
            need_behaviour_logps=not separate,
        )
        neg = self.proposal_experience(prompt_ids) if separate else with_potential(base, self.rewards)
        for a, b in self.micro_batches(base.raw_rewards.shape[0]):
            if not self.settings.update_base_first and separate:
                add(metrics, self.proposal.update(neg.rows(a, b), self.model))
            add(
                metrics,
                update_base_actor(
                    self.model,
                    self.base_optimizer,
                    self.base_scheduler,
                    base.rows(a, b),
                    neg.rows(a, b),
                    self.update,
                    self.strategy,
                    self.initial,
                ),
            )
            if self.settings.update_base_first and separate:
                add(metrics, self.proposal.update(neg.rows(a, b), self.model))
        return {**{k: sum(v) / len(v) for k, v in metrics.items()}, **self.summary(base, neg, separate)}

    def summary(self, base: Experience, neg: Experience, separate: bool) -> dict[str, float]:
        out = {
            "reward_mean": base.raw_rewards.mean().item(),
            "return_mean": base.returns.mean().item(),
            "kl": base.kl.sum(-1).mean().item(),
            "samples_used": float(self.samples_used),
        }
        if separate:
            out["proposal_reward_mean"] = neg.raw_rewards.mean().item()
            out["f_q"] = f_q_terms(neg, self.proposal.base_logps(neg, self.model)).mean().item()
        return out


def add(metrics: dict[str, list[float]], new: dict[str, float]) -> None:
    for key, value in new.items():
        metrics.setdefault(key, []).append(value)
