"""Flags of train_rm."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

RM_LOSSES = ("sigmoid", "logexp")


@dataclass
class RMArgs:
    _argument_group_name = "reward model"

    loss: str = arg("sigmoid", "Pairwise loss: sigmoid (Bradley-Terry, -log sigmoid(r_c - r_r)) or logexp.")
    value_head_prefix: str = arg("score", "Name of the reward head module in the saved model (HF uses 'score').")
    normalize_reward: bool = arg(False, "Store the mean/std of training rewards in the config; scores are normalised.")

    def __post_init__(self) -> None:
        require(self.loss in RM_LOSSES, f"--loss must be one of {RM_LOSSES}, got {self.loss!r}")
