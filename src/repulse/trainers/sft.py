"""Supervised fine-tuning: next-token NLL on the response tokens (or every token in --pretrain_mode)."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.lm import lm_loss
from repulse.models.logprobs import forward_logits


class SFTTrainer:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        out_logits = forward_logits(self.model, batch["input_ids"], batch["attention_mask"], **extra)
        loss = lm_loss(out_logits, batch["input_ids"], batch["loss_mask"])
        return loss, batch["loss_mask"][:, 1:].sum()

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, tokens = self._loss(batch)
        return loss, {"loss": loss.item(), "tokens": float(tokens)}

    def evaluate(self, loader: Any) -> dict[str, float]:
        total, count = 0.0, 0.0
        for batch in loader:
            batch = {k: v.to(self._device()) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss, tokens = self._loss(batch)
            total += loss.item() * float(tokens)
            count += float(tokens)
        mean = total / max(count, 1.0)
        return {"loss": mean, "ppl": float(torch.tensor(mean).exp())}

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device
