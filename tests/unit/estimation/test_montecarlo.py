"""Naive Monte Carlo, exact enumeration and the log-space statistics of repulse.estimation.montecarlo.

Also holds the shared test beds of the estimator tests (imported by test_importance / test_mhis):
- `ToyScorer`: an analytic target log f(x) = c + Σ_j θ[j, x_j] + Σ_{j<k} A[j, k, x_j, x_k] over one-hot inputs
  (embeddings = identity), with one "trigger" token per position, so that P can be made as rare as wanted;
- `make_interaction_toy()`: a ToyScorer whose trigger is a pair (a, b) of rare tokens where a alone lowers f and
  only b alone raises it, so a gradient-guided proposal first tilts away from a (the planted-LM failure in small);
- `tiny_lm()` with `lm_subset(...)`: the embedded tiny LM with a small random support per position, so the input
  space is a few thousand sequences and exact enumeration is cheap.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from repulse.estimation.distributions import FactorizedDistribution
from repulse.estimation.montecarlo import (
    LMTargetScorer,
    check_budget,
    enumerate_inputs,
    estimate_exact,
    estimate_naive,
    kish_ess,
    mean_and_std_err,
)

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyScorer:
    """log f(x) = offset + Σ_j θ[j, x_j] + Σ_{j<k} A[j, k, x_j, x_k]: the TargetScorer protocol on one-hot inputs."""

    def __init__(self, theta: torch.Tensor, pair: torch.Tensor, offset: float):
        self.theta, self.pair, self.offset, self.rows = theta, pair, offset, 0

    def _log_f(self, onehot: torch.Tensor) -> torch.Tensor:
        out = self.offset + (onehot * self.theta).sum((-1, -2))
        for j, k in itertools.combinations(range(onehot.shape[1]), 2):
            out = out + torch.einsum("bv,vw,bw->b", onehot[:, j], self.pair[j, k], onehot[:, k])
        return out

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self._log_f(torch.nn.functional.one_hot(x, self.theta.shape[1]).double())

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.rows += x.shape[0]
        onehot = torch.nn.functional.one_hot(x, self.theta.shape[1]).double().requires_grad_(True)
        log_f = self._log_f(onehot)
        (grad,) = torch.autograd.grad(log_f.sum(), onehot)
        return log_f.detach(), grad

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.double()


def make_toy(length: int, support: int, low: float, eps: float, offset: float = -10.0, vocab: int = 12, seed=0):
    """A toy scorer and a uniform D over `support` random tokens per position: the first one of each position
    (the trigger) has θ = 0, the others θ = low; the pairwise term is eps · N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.full((length, vocab), low, dtype=torch.float64)
    probs = torch.zeros(length, vocab, dtype=torch.float64)
    for j in range(length):
        ids = torch.randperm(vocab, generator=g)[:support]
        probs[j, ids] = 1.0 / support
        theta[j, ids[0]] = 0.0
    pair = eps * torch.randn(length, length, vocab, vocab, generator=g, dtype=torch.float64)
    return ToyScorer(theta, pair, offset), FactorizedDistribution(probs, name="toy")


def make_interaction_toy(length: int = 4, vocab: int = 12, rare: float = 1e-3, seed: int = 0):
    """P ≈ 4.5e-7: log f = -9 + θ + 10·[a at L-2 and b at L-1], θ(a at L-2) = -2, θ(not b at L-1) = -12, other
    positions N(0, 0.3²); a and b have D-probability `rare`, the other tokens (not 0) share the rest uniformly."""
    g = torch.Generator().manual_seed(seed)
    a, b, i, j = 1, 2, length - 2, length - 1
    probs = torch.ones(length, vocab, dtype=torch.float64)
    probs[:, 0] = 0.0
    probs[i, a] = probs[j, b] = 0.0
    probs = probs / probs.sum(-1, keepdim=True)
    probs[i:] *= 1 - rare
    probs[i, a] = probs[j, b] = rare
    theta = 0.3 * torch.randn(length, vocab, generator=g, dtype=torch.float64)
    theta[i, a] = -2.0
    theta[j] -= 12.0
    theta[j, b] = 0.0
    pair = torch.zeros(length, length, vocab, vocab, dtype=torch.float64)
    pair[i, j, a, b] = 10.0
    return ToyScorer(theta, pair, -9.0), FactorizedDistribution(probs, name="interaction")


@functools.cache
def tiny_lm():
    """The embedded tiny LM (float32, eval mode) and its word-level tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repulse.assets import TINY_LM_DIR

    return AutoModelForCausalLM.from_pretrained(TINY_LM_DIR).eval(), AutoTokenizer.from_pretrained(TINY_LM_DIR)


def lm_subset(length: int, support: int, seed: int = 0) -> FactorizedDistribution:
    """Uniform over `support` random ordinary tokens of the tiny LM (ids >= 6: no special tokens) at each position."""
    model, _ = tiny_lm()
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = 6 + torch.randperm(vocab - 6, generator=torch.Generator().manual_seed(seed))[:support]
    probs = torch.zeros(length, vocab, dtype=torch.float64)
    probs[:, ids] = 1.0 / support
    return FactorizedDistribution(probs, name="subset")


def lm_scorer(text: str) -> LMTargetScorer:
    model, tok = tiny_lm()
    return LMTargetScorer(model, tok(text, add_special_tokens=False)["input_ids"])


def test_mean_and_std_err_in_log_space_matches_hand_values():
    values = torch.tensor([1e-300, 3e-300, 2e-300], dtype=torch.float64)
    est, se = mean_and_std_err(values.log())  # would underflow to 0 without the shift
    assert est == pytest.approx(2e-300, rel=1e-9)
    assert se == pytest.approx(1e-300 / math.sqrt(3), rel=1e-9)  # sd of (1, 3, 2) is 1
    assert mean_and_std_err(torch.full((4,), -math.inf)) == (0.0, 0.0)
    assert kish_ess(torch.zeros(10)) == pytest.approx(10.0)
    assert kish_ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    assert kish_ess(torch.log(torch.tensor([1.0, 3.0]))) == pytest.approx(16 / 10)


def test_budget_errors_are_clear():
    with pytest.raises(ValueError, match="must divide"):
        check_budget(100, 32)
    with pytest.raises(ValueError, match=">= 1"):
        check_budget(0, 1)


def test_enumeration_visits_every_input_once():
    probs = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 0.2, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    dist = FactorizedDistribution(probs)
    assert dist.num_inputs() == 2 * 3 * 4
    rows = enumerate_inputs(dist, 0, dist.num_inputs())
    expected = set(itertools.product([0, 2], [1, 2, 3], [0, 1, 2, 3]))
    assert {tuple(r) for r in rows.tolist()} == expected and len(rows) == len(expected)
    assert float(dist.log_prob(rows).exp().sum()) == pytest.approx(1.0)
    # Chunks concatenate to the whole enumeration.
    assert torch.equal(torch.cat([enumerate_inputs(dist, 0, 7), enumerate_inputs(dist, 7, 24)]), rows)


def test_exact_equals_a_brute_force_loop_over_the_tiny_lm():
    model, tok = tiny_lm()
    dist = lm_subset(length=3, support=5, seed=1)
    target = tok(" fuck shit", add_special_tokens=False)["input_ids"]
    assert len(target) == 2
    total = 0.0
    supports = [torch.nonzero(row).flatten().tolist() for row in dist.probs]
    with torch.no_grad():
        for x in itertools.product(*supports):
            ids = torch.tensor([[*x, *target]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            log_f = logp[2, target[0]] + logp[3, target[1]]  # position t predicts token t + 1
            total += math.prod(float(dist.probs[j, v]) for j, v in enumerate(x)) * float(log_f.exp())
    scorer = LMTargetScorer(model, target)
    result = estimate_exact(scorer, dist, batch_size=16)  # several chunks
    assert result.estimate == pytest.approx(total, rel=1e-5)
    assert result.std_err == 0.0 and result.n_samples == 125 and scorer.rows == 125
    assert 0 < result.estimate < 1e-3


def test_exact_refuses_too_large_spaces():
    scorer, dist = make_toy(length=4, support=8, low=-2.0, eps=0.0)
    with pytest.raises(ValueError, match=r"4.1e\+03 inputs \(8 x 8 x 8 x 8\).*--sequence_length"):
        estimate_exact(scorer, dist, max_inputs=4000)
    assert scorer.rows == 0


def test_exact_matches_the_closed_form_of_a_factorised_toy():
    scorer, dist = make_toy(length=3, support=6, low=-3.0, eps=0.0, offset=-5.0)
    closed = math.exp(-5.0) * ((1 + 5 * math.exp(-3.0)) / 6) ** 3
    assert estimate_exact(scorer, dist).estimate == pytest.approx(closed, rel=1e-12)


def test_naive_mc_is_unbiased_and_its_se_covers_the_truth():
    scorer, dist = make_toy(length=3, support=6, low=-1.0, eps=0.3)
    exact = estimate_exact(scorer, dist).estimate
    results = [
        estimate_naive(scorer, dist, n_samples=256, batch_size=64, generator=torch.Generator().manual_seed(r))
        for r in range(30)
    ]
    z = torch.tensor([(r.estimate - exact) / r.std_err for r in results])
    assert int((z.abs() < 1.96).sum()) >= 24
    assert abs(float(z.mean())) < 0.6
    assert all(r.n_samples == 256 and r.n_model_rows == 256 and r.method == "bruteforce" for r in results)
    assert {"method", "estimate", "std_err", "n_samples", "wall_time_s"} <= set(results[0].as_dict())
