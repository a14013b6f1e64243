"""The shared attack objective: prefix-cache losses equal full-recompute losses; universal = sum; OOM back-off."""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("batch_size", [None, 3])
def test_losses_near_reference_equal_full_losses(tiny_lm, batch_size: int | None) -> None:
    """Shared-prefix scoring (GCG's candidates) = scoring every row from the prefix cache, in the input order.

    With or without the cache the gradient pass leaves. The rows mix one- and two-token edits at every
    position, duplicates, and the reference itself; batch_size 3 makes chunks that start and end inside a
    group of equal first edits.
    """
    model, tok = tiny_lm
    a, b = AttackPrompt.build(tok, GOAL, TARGET), AttackPrompt.build(tok, "This brother was such a", " fool")
    reference = suffixes(tok)[1]
    generator = torch.Generator().manual_seed(0)
    rows = [reference.clone()]
    for _ in range(12):
        row = reference.clone()
        picks = torch.randperm(len(row), generator=generator)[: int(torch.randint(1, 3, (1,), generator=generator))]
        row[picks] = torch.randint(0, len(tok), (len(picks),), generator=generator)
        rows += [row] * (1 + int(torch.randint(0, 2, (1,), generator=generator)))
    ids = torch.stack(rows)
    objective = TargetObjective(model, [a, b], batch_size=batch_size)
    near_loss, near_exact = objective.losses_near(reference, ids)
    full_loss, full_exact = objective.losses(ids)
    assert torch.allclose(near_loss, full_loss, atol=1e-5)
    assert torch.equal(near_exact, full_exact)
    objective.gradient(reference)  # keeps the reference's cache, which losses_near then reuses
    assert objective.reference is not None and torch.equal(objective.reference[0], reference)
    assert torch.allclose(objective.losses_near(reference, ids)[0], full_loss, atol=1e-5)
    plain = TargetObjective(model, [a, b], use_prefix_cache=False).losses_near(reference, ids)[0]
    assert torch.allclose(plain, full_loss, atol=1e-5)


def partition_cost(first, counts, total, overhead, starts) -> float:
    return overhead * len(set(starts)) + sum(c * (total - s) for c, s in zip(counts, starts, strict=True))


@pytest.mark.parametrize("overhead", [0, 5, 40, 10_000])
def test_shared_prefix_groups_is_the_cheapest_partition(overhead: int) -> None:
    """The dynamic programme against every contiguous partition of 6 first-edit positions."""
    import itertools

    from repulse.attacks.batching import shared_prefix_groups

    first, counts, total = [0, 1, 3, 4, 7, 9], [5, 1, 8, 2, 6, 3], 16
    starts = shared_prefix_groups(first, counts, total, overhead)
    assert all(s <= f for s, f in zip(starts, first, strict=True)) and starts[0] == first[0]
    best = math.inf
    for cuts in itertools.product([False, True], repeat=len(first) - 1):
        group_starts, current = [], first[0]
        for i, f in enumerate(first):
            if i and cuts[i - 1]:
                current = f
            group_starts.append(current)
        best = min(best, partition_cost(first, counts, total, overhead, group_starts))
    assert partition_cost(first, counts, total, overhead, starts) == best
    if overhead == 0:
        assert starts == first  # free forwards: every position its own group
    if overhead == 10_000:
        assert set(starts) == {0}  # one forward for all


@pytest.mark.parametrize("batch_size", [None, 4])
def test_losses_extending_prefixes_equal_full_losses(tiny_lm, batch_size: int | None) -> None:
    """BEAST's scoring: candidates fed after their beam row's cache = every candidate run from the prompt cache."""
    model, tok = tiny_lm
    a, b = AttackPrompt.build(tok, GOAL, TARGET), AttackPrompt.build(tok, "This brother was such a", " fool")
    beam = suffixes(tok)  # 3 rows of 3 tokens
    generator = torch.Generator().manual_seed(1)
    parents = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0])  # unsorted, uneven groups
    tails = torch.randint(0, len(tok), (len(parents), 2), generator=generator)
    ids = torch.cat([beam[parents], tails], dim=1)
    objective = TargetObjective(model, [a, b], batch_size=batch_size)
    ext_loss, ext_exact = objective.losses_extending(beam, ids)
    full_loss, full_exact = objective.losses(ids)
    assert torch.allclose(ext_loss, full_loss, atol=1e-5)
    assert torch.equal(ext_exact, full_exact)
    with pytest.raises(ValueError, match="none of the prefixes"):
        objective.losses_extending(beam[:1], ids)
    with pytest.raises(ValueError, match="do not extend"):
        objective.losses_extending(ids, ids)


def test_scaled_embeddings_gradient_pass_feeds_the_shared_prefix_scoring(tiny_lm) -> None:
    """Gemma 3 scales embeddings inside its embedding module: the gradient pass must scale the one-hot product
    the same way, so its KV cache is the one scoring would compute (and is reused)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tok = tiny_lm
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=64,
        pad_token_id=tok.pad_token_id,
        attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(config).eval().requires_grad_(False)
    assert float(model.get_input_embeddings().embed_scale) != 1.0
    objective = TargetObjective(model, [AttackPrompt.build(tok, GOAL, TARGET)])
    reference = suffixes(tok)[0]
    ids = reference.repeat(4, 1)
    ids[1, 0], ids[2, 1], ids[3, 2] = 5, 6, 7
    objective.gradient(reference)
    assert objective.reference is not None
    assert torch.allclose(objective.losses_near(reference, ids)[0], objective.losses(ids)[0], atol=1e-5)
