"""Flags of train_kto."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class KTOArgs:
    _argument_group_name = "KTO"

    beta: float = arg(0.1, "KTO temperature beta.")
    desirable_loss_weight: float = arg(1.0, "Weight of the loss on desirable examples (lambda_D).")
    undesirable_loss_weight: float = arg(1.0, "Weight of the loss on undesirable examples (lambda_U).")
    label_key: str = arg("label", "JSON key of the desirable (true/1) / undesirable (false/0) label.")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"--beta must be > 0, got {self.beta}")
        require(self.desirable_loss_weight >= 0, "--desirable_loss_weight must be >= 0")
        require(self.undesirable_loss_weight >= 0, "--undesirable_loss_weight must be >= 0")
