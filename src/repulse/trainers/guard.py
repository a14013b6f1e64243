"""The non-finite guard: no optimizer step is ever taken from a NaN or infinite loss or gradient norm.

Every optimizer step of every trainer goes through here: the supervised loop (trainers/loop.py) and each model
of the RL trainers (actor, critic, p_theta, proposal q with its modulation head). A check runs before the step
it protects, on every rank (a rank that stopped alone would leave the others waiting in an all-reduce), and
raises TrainingDivergedError: one line naming what was not finite, where, and the last checkpoint to resume
from. Since nothing non-finite is ever applied, no checkpoint can hold non-finite weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from repulse.infra.errors import TrainingDivergedError


def describe(value: torch.Tensor) -> str:
    """A scalar as its value; a tensor as how many of its entries are not finite."""
    if value.numel() == 1:
        return str(value.item())
    bad = int((~torch.isfinite(value)).sum())
    kinds = sorted({str(v) for v in value[~torch.isfinite(value)].tolist()})
    return f"{'/'.join(kinds)} for {bad} of {value.numel()} entries"


def check_finite(strategy: Any, value: torch.Tensor, *, what: str, where: str, last_checkpoint: str | None) -> None:
    """Raise TrainingDivergedError if `value` (a loss, a gradient norm, rewards) has a non-finite entry on any rank."""
    value = value.detach()
    bad = 0.0 if bool(torch.isfinite(value).all()) else 1.0
    if strategy.world_size > 1:
        bad = strategy.all_reduce({"bad": bad}, op="max")["bad"]
    if bad:
        shown = describe(value) if not bool(torch.isfinite(value).all()) else "finite here but not on another rank"
        raise TrainingDivergedError(
            f"{what} is {shown} at {where}; stopped before applying it. "
            f"Last checkpoint: {last_checkpoint or 'none saved yet'}"
        )


def gradient_norm(model: torch.nn.Module) -> torch.Tensor:
    """The 2-norm of all gradients of the trainable parameters (0 when none has a gradient)."""
    grads = [p.grad.detach() for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def guarded_optimizer_step(
    strategy: Any,
    optimizer: Any,
    model: torch.nn.Module,
    scheduler: Any,
    max_norm: float,
    *,
    what: str,
    where: str,
    last_checkpoint: str | None,
) -> float:
    """strategy.optimizer_step (clip, step, zero_grad, scheduler) after checking the gradient norm; the norm."""
    norm = gradient_norm(model)
    check_finite(strategy, norm, what=f"{what} gradient norm", where=where, last_checkpoint=last_checkpoint)
    return strategy.optimizer_step(optimizer, model, scheduler, max_norm)


@dataclass
class Guard:
    """The guard with a run's position, for trainers that do not know it themselves: the RL loop sets `step`
    (1-based, the step in progress) and `last_checkpoint`; trainers call check() and optimizer_step()."""

    strategy: Any
    step: int = 0
    last_checkpoint: str | None = None

    @property
    def where(self) -> str:
        return f"step {self.step}"

    def check(self, value: torch.Tensor, what: str) -> None:
        check_finite(self.strategy, value, what=what, where=self.where, last_checkpoint=self.last_checkpoint)

    def optimizer_step(self, optimizer: Any, model: torch.nn.Module, scheduler: Any, max_norm: float, what: str):
        return guarded_optimizer_step(
            self.strategy,
            optimizer,
            model,
            scheduler,
            max_norm,
            what=what,
            where=self.where,
            last_checkpoint=self.last_checkpoint,
        )
