"""Trust diagnostics of repulse.estimation.diagnostics against hand values and distributions of known shape."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.estimation.diagnostics import (
    MAX_RHAT,
    gpd_shape,
    interval95,
    kish_ess,
    pareto_k,
    split_rhat,
    trust_warnings,
)


def gpd_sample(k: float, n: int, seed: int) -> torch.Tensor:
    """n draws of a generalized Pareto variable of shape k and scale 1 (inverse CDF)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ((1 - u) ** (-k) - 1) / k


def test_kish_ess_by_hand():
    assert kish_ess(torch.zeros(10)) == pytest.approx(10.0)
    assert kish_ess(torch.log(torch.tensor([1.0, 3.0]))) == pytest.approx(16 / 10)
    assert kish_ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    assert kish_ess(torch.full((3,), -math.inf)) == 0.0
    assert kish_ess(torch.tensor([[0.0, 0.0], [0.0, 0.0]])) == pytest.approx(4.0)  # any shape


@pytest.mark.parametrize("k", [0.2, 0.8])
def test_gpd_fit_recovers_the_shape(k):
    shapes = [gpd_shape(gpd_sample(k, 4000, seed)) for seed in range(5)]
    assert abs(sum(shapes) / 5 - k) < 0.05


def test_pareto_k_separates_light_from_heavy_tails():
    light = [pareto_k(0.5 * torch.randn(4000, generator=torch.Generator().manual_seed(s))) for s in range(5)]
    heavy = [pareto_k(torch.log1p(gpd_sample(1.5, 4000, s))) for s in range(5)]  # not even a finite mean
    assert max(light) < 0.5
    assert min(heavy) > 0.7
    assert math.isnan(pareto_k(torch.zeros(20)))  # too few terms for a tail fit
    assert math.isnan(pareto_k(torch.zeros(200)))  # all equal: no tail at all


def test_split_rhat_by_hand_and_on_stuck_chains():
    g = torch.Generator().manual_seed(0)
    mixed = torch.randn(200, 8, generator=g)
    assert abs(split_rhat(mixed) - 1.0) < 0.02
    stuck = mixed + 5 * torch.arange(8.0)  # every chain in its own region
    assert split_rhat(stuck) > 10
    drift = mixed + torch.linspace(0, 10, 200)[:, None]  # chains still moving: the two halves differ
    assert split_rhat(drift) > MAX_RHAT
    # 2 chains x 4 steps: halves (0, 1), (2, 3), (10, 11), (12, 13); W = 0.5, B = 2·var(0.5, 2.5, 10.5, 12.5)
    x = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])
    b = 2 * float(torch.tensor([0.5, 2.5, 10.5, 12.5]).var())
    assert split_rhat(x) == pytest.approx(math.sqrt((0.5 * 0.5 + b / 2) / 0.5))
    assert math.isnan(split_rhat(torch.zeros(3, 4)))


def test_interval_and_warnings():
    assert interval95(1.0, 0.1) == pytest.approx((1 - 0.196, 1 + 0.196), rel=1e-3)
    assert interval95(1.0, 1.0)[0] == 0.0  # a probability: clipped at 0
    # Student t for a standard error with few degrees of freedom: t_15(0.975) = 2.1314, t_31 = 2.0395
    assert interval95(1.0, 0.1, dof=15)[1] == pytest.approx(1.21314, abs=1e-4)
    assert interval95(1.0, 0.1, dof=31)[1] == pytest.approx(1.20395, abs=1e-4)
    assert trust_warnings(500.0, 0.3, 1e-6) == []
    assert trust_warnings(None, None, 1e-6, rhat=1.2) == []
    (ess,) = trust_warnings(20.0, 0.3, 1e-6)
    assert "effective sample size 20 < 100" in ess
    (tail,) = trust_warnings(500.0, 0.9, 1e-6)
    assert "Pareto k̂ 0.90 > 0.7" in tail
    (mix,) = trust_warnings(500.0, 0.1, 1e-6, rhat=3.0)
    assert "have not mixed" in mix and "3.00" in mix
    assert any("estimate is 0" in w for w in trust_warnings(0.0, math.nan, 0.0))
    assert any("too short" in w for w in trust_warnings(500.0, 0.1, 1e-6, rhat=math.nan))
