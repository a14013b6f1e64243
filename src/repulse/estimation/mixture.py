"""Mixture importance sampling: D, the ITGIS proposal and the cross-entropy proposal in one (docs/algorithms/lpe.md).

ITGIS and CEIS fail in opposite places. ITGIS's gradient looks one token ahead: it finds a trigger token whose
effect shows only next to another one, but on some models it points nowhere (the planted `triple`: 0 of 40
intervals covered). CEIS follows the tokens whose sampled terms are large, which needs no gradient, but a token
that only helps next to a rare partner stays invisible to it until the pair is drawn (the interaction toy of the
tests: 8 of 40). Drawing every batch from the mixture

    q_mix = a·D + (1 - a)/2·q_grad + (1 - a)/2·q_ce      (a = `defensive`)

reaches wherever either proposal reaches, and the importance ratio is that of the whole mixture (the balance
heuristic of multiple importance sampling, Veach & Guibas 1995; defensive mixtures, Hesterberg 1995; Owen & Zhou
2000): w = D/q_mix <= 1/a, and where one component fits, the terms' variance is at most (2/(1 - a)) times that
component's own. Both components adapt from every batch: q_grad = ITGIS's tilt D·exp(S/T_b) by the decayed mean
gradient (estimation/importance.py), q_ce = the smoothed weighted token frequencies of all terms so far
(estimation/crossentropy.py). As in ITGIS the first half of the batches is a warm-up left out of the estimate, every
batch's proposal depends only on earlier batches (so each batch mean is unbiased), and the standard error comes from
the within-batch variances. It costs what ITGIS costs: a forward and a backward pass per input but the last batch.
Like ITGIS it warns when the gradient left its component at D (`gradient_kl`): the mixture then rests on the CE
component alone, with a fraction of CEIS's draws (on the planted `triple` it stayed 0.33 decades low).
"""

from __future__ import annotations

import math
import time

import torch

from repulse.estimation.crossentropy import ce_update, weighted_marginals
from repulse.estimation.diagnostics import kish_ess, pareto_k
from repulse.estimation.distributions import FactorizedDistribution
from repulse.estimation.importance import (
    batched_mean_and_std_err,
    check_defensive,
    check_settings,
    itgis_temperature,
    proposal_kl,
    proposal_log_probs,
    sample_product,
    warmup_batches,
)
from repulse.estimation.montecarlo import LPEResult, TargetScorer, progress_bar


def mixture_log_ratio(log_d: torch.Tensor, components: list[tuple[float, torch.Tensor]], x: torch.Tensor):
    """log D(x) - log Σ_c share_c·q_c(x) for inputs x [n, L] and product components [(share, log q [L, V])]."""
    positions = torch.arange(log_d.shape[0])
    log_mix = torch.stack([math.log(share) + log_q[positions, x].sum(-1) for share, log_q in components if share > 0])
    return log_d[positions, x].sum(-1) - torch.logsumexp(log_mix, dim=0)


def sample_mixture(
    log_d: torch.Tensor, components: list[tuple[float, torch.Tensor]], n: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws from Σ_c share_c·q_c (each draw picks its component), with their log ratios D/q_mix."""
    shares = torch.tensor([share for share, _ in components], dtype=torch.float64)
    which = torch.multinomial(shares, n, replacement=True, generator=generator)
    x = torch.empty(n, log_d.shape[0], dtype=torch.long)
    for c, (share, log_q) in enumerate(components):
        mine = which == c
        if share > 0 and bool(mine.any()):
            x[mine] = sample_product(log_q, int(mine.sum()), generator)
    return x, mixture_log_ratio(log_d, components, x)


def estimate_mixture(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    n_samples: int,
    batch_size: int,
    temperature: float,
    decay_rate: float = 0.9,
    defensive: float = 0.2,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LPEResult:
    """Mixture estimate of P = E_D[f] from the batches after the warm-up, with its standard error (module
    docstring)."""
    check_settings(n_samples, batch_size, temperature, decay_rate)
    check_defensive(defensive)
    t0, rows0 = time.perf_counter(), scorer.rows
    log_d, d = dist.log_probs, dist.probs.double()
    scores, q_ce = torch.zeros_like(log_d), d.clone()
    n_batches = n_samples // batch_size
    warmup = warmup_batches(n_batches)
    seen_x, seen_terms, log_terms = [], [], []
    with progress_bar(n_samples, "mixture", "sample", progress) as bar:
        for b in range(n_batches):
            log_grad = proposal_log_probs(log_d, scores, itgis_temperature(temperature, decay_rate, b))
            half = (1 - defensive) / 2
            components = [(defensive, log_d), (half, log_grad), (half, q_ce.log())]
            x, log_w = sample_mixture(log_d, components, batch_size, generator)
            if b + 1 < n_batches:
                log_f, grad = scorer.log_prob_and_grad(x)
                scores = decay_rate * scores + scorer.project(grad.mean(0))
            else:  # the last batch's gradient would update a proposal that is never used
                log_f = scorer.log_prob(x)
            seen_x.append(x)
            seen_terms.append(log_w + log_f)
            if b >= warmup:
                log_terms.append(seen_terms[-1])
            q_ce = ce_update(q_ce, d, weighted_marginals(torch.cat(seen_x), torch.cat(seen_terms), d.shape[1]))
            bar.update(batch_size)
    log_terms = torch.stack(log_terms)
    estimate, se = batched_mean_and_std_err(log_terms)
    details = {
        "ess": kish_ess(log_terms),
        "pareto_k": pareto_k(log_terms),
        "n_gradient_rows": (n_batches - 1) * batch_size,
        "warmup_samples": warmup * batch_size,
        "temperature": temperature,
        "decay_rate": decay_rate,
        "defensive_fraction": defensive,
        "gradient_kl": proposal_kl(log_grad, log_d),
        "ce_proposal_kl": proposal_kl(q_ce.log(), log_d),
    }
    wall = time.perf_counter() - t0
    return LPEResult("mixture", estimate, se, log_terms.numel(), scorer.rows - rows0, wall, details)
