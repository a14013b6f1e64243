"""Pairwise preference losses for reward models (and, later, DPO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_sigmoid_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(r_c - r_r - m) over pairs ([B] tensors; margin optional)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def pairwise_logexp_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """mean of log(1 + exp(r_r - r_c + m)): the same objective as sigmoid, written as OpenRLHF's LogExpLoss."""
    diff = rejected - chosen
    if margin is not None:
        diff = diff + margin
    return F.softplus(diff).mean()  # log(1 + e^x) without overflow


PAIRWISE_LOSSES = {"sigmoid": pairwise_sigmoid_loss, "logexp": pairwise_logexp_loss}
