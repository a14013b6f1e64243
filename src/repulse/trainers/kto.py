"""KTO: real pairs through the policy with gradients; the mismatched pairs (for the KL reference point)
and every reference forward without."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.kto import kto_kl_estimate, kto_loss
from repulse.models.logprobs import sequence_logps
from repulse.trainers.dpo import reference_logps
from repulse.trainers.loop import average_micro_metrics


class KTOTrainer:
    def __init__(self, model, reference, beta: float, desirable_weight: float, undesirable_weight: float) -> None:
        self.model = model
        self.reference = reference
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        n = batch["desirable"].shape[0]
        ids, mask, lens = batch["input_ids"], batch["attention_mask"], batch["prompt_lens"]
        logps, _, _ = sequence_logps(self.model, ids[:n], mask[:n], lens[:n])
        with torch.no_grad():
            kl_logps, _, _ = sequence_logps(self.model, ids[n:], mask[n:], lens[n:])
        ref = reference_logps(self.reference, batch)
        kl = kto_kl_estimate(kl_logps, ref[n:])
        out = kto_loss(
            logps,
            ref[:n],
            batch["desirable"],
            kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        good = batch["desirable"].bool()
        # Every micro-batch reports the same keys (the loop and the DDP all-reduce line metrics up by key);
        # a micro-batch without desirable (or undesirable) rows reports NaN there, which the loop skips.
        metrics = {
            "loss": out.loss.item(),
            "kl": out.kl.item(),
            "chosen_reward": out.rewards[good].mean().item() if good.any() else float("nan"),
            "reject_reward": out.rewards[~good].mean().item() if (~good).any() else float("nan"),
        }
        return out.loss, metrics

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._losses(batch)

    def evaluate(self, loader: Any) -> dict[str, float]:
        device = next(self.model.parameters()).device
        rows = [self._losses({k: v.to(device) for k, v in b.items()})[1] for b in loader]
        return average_micro_metrics(rows)
