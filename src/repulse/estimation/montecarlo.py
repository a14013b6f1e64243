"""The target probability f(x) = p(y | x) of a causal LM, and the two estimators that only evaluate it.

P = E_{x~D}[f(x)] with f(x) = Π_k M(y_k | x, y_<k) (teacher-forced softmax probability of the target tokens y
after the input x). `LMTargetScorer` evaluates log f, and its gradient with respect to the input
embeddings from one ordinary forward through `inputs_embeds` (the reference ran the transformer body and then the
final norm again, applying the norm twice). Estimators only see the `TargetScorer` protocol, so they run on
any model, or on an analytic toy in tests.

- `estimate_naive`: naive Monte Carlo (`--method bruteforce`), mean of f over x ~ D, SE = sd(f)/√n.
- `estimate_exact`: Σ_x D(x) f(x) over the whole support, when |support| is small enough to enumerate.

Every result carries its 95% interval and the reasons, if any, not to trust it (estimation/diagnostics.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from repulse.estimation.diagnostics import interval95, kish_ess, pareto_k, trust_warnings
from repulse.estimation.distributions import FactorizedDistribution


@dataclass
class LPEResult:
    """One estimate of P with its standard error; n_model_rows counts inputs run through the model (burn-in too)."""

    method: str
    estimate: float
    std_err: float
    n_samples: int
    n_model_rows: int
    wall_time_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def interval(self) -> tuple[float, float]:
        """The reported 95% interval P̂ ± 1.96·SE (Student t when the SE has few degrees of freedom, `se_dof`),
        clipped at 0."""
        return interval95(self.estimate, self.std_err, self.details.get("se_dof"))

    def warnings(self) -> list[str]:
        """Why the estimate or its error bar should not be trusted (ESS, Pareto k̂, a zero estimate)."""
        if self.method == "exact":
            return []
        d = self.details
        kl = {"gradient_kl": d.get("gradient_kl"), "proposal_kl": d.get("proposal_kl")}
        return trust_warnings(d.get("ess"), d.get("pareto_k"), self.estimate, d.get("split_rhat"), **kl)

    def as_dict(self) -> dict[str, Any]:
        log10 = math.log10(self.estimate) if self.estimate > 0 else float("-inf")
        low, high = self.interval()
        return {
            "method": self.method,
            "estimate": self.estimate,
            "log10_estimate": log10,
            "std_err": self.std_err,
            "ci95": [low, high],
            "n_samples": self.n_samples,
            "n_model_rows": self.n_model_rows,
            "wall_time_s": self.wall_time_s,
            **self.details,
            "warnings": self.warnings(),
        }


class TargetScorer(Protocol):
    """log f(x) for a batch of inputs, and its gradient with respect to the input embeddings.

    The one-hot gradient of log f at position j for token v is grad_j · token_embeddings[v]; `project` computes
    it for a batch of embedding gradients. A toy scorer over one-hot inputs uses the identity as embeddings.
    """

    rows: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, L] long -> [B] float64

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...  # -> [B], [B, L, d]

    def project(self, grad: torch.Tensor) -> torch.Tensor: ...  # [..., d] -> [..., V] float64 on the CPU


class LMTargetScorer:
    """A Hugging Face causal LM (any nn.Module taking input_ids / inputs_embeds and returning .logits) and a target.

    Runs in eval mode without dropout. `rows` counts the inputs scored so far (forward passes over one input).
    """

    def __init__(self, model: torch.nn.Module, target_ids: torch.Tensor | list[int]):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.target = torch.as_tensor(target_ids, dtype=torch.long).flatten().to(self.device)
        if self.target.numel() == 0:
            raise ValueError("the target must have at least one token")
        self.embedding = model.get_input_embeddings()
        self.rows = 0

    def _log_f(self, logits: torch.Tensor, length: int) -> torch.Tensor:
        # Logits at position L-1+k predict target token k.
        k = self.target.numel()
        logp = torch.log_softmax(logits[:, length - 1 : length - 1 + k].double(), dim=-1)
        return logp.gather(-1, self.target.expand(logits.shape[0], -1)[..., None]).squeeze(-1).sum(-1)

    def _ids(self, x: torch.Tensor) -> torch.Tensor:
        # [x; y_1 .. y_{K-1}]: the last target token only predicts what follows the target, and a causal LM's
        # earlier logits do not depend on it, so it is left out (for a one-token target this halves the work).
        x = x.to(self.device)
        return torch.cat([x, self.target[:-1].expand(x.shape[0], -1)], dim=1)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        ids = self._ids(x)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        self.rows += x.shape[0]
        return self._log_f(out.logits, x.shape[1]).cpu()

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._ids(x)
        with torch.enable_grad():
            embeds = self.embedding(ids).detach().requires_grad_(True)
            out = self.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False)
            log_f = self._log_f(out.logits, x.shape[1])
            (grad,) = torch.autograd.grad(log_f.sum(), embeds)
        self.rows += x.shape[0]
        return log_f.detach().cpu(), grad[:, : x.shape[1]]

    @torch.no_grad()
    def project(self, grad: torch.Tensor) -> torch.Tensor:
        return (grad.to(self.embedding.weight.dtype) @ self.embedding.weight.T).double().cpu()


# ---- statistics in log space --------------------------------------------------------------------------------------
def mean_and_std_err(log_values: torch.Tensor) -> tuple[float, float]:
    """Mean of exp(log_values) and its standard error sd/√n, computed after scaling by the largest value."""
    log_values = log_values.double()
    n = log_values.numel()
    top = float(log_values.max())
    if not math.isfinite(top):
        return 0.0, 0.0
    scaled = torch.exp(log_values - top)
    sd = float(scaled.std(correction=1)) if n > 1 else float("inf")
    return math.exp(top) * float(scaled.mean()), math.exp(top) * sd / math.sqrt(n)


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr (a no-op object when disabled); use as a context manager and call update(n)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def check_budget(n_samples: int, batch_size: int) -> None:
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples} and {batch_size}")
    if n_samples % batch_size:
        raise ValueError(f"--batch_size {batch_size} must divide --n_samples {n_samples}")


# ---- estimators -----------------------------------------------------------------------------------------------------
def estimate_naive(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    n_samples: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LPEResult:
    """Naive Monte Carlo: P̂ = mean f(x) over x ~ D, SE = sd(f)/√n. Unbiased, but nearly all of P may sit on
    inputs that n draws never reach, so for rare targets it typically underestimates by orders of magnitude."""
    check_budget(n_samples, batch_size)
    t0, rows0 = time.perf_counter(), scorer.rows
    log_f = []
    with progress_bar(n_samples, "bruteforce", "sample", progress) as bar:
        for _ in range(n_samples // batch_size):
            log_f.append(scorer.log_prob(dist.sample(batch_size, generator)))
            bar.update(batch_size)
    log_f = torch.cat(log_f)
    estimate, se = mean_and_std_err(log_f)
    wall = time.perf_counter() - t0
    details = {"ess": kish_ess(log_f), "pareto_k": pareto_k(log_f)}
    return LPEResult("bruteforce", estimate, se, n_samples, scorer.rows - rows0, wall, details)


def enumerate_inputs(dist: FactorizedDistribution, start: int, stop: int) -> torch.Tensor:
    """Inputs start..stop-1 of the support in mixed-radix order (last position fastest) -> [stop - start, L]."""
    supports = [torch.nonzero(row > 0).flatten() for row in dist.probs]
    index = torch.arange(start, stop, dtype=torch.long)
    columns = []
    for support in reversed(supports):
        columns.append(support[index % support.numel()])
        index = index // support.numel()
    return torch.stack(columns[::-1], dim=1)


def estimate_exact(
    scorer: TargetScorer,
    dist: FactorizedDistribution,
    *,
    batch_size: int = 4096,
    max_inputs: int = 2_000_000,
    progress: bool = False,
) -> LPEResult:
    """P = Σ_x D(x) f(x) over the whole support (std_err 0). Raises ValueError when |support| > max_inputs."""
    total = dist.num_inputs()
    if total > max_inputs:
        sizes = dist.support_sizes()
        raise ValueError(
            f"exact enumeration needs {total:.3g} inputs ({' x '.join(map(str, sizes))}), over the limit of "
            f"{max_inputs:.3g}: use a shorter --sequence_length or --method itgis / mhis / bruteforce"
        )
    t0, rows0 = time.perf_counter(), scorer.rows
    terms = []
    with progress_bar(total, "exact", "input", progress) as bar:
        for start in range(0, total, batch_size):
            x = enumerate_inputs(dist, start, min(start + batch_size, total))
            terms.append(torch.logsumexp(dist.log_prob(x) + scorer.log_prob(x), dim=0))
            bar.update(x.shape[0])
    log_p = float(torch.logsumexp(torch.stack(terms), dim=0))
    wall = time.perf_counter() - t0
    details = {"log_estimate": log_p, "support_size": total}
    return LPEResult("exact", math.exp(log_p), 0.0, total, scorer.rows - rows0, wall, details)
