"""Planted-trigger test beds: D, the trigger, the labels, and a built model whose P sits on the trigger."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from repulse.estimation.montecarlo import LMTargetScorer, enumerate_inputs, estimate_naive
from repulse.estimation.planted import (
    CASES,
    TARGET,
    PlantedSpec,
    build_planted,
    pick_triggers,
    present,
    target_probability,
    zipf_distribution,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = PlantedSpec("small", triggers=((1, 2),), vocab_size=17, length=3, steps=300, hidden_size=32, batch_size=128)


@functools.cache
def small_case():
    return build_planted(SMALL)


def test_zipf_distribution_and_the_rarest_tokens_as_triggers():
    probs = zipf_distribution(3, 9, 1.5, torch.Generator().manual_seed(0))
    assert torch.allclose(probs.sum(-1), torch.ones(3, dtype=torch.float64)) and bool((probs[:, TARGET] == 0).all())
    expected = torch.arange(1, 9, dtype=torch.float64) ** -1.5
    assert torch.allclose(probs[0].sort().values[1:], (expected / expected.sum()).sort().values)
    (trigger,) = pick_triggers(probs, ((1, 2),))
    for j, token in trigger:
        assert probs[j, token] == probs[j, 1:].min() and token != TARGET
    pair, other = pick_triggers(probs, ((0, 1), (0, 2)))
    assert pair[0][1] != other[0][1]  # a token is used by one trigger only


def test_training_labels_are_graded_or_not():
    trigger = (((0, 3), (1, 4)),)
    x = torch.tensor([[3, 4, 1], [3, 5, 1], [5, 5, 1]])
    assert present(x, trigger).flatten().tolist() == [2, 1, 0]
    graded = target_probability(x, trigger, PlantedSpec("g", ((0, 1),), p_full=0.5, rho=0.1))
    assert graded.tolist() == pytest.approx([0.5, 0.05, 0.0])
    ungraded = target_probability(x, trigger, PlantedSpec("u", ((0, 1),), graded=False, p_full=0.5))
    assert ungraded.tolist() == [0.5, 0.0, 0.0]


def test_a_built_case_puts_p_on_its_rare_trigger_where_naive_sampling_misses_it():
    case = small_case()
    scorer = LMTargetScorer(case.model, case.target_ids)
    x = enumerate_inputs(case.dist, 0, case.dist.num_inputs())
    log_f, log_d = scorer.log_prob(x), case.dist.log_prob(x)
    complete = present(x, case.trigger_tokens)[:, 0] == 2
    p = float(torch.logsumexp(log_d + log_f, 0).exp())
    assert case.trigger_mass() == pytest.approx(float(log_d[complete].exp().sum()))
    assert 0.15 < float(log_f[complete].exp().median()) < 0.6  # sharpened to f ≈ 0.3 on the trigger
    assert float(log_f.exp().median()) < 1e-4  # ... and far below it elsewhere
    assert float(log_d[complete].exp().sum()) < 1e-4
    assert float((log_d + log_f)[complete].exp().sum()) / p > 0.5  # most of P on inputs of D-mass < 1e-4
    generator = torch.Generator().manual_seed(0)
    naive = estimate_naive(scorer, case.dist, n_samples=1024, batch_size=256, generator=generator)
    assert math.log10(p / naive.estimate) > 0.5
    assert "trigger" in case.describe() and "graded" in case.describe()


def test_the_benchmark_cases_are_rare():
    for spec in CASES.values():
        assert spec.vocab_size**spec.length <= 2_000_000  # enumerable
    probs = zipf_distribution(4, 33, 1.5, torch.Generator().manual_seed(0))
    masses = {
        name: sum(math.prod(float(probs[j, t]) for j, t in trig) for trig in pick_triggers(probs, spec.triggers))
        for name, spec in CASES.items()
    }
    assert all(m < 3e-5 for m in masses.values()) and masses["triple"] < 1e-7
