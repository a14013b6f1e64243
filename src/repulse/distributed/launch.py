"""Pick the strategy for this launch from the environment torchrun (or nothing) set."""

from __future__ import annotations

import logging
import os
from typing import Any

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.errors import UserError

log = logging.getLogger("repulse")


def make_strategy(backend: str = "auto", zero_stage: int = 0, adam_offload: bool = False) -> Any:
    """The strategy for this launch: DDP when torchrun set WORLD_SIZE > 1, else a single process. Training commands
    pass --zero_stage, and only they are told that it changes nothing yet (inference has no state to partition)."""
    if adam_offload:
        raise UserError("--adam_offload needs the DeepSpeed strategy, which this version does not ship yet")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if zero_stage > 0:
        log.info(
            "--zero_stage %d has no effect: ZeRO partitioning needs the DeepSpeed strategy, which this version "
            "does not ship yet; training runs as %s (same numbers, unpartitioned memory)",
            zero_stage,
            "torch DDP" if distributed else "a single process",
        )
    if distributed:
        from repulse.distributed.torch_ddp import DDPStrategy

        strategy = DDPStrategy(backend)
    else:
        strategy = SingleProcessStrategy()
    strategy.setup_distributed()
    return strategy
