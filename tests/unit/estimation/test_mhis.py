"""MHIS: the chain's stationary distribution is D·f^(1/T)/Z, the self-normalised estimate, its batch-means SE and
the coverage of its 95% intervals, and its mixing diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.estimation.diagnostics import interval95, split_rhat
from repulse.estimation.distributions import FactorizedDistribution
from repulse.estimation.mhis import estimate_mhis, ratio_std_err, run_chains
from repulse.estimation.montecarlo import LPEResult, enumerate_inputs, estimate_exact
from tests.unit.estimation.test_montecarlo import lm_scorer, lm_subset, make_toy

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_chains_converge_to_d_times_f_to_the_one_over_t():
    """The MH acceptance ratio is right: the empirical state distribution matches π ∝ D·exp(log f / T)."""
    scorer, dist = make_toy(length=2, support=4, low=-2.0, eps=1.0, vocab=6)
    dist = FactorizedDistribution(
        dist.probs
        * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
        / (dist.probs * torch.arange(1, 7)).sum(-1, keepdim=True)
    )
    temperature = 1.5
    states = enumerate_inputs(dist, 0, dist.num_inputs())
    log_pi = dist.log_prob(states) + scorer.log_prob(states) / temperature
    pi = torch.softmax(log_pi, 0)
    trace = run_chains(
        scorer,
        dist,
        n_chains=400,
        n_steps=20,
        burn_in=20,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
        record_states=True,
    )
    visited = trace.states.reshape(-1, 2)
    counts = torch.stack([(visited == s).all(-1).sum() for s in states]).double()
    total_variation = 0.5 * float((counts / counts.sum() - pi).abs().sum())
    assert total_variation < 0.05
    # A sampler that ignored f (i.e. sampled D) would be far off: the test can tell.
    assert 0.5 * float((dist.log_prob(states).exp() - pi).abs().sum()) > 0.2
    assert 0.05 < trace.acceptance_rate <= 1.0
    assert trace.log_f.shape == (20, 400)


def test_ratio_estimate_and_standard_error_by_hand():
    # Constant f: every weight equal, the estimate is f and the SE is 0.
    est, se, units = ratio_std_err(torch.full((8, 4), math.log(0.25), dtype=torch.float64), temperature=2.0)
    assert est == pytest.approx(0.25) and se == pytest.approx(0.0, abs=1e-15) and units == 16  # 4 chains x 4 pieces
    # One chain, one step per unit: P̂ = Σ f w / Σ w with w = f^(-1/T).
    f = torch.tensor([0.1, 0.2, 0.4, 0.8], dtype=torch.float64)
    est, se, units = ratio_std_err(f.log()[:, None], temperature=1.0)
    w = 1 / f
    assert units == 4
    assert est == pytest.approx(float((f * w).sum() / w.sum()))  # the harmonic mean of f at T = 1
    resid = f * w - est * w
    assert se == pytest.approx(math.sqrt(float((resid**2).sum()) / 12) / float(w.mean()))


def test_mhis_estimate_is_close_to_exact_on_the_tiny_lm():
    dist, scorer = lm_subset(length=3, support=12), lm_scorer(" motherfucker")
    exact = estimate_exact(scorer, dist).estimate
    result = estimate_mhis(
        scorer,
        dist,
        n_samples=512,
        batch_size=32,
        temperature=4.0,
        burn_in=8,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(math.log10(result.estimate / exact)) < 0.5
    assert 0 < result.std_err < result.estimate
    assert result.n_samples == 512 and result.n_model_rows == 32 * (1 + 8 + 16)  # initial states + steps
    assert 0 < result.details["acceptance_rate"] < 1 and result.details["se_units"] == 32
    # The reported ESS is the Kish ESS of the weights shrunk by the autocorrelation; R̂ and k̂ are reported.
    assert 0 < result.details["ess"] <= result.details["kish_ess"]
    assert {"split_rhat", "pareto_k"} <= set(result.details) and "warnings" in result.as_dict()


def test_mhis_rejects_bad_settings():
    scorer, dist = make_toy(length=2, support=3, low=-1.0, eps=0.0)
    with pytest.raises(ValueError, match="--mhis_burn_in"):
        estimate_mhis(scorer, dist, n_samples=32, batch_size=8, temperature=1.0, burn_in=-1)
    with pytest.raises(ValueError, match="--temperature"):
        estimate_mhis(scorer, dist, n_samples=32, batch_size=8, temperature=0.0)
    fixed = FactorizedDistribution(torch.eye(12, dtype=torch.float64)[:2])
    with pytest.raises(ValueError, match="no random position"):
        estimate_mhis(scorer, fixed, n_samples=32, batch_size=8, temperature=1.0)


@pytest.mark.parametrize(
    ("chains", "burn_in", "steps", "temperature"),
    [(16, 32, 128, 2.0), (256, 64, 16, 4.0)],  # the second: the CLI's default sizes and temperature
)
def test_mhis_intervals_cover_the_truth_when_the_chains_mix(chains, burn_in, steps, temperature):
    """Autocorrelated chains: with every state counted as an independent unit the 95% intervals covered only 20-25
    (first setting) and 23-29 (second) of 40 runs; whole chains as units with a t quantile cover >= 36.

    The 40 runs are 40 disjoint groups of chains of one call (chains are independent), which is what
    estimate_mhis runs, 40 times faster."""
    scorer, dist = make_toy(length=4, support=8, low=-2.0, eps=0.3)
    exact = estimate_exact(scorer, dist).estimate
    trace = run_chains(
        scorer,
        dist,
        n_chains=40 * chains,
        n_steps=steps,
        burn_in=burn_in,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )
    covered, units = 0, set()
    for run in trace.log_f.split(chains, dim=1):
        estimate, se, n_units = ratio_std_err(run, temperature)
        low, high = interval95(estimate, se, dof=n_units - 1)
        covered += low <= exact <= high
        units.add(n_units)
        assert split_rhat(run) < 1.5  # mixed: no warning
    assert covered >= 36
    assert units == {chains}  # whole chains are the units


def test_mhis_warns_when_its_chains_have_not_mixed():
    stuck = LPEResult("mhis", 1e-6, 1e-7, 4096, 4096, 1.0, {"ess": 500.0, "pareto_k": 0.1, "split_rhat": 3.8})
    (warning,) = stuck.warnings()
    assert "have not mixed" in warning and "3.80" in warning
    assert "have not mixed" in stuck.as_dict()["warnings"][0]
