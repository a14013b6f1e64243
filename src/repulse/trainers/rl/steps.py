"""How an RL update phase turns an experience buffer into optimizer steps: the fork's batch semantics.

`--train_batch_size` is the number of sequences per optimizer step and `--micro_train_batch_size` the number per
forward/backward pass, as in OpenRLHF under DeepSpeed. Each epoch (`--max_epochs`) cuts the buffer into optimizer
steps of train_batch_size rows and each step into micro-batches; every micro-batch's loss (a mean over its rows)
is scaled by its share of the step's rows before backward, and each model steps (clipping, scheduler) once per
optimizer step. So micro-batches of M rows with train_batch_size = 4M give the gradient of one pass over 4M rows.

Departure from the fork: a step never spans two experience buffers. When a buffer is not a whole number of
global batches, its last step takes the rows that are left (the run's log says so once); the fork would carry
the gradient into the next buffer (or, with a partial micro-batch, drop the rows).

A distributed strategy applies the same plan to each rank's share: it must not rescale the loss again (DeepSpeed:
backward with scale_wrt_gas off) and steps when the trainer says so.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from repulse.generation.generate import SamplingParams, stream_seed
from repulse.infra.checkpoint import load_optional_state, optional_state
from repulse.rl.rollout import Rollout, sample_rollout
from repulse.trainers.guard import Guard


@dataclass
class TrainedModel:
    """A model an RL trainer updates, with its optimizer and schedule (None when its learning rate is 0), the
    clipping norm, and `eval_mode` (--model_eval: update passes without dropout). `name` appears in messages."""

    name: str
    model: torch.nn.Module
    optimizer: Any = None
    scheduler: Any = None
    max_norm: float = 1.0
    eval_mode: bool = False
    # Under a sharded strategy (DeepSpeed, FSDP2) the run's checkpoint takes the optimizer and schedule from the
    # strategy (training_state, save_shards), not from here.
    sharded: bool = False

    @property
    def trains(self) -> bool:
        return self.optimizer is not None

    def start_update(self) -> None:
        self.model.train(not self.eval_mode)

    def state_dict(self) -> dict[str, Any]:
        if self.sharded:
            return {"optimizer": None, "scheduler": None}
        return {"optimizer": optional_state(self.optimizer), "scheduler": optional_state(self.scheduler)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_optional_state(self.optimizer, state["optimizer"])
        load_optional_state(self.scheduler, state["scheduler"])


class MicroStep(NamedTuple):
    rows: torch.Tensor  # buffer rows of this micro-batch
    weight: float  # its share of the optimizer step's rows: the factor on its loss
    boundary: bool  # the last micro-batch of its optimizer step: step the optimizers after it
    epoch: int


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    global_batch: int
    epochs: int = 1
    shuffle: bool = False  # PPO reshuffles the buffer every epoch; group-wise losses keep prompt groups together

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.global_batch % self.micro_batch:
            raise ValueError(f"global batch {self.global_batch} is not a multiple of micro-batch {self.micro_batch}")

    def steps_per_buffer(self, n_rows: int) -> int:
        """Optimizer steps for a buffer of n_rows (every epoch included)."""
        return self.epochs * math.ceil(n_rows / self.global_batch)

    def micro_steps(self, n_rows: int, progress: Progress | None = None) -> Iterator[MicroStep]:
        """Every micro-batch of the update phase, in order; `progress` hears 'updating k/K' before each."""
        total = self.epochs * sum(
            math.ceil(min(self.global_batch, n_rows - i) / self.micro_batch)
            for i in range(0, n_rows, self.global_batch)
        )
        done = 0
        for epoch in range(self.epochs):
            order = torch.randperm(n_rows) if self.shuffle else torch.arange(n_rows)
            for step_rows in order.split(self.global_batch):
                micro = step_rows.split(self.micro_batch)
                for i, rows in enumerate(micro):
                    done += 1
                    if progress is not None:
                        progress.phase(f"updating {done}/{total}")
                    yield MicroStep(rows, len(rows) / len(step_rows), i == len(micro) - 1, epoch)


def micro_batch(guard: Guard, trained: Sequence[TrainedModel | None], boundary: bool) -> contextlib.ExitStack:
    """Where a micro-batch's forwards and backwards run: before the step's last micro-batch (`boundary`) inside
    the no_sync of every model that trains, so that DDP (which decides at the forward) reduces gradients once per
    optimizer step, not once per micro-batch."""
    stack = contextlib.ExitStack()
    if not boundary:
        for model in trained:
            if model is not None and model.trains:
                stack.enter_context(guard.strategy.no_sync(model.model))
    return stack


def accumulate(guard: Guard, trained: TrainedModel, loss: torch.Tensor, weight: float, boundary: bool) -> None:
    """Backward of one micro-batch's loss (checked first) into the model's gradients, scaled by `weight`; before
    the step's last micro-batch (`boundary`) inside the strategy's no_sync, which DeepSpeed and FSDP2 read at
    backward to know whether the step ends (DDP reads it at the forward: see micro_batch)."""
    guard.check(loss, f"{trained.name} loss")
    with contextlib.nullcontext() if boundary else guard.strategy.no_sync(trained.model):
        guard.strategy.backward(loss * weight, trained.model)


def optimizer_step(guard: Guard, trained: TrainedModel) -> float:
    """The optimizer step at a boundary (gradient norm checked first); the gradient norm before clipping."""
    return guard.optimizer_step(trained.optimizer, trained.model, trained.scheduler, trained.max_norm, trained.name)


class Metrics(dict):
    """name -> values collected over an update phase; mean() averages each."""

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.setdefault(key, []).append(float(value))

    def mean(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.items() if v}


class Progress:
    """What a trainer reports while it works (a progress bar listens): samples drawn, and the phase it is in."""

    def sampled(self, rows: int) -> None:
        """`rows` more samples drawn."""

    def phase(self, name: str) -> None:
        """Entering a phase: 'sampling p', 'updating', ..."""


@dataclass
class Streams:
    """Where a trainer's samples draw their randomness. `seed` None: torch's global stream. Otherwise each
    generation call has its own stream, keyed by the seed, the step, the call's place in the step and the index
    of its first prompt in the step's batch (`first_prompt` is where this process's share starts), so N processes
    sampling their shares of a batch draw exactly what one process draws for the whole batch, and a resumed run
    what an uninterrupted one drew. `others_running`: the lock-step of sharded strategies (sample_stepwise)."""

    seed: int | None = None
    first_prompt: int = 0
    others_running: Callable[[bool], bool] | None = None
    _step: int = field(default=-1, repr=False)
    _calls: int = field(default=0, repr=False)

    def next_call(self, step: int, tag: str) -> dict[str, Any]:
        """generate()'s stream arguments for the next generation call of `step` (the model's `tag` for the key)."""
        if step != self._step:
            self._step, self._calls = step, 0
        self._calls += 1
        seed = None if self.seed is None else stream_seed(self.seed, step, self._calls, tag)
        return {"seed": seed, "first_prompt": self.first_prompt, "others_running": self.others_running}


class Sampler(Protocol):
    """What draws a trainer's samples (sample_rollout, the default, or train_ppo_ray's vLLM engines):
    `group_size` samples per prompt from `model` with `params`, rows grouped by prompt, as a Rollout whose logps
    are `model`'s own log-probs of the drawn tokens; `streams` are Streams.next_call's (seed, first_prompt,
    others_running); `on_batch(rows)` after each batch drawn."""

    def __call__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        *,
        batch_size: int,
        on_batch: Callable[[int], None] | None,
        **streams: Any,
    ) -> Rollout: ...


def draw(
    guard: Guard,
    streams: Streams,
    progress: Progress,
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    group_size: int,
    sampling: SamplingParams,
    *,
    batch_size: int,
    step: int,
    tag: str,
    sampler: Sampler = sample_rollout,
) -> Rollout:
    """`group_size` samples per prompt from `model` (the module under a strategy's wrapper: sampling needs no
    gradient reduction), on the strategy's device."""
    roll = sampler(
        guard.strategy.unwrap(model),
        tokenizer,
        prompt_ids,
        group_size,
        sampling,
        batch_size=batch_size,
        on_batch=progress.sampled,
        **streams.next_call(step, tag),
    )
    return roll.to(guard.strategy.device)
