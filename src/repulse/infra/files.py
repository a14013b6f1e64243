"""Atomic writes: a killed run never leaves a half-written output behind.

Temporary names are `.NAME.<random>.repulse-tmp` (and `.NAME.repulse-old` for the folder being replaced), so
that the next run can recognise what an interrupted one left and remove it (`remove_stale_temporaries`)
without touching anything else. Everything written gets the permissions the user's umask gives (tempfile
and safetensors create 0600 files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from repulse.infra.errors import UserError

TMP_SUFFIX = ".repulse-tmp"
OLD_SUFFIX = ".repulse-old"
# What this code wrote under other names before the suffixes above: mkdtemp folders of checkpoints and
# final/ (`.global_step7.ab_c12de`), their `.old` swaps, and the per-rank RNG files staged for a checkpoint.
LEGACY_TEMPORARY = re.compile(r"^\.(global_step\d+|final\w*)\.([a-z0-9_]{8}|old)$|^\.rng_step\d+_rank\d+\.pt$")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path` (and everything under it) the modes a plain open()/mkdir() would have given."""
    mask = current_umask()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def make_parent(path: Path) -> None:
    """Create the folder `path` goes in; a UserError naming the path when that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Create the output folder a flag names and prove that files can be written in it, before any work is
    done; a UserError naming the flag and the path otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: a file of that name exists (give a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=TMP_SUFFIX, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write there ({err.strerror or err})") from err
    return path


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp_path over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder (give a file name)")
    make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    os.close(fd)
    try:
        write(Path(tmp))
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_dir_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with `write(tmp_dir)`, then swap it in place of `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write the folder {path}: a file of that name exists")
    make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        write(tmp)
        apply_umask(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}{OLD_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def staging_dir(parent: Path, name: str, create: bool = True) -> Path:
    """A fixed-name temporary folder `parent/.NAME.repulse-tmp` (for files that several processes hand over)."""
    path = parent / f".{name}{TMP_SUFFIX}"
    if create:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    return path


def swapped_out_name(name: str) -> str | None:
    """For `.NAME.repulse-old` (or the older `.NAME.old`), NAME: the folder a write_dir_atomic swapped out."""
    for suffix in (OLD_SUFFIX, ".old"):
        if name.startswith(".") and name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[1 : -len(suffix)]
    return None


def is_temporary(name: str) -> bool:
    return name.startswith(".") and (
        name.endswith((TMP_SUFFIX, OLD_SUFFIX)) or LEGACY_TEMPORARY.match(name) is not None
    )


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Clean what interrupted atomic writes left in `folder` (call before a run writes there). A folder that
    was swapped out and whose replacement never arrived is put back; other temporaries are deleted. Returns
    one line per action, for the log."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for entry in sorted(folder.iterdir()):
        if not is_temporary(entry.name):
            continue
        original = swapped_out_name(entry.name)
        if original is not None and not (folder / original).exists():
            os.replace(entry, folder / original)
            done.append(f"restored {folder / original} from {entry.name}, left by an interrupted run")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"removed {entry}, left by an interrupted run")
    return done
