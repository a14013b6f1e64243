"""Build one train_ppo run from its typed config: reward source, models, prompts, step schedule, optimizers, and
the trainer of its mode (PPO / REINFORCE, twist learning, harmlessness training)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from repulse.config.rollout import RolloutArgs
from repulse.data.prompts import format_prompts, load_prompt_texts
from repulse.distributed.strategy import OptimizerSpec
from repulse.generation.batch import gather_objects
from repulse.infra.errors import UserError
from repulse.infra.seed import set_seed
from repulse.models.load import model_positions
from repulse.rl.kl import AdaptiveKLController, FixedKLController
from repulse.rl.rewards import NegativeDataRecorder, RewardSource, make_reward_source
from repulse.rl.rollout import encode_prompts_left_truncated
from repulse.trainers.guard import Guard
from repulse.trainers.optim import build_optimizer, build_scheduler
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.harmlessness import Annealing, HarmlessnessSettings, HarmlessnessTrainer
from repulse.trainers.rl.loop import RLLoopSettings, RLTrainer, rank_share, schedule
from repulse.trainers.rl.models import RLModels, load_models
from repulse.trainers.rl.ppo import Critic, PPOSettings, PPOTrainer
from repulse.trainers.rl.proposal import ProposalLoss
from repulse.trainers.rl.steps import BatchPlan, Streams, TrainedModel
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
    # --save_negdata records what the trainers score (every rank's rows, in rank order); the evaluations score
    # through the plain source.
    recorder = None
    if config.harm.save_negdata:
        gather = (lambda rows: gather_objects(strategy, rows)) if strategy.world_size > 1 else None
        recorder = NegativeDataRecorder(reward, config.harm.save_negdata_threshold, gather)
    prompt_ids = load_prompt_ids(config, tokenizer)
    config = config._replace(rollout=fit_to_positions(config.rollout, model_positions(path), prompt_ids))
    settings = loop_settings(config, len(prompt_ids))
    world = strategy.world_size
    # Each rank's experience buffers: its share of every step's prompts (trainers/rl/loop.py rank_share).
    buffers = [
        len(rank_share(batch, 0, world)[0]) * config.rollout.duplicate_rollout_batch_by
        for *_, batch, _ in schedule(len(prompt_ids), settings)
    ]
    plan = batch_plan(config, world)
    warn_partial_steps(plan, buffers, world)
    steps = sum(plan.steps_per_buffer(rows) for rows in buffers)  # optimizer steps of each model over the run
    preparer = StrategyPreparer(config, strategy, plan, steps)
    models = load_models(config, path, strategy, reward, preparer, reference=remote.reference if remote else None)
    # Whichever models this process loaded (a critic's new value head draws from the seed), the run goes on from
    # the seed, as it does when the models are spread over processes.
    set_seed(config.optim.seed)
    guard = Guard(strategy)
    remote_critic = remote.critic.prepare(steps) if remote and remote.critic is not None else None
    trainer = build_trainer(config, models, tokenizer, guard, plan, len(buffers), recorder or reward, remote_critic)
    trainer.streams = Streams(config.optim.seed)  # seeded sampling wherever the phases are called from
    return Recipe(config, models, trainer, prompt_ids, settings, guard, recorder)


@dataclass
class StrategyPreparer:
    """Hands each trained model to strategy.prepare_train with AdamW at its role's learning rate and the
    --lr_scheduler over its optimizer steps (q in harmlessness training steps --num_episodes times per step), and
    each frozen one to prepare_frozen."""

    config: RLConfig
    strategy: Any
    plan: BatchPlan
    steps: int

    def train(self, model: torch.nn.Module, role: str) -> tuple[torch.nn.Module, Any, Any]:
        o, mode = self.config.optim, self.config.mode
        lr = {"policy": o.base_actor_learning_rate if mode == "harmlessness" else o.actor_learning_rate}
        lr |= {"proposal": o.actor_learning_rate, "critic": o.critic_learning_rate}
        steps = self.steps
        if role == "proposal" and mode == "harmlessness":
            steps *= self.config.rollout.num_episodes  # the extra rounds draw buffers of the same size
        spec = OptimizerSpec(
            build_optimizer=lambda m: build_optimizer(m, o, lr=lr[role]),
            build_scheduler=lambda opt: build_scheduler(opt, o, steps),
            micro_batch_size=self.plan.micro_batch,
            accumulation_steps=self.plan.global_batch // self.plan.micro_batch,
            max_norm=o.max_norm,
        )
        return self.strategy.prepare_train(model, spec)

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.strategy.prepare_frozen(model)


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


def fit_to_positions(rollout: RolloutArgs, limit: int | None, prompt_ids: list[list[int]]) -> RolloutArgs:
    """--generate_max_len lowered (and said) so that the longest prompt and its response fit the model's `limit`
    positions; a prompt that fills them is an error naming --prompt_max_len."""
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


def batch_plan(config: RLConfig, world: int = 1) -> BatchPlan:
    """Each rank's plan: --train_batch_size sequences per optimizer step over all ranks (the fork's DeepSpeed
    geometry), so each rank steps on its share of train_batch_size / world rows; the strategy averages."""
    o = config.optim
    shuffle = config.mode == "ppo" and config.proposal.actor_loss_type == "ppo"
    if o.train_batch_size % (o.micro_train_batch_size * world):
        raise UserError(
            f"--train_batch_size {o.train_batch_size} must be a multiple of --micro_train_batch_size "
            f"{o.micro_train_batch_size} x {world} processes (each process steps on its share of the batch)"
        )
    return BatchPlan(o.micro_train_batch_size, o.train_batch_size // world, o.max_epochs, shuffle)


def warn_partial_steps(plan: BatchPlan, buffers: list[int], world: int = 1) -> None:
    """Say once when a process's experience buffer is not a whole number of its share of --train_batch_size (its
    last step is smaller)."""
    odd = sorted({rows for rows in buffers if rows % plan.global_batch})
    if odd:
        share = f" (each of {world} processes: {plan.global_batch})" if world > 1 else ""
        log.warning(
            "experience buffers of %s sequences are not multiples of --train_batch_size %d%s: the last optimizer "
            "step of each such buffer takes the sequences left over",
            ", ".join(map(str, odd)),
            plan.global_batch * world,
            share,
        )


def trained(name: str, models: RLModels, role: str, config: RLConfig, guard: Guard) -> TrainedModel:
    """The model of `role` with the optimizer and schedule the strategy built for it (none when frozen)."""
    optimizer, scheduler = models.optimizers.get(role, (None, None))
    sharded = guard.strategy.kind != "replicated"
    model = getattr(models, role)
    return TrainedModel(name, model, optimizer, scheduler, config.optim.max_norm, config.ppo.model_eval, sharded)


def build_trainer(
    config: RLConfig,
    models: RLModels,
    tokenizer,
    guard: Guard,
    plan: BatchPlan,
    n_steps: int,
    reward: RewardSource,
    remote_critic=None,
) -> RLTrainer:
    if config.mode == "harmlessness":
        return build_harmlessness(config, models, tokenizer, guard, plan, n_steps, reward)
    if config.mode == "twist":
        proposal = trained("proposal q", models, "proposal", config, guard)
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
    return build_ppo(config, models, tokenizer, guard, plan, reward, remote_critic)


def proposal_loss_spec(config: RLConfig) -> ProposalLoss:
    p = config.proposal
    return ProposalLoss(p.actor_loss_type, p.parameterization, config.rollout.duplicate_rollout_batch_by)


def build_harmlessness(
    config: RLConfig, models: RLModels, tokenizer, guard: Guard, plan: BatchPlan, n_steps: int, reward
) -> HarmlessnessTrainer:
    h = config.harm
    policy = trained("p_theta", models, "policy", config, guard)
    proposal = None
    if models.proposal is not None:
        proposal = trained("proposal q", models, "proposal", config, guard)
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


def critic_of(config: RLConfig, model, guard: Guard, steps: int, strategy) -> Critic:
    """PPO's critic in a train_ppo_ray worker (a rank of the critic group): the value model prepared by the
    group's strategy with AdamW at --critic_learning_rate over the run's `steps` optimizer steps, as train_ppo's
    load_models prepares its critic (each rank steps on its share of --train_batch_size)."""
    preparer = StrategyPreparer(config, strategy, batch_plan(config, strategy.world_size), steps)
    model, optimizer, scheduler = preparer.train(model, "critic")
    o = config.optim
    trained_critic = TrainedModel("critic", model, optimizer, scheduler, o.max_norm, config.ppo.model_eval)
    return Critic(trained_critic, guard, config.reward.value_head_prefix, config.ppo.value_clip)


def build_ppo(
    config: RLConfig, models: RLModels, tokenizer, guard: Guard, plan: BatchPlan, reward, remote_critic=None
) -> PPOTrainer:
    p = config.ppo
    actor = trained("actor", models, "policy", config, guard)
    critic = remote_critic  # held by another process (train_ppo_ray), which builds critic_of there
    if models.critic is not None:
        trained_critic = trained("critic", models, "critic", config, guard)
        critic = Critic(trained_critic, guard, config.reward.value_head_prefix, p.value_clip)
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
        ptx_batches=ptx_batches(config, tokenizer, guard.strategy) if p.pretrain_data else None,
    )


def ptx_batches(config: RLConfig, tokenizer, strategy) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of pre-training batches (full-sequence LM loss) for the PPO-ptx term; on N
    processes rank r takes batches r, r + N, ... of the one seeded order."""
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
    rank, world, n = strategy.rank, strategy.world_size, 0
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for i in range(0, len(order), size):
            n += 1
            if (n - 1) % world == rank:
                batch = collate([data[j] for j in order[i : i + size]])
                yield {k: v.to(strategy.device) for k, v in batch.items()}
