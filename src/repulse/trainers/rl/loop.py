"""The RL loop: fit steps x episodes x prompt batches; each step drives a trainer through its three phases
(make_experience, update, report), then logging, evaluations and checkpoints.

The supervised loop (trainers/loop.py) iterates a dataset in global batches; RL steps instead make their own
data, so this is the loop for train_ppo. On N processes each step's prompt batch (--rollout_batch_size prompts)
is cut into N equal contiguous shares, one per rank (the fork's rollout_batch_size = world x
micro_rollout_batch_size geometry); each rank samples, scores and trains on its share, the strategy reduces the
gradients, and the step's metrics are averaged over the ranks (sample counts summed). It shares the non-finite
guard (trainers/guard.py) and the checkpoint functions (trainers/checkpointing.py) with the supervised loop. The
step schedule is fixed (seeded prompt order per fit and episode), so a resumed run finds its place by counting
steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from repulse.infra.metrics import MetricLogger
from repulse.trainers.guard import Guard
from repulse.trainers.rl.steps import Metrics, Progress, Streams

log = logging.getLogger("repulse")


class RLTrainer(Protocol):
    """The phases a controller calls (here one process; later remote workers): per step, for each round kind,
    make_experience then update; then report. State for checkpoints: state_dict / load_state_dict."""

    progress: Progress
    streams: Streams

    def rounds(self) -> tuple[str, ...]: ...
    def samples_per_prompt(self) -> int: ...
    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str) -> Any: ...
    def update(self, experience: Any) -> Metrics: ...
    def report(self, experience: Any, updates: list[Metrics]) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RLLoopSettings:
    episodes: int = 1
    prompts_per_step: int = 1
    fit_steps: int = 1
    logging_steps: int = 1
    save_steps: int = -1
    eval_steps: int = -1
    seed: int = 0
    progress: bool = True


@dataclass
class RLLoopState:
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: str | None = None


def prompt_batches(n_prompts: int, per_step: int, seed: int) -> list[list[int]]:
    """A seeded shuffle of the prompt indices cut into steps (a partial last batch is kept)."""
    order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + per_step] for i in range(0, n_prompts, per_step)]


def schedule(n_prompts: int, settings: RLLoopSettings) -> Iterator[tuple[int, int, list[int], bool]]:
    """(fit, episode, prompt batch, last step of the fit) for every step, in order; the same on every run."""
    for fit in range(settings.fit_steps):
        for episode in range(settings.episodes):
            batches = prompt_batches(n_prompts, settings.prompts_per_step, settings.seed + 7919 * fit + episode)
            for i, batch in enumerate(batches):
                yield fit, episode, batch, episode == settings.episodes - 1 and i == len(batches) - 1


def rank_share(batch: list[int], rank: int, world: int) -> tuple[list[int], int]:
    """(this rank's prompts of a step's batch, the position of its first in the batch): equal contiguous shares,
    a batch that does not divide evenly padded by repeating its first prompts (as torch's DistributedSampler
    does; with --new_custom_single_prompt every rank samples the one prompt)."""
    share = -(-len(batch) // world)
    padded = (batch * world)[: share * world]
    return padded[rank * share : (rank + 1) * share], rank * share


SUMMED = ("samples_used",)


def reduce_metrics(strategy, metrics: dict[str, float]) -> dict[str, float]:
    """A step's metrics over the ranks: means (every rank has as many samples), sample counts summed."""
    if strategy is None or strategy.world_size == 1:
        return metrics
    summed = {k: v for k, v in metrics.items() if k in SUMMED}
    averaged = {k: v for k, v in metrics.items() if k not in SUMMED}
    return {**strategy.all_reduce(averaged), **strategy.all_reduce(summed, op="sum")}


def lock_step(strategy) -> Callable[[bool], bool] | None:
    """Where a forward is a collective (ZeRO-3, FSDP2), sampling ranks keep stepping until all are done."""
    if strategy is None or strategy.world_size == 1 or not getattr(strategy, "forward_collectives", False):
        return None
    return lambda done: strategy.all_reduce({"running": 0.0 if done else 1.0}, op="max")["running"] > 0


def train_step(trainer: RLTrainer, prompt_ids: list[list[int]], step: int) -> dict[str, float]:
    """One RL step (0-based `step`) through the trainer's phases; its metrics."""
    updates, experience = [], None
    for kind in trainer.rounds():
        experience = trainer.make_experience(prompt_ids, step, kind)
        updates.append(trainer.update(experience))
    return trainer.report(experience, updates)


class SampleBar(Progress):
    """The progress bar of a run, in samples drawn (p's and q's), with the phase and the last reward."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(
            total=total, initial=initial, unit="sample", desc="rl", disable=not enabled, dynamic_ncols=True
        )
        self.last, self.shown = "", time.monotonic()

    def sampled(self, rows: int) -> None:
        self.bar.update(rows)

    def phase(self, name: str) -> None:
        """Shown at once while no samples move the bar (updates), at most twice a second."""
        self.bar.set_postfix_str(f"{name}{self.last}", refresh=False)
        if time.monotonic() - self.shown > 0.5:
            self.bar.refresh()
            self.shown = time.monotonic()

    def finished_step(self, metrics: dict[str, float]) -> None:
        self.last = f", reward {metrics['reward_mean']:.3f}" if "reward_mean" in metrics else ""

    def close(self) -> None:
        self.bar.close()


def run_rl_loop(
    trainer: RLTrainer,
    prompt_ids: list[list[int]],
    settings: RLLoopSettings,
    logger: MetricLogger,
    guard: Guard,
    *,
    evaluate: Callable[[int, int], dict[str, Any]] | None = None,
    save: Callable[[RLLoopState], str] | None = None,
    state: RLLoopState | None = None,
) -> RLLoopState:
    """Run the steps after state.global_step (0, or a resumed checkpoint's step). `evaluate(fit_step, step)`
    (fit steps and RL steps done) runs before training, every --eval_steps steps and after every fit step."""
    state = state or RLLoopState()
    steps = list(schedule(len(prompt_ids), settings))
    per_prompt = trainer.samples_per_prompt()
    strategy = guard.strategy  # None: a controller whose workers hold the strategy (train_ppo_ray), one rank
    rank, world = (strategy.rank, strategy.world_size) if strategy is not None else (0, 1)
    drawn = [len(rank_share(batch, 0, world)[0]) * per_prompt for _, _, batch, _ in steps]
    bar = SampleBar(sum(drawn), sum(drawn[: state.global_step]), settings.progress and rank == 0)
    trainer.progress = bar
    trainer.streams = Streams(settings.seed, others_running=lock_step(strategy))
    if evaluate is not None and state.global_step == 0:
        record_evaluation(state, evaluate(0, 0), logger)
    for n, (fit, episode, batch, fit_end) in enumerate(steps, start=1):
        if n <= state.global_step:
            continue
        guard.step, guard.last_checkpoint = n, state.last_checkpoint
        mine, trainer.streams.first_prompt = rank_share(batch, rank, world)
        metrics = reduce_metrics(strategy, train_step(trainer, [prompt_ids[i] for i in mine], n - 1))
        bar.finished_step(metrics)
        state.global_step = n
        state.history.append({"step": n, **metrics})
        if n % settings.logging_steps == 0:
            logger.log(n, {**metrics, "fit_step": fit + 1, "episode": episode + 1})
        if evaluate is not None and settings.eval_steps > 0 and n % settings.eval_steps == 0:
            record_evaluation(state, evaluate(fit, n), logger)
        if evaluate is not None and fit_end:
            record_evaluation(state, evaluate(fit + 1, n), logger)
        # Saved last, so a checkpoint at step n holds everything logged at step n (resume keeps rows <= n).
        if save is not None and settings.save_steps > 0 and n % settings.save_steps == 0:
            state.last_checkpoint = save(state)
    bar.close()
    return state


def record_evaluation(state: RLLoopState, result: dict[str, Any], logger: MetricLogger) -> None:
    result = {"step": state.global_step, **result}
    state.evaluations.append(result)
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and k != "step"}
    logger.log(state.global_step, numbers)
    log.info("evaluation at step %d: %s", state.global_step, " ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
