"""Training state on disk as data only, so that loading a checkpoint can never run code.

A state (nested dicts, lists and tuples of tensors, numbers, strings, bools and None: model weights, optimizer
and scheduler state_dicts, counters, RNG states) is split in two files:

    NAME.safetensors  every tensor, under keys t0, t1, ... (safetensors: a JSON header and raw bytes)
    NAME.pt           the rest, with each tensor replaced by {"__repulse_tensor__": "tK"}, written by torch.save
                      and read back with torch.load(weights_only=True)

torch's weights-only unpickler accepts only containers, numbers, strings and tensor storages and refuses any
other global (no `os.system`, no `__reduce__` of arbitrary classes); safetensors holds no code at all. A file
that does not load that way is refused with a CheckpointFileError naming it.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repulse.infra.errors import UserError

TENSOR_REF = "__repulse_tensor__"
PLAIN = (type(None), bool, int, float, str)


class CheckpointFileError(UserError):
    """A checkpoint file that is missing, corrupt, or not plain data."""


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], where: str = "state", seen: set | None = None) -> Any:
    """`obj` with each tensor put into `tensors` (CPU, contiguous, own storage) and replaced by a reference.

    Anything but containers, tensors and plain values is a bug in the code that built the state (it could not
    be loaded back without code), so it raises TypeError naming where it sits.
    """
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensor = obj.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory: copy only a tensor whose storage is already in.
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
        return {TENSOR_REF: key}
    if isinstance(obj, np.generic):  # numpy scalars (float64 is also a float, int64 is not an int)
        return obj.item()
    if isinstance(obj, PLAIN):
        return obj
    if isinstance(obj, list | tuple):
        items = [split_tensors(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, PLAIN):
                raise TypeError(f"checkpoint state: key {key!r} of {where} is a {type(key).__name__}")
            out[key] = split_tensors(value, tensors, f"{where}[{key!r}]", seen)
        return out
    raise TypeError(
        f"checkpoint state: {where} is a {type(obj).__name__}; only tensors, numbers, strings, bools, None, "
        "lists, tuples and dicts can be saved without code"
    )


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    """The inverse of split_tensors."""
    if isinstance(obj, dict):
        if set(obj) == {TENSOR_REF}:
            key = obj[TENSOR_REF]
            if key not in tensors:
                raise CheckpointFileError(f"{source}: refers to tensor {key!r}, which its .safetensors file lacks")
            return tensors[key]
        return {k: join_tensors(v, tensors, source) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(join_tensors(v, tensors, source) for v in obj)
    return obj


def encode_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, skeleton): what save_state writes, computed before anything is written (so a state that cannot
    be saved fails without leaving files)."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, split_tensors(state, tensors)


def save_state(
    folder: Path, name: str, state: Any, encoded: tuple[dict[str, torch.Tensor], Any] | None = None
) -> None:
    """Write `folder/name.safetensors` and `folder/name.pt` (see the module docstring)."""
    from safetensors.torch import save_file

    tensors, skeleton = encoded if encoded is not None else encode_state(state)
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"format": "repulse.state"})
    torch.save(skeleton, folder / f"{name}.pt")


def load_state(folder: Path, name: str) -> Any:
    """Read what save_state wrote; CheckpointFileError (one line, naming the file) for anything else."""
    tensors = load_tensors(folder / f"{name}.safetensors")
    skeleton_file = folder / f"{name}.pt"
    skeleton = load_skeleton(skeleton_file)
    return join_tensors(skeleton, tensors, skeleton_file)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointFileError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointFileError(f"{path}: not a readable safetensors file ({first_line(err)})") from err


def load_skeleton(path: Path, allowed: Sequence[type] = (), map_location: Any = "cpu", what: str = "repulse") -> Any:
    """torch.load(weights_only=True): containers, numbers, strings and tensors, plus the classes in `allowed`
    (plain-data classes a library's own files hold, e.g. DeepSpeed's loss scaler); anything else is refused."""
    if not path.is_file():
        raise CheckpointFileError(f"{path}: missing")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler met a global it does not allow: code, or an object that needs code.
        raise CheckpointFileError(
            f"{path}: refused, it holds more than plain data ({unpickler_reason(err)}); checkpoints are only "
            f"loaded as data, and this file was not written by {what}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as err:
        raise CheckpointFileError(f"{path}: not a readable checkpoint file ({first_line(err)})") from err


def unpickler_reason(err: BaseException) -> str:
    """The line of torch's weights-only refusal that names what was refused (the rest is advice to load the
    file unsafely, which is exactly what must not happen)."""
    for line in str(err).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported", "Unsupported")):
            return line.rstrip(".")
    return "a pickle instruction or object outside the allowed data types"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:200] + "..."
