"""Forecasting the worst query's elicitation probability at deployment scale (Jones et al. 2025;
docs/algorithms/forecast.md).

Each query x has an elicitation probability p(x) = P_{o ~ M(.|x)}[behaviour(o)]. With the elicitation score
ψ = -log(-log p) (p clipped to [1e-12, 1 - 1e-12]), the upper tail of ψ over queries is modelled as Gumbel-like:
log P(Ψ > ψ) ≈ a·ψ + b. The fit regresses log(j/m) on the j-th largest score ψ_(j), j = 1..top_k, by ordinary
least squares over the m valid queries. The forecast for n queries is the (1 - 1/n) quantile of ψ,
Q_ψ(n) = (-log n - b)/a, returned as the probability Q_p(n) = exp(-exp(-Q_ψ(n))): the p of the single worst
query among n.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

P_CLIP = 1e-12


@dataclass(frozen=True)
class GumbelTailFit:
    """log P(Ψ > ψ) ≈ slope·ψ + intercept over the top_k of n_queries scores; r2 of that regression."""

    slope: float
    intercept: float
    r2: float
    n_queries: int
    top_k: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def elicitation_scores(p: torch.Tensor) -> torch.Tensor:
    """ψ = -log(-log p), p clipped to [1e-12, 1 - 1e-12] -> float64, same shape."""
    p = torch.as_tensor(p, dtype=torch.float64).clamp(P_CLIP, 1 - P_CLIP)
    return -torch.log(-torch.log(p))


def scores_from_log_p(log_p: torch.Tensor) -> torch.Tensor:
    """ψ from log p directly (no underflow for log p below log 1e-308), with the same clipping as
    `elicitation_scores`."""
    log_p = torch.as_tensor(log_p, dtype=torch.float64).clamp(math.log(P_CLIP), math.log1p(-P_CLIP))
    return -torch.log(-log_p)


def fit_gumbel_tail(scores: torch.Tensor, top_k: int) -> GumbelTailFit:
    """Fit the Gumbel tail to elicitation scores ψ (non-finite ones are dropped, as unestimable queries)."""
    psi = torch.as_tensor(scores, dtype=torch.float64).flatten()
    psi = psi[torch.isfinite(psi)]
    m = psi.numel()
    if top_k < 2:
        raise ValueError(f"--top_k_fit must be >= 2, got {top_k}")
    if m < top_k:
        raise ValueError(f"--top_k_fit {top_k} needs at least {top_k} queries with a finite score, got {m}")
    x = psi.sort(descending=True).values[:top_k]
    y = torch.log(torch.arange(1, top_k + 1, dtype=torch.float64) / m)
    dx = x - x.mean()
    sxx = float((dx**2).sum())
    if sxx <= 0:
        raise ValueError(f"the top {top_k} elicitation scores are all equal: no tail to fit (raise --top_k_fit)")
    slope = float((dx * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot
    return GumbelTailFit(slope, intercept, r2, m, top_k)


def forecast_scores(fit: GumbelTailFit, scales: torch.Tensor | list[float]) -> torch.Tensor:
    """Q_ψ(n) = (-log n - b)/a for each deployment size n -> float64."""
    n = torch.as_tensor(scales, dtype=torch.float64)
    if bool((n < 1).any()):
        raise ValueError("deployment sizes n must be >= 1")
    if fit.slope >= 0:
        # A non-decreasing survival function has no finite quantile; happens only with degenerate fits.
        raise ValueError(f"the Gumbel fit has slope {fit.slope:.3g} >= 0: the tail is not decreasing")
    return (-torch.log(n) - fit.intercept) / fit.slope


def forecast_worst_query(fit: GumbelTailFit, scales: torch.Tensor | list[float]) -> torch.Tensor:
    """Q_p(n) = exp(-exp(-Q_ψ(n))), in [0, 1]: the forecast elicitation probability of the worst of n queries."""
    return torch.exp(-torch.exp(-forecast_scores(fit, scales))).clamp(0.0, 1.0)


def empirical_worst_query(p: torch.Tensor, scales: torch.Tensor | list[float]) -> torch.Tensor:
    """The (1 - 1/n) quantile of p over a (large) pool: what Q_p(n) forecasts, for validation."""
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    levels = 1.0 - 1.0 / torch.as_tensor(scales, dtype=torch.float64)
    return torch.quantile(p, levels)
