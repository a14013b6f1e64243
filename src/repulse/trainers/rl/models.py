"""The models of one train_ppo run, loaded by mode, and where each is written when the run ends."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    ema: a CPU copy of the policy averaged over its steps (--enable_ema). Each model is the one the strategy
    runs (a DDP wrapper, a DeepSpeed engine); strategy.unwrap gives the module."""

    reference: torch.nn.Module
    reward: RewardSource
    policy: torch.nn.Module | None = None
    proposal: torch.nn.Module | None = None
    critic: torch.nn.Module | None = None
    ema: torch.nn.Module | None = None
    optimizers: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # role -> (optimizer, scheduler)

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model the evaluations measure: the policy, or in twist learning the proposal."""
        return self.policy if self.policy is not None else self.proposal

    def checkpointed(self) -> dict[str, torch.nn.Module]:
        """The models a checkpoint holds (their trainable weights; the EMA copy in full)."""
        named = {"policy": self.policy, "proposal": self.proposal, "critic": self.critic, "ema": self.ema}
        return {k: v for k, v in named.items() if v is not None}


def modulated_proposal(config: RLConfig, path: str, base, strategy) -> torch.nn.Module:
    """q ∝ p e^m on `base` (the frozen p_0 in twist learning, the current p_theta in harmlessness
    training); modulation_model loads its own trainable copy of the LM from `path`."""
    trainable, prop = config.optim.actor_learning_rate > 0, config.proposal
    lm = None
    if prop.parameterization == "modulation_model":
        with strategy.model_init(trainable=trainable, bf16=config.model.bf16):
            lm = load_causal_lm(path, config.model, config.lora, trainable=trainable)
    return build_modulated(
        prop.parameterization,
        base,
        sd_divider=prop.additional_sd_divider,
        init_head_from_base=prop.init_head_from_base,
        modulation_lm=lm,
        trainable=trainable,
    )


class Preparer(Protocol):
    """How build.py hands each model to the strategy: a trained one with its optimizer and schedule (role picks
    the learning rate and the number of steps), a frozen one for scoring."""

    def train(self, model: torch.nn.Module, role: str) -> tuple[torch.nn.Module, Any, Any]: ...
    def frozen(self, model: torch.nn.Module) -> torch.nn.Module: ...


def load_reference(config: RLConfig, path: str, strategy) -> torch.nn.Module:
    """p_0 on the strategy's device (a train_ppo_ray worker's; train_ppo's goes through load_models)."""
    return load_reference_lm(path, config.model, offload=False, device=strategy.device)


def load_critic(config: RLConfig, path: str, strategy) -> torch.nn.Module:
    """PPO's value model in a train_ppo_ray worker: --critic_pretrain (default --pretrain) with a value head."""
    return strategy.prepare(critic_model(config, path))


def critic_model(config: RLConfig, path: str) -> torch.nn.Module:
    from repulse.models.reward import load_reward_model

    return load_reward_model(
        config.ppo.critic_pretrain or path,
        config.model,
        config.lora,
        value_head_prefix=config.reward.value_head_prefix,
        trainable=True,
    )


def has_critic(config: RLConfig) -> bool:
    return config.mode == "ppo" and config.proposal.actor_loss_type == "ppo" and not config.ppo.no_critic


def load_models(
    config: RLConfig, path: str, strategy, reward: RewardSource, prepare: Preparer, reference=None
) -> RLModels:
    """The models the mode needs, each from `path` (--pretrain), loaded the way the strategy needs (ZeRO-3: each
    rank's shard) and prepared by it; every trained model with its own optimizer (RLModels.optimizers). A
    `reference` given (held by another process) is used as is, and then the critic is also another process's."""
    bf16, remote = config.model.bf16, reference is not None
    if not remote:
        with strategy.model_init(trainable=False, bf16=bf16):
            reference = prepare.frozen(load_reference(config, path, strategy))
    models = RLModels(reference, reward)
    trains_q = config.optim.actor_learning_rate > 0
    if config.mode == "twist":
        # q = p_0 e^m modulates the frozen p_0 itself; a policy-parameterized q is a full trainable copy.
        if config.modulated:
            q = modulated_proposal(config, path, strategy.unwrap(models.reference), strategy)
        else:
            with strategy.model_init(trainable=True, bf16=bf16):
                q = load_causal_lm(path, config.model, config.lora)
        models.proposal = place(models, "proposal", q, prepare, trains_q)
        return models
    with strategy.model_init(trainable=True, bf16=bf16):
        policy = load_causal_lm(path, config.model, config.lora)
    models.policy = place(models, "policy", policy, prepare, True)
    if config.mode == "harmlessness":
        if config.separate_proposal:
            if config.modulated:  # q = p_theta e^m tracks the current p_theta
                q = modulated_proposal(config, path, strategy.unwrap(models.policy), strategy)
            else:
                with strategy.model_init(trainable=trains_q, bf16=bf16):
                    q = load_causal_lm(path, config.model, config.lora, trainable=trains_q)
            models.proposal = place(models, "proposal", q, prepare, trains_q)
        return models
    if has_critic(config) and not remote:
        with strategy.model_init(trainable=True, bf16=bf16):
            critic = critic_model(config, path)
        models.critic = place(models, "critic", critic, prepare, True)
    if config.ppo.enable_ema:
        models.ema = copy.deepcopy(strategy.unwrap(models.policy)).to("cpu").requires_grad_(False)
    return models


def place(models: RLModels, role: str, model: torch.nn.Module, prepare: Preparer, trains: bool) -> torch.nn.Module:
    """`model` as the strategy runs it; a trained one's optimizer and schedule go into models.optimizers."""
    if not trains:
        return prepare.frozen(model)
    model, optimizer, scheduler = prepare.train(model, role)
    models.optimizers[role] = (optimizer, scheduler)
    return model


def save_models(models: RLModels, tokenizer, strategy, folder: str, *, twist: bool) -> None:
    """Hugging Face folders: final/ (the policy; in twist learning a full-LM q, which is the trained actor there),
    final_proposal/ (q: RePULSe's proposal, or a modulation head, whose base p_0 did not change), final_critic/,
    final_ema/. Collective: each model is gathered from its shards where the strategy shards it; rank 0 writes."""
    q = models.proposal
    outputs = {
        "final": models.policy if models.policy is not None else (q if twist and not is_modulated(q) else None),
        "final_proposal": q if q is not None and not (twist and not is_modulated(q)) else None,
        "final_critic": models.critic,
        "final_ema": models.ema,
    }
    for name, model in outputs.items():
        if model is not None and name == "final_ema":  # a plain CPU copy, the same on every rank
            if strategy.is_rank_0():
                save_pretrained_atomic(model, tokenizer, f"{folder}/{name}")
        elif model is not None:
            strategy.save_pretrained(model, tokenizer, f"{folder}/{name}")
