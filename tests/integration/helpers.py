"""Helpers for running commands in-process and comparing saved models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TRAIN_FLAGS = [
    "--micro_train_batch_size",
    "4",
    "--train_batch_size",
    "8",
    "--max_epochs",
    "1",
    "--learning_rate",
    "1e-2",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--max_len",
    "16",
    "--seed",
    "3",
    "--disable_progress_bar",
]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def changed_and_unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]):
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    unchanged = [k for k in before if k in after and torch.equal(before[k], after[k])]
    return changed, unchanged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(module: str, argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc -m module argv --dist_backend gloo` on 127.0.0.1; asserts exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        module,
        *argv,
        "--dist_backend",
        "gloo",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
