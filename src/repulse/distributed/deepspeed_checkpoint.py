"""DeepSpeed's own sharded checkpoint (engine.save_checkpoint / load_checkpoint), loaded without running code.

DeepSpeed reads its files with torch.load(weights_only=False) (TorchCheckpointEngine), i.e. a full unpickle
that a crafted file turns into code execution. Here nothing of a checkpoint reaches that loader:

1. before DeepSpeed reads anything, each rank checks the files it will read with the restricted loader of
   infra/state_files.py (torch's weights-only unpickler, plus the three plain-data classes DeepSpeed's files
   hold: its loss scaler, the ZeRO stage enum and a fragment address); a refusal on any rank stops every rank,
   with one line naming the file;
2. the engine's checkpoint engine is replaced by one whose `load` is that same restricted loader, so what
   DeepSpeed reads after the check is read safely too.

DeepSpeed also copies its conversion scripts (zero_to_fp32.py, zero_to_torch.py) next to each checkpoint; they
are removed, so a checkpoint holds data only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from repulse.infra.state_files import CheckpointFileError, load_skeleton

TAG = "deepspeed"  # the checkpoint's subfolder: DeepSpeed's "tag"
SCRIPTS = "zero_to_*.py"  # DeepSpeed's conversion scripts, copied into every checkpoint
RANK_FILE = re.compile(r"^zero_pp_rank_(\d+)_")


def allowed_classes() -> list[type]:
    """The non-builtin classes DeepSpeed 0.19's checkpoint files pickle; each is plain data (no __reduce__ or
    __setstate__ that runs anything)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load one DeepSpeed checkpoint file as data, or raise CheckpointFileError naming it."""
    return load_skeleton(Path(path), allowed_classes(), map_location=map_location, what="DeepSpeed")


def safe_checkpoint_engine() -> Any:
    """A TorchCheckpointEngine whose load never unpickles code."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return safe_load(path, map_location if map_location is not None else "cpu")

    return SafeTorchCheckpointEngine()


def files_to_check(tag_dir: Path, rank: int) -> list[Path]:
    """The files this rank checks: its own ZeRO partitions; rank 0 also everything else (the shared model
    states, and any file that belongs to no rank)."""
    out = []
    for path in sorted(tag_dir.iterdir()):
        match = RANK_FILE.match(path.name)
        if (match and int(match.group(1)) == rank) or (not match and rank == 0):
            out.append(path)
    return out


def check_files(tag_dir: Path, rank: int) -> str | None:
    """The refusal message for the first of this rank's files that does not load as data, or None."""
    if not tag_dir.is_dir():
        return f"{tag_dir}: missing (this checkpoint holds no DeepSpeed state)"
    for path in files_to_check(tag_dir, rank):
        if path.is_dir():
            return f"{path}: unexpected folder in a DeepSpeed checkpoint"
        try:
            safe_load(path)
        except CheckpointFileError as err:
            return str(err)
    return None


def save(engine: Any, folder: Path, strategy: Any) -> None:
    """Collective: the engine's sharded state into folder/TAG; frozen weights (LoRA's base) are not written,
    they come from --pretrain again."""
    engine.save_checkpoint(str(folder), tag=TAG, client_state={}, save_latest=False, exclude_frozen_parameters=True)
    strategy.barrier()
    if strategy.is_rank_0():
        for script in [*folder.glob(SCRIPTS), *(folder / TAG).glob(SCRIPTS)]:
            script.unlink(missing_ok=True)
    strategy.barrier()


def load(engine: Any, folder: Path, strategy: Any) -> None:
    """Collective: restore the engine's weights and optimizer state from folder/TAG, after every rank checked
    its files; a refusal anywhere stops every rank (none is left waiting in a collective)."""
    tag_dir = folder / TAG
    problem = check_files(tag_dir, strategy.rank)
    if strategy.all_reduce({"bad": float(problem is not None)}, op="max")["bad"]:
        raise CheckpointFileError(problem or f"{tag_dir}: another process refused one of its files (see its error)")
    module = strategy.unwrap(engine)
    strict = all(p.requires_grad for p in module.parameters())
    path, _ = engine.load_checkpoint(
        str(folder), tag=TAG, load_module_strict=strict, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointFileError(f"{tag_dir}: DeepSpeed found no checkpoint there")
