"""GCG on the embedded tiny LM: it lowers the target loss, and on an enumerable space it finds the optimum."""

from __future__ import annotations

import itertools

import pytest
import torch

from repulse.attacks.gcg import AttackBuffer, GCGConfig, run, run_universal
from repulse.attacks.objective import AttackPrompt, TargetObjective
from tests.unit.attacks.conftest import GOAL, TARGET

INIT = " the the the the"


def test_gcg_lowers_target_loss(tiny_lm) -> None:
    model, tok = tiny_lm
    # The tiny LM's assistant turn repeats the user's words (as the chats of its corpus do), so the target is the
    # goal completed; a lone " shitty" opening the reply is so unlikely that no suffix moves its loss by 0.2.
    target = GOAL + TARGET
    ids = torch.tensor(tok(INIT, add_special_tokens=False)["input_ids"])
    start = TargetObjective(model, [AttackPrompt.build(tok, GOAL, target)]).losses(ids.unsqueeze(0))[0].item()
    result = run(
        model, tok, GOAL, target, GCGConfig(num_steps=4, search_width=32, topk=16, optim_str_init=INIT, seed=0)
    )
    assert len(result.losses) == len(result.strings) == 4
    assert result.best_loss < start - 0.2
    assert result.best_loss == min(result.losses)
    again = TargetObjective(model, [AttackPrompt.build(tok, GOAL, target)])
    best_ids = torch.tensor(tok(result.best_string, add_special_tokens=False)["input_ids"])
    assert again.losses(best_ids.unsqueeze(0))[0].item() == pytest.approx(result.best_loss, abs=1e-4)


def test_gcg_reaches_the_enumerated_optimum_of_a_two_token_space(tiny_lm) -> None:
    model, tok = tiny_lm
    words = [" very", " nice", " shitty", " the", " boss", " and", " fucking", " kind"]
    allowed = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    everything = torch.tensor(list(itertools.product(allowed, repeat=2)))
    exact = TargetObjective(model, [AttackPrompt.build(tok, GOAL, TARGET)]).losses(everything)[0]
    config = GCGConfig(num_steps=8, search_width=16, topk=8, n_replace=1, optim_str_init=" the the", seed=1)
    result = run(model, tok, GOAL, TARGET, config, allowed_ids=allowed)
    assert set(tok(result.best_string, add_special_tokens=False)["input_ids"]) <= set(allowed)
    assert result.best_loss == pytest.approx(exact.min().item(), abs=0.05 * (exact.max() - exact.min()).item())


def test_universal_and_mellowmax_and_buffer_run(tiny_lm) -> None:
    model, tok = tiny_lm
    pairs = [(GOAL, TARGET), ("This brother was such a", " fool")]
    config = GCGConfig(
        num_steps=2, search_width=8, topk=8, optim_str_init=INIT, use_mellowmax=True, buffer_size=3, seed=0
    )
    result = run_universal(model, tok, pairs, config)
    assert len(result.losses) == 2 and result.best_string


def test_buffer_keeps_the_best() -> None:
    buffer = AttackBuffer(2)
    for loss, i in [(3.0, 0), (1.0, 1), (2.0, 2), (5.0, 3)]:
        buffer.add(loss, torch.tensor([i]))
    assert [x[0] for x in buffer.items] == [1.0, 2.0] and buffer.best_ids().item() == 1
    follow = AttackBuffer(0)
    follow.add(1.0, torch.tensor([0]))
    follow.add(9.0, torch.tensor([1]))
    assert follow.best_ids().item() == 1  # buffer_size 0 follows each step's best, as nanoGCG does


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="search_width"):
        GCGConfig(search_width=0)
