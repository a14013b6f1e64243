"""Masked reductions: the one place where padded positions are dropped, for every loss and the RL code.

A mask marks the valid entries: booleans, or float weights (an entry with weight 0 is invalid). Invalid entries
may hold garbage (inf or nan from padding): they are replaced by 0 with `torch.where`, never multiplied, since
inf * 0 = nan.
"""

from __future__ import annotations

import torch


def zero_invalid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is non-zero (broadcast over x's trailing dims), else 0."""
    valid = mask.bool() if mask.dtype != torch.bool else mask
    while valid.dim() < x.dim():
        valid = valid.unsqueeze(-1)
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of values x mask over `dim` (all elements when None); a sequence's log-prob from token log-probs
    with dim=-1."""
    weighted = zero_invalid(values, mask)
    if mask.dtype != torch.bool:
        weighted = weighted * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """masked_sum / the mask's total over `dim`; 0 where there is no valid entry (totals below 1 count as 1)."""
    weights = mask.to(values.dtype)
    count = weights.sum() if dim is None else weights.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)
