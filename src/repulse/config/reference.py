"""The frozen reference model of the preference losses (train_dpo, train_kto) and how strongly it anchors them."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class ReferenceArgs:
    _argument_group_name = "reference model"

    ref_pretrain: str | None = arg(None, "Frozen reference model (default: the same as --pretrain).")
    ref_offload: bool = arg(False, "Keep the reference model on the CPU (its forward runs there).")
    beta: float = arg(
        0.1,
        "How strongly the loss holds the policy to the reference (larger: closer): the scale of the log-ratio "
        "log pi/ref inside the sigmoid (DPO: the KL strength).",
    )

    def __post_init__(self) -> None:
        require(self.beta > 0, f"--beta must be > 0, got {self.beta}")
