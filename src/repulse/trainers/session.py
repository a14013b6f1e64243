"""Assemble a training run from its parts (optimizer, schedule, loaders, logger, checkpointer) and fit it."""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset

from repulse.config.common import CheckpointArgs, LoggingArgs, OptimArgs
from repulse.distributed.strategy import OptimizerSpec
from repulse.infra.checkpoint import Checkpointer
from repulse.infra.errors import DataError
from repulse.infra.metrics import MetricLogger
from repulse.trainers.checkpointing import run_fingerprint
from repulse.trainers.loop import LoopSchedule, Trainable, TrainingRun, resume, run_training_loop
from repulse.trainers.optim import build_optimizer, build_scheduler

log = logging.getLogger("repulse")


def build_run(
    trainer: Trainable,
    strategy: Any,
    train_set: Dataset,
    collate: Any,
    *,
    optim: OptimArgs,
    ckpt: CheckpointArgs,
    logging_args: LoggingArgs,
    eval_set: Dataset | None = None,
    config: dict[str, Any] | None = None,
    command: str | None = None,
    checkpoint_extra: Any = None,
    write_config: Any = None,
) -> TrainingRun:
    """The run, resumed when --load_checkpoint says so. The checkpoint folder is checked first, so a run that
    cannot use it (another run's checkpoints) is refused before `write_config()` or the logger write anything."""
    fingerprint = run_fingerprint(command, config) if config is not None else None
    checkpointer = Checkpointer(ckpt.checkpoint_dir(), ckpt.max_ckpt_num, strategy, fingerprint)
    checkpointer.start(resume=ckpt.load_checkpoint)
    if write_config is not None:
        write_config()
    accum = optim.accumulation_steps(strategy.world_size)
    loader = strategy.train_dataloader(train_set, optim.micro_train_batch_size, accum, collate, optim.seed)
    steps_per_epoch = loader.batch_sampler.steps_per_epoch
    if steps_per_epoch == 0:
        raise DataError(
            f"training data has {len(train_set)} examples, fewer than one "
            f"--train_batch_size ({optim.train_batch_size})"
        )
    optimizer, scheduler = prepare_trainer(trainer, strategy, optim, accum, steps_per_epoch * optim.max_epochs)
    eval_loader = None
    if eval_set is not None:
        eval_loader = strategy.eval_dataloader(eval_set, optim.micro_train_batch_size, collate)
    schedule = make_schedule(optim, ckpt, logging_args, accum)
    run = TrainingRun(
        trainer,
        strategy,
        optimizer,
        scheduler,
        loader,
        schedule,
        MetricLogger(ckpt.save_path, enabled=False),
        checkpointer,
        eval_loader,
        checkpoint_extra=checkpoint_extra,
    )
    if ckpt.load_checkpoint:
        resume(run)
    run.logger = make_logger(
        strategy, ckpt, logging_args, config, resumed=ckpt.load_checkpoint, step=run.state.global_step
    )
    log.info(
        "training: %d examples, %d steps/epoch x %d epochs, global batch %d (micro %d x accumulation %d x %d procs)",
        *(len(train_set), steps_per_epoch, optim.max_epochs, optim.train_batch_size),
        *(optim.micro_train_batch_size, accum, strategy.world_size),
    )
    return run


def prepare_trainer(trainer: Trainable, strategy: Any, optim: OptimArgs, accum: int, total_steps: int) -> tuple:
    """(optimizer, scheduler), built by the strategy with its model; the trainer gets the model the strategy
    runs (DDP-wrapped, a DeepSpeed engine, or sharded in place by FSDP2)."""
    spec = OptimizerSpec(
        build_optimizer=lambda model: build_optimizer(model, optim),
        build_scheduler=lambda optimizer: build_scheduler(optimizer, optim, total_steps),
        micro_batch_size=optim.micro_train_batch_size,
        accumulation_steps=accum,
        max_norm=optim.max_norm,
    )
    trainer.model, optimizer, scheduler = strategy.prepare_train(trainer.model, spec)
    return optimizer, scheduler


def make_schedule(optim: OptimArgs, ckpt: CheckpointArgs, logging_args: LoggingArgs, accum: int) -> LoopSchedule:
    return LoopSchedule(
        max_epochs=optim.max_epochs,
        accumulation_steps=accum,
        logging_steps=logging_args.logging_steps,
        eval_steps=logging_args.eval_steps,
        save_steps=ckpt.save_steps,
        max_norm=optim.max_norm,
        progress=not logging_args.disable_progress_bar,
    )


def make_logger(
    strategy: Any, ckpt: CheckpointArgs, logging_args: LoggingArgs, config: dict | None, *, resumed: bool, step: int
) -> MetricLogger:
    return MetricLogger(
        ckpt.save_path,
        enabled=strategy.is_rank_0(),
        tensorboard_dir=logging_args.use_tensorboard,
        wandb=logging_args.use_wandb,
        wandb_project=logging_args.wandb_project,
        wandb_run_name=logging_args.wandb_run_name,
        config=config,
        resume_step=step if resumed else None,
    )


def fit(run: TrainingRun) -> None:
    try:
        run_training_loop(run)
    finally:
        run.logger.close()
