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


# Flags that may change between a run and its resume: where things go, how often they are logged or saved,
# and how the same computation is laid out on the hardware (the sampler makes micro-batching and process
# count invisible to the result; recomputation, the attention kernel and offloading change no formula). A
# checkpoint's own layout (the strategy, ZeRO stage and process count that wrote sharded state) is checked
# separately, from its manifest.
# Every other flag is part of the run's fingerprint.
RUN_NEUTRAL = frozenset(
    {
        "config",
        "save_path",
        "ckpt_path",
        "load_checkpoint",
        "max_ckpt_num",
        "save_steps",
        "save_hf_ckpt",
        "logging_steps",
        "eval_steps",
        "use_wandb",
        "wandb_project",
        "wandb_run_name",
        "use_tensorboard",
        "disable_progress_bar",
        "eval_dataset",
        "eval_split",
        "micro_train_batch_size",
        "gradient_checkpointing",
        "flash_attn",
        "ref_offload",
        "teacher_offload",
        "zero_stage",
        "strategy",
        "local_rank",
        "dist_backend",
        # RL: when p_theta is checkpointed and where the evaluation files go
        "save_steps_harmless",
        "save_info_path",
    }
)


def run_fingerprint(command: str | None, flat: dict[str, Any]) -> dict[str, Any]:
    """The flags that shape training, stored in each checkpoint; a resume with other values is refused."""
    kept = {k: v for k, v in flat.items() if k not in RUN_NEUTRAL}
    return {"command": command, **kept} if command else kept


def newest_checkpoint(checkpointer: Checkpointer) -> Path | None:
    """The checkpoint to resume from (--load_checkpoint), or None (logged) when the folder holds none yet."""
    path = checkpointer.latest()
    if path is None:
        log.info("--load_checkpoint: no checkpoint in %s, starting from scratch", checkpointer.dir)
    return path


def load_run_checkpoint(checkpointer: Checkpointer, path: Path) -> dict[str, Any]:
    """The state saved at `path` (this rank's RNG restored). The Checkpointer refuses, in one line, a checkpoint
    whose fingerprint (the flags that shape training, run_fingerprint) differs from this run's."""
    state = checkpointer.load(path)
    if "models" not in state:
        raise UserError(f"--load_checkpoint: {path} holds no model weights (written by another command?)")
    return state


def save_run_checkpoint(
    checkpointer: Checkpointer,
    step: int,
    state: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
    collective: Callable[[Path], None] | None = None,
) -> str:
    """Checkpointer.save of `state` (`extra`: rank 0's files, `collective`: every rank's); the folder written.
    Refuses non-finite weights."""
    for name, weights in state.get("models", {}).items():
        bad = [k for k, v in weights.items() if torch.is_tensor(v) and not bool(torch.isfinite(v).all())]
        if bad:
            raise RuntimeError(f"refusing to checkpoint non-finite weights of {name}: {bad[:3]}")
    return str(checkpointer.save(step, state, extra=extra, collective=collective))


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
