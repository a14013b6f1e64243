"""Flags of train_kd (which also takes --pretrain_mode of SFTArgs: both losses then cover every token)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class KDArgs:
    _argument_group_name = "distillation"

    teacher_model: str | None = arg(
        None, "Frozen teacher (same vocabulary as the student). Default: embedded tiny LM."
    )
    teacher_offload: bool = arg(False, "Keep the teacher on the CPU (its forward runs there).")
    kd_coef: float = arg(0.4, "loss = (1 - kd_coef) * SFT loss + kd_coef * KL(teacher || student).")

    def __post_init__(self) -> None:
        require(0.0 <= self.kd_coef <= 1.0, f"--kd_coef must be in [0, 1], got {self.kd_coef}")
