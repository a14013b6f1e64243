"""Knowledge distillation: (1 - kd_coef) * SFT loss + kd_coef * KL(teacher || student) on the same tokens."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.kd import kd_loss
from repulse.losses.lm import lm_loss
from repulse.models.logprobs import forward_logits


class KDTrainer:
    def __init__(self, model, teacher, kd_coef: float) -> None:
        self.model = model
        self.teacher = teacher
        self.kd_coef = kd_coef

    def _teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        device = next(self.teacher.parameters()).device
        with torch.no_grad():
            logits = forward_logits(self.teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return logits.to(batch["input_ids"].device)

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = forward_logits(self.model, batch["input_ids"], batch["attention_mask"])
        sft = lm_loss(logits, batch["input_ids"], batch["loss_mask"])
        # logits at t predict token t + 1, so the trained positions are loss_mask shifted left by one
        kd = kd_loss(logits[:, :-1], self._teacher_logits(batch)[:, :-1], batch["loss_mask"][:, 1:])
        loss = (1 - self.kd_coef) * sft + self.kd_coef * kd
        return loss, {"loss": loss.item(), "sft_loss": sft.item(), "kd_loss": kd.item()}

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._losses(batch)

    def evaluate(self, loader: Any) -> dict[str, float]:
        device = next(self.model.parameters()).device
        rows = [self._losses({k: v.to(device) for k, v in b.items()})[1] for b in loader]
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
