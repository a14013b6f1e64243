"""ITGIS: independent token gradient importance sampling (Wu & Hilton 2024; METHODS §7.3).

Batches b = 0 .. n/B - 1 draw inputs from a product proposal q_j(v) ∝ D_j(v)·exp(S_j(v)/T_b), where the score
table S [L, V] is an exponentially decayed sum of batch-mean one-hot gradients of log f, and
T_b = T·(1 - d^b)/(1 - d) (T_0 = 1; S = 0 then) turns that sum into a weighted average. Each batch's proposal
depends only on earlier batches, so P̂ = mean over all samples of f(x)·D(x)/q(x) is unbiased, and
SE = sd(f·D/q)/√n is the usual standard error of that importance-weighted mean. It treats the batches as one
i.i.d. sample; when the target is very rare the weights are heavy-tailed (the first batch, drawn from D itself,
almost never hits), the sample sd underestimates the spread and the SE is too small at small n: on the tests'
P ≈ 7.6e-10 toy (T = 2, batches of 32, 40 repeats) 95% intervals covered the truth 78% of the time at n = 256
and 95% at n = 2048. The estimate stays unbiased. Read it with the ESS in details.

Departure from the reference: the gradient is that of log f (all target tokens) through one ordinary forward
over the input embeddings, not the first target token's logit recomputed with the final norm applied twice.
"""

from __future__ import annotations

import time

import torch

from repulse.estimation.distributions import FactorizedDistribution
from repulse.estimation.montecarlo import LPEResult, TargetScorer, check_budget, kish_ess, mean_and_std_err


def itgis_temperature(temperature: float, decay_rate: float, batch_index: int) -> float:
    """T_b = T·(1 - d^b)/(1 - d) for b > 0 (the total weight of the decayed gradient sum), 1 for b = 0."""
    if batch_index == 0:
        return 1.0
    if decay_rate == 1.0:
        return temperature * batch_index
    return temperature * (1 - decay_rate**batch_index) / (1 - decay_rate)


def proposal_log_probs(log_d: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q_j(v) ∝ log D_j(v) + S_j(v)/T, normalised per position; -inf outside D's support -> [L, V]."""
    return torch.log_softmax(log_d + scores / temperature, dim=-1)


def sample_product(log_q: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n draws from the product distribution exp(log_q) [L, V] -> [n, L] long."""
    return torch.multinomial(log_q.exp(), n, replacement=True, generator=generator).T.contiguous()


def estimate_itgis(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    n_samples: int,
    batch_size: int,
    temperature: float,
    decay_rate: float = 0.9,
    generator: torch.Generator | None = None,
) -> LPEResult:
    """ITGIS estimate of P = E_D[f] with its standard error (see the module docstring)."""
    check_budget(n_samples, batch_size)
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if not 0 <= decay_rate <= 1:
        raise ValueError(f"--itgis_decay_rate must be in [0, 1], got {decay_rate}")
    t0, rows0 = time.perf_counter(), scorer.rows
    log_d = dist.log_probs
    scores = torch.zeros_like(log_d)
    n_batches = n_samples // batch_size
    log_terms = []
    for b in range(n_batches):
        log_q = proposal_log_probs(log_d, scores, itgis_temperature(temperature, decay_rate, b))
        x = sample_product(log_q, batch_size, generator)
        positions = torch.arange(dist.length)
        log_w = (log_d[positions, x] - log_q[positions, x]).sum(-1)
        if b + 1 < n_batches:
            log_f, grad = scorer.log_prob_and_grad(x)
            scores = decay_rate * scores + scorer.project(grad.mean(0))
        else:  # the last batch's gradient would update a proposal that is never used
            log_f = scorer.log_prob(x)
        log_terms.append(log_w + log_f)
    log_terms = torch.cat(log_terms)
    estimate, se = mean_and_std_err(log_terms)
    wall = time.perf_counter() - t0
    details = {"ess": kish_ess(log_terms), "temperature": temperature, "decay_rate": decay_rate}
    return LPEResult("itgis", estimate, se, n_samples, scorer.rows - rows0, wall, details)
