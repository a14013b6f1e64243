"""PPO (clipped policy + clipped value loss, GAE, per-token KL penalty) and REINFORCE with group baselines,
on one process (METHODS §5). Scoring passes run in eval mode; updates in train mode unless model_eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from repulse.generation.generate import SamplingParams
from repulse.infra.checkpoint import load_optional_state, optional_state
from repulse.losses.lm import lm_loss
from repulse.losses.policy import ppo_policy_loss, reinforce_loss, value_loss
from repulse.models.logprobs import forward_logits
from repulse.models.reward import token_values
from repulse.rl.advantages import compute_gae, per_token_rewards, reinforce_advantages, whiten
from repulse.rl.experience import RewardSettings, make_base_experience
from repulse.rl.rollout import response_token_logps, sample_rollout


@dataclass
class PPOSettings:
    group_size: int = 1
    loss_type: str = "ppo"  # ppo | reinforce
    eps_clip: float = 0.2
    value_clip: float | None = 0.2
    gamma: float = 1.0
    lambd: float = 0.95
    max_epochs: int = 1
    micro_train_batch_size: int = 8
    max_norm: float = 1.0
    baseline_type: str | None = None
    hardcoded_baseline: float = 0.0
    freezing_actor_steps: int = -1
    ptx_coef: float = 0.0
    value_head_prefix: str = "score"
    ema_beta: float | None = None
    rollout_batch_size: int = 64


@dataclass
class PPOModels:
    actor: Any
    actor_optimizer: Any
    actor_scheduler: Any
    reference: Any
    critic: Any = None
    critic_optimizer: Any = None
    critic_scheduler: Any = None
    ema: Any = None


OPTIMIZER_FIELDS = ("actor_optimizer", "actor_scheduler", "critic_optimizer", "critic_scheduler")


class PPOTrainer:
    def __init__(
        self,
        models: PPOModels,
        reward_source,
        tokenizer,
        kl_controller,
        sampling: SamplingParams,
        rewards: RewardSettings,
        settings: PPOSettings,
        strategy: Any,
        ptx_batches=None,
    ) -> None:
        self.models, self.model = models, models.actor
        self.reward_source, self.tokenizer, self.kl = reward_source, tokenizer, kl_controller
        self.sampling, self.rewards, self.settings, self.strategy = sampling, rewards, settings, strategy
        self.ptx_batches = ptx_batches
        self.steps = self.ptx_used = 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs besides the weights: counters, the KL coefficient, optimizers, schedulers."""
        out = {"steps": self.steps, "kl_coef": self.kl.value, "ptx_used": self.ptx_used}
        return out | {k: optional_state(getattr(self.models, k)) for k in OPTIMIZER_FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.kl.value = state["steps"], state["kl_coef"]
        for key in OPTIMIZER_FIELDS:
            load_optional_state(getattr(self.models, key), state[key])
        # The pre-training stream is a seeded iterator: replaying it puts the next batch where the run left off.
        for _ in range(state["ptx_used"]):
            next(self.ptx_batches)
        self.ptx_used = state["ptx_used"]

    def critic_values(self, roll, grad: bool = False) -> torch.Tensor:
        """V for each action: the value head on the hidden state of the token before it -> [B, T]."""
        critic = self.models.critic
        with torch.set_grad_enabled(grad):
            values = token_values(critic, roll.sequences, roll.attention_mask, self.settings.value_head_prefix)
        return values[:, -roll.num_actions - 1 : -1] * roll.action_mask

    def make_experience(self, prompt_ids: list[list[int]]) -> dict[str, Any]:
        s = self.settings
        roll = sample_rollout(
            self.model, self.tokenizer, prompt_ids, s.group_size, self.sampling, batch_size=s.rollout_batch_size
        ).to(self.strategy.device)
        self.rewards.kl_coef = self.kl.value
        # REINFORCE uses only the log-probs of its update pass; PPO's ratio needs those at sampling time.
        exp = make_base_experience(
            roll,
            self.model,
            self.models.reference,
            self.reward_source,
            self.rewards,
            need_behaviour_logps=s.loss_type != "reinforce",
        )
        mask = roll.action_mask
        if s.loss_type == "reinforce":
            adv = reinforce_advantages(exp.returns, s.group_size, s.baseline_type, s.hardcoded_baseline)
            return {"exp": exp, "advantages": adv, "values": None, "returns": None}
        seq_reward = exp.returns + self.kl.value * exp.kl.sum(-1)  # the capped reward without the KL part
        rewards = per_token_rewards(exp.kl, seq_reward, mask, self.kl.value)
        self.models.critic.eval()
        values = self.critic_values(roll)
        self.models.critic.train()
        adv, returns = compute_gae(rewards, values, mask, s.gamma, s.lambd)
        return {"exp": exp, "advantages": whiten(adv, mask), "values": values, "returns": returns}

    def actor_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        exp = batch["exp"]
        logps = response_token_logps(self.model, exp.rollout, grad=True)
        mask = exp.rollout.action_mask
        if self.settings.loss_type == "reinforce":
            loss = reinforce_loss(logps, mask, batch["advantages"])
            metrics = {"policy_loss": loss.item()}
        else:
            out = ppo_policy_loss(logps, exp.behaviour_logps, batch["advantages"], mask, self.settings.eps_clip)
            loss = out.loss
            metrics = {"policy_loss": loss.item(), "clip_fraction": float(out.clip_fraction)}
        if self.ptx_batches is not None and self.settings.ptx_coef > 0:
            ptx = next(self.ptx_batches)
            self.ptx_used += 1
            ptx_loss = lm_loss(
                forward_logits(self.model, ptx["input_ids"], ptx["attention_mask"]), ptx["input_ids"], ptx["loss_mask"]
            )
            loss = loss + self.settings.ptx_coef * ptx_loss
            metrics["ptx_loss"] = ptx_loss.item()
        return loss, metrics

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        s, metrics = self.settings, {}
        if self.steps >= s.freezing_actor_steps:
            loss, metrics = self.actor_loss(batch)
            self.strategy.backward(loss, self.model)
            metrics["actor_grad_norm"] = self.strategy.optimizer_step(
                self.models.actor_optimizer, self.model, self.models.actor_scheduler, s.max_norm
            )
            if self.models.ema is not None:
                update_ema(self.models.ema, self.strategy.unwrap(self.model), s.ema_beta)
        if self.models.critic is not None:
            values = self.critic_values(batch["exp"].rollout, grad=True)
            vloss = value_loss(
                values, batch["values"], batch["returns"], batch["exp"].rollout.action_mask, s.value_clip
            )
            self.strategy.backward(vloss, self.models.critic)
            self.strategy.optimizer_step(
                self.models.critic_optimizer, self.models.critic, self.models.critic_scheduler, s.max_norm
            )
            metrics["value_loss"] = vloss.item()
        return metrics

    def step(self, prompt_ids: list[list[int]]) -> dict[str, float]:
        data = self.make_experience(prompt_ids)
        exp, n, size = data["exp"], data["exp"].raw_rewards.shape[0], self.settings.micro_train_batch_size
        collected: dict[str, list[float]] = {}
        for _ in range(self.settings.max_epochs):
            order = torch.randperm(n) if self.settings.loss_type == "ppo" else torch.arange(n)
            for start in range(0, n, size):
                rows = order[start : start + size]
                for k, v in self.update(select_rows(data, rows)).items():
                    collected.setdefault(k, []).append(v)
        self.steps += 1
        kl = exp.kl.sum(-1).mean().item()
        self.kl.update(kl, n)
        summary = {k: sum(v) / len(v) for k, v in collected.items()}
        summary.update(
            reward_mean=exp.raw_rewards.mean().item(),
            return_mean=exp.returns.mean().item(),
            kl=kl,
            kl_coef=self.kl.value,
        )
        return summary


def select_rows(data: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    out = {"exp": data["exp"].select(rows), "advantages": data["advantages"][rows]}
    for key in ("values", "returns"):
        out[key] = data[key][rows] if data[key] is not None else None
    return out


@torch.no_grad()
def update_ema(ema_model, model, beta: float) -> None:
    """theta_ema <- beta * theta_ema + (1 - beta) * theta (the EMA copy lives on the CPU)."""
    for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        e.mul_(beta).add_(p.detach().to(e.device), alpha=1 - beta)
