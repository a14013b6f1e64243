"""Twist (proposal) learning with the base model frozen: q learns sigma ∝ p_0 e^{beta r}
with CTL, DPG or SIXO from its own samples. make_experience draws q's samples and scores them, with p_0's
log-probs computed once for the buffer (they serve the loss, f_q and the weights' ESS); update accumulates q's
loss to --train_batch_size; report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from repulse.generation.generate import SamplingParams
from repulse.losses.weights import log_weights, sigma_weights
from repulse.rl.experience import Experience, proposal_experience, score
from repulse.rl.potentials import Potential
from repulse.rl.rollout import Rollout, sample_rollout
from repulse.trainers.guard import Guard
from repulse.trainers.rl.proposal import ProposalLoss, low_reward_coverage, proposal_loss
from repulse.trainers.rl.steps import (
    BatchPlan,
    Metrics,
    Progress,
    Sampler,
    Streams,
    TrainedModel,
    accumulate,
    draw,
    micro_batch,
    optimizer_step,
)


@dataclass
class TwistExperience:
    """q's samples with log phi and p_0's log-probs (target_logps); fresh p_0 samples for the same prompts
    (sixo's negatives, row i for the same prompt as q's row i)."""

    samples: Experience
    negatives: Rollout | None
    step: int

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, rows: torch.Tensor) -> TwistExperience:
        negatives = self.negatives.select(rows) if self.negatives is not None else None
        return TwistExperience(self.samples.select(rows), negatives, self.step)


class TwistTrainer:
    def __init__(
        self,
        proposal: TrainedModel,
        base,
        reward_source,
        tokenizer,
        sampling: SamplingParams,
        potential: Potential,
        beta: float,
        loss: ProposalLoss,
        plan: BatchPlan,
        guard: Guard,
        *,
        prompts_per_generation: int = 64,
    ) -> None:
        self.proposal, self.base, self.reward_source, self.tokenizer = proposal, base, reward_source, tokenizer
        self.sampling, self.potential, self.beta, self.loss = sampling, potential, beta, loss
        self.plan, self.guard, self.prompts_per_generation = plan, guard, prompts_per_generation
        self.samples_used = 0
        self.progress, self.streams = Progress(), Streams()
        self.sampler: Sampler = sample_rollout  # train_ppo_ray may swap in its vLLM engines

    def rounds(self) -> tuple[str, ...]:
        return ("proposal",)

    def target_beta(self, step: int) -> float:
        """The beta of sigma ∝ p_0 e^{beta r} (fixed in twist learning)."""
        return self.beta

    def samples_per_prompt(self) -> int:
        return self.loss.group_size * (2 if self.loss.needs_negatives else 1)

    def state_dict(self) -> dict[str, Any]:
        return {"samples_used": self.samples_used, "proposal": self.proposal.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_used = state["samples_used"]
        self.proposal.load_state_dict(state["proposal"])

    def sample(self, model, prompt_ids: list[list[int]], step: int, tag: str) -> Rollout:
        roll = draw(
            self.guard,
            self.streams,
            self.progress,
            model,
            self.tokenizer,
            prompt_ids,
            self.loss.group_size,
            self.sampling,
            batch_size=self.prompts_per_generation,
            step=step,
            tag=tag,
            sampler=self.sampler,
        )
        self.samples_used += roll.sequences.shape[0]
        return roll

    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str = "proposal") -> TwistExperience:
        self.progress.phase("sampling q")
        roll = self.sample(self.proposal.model, prompt_ids, step, "q")
        raw = score(self.reward_source, roll)
        self.guard.check(raw, "reward")
        samples = proposal_experience(roll, raw, self.potential.log_phi(raw, self.beta), target=self.base)
        negatives = None
        if self.loss.needs_negatives:  # exact negatives: fresh samples from the base model
            self.progress.phase("sampling p_0")
            negatives = self.sample(self.base, prompt_ids, step, "p_0")
        return TwistExperience(samples, negatives, step)

    def update(self, experience: TwistExperience) -> Metrics:
        metrics = Metrics()
        if not self.proposal.trains:
            return metrics
        self.proposal.start_update()
        for micro in self.plan.micro_steps(len(experience), self.progress):
            batch = experience.select(micro.rows)
            with micro_batch(self.guard, [self.proposal], micro.boundary):
                loss, _ = proposal_loss(
                    self.loss,
                    self.proposal.model,
                    batch.samples,
                    self.base,
                    base_logps=batch.samples.target_logps,
                    negatives=batch.negatives,
                )
                accumulate(self.guard, self.proposal, loss, micro.weight, micro.boundary)
            metrics.add({"proposal_loss": loss.item()})
            if micro.boundary:
                metrics.add({"proposal_grad_norm": optimizer_step(self.guard, self.proposal)})
        return metrics

    def report(self, experience: TwistExperience, updates: list[Metrics]) -> dict[str, float]:
        e, n = experience.samples, self.loss.group_size
        weights = sigma_weights(e.target_logps, e.behaviour_logps, e.log_phi, e.mask, n)
        return {
            **updates[-1].mean(),
            "reward_mean": e.raw_rewards.mean().item(),
            "f_q": log_weights(e.target_logps, e.behaviour_logps, e.log_phi, e.mask).mean().item(),
            **low_reward_coverage(e.raw_rewards, weights, self.potential.threshold, n),
            "samples_used": float(self.samples_used),
        }
