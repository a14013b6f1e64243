"""PPO (clipped policy and value losses, GAE, per-token KL penalty, EMA, ptx) and REINFORCE with group baselines,
in three phases: make_experience (sample, score, reference log-probs, critic values, advantages),
update (micro-batches accumulated to --train_batch_size, every step guarded), report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from repulse.generation.generate import SamplingParams
from repulse.losses.lm import lm_loss
from repulse.losses.policy import ppo_policy_loss, reinforce_loss, value_loss
from repulse.models.logprobs import forward_logits
from repulse.models.reward import token_values
from repulse.rl.advantages import compute_gae, per_token_rewards, reinforce_advantages, whiten
from repulse.rl.experience import Experience, RewardShaping, policy_experience, score
from repulse.rl.rollout import Rollout, response_token_logps, sample_rollout
from repulse.trainers.guard import Guard
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
class PPOSettings:
    group_size: int = 1
    loss_type: str = "ppo"  # ppo | reinforce
    eps_clip: float = 0.2
    gamma: float = 1.0
    lambd: float = 0.95
    baseline_type: str | None = None
    hardcoded_baseline: float = 0.0
    freezing_actor_steps: int = -1
    ptx_coef: float = 0.0
    ema_beta: float | None = None
    prompts_per_generation: int = 64


@dataclass
class PPOExperience:
    """The buffer of one step: samples with rewards, KL and sampling log-probs; advantages [B] (REINFORCE) or
    [B, T] (PPO: GAE, whitened); the critic's values and the GAE returns [B, T] (PPO with a critic)."""

    samples: Experience
    advantages: torch.Tensor
    values: torch.Tensor | None
    returns: torch.Tensor | None
    step: int
    kl_coef: float

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, rows: torch.Tensor) -> PPOExperience:
        values = None if self.values is None else self.values[rows]
        returns = None if self.returns is None else self.returns[rows]
        samples, advantages = self.samples.select(rows), self.advantages[rows]
        return PPOExperience(samples, advantages, values, returns, self.step, self.kl_coef)


class Critic:
    """PPO's value model and its optimizer: values for GAE, the clipped value loss backward per micro-batch, the
    step at a boundary. A critic held by another process (distributed/ray/) offers the same methods."""

    def __init__(self, trained: TrainedModel, guard: Guard, value_head_prefix: str, value_clip: float | None) -> None:
        self.trained, self.guard, self.value_head_prefix, self.value_clip = (
            trained,
            guard,
            value_head_prefix,
            value_clip,
        )

    def token_values(self, roll: Rollout) -> torch.Tensor:
        """V for each action: the value head on the hidden state of the token before it -> [B, T]."""
        values = token_values(self.trained.model, roll.sequences, roll.attention_mask, self.value_head_prefix)
        return values[:, -roll.num_actions - 1 : -1] * roll.action_mask

    @torch.no_grad()
    def values(self, roll: Rollout) -> torch.Tensor:
        self.trained.model.eval()
        return self.token_values(roll)

    def start_update(self) -> None:
        self.trained.start_update()

    def backward(
        self, roll: Rollout, old_values: torch.Tensor, returns: torch.Tensor, weight: float, boundary: bool = True
    ) -> float:
        """The value loss of one micro-batch, backward scaled by `weight` (`boundary`: the step's last); its value."""
        loss = value_loss(self.token_values(roll), old_values, returns, roll.action_mask, self.value_clip)
        accumulate(self.guard, self.trained, loss, weight, boundary)
        return loss.item()

    def step(self) -> float:
        return optimizer_step(self.guard, self.trained)

    def state_dict(self) -> dict[str, Any]:
        return self.trained.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained.load_state_dict(state)


class PPOTrainer:
    def __init__(
        self,
        actor: TrainedModel,
        reference,
        reward_source,
        tokenizer,
        kl_controller,
        sampling: SamplingParams,
        shaping: RewardShaping,
        settings: PPOSettings,
        plan: BatchPlan,
        guard: Guard,
        *,
        critic: Critic | None = None,
        ema=None,
        ptx_batches: Iterator[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.actor, self.critic, self.ema, self.reference = actor, critic, ema, reference
        self.reward_source, self.tokenizer, self.kl = reward_source, tokenizer, kl_controller
        self.sampling, self.shaping, self.settings, self.plan, self.guard = sampling, shaping, settings, plan, guard
        self.ptx_batches = ptx_batches
        self.ptx_used = self.samples_used = 0
        self.progress, self.streams = Progress(), Streams()
        self.sampler: Sampler = sample_rollout  # train_ppo_ray may swap in its vLLM engines

    def rounds(self) -> tuple[str, ...]:
        return ("policy",)

    def samples_per_prompt(self) -> int:
        return self.settings.group_size

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs besides the weights: counters, the KL coefficient, optimizers, schedulers."""
        out = {"kl_coef": self.kl.value, "ptx_used": self.ptx_used, "samples_used": self.samples_used}
        out["actor"] = self.actor.state_dict()
        out["critic"] = self.critic.state_dict() if self.critic is not None else None
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.value, self.samples_used = state["kl_coef"], state["samples_used"]
        self.actor.load_state_dict(state["actor"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        # The pre-training stream is a seeded iterator: replaying it puts the next batch where the run left off.
        for _ in range(state["ptx_used"]):
            next(self.ptx_batches)
        self.ptx_used = state["ptx_used"]

    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str = "policy") -> PPOExperience:
        s = self.settings
        self.progress.phase("sampling")
        roll = draw(
            self.guard,
            self.streams,
            self.progress,
            self.actor.model,
            self.tokenizer,
            prompt_ids,
            s.group_size,
            self.sampling,
            batch_size=s.prompts_per_generation,
            step=step,
            tag="actor",
            sampler=self.sampler,
        )
        self.samples_used += roll.sequences.shape[0]
        raw = score(self.reward_source, roll)
        self.guard.check(raw, "reward")
        exp = policy_experience(roll, raw, self.reference, self.shaping, self.kl.value)
        if s.loss_type == "reinforce":
            adv = reinforce_advantages(exp.returns, s.group_size, s.baseline_type, s.hardcoded_baseline)
            return PPOExperience(exp, adv, None, None, step, self.kl.value)
        seq_reward = exp.returns + self.kl.value * exp.kl.sum(-1)  # the capped reward without the KL part
        rewards = per_token_rewards(exp.kl, seq_reward, roll.action_mask, self.kl.value)
        values = self.critic.values(roll)
        adv, returns = compute_gae(rewards, values, roll.action_mask, s.gamma, s.lambd)
        # Whitened with the whole step's statistics: every rank's share of the buffer (the valid tokens of all).
        adv = whiten(adv, roll.action_mask, total=lambda v: self.guard.strategy.all_reduce(v, op="sum"))
        return PPOExperience(exp, adv, values, returns, step, self.kl.value)

    def actor_loss(self, batch: PPOExperience) -> tuple[torch.Tensor, dict[str, float]]:
        samples = batch.samples
        logps = response_token_logps(self.actor.model, samples.rollout, grad=True)
        if self.settings.loss_type == "reinforce":
            loss = reinforce_loss(logps, samples.mask, batch.advantages)
            metrics = {"policy_loss": loss.item()}
        else:
            out = ppo_policy_loss(
                logps, samples.behaviour_logps, batch.advantages, samples.mask, self.settings.eps_clip
            )
            loss = out.loss
            metrics = {
                "policy_loss": loss.item(),
                "clip_fraction": float(out.clip_fraction),
                "approx_kl": float(out.approx_kl),
            }
        if self.ptx_batches is not None and self.settings.ptx_coef > 0:
            ptx = next(self.ptx_batches)
            self.ptx_used += 1
            logits = forward_logits(self.actor.model, ptx["input_ids"], ptx["attention_mask"])
            ptx_loss = lm_loss(logits, ptx["input_ids"], ptx["loss_mask"])
            loss = loss + self.settings.ptx_coef * ptx_loss
            metrics["ptx_loss"] = ptx_loss.item()
        return loss, metrics

    def update(self, experience: PPOExperience) -> Metrics:
        """Every epoch, the buffer in optimizer steps of --train_batch_size rows (micro-batches accumulated):
        actor and critic backward on each micro-batch, both step at the boundary; the EMA follows each actor step."""
        s, metrics = self.settings, Metrics()
        train_actor = experience.step >= s.freezing_actor_steps
        for trained in (self.actor, self.critic):
            if trained is not None:
                trained.start_update()
        for micro in self.plan.micro_steps(len(experience), self.progress):
            batch = experience.select(micro.rows)
            local_critic = getattr(self.critic, "trained", None)  # None when another process holds it
            with micro_batch(self.guard, [self.actor if train_actor else None, local_critic], micro.boundary):
                if train_actor:
                    loss, values = self.actor_loss(batch)
                    accumulate(self.guard, self.actor, loss, micro.weight, micro.boundary)
                    metrics.add(values)
                if self.critic is not None:
                    rows, boundary = batch.samples.rollout, micro.boundary
                    vloss = self.critic.backward(rows, batch.values, batch.returns, micro.weight, boundary=boundary)
                    metrics.add({"value_loss": vloss})
            if micro.boundary:
                self.step_models(train_actor, metrics)
        # The adaptive KL coefficient follows the step's mean KL over every rank's rows (the ranks' buffers are equal
        # in size), so all ranks keep one coefficient.
        kl = self.guard.strategy.all_reduce({"kl": experience.samples.kl.sum(-1).mean().item()})["kl"]
        self.kl.update(kl, len(experience) * self.guard.strategy.world_size)
        return metrics

    def step_models(self, train_actor: bool, metrics: Metrics) -> None:
        if train_actor:
            metrics.add({"actor_grad_norm": optimizer_step(self.guard, self.actor)})
            if self.ema is not None:
                strategy = self.guard.strategy
                with strategy.full_weights(self.actor.model):  # each rank's full copy from the gathered shards
                    update_ema(self.ema, strategy.unwrap(self.actor.model), self.settings.ema_beta)
        if self.critic is not None:
            metrics.add({"critic_grad_norm": self.critic.step()})

    def report(self, experience: PPOExperience, updates: list[Metrics]) -> dict[str, float]:
        samples = experience.samples
        return {
            **updates[-1].mean(),
            "reward_mean": samples.raw_rewards.mean().item(),
            "return_mean": samples.returns.mean().item(),
            "kl": samples.kl.sum(-1).mean().item(),
            "kl_coef": self.kl.value,
            "samples_used": float(self.samples_used),
        }


@torch.no_grad()
def update_ema(ema_model, model, beta: float) -> None:
    """theta_ema <- beta * theta_ema + (1 - beta) * theta (the EMA copy lives on the CPU)."""
    for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        e.mul_(beta).add_(p.detach().to(e.device), alpha=1 - beta)
