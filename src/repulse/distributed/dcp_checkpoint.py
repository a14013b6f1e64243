"""FSDP2's sharded checkpoint with torch.distributed.checkpoint (DCP), loaded without running code.

DCP's reader unpickles its `.metadata` file with plain `pickle.load`, and its default load planner reads every
non-tensor entry with `torch.load(weights_only=False)`: both run whatever a crafted file asks. Here the
metadata is read by an unpickler that knows only DCP's own metadata dataclasses, torch.Size and dtypes, the
non-tensor entries with torch's weights-only unpickler, and the tensors (which DCP already reads weights-only)
unchanged. A file that needs anything else is refused with one line naming it, on every rank.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from repulse.infra.state_files import CheckpointFileError, first_line, unpickler_reason

SUBDIR = "dcp"
METADATA_MODULE = "torch.distributed.checkpoint.metadata"
FILESYSTEM_MODULE = "torch.distributed.checkpoint.filesystem"
METADATA_CLASSES = {
    (METADATA_MODULE, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "ChunkStorageMetadata",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    (FILESYSTEM_MODULE, "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # how torch pickles a layout: a lookup among torch's layouts
    ("pathlib", "PosixPath"),  # the checkpoint's own path (a path object: no file is touched)
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only the classes DCP's metadata is made of (dataclasses of numbers, strings and tuples)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format
        ):
            return getattr(torch, name)  # dtypes and layouts pickle as torch.float32, torch.strided, ...
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def safe_reader(path: Path) -> Any:
    """DCP's file reader with the metadata read as data; `refusal` keeps the first refusal's message (DCP turns
    exceptions raised inside it into its own, as text)."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        refusal: str | None = None

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))), self.load_id)
            except CheckpointFileError as err:
                if self.refusal is None and kwargs.get("rank") is None:  # the global file (per-rank ones are optional)
                    self.refusal = str(err)
                raise

    return SafeFileSystemReader(str(path))


def read_metadata(file: Path, load_id: Any) -> Any:
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    if not file.is_file():
        raise CheckpointFileError(f"{file}: missing")
    try:
        with open(file, "rb") as f:
            metadata = MetadataUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{file}: refused, it holds more than checkpoint metadata ({unpickler_reason(err)}); checkpoints are "
            "only loaded as data"
        ) from err
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointFileError(f"{file}: not readable checkpoint metadata ({err})") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointFileError(f"{file}: not checkpoint metadata")
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = load_id
    return metadata


def safe_planner(source: Path) -> Any:
    """DCP's default load planner with non-tensor entries read by torch's weights-only unpickler."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        refusal: str | None = None

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                obj = weights_only(value, source)
            except CheckpointFileError as err:
                self.refusal = self.refusal or str(err)
                raise
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return WeightsOnlyLoadPlanner()


def weights_only(value: io.BytesIO, source: Path) -> Any:
    try:
        return torch.load(value, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{source}: refused, an entry holds more than plain data ({unpickler_reason(err)})"
        ) from err


def state_dicts(model: torch.nn.Module, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # Frozen weights (LoRA's base) are not written: they come from --pretrain again.
    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def save(model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Collective: each rank writes its shards into folder/dcp, rank 0 the metadata."""
    import torch.distributed.checkpoint as dcp

    model_state, optim_state = state_dicts(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder / SUBDIR))


def load(model: torch.nn.Module, optimizer: Any, folder: Path, strategy: Any) -> None:
    """Collective: restore the model and optimizer from folder/dcp (saved with any number of processes). A
    refused file stops every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = folder / SUBDIR
    model_state, optim_state = state_dicts(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    reader, planner = safe_reader(path), safe_planner(path)
    problem = None
    if not path.is_dir():
        problem = f"{path}: missing (this checkpoint holds no FSDP2 state)"
    else:
        try:
            # Checked first on every rank: a refusal inside DCP would be logged by DCP with its traceback.
            read_metadata(path / ".metadata", None)
            dcp.load(state, storage_reader=reader, planner=planner)
        except CheckpointFileError as err:
            problem = str(err)
        except (Exception, CheckpointException) as err:  # DCP re-raises a rank's error as text: ours is kept aside
            problem = reader.refusal or planner.refusal or f"{path}: not a readable checkpoint ({first_line(err)})"
    if strategy.all_reduce({"bad": float(problem is not None)}, op="max")["bad"]:
        raise CheckpointFileError(problem or f"{path}: another process refused one of its files (see its error)")
    options = StateDictOptions(ignore_frozen_params=True)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
    )
