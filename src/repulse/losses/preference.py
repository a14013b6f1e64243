"""Pairwise preference losses for reward models (and, later, DPO)."""

from __future__ import annotations

from typing import NamedTuple

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


class DPOOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    chosen_rewards: torch.Tensor  # [B] beta * (log pi - log ref) on chosen, detached
    rejected_rewards: torch.Tensor  # [B] the same on rejected


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
) -> DPOOutput:
    """DPO (Rafailov et al. 2023, eq. 7), cDPO (label smoothing) and IPO (Azar et al. 2023, eq. 17).

    Inputs are summed response log-probs [B]. With h = (pi_c - pi_r) - (ref_c - ref_r):
      sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
      ipo:     (h - 1 / (2 beta))^2
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if ipo:
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return DPOOutput(losses.mean(), chosen_rewards, rejected_rewards)
