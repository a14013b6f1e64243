"""Flags of train_sft."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg


@dataclass
class SFTArgs:
    _argument_group_name = "SFT"

    pretrain_mode: bool = arg(
        False,
        "Loss on every token (continued pre-training) instead of the response tokens only (distillation: both "
        "losses).",
    )
