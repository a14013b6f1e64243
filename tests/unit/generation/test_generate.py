"""generate(): left padding, grouping by prompt, EOS masks, greedy determinism, exact sampling settings."""

from __future__ import annotations

import pytest
import torch

from repulse.generation.generate import SamplingParams, generate, response_mask_from_ids
from repulse.generation.stepwise import sample_categorical
from tests.conftest import make_gpt2


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_gpt2(len(tiny_tokenizer), seed=5).eval()


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[3, 1, 4, 1], [3, 4, 5, 6], [1, 2, 2, 2]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask_from_ids(ids, eos_token_id=1), expected)


def test_shapes_grouping_and_left_padding(model, tiny_tokenizer):
    prompts = ["this man is", "the woman is a very"]
    out = generate(model, tiny_tokenizer, prompts, SamplingParams(max_new_tokens=4, num_samples=3))
    assert out.sequences.shape[0] == 6 and out.response_ids.shape == (6, 4)
    assert out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    # the shorter prompt is left-padded, so every response starts at the same column
    assert out.attention_mask[0, : out.prompt_width - 3].sum() == 0
    assert torch.equal(out.sequences[:, out.prompt_width :], out.response_ids)
    assert len(out.texts) == 6


def test_greedy_matches_argmax_decoding(model, tiny_tokenizer):
    prompt = tiny_tokenizer("this man is")["input_ids"]
    out = generate(model, tiny_tokenizer, [prompt, prompt], SamplingParams(max_new_tokens=3, greedy=True))
    ids = torch.tensor([prompt])
    for _ in range(3):
        next_id = model(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    expected = ids[0, len(prompt) :]
    mask = out.response_mask[0]
    assert torch.equal(out.response_ids[0][mask], expected[mask])
    assert torch.equal(out.response_ids[0], out.response_ids[1])


def test_sampling_frequencies_follow_the_full_softmax(model, tiny_tokenizer):
    """top_k/top_p defaults must not truncate: first-token frequencies match softmax over the whole vocab."""
    prompt = tiny_tokenizer("this man is")["input_ids"]
    torch.manual_seed(0)
    n = 3000
    out = generate(model, tiny_tokenizer, [prompt], SamplingParams(max_new_tokens=1, num_samples=n), batch_size=1)
    probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
    counts = torch.bincount(out.response_ids[:, 0], minlength=len(probs)).float() / n
    # 4 binomial standard deviations at p = 1/2; a truncating top_p or a temperature != 1 fails this
    assert torch.allclose(counts, probs, atol=4 * (0.25 / n) ** 0.5)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_sample_categorical_frequencies_zero_mass_and_bad_input():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 1e-3, 0.0], [0.1, 0.2, 0.3, 0.4]])
    generator = torch.Generator().manual_seed(0)
    n = 4000
    draws = torch.stack([sample_categorical(probs, generator) for _ in range(n)])  # [n, 3]
    for row in (0, 2):
        counts = torch.bincount(draws[:, row], minlength=4).float() / n
        assert torch.allclose(counts, probs[row], atol=4 * (0.25 / n) ** 0.5)
    assert (draws[:, 0] != 1).all() and (draws[:, 1] == 2).all()  # zero-probability tokens are never drawn
    again = torch.stack([sample_categorical(probs, torch.Generator().manual_seed(0)) for _ in range(1)])
    assert torch.equal(again[0], draws[0])  # seeded: reproducible
    with pytest.raises(ValueError, match="nan"):
        sample_categorical(torch.tensor([[float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="no mass"):
        sample_categorical(torch.zeros(1, 3))


def test_stepwise_streamer_gets_the_prompt_each_token_then_end(model, tiny_tokenizer):
    from repulse.generation.stepwise import sample_stepwise

    class Recorder:
        def __init__(self) -> None:
            self.puts: list[list[int]] = []
            self.ended = 0

        def put(self, value: torch.Tensor) -> None:
            self.puts.append(value.flatten().tolist())

        def end(self) -> None:
            self.ended += 1

    ids = torch.tensor([tiny_tokenizer("this man is")["input_ids"]])
    recorder = Recorder()
    out = sample_stepwise(
        model, tiny_tokenizer, ids, torch.ones_like(ids), SamplingParams(max_new_tokens=4), streamer=recorder
    )
    assert recorder.puts[0] == ids[0].tolist() and recorder.ended == 1
    assert [p[0] for p in recorder.puts[1:]] == out[0, ids.shape[1] :].tolist()
