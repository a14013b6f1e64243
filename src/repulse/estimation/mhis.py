"""MHIS: Metropolis–Hastings importance sampling (Wu & Hilton 2024; docs/algorithms/lpe.md).

B independent chains target π(x) ∝ D(x)·exp(s(x)/T) with s = log f. Each step picks one position i uniformly
among the positions whose token is random, proposes x_i -> v from q(v | x) ∝ D_i(v)·exp(g_{i,v}(x)/T) (g: the
one-hot gradient of s at x) and accepts with

    log A = (s(x') - s(x))/T + log D_i(v) - log D_i(x_i) + log q(x_i | x') - log q(v | x),

the reverse proposal using the gradient at x'. Position choice does not depend on the state, and x' differs from x
only at i, so this is the exact MH ratio π(x') q(x | x') / (π(x) q(x' | x)) and π is stationary.

After `burn_in` steps every chain records s(x) = log f(x) at each step; with weights D/π ∝ exp(-s/T) the
self-normalised estimate is P̂ = Σ f·e^{-s/T} / Σ e^{-s/T} (consistent, biased at finite n).

Standard error (not computed by the reference): batch means. The units are whole chains, which are independent
(with fewer than 16 chains, each is cut into contiguous segments to make >= 16 units; segment means of a mixing
chain are nearly independent), so the ratio estimator's delta-method variance over units,
Σ_u (A_u - P̂·W_u)² / (U(U-1)·W̄²) with A_u = Σ f·w and W_u = Σ w over unit u, accounts for the autocorrelation
inside them; the 95% interval uses Student's t with U - 1 degrees of freedom. It is too small when the
chains have not mixed: the split-R̂ of log f (estimation/diagnostics.py) flags that, and the reported ESS is the Kish
ESS of the weights shrunk by the autocorrelation (chain_ess).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from repulse.estimation.diagnostics import kish_ess, pareto_k, split_rhat
from repulse.estimation.distributions import FactorizedDistribution
from repulse.estimation.montecarlo import LPEResult, TargetScorer, check_budget, progress_bar

MIN_UNITS = 16


@dataclass
class ChainTrace:
    """log_f [steps, chains] after burn-in, the acceptance rate, and the states [steps, chains, L] if recorded."""

    log_f: torch.Tensor
    acceptance_rate: float
    states: torch.Tensor | None = None


@dataclass
class ChainState:
    x: torch.Tensor  # [B, L] long
    log_f: torch.Tensor  # [B] float64
    grad: torch.Tensor  # [B, L, d] gradient of log f w.r.t. the input embeddings


def proposal_log_probs(scorer, log_d_rows: torch.Tensor, grad: torch.Tensor, pos: torch.Tensor, temperature: float):
    """log q(. | x) ∝ log D_i + g_i(x)/T for each chain's position i -> [B, V]."""
    rows = torch.arange(grad.shape[0], device=grad.device)
    g = scorer.project(grad[rows, pos.to(grad.device)])
    return torch.log_softmax(log_d_rows + g / temperature, dim=-1)


def mh_step(scorer, dist: FactorizedDistribution, state: ChainState, temperature: float, generator) -> torch.Tensor:
    """One Metropolis–Hastings step of every chain (state updated in place); returns the [B] accept mask."""
    n = state.x.shape[0]
    variable = dist.variable_positions()
    pos = variable[torch.randint(variable.numel(), (n,), generator=generator)]
    rows = torch.arange(n)
    log_d_rows = dist.log_probs[pos]
    log_q_fwd = proposal_log_probs(scorer, log_d_rows, state.grad, pos, temperature)
    v = torch.multinomial(log_q_fwd.exp(), 1, generator=generator).squeeze(1)
    old = state.x[rows, pos]
    proposed = state.x.clone()
    proposed[rows, pos] = v
    log_f_new, grad_new = scorer.log_prob_and_grad(proposed)
    log_q_rev = proposal_log_probs(scorer, log_d_rows, grad_new, pos, temperature)
    log_accept = (
        (log_f_new - state.log_f) / temperature
        + log_d_rows[rows, v]
        - log_d_rows[rows, old]
        + log_q_rev[rows, old]
        - log_q_fwd[rows, v]
    )
    accept = torch.rand(n, generator=generator, dtype=torch.float64).log() < log_accept
    state.x = torch.where(accept[:, None], proposed, state.x)
    state.log_f = torch.where(accept, log_f_new, state.log_f)
    on_device = accept.to(state.grad.device)[:, None, None]
    state.grad = torch.where(on_device, grad_new, state.grad)
    return accept


def run_chains(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    n_chains: int,
    n_steps: int,
    burn_in: int,
    temperature: float,
    generator: torch.Generator | None = None,
    record_states: bool = False,
    progress: bool = False,
) -> ChainTrace:
    """Run n_chains chains from D for burn_in + n_steps steps; record log f (and the states) after burn-in."""
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if dist.variable_positions().numel() == 0:
        raise ValueError("the input distribution has no random position: nothing to sample")
    x = dist.sample(n_chains, generator)
    state = ChainState(x, *scorer.log_prob_and_grad(x))
    log_f, states, accepted = [], [], 0
    with progress_bar(burn_in + n_steps, "mhis", "step", progress) as bar:
        for step in range(burn_in + n_steps):
            accept = mh_step(scorer, dist, state, temperature, generator)
            accepted += int(accept.sum())
            if step >= burn_in:
                log_f.append(state.log_f)
                if record_states:
                    states.append(state.x)
            bar.update(1)
    rate = accepted / max(1, n_chains * (burn_in + n_steps))
    return ChainTrace(torch.stack(log_f), rate, torch.stack(states) if record_states else None)


def ratio_std_err(log_f: torch.Tensor, temperature: float, segments: int | None = None) -> tuple[float, float, int]:
    """The self-normalised estimate and its batch-means standard error from log_f [steps, chains], with each
    chain cut into `segments` units (default: enough for >= MIN_UNITS units; `steps`: every state a unit)."""
    steps, chains = log_f.shape
    if segments is None:
        segments = max(1, min(steps, math.ceil(MIN_UNITS / chains)))
    log_w = -log_f / temperature
    shift = float(log_w.max())
    w = torch.exp(log_w - shift)
    fw = w * torch.exp(log_f)
    # Units: `segments` contiguous pieces of each chain (the last one takes the remainder).
    bounds = torch.linspace(0, steps, segments + 1).round().long()
    a = torch.stack([fw[bounds[k] : bounds[k + 1]].sum(0) for k in range(segments)]).flatten()
    w_units = torch.stack([w[bounds[k] : bounds[k + 1]].sum(0) for k in range(segments)]).flatten()
    estimate = float(a.sum() / w_units.sum())
    units = a.numel()
    if units < 2:
        return estimate, float("inf"), units
    resid = a - estimate * w_units
    se = float(torch.sqrt((resid**2).sum() / (units * (units - 1))) / w_units.mean())
    return estimate, se, units


def chain_ess(log_f: torch.Tensor, temperature: float, se: float) -> float:
    """Kish ESS of the weights e^{-s/T}, shrunk by the autocorrelation: × (SE as if every state were independent
    / batch-means SE)²."""
    kish = kish_ess(-log_f / temperature)
    _, se_iid, _ = ratio_std_err(log_f, temperature, segments=log_f.shape[0])
    if not (se > 0 and math.isfinite(se)):
        return kish
    return kish * min(1.0, (se_iid / se) ** 2) if se_iid > 0 else kish


def estimate_mhis(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    n_samples: int,
    batch_size: int,
    temperature: float,
    burn_in: int = 1024,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LPEResult:
    """MHIS estimate of P = E_D[f]: batch_size chains, n_samples / batch_size recorded steps each."""
    check_budget(n_samples, batch_size)
    if burn_in < 0:
        raise ValueError(f"--mhis_burn_in must be >= 0, got {burn_in}")
    t0, rows0 = time.perf_counter(), scorer.rows
    trace = run_chains(
        scorer,
        dist,
        n_chains=batch_size,
        n_steps=n_samples // batch_size,
        burn_in=burn_in,
        temperature=temperature,
        generator=generator,
        progress=progress,
    )
    estimate, se, units = ratio_std_err(trace.log_f, temperature)
    log_w = -trace.log_f / temperature
    details = {
        "acceptance_rate": trace.acceptance_rate,
        "ess": chain_ess(trace.log_f, temperature, se),
        "kish_ess": kish_ess(log_w),
        "pareto_k": pareto_k(log_w),
        "split_rhat": split_rhat(trace.log_f),
        "se_units": units,
        "se_dof": units - 1,
        "temperature": temperature,
        "burn_in": burn_in,
    }
    wall = time.perf_counter() - t0
    return LPEResult("mhis", estimate, se, n_samples, scorer.rows - rows0, wall, details)
