"""Language-model (SFT / pre-training) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repulse.losses.reductions import masked_mean


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[b, t] | ...) from logits [B, T, V] and labels [B, T] -> [B, T].

    Half-precision logits are upcast to float32 for the softmax; float32/float64 are kept as they are.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.gather(F.log_softmax(logits, dim=-1), -1, labels.unsqueeze(-1)).squeeze(-1)


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the tokens that `loss_mask` marks.

    Args:
        logits: [B, S, V] model outputs; position t predicts input_ids[:, t + 1].
        input_ids: [B, S].
        loss_mask: [B, S] true for the tokens whose prediction is trained (loss_mask[:, 0] is ignored).
    """
    logps = token_log_probs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logps, loss_mask[:, 1:])
