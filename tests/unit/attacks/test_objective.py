"""The shared attack objective: prefix-cache losses equal full-recompute losses; universal = sum; OOM back-off."""

from __future__ import annotations

import pytest
import torch

from repulse.attacks.batching import BackoffBatcher
from repulse.attacks.objective import AttackPrompt, TargetObjective, target_logprobs
from tests.unit.attacks.conftest import GOAL, TARGET


def suffixes(tok) -> torch.Tensor:
    words = [" very nice man", " shitty fucking guy", " and the boss"]
    return torch.tensor([tok(w, add_special_tokens=False)["input_ids"] for w in words])


@pytest.mark.parametrize("mellow", [False, True])
def test_prefix_cache_loss_equals_no_cache_loss(tiny_lm, mellow: bool) -> None:
    model, tok = tiny_lm
    prompt = AttackPrompt.build(tok, GOAL, TARGET)
    cached = TargetObjective(model, [prompt], use_prefix_cache=True, use_mellowmax=mellow, mellowmax_alpha=2.0)
    plain = TargetObjective(model, [prompt], use_prefix_cache=False, use_mellowmax=mellow, mellowmax_alpha=2.0)
    ids = suffixes(tok)
    assert torch.allclose(cached.losses(ids)[0], plain.losses(ids)[0], atol=1e-5)
    assert torch.allclose(cached.gradient(ids[0]), plain.gradient(ids[0]), atol=1e-5)


def test_loss_is_mean_target_nll(tiny_lm) -> None:
    model, tok = tiny_lm
    prompt = AttackPrompt.build(tok, GOAL, " shitty guy")
    ids = suffixes(tok)
    loss = TargetObjective(model, [prompt]).losses(ids[:1])[0]
    assert loss.item() == pytest.approx(-target_logprobs(model, prompt, ids[0]).mean().item(), abs=1e-5)


def test_universal_loss_is_sum_and_batch_size_does_not_matter(tiny_lm) -> None:
    model, tok = tiny_lm
    a, b = AttackPrompt.build(tok, GOAL, TARGET), AttackPrompt.build(tok, "This brother was such a", " fool")
    ids = suffixes(tok)
    both = TargetObjective(model, [a, b], batch_size=1).losses(ids)[0]
    single = TargetObjective(model, [a]).losses(ids)[0] + TargetObjective(model, [b]).losses(ids)[0]
    assert torch.allclose(both, single, atol=1e-5)


def test_backoff_halves_batch_on_out_of_memory() -> None:
    sizes = []

    def fn(start: int, end: int) -> torch.Tensor:
        sizes.append(end - start)
        if end - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.arange(start, end)

    batcher = BackoffBatcher(8)
    assert batcher.map(fn, 8).tolist() == list(range(8))
    assert sizes[:3] == [8, 4, 2] and batcher.batch_size == 2

    def other(start: int, end: int) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        BackoffBatcher(4).map(other, 4)
