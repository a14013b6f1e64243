"""BEAST on the embedded tiny LM, and its sampling pieces (top-p, distinct sampling)."""

from __future__ import annotations

import pytest
import torch

from repulse.attacks.beast import BEASTConfig, run_beast, sample_distinct, top_p_filter
from repulse.attacks.objective import AttackPrompt, target_logprobs
from tests.unit.attacks.conftest import GOAL, TARGET


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert top_p_filter(probs, 0.7)[0].tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])
    assert top_p_filter(probs, 0.5)[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_sample_distinct_without_replacement() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0]])
    first, second = sample_distinct(probs, 3, g)
    assert len(set(first.tolist())) == 3 and 4 not in first.tolist()
    assert sorted(second.tolist()) == [2, 3]  # only two tokens have mass


def test_beast_lowers_target_loss(tiny_lm) -> None:
    model, tok = tiny_lm
    prompt = AttackPrompt.build(tok, GOAL, TARGET)
    no_suffix = -target_logprobs(model, prompt, torch.zeros(0, dtype=torch.long)).mean().item()
    result = run_beast(model, tok, GOAL, TARGET, BEASTConfig(k1=4, k2=4, length=5, seed=0))
    assert len(result.losses) == 5 and len(result.best_ids) <= 5
    assert result.best_loss < no_suffix - 0.5
    exact = -target_logprobs(model, prompt, torch.tensor(result.best_ids)).mean().item()
    assert exact == pytest.approx(result.best_loss, abs=1e-4)


def test_beast_ngram_appends_several_tokens_per_scored_choice(tiny_lm) -> None:
    model, tok = tiny_lm
    result = run_beast(model, tok, GOAL, TARGET, BEASTConfig(k1=2, k2=2, length=5, ngram=2, top_p=0.9, seed=0))
    assert len(result.losses) == 3  # iterations add 2, 2, then the last 1 token
    assert all(s for s in result.strings)


def test_sampler_with_prefix_cache_matches_full_recompute(tiny_lm) -> None:
    from repulse.attacks.beast import NextTokenSampler
    from repulse.attacks.objective import TargetObjective

    model, tok = tiny_lm
    prompt = AttackPrompt.build(tok, GOAL, TARGET)
    cache = TargetObjective(model, [prompt]).caches[0]
    config = BEASTConfig(top_p=0.95)
    suffixes = torch.tensor([tok(w, add_special_tokens=False)["input_ids"] for w in (" very nice", " and the")])
    cached = NextTokenSampler(model, prompt, tok, config, cache).probs(suffixes)
    plain = NextTokenSampler(model, prompt, tok, config).probs(suffixes)
    assert torch.allclose(cached, plain, atol=1e-5)
