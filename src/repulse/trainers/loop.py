"""The one training loop: epochs, gradient accumulation, resume, logging/eval/save cadence, NaN guard.

Trainers supply `training_step(batch) -> (loss, metrics)` (loss = mean over the micro-batch) and
`evaluate(loader) -> metrics`. The loop divides the loss by the accumulation steps, so a global batch gives
the same gradient whether it is split into micro-batches on one process or spread over several.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from repulse.infra.checkpoint import Checkpointer
from repulse.infra.errors import UserError
from repulse.infra.metrics import MetricLogger
from repulse.trainers import guard

log = logging.getLogger("repulse")


class Trainable(Protocol):
    model: torch.nn.Module

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, loader: Any) -> dict[str, float]: ...


@dataclass
class LoopSchedule:
    max_epochs: int
    accumulation_steps: int
    logging_steps: int = 1
    eval_steps: int = -1
    save_steps: int = -1
    max_norm: float = 1.0
    progress: bool = True


@dataclass
class LoopState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    consumed_samples: int = 0
    last_checkpoint: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainingRun:
    trainer: Trainable
    strategy: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    schedule: LoopSchedule
    logger: MetricLogger
    checkpointer: Checkpointer | None = None
    eval_loader: Any = None
    state: LoopState = field(default_factory=LoopState)
    on_step: Callable[[LoopState], None] | None = None
    # Writes more into each checkpoint (--save_hf_ckpt: the model in Hugging Face format). Called on every rank
    # with a folder they share, since gathering a sharded model takes every rank.
    checkpoint_extra: Callable[[Any], None] | None = None


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


LOOP_KEYS = ("epoch", "step_in_epoch", "global_step", "consumed_samples")


def resume(run: TrainingRun) -> None:
    """Restore weights, optimizer, scheduler, RNG and data position from the newest checkpoint."""
    path = run.checkpointer.latest() if run.checkpointer else None
    if path is None:
        log.info("--load_checkpoint: no checkpoint found, starting from scratch")
        return
    saved = run.checkpointer.load(path)
    # The weights and optimizer: from the data files (replicated strategies) or the strategy's own shards.
    run.strategy.load_training_state(run.trainer.model, run.optimizer, run.scheduler, saved, path)
    loop = saved.get("loop") if isinstance(saved.get("loop"), dict) else {}
    missing = [f"loop.{k}" for k in LOOP_KEYS if k not in loop]
    if missing:
        raise UserError(f"--load_checkpoint: {path} is not a checkpoint of this command (it lacks {missing})")
    run.state = LoopState(**{k: loop[k] for k in LOOP_KEYS})
    run.state.last_checkpoint = str(path)
    log.info("resumed from %s (step %d, epoch %d)", path, run.state.global_step, run.state.epoch + 1)


def save_checkpoint(run: TrainingRun) -> None:
    if run.checkpointer is None:
        return
    st, model = run.state, run.trainer.model
    state = {
        **run.strategy.training_state(model, run.optimizer, run.scheduler),
        "loop": {k: getattr(st, k) for k in LOOP_KEYS},
    }

    def collective(folder: Any) -> None:  # every rank: a sharded strategy's files, the --save_hf_ckpt copy
        run.strategy.save_shards(model, run.optimizer, folder)
        if run.checkpoint_extra is not None:
            run.checkpoint_extra(folder)

    st.last_checkpoint = str(run.checkpointer.save(st.global_step, state, collective=collective))


def check_finite(run: TrainingRun, loss: torch.Tensor) -> None:
    st = run.state
    guard.check_finite(run.strategy, loss, what="loss", where=where(run), last_checkpoint=st.last_checkpoint)


def where(run: TrainingRun) -> str:
    return f"optimizer step {run.state.global_step + 1} (epoch {run.state.epoch + 1})"


def run_evaluation(run: TrainingRun) -> dict[str, float]:
    model = run.trainer.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = run.strategy.all_reduce(run.trainer.evaluate(run.eval_loader))
    model.train(was_training)
    run.logger.log(run.state.global_step, metrics, prefix="eval_")
    log.info("eval at step %d: %s", run.state.global_step, format_metrics(metrics))
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def average_micro_metrics(micro_metrics: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the micro-batches of one step; NaN entries (nothing to measure in that
    micro-batch, e.g. no rejected rows) are skipped, and a metric that none measured stays NaN."""
    out = {}
    for key in micro_metrics[0]:
        values = [m[key] for m in micro_metrics if not math.isnan(m[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def finish_optimizer_step(run: TrainingRun, micro_metrics: list[dict[str, float]], bar: Any) -> None:
    sched, st = run.schedule, run.state
    grad_norm = guard.guarded_optimizer_step(
        run.strategy,
        run.optimizer,
        run.trainer.model,
        run.scheduler,
        sched.max_norm,
        what="model",
        where=where(run),
        last_checkpoint=st.last_checkpoint,
    )
    st.global_step += 1
    st.step_in_epoch += 1
    st.consumed_samples += run.train_loader.batch_sampler.global_batch_size
    metrics = average_micro_metrics(micro_metrics)
    metrics.update(grad_norm=grad_norm, lr=run.optimizer.param_groups[0]["lr"])
    metrics = run.strategy.all_reduce(metrics)
    st.history.append({"step": st.global_step, **metrics})
    bar.update(1)
    if st.global_step % sched.logging_steps == 0:
        run.logger.log(st.global_step, {**metrics, "epoch": st.epoch + 1, "consumed_samples": st.consumed_samples})
        bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
    if run.eval_loader is not None and sched.eval_steps > 0 and st.global_step % sched.eval_steps == 0:
        run_evaluation(run)
    if sched.save_steps > 0 and st.global_step % sched.save_steps == 0:
        save_checkpoint(run)
    if run.on_step is not None:
        run.on_step(st)


def train_epoch(run: TrainingRun, bar: Any) -> None:
    sched, model = run.schedule, run.trainer.model
    micro_metrics: list[dict[str, float]] = []
    for i, batch in enumerate(run.train_loader):
        boundary = (i + 1) % sched.accumulation_steps == 0
        sync = contextlib.nullcontext() if boundary else run.strategy.no_sync(model)
        with sync:
            loss, metrics = run.trainer.training_step(move_to(batch, run.strategy.device))
            check_finite(run, loss)
            run.strategy.backward(loss / sched.accumulation_steps, model)
        micro_metrics.append(metrics)
        if boundary:
            finish_optimizer_step(run, micro_metrics, bar)
            micro_metrics = []


def run_training_loop(run: TrainingRun) -> LoopState:
    """Train for schedule.max_epochs from wherever run.state says (0, or a resumed checkpoint)."""
    sampler = run.train_loader.batch_sampler
    total = sampler.steps_per_epoch * run.schedule.max_epochs
    disable = not (run.schedule.progress and run.strategy.is_rank_0())
    bar = tqdm(total=total, initial=run.state.global_step, desc="train", disable=disable, dynamic_ncols=True)
    run.trainer.model.train()
    for epoch in range(run.state.epoch, run.schedule.max_epochs):
        if epoch != run.state.epoch:
            run.state.step_in_epoch = 0
        run.state.epoch = epoch
        sampler.set_epoch(epoch, run.state.step_in_epoch)
        train_epoch(run, bar)
        if run.eval_loader is not None and run.schedule.eval_steps <= 0:
            run_evaluation(run)
    run.state.epoch = run.schedule.max_epochs
    run.state.step_in_epoch = 0
    bar.close()
    saved_last = run.state.last_checkpoint and run.state.last_checkpoint.endswith(f"step{run.state.global_step}")
    if run.checkpointer is not None and run.schedule.save_steps > 0 and not saved_last:
        save_checkpoint(run)
    return run.state
