"""Resumable training checkpoints: trainable weights, optimizer, scheduler, counters and per-rank RNG.

Each checkpoint is a folder `global_step{N}` that appears only once complete (written to a temporary
folder, then renamed); the oldest are deleted beyond `max_keep`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repulse.infra.files import write_dir_atomic
from repulse.infra.seed import get_rng_state, set_rng_state

log = logging.getLogger("repulse")
STEP_DIR = re.compile(r"^global_step(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (frozen ones are reloaded from --pretrain), detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def optional_state(obj: Any) -> Any:
    """The state_dict of an optimizer or scheduler that may be absent (a frozen model has neither)."""
    return obj.state_dict() if obj is not None else None


def load_optional_state(obj: Any, state: Any) -> None:
    if obj is not None and state is not None:
        obj.load_state_dict(state)


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise RuntimeError(f"checkpoint lacks trainable parameters {missing[:3]}... (different model or LoRA?)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class Checkpointer:
    def __init__(self, ckpt_dir: str | Path, max_keep: int, strategy: Any) -> None:
        self.dir = Path(ckpt_dir)
        self.max_keep = max_keep
        self.strategy = strategy

    def checkpoints(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, global_step: int, state: dict[str, Any], extra: Callable[[Path], None] | None = None) -> Path:
        """Every rank calls this; rank 0 assembles the folder. `extra(folder)` adds more files (e.g. the models
        in Hugging Face format) inside the same atomic write."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rank = self.strategy.rank
        staged = self.dir / f".rng_step{global_step}_rank{rank}.pt"
        torch.save(get_rng_state(), staged)
        self.strategy.barrier()
        target = self.dir / f"global_step{global_step}"
        if self.strategy.is_rank_0():

            def write(tmp: Path) -> None:
                torch.save(state, tmp / "training_state.pt")
                for r in range(self.strategy.world_size):
                    os.replace(self.dir / f".rng_step{global_step}_rank{r}.pt", tmp / f"rng_rank{r}.pt")
                if extra is not None:
                    extra(tmp)

            write_dir_atomic(target, write)
            self._prune()
            log.info("checkpoint saved: %s", target)
        self.strategy.barrier()
        return target

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.max_keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path) -> dict[str, Any]:
        """The saved state; this rank's RNG state is restored as a side effect."""
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
        rng_file = path / f"rng_rank{self.strategy.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning(
                "checkpoint %s has no RNG state for rank %d (saved with fewer processes)", path, self.strategy.rank
            )
        return state
