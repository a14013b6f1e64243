"""Process reward model: a causal LM trained to predict a label token at each step marker."""

from __future__ import annotations

from typing import Any

import torch

from repulse.losses.prm import prm_loss
from repulse.models.logprobs import forward_logits, padded_logits


class PRMTrainer:
    def __init__(self, model, label_ids: torch.Tensor, packing: str | None = None) -> None:
        self.model = model
        self.label_ids = label_ids
        self.packing = packing  # models/packing.py: "4d", "flash" or None (padded rows)

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = padded_logits(self.model, batch["input_ids"], batch["attention_mask"], self.packing)
        loss, acc = prm_loss(logits, batch["markers"], batch["targets"], self.label_ids.to(logits.device))
        return loss, {"loss": loss.item(), "acc": acc.item()}

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._losses(batch)

    def evaluate(self, loader: Any) -> dict[str, float]:
        device = next(self.model.parameters()).device
        rows = [self._losses({k: v.to(device) for k, v in b.items()})[1] for b in loader]
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


@torch.no_grad()
def step_rewards(model, tokenizer, texts: list[str], placeholder_token: str, reward_tokens: list[str]):
    """Per text, the probability of the first (good) reward token at each step marker -> list[list[float]]."""
    from repulse.data.process_reward import marker_ids, single_token_id

    markers = torch.tensor(marker_ids(tokenizer, placeholder_token))
    label_ids = torch.tensor([single_token_id(tokenizer, t, "--reward_tokens") for t in reward_tokens])
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        logits = forward_logits(model, ids, torch.ones_like(ids))[0]
        at = torch.isin(ids[0], markers.to(device))
        probs = torch.softmax(logits[at][:, label_ids.to(device)].float(), dim=-1)
        out.append(probs[:, 0].tolist())
    return out
