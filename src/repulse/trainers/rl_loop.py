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


def schedule(n_prompts: int, settings: RLLoopSettings):
    """(fit, episode, prompt batch, last step of the fit) for every step, in order; the same on every run, so a
    resumed run finds its place by counting steps."""
    for fit in range(settings.fit_steps):
        for episode in range(settings.episodes):
            batches = prompt_batches(n_prompts, settings.prompts_per_step, settings.seed + 7919 * fit + episode)
            for i, batch in enumerate(batches):
                yield fit, episode, batch, episode == settings.episodes - 1 and i == len(batches) - 1


def run_rl_loop(
    trainer: Any,
    prompt_ids: list[list[int]],
    settings: RLLoopSettings,
    logger: MetricLogger,
    *,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    save: Callable[[RLLoopState], None] | None = None,
    state: RLLoopState | None = None,
) -> RLLoopState:
    """Run the steps after state.global_step (0, or a resumed checkpoint's step)."""
    state = state or RLLoopState()
    done = state.global_step
    steps_per_fit = settings.episodes * math.ceil(len(prompt_ids) / settings.prompts_per_step)
    bar = tqdm(
        total=steps_per_fit * settings.fit_steps,
        initial=done,
        desc="rl",
        disable=not settings.progress,
        dynamic_ncols=True,
    )
    if evaluate is not None and done == 0:
        record_evaluation(state, evaluate(0), logger)
    for n, (fit, episode, batch, fit_end) in enumerate(schedule(len(prompt_ids), settings), start=1):
        if n <= done:
            continue
        metrics = trainer.step([prompt_ids[i] for i in batch])
        state.global_step = n
        state.history.append({"step": n, **metrics})
        if n % settings.logging_steps == 0:
            logger.log(n, {**metrics, "fit_step": fit + 1, "episode": episode + 1})
        bar.update(1)
        bar.set_postfix(reward=f"{metrics.get('reward_mean', float('nan')):.3f}")
        if evaluate is not None and settings.eval_steps > 0 and n % settings.eval_steps == 0:
            record_evaluation(state, evaluate(fit), logger)
        if evaluate is not None and fit_end:
            record_evaluation(state, evaluate(fit + 1), logger)
        # Saved last, so a checkpoint at step n holds everything logged at step n (resume keeps rows <= n).
        if save is not None and settings.save_steps > 0 and n % settings.save_steps == 0:
            save(state)
    bar.close()
    return state


def record_evaluation(state: RLLoopState, result: dict[str, Any], logger: MetricLogger) -> None:
    result = {"step": state.global_step, **result}
    state.evaluations.append(result)
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and k != "step"}
    logger.log(state.global_step, numbers)
    log.info("evaluation at step %d: %s", state.global_step, " ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
