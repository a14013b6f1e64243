"""Resumable checkpoints of a training run through an infra.checkpoint.Checkpointer: what every loop needs
around Checkpointer.save / load / latest (finding the newest, refusing another run's, model weights by name).

A state passed to save holds only tensors, numbers, strings, booleans, None and lists / tuples / dicts of these
(optimizer and scheduler state_dicts included): no objects, so a checkpoint loads without running code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from repulse.infra.checkpoint import Checkpointer, load_trainable_state, trainable_state
from repulse.infra.errors import UserError

log = logging.getLogger("repulse")


def newest_checkpoint(checkpointer: Checkpointer) -> Path | None:
    """The checkpoint to resume from (--load_checkpoint), or None (logged) when the folder holds none yet."""
    path = checkpointer.latest()
    if path is None:
        log.info("--load_checkpoint: no checkpoint in %s, starting from scratch", checkpointer.dir)
    return path


def load_run_checkpoint(checkpointer: Checkpointer, path: Path, kind: Mapping[str, Any]) -> dict[str, Any]:
    """The state saved at `path` (this rank's RNG restored), refused in one line unless it was written by a run
    of the same `kind` (what must match for its weights and optimizer states to fit this run)."""
    state = checkpointer.load(path)
    saved = state.get("kind") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise UserError(f"--load_checkpoint: {path} holds no run description (written by another command?)")
    for key, value in kind.items():
        if saved.get(key) != value:
            raise UserError(
                f"--load_checkpoint: {path} comes from a different configuration ({key} was "
                f"{saved.get(key)!r}, now {value!r}); use another --ckpt_path"
            )
    return state


def save_run_checkpoint(
    checkpointer: Checkpointer,
    step: int,
    state: dict[str, Any],
    kind: Mapping[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> str:
    """Checkpointer.save of `state` plus the run's `kind`; the folder written. Refuses non-finite weights."""
    for name, weights in state.get("models", {}).items():
        bad = [k for k, v in weights.items() if torch.is_tensor(v) and not bool(torch.isfinite(v).all())]
        if bad:
            raise RuntimeError(f"refusing to checkpoint non-finite weights of {name}: {bad[:3]}")
    return str(checkpointer.save(step, {**state, "kind": dict(kind)}, extra=extra))


def model_states(models: Mapping[str, torch.nn.Module | None], frozen: tuple[str, ...] = ()) -> dict[str, Any]:
    """{name: trainable weights} of each model that exists; the `frozen` ones (e.g. an EMA copy) in full."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        if model is None:
            continue
        if name in frozen:
            out[name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            out[name] = trainable_state(model)
    return out


def load_model_states(
    models: Mapping[str, torch.nn.Module | None], states: Mapping[str, Any], frozen: tuple[str, ...] = ()
) -> None:
    for name, weights in states.items():
        if name in frozen:
            models[name].load_state_dict(weights)
        else:
            load_trainable_state(models[name], weights)
