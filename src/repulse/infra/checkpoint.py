"""Resumable training checkpoints: trainable weights, optimizer, scheduler, counters and per-rank RNG.

Each checkpoint is a folder `global_step{N}` that appears only once complete (written to a temporary folder,
then renamed); the oldest are deleted beyond `max_keep`. Inside:

    checkpoint.json                  format version, step, world size, the state's layout (the strategy that
                                     wrote it) and the run's fingerprint (JSON)
    training_state.{safetensors,pt}  the state (infra/state_files.py: tensors + plain data, no code)
    rng_rank{R}.{safetensors,pt}     each rank's RNG streams, the same way
    deepspeed/ or dcp/               a sharded strategy's own files (DeepSpeed's, or torch.distributed.checkpoint's),
                                     written by every rank and read only through a restricted loader

A checkpoint folder belongs to one run. A run that does not resume refuses to start in a folder that holds
another run's checkpoints (its pruning would delete its own newer-numbered ones, and a later resume would pick
up the other run's); a resume refuses a checkpoint whose fingerprint (the flags that shape training) differs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repulse.infra.errors import UserError
from repulse.infra.files import remove_stale_temporaries, staging_dir, write_dir_atomic
from repulse.infra.seed import get_rng_state, set_rng_state
from repulse.infra.state_files import CheckpointFileError, encode_state, load_state, save_state

log = logging.getLogger("repulse")
STEP_DIR = re.compile(r"^global_step(\d+)$")
FORMAT = "repulse.checkpoint"
VERSION = 2
MANIFEST = "checkpoint.json"
STATE = "training_state"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (frozen ones are reloaded from --pretrain), detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def optional_state(obj: Any) -> Any:
    """The state_dict of an optimizer or scheduler that may be absent (a frozen model has neither)."""
    return obj.state_dict() if obj is not None else None


def load_optional_state(obj: Any, state: Any) -> None:
    if obj is not None and state is not None:
        obj.load_state_dict(state)


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy saved weights into the model's trainable parameters; a UserError when they do not fit (another
    model, LoRA setting or size)."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        which = f"lacks {missing[:3]}" if missing else f"has parameters this model lacks: {unknown[:3]}"
        raise UserError(f"{source} does not fit this model: it {which} (another model or LoRA setting?)")
    wrong = [n for n, v in state.items() if tuple(v.shape) != tuple(params[n].shape)]
    if wrong:
        name = wrong[0]
        raise UserError(
            f"{source} does not fit this model: {name} has shape {tuple(state[name].shape)} there, "
            f"{tuple(params[name].shape)} here (another model size?)"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class Checkpointer:
    def __init__(
        self, ckpt_dir: str | Path, max_keep: int, strategy: Any, fingerprint: dict[str, Any] | None = None
    ) -> None:
        self.dir = Path(ckpt_dir)
        self.max_keep = max_keep
        self.strategy = strategy
        self.fingerprint = fingerprint
        # Set once this run owns the folder: it checked it at start, resumed from it, or found it empty.
        self._owned = False
        if strategy.is_rank_0():
            for line in remove_stale_temporaries(self.dir):
                log.info("%s", line)

    def checkpoints(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def start(self, resume: bool) -> None:
        """Claim the folder for this run: a run that does not resume must find no checkpoints there."""
        if not resume:
            self._refuse_foreign()
        self._owned = True

    def _refuse_foreign(self) -> None:
        found = self.checkpoints()
        if found:
            shown = ", ".join(p.name for p in found[-3:])
            raise UserError(
                f"{self.dir} already holds checkpoints of an earlier run ({shown}): add --load_checkpoint to "
                "resume it, or give this run another --save_path (or --ckpt_path), or delete that folder"
            )

    def save(
        self,
        global_step: int,
        state: dict[str, Any],
        extra: Callable[[Path], None] | None = None,
        collective: Callable[[Path], None] | None = None,
    ) -> Path:
        """Every rank calls this; rank 0 assembles the folder. `extra(folder)` (rank 0) adds more files (e.g. the
        models in Hugging Face format) inside the same atomic write. `collective(folder)` is called on every rank
        with one folder they share (a sharded strategy's files, a model gathered from its shards); what it writes
        there goes into the checkpoint, in the same atomic write."""
        if not self._owned:  # a caller that never called start(): the first save makes the same check
            self._refuse_foreign()
            self._owned = True
        encoded = encode_state(state) if self.strategy.is_rank_0() else None  # fails before any file is written
        self.dir.mkdir(parents=True, exist_ok=True)
        save_state(self._rng_dir(global_step, self.strategy.rank, create=True), "rng", get_rng_state())
        shared = self._shared_dir(global_step, collective)
        target = self.dir / f"global_step{global_step}"
        if self.strategy.is_rank_0():

            def write(tmp: Path) -> None:
                save_state(tmp, STATE, state, encoded)
                if shared is not None:
                    for entry in sorted(shared.iterdir()):
                        entry.replace(tmp / entry.name)
                for r in range(self.strategy.world_size):
                    for suffix in (".safetensors", ".pt"):
                        (self._rng_dir(global_step, r) / f"rng{suffix}").replace(tmp / f"rng_rank{r}{suffix}")
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "global_step": global_step,
                    "world_size": self.strategy.world_size,
                    "layout": self.layout(),
                    "fingerprint": self.fingerprint,
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                if extra is not None:
                    extra(tmp)

            try:
                write_dir_atomic(target, write)
            finally:
                for r in range(self.strategy.world_size):
                    shutil.rmtree(self._rng_dir(global_step, r), ignore_errors=True)
                if shared is not None:
                    shutil.rmtree(shared, ignore_errors=True)
            self._prune(keep=target)
            log.info("checkpoint saved: %s", target)
        self.strategy.barrier()
        return target

    def _shared_dir(self, global_step: int, collective: Callable[[Path], None] | None) -> Path | None:
        """Rank 0 creates the folder the ranks share, every rank fills it, all wait until each has finished."""
        shared = None
        if collective is not None:
            shared = staging_dir(self.dir, f"shared_step{global_step}", create=self.strategy.is_rank_0())
            self.strategy.barrier()
            collective(shared)
        self.strategy.barrier()
        return shared

    def layout(self) -> dict[str, Any]:
        """How the strategy laid the state out (replicated, DeepSpeed's ZeRO stage, FSDP2)."""
        describe = getattr(self.strategy, "checkpoint_layout", None)
        return describe() if describe is not None else {"kind": "replicated"}

    def _rng_dir(self, global_step: int, rank: int, create: bool = False) -> Path:
        """Where each rank stages its RNG state for rank 0 to move into the checkpoint."""
        return staging_dir(self.dir, f"rng_step{global_step}_rank{rank}", create=create)

    def _prune(self, keep: Path) -> None:
        for old in self.checkpoints()[: -self.max_keep]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path) -> dict[str, Any]:
        """The saved state; this rank's RNG state is restored as a side effect. A checkpoint of another format
        or another configuration, or files that do not load as plain data, raise a one-line UserError."""
        path = Path(path)
        manifest = read_manifest(path)
        self.check_fingerprint(path, manifest.get("fingerprint"))
        self.check_layout(path, manifest.get("layout"))
        state = load_state(path, STATE)
        if not isinstance(state, dict):
            raise CheckpointFileError(f"{path / (STATE + '.pt')}: holds a {type(state).__name__}, not a state")
        if (path / f"rng_rank{self.strategy.rank}.pt").exists():
            rng = load_state(path, f"rng_rank{self.strategy.rank}")
            try:
                set_rng_state(rng)
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise CheckpointFileError(f"{path}/rng_rank{self.strategy.rank}.pt: not an RNG state ({err})") from err
        else:
            log.warning(
                "checkpoint %s has no RNG state for rank %d (saved with fewer processes)", path, self.strategy.rank
            )
        if path.parent.resolve() == self.dir.resolve():
            self._owned = True
        return state

    def check_layout(self, path: Path, saved: Any) -> None:
        """Refuse state laid out by another strategy (a checkpoint without a layout predates sharded ones)."""
        saved = saved if isinstance(saved, dict) else {"kind": "replicated"}
        check = getattr(self.strategy, "check_layout", None)
        if check is not None:
            check(saved, str(path))
        elif saved.get("kind", "replicated") != "replicated":
            raise UserError(f"--load_checkpoint: {path} holds sharded state ({saved}); this run cannot read it")

    def check_fingerprint(self, path: Path, saved: dict[str, Any] | None) -> None:
        """Refuse a checkpoint written with other values of the flags that shape training."""
        if self.fingerprint is None:
            return
        saved = saved or {}
        # The command first: another command's checkpoint differs in many flags, and that is the news.
        for key in sorted(set(self.fingerprint) | set(saved), key=lambda k: (k != "command", k)):
            then, now = saved.get(key, "(unset)"), self.fingerprint.get(key, "(unset)")
            if then != now:
                what = "by the command" if key == "command" else f"with --{key}"
                raise UserError(
                    f"--load_checkpoint: {path} was written {what} {then!r}, this run has {now!r}; resume "
                    "with that run's flags (its config.yaml) or start afresh with another --save_path"
                )


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointFileError(
            f"{path}: not a checkpoint this version can load (no {MANIFEST}: written by an older version, or "
            "not a checkpoint folder)"
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointFileError(f"{file}: unreadable ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointFileError(f"{file}: not a repulse checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointFileError(
            f"{file}: checkpoint format version {manifest.get('version')!r}; this version reads {VERSION}"
        )
    return manifest
