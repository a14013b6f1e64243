"""RePULSe harmlessness training: p_theta trained with REINFORCE plus alpha x negative training on
samples of a learned proposal q of sigma_theta ∝ p_theta e^{beta r}; q trained with a twist loss toward it.

One step is (num_q_updates - 1) proposal-only rounds (fresh q samples, a q update) and one main round:
make_experience draws N samples per prompt from p_theta (and N from q, for RePULSe) and scores them; update
passes over the buffer in micro-batches of whole prompt groups, accumulated to --train_batch_size, with both
models' losses on each and both stepping at each optimizer step's last micro-batch. The order of the reference
code (q updated, then p_theta; p_theta first with --sampling_target_updated_base) matters only for what q's loss
reads: p_theta before its step, or after it. Either way both losses use the log-probs recorded at sampling, and
q's loss reads the live p_theta, which changes only at a step (so, as in the fork under DeepSpeed, with
--sampling_target_updated_base and accumulation only the step's last micro-batch sees the stepped p_theta).

Each forward once: p_theta's gradient pass on q's samples (the negative term) also gives q's CTL target and
f_q (log p_theta as it stood before the micro-batch's update), since p_theta only changes at an optimizer step.
A separate pass (eval mode, no gradient) is made where that does not hold: with --sampling_target_updated_base
right after p_theta stepped (q must see the new p_theta), when p_theta has active dropout in its update passes
(the target is scored without dropout), and when there is no negative term (alpha 0). A modulated
q ∝ p_theta e^m runs p_theta inside its own forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from repulse.generation.generate import SamplingParams
from repulse.losses.policy import p_theta_loss
from repulse.losses.weights import log_weights, negative_weights
from repulse.rl.advantages import neg_reinforce_returns, reinforce_advantages
from repulse.rl.experience import (
    Experience,
    RewardShaping,
    policy_experience,
    proposal_experience,
    score,
    with_potential,
)
from repulse.rl.potentials import Potential
from repulse.rl.rollout import Rollout, response_token_logps, sample_rollout
from repulse.trainers.guard import Guard
from repulse.trainers.rl.proposal import ProposalLoss, low_reward_coverage, proposal_loss
from repulse.trainers.rl.steps import (
    BatchPlan,
    Metrics,
    MicroStep,
    Progress,
    Sampler,
    Streams,
    TrainedModel,
    accumulate,
    draw,
    micro_batch,
    optimizer_step,
)


def geometric_value(start: float | None, end: float, step: int, total_steps: int) -> float:
    """`end` when start is None; else start * (end / start)^(step / (total_steps - 1)), same signs required."""
    if start is None or total_steps <= 1:
        return end
    if start == 0 or end == 0 or (start > 0) != (end > 0):
        raise ValueError(f"geometric annealing needs non-zero values of the same sign, got {start} -> {end}")
    frac = min(step, total_steps - 1) / (total_steps - 1)
    return math.copysign(math.exp(math.log(abs(start)) + frac * (math.log(abs(end)) - math.log(abs(start)))), end)


@dataclass(frozen=True)
class Annealing:
    """beta (--target_dist_beta) and alpha at each step: geometric from the start values (--start_target_dist_beta
    with --anneal_target_dist_beta, --start_alpha) to the final ones over the run's steps."""

    beta: float
    alpha: float
    total_steps: int
    start_beta: float | None = None
    start_alpha: float | None = None

    def at(self, step: int) -> tuple[float, float]:
        return (
            geometric_value(self.start_beta, self.beta, step, self.total_steps),
            geometric_value(self.start_alpha, self.alpha, step, self.total_steps),
        )


@dataclass(frozen=True)
class HarmlessnessSettings:
    group_size: int
    loss_type: str = "neg_training"  # reinforce | neg_training | neg_reinforce
    baseline_type: str | None = "expectation"
    hardcoded_baseline: float = 0.0
    neg_baseline_type: str | None = None
    neg_hardcoded_baseline: float = 0.0
    uniform_reweight: bool = False
    reweighting_beta: float | None = None
    kl_coef: float = 0.0
    num_q_updates: int = 1
    separate_proposal: bool = True
    update_base_first: bool = False
    prompts_per_generation: int = 64


@dataclass
class HarmlessnessExperience:
    """base: p_theta's samples (None in a proposal-only round); neg: the proposal samples (q's, or p_theta's own
    with --use_base_as_proposal, then neg_is_base; None for plain REINFORCE); the step and its beta and alpha."""

    base: Experience | None
    neg: Experience | None
    step: int
    beta: float
    alpha: float
    neg_is_base: bool = False

    def __len__(self) -> int:
        return len(self.base if self.base is not None else self.neg)

    def select(self, rows: torch.Tensor) -> HarmlessnessExperience:
        base = self.base.select(rows) if self.base is not None else None
        neg = self.neg.select(rows) if self.neg is not None else None
        return HarmlessnessExperience(base, neg, self.step, self.beta, self.alpha, self.neg_is_base)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether the model drops activations in train mode (dropout modules, or attention dropout rates)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return True
    return False


class HarmlessnessTrainer:
    def __init__(
        self,
        policy: TrainedModel,
        proposal: TrainedModel | None,
        reference,
        reward_source,
        tokenizer,
        *,
        sampling: SamplingParams,
        shaping: RewardShaping,
        potential: Potential,
        annealing: Annealing,
        proposal_loss_spec: ProposalLoss | None,
        settings: HarmlessnessSettings,
        plan: BatchPlan,
        guard: Guard,
    ) -> None:
        self.policy, self.proposal, self.reference = policy, proposal, reference
        self.reward_source, self.tokenizer, self.sampling, self.shaping = reward_source, tokenizer, sampling, shaping
        self.potential, self.annealing, self.q_loss, self.settings = potential, annealing, proposal_loss_spec, settings
        self.plan, self.guard = plan, guard
        self.separate = proposal is not None and settings.separate_proposal
        # p_theta's gradient pass on q's samples doubles as q's target only if it scores as an eval pass would.
        self.share_p_pass = policy.eval_mode or not has_dropout(policy.model)
        self.samples_used = 0
        self.progress, self.streams = Progress(), Streams()
        self.sampler: Sampler = sample_rollout  # train_ppo_ray may swap in its vLLM engines

    def rounds(self) -> tuple[str, ...]:
        extra = self.settings.num_q_updates - 1 if self.separate else 0
        return ("proposal",) * extra + ("both",)

    def target_beta(self, step: int) -> float:
        """The beta of sigma ∝ p_theta e^{beta r} at (0-based) step `step`."""
        return self.annealing.at(step)[0]

    def samples_per_prompt(self) -> int:
        n = self.settings.group_size
        return n * (1 + self.settings.num_q_updates) if self.separate else n

    def state_dict(self) -> dict[str, Any]:
        out = {"samples_used": self.samples_used, "policy": self.policy.state_dict()}
        return out | {"proposal": self.proposal.state_dict() if self.proposal is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_used = state["samples_used"]
        self.policy.load_state_dict(state["policy"])
        if self.proposal is not None:
            self.proposal.load_state_dict(state["proposal"])

    # ------------------------------------------------------------------------------------------- make experience
    def sample(self, model, prompt_ids: list[list[int]], step: int, tag: str) -> Rollout:
        roll = draw(
            self.guard,
            self.streams,
            self.progress,
            model,
            self.tokenizer,
            prompt_ids,
            self.settings.group_size,
            self.sampling,
            batch_size=self.settings.prompts_per_generation,
            step=step,
            tag=tag,
            sampler=self.sampler,
        )
        self.samples_used += roll.sequences.shape[0]
        return roll

    def proposal_samples(self, prompt_ids: list[list[int]], step: int, beta: float) -> Experience:
        self.progress.phase("sampling q")
        roll = self.sample(self.proposal.model, prompt_ids, step, "q")
        raw = score(self.reward_source, roll)
        self.guard.check(raw, "reward")
        return proposal_experience(roll, raw, self.potential.log_phi(raw, beta))

    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str = "both") -> HarmlessnessExperience:
        """kind 'proposal': q's samples only (a proposal-only round); 'both': p_theta's, then q's (RePULSe)."""
        beta, alpha = self.annealing.at(step)
        if kind == "proposal":
            return HarmlessnessExperience(None, self.proposal_samples(prompt_ids, step, beta), step, beta, alpha)
        self.progress.phase("sampling p_theta")
        roll = self.sample(self.policy.model, prompt_ids, step, "p_theta")
        raw = score(self.reward_source, roll)
        self.guard.check(raw, "reward")
        base = policy_experience(roll, raw, self.reference, self.shaping, self.settings.kl_coef)
        if self.separate:
            return HarmlessnessExperience(base, self.proposal_samples(prompt_ids, step, beta), step, beta, alpha)
        if self.settings.loss_type == "reinforce":
            return HarmlessnessExperience(base, None, step, beta, alpha)
        neg = with_potential(base, self.potential.log_phi(raw, beta))
        return HarmlessnessExperience(base, neg, step, beta, alpha, neg_is_base=True)

    # ---------------------------------------------------------------------------------------------------- update
    def update(self, experience: HarmlessnessExperience) -> Metrics:
        """Micro-batches of whole prompt groups accumulated to --train_batch_size, --max_epochs times: in each, q's
        and p_theta's losses; both step at the optimizer-step boundary (p_theta before q's loss with
        --sampling_target_updated_base, so that q's target is the updated p_theta)."""
        metrics = Metrics()
        if experience.base is None:
            return self.update_proposal(experience, metrics)
        for trained in (self.policy, self.proposal):
            if trained is not None:
                trained.start_update()
        for micro in self.plan.micro_steps(len(experience), self.progress):
            batch = experience.select(micro.rows)
            with micro_batch(self.guard, [self.policy, self.proposal], micro.boundary):
                p_logps = self.p_backward(batch, micro, metrics)
                if self.settings.update_base_first and micro.boundary:
                    self.step(self.policy, "base_grad_norm", metrics)
                    target = None  # p_theta just changed: q's target needs a fresh pass
                else:
                    target = p_logps if self.share_p_pass else None
                q_logps = self.q_backward(batch, micro, target, metrics)
            if micro.epoch == 0 and self.separate:  # f_q with p_theta as it stood before this micro-batch
                self.record_f_q(batch.neg, p_logps if p_logps is not None else q_logps, metrics)
            if micro.boundary:
                self.step(self.proposal, "proposal_grad_norm", metrics)
                if not self.settings.update_base_first:
                    self.step(self.policy, "base_grad_norm", metrics)
        return metrics

    def update_proposal(self, experience: HarmlessnessExperience, metrics: Metrics) -> Metrics:
        """A proposal-only round: q's loss on its fresh samples, p_theta scored without gradient."""
        if not self.proposal.trains:
            return metrics
        self.proposal.start_update()
        for micro in self.plan.micro_steps(len(experience), self.progress):
            with micro_batch(self.guard, [self.proposal], micro.boundary):
                self.q_backward(experience.select(micro.rows), micro, None, metrics)
            if micro.boundary:
                self.step(self.proposal, "proposal_grad_norm", metrics)
        return metrics

    def p_backward(self, batch: HarmlessnessExperience, micro: MicroStep, metrics: Metrics) -> torch.Tensor | None:
        """p_theta's loss on one micro-batch, backward; its log-probs on the proposal samples (detached), if made."""
        s, base, neg = self.settings, batch.base, batch.neg
        base_logps = response_token_logps(self.policy.model, base.rollout, grad=True)
        adv = reinforce_advantages(base.returns, s.group_size, s.baseline_type, s.hardcoded_baseline)
        neg_logps = None
        if neg is None or s.loss_type == "reinforce" or batch.alpha == 0:
            out = p_theta_loss(base_logps, base.mask, adv)
        else:
            neg_logps = (
                base_logps if batch.neg_is_base else response_token_logps(self.policy.model, neg.rollout, grad=True)
            )
            weights, neg_adv = self.negative_term(neg, neg_logps)
            out = p_theta_loss(
                base_logps, base.mask, adv, neg_logps, neg.mask, weights, alpha=batch.alpha, neg_advantages=neg_adv
            )
            coverage = low_reward_coverage(neg.raw_rewards, weights, self.potential.threshold, s.group_size)
            metrics.add({"neg_loss": out.negative.item(), **coverage})
        accumulate(self.guard, self.policy, out.loss, micro.weight, micro.boundary)
        metrics.add({"rl_loss": out.rl.item(), "base_loss": out.loss.item()})
        return None if neg_logps is None else neg_logps.detach()

    def negative_term(self, neg: Experience, neg_logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weights of the proposal samples, and for neg_reinforce their advantages."""
        s = self.settings
        log_phi = neg.log_phi
        if s.reweighting_beta is not None:  # --separate_reweighting_beta: beta' in the weights only
            log_phi = self.potential.log_phi(neg.raw_rewards, s.reweighting_beta)
        only = None if s.uniform_reweight else self.potential.bad(log_phi)
        weights = negative_weights(
            neg_logps, neg.behaviour_logps, log_phi, neg.mask, s.group_size, uniform=s.uniform_reweight, only=only
        )
        if s.loss_type != "neg_reinforce":
            return weights, None
        ref = response_token_logps(self.reference, neg.rollout) if s.kl_coef > 0 else torch.zeros_like(neg_logps)
        returns = neg_reinforce_returns(neg.log_phi, neg_logps.detach() - ref, neg.mask, s.kl_coef)
        return weights, reinforce_advantages(returns, s.group_size, s.neg_baseline_type, s.neg_hardcoded_baseline)

    def q_backward(
        self, batch: HarmlessnessExperience, micro: MicroStep, p_logps: torch.Tensor | None, metrics: Metrics
    ) -> torch.Tensor | None:
        """q's loss toward sigma_theta on one micro-batch of its samples, backward; the log p_theta it used."""
        if not self.separate or not self.proposal.trains:
            return None
        loss, used = proposal_loss(self.q_loss, self.proposal.model, batch.neg, self.policy.model, base_logps=p_logps)
        accumulate(self.guard, self.proposal, loss, micro.weight, micro.boundary)
        metrics.add({"proposal_loss": loss.item()})
        return used

    def step(self, trained: TrainedModel | None, key: str, metrics: Metrics) -> None:
        if trained is not None and trained.trains:
            metrics.add({key: optimizer_step(self.guard, trained)})

    @staticmethod
    def record_f_q(neg: Experience, p_logps: torch.Tensor | None, metrics: Metrics) -> None:
        """f_q terms log p_theta + log phi - log q of each proposal sample, from a pass already made."""
        if p_logps is not None:
            metrics.setdefault("f_q", []).extend(
                log_weights(p_logps, neg.behaviour_logps, neg.log_phi, neg.mask).tolist()
            )

    # ---------------------------------------------------------------------------------------------------- report
    def report(self, experience: HarmlessnessExperience, updates: list[Metrics]) -> dict[str, float]:
        merged = Metrics()
        for metrics in updates:
            for key, values in metrics.items():
                merged.setdefault(key, []).extend(values)
        base = experience.base
        out = merged.mean() | {
            "reward_mean": base.raw_rewards.mean().item(),
            "return_mean": base.returns.mean().item(),
            "kl": base.kl.sum(-1).mean().item(),
            "samples_used": float(self.samples_used),
            "beta": experience.beta,
            "alpha": experience.alpha,
        }
        if self.separate:
            neg = experience.neg
            out["proposal_reward_mean"] = neg.raw_rewards.mean().item()
            if "f_q" not in out:  # neither update made p_theta's pass on q's samples (q frozen, alpha 0)
                p_logps = response_token_logps(self.policy.model, neg.rollout)
                out["f_q"] = log_weights(p_logps, neg.behaviour_logps, neg.log_phi, neg.mask).mean().item()
        return out
