"""Kahneman-Tversky optimisation (Ethayarajh et al. 2024)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class KTOOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    kl: torch.Tensor  # scalar reference point z0, detached
    rewards: torch.Tensor  # [B] beta * (log pi - log ref), detached


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean_i [log pi(y'_i|x_i) - log ref(y'_i|x_i)]) over mismatched pairs; no gradient."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOOutput:
    """Per example with r = log pi(y|x) - log ref(y|x) (summed over response tokens):
    desirable: w_d (1 - sigmoid(beta (r - z0))); undesirable: w_u (1 - sigmoid(beta (z0 - r))); mean over the batch.
    """
    logratio = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    losses = torch.where(desirable.bool(), good, bad)
    return KTOOutput(losses.mean(), kl, beta * logratio.detach())
