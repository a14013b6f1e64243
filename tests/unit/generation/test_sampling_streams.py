"""Seeded generation streams (processes sampling shares of a batch draw what one process draws for all of it)
and the lock-step of sharded strategies (a rank that is done keeps running forwards, then drops them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from repulse.generation.generate import SamplingParams, generate
from repulse.generation.stepwise import sample_stepwise
from tests.conftest import make_gpt2

PROMPTS = ["this man is", "the woman is a very", "this man is so", "the man is"]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_gpt2(len(tiny_tokenizer), seed=5).eval()


def test_shares_of_a_batch_draw_what_the_whole_batch_draws(model, tiny_tokenizer):
    params = SamplingParams(max_new_tokens=4, num_samples=3)
    whole = generate(model, tiny_tokenizer, PROMPTS, params, batch_size=2, seed=7)
    first = generate(model, tiny_tokenizer, PROMPTS[:2], params, batch_size=2, seed=7, first_prompt=0)
    second = generate(model, tiny_tokenizer, PROMPTS[2:], params, batch_size=2, seed=7, first_prompt=2)
    assert whole.texts == first.texts + second.texts
    # the stream is the seed's and the prompt position's: another position or seed draws otherwise
    moved = generate(model, tiny_tokenizer, PROMPTS[2:], params, batch_size=2, seed=7, first_prompt=0)
    other = generate(model, tiny_tokenizer, PROMPTS[2:], params, batch_size=2, seed=8, first_prompt=2)
    assert second.texts not in (moved.texts, other.texts)


def test_seeded_generation_leaves_the_global_stream_alone(model, tiny_tokenizer):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generate(model, tiny_tokenizer, PROMPTS, SamplingParams(max_new_tokens=3), seed=1)
    assert torch.equal(torch.rand(3), expected)


class EosFirst(torch.nn.Module):
    """The tiny model with EOS made certain: every row finishes at its first token. Counts its forwards."""

    def __init__(self, base, eos: int) -> None:
        super().__init__()
        self.base, self.eos, self.calls = base, eos, 0

    def forward(self, **inputs):
        self.calls += 1
        out = self.base(**inputs)
        logits = out.logits.clone()
        logits[..., self.eos] += 1e4
        return SimpleNamespace(logits=logits, past_key_values=out.past_key_values)


def test_lock_step_keeps_stepping_until_every_rank_is_done(model, tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("this man is")["input_ids"]])
    mask = torch.ones_like(ids)
    params = SamplingParams(max_new_tokens=6, num_samples=2)
    alone = EosFirst(model, tiny_tokenizer.eos_token_id)
    torch.manual_seed(3)
    expected = sample_stepwise(alone, tiny_tokenizer, ids, mask, params, return_logprobs=True)
    assert alone.calls == 1 and expected[0].shape[1] == ids.shape[1] + 1  # the prefill only, one token

    heard: list[bool] = []

    def others_running(done_here: bool) -> bool:  # another rank samples 4 tokens
        heard.append(done_here)
        return len(heard) < 4

    synced = EosFirst(model, tiny_tokenizer.eos_token_id)
    torch.manual_seed(3)
    got = sample_stepwise(
        synced, tiny_tokenizer, ids, mask, params, return_logprobs=True, others_running=others_running
    )
    assert synced.calls == 4 and heard == [True] * 4  # as many forwards as the slowest rank
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])  # what it would have alone
