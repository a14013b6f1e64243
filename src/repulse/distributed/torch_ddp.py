"""DistributedDataParallel under torchrun: gloo on CPU, nccl on GPU."""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from repulse.distributed.strategy import SingleProcessStrategy

log = logging.getLogger("repulse")


class DDPStrategy(SingleProcessStrategy):
    """Data parallel over the processes torchrun started; the gradients are averaged across ranks."""

    def __init__(self, backend: str = "auto") -> None:
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and backend != "gloo"
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        self.backend = "nccl" if use_cuda else "gloo"

    def setup_distributed(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=timedelta(minutes=30))
        log.info("strategy: DDP rank %d/%d on %s (%s)", self.rank, self.world_size, self.device, self.backend)

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

    def cleanup(self) -> None:
        # Without a final barrier + destroy, gloo sometimes aborts at exit (SIGABRT).
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
