"""Direct preference optimisation: chosen and rejected through the policy in one forward, the frozen
reference under no_grad (on the CPU with --ref_offload)."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.preference import dpo_loss
from repulse.models.logprobs import sequence_logps


def reference_logps(reference, batch: dict[str, Any], packing: str | None = None) -> torch.Tensor:
    """Summed response log-probs of the frozen reference, computed on its own device."""
    device = next(reference.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    with torch.no_grad():
        logps, _, _ = sequence_logps(reference, ids, mask, batch["prompt_lens"], packing)
    return logps.to(batch["input_ids"].device)


class DPOTrainer:
    def __init__(
        self,
        model,
        reference,
        beta: float,
        label_smoothing: float,
        ipo: bool,
        nll_loss_coef: float,
        packing: str | None = None,
    ):
        self.model = model
        self.reference = reference
        self.beta, self.label_smoothing, self.ipo, self.nll_loss_coef = beta, label_smoothing, ipo, nll_loss_coef
        self.packing = packing  # models/packing.py: "4d", "flash" or None (padded rows)

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts, _ = sequence_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["prompt_lens"], self.packing
        )
        ref = reference_logps(self.reference, batch, self.packing)
        half = logps.shape[0] // 2
        out = dpo_loss(
            logps[:half],
            logps[half:],
            ref[:half],
            ref[half:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            ipo=self.ipo,
        )
        nll = -(logps[:half] / counts[:half].clamp(min=1)).mean()
        loss = out.loss + self.nll_loss_coef * nll if self.nll_loss_coef > 0 else out.loss
        return loss, {
            "loss": loss.item(),
            "preference_loss": out.loss.item(),
            "nll_loss": nll.item(),
            "acc": (out.chosen_rewards > out.rejected_rewards).float().mean().item(),
            "chosen_reward": out.chosen_rewards.mean().item(),
            "reject_reward": out.rejected_rewards.mean().item(),
            "reward_margin": (out.chosen_rewards - out.rejected_rewards).mean().item(),
        }

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._losses(batch)

    def evaluate(self, loader: Any) -> dict[str, float]:
        device = next(self.model.parameters()).device
        rows = []
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            rows.append(self._losses(batch)[1])
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
