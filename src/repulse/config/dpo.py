"""Flags of train_dpo (its beta and reference model are in ReferenceArgs)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class DPOArgs:
    _argument_group_name = "DPO"

    ipo: bool = arg(False, "Use the IPO loss (Azar et al. 2023) instead of sigmoid DPO.")
    label_smoothing: float = arg(0.0, "cDPO: probability that a preference label is flipped, in [0, 0.5).")
    nll_loss_coef: float = arg(0.0, "Weight of an NLL term on the chosen responses (token-averaged).")

    def __post_init__(self) -> None:
        require(
            0.0 <= self.label_smoothing < 0.5, f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
        )
        require(not (self.ipo and self.label_smoothing > 0), "--label_smoothing (cDPO) does not apply with --ipo")
        require(self.nll_loss_coef >= 0, f"--nll_loss_coef must be >= 0, got {self.nll_loss_coef}")
