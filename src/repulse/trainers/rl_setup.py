"""Build the RL trainers of train_ppo from its typed flag groups (config is a NamedTuple of groups)."""

from __future__ import annotations

import logging
from typing import Any

from repulse.config.validate import separate_proposal
from repulse.generation.generate import SamplingParams
from repulse.rl.experience import RewardSettings
from repulse.trainers.harmlessness import HarmlessnessSettings, HarmlessnessTrainer
from repulse.trainers.optim import build_optimizer, build_scheduler
from repulse.trainers.schedules import geometric_value
from repulse.trainers.updates import BaseUpdateSettings, ProposalUpdater

log = logging.getLogger("repulse")


def sampling_params(rollout) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=rollout.generate_max_len,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
    )


def reward_settings(cfg, *, beta: float, kl_coef: float) -> RewardSettings:
    r, harm = cfg.reward, cfg.harm
    return RewardSettings(
        rm_type=r.rm_type,
        beta=beta,
        threshold=r.threshold,
        reward_cap=r.reward_cap,
        transform=r.reward_transform,
        transform_alpha=r.rew_trans_alpha if r.rew_trans_alpha is not None else harm.alpha,
        transform_beta=r.rew_trans_beta if r.rew_trans_beta is not None else (cfg.proposal.target_dist_beta or 1.0),
        kl_coef=kl_coef,
    )


def optimizer_pair(model, optim, lr: float, total_steps: int):
    opt = build_optimizer(model, optim, lr=lr)
    return opt, build_scheduler(opt, optim, total_steps)


def build_modulated_proposal(cfg, path: str, base):
    """q ∝ p e^m on `base` (frozen p_0 in twist learning, the current p_theta in harmlessness training, METHODS
    §4.1); modulation_model loads its own trainable copy of the LM from `path`."""
    from repulse.models.load import load_causal_lm
    from repulse.models.modulated import build_modulated

    trainable, prop = cfg.optim.actor_learning_rate > 0, cfg.proposal
    lm = None
    if prop.parameterization == "modulation_model":
        lm = load_causal_lm(path, cfg.model, cfg.lora, trainable=trainable)
    return build_modulated(
        prop.parameterization,
        base,
        sd_divider=prop.additional_sd_divider,
        init_head_from_base=prop.init_head_from_base,
        modulation_lm=lm,
        trainable=trainable,
    )


def build_proposal_updater(cfg, q_model, strategy, total_steps: int) -> ProposalUpdater:
    lr = cfg.optim.actor_learning_rate
    opt, sched = optimizer_pair(q_model, cfg.optim, lr, total_steps) if lr > 0 else (None, None)
    return ProposalUpdater(
        q_model,
        opt,
        sched,
        loss_type=cfg.proposal.actor_loss_type,
        parameterization=cfg.proposal.parameterization,
        group_size=cfg.rollout.duplicate_rollout_batch_by,
        max_norm=cfg.optim.max_norm,
        strategy=strategy,
        enabled=lr > 0,
    )


def build_harmlessness_trainer(
    cfg, models: dict[str, Any], reward_source, tokenizer, strategy, total_steps: int
) -> HarmlessnessTrainer:
    harm, n, beta = cfg.harm, cfg.rollout.duplicate_rollout_batch_by, cfg.proposal.target_dist_beta
    update = BaseUpdateSettings(
        group_size=n,
        loss_type=harm.harmlessness_training_loss_type,
        alpha=harm.alpha,
        baseline_type=cfg.ppo.reinforce_baseline_type,
        hardcoded_baseline=cfg.ppo.reinforce_hardcoded_baseline,
        neg_baseline_type=harm.neg_baseline_type,
        neg_hardcoded_baseline=harm.neg_hardcoded_baseline,
        uniform_reweight=harm.uniform_reweight,
        reweighting_beta=harm.separate_reweighting_beta,
        rm_type=cfg.reward.rm_type,
        beta=beta if beta is not None else 1.0,
        threshold=cfg.reward.threshold,
        reward_cap=cfg.reward.reward_cap,
        kl_coef=cfg.ppo.init_kl_coef,
        max_norm=cfg.optim.max_norm,
    )
    base_opt, base_sched = optimizer_pair(models["base"], cfg.optim, cfg.optim.base_actor_learning_rate, total_steps)
    proposal = (
        build_proposal_updater(cfg, models["proposal"], strategy, total_steps) if models.get("proposal") else None
    )
    settings = HarmlessnessSettings(
        group_size=n,
        max_epochs=cfg.optim.max_epochs,
        micro_train_batch_size=cfg.optim.micro_train_batch_size,
        num_q_updates=cfg.rollout.num_episodes,
        separate_proposal=separate_proposal(harm),
        update_base_first=harm.sampling_target_updated_base,
        rollout_batch_size=cfg.rollout.micro_rollout_batch_size,
    )
    return HarmlessnessTrainer(
        base=models["base"],
        proposal=proposal,
        initial=models["initial"],
        reward_source=reward_source,
        tokenizer=tokenizer,
        base_optimizer=base_opt,
        base_scheduler=base_sched,
        sampling=sampling_params(cfg.rollout),
        rewards=reward_settings(cfg, beta=update.beta, kl_coef=cfg.ppo.init_kl_coef),
        update=update,
        settings=settings,
        strategy=strategy,
    )


class AnnealedTrainer:
    """Sets beta and alpha on the wrapped harmlessness trainer before each step (geometric schedules)."""

    def __init__(self, trainer: HarmlessnessTrainer, harm, final_beta: float, total_steps: int) -> None:
        self.trainer, self.model = trainer, trainer.model
        self.start_beta = harm.start_target_dist_beta if harm.anneal_target_dist_beta else None
        self.final_beta, self.start_alpha, self.final_alpha = final_beta, harm.start_alpha, harm.alpha
        self.total_steps, self.steps = total_steps, 0

    def state_dict(self) -> dict[str, Any]:
        # beta and alpha are recomputed from the step count before every step, so the count is their state.
        return {"steps": self.steps, "trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.trainer.load_state_dict(state["trainer"])

    def step(self, prompt_ids: list[list[int]]) -> dict[str, float]:
        beta = geometric_value(self.start_beta, self.final_beta, self.steps, self.total_steps)
        alpha = geometric_value(self.start_alpha, self.final_alpha, self.steps, self.total_steps)
        self.trainer.rewards.beta = self.trainer.update.beta = beta
        self.trainer.update.alpha = alpha
        self.steps += 1
        return {**self.trainer.step(prompt_ids), "beta": beta, "alpha": alpha}


def derived_ppo_beta(kl_coef: float) -> float:
    """RL as inference: PPO with KL coefficient c targets p_0 e^{r / c}, so beta = 1/c (10000 when c = 0)."""
    return round(1.0 / kl_coef, 3) if kl_coef > 0 else 10000.0


def build_ppo_trainer(
    cfg, models: dict[str, Any], reward_source, tokenizer, strategy, total_steps: int, ptx_batches=None
):
    from repulse.rl.kl import AdaptiveKLController, FixedKLController
    from repulse.trainers.ppo import PPOModels, PPOSettings, PPOTrainer

    p = cfg.ppo
    actor_opt, actor_sched = optimizer_pair(models["actor"], cfg.optim, cfg.optim.actor_learning_rate, total_steps)
    critic_opt = critic_sched = None
    if models.get("critic") is not None:
        critic_opt, critic_sched = optimizer_pair(
            models["critic"], cfg.optim, cfg.optim.critic_learning_rate, total_steps
        )
    ppo_models = PPOModels(
        models["actor"],
        actor_opt,
        actor_sched,
        models["initial"],
        models.get("critic"),
        critic_opt,
        critic_sched,
        models.get("ema"),
    )
    if p.kl_target is not None:
        kl = AdaptiveKLController(p.init_kl_coef, p.kl_target, p.kl_horizon)
    else:
        kl = FixedKLController(p.init_kl_coef)
    settings = PPOSettings(
        group_size=cfg.rollout.duplicate_rollout_batch_by,
        loss_type=cfg.proposal.actor_loss_type,
        eps_clip=p.eps_clip,
        value_clip=p.value_clip,
        gamma=p.gamma,
        lambd=p.lambd,
        max_epochs=cfg.optim.max_epochs,
        micro_train_batch_size=cfg.optim.micro_train_batch_size,
        max_norm=cfg.optim.max_norm,
        baseline_type=p.reinforce_baseline_type,
        hardcoded_baseline=p.reinforce_hardcoded_baseline,
        freezing_actor_steps=p.freezing_actor_steps,
        ptx_coef=p.ptx_coef if p.pretrain_data else 0.0,
        value_head_prefix=cfg.reward.value_head_prefix,
        ema_beta=p.ema_beta if p.enable_ema else None,
        rollout_batch_size=cfg.rollout.micro_rollout_batch_size,
    )
    rewards = reward_settings(cfg, beta=derived_ppo_beta(p.init_kl_coef), kl_coef=p.init_kl_coef)
    return PPOTrainer(
        ppo_models,
        reward_source,
        tokenizer,
        kl,
        sampling_params(cfg.rollout),
        rewards,
        settings,
        strategy,
        ptx_batches=ptx_batches,
    )


def build_twist_trainer(cfg, models: dict[str, Any], reward_source, tokenizer, strategy, total_steps: int):
    from repulse.trainers.twist import TwistTrainer

    updater = build_proposal_updater(cfg, models["actor"], strategy, total_steps)
    rewards = reward_settings(cfg, beta=cfg.proposal.target_dist_beta, kl_coef=0.0)
    return TwistTrainer(
        updater,
        models["initial"],
        reward_source,
        tokenizer,
        sampling_params(cfg.rollout),
        rewards,
        group_size=cfg.rollout.duplicate_rollout_batch_by,
        micro_train_batch_size=cfg.optim.micro_train_batch_size,
        max_epochs=cfg.optim.max_epochs,
        strategy=strategy,
        rollout_batch_size=cfg.rollout.micro_rollout_batch_size,
    )
