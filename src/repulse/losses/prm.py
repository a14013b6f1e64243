"""Process reward model loss: cross-entropy only at step-marker positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prm_loss(logits: torch.Tensor, marker_mask: torch.Tensor, targets: torch.Tensor, label_ids: torch.Tensor):
    """Soft cross-entropy of the label distribution at each marker.

    Args:
        logits: [B, S, V] (the logits AT the marker predict its label as the next token).
        marker_mask: [B, S] true at step markers; M markers in all.
        targets: [M, K] target probabilities over the K label tokens (one-hot for hard labels).
        label_ids: [K] vocabulary ids of the label tokens ("+", "-", ...).
    Returns (loss, accuracy): accuracy = argmax over the K label tokens equals the target's argmax.
    """
    marker_logits = logits[marker_mask][:, label_ids].float()  # [M, K]
    logp = F.log_softmax(marker_logits, dim=-1)
    loss = -(targets * logp).sum(-1).mean()
    acc = (marker_logits.argmax(-1) == targets.argmax(-1)).float().mean()
    return loss, acc
