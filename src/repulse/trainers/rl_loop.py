"""The outer loop of RL training: fit steps x episodes x prompt batches, logging, evaluation and checkpoints.

Used by PPO and harmlessness training alike; each trainer supplies `step(prompt_ids) -> metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from repulse.infra.metrics import MetricLogger

log = logging.getLogger("repulse")


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


def prompt_batches(n_prompts: int, per_step: int, seed: int) -> list[list[int]]:
    """A seeded shuffle of the prompt indices cut into steps (a partial last batch is kept)."""
    order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + per_step] for i in range(0, n_prompts, per_step)]


def run_rl_loop(
    trainer: Any,
    prompt_ids: list[list[int]],
    settings: RLLoopSettings,
    logger: MetricLogger,
    *,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    save: Callable[[int], None] | None = None,
    state: RLLoopState | None = None,
) -> RLLoopState:
    state = state or RLLoopState()
    steps_per_fit = settings.episodes * math.ceil(len(prompt_ids) / settings.prompts_per_step)
    bar = tqdm(total=steps_per_fit * settings.fit_steps, desc="rl", disable=not settings.progress,
               dynamic_ncols=True)  # fmt: skip
    if evaluate is not None:
        record_evaluation(state, evaluate(0), logger)
    for fit in range(settings.fit_steps):
        for episode in range(settings.episodes):
            for batch in prompt_batches(
                len(prompt_ids), settings.prompts_per_step, settings.seed + 7919 * fit + episode
            ):
                metrics = trainer.step([prompt_ids[i] for i in batch])
                state.global_step += 1
                state.history.append({"step": state.global_step, **metrics})
                if state.global_step % settings.logging_steps == 0:
                    logger.log(state.global_step, {**metrics, "fit_step": fit + 1, "episode": episode + 1})
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('reward_mean', float('nan')):.3f}")
                if save is not None and settings.save_steps > 0 and state.global_step % settings.save_steps == 0:
                    save(state.global_step)
                if evaluate is not None and settings.eval_steps > 0 and state.global_step % settings.eval_steps == 0:
                    record_evaluation(state, evaluate(fit), logger)
        if evaluate is not None:
            record_evaluation(state, evaluate(fit + 1), logger)
    bar.close()
    return state


def record_evaluation(state: RLLoopState, result: dict[str, Any], logger: MetricLogger) -> None:
    result = {"step": state.global_step, **result}
    state.evaluations.append(result)
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and k != "step"}
    logger.log(state.global_step, numbers)
    log.info("evaluation at step %d: %s", state.global_step,
             " ".join(f"{k}={v:.4g}" for k, v in numbers.items()))  # fmt: skip
