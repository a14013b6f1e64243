"""Elicitation probabilities on the embedded tiny LM against hand-computed values (one unpadded sequence at a time)."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.estimation.elicitation import (
    continuation_log_probs,
    keyword_behaviour,
    keyword_log_probs,
    keyword_token_sequences,
    prefix_free,
    sampled_log_probs,
    target_log_probs,
)
from tests.unit.estimation.test_montecarlo import tiny_lm

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


QUERIES = ["This man is a", "That kid is", "She is the"]


@torch.no_grad()
def by_hand(model, prefix: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prefix + continuation])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[len(prefix) - 1 + i, t]) for i, t in enumerate(continuation))


def encode(tok, texts: list[str]) -> list[list[int]]:
    return [tok(t, add_special_tokens=True)["input_ids"] for t in texts]


def test_target_log_probs_match_an_unpadded_forward_per_query():
    model, tok = tiny_lm()
    queries = encode(tok, QUERIES)
    assert len({len(q) for q in queries}) > 1  # different lengths: the batch is padded
    target = tok(" fuck shit", add_special_tokens=False)["input_ids"]
    got = target_log_probs(model, queries, target, batch_size=2)
    expected = [by_hand(model, q, target) for q in queries]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert all(-700 < v < -1 for v in expected)
    assert model.training is False


def test_keyword_log_probs_sum_over_the_prefix_free_keywords():
    model, tok = tiny_lm()
    queries = encode(tok, QUERIES)
    keywords = [[tok.convert_tokens_to_ids("Ġfuck")], [tok.convert_tokens_to_ids("Ġshit")]]
    extended = keywords + [keywords[0] + [tok.convert_tokens_to_ids("Ġman")]]  # already counted by " fuck"
    got = keyword_log_probs(model, queries, extended)
    for q, value in zip(queries, got.tolist()):
        expected = math.log(sum(math.exp(by_hand(model, q, k)) for k in keywords))
        assert value == pytest.approx(expected, abs=1e-6)


def test_keyword_token_sequences_skip_unknown_spellings():
    _, tok = tiny_lm()
    seqs = keyword_token_sequences(tok, ["fuck", "zzzz"])
    assert sorted(seqs) == sorted([[tok.convert_tokens_to_ids("fuck")], [tok.convert_tokens_to_ids("Ġfuck")]])
    assert prefix_free([[1, 2], [1], [3], [1], []]) == [[1], [3]]


def test_repeated_sampling_matches_the_exact_first_token_probability():
    """k genuine draws per query from the tiny LM's next-token distribution: hits / k is within binomial error of
    the exact keyword probability."""
    model, tok = tiny_lm()
    words = ["so", "very", "best", "nicest"]
    queries = QUERIES[1:]
    exact = keyword_log_probs(model, encode(tok, queries), keyword_token_sequences(tok, words)).exp()
    generator = torch.Generator().manual_seed(0)

    def sample_fn(chunk: list[str], k: int) -> list[list[str]]:
        out = []
        for q in chunk:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(encode(tok, [q]))).logits[0, -1]
            draws = torch.multinomial(torch.softmax(logits.double(), -1), k, replacement=True, generator=generator)
            out.append([tok.decode([int(t)]) for t in draws])
        return out

    k = 2000
    result = sampled_log_probs(queries, k, sample_fn, keyword_behaviour(words), batch_size=1)
    assert result.draws.tolist() == [k, k]
    p_hat = result.log_p.exp()
    for p, q in zip(p_hat.tolist(), exact.tolist()):
        assert 0.01 < q < 0.99
        assert abs(p - q) < 4 * math.sqrt(q * (1 - q) / k)


def test_sampled_log_probs_count_hits_and_check_the_draws():
    responses = {"a": ["you fool", "Fool!", "foolish", "nice"], "b": ["nice", "kind", "good", "ok"]}
    result = sampled_log_probs(
        ["a", "b"], 4, lambda chunk, k: [responses[q] for q in chunk], keyword_behaviour(["fool"])
    )
    assert result.hits.tolist() == [2, 0]  # "foolish" is not the whole word
    assert result.log_p[0] == pytest.approx(math.log(0.5)) and result.log_p[1] == -math.inf
    with pytest.raises(ValueError, match="exactly k = 4 responses per query"):
        sampled_log_probs(["a"], 4, lambda chunk, k: [["x"]], keyword_behaviour(["fool"]))
    with pytest.raises(ValueError, match="--k_samples"):
        sampled_log_probs(["a"], 0, lambda chunk, k: [[]], keyword_behaviour(["fool"]))


def test_elicitation_errors_are_clear():
    model, _ = tiny_lm()
    with pytest.raises(ValueError, match="at least one token"):
        target_log_probs(model, [[1, 2]], [])
    with pytest.raises(ValueError, match="every query needs at least one token"):
        target_log_probs(model, [[]], [5])
    with pytest.raises(ValueError, match="no keyword"):
        keyword_log_probs(model, [[1]], [[]])
    with pytest.raises(ValueError, match="no keywords"):
        keyword_behaviour([" "])
    with pytest.raises(ValueError, match="pair up"):
        continuation_log_probs(model, [[1]], [[2], [3]])
