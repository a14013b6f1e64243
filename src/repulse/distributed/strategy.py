"""The Strategy protocol trainers see, and the single-process implementation (CPU or one GPU).

The method names are OpenRLHF's (setup_distributed, backward, optimizer_step, all_reduce, ...), so researchers who
know that code base find their way. Trainers never import torch.distributed or deepspeed themselves.

A trained model goes through `prepare_train(model, OptimizerSpec)`, which returns (model, optimizer, scheduler):
DeepSpeed needs the optimizer at `deepspeed.initialize`, FSDP2 needs it built after sharding, so the strategy
builds both from the spec's factories. A frozen model (reference, teacher, reward model, p_0) goes through
`prepare_frozen`. Loading under ZeRO-3 happens inside `model_init()`. Every method marked "collective" must be
called by every rank.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from repulse.distributed.sampler import GlobalBatchSampler, ShardSampler

log = logging.getLogger("repulse")


@dataclass
class OptimizerSpec:
    """How to build a trained model's optimizer and schedule, and the batch geometry DeepSpeed's config needs."""

    build_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    build_scheduler: Callable[[torch.optim.Optimizer], Any] | None
    micro_batch_size: int
    accumulation_steps: int
    max_norm: float


class Strategy(Protocol):
    rank: int
    world_size: int
    device: torch.device
    # "replicated" (every rank holds the whole state: single process, DDP), "deepspeed" or "fsdp2".
    kind: str

    def setup_distributed(self) -> None: ...
    def describe(self) -> str: ...
    def model_init(
        self, trainable: bool = True, *, bf16: bool = False, offload: bool = False
    ) -> contextlib.AbstractContextManager: ...
    def prepare_train(self, model: torch.nn.Module, spec: OptimizerSpec) -> tuple[torch.nn.Module, Any, Any]: ...
    def prepare_frozen(self, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module: ...
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
    def checkpoint_layout(self) -> dict[str, Any]: ...
    def check_layout(self, layout: dict[str, Any], source: str) -> None: ...
    def training_state(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]: ...
    def save_shards(self, model: torch.nn.Module, optimizer: Any, folder: Path) -> None: ...
    def load_training_state(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, saved: dict[str, Any], folder: Path
    ) -> None: ...
    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None: ...
    def save_pretrained(self, model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path | None: ...
    def full_weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager: ...
    def save_ckpt(self, state: dict[str, Any], path: Path) -> None: ...
    def load_ckpt(self, path: Path) -> dict[str, Any]: ...
    def cleanup(self, failed: bool = False) -> None: ...


class SingleProcessStrategy:
    """One process, plain torch: CPU, or the first CUDA device when there is one."""

    kind = "replicated"
    # Whether a forward pass runs collectives (ZeRO-3, FSDP2): then every rank must run the same number of them.
    forward_collectives = False

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.rank = 0
        self.world_size = 1
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def setup_distributed(self) -> None:
        log.info("strategy: %s", self.describe())

    def describe(self) -> str:
        return f"single process on {self.device} (plain torch; nothing to shard)"

    def model_init(
        self, trainable: bool = True, *, bf16: bool = False, offload: bool = False
    ) -> contextlib.AbstractContextManager:
        """Wrap from_pretrained of a model this strategy will run (ZeRO-3 loads each rank's shard only)."""
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def prepare_train(self, model: torch.nn.Module, spec: OptimizerSpec) -> tuple[torch.nn.Module, Any, Any]:
        model = self.prepare(model)
        optimizer = spec.build_optimizer(self.unwrap(model))
        scheduler = spec.build_scheduler(optimizer) if spec.build_scheduler is not None else None
        return model, optimizer, scheduler

    def prepare_frozen(self, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
        """A frozen model on this process's device, or kept on the CPU with `offload`."""
        return model.to("cpu" if offload else self.device)

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
        """Rank r reads examples r, r + world, ...; under ZeRO-3/FSDP2 (a forward is a collective) the ranks with
        fewer examples repeat their first ones so that every rank runs the same number of batches."""
        even = self.forward_collectives and self.world_size > 1
        sampler = ShardSampler(len(dataset), batch_size, self.world_size, self.rank, even=even)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

    def all_reduce(self, values: dict[str, float], op: str = "mean") -> dict[str, float]:
        return dict(values)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def is_rank_0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        return None

    def checkpoint_layout(self) -> dict[str, Any]:
        """What a checkpoint's manifest records about how its state was laid out (checked on resume)."""
        return {"kind": self.kind}

    def check_layout(self, layout: dict[str, Any], source: str) -> None:
        """A replicated state resumes on any number of processes; a sharded one only with its own strategy."""
        if layout.get("kind", "replicated") != "replicated":
            raise_layout_mismatch(layout, self.describe(), source)

    def training_state(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """The model, optimizer and scheduler state that goes into the checkpoint's data files."""
        from repulse.infra.checkpoint import optional_state, trainable_state

        return {
            "model": trainable_state(self.unwrap(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": optional_state(scheduler),
        }

    def save_shards(self, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
        """Collective: the sharded part of the state into `folder` (shared by the ranks). Nothing here."""
        return None

    def load_training_state(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, saved: dict[str, Any], folder: Path
    ) -> None:
        """Collective: restore what training_state (and save_shards) wrote; a UserError when it does not fit."""
        from repulse.infra.checkpoint import load_optional_state, load_trainable_state
        from repulse.infra.errors import UserError

        missing = [k for k in ("model", "optimizer", "scheduler") if k not in saved]
        if missing:
            raise UserError(f"--load_checkpoint: {folder} is not a checkpoint of this command (it lacks {missing})")
        load_trainable_state(self.unwrap(model), saved["model"], source=f"--load_checkpoint {folder}")
        try:
            optimizer.load_state_dict(saved["optimizer"])
            load_optional_state(scheduler, saved["scheduler"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"--load_checkpoint: {folder}: optimizer or scheduler state does not fit ({err})") from err

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Collective: the whole model's state (Hugging Face names, on the CPU) on rank 0; None elsewhere."""
        if not self.is_rank_0():
            return None
        return {k: v.detach().cpu() for k, v in self.unwrap(model).state_dict().items()}

    def save_pretrained(self, model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path | None:
        """Collective: the model in Hugging Face format at `path`, written by rank 0 (atomically)."""
        from repulse.models.load import save_pretrained_atomic

        return save_pretrained_atomic(self.unwrap(model), tokenizer, path) if self.is_rank_0() else None

    def full_weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Collective: inside, `model` holds its full weights on every rank (for sampling, weight sync)."""
        return contextlib.nullcontext()

    def save_ckpt(self, state: dict[str, Any], path: Path) -> None:
        """`state` as data only in the folder `path` (infra/state_files.py: safetensors + a weights-only file)."""
        from repulse.infra.state_files import save_state

        Path(path).mkdir(parents=True, exist_ok=True)
        save_state(Path(path), "state", state)

    def load_ckpt(self, path: Path) -> dict[str, Any]:
        """What save_ckpt wrote; a file that does not load as plain data is refused (CheckpointFileError)."""
        from repulse.infra.state_files import load_state

        return load_state(Path(path), "state")

    def cleanup(self, failed: bool = False) -> None:
        """Tear the process group down (`failed`: without the final barrier, which a failed rank never reaches)."""
        return None


def raise_layout_mismatch(layout: dict[str, Any], here: str, source: str) -> None:
    from repulse.infra.errors import UserError

    shown = ", ".join(f"{k} {v}" for k, v in sorted(layout.items()))
    raise UserError(
        f"--load_checkpoint: {source} holds state laid out as ({shown}); this run is {here}: resume with the "
        "strategy, --zero_stage and number of processes that wrote it"
    )
