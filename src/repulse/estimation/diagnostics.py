"""When to trust a low-probability estimate: effective sample size, Pareto tail shape, 95% interval, warnings.

An importance-sampling mean is a mean of heavy-tailed terms t = w·f. Its sample standard error only describes the
terms that were drawn: when a few large terms dominate, or when the large terms have not been drawn at all, the
interval P̂ ± 1.96·SE covers the truth far less often than 95%. Two diagnostics flag the first case:

- the Kish effective sample size (Σt)²/Σt² of the terms: how many equally weighted draws the estimate is worth;
  with ESS < MIN_ESS the standard error itself is too noisy to trust;
- the Pareto shape k̂ of the largest terms (Vehtari et al., "Pareto smoothed importance sampling", 2024; the
  generalized Pareto fit of Zhang & Stephens, 2009): the terms' variance is infinite when k > 1/2, and the mean
  converges impractically slowly when k > 0.7 (MAX_PARETO_K), whatever the ESS says.

For MHIS, whose states are autocorrelated chains, the split-R̂ of log f (Gelman et al., BDA3 §11.4: every chain
cut in two halves, between-half against within-half variance) flags chains stuck where they started. The usual
threshold of 1.1 is not used: with many short chains (the CLI's 256 chains x 16 recorded steps) R̂ exceeds it
(≈ 1.3 on a toy) even when the ensemble of chains is already at stationarity and the intervals cover (39 of 40);
chains stuck in separate regions give R̂ ≈ 4 (planted-trigger LM, coverage 65%). MAX_RHAT = 1.5 separates the two.

None of these can flag a region of inputs the sampler never reached (nothing in the sample hints at it): a small P̂ with
a tight interval is only as good as the proposal's reach. docs/algorithms/lpe.md shows when that happens.
"""

from __future__ import annotations

import math

import torch

MIN_ESS = 100.0
MAX_PARETO_K = 0.7
MAX_RHAT = 1.5
MIN_PROPOSAL_KL = 1.0
Z95 = 1.959963984540054


def kish_ess(log_weights: torch.Tensor) -> float:
    """Effective sample size (Σw)² / Σw² of weights (or terms) given in log space."""
    log_weights = log_weights.double().flatten()
    top = log_weights.max()
    if not torch.isfinite(top):
        return 0.0
    w = torch.exp(log_weights - top)
    return float(w.sum() ** 2 / (w**2).sum())


def gpd_shape(exceedances: torch.Tensor) -> float:
    """Shape k of a generalized Pareto fit to positive exceedances (Zhang & Stephens 2009, with the weakly
    informative prior towards k = 0.5 that PSIS uses)."""
    x = exceedances.double().sort().values
    n = x.numel()
    m = 30 + int(math.sqrt(n))
    grid = 1 - torch.sqrt(m / (torch.arange(1, m + 1, dtype=torch.float64) - 0.5))
    grid = grid / (3 * x[max(0, int(n / 4 + 0.5) - 1)]) + 1 / x[-1]
    k_grid = torch.log1p(-grid[:, None] * x).mean(-1)
    log_lik = n * (torch.log(-grid / k_grid) - k_grid - 1)
    weights = 1 / torch.exp(log_lik[None, :] - log_lik[:, None]).sum(-1)
    theta = float((grid * weights).sum() / weights.sum())
    k = float(torch.log1p(-theta * x).mean())
    return (k * n + 10 * 0.5) / (n + 10)


def pareto_k(log_terms: torch.Tensor) -> float:
    """k̂ of the largest min(n/5, 3√n) terms above the next one (PSIS's tail size); nan when too few differ."""
    t = log_terms.double().flatten()
    t = t[torch.isfinite(t)]
    n = t.numel()
    tail = int(min(n / 5, 3 * math.sqrt(n)))
    if tail < 5:
        return math.nan
    top = torch.topk(t, tail + 1).values
    shift = top[0]
    exceed = torch.exp(top[:tail] - shift) - torch.exp(top[tail] - shift)
    if float(exceed.min()) <= 0:  # ties at the threshold: the tail is flat, not heavy
        exceed = exceed[exceed > 0]
        if exceed.numel() < 5:
            return math.nan
    return gpd_shape(exceed)


def split_rhat(values: torch.Tensor) -> float:
    """Split-R̂ of values [steps, chains]: each chain's first and second half as separate chains; nan if < 4 steps."""
    half = values.shape[0] // 2
    if half < 2:
        return math.nan
    halves = torch.cat([values[:half], values[half : 2 * half]], dim=1).double()
    within = halves.var(dim=0, correction=1).mean()
    between = half * halves.mean(dim=0).var(correction=1)
    if float(within) == 0.0:
        return 1.0 if float(between) == 0.0 else math.inf
    return math.sqrt(float(((half - 1) / half * within + between / half) / within))


def t_quantile_975(dof: float | None) -> float:
    """The 97.5% quantile of Student's t with `dof` degrees of freedom (Cornish-Fisher expansion, within 1e-3 of
    the exact value for dof >= 5); the normal 1.96 for None or infinite dof."""
    if dof is None or not math.isfinite(dof):
        return Z95
    z, v = Z95, max(float(dof), 1.0)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / v + g2 / v**2 + g3 / v**3


def interval95(estimate: float, std_err: float, dof: float | None = None) -> tuple[float, float]:
    """The reported 95% interval P̂ ± q·SE, q the normal (or, given `dof`, Student t) 97.5% quantile, clipped
    below at 0 (a probability)."""
    q = t_quantile_975(dof)
    return max(0.0, estimate - q * std_err), estimate + q * std_err


def trust_warnings(
    ess: float | None,
    k_hat: float | None,
    estimate: float,
    rhat: float | None = None,
    gradient_kl: float | None = None,
    proposal_kl: float | None = None,
) -> list[str]:
    """Plain-language reasons not to trust the estimate or its error bar (empty when none apply)."""
    out = []
    if gradient_kl is not None and gradient_kl < MIN_PROPOSAL_KL:
        out.append(
            f"the gradient barely moved its proposal (KL to D {gradient_kl:.2f} < {MIN_PROPOSAL_KL} nats): the "
            "gradient found no direction to the inputs that may hold P, so the interval says nothing about inputs "
            "rarer than the sample reached (try --method ceis, or a smaller --temperature)"
        )
    if proposal_kl is not None and proposal_kl < MIN_PROPOSAL_KL:
        out.append(
            f"the cross-entropy proposal stayed near D (KL {proposal_kl:.2f} < {MIN_PROPOSAL_KL} nats): no sampled "
            "token stood out, so the interval says nothing about inputs rarer than the sample reached"
        )
    if rhat is not None and math.isfinite(rhat) and rhat > MAX_RHAT:
        out.append(
            f"the chains have not mixed (split-R̂ of log f {rhat:.2f} > {MAX_RHAT}): the estimate is biased towards "
            "where they started and the interval is too narrow (fewer chains, more --mhis_steps / --mhis_burn_in)"
        )
    elif rhat is not None and not math.isfinite(rhat):
        out.append("the chains are too short to check that they mixed (split-R̂ needs >= 4 recorded steps)")
    if estimate <= 0:
        out.append("the estimate is 0: no sampled input gave the target any probability")
    if ess is not None and ess < MIN_ESS:
        out.append(
            f"effective sample size {ess:.0f} < {MIN_ESS:.0f}: a few inputs carry the estimate and its standard "
            "error is unreliable (more samples, or another --temperature)"
        )
    if k_hat is not None and math.isfinite(k_hat) and k_hat > MAX_PARETO_K:
        out.append(
            f"Pareto k̂ {k_hat:.2f} > {MAX_PARETO_K}: the largest sampled terms are heavy-tailed, so the interval "
            "may undercover (more samples, or another --temperature)"
        )
    return out
