"""Geometric (log-space linear) annealing of beta and alpha over the update steps (METHODS §2.9)."""

from __future__ import annotations

import math


def geometric_value(start: float | None, end: float, step: int, total_steps: int) -> float:
    """`end` when start is None; else start * (end / start)^(step / (total_steps - 1)), same signs required."""
    if start is None or total_steps <= 1:
        return end
    if start == 0 or end == 0 or (start > 0) != (end > 0):
        raise ValueError(f"geometric annealing needs non-zero values of the same sign, got {start} -> {end}")
    frac = min(step, total_steps - 1) / (total_steps - 1)
    return math.copysign(math.exp(math.log(abs(start)) + frac * (math.log(abs(end)) - math.log(abs(start)))), end)
