"""Pairwise reward-model training: chosen and rejected scored in one forward, Bradley-Terry or log-exp loss."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.preference import PAIRWISE_LOSSES
from repulse.models.reward import sequence_rewards


class RewardModelTrainer:
    def __init__(
        self,
        model: torch.nn.Module,
        loss: str = "sigmoid",
        value_head_prefix: str = "score",
        packing: str | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = PAIRWISE_LOSSES[loss]
        self.value_head_prefix = value_head_prefix
        self.packing = packing  # models/packing.py: "4d", "flash" or None (padded rows)

    def _rewards(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = sequence_rewards(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            self.value_head_prefix,
            normalize=False,
            packing=self.packing,
        )
        half = rewards.shape[0] // 2
        return rewards[:half], rewards[half:]

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = self._rewards(batch)
        margin = batch.get("margin")
        loss = self.loss_fn(chosen, rejected, margin if margin is not None and margin.any() else None)
        return loss, {
            "loss": loss.item(),
            "acc": (chosen > rejected).float().mean().item(),
            "chosen_reward": chosen.mean().item(),
            "reject_reward": rejected.mean().item(),
            "reward_margin": (chosen - rejected).mean().item(),
        }

    def collect_rewards(self, loader: Any, repeated: int = 0) -> torch.Tensor:
        """Rewards of every chosen and rejected text in `loader` (unnormalised) -> [2N], leaving out the last
        `repeated` pairs (examples a rank's loader repeats only to keep pace with the other ranks)."""
        device = next(self.model.parameters()).device
        chosen, rejected = [], []
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            c, r = self._rewards(batch)
            chosen.append(c)
            rejected.append(r)
        keep = sum(len(c) for c in chosen) - repeated
        return torch.cat([torch.cat(chosen)[:keep], torch.cat(rejected)[:keep]]).float().cpu()

    def evaluate(self, loader: Any) -> dict[str, float]:
        device = next(self.model.parameters()).device
        losses, accs, rewards = [], [], []
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chosen, rejected = self._rewards(batch)
            losses.append(self.loss_fn(chosen, rejected).item() * len(chosen))
            accs.append((chosen > rejected).float().sum().item())
            rewards += [chosen, rejected]
        n = max(sum(len(r) for r in rewards) / 2, 1)
        all_rewards = torch.cat(rewards)
        return {
            "loss": sum(losses) / n,
            "acc": sum(accs) / n,
            "reward_mean": all_rewards.mean().item(),
            "reward_std": all_rewards.std().item() if len(all_rewards) > 1 else 0.0,
        }
