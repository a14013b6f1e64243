"""Flags of train_dpo (and the reference-model flags shared with train_kto)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class ReferenceArgs:
    _argument_group_name = "reference model"

    ref_pretrain: str | None = arg(None, "Frozen reference model (default: the same as --pretrain).")
    ref_offload: bool = arg(False, "Keep the reference model on the CPU (its forward runs there).")


@dataclass
class DPOArgs:
    _argument_group_name = "DPO"

    beta: float = arg(0.1, "KL strength beta: larger keeps the policy closer to the reference.")
    ipo: bool = arg(False, "Use the IPO loss (Azar et al. 2023) instead of sigmoid DPO.")
    label_smoothing: float = arg(0.0, "cDPO: probability that a preference label is flipped, in [0, 0.5).")
    nll_loss_coef: float = arg(0.0, "Weight of an NLL term on the chosen responses (token-averaged).")

    def __post_init__(self) -> None:
        require(self.beta > 0, f"--beta must be > 0, got {self.beta}")
        require(
            0.0 <= self.label_smoothing < 0.5, f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
        )
        require(not (self.ipo and self.label_smoothing > 0), "--label_smoothing (cDPO) does not apply with --ipo")
        require(self.nll_loss_coef >= 0, f"--nll_loss_coef must be >= 0, got {self.nll_loss_coef}")
