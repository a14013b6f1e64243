"""GCG's pure pieces: mellowmax against hand values and limits, candidate sampling, token filtering."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.attacks.gcg_tokens import (
    allowed_mask,
    disallowed_token_ids,
    keep_round_trip,
    mellowmax,
    sample_candidates,
)


def test_mellowmax_hand_value() -> None:
    t = torch.tensor([0.0, math.log(3.0)])
    # (1/1) * log((e^0 + e^log3) / 2) = log 2
    assert mellowmax(t, alpha=1.0).item() == pytest.approx(math.log(2.0))


def test_mellowmax_limits() -> None:
    t = torch.tensor([[1.0, 2.0, 6.0]])
    assert mellowmax(t, alpha=1e-4).item() == pytest.approx(3.0, abs=1e-3)  # alpha -> 0: the mean
    assert mellowmax(t, alpha=200.0).item() == pytest.approx(6.0 - math.log(3) / 200, abs=1e-4)  # -> the max
    assert mellowmax(torch.full((2, 4), 2.5), alpha=3.0).tolist() == pytest.approx([2.5, 2.5])


def test_sample_candidates_replaces_n_positions_with_top_allowed_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 0, 0])
    grad = torch.zeros(4, 10)
    grad[:, 7], grad[:, 8], grad[:, 9] = -3.0, -2.0, -5.0  # 9 is best but not allowed
    allowed = torch.ones(10, dtype=torch.bool)
    allowed[9] = False
    out = sample_candidates(ids, grad, search_width=50, topk=2, n_replace=2, allowed=allowed, generator=g)
    assert out.shape == (50, 4)
    changed = out != ids
    assert (changed.sum(1) == 2).all()
    assert set(out[changed].tolist()) <= {7, 8}


def test_allowed_mask_and_disallowed_specials(tiny_lm) -> None:
    _, tok = tiny_lm
    bad = disallowed_token_ids(tok)
    assert {tok.eos_token_id, tok.pad_token_id, tok.unk_token_id} <= set(bad.tolist())
    mask = allowed_mask(len(tok), bad, allowed=[bad[0].item(), 100])
    assert mask.nonzero().flatten().tolist() == [100]
    with pytest.raises(ValueError):
        allowed_mask(len(tok), bad, allowed=[bad[0].item()])


def test_keep_round_trip_drops_ids_that_do_not_survive_text(tiny_lm) -> None:
    _, tok = tiny_lm
    good = tok(" very nice man", add_special_tokens=False)["input_ids"]
    glued = [tok.convert_tokens_to_ids("This"), tok.convert_tokens_to_ids("My"), good[0]]  # "ThisMy very" -> unk
    kept = keep_round_trip(tok, torch.tensor([good, glued]))
    assert kept.tolist() == [good]
