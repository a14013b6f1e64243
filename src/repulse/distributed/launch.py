"""Pick the strategy for this launch from the flags and the environment the launcher (torchrun, the deepspeed
launcher, or nothing) set, and say in the log what runs and why."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from repulse.config.common import StrategyArgs
from repulse.infra.errors import MissingExtraError, UserError

log = logging.getLogger("repulse")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def choose(args: StrategyArgs, world: int, have_deepspeed: bool) -> tuple[str, str | None]:
    """(strategy, note): 'deepspeed', 'fsdp2' or 'ddp', and a line for the log when a flag is not applied.

    auto picks DeepSpeed where it changes something: ZeRO partitions state across processes, so with one
    process (and no --adam_offload) there is nothing to partition and DeepSpeed would only add start-up time,
    unless the deepspeed launcher started the run.
    """
    stage = args.stage()
    if args.strategy == "fsdp2":
        note = None
        if args.zero_stage is not None:
            note = (
                f"--zero_stage {args.zero_stage} does not apply to --strategy fsdp2: FSDP2 shards parameters, "
                "gradients and optimizer state (ZeRO-3's layout) whatever the stage"
            )
        return "fsdp2", note
    if args.strategy == "deepspeed":
        if not have_deepspeed:
            raise MissingExtraError("deepspeed", "deepspeed", "--strategy deepspeed")
        return "deepspeed", None
    if args.strategy == "ddp":
        return "ddp", not_applied(args, "--strategy ddp replicates the whole state on every rank")
    wanted = world > 1 or args.local_rank >= 0 or args.adam_offload
    if wanted and have_deepspeed:
        return "deepspeed", None
    if args.adam_offload:
        raise MissingExtraError("deepspeed", "deepspeed", "--adam_offload (DeepSpeed ZeRO-Offload)")
    if wanted:
        return "ddp", (
            f"--zero_stage {stage} is not applied: DeepSpeed is not installed (install the 'deepspeed' extra); "
            f"training runs as torch DDP over {world} processes, every rank holding all weights, gradients and "
            "optimizer state (the same numbers, more memory)"
        )
    return "ddp", not_applied(
        args, "one process: ZeRO has nothing to partition across (--strategy deepspeed runs DeepSpeed anyway)"
    )


def not_applied(args: StrategyArgs, why: str) -> str | None:
    if args.zero_stage is None:
        return None
    return f"--zero_stage {args.zero_stage} is not applied: {why}"


def make_strategy(args: StrategyArgs | None = None, *, sharded: bool = False, command: str = "this command") -> Any:
    """The strategy for this launch, set up (process group initialised) and announced in the log.

    `sharded`: the command trains through `prepare_train` and can run on DeepSpeed and FSDP2; other commands
    (inference, and train_ppo for now) run on plain torch, and the strategy flags they were given are reported
    as not applied.
    """
    args = args or StrategyArgs()
    world = world_size()
    kind, note = choose(args, world, deepspeed_installed()) if sharded else plain_only(args, command)
    if note:
        (log.warning if world > 1 else log.info)("%s", note)
    if kind == "deepspeed":
        from repulse.distributed.deepspeed_strategy import DeepSpeedStrategy

        strategy: Any = DeepSpeedStrategy(args)
    elif kind == "fsdp2":
        from repulse.distributed.fsdp2 import FSDP2Strategy

        strategy = FSDP2Strategy(args.dist_backend)
    elif world > 1:
        from repulse.distributed.torch_ddp import DDPStrategy

        strategy = DDPStrategy(args.dist_backend)
    else:
        from repulse.distributed.strategy import SingleProcessStrategy

        strategy = SingleProcessStrategy()
    strategy.setup_distributed()
    return strategy


def plain_only(args: StrategyArgs, command: str) -> tuple[str, str | None]:
    """Commands without sharded strategies: an explicit request for one is an error, the rest is reported."""
    if args.strategy in ("deepspeed", "fsdp2") or args.adam_offload:
        flag = "--adam_offload" if args.adam_offload else f"--strategy {args.strategy}"
        raise UserError(f"{flag}: {command} runs on plain torch only (a single process, or DDP under torchrun)")
    return "ddp", not_applied(args, f"{command} runs on plain torch (the same numbers, unpartitioned memory)")


def note_not_applicable(args: StrategyArgs, command: str, why: str) -> None:
    """For commands that train nothing: the strategy flags they accept (the fork's commands pass them) are
    named in the log as not applicable, rather than silently ignored."""
    given = args.given()
    if given:
        log.info("%s: not applicable to %s (%s); ignored", " ".join(given), command, why)
