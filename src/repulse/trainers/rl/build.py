"""Build one train_ppo run from its typed config: reward source, models, prompts, step schedule, optimizers, and
the trainer of its mode (PPO / REINFORCE, twist learning, harmlessness training)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from repulse.config.rollout import PPOOptimArgs, RolloutArgs
from repulse.data.prompts import format_prompts, load_prompt_texts
from repulse.infra.errors import UserError
from repulse.infra.seed import set_seed
from repulse.rl.kl import AdaptiveKLController, FixedKLController
from repulse.rl.rewards import NegativeDataRecorder, RewardSource, make_reward_source
from repulse.rl.rollout import encode_prompts_left_truncated
from repulse.trainers.guard import Guard
from repulse.trainers.optim import build_optimizer, build_scheduler
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.harmlessness import Annealing, HarmlessnessSettings, HarmlessnessTrainer
from repulse.trainers.rl.loop import RLLoopSettings, RLTrainer, schedule
from repulse.trainers.rl.models import RLModels, load_models
from repulse.trainers.rl.ppo import Critic, PPOSettings, PPOTrainer
from repulse.trainers.rl.proposal import ProposalLoss
from repulse.trainers.rl.steps import BatchPlan, TrainedModel
from repulse.trainers.rl.twist import TwistTrainer

log = logging.getLogger("repulse")


@dataclass
class Recipe:
    """Everything a run needs to start its loop."""

    config: RLConfig
    models: RLModels
    trainer: RLTrainer
    prompt_ids: list[list[int]]
    settings: RLLoopSettings
    guard: Guard
    recorder: NegativeDataRecorder | None


@dataclass
class RemoteRoles:
    """Models that other processes hold (train_ppo_ray's workers): stand-ins that the trainers call as they call
    local ones (the reference through response_token_logps, the reward source, PPO's Critic)."""

    reference: Any
    reward: RewardSource
    critic: Any = None


def build_recipe(config: RLConfig, strategy, path: str, tokenizer, remote: RemoteRoles | None = None) -> Recipe:
    reward = remote.reward if remote else make_reward_source(config.reward, config.model, strategy.device)
    # --save_negdata records what the trainers score; the evaluations score through the plain source.
    recorder = NegativeDataRecorder(reward, config.harm.save_negdata_threshold) if config.harm.save_negdata else None
    models = load_models(config, path, strategy, reward, reference=remote.reference if remote else None)
    # Sampling draws from the seed whichever models this process loaded (a critic's new value head draws from
    # it), so runs that spread the models over processes sample the same tokens.
    set_seed(config.optim.seed)
    prompt_ids = load_prompt_ids(config, tokenizer)
    config = config._replace(rollout=fit_to_positions(config.rollout, models.evaluated.config, prompt_ids))
    settings = loop_settings(config, len(prompt_ids))
    buffers = [
        len(batch) * config.rollout.duplicate_rollout_batch_by for *_, batch, _ in schedule(len(prompt_ids), settings)
    ]
    plan = batch_plan(config)
    warn_partial_steps(plan, buffers)
    guard = Guard(strategy)
    remote_critic = remote.critic if remote else None
    trainer = build_trainer(config, models, tokenizer, guard, plan, buffers, recorder or reward, remote_critic)
    return Recipe(config, models, trainer, prompt_ids, settings, guard, recorder)


def load_prompt_ids(config: RLConfig, tokenizer) -> list[list[int]]:
    r = config.rollout
    if r.new_custom_single_prompt:
        texts = [r.custom_prompt]
    else:
        raw = load_prompt_texts(
            r.prompt_data,
            r.prompt_data_probs,
            key=r.input_key,
            split=r.prompt_split,
            seed=config.optim.seed,
            max_samples=r.max_samples,
        )
        texts = format_prompts(raw, tokenizer, input_template=r.input_template, chat=r.apply_chat_template)
    return encode_prompts_left_truncated(tokenizer, texts, r.prompt_max_len)


def fit_to_positions(rollout: RolloutArgs, model_config, prompt_ids: list[list[int]]) -> RolloutArgs:
    """--generate_max_len lowered (and said) so that the longest prompt and its response fit the model's
    positions; a prompt that fills them is an error naming --prompt_max_len."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is None or not prompt_ids:
        return rollout
    longest = max(len(p) for p in prompt_ids)
    room = int(limit) - longest
    if room < 1:
        raise UserError(
            f"--prompt_max_len {rollout.prompt_max_len}: a {longest}-token prompt fills the model's {limit} positions"
        )
    if room >= rollout.generate_max_len:
        return rollout
    log.warning(
        "--generate_max_len %d capped to %d: the model has %d positions and the longest prompt %d tokens",
        rollout.generate_max_len,
        room,
        limit,
        longest,
    )
    return dataclasses.replace(rollout, generate_max_len=room)


def loop_settings(config: RLConfig, n_prompts: int) -> RLLoopSettings:
    lg = config.logging
    return RLLoopSettings(
        episodes=config.episodes,
        prompts_per_step=min(max(1, config.rollout.rollout_batch_size), n_prompts),
        fit_steps=config.ppo.fit_steps,
        logging_steps=lg.logging_steps,
        save_steps=config.save_steps,
        seed=config.optim.seed,
        eval_steps=lg.eval_steps,
        progress=not lg.disable_progress_bar,
    )


def batch_plan(config: RLConfig) -> BatchPlan:
    o = config.optim
    shuffle = config.mode == "ppo" and config.proposal.actor_loss_type == "ppo"
    return BatchPlan(o.micro_train_batch_size, o.train_batch_size, o.max_epochs, shuffle)


def warn_partial_steps(plan: BatchPlan, buffers: list[int]) -> None:
    """Say once when an experience buffer is not a whole number of --train_batch_size (its last step is smaller)."""
    odd = sorted({rows for rows in buffers if rows % plan.global_batch})
    if odd:
        log.warning(
            "experience buffers of %s sequences are not multiples of --train_batch_size %d: the last optimizer "
            "step of each such buffer takes the sequences left over",
            ", ".join(map(str, odd)),
            plan.global_batch,
        )


def trained(
    name: str, model, optim: PPOOptimArgs, lr: float, steps: int, eval_mode: bool, frozen: bool = False
) -> TrainedModel:
    """The model with AdamW at `lr` and the --lr_scheduler over `steps` optimizer steps (none when frozen)."""
    if frozen:
        return TrainedModel(name, model, max_norm=optim.max_norm, eval_mode=eval_mode)
    optimizer = build_optimizer(model, optim, lr=lr)
    scheduler = build_scheduler(optimizer, optim, steps)
    return TrainedModel(name, model, optimizer, scheduler, optim.max_norm, eval_mode)


def build_trainer(
    config: RLConfig,
    models: RLModels,
    tokenizer,
    guard: Guard,
    plan: BatchPlan,
    buffers: list[int],
    reward: RewardSource,
    remote_critic=None,
) -> RLTrainer:
    steps = sum(plan.steps_per_buffer(rows) for rows in buffers)  # optimizer steps of each model over the run
    if config.mode == "harmlessness":
        return build_harmlessness(config, models, tokenizer, guard, plan, steps, len(buffers), reward)
    o, eval_mode = config.optim, config.ppo.model_eval
    q_frozen = o.actor_learning_rate <= 0
    if config.mode == "twist":
        proposal = trained("proposal q", models.proposal, o, o.actor_learning_rate, steps, eval_mode, q_frozen)
        return TwistTrainer(
            proposal,
            models.reference,
            reward,
            tokenizer,
            config.sampling,
            config.potential,
            config.proposal.target_dist_beta,
            proposal_loss_spec(config),
            plan,
            guard,
            prompts_per_generation=config.rollout.micro_rollout_batch_size,
        )
    return build_ppo(config, models, tokenizer, guard, plan, steps, reward, remote_critic)


def proposal_loss_spec(config: RLConfig) -> ProposalLoss:
    p = config.proposal
    return ProposalLoss(p.actor_loss_type, p.parameterization, config.rollout.duplicate_rollout_batch_by)


def build_harmlessness(
    config: RLConfig, models: RLModels, tokenizer, guard: Guard, plan: BatchPlan, steps: int, n_steps: int, reward
) -> HarmlessnessTrainer:
    o, h, eval_mode = config.optim, config.harm, config.ppo.model_eval
    policy = trained("p_theta", models.policy, o, o.base_actor_learning_rate, steps, eval_mode)
    proposal = None
    if models.proposal is not None:
        # q updates --num_episodes times per step (the extra rounds draw buffers of the same size).
        q_steps = steps * config.rollout.num_episodes
        frozen = o.actor_learning_rate <= 0
        proposal = trained("proposal q", models.proposal, o, o.actor_learning_rate, q_steps, eval_mode, frozen)
    beta = config.proposal.target_dist_beta
    annealing = Annealing(
        beta=beta if beta is not None else 1.0,
        alpha=h.alpha,
        total_steps=n_steps,
        start_beta=h.start_target_dist_beta if h.anneal_target_dist_beta else None,
        start_alpha=h.start_alpha,
    )
    settings = HarmlessnessSettings(
        group_size=config.rollout.duplicate_rollout_batch_by,
        loss_type=h.harmlessness_training_loss_type,
        baseline_type=config.ppo.reinforce_baseline_type,
        hardcoded_baseline=config.ppo.reinforce_hardcoded_baseline,
        neg_baseline_type=h.neg_baseline_type,
        neg_hardcoded_baseline=h.neg_hardcoded_baseline,
        uniform_reweight=h.uniform_reweight,
        reweighting_beta=h.separate_reweighting_beta,
        kl_coef=config.ppo.init_kl_coef,
        num_q_updates=config.rollout.num_episodes,
        separate_proposal=config.separate_proposal,
        update_base_first=h.sampling_target_updated_base,
        prompts_per_generation=config.rollout.micro_rollout_batch_size,
    )
    return HarmlessnessTrainer(
        policy,
        proposal,
        models.reference,
        reward,
        tokenizer,
        sampling=config.sampling,
        shaping=config.shaping,
        potential=config.potential,
        annealing=annealing,
        proposal_loss_spec=proposal_loss_spec(config) if proposal is not None else None,
        settings=settings,
        plan=plan,
        guard=guard,
    )


def critic_of(config: RLConfig, model, guard: Guard, steps: int) -> Critic:
    """PPO's critic: the value model with AdamW at --critic_learning_rate over the run's `steps` optimizer steps."""
    o = config.optim
    trained_critic = trained("critic", model, o, o.critic_learning_rate, steps, config.ppo.model_eval)
    return Critic(trained_critic, guard, config.reward.value_head_prefix, config.ppo.value_clip)


def build_ppo(
    config: RLConfig,
    models: RLModels,
    tokenizer,
    guard: Guard,
    plan: BatchPlan,
    steps: int,
    reward,
    remote_critic=None,
) -> PPOTrainer:
    o, p, eval_mode = config.optim, config.ppo, config.ppo.model_eval
    actor = trained("actor", models.policy, o, o.actor_learning_rate, steps, eval_mode)
    critic = critic_of(config, models.critic, guard, steps) if models.critic is not None else None
    if remote_critic is not None:  # held by another process, which builds the same critic_of there
        critic = remote_critic.prepare(steps)
    kl = AdaptiveKLController(p.init_kl_coef, p.kl_target, p.kl_horizon) if p.kl_target is not None else None
    settings = PPOSettings(
        group_size=config.rollout.duplicate_rollout_batch_by,
        loss_type=config.proposal.actor_loss_type,
        eps_clip=p.eps_clip,
        gamma=p.gamma,
        lambd=p.lambd,
        baseline_type=p.reinforce_baseline_type,
        hardcoded_baseline=p.reinforce_hardcoded_baseline,
        freezing_actor_steps=p.freezing_actor_steps,
        ptx_coef=p.ptx_coef if p.pretrain_data else 0.0,
        ema_beta=p.ema_beta if p.enable_ema else None,
        prompts_per_generation=config.rollout.micro_rollout_batch_size,
    )
    return PPOTrainer(
        actor,
        models.reference,
        reward,
        tokenizer,
        kl or FixedKLController(p.init_kl_coef),
        config.sampling,
        config.shaping,
        settings,
        plan,
        guard,
        critic=critic,
        ema=models.ema,
        ptx_batches=ptx_batches(config, tokenizer, guard.strategy.device) if p.pretrain_data else None,
    )


def ptx_batches(config: RLConfig, tokenizer, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of pre-training batches (full-sequence LM loss) for the PPO-ptx term."""
    from repulse.data.collate import PadCollator
    from repulse.data.loading import blend_datasets
    from repulse.data.sft import SFTDataset

    key, names = config.ppo.pretrain_input_key, config.ppo.pretrain_data.split(",")
    rows = blend_datasets(names, [1.0 / len(names)] * len(names), [key], seed=config.optim.seed)
    data = SFTDataset(
        rows, tokenizer, config.rollout.prompt_max_len, input_key=key, output_key=None, pretrain_mode=True
    )
    collate, size = PadCollator(tokenizer.pad_token_id), config.optim.micro_train_batch_size
    gen = torch.Generator().manual_seed(config.optim.seed)
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for i in range(0, len(order), size):
            batch = collate([data[j] for j in order[i : i + size]])
            yield {k: v.to(device) for k, v in batch.items()}
