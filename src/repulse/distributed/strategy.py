"""The Strategy protocol trainers see, and the single-process implementation (CPU or one GPU).

The method names are OpenRLHF's (setup_distributed, prepare, backward, optimizer_step, all_reduce, ...), so
researchers who know that code base find their way. Trainers never import torch.distributed themselves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from repulse.distributed.sampler import GlobalBatchSampler, ShardSampler

log = logging.getLogger("repulse")


class Strategy(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def setup_distributed(self) -> None: ...
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None: ...
    def optimizer_step(self, optimizer: Any, model: torch.nn.Module, scheduler: Any, max_norm: float) -> float: ...
    def train_dataloader(
        self, dataset: Dataset, micro: int, accum: int, collate: Callable, seed: int
    ) -> DataLoader: ...
    def eval_dataloader(self, dataset: Dataset, batch_size: int, collate: Callable) -> DataLoader: ...
    def all_reduce(self, values: dict[str, float], op: str = "mean") -> dict[str, float]: ...
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def is_rank_0(self) -> bool: ...
    def barrier(self) -> None: ...
    def save_ckpt(self, state: dict[str, Any], path: Path) -> None: ...
    def load_ckpt(self, path: Path) -> dict[str, Any]: ...
    def cleanup(self) -> None: ...


class SingleProcessStrategy:
    """One process, plain torch: CPU, or the first CUDA device when there is one."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.rank = 0
        self.world_size = 1
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def setup_distributed(self) -> None:
        log.info("strategy: single process on %s", self.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: Any, model: torch.nn.Module, scheduler: Any, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return float(norm)

    def train_dataloader(self, dataset: Dataset, micro: int, accum: int, collate: Callable, seed: int) -> DataLoader:
        sampler = GlobalBatchSampler(len(dataset), micro, accum, self.world_size, self.rank, shuffle=True, seed=seed)
        # A private generator: each DataLoader iterator draws a base seed, which must not advance the global
        # RNG (dropout), or a resumed run would diverge from an uninterrupted one.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator())

    def eval_dataloader(self, dataset: Dataset, batch_size: int, collate: Callable) -> DataLoader:
        sampler = ShardSampler(len(dataset), batch_size, self.world_size, self.rank)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

    def all_reduce(self, values: dict[str, float], op: str = "mean") -> dict[str, float]:
        return dict(values)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def is_rank_0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        return None

    def save_ckpt(self, state: dict[str, Any], path: Path) -> None:
        """`state` as data only in the folder `path` (infra/state_files.py: safetensors + a weights-only file)."""
        from repulse.infra.state_files import save_state

        Path(path).mkdir(parents=True, exist_ok=True)
        save_state(Path(path), "state", state)

    def load_ckpt(self, path: Path) -> dict[str, Any]:
        """What save_ckpt wrote; a file that does not load as plain data is refused (CheckpointFileError)."""
        from repulse.infra.state_files import load_state

        return load_state(Path(path), "state")

    def cleanup(self) -> None:
        return None
