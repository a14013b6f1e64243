"""Flags of train_kto (its beta is in ReferenceArgs, its --label_key in DataArgs)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class KTOArgs:
    _argument_group_name = "KTO"

    desirable_loss_weight: float = arg(1.0, "Weight of the loss on desirable examples (lambda_D).")
    undesirable_loss_weight: float = arg(1.0, "Weight of the loss on undesirable examples (lambda_U).")

    def __post_init__(self) -> None:
        require(self.desirable_loss_weight >= 0, "--desirable_loss_weight must be >= 0")
        require(self.undesirable_loss_weight >= 0, "--undesirable_loss_weight must be >= 0")
