"""The models of one train_ppo run, loaded by mode, and where each is written when the run ends."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from repulse.models.load import load_causal_lm, load_reference_lm, save_pretrained_atomic
from repulse.models.modulated import build_modulated, is_modulated
from repulse.rl.rewards import RewardSource
from repulse.trainers.rl.config import RLConfig


@dataclass
class RLModels:
    """reference: the frozen p_0 (KL reference, twist target, held-out KL); reward: the reward source;
    policy: the PPO / REINFORCE actor, or p_theta in harmlessness training (None in twist learning);
    proposal: q, trained toward sigma (twist learning, or RePULSe's separate proposal); critic: PPO's value model;
    ema: a CPU copy of the policy averaged over its steps (--enable_ema)."""

    reference: torch.nn.Module
    reward: RewardSource
    policy: torch.nn.Module | None = None
    proposal: torch.nn.Module | None = None
    critic: torch.nn.Module | None = None
    ema: torch.nn.Module | None = None

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model the evaluations measure: the policy, or in twist learning the proposal."""
        return self.policy if self.policy is not None else self.proposal

    def checkpointed(self) -> dict[str, torch.nn.Module]:
        """The models a checkpoint holds (their trainable weights; the EMA copy in full)."""
        named = {"policy": self.policy, "proposal": self.proposal, "critic": self.critic, "ema": self.ema}
        return {k: v for k, v in named.items() if v is not None}


def modulated_proposal(config: RLConfig, path: str, base) -> torch.nn.Module:
    """q ∝ p e^m on `base` (the frozen p_0 in twist learning, the current p_theta in harmlessness training,
    METHODS §4.1); modulation_model loads its own trainable copy of the LM from `path`."""
    trainable, prop = config.optim.actor_learning_rate > 0, config.proposal
    lm = None
    if prop.parameterization == "modulation_model":
        lm = load_causal_lm(path, config.model, config.lora, trainable=trainable)
    return build_modulated(
        prop.parameterization,
        base,
        sd_divider=prop.additional_sd_divider,
        init_head_from_base=prop.init_head_from_base,
        modulation_lm=lm,
        trainable=trainable,
    )


def load_reference(config: RLConfig, path: str, strategy) -> torch.nn.Module:
    return load_reference_lm(path, config.model, offload=False, device=strategy.device)


def load_critic(config: RLConfig, path: str, strategy) -> torch.nn.Module:
    """PPO's value model: --critic_pretrain (default --pretrain) with a value head."""
    from repulse.models.reward import load_reward_model

    critic = load_reward_model(
        config.ppo.critic_pretrain or path,
        config.model,
        config.lora,
        value_head_prefix=config.reward.value_head_prefix,
        trainable=True,
    )
    return strategy.prepare(critic)


def has_critic(config: RLConfig) -> bool:
    return config.mode == "ppo" and config.proposal.actor_loss_type == "ppo" and not config.ppo.no_critic


def load_models(config: RLConfig, path: str, strategy, reward: RewardSource, reference=None) -> RLModels:
    """The models the mode needs, each from `path` (--pretrain), prepared on the strategy's device. A `reference`
    given (held by another process) is used as is, and then the critic is also another process's."""
    models = RLModels(reference if reference is not None else load_reference(config, path, strategy), reward)
    trainable_q = config.optim.actor_learning_rate > 0
    if config.mode == "twist":
        # q = p_0 e^m modulates the frozen p_0 itself; a policy-parameterized q is a full trainable copy.
        q = modulated_proposal(config, path, models.reference) if config.modulated else None
        models.proposal = strategy.prepare(q if q is not None else load_causal_lm(path, config.model, config.lora))
        return models
    models.policy = strategy.prepare(load_causal_lm(path, config.model, config.lora))
    if config.mode == "harmlessness":
        if config.separate_proposal:
            if config.modulated:  # q = p_theta e^m tracks the current p_theta (METHODS §4.1)
                q = modulated_proposal(config, path, strategy.unwrap(models.policy))
            else:
                q = load_causal_lm(path, config.model, config.lora, trainable=trainable_q)
            models.proposal = strategy.prepare(q)
        return models
    if has_critic(config) and reference is None:
        models.critic = load_critic(config, path, strategy)
    if config.ppo.enable_ema:
        models.ema = copy.deepcopy(strategy.unwrap(models.policy)).to("cpu").requires_grad_(False)
    return models


def save_models(models: RLModels, tokenizer, strategy, folder: str, *, twist: bool) -> None:
    """Hugging Face folders: final/ (the policy; in twist learning a full-LM q, which is the trained actor there),
    final_proposal/ (q: RePULSe's proposal, or a modulation head, whose base p_0 did not change), final_critic/,
    final_ema/."""
    q = models.proposal
    outputs = {
        "final": models.policy if models.policy is not None else (q if twist and not is_modulated(q) else None),
        "final_proposal": q if q is not None and not (twist and not is_modulated(q)) else None,
        "final_critic": models.critic,
        "final_ema": models.ema,
    }
    for name, model in outputs.items():
        if model is not None:
            save_pretrained_atomic(strategy.unwrap(model), tokenizer, f"{folder}/{name}")
