"""Flags of train_rm (which also takes --value_head_prefix and --normalize_reward of RewardArgs)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

RM_LOSSES = ("sigmoid", "logexp")


@dataclass
class RMArgs:
    _argument_group_name = "reward-model loss"

    loss: str = arg("sigmoid", "Pairwise loss: sigmoid (Bradley-Terry, -log sigmoid(r_c - r_r)) or logexp.")

    def __post_init__(self) -> None:
        require(self.loss in RM_LOSSES, f"--loss must be one of {RM_LOSSES}, got {self.loss!r}")
