"""The Gumbel-tail fit and the forecast Q_p(n) on synthetic query pools whose elicitation scores have a known tail."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.estimation.forecast import (
    elicitation_scores,
    empirical_worst_query,
    fit_gumbel_tail,
    forecast_scores,
    forecast_worst_query,
    scores_from_log_p,
)


def gumbel_scores(n: int, seed: int, scale: float = 1.0, loc: float = 0.0) -> torch.Tensor:
    """ψ = loc + scale·G with G standard Gumbel, so P(Ψ > ψ) ≈ exp(-(ψ - loc)/scale) in the tail."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).clamp(1e-300, 1 - 1e-16)
    return loc - scale * torch.log(-torch.log(u))


def test_scores_are_minus_log_minus_log_p():
    p = torch.tensor([0.5, 1e-3, math.exp(-math.e), 0.0, 1.0], dtype=torch.float64)
    psi = elicitation_scores(p)
    assert psi[0] == pytest.approx(-math.log(math.log(2)))
    assert psi[1] == pytest.approx(-math.log(-math.log(1e-3)))
    assert psi[2] == pytest.approx(-1.0)
    assert psi[3] == pytest.approx(-math.log(-math.log(1e-12)))  # clipped, finite
    assert math.isfinite(float(psi[4]))
    log_p = torch.tensor([-800.0, math.log(0.5), math.log(1e-3)], dtype=torch.float64)
    assert torch.allclose(scores_from_log_p(log_p), elicitation_scores(log_p.exp()))


def test_fit_is_exact_on_points_on_a_line():
    """Scores placed so that log(j/m) = -2ψ_(j) + 1 exactly: slope -2, intercept 1, R² 1."""
    m, k = 50, 8
    top = (1 - torch.log(torch.arange(1, k + 1, dtype=torch.float64) / m)) / 2
    psi = torch.cat([top, torch.full((m - k,), -5.0, dtype=torch.float64), torch.tensor([math.nan])])
    fit = fit_gumbel_tail(psi[torch.randperm(m + 1)], top_k=k)
    assert fit.slope == pytest.approx(-2.0) and fit.intercept == pytest.approx(1.0) and fit.r2 == pytest.approx(1.0)
    assert fit.n_queries == m and fit.top_k == k  # the NaN score (an unestimable query) is dropped
    # Q_ψ(n) solves slope·ψ + intercept = -log n.
    assert forecast_scores(fit, [1e4]).item() == pytest.approx((math.log(1e4) + 1) / 2)


def test_fit_recovers_the_gumbel_tail_parameters():
    scale, loc = 0.5, -3.0
    fit = fit_gumbel_tail(gumbel_scores(200_000, seed=1, scale=scale, loc=loc), top_k=2000)
    assert fit.slope == pytest.approx(-1 / scale, rel=0.1)
    assert fit.intercept == pytest.approx(loc / scale, abs=0.5)
    assert fit.r2 > 0.99


def simulated_worst_scores(n: int, deployments: int, seed: int, scale: float, loc: float) -> torch.Tensor:
    """The worst ψ of each of `deployments` simulated pools of n queries. The largest of n uniforms is U^(1/n), so
    each worst-of-n is drawn exactly without drawing all n scores."""
    u = torch.rand(deployments, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** (1.0 / n)
    return loc - scale * torch.log(-torch.log(u))


def test_forecast_tracks_the_empirical_worst_of_n_beyond_the_pool():
    """Fit pools of 20000 queries (top 100); forecast n = 1e5 and 1e6 (5x and 50x the pool); compare with the
    median over 401 simulated deployments of the worst query, in ψ (per unit of the tail scale) and in p. The
    median over 9 independent pools is compared, since one pool's top scores are noisy."""
    scale, loc = 0.5, -6.0
    scales = [100_000, 1_000_000]
    fits = [fit_gumbel_tail(gumbel_scores(20_000, seed=s, scale=scale, loc=loc), top_k=100) for s in range(2, 11)]
    assert all(f.r2 > 0.9 for f in fits)
    forecast_psi = torch.stack([forecast_scores(f, scales) for f in fits]).median(0).values
    forecast_p = torch.stack([forecast_worst_query(f, scales) for f in fits]).median(0).values
    for i, n in enumerate(scales):
        median_psi = float(simulated_worst_scores(n, 401, seed=i, scale=scale, loc=loc).median())
        assert abs(float(forecast_psi[i]) - median_psi) < 2 * scale
        median_p = math.exp(-math.exp(-median_psi))
        assert 0.5 < float(forecast_p[i]) / median_p < 2
    assert float(forecast_p[0]) < float(forecast_p[1]) <= 1.0
    # The forecast extrapolates beyond the worst query of the fitted pools.
    pool_worst = torch.stack([gumbel_scores(20_000, seed=s, scale=scale, loc=loc).max() for s in range(2, 11)])
    assert float(forecast_psi[0]) > float(pool_worst.median())
    # A much shorter tail (scale 0.1) would be caught: the simulated worst-of-1e6 is then far below the forecast.
    assert float(forecast_psi[1]) - float(simulated_worst_scores(10**6, 401, 0, 0.1, -6.0).median()) > 2 * scale


def test_empirical_worst_query_is_the_one_minus_one_over_n_quantile():
    p = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert empirical_worst_query(p, [10, 1000]).tolist() == pytest.approx([0.9001, 1.0], abs=1e-3)


@pytest.mark.parametrize(
    ("scores", "top_k", "message"),
    [
        (torch.arange(10.0), 1, "--top_k_fit must be >= 2"),
        (torch.tensor([1.0, 2.0, math.inf, math.nan]), 3, "needs at least 3 queries with a finite score, got 2"),
        (torch.ones(10), 4, "all equal"),
    ],
)
def test_fit_errors_are_clear(scores, top_k, message):
    with pytest.raises(ValueError, match=message):
        fit_gumbel_tail(scores, top_k)


def test_forecast_errors_are_clear():
    fit = fit_gumbel_tail(gumbel_scores(100, seed=0), top_k=5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        forecast_scores(fit, [0.5])
    rising = type(fit)(slope=0.5, intercept=0.0, r2=1.0, n_queries=10, top_k=5)
    with pytest.raises(ValueError, match="not decreasing"):
        forecast_worst_query(rising, [100])
