"""Helpers for running commands in-process and comparing saved models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

TRAIN_FLAGS = [
    "--micro_train_batch_size", "4", "--train_batch_size", "8", "--max_epochs", "1", "--learning_rate", "1e-2",
    "--lr_scheduler", "constant", "--lr_warmup_ratio", "0", "--max_len", "16", "--seed", "3",
    "--disable_progress_bar",
]  # fmt: skip


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def changed_and_unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]):
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    unchanged = [k for k in before if k in after and torch.equal(before[k], after[k])]
    return changed, unchanged
