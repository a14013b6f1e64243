"""DistributedDataParallel under torchrun: gloo on CPU, nccl on GPU. Also the process-group plumbing the sharded
strategies share (collectives, the environment of a one-process group, tear-down)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from repulse.distributed.strategy import SingleProcessStrategy

log = logging.getLogger("repulse")
TIMEOUT = timedelta(minutes=30)
PROCESS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_env() -> list[str]:
    """A run started without a launcher still needs the variables torch.distributed (and DeepSpeed, which
    otherwise tries MPI discovery) read: a group of one on 127.0.0.1. Returns the names it set."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    added = [k for k in PROCESS_ENV if k not in os.environ]
    for key in added:
        os.environ[key] = defaults[key] if key in defaults else str(free_port())
    return added


def restore_env(added: list[str]) -> None:
    for key in added:
        os.environ.pop(key, None)


class DDPStrategy(SingleProcessStrategy):
    """Data parallel over the processes torchrun started; the gradients are averaged across ranks."""

    def __init__(self, backend: str = "auto") -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and backend != "gloo"
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        self.backend = "nccl" if use_cuda else "gloo"
        self._added_env: list[str] = []

    def init_process_group(self) -> None:
        self._added_env = ensure_process_env()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=TIMEOUT)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def setup_distributed(self) -> None:
        self.init_process_group()
        log.info("strategy: %s", self.describe())

    def describe(self) -> str:
        return (
            f"torch DDP, rank {self.rank} of {self.world_size} on {self.device} ({self.backend}): nothing sharded, "
            "every rank holds all weights, gradients and optimizer state"
        )

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()

    def all_reduce(self, values: dict[str, float], op: str = "mean") -> dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        reduce_op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        dist.all_reduce(t, op=reduce_op)
        if op == "mean":
            t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out)

    def barrier(self) -> None:
        dist.barrier()

    def cleanup(self, failed: bool = False) -> None:
        # Without a final barrier + destroy, gloo sometimes aborts at exit (SIGABRT).
        if dist.is_initialized():
            if not failed:
                dist.barrier()
            dist.destroy_process_group()
        restore_env(self._added_env)
