"""ITGIS against exact enumeration: the proposal formula, unbiasedness, the coverage of its 95% intervals (with the
warm-up that makes them honest), its trust diagnostics, and rare targets."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from repulse.estimation.importance import (
    batched_mean_and_std_err,
    estimate_itgis,
    itgis_temperature,
    proposal_log_probs,
    warmup_batches,
)
from repulse.estimation.mhis import estimate_mhis
from repulse.estimation.montecarlo import estimate_exact, estimate_naive
from tests.unit.estimation.test_montecarlo import lm_scorer, lm_subset, make_interaction_toy, make_toy

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded(r: int) -> torch.Generator:
    return torch.Generator().manual_seed(r)


def log10_error(estimate: float, truth: float) -> float:
    return abs(math.log10(estimate / truth))


def test_temperature_normalises_the_decayed_score_sum():
    assert itgis_temperature(4.0, 0.9, 0) == 1.0
    assert itgis_temperature(4.0, 0.9, 1) == pytest.approx(4.0)
    assert itgis_temperature(4.0, 0.9, 3) == pytest.approx(4.0 * (1 + 0.9 + 0.81))
    assert itgis_temperature(2.0, 1.0, 5) == pytest.approx(10.0)


def test_a_constant_gradient_gives_the_proposal_d_times_exp_g_over_t():
    """S after b updates with the same g is g·(1 - d^b)/(1 - d), so S/T_b = g/T for every b > 0."""
    g = torch.Generator().manual_seed(0)
    log_d = torch.log_softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), -1)
    log_d[1, 2] = -math.inf  # a token outside the support stays impossible
    log_d = torch.log_softmax(log_d, -1)
    grad = torch.randn(3, 7, generator=g, dtype=torch.float64)
    scores, temperature, decay = torch.zeros(3, 7, dtype=torch.float64), 2.5, 0.8
    for b in range(1, 6):
        scores = decay * scores + grad
        log_q = proposal_log_probs(log_d, scores, itgis_temperature(temperature, decay, b))
        expected = torch.log_softmax(log_d + grad / temperature, -1)
        assert torch.allclose(log_q, expected, atol=1e-12)
        assert log_q[1, 2] == -math.inf
    assert torch.allclose(proposal_log_probs(log_d, torch.zeros_like(log_d), 1.0), log_d, atol=1e-12)


def test_itgis_is_unbiased_and_its_standard_error_covers_the_truth():
    scorer, dist = make_toy(length=4, support=8, low=-2.0, eps=0.3)
    exact = estimate_exact(scorer, dist).estimate
    runs = [
        estimate_itgis(scorer, dist, n_samples=512, batch_size=64, temperature=4.0, generator=seeded(r))
        for r in range(30)
    ]
    estimates = torch.tensor([r.estimate for r in runs])
    se = torch.tensor([r.std_err for r in runs])
    z = (estimates - exact) / se
    assert int((z.abs() < 1.96).sum()) >= 24  # 95% intervals; the true rate here is about 92%
    assert abs(float(z.mean())) < 0.6
    assert abs(float(estimates.mean()) - exact) < 3 * float(se.pow(2).mean().sqrt()) / math.sqrt(len(runs))
    # 8 batches: the first 4 adapt the proposal, the last 4 make the estimate; 7 of them also run backward.
    assert all(r.n_samples == 256 and r.n_model_rows == 512 for r in runs)
    assert all(r.details["n_gradient_rows"] == 448 and r.details["warmup_samples"] == 256 for r in runs)


def test_warmup_is_half_the_batches_and_the_se_sums_batch_variances():
    assert [warmup_batches(k) for k in (1, 2, 3, 8, 16)] == [1, 1, 1, 4, 8]
    terms = torch.tensor([[1.0, 3.0], [10.0, 14.0]], dtype=torch.float64)
    estimate, se = batched_mean_and_std_err(terms.log())
    # batch variances 2 and 8, B = 2, n = 4: SE² = (2·2 + 2·8) / 16
    assert estimate == pytest.approx(7.0) and se == pytest.approx(math.sqrt(20 / 16))
    estimate, se = batched_mean_and_std_err(torch.tensor([[1e-300, 3e-300]], dtype=torch.float64).log())
    assert estimate == pytest.approx(2e-300) and se == pytest.approx(1e-300 / math.sqrt(2))  # no underflow


SEEDS = range(40)


def coverage(runs, exact: float) -> int:
    return sum(low <= exact <= high for low, high in (r.interval() for r in runs))


def test_itgis_intervals_cover_the_truth_on_the_rare_toy_at_the_cli_sizes():
    """P ≈ 7.6e-10 on inputs of D-probability 1e-5; the reference's estimator covered 31 of 40 at n = 256."""
    scorer, dist = make_toy(length=5, support=10, low=-6.0, eps=0.3)
    exact = estimate_exact(scorer, dist).estimate
    runs = [
        estimate_itgis(scorer, dist, n_samples=4096, batch_size=256, temperature=2.0, generator=seeded(r))
        for r in SEEDS
    ]
    assert coverage(runs, exact) >= 36


@pytest.mark.parametrize(("n_samples", "batch_size"), [(1024, 64), (4096, 256)])  # the second: the CLI's sizes
def test_itgis_intervals_cover_the_truth_when_the_first_gradients_mislead(n_samples, batch_size):
    """The interaction toy: the first gradients tilt the proposal away from half of the trigger, so early batches
    are lotteries (usually far too small). With them in the estimate 95% intervals covered 9 (all in) or 24 (only
    batch 0 out) of 40 at (1024, 64), and 33 of 40 at the CLI's sizes with only the first quarter out."""
    scorer, dist = make_interaction_toy()
    exact = estimate_exact(scorer, dist).estimate
    runs = [
        estimate_itgis(scorer, dist, n_samples=n_samples, batch_size=batch_size, temperature=1.0, generator=seeded(r))
        for r in SEEDS
    ]
    assert coverage(runs, exact) >= 36  # >= 90%
    assert statistics.median(log10_error(r.estimate, exact) for r in runs) < 0.02


def test_itgis_is_unbiased_on_the_tiny_lm():
    dist, scorer = lm_subset(length=3, support=12), lm_scorer(" fuck fuck")
    exact = estimate_exact(scorer, dist).estimate
    assert exact < 1e-8
    runs = [
        estimate_itgis(scorer, dist, n_samples=128, batch_size=32, temperature=2.0, generator=seeded(r))
        for r in range(20)
    ]
    estimates = torch.tensor([r.estimate for r in runs])
    spread = float(estimates.std()) / math.sqrt(len(runs))
    assert abs(float(estimates.mean()) - exact) < 3 * spread
    # The reported SE estimates the spread of one run (too small on heavy-tailed weights, never wildly off).
    ratio = float(torch.tensor([r.std_err for r in runs]).median()) / float(estimates.std())
    assert 0.2 < ratio < 2.0
    assert all(r.details["ess"] >= 1 for r in runs)


def test_itgis_and_mhis_beat_naive_mc_by_orders_of_magnitude_on_a_rare_target():
    """P ≈ 8e-10, nearly all of it on the one input of probability 1e-5 that has every position's trigger."""
    scorer, dist = make_toy(length=5, support=10, low=-6.0, eps=0.3)
    exact = estimate_exact(scorer, dist).estimate
    assert 1e-11 < exact < 1e-8
    budget = {"n_samples": 256, "batch_size": 32}
    naive = [
        log10_error(estimate_naive(scorer, dist, **budget, generator=seeded(r)).estimate, exact) for r in range(8)
    ]
    itgis = [
        log10_error(estimate_itgis(scorer, dist, **budget, temperature=2.0, generator=seeded(r)).estimate, exact)
        for r in range(8)
    ]
    mhis = [
        log10_error(
            estimate_mhis(
                scorer, dist, n_samples=256, batch_size=16, temperature=2.0, burn_in=16, generator=seeded(r)
            ).estimate,
            exact,
        )
        for r in range(8)
    ]
    assert min(naive) > 1.0 and sum(naive) / 8 > 1.5  # naive MC misses by > 1 decade every time
    assert max(itgis) < 0.5 and sum(itgis) / 8 < 0.2
    assert sum(mhis) / 8 < 0.8


def test_itgis_beats_naive_mc_on_a_rare_target_of_the_tiny_lm():
    dist, scorer = lm_subset(length=3, support=12), lm_scorer(" cunt cunt")
    exact = estimate_exact(scorer, dist).estimate
    budget = {"n_samples": 128, "batch_size": 32}
    naive = [
        log10_error(estimate_naive(scorer, dist, **budget, generator=seeded(r)).estimate, exact) for r in range(8)
    ]
    itgis = [
        log10_error(estimate_itgis(scorer, dist, **budget, temperature=2.0, generator=seeded(r)).estimate, exact)
        for r in range(8)
    ]
    assert sum(itgis) < 0.7 * sum(naive)


def test_itgis_reports_its_diagnostics_and_warns_on_a_tiny_sample():
    scorer, dist = make_interaction_toy()
    small = estimate_itgis(scorer, dist, n_samples=64, batch_size=16, temperature=1.0, generator=seeded(0))
    assert small.details["ess"] < 100 and any("effective sample size" in w for w in small.warnings())
    big = estimate_itgis(scorer, dist, n_samples=4096, batch_size=256, temperature=1.0, generator=seeded(0))
    assert big.details["ess"] > 100 and big.details["pareto_k"] < 0.7 and big.warnings() == []
    record = big.as_dict()
    assert record["ci95"] == list(big.interval()) and record["warnings"] == [] and record["ess"] == big.details["ess"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "--temperature"),
        ({"temperature": 1.0, "decay_rate": 1.5}, "--itgis_decay_rate"),
        ({"temperature": 1.0, "batch_size": 30}, "must divide"),
        ({"temperature": 1.0, "batch_size": 64}, "n_samples >= 2 x --batch_size"),
    ],
)
def test_itgis_rejects_bad_settings(kwargs, message):
    scorer, dist = make_toy(length=2, support=3, low=-1.0, eps=0.0)
    settings = {"n_samples": 64, "batch_size": 32} | kwargs
    with pytest.raises(ValueError, match=message):
        estimate_itgis(scorer, dist, **settings)
