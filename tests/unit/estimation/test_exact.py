"""Exact enumeration of P(bad) against a brute force over every sequence in V^T (no cache, no pruning)."""

from __future__ import annotations

import functools
import itertools
import math
import re

import pytest
import torch

from repulse.estimation.exact import (
    _PrefixScorer,
    count_leaves,
    enumerate_response_logprobs,
    exact_bad_probability,
    exact_bad_probability_recompute,
    exact_reward_statistics,
)
from repulse.estimation.word_match import WordMatcher, analyse_token_texts

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


EOS = 0
PROMPT = torch.tensor([8, 9, 1])
WORDS = ["fuck", "shit", "ass"]
# Word pieces with GPT-2-like leading spaces: "fuck" can be " f"+"uck" (bad) or " f"+"uckers" / " fuck"+"er" (not
# bad); " ass"+"hole" is not the word "ass"; case variants " Fuck", " SH"+"IT". "Ã" and "©" are the two bytes of
# "é": alone each decodes to U+FFFD (not a word char), together to a word char that cancels a boundary.
PIECES = {
    "bytelevel": [
        "<eos>",
        "Ġf",
        "uck",
        "uckers",
        "Ġfuck",
        "fuck",
        "ĠFuck",
        "er",
        "Ġthe",
        "Ġa",
        "ing",
        ".",
        "Ġsh",
        "it",
        "ĠSH",
        "IT",
        "Ġass",
        "hole",
        "Ã",
        "©",
    ],
    # No decoder: tokens are joined with spaces, so " f"+"uck" is "f uck" and "fuck"+"er" is "fuck er".
    "spaced": [
        "<eos>",
        "f",
        "uck",
        "uckers",
        "fuck",
        "Fuck",
        "FUCK",
        "er",
        "the",
        "a",
        "ing",
        ".",
        "sh",
        "it",
        "SH",
        "IT",
        "ass",
        "hole",
        "x",
        "y",
    ],
    # SentencePiece-style: the first token loses its leading space; "▁" alone is flagged as not concatenative.
    "metaspace": [
        "<eos>",
        "▁f",
        "uck",
        "uckers",
        "▁fuck",
        "fuck",
        "▁Fuck",
        "er",
        "▁the",
        "▁a",
        "ing",
        ".",
        "▁sh",
        "it",
        "▁SH",
        "IT",
        "▁ass",
        "hole",
        "▁",
        "s",
    ],
}
VOCAB = 20


@functools.cache
def make_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({p: i for i, p in enumerate(PIECES[kind])}, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bytelevel":
        backend.decoder = decoders.ByteLevel()
    elif kind == "metaspace":
        backend.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@functools.cache
def make_model(arch: str):
    """A seeded float64 model in eval mode with large init, so next-token distributions are far from uniform."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=16,
            initializer_range=0.5,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16,
            initializer_range=0.5,
            bos_token_id=EOS,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
        model = LlamaForCausalLM(config)
    return model.double().eval()


@functools.cache
def enumerate_by_brute_force(arch: str, response_len: int, eos: int | None) -> tuple[list[list[int]], list[float]]:
    """Every distinct response (cut after its first EOS) and its log-prob from one plain forward of the full
    sequence per element of V^T; sequences that differ only after the EOS are the same response, counted once."""
    model = make_model(arch)
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=response_len)))
    with torch.no_grad():
        logits = model(input_ids=torch.cat([PROMPT.expand(len(seqs), -1), seqs], dim=1)).logits
    logp = torch.log_softmax(logits.double(), dim=-1)[:, len(PROMPT) - 1 : -1]
    token_lp = logp.gather(-1, seqs[..., None])[..., 0]
    responses, logps = [], []
    for seq, lps in zip(seqs.tolist(), token_lp.tolist()):
        stop = seq.index(eos) + 1 if eos is not None and eos in seq else response_len
        if any(t != eos for t in seq[stop:]):
            continue
        responses.append(seq[:stop])
        logps.append(math.fsum(lps[:stop]))
    return responses, logps


def compute_p_by_brute_force(arch: str, response_len: int, eos: int | None, is_bad) -> float:
    responses, logps = enumerate_by_brute_force(arch, response_len, eos)
    return math.fsum(math.exp(lp) for r, lp in zip(responses, logps) if is_bad(r))


def make_text_judge(kind: str, words: list[str], case_sensitive: bool = False):
    tok = make_tokenizer(kind)
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", 0 if case_sensitive else re.IGNORECASE)
    return lambda r: pattern.search(tok.decode(r, skip_special_tokens=True)) is not None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("response_len", [2, 3])
@pytest.mark.parametrize("eos", [None, EOS])
def test_bad_token_ids_match_brute_force(arch, response_len, eos):
    bad = [4, 6, 16]
    want = compute_p_by_brute_force(arch, response_len, eos, lambda r: any(t in bad for t in r))
    got = exact_bad_probability(
        make_model(arch), PROMPT, response_len, bad_token_ids=bad, eos_token_id=eos, batch_size=7
    )
    assert got.p_bad == pytest.approx(want, rel=1e-9)
    assert got.log_p_bad == pytest.approx(math.log(want), rel=1e-9)
    assert got.expected_reward is None


@pytest.mark.parametrize("kind", ["bytelevel", "spaced", "metaspace"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("response_len", [2, 3])
@pytest.mark.parametrize("eos", [None, EOS])
def test_bad_words_match_brute_force(kind, arch, response_len, eos):
    want = compute_p_by_brute_force(arch, response_len, eos, make_text_judge(kind, WORDS))
    got = exact_bad_probability(
        make_model(arch),
        PROMPT,
        response_len,
        bad_words=WORDS,
        tokenizer=make_tokenizer(kind),
        eos_token_id=eos,
        batch_size=5,
    )
    assert 0 < want < 1
    assert got.p_bad == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("words", [["Fuck", "SHIT"], ["uck", "a"], ["fucker", "the ass"]])
def test_case_sensitive_and_odd_words_match_brute_force(words):
    want = compute_p_by_brute_force("gpt2", 3, EOS, make_text_judge("bytelevel", words, case_sensitive=True))
    got = exact_bad_probability(
        make_model("gpt2"),
        PROMPT,
        3,
        bad_words=words,
        tokenizer=make_tokenizer("bytelevel"),
        case_sensitive=True,
        eos_token_id=EOS,
    )
    assert got.p_bad == pytest.approx(want, rel=1e-9)


def test_partial_utf8_pairs_are_decoded_exactly():
    """ " fuck"+"Ã"+"©" is " fucké" (not bad) although " fuck"+"Ã" alone is bad: concatenating per-token texts
    would say bad. The brute force decodes; the test fails if the fallback is skipped."""
    judge = make_text_judge("bytelevel", ["fuck"])
    assert judge([4, 18]) and not judge([4, 18, 19])
    texts = analyse_token_texts(make_tokenizer("bytelevel"), VOCAB)
    assert texts.left_open[[18, 19]].all() and not texts.unreliable.any()
    want = compute_p_by_brute_force("gpt2", 3, None, judge)
    got = exact_bad_probability(
        make_model("gpt2"), PROMPT, 3, bad_words=["fuck"], tokenizer=make_tokenizer("bytelevel")
    )
    assert got.p_bad == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("kind", ["bytelevel", "spaced", "metaspace"])
def test_word_matcher_rows_equal_naive_advance(kind):
    """The shortcut rows of carry states (only tokens that could touch the carry recomputed) equal advancing every
    token's text through the regexes."""
    tok = make_tokenizer(kind)
    matcher = WordMatcher(WORDS, analyse_token_texts(tok, VOCAB), tok, case_sensitive=False)
    for prefix in [[1], [4], [12], [14], [16], [1, 2], [6]]:
        sid = matcher.start
        for t in prefix:
            sid = matcher.advance(sid, matcher.texts.first[t] if sid == matcher.start else matcher.texts.mid[t])
        matcher._ensure_rows(sid)
        naive = [matcher.advance(sid, s) for s in matcher.texts.mid]
        assert matcher.next_rows[sid].tolist() == naive, (kind, prefix, matcher.states[sid])
    assert len(matcher.states) > 4


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("eos", [None, EOS])
def test_enumeration_sums_to_one_and_matches_brute_force(arch, eos):
    responses, mask, logps = enumerate_response_logprobs(make_model(arch), PROMPT, 3, eos_token_id=eos, batch_size=9)
    assert logps.dtype == torch.float64
    assert logps.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    want_r, want_lp = enumerate_by_brute_force(arch, 3, eos)
    assert len(responses) == len(want_r) == count_leaves(VOCAB, 3, eos is not None)
    got = {tuple(r[m].tolist()): lp for r, m, lp in zip(responses, mask, logps.tolist())}
    assert got == pytest.approx(dict(zip(map(tuple, want_r), want_lp)), rel=1e-9)
    if eos is not None:  # after an EOS: padding with EOS, masked out
        ended = mask[:, 0] & ~mask[:, 1]
        assert ended.any() and (responses[ended, 0] == EOS).all() and (responses[ended, 1:] == EOS).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_and_recompute_paths_agree(arch):
    model, tok = make_model(arch), make_tokenizer("bytelevel")
    kwargs = dict(bad_words=WORDS, tokenizer=tok, eos_token_id=EOS, batch_size=6)
    cached = exact_bad_probability(model, PROMPT, 3, **kwargs)
    naive = exact_bad_probability_recompute(model, PROMPT, 3, **kwargs)
    assert cached.log_p_bad == pytest.approx(naive.log_p_bad, rel=1e-12)
    assert cached.n_forward_rows == naive.n_forward_rows
    assert cached.n_forward_tokens < naive.n_forward_tokens  # the prompt is not recomputed


def test_prompt_cache_is_not_mutated_and_pruning_saves_rows():
    model = make_model("gpt2")
    with torch.no_grad():
        scorer = _PrefixScorer(model, PROMPT, reuse_cache=True)
        first = scorer(torch.tensor([[4, 2], [1, 3]]))
        again = scorer(torch.tensor([[4, 2], [1, 3], [5, 5]]))[:2]
    assert scorer.cache.get_seq_length() == len(PROMPT)
    assert torch.equal(first, again)
    # Rows: 1 (prompt) + non-bad, non-EOS first tokens only; decided prefixes are never run.
    got = exact_bad_probability(model, PROMPT, 2, bad_token_ids=[4, 6], eos_token_id=EOS)
    assert got.n_forward_rows == 1 + VOCAB - 3


def test_tokens_after_eos_are_not_scored():
    """With T=2 and B={EOS}, P(bad) is P(s1=EOS) + sum_v P(v) P(EOS|v). The reference's bug (scoring a second token
    after EOS) would not change this one, so also check B={4}: EOS at step 1 must end the response."""
    model = make_model("gpt2")
    with torch.no_grad():
        root = torch.softmax(model(input_ids=PROMPT[None]).logits[0, -1].double(), -1)
        after = torch.softmax(
            model(input_ids=torch.cat([PROMPT.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], 1))
            .logits[:, -1]
            .double(),
            -1,
        )
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[[EOS, 4]] = False
    want = root[4] + (root[keep] * after[keep, 4]).sum()
    got = exact_bad_probability(model, PROMPT, 2, bad_token_ids=[4], eos_token_id=EOS)
    assert got.p_bad == pytest.approx(want.item(), rel=1e-9)
    buggy = root[4] + ((root * after[:, 4])[torch.arange(VOCAB) != 4]).sum()
    assert got.p_bad != pytest.approx(buggy.item(), rel=1e-6)


@pytest.mark.parametrize("eos", [None, EOS])
def test_reward_statistics_match_brute_force(eos):
    def reward_fn(responses, mask):
        return -((responses == 4) & mask).sum(-1).double() + 0.1 * (responses * mask).sum(-1).double()

    def reward(r):
        return -sum(t == 4 for t in r) + 0.1 * sum(r)

    responses, logps = enumerate_by_brute_force("llama", 3, eos)
    want_mean = math.fsum(math.exp(lp) * reward(r) for r, lp in zip(responses, logps))
    want_p = math.fsum(math.exp(lp) for r, lp in zip(responses, logps) if reward(r) < 1.0)
    got = exact_reward_statistics(
        make_model("llama"), PROMPT, 3, reward_fn, threshold=1.0, eos_token_id=eos, batch_size=1000
    )
    assert got.expected_reward == pytest.approx(want_mean, rel=1e-9)
    assert got.p_bad == pytest.approx(want_p, rel=1e-9)
    assert got.log_p_bad == pytest.approx(math.log(want_p), rel=1e-9)
    no_threshold = exact_reward_statistics(make_model("llama"), PROMPT, 2, reward_fn)
    assert math.isnan(no_threshold.p_bad) and math.isnan(no_threshold.log_p_bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(response_len=0, bad_token_ids=[1]), "response_len"),
        (dict(bad_token_ids=None), "exactly one of bad_token_ids or bad_words"),
        (dict(bad_words=["fuck"]), "exactly one of bad_token_ids or bad_words"),
        (dict(bad_token_ids=None, bad_words=["fuck"]), "requires tokenizer"),
        (dict(prompt_ids=torch.tensor([], dtype=torch.long), bad_token_ids=[1]), "prompt_ids"),
        (dict(prompt_ids=torch.tensor([3, VOCAB]), bad_token_ids=[1]), "prompt_ids"),
        (dict(bad_token_ids=[VOCAB + 3]), "bad_token_ids"),
        (dict(bad_token_ids=[1], eos_token_id=-1), "eos_token_id"),
        (dict(bad_token_ids=None, bad_words=[""], tokenizer=make_tokenizer("spaced")), "bad_words"),
    ],
)
def test_bad_inputs_raise_one_line_errors(kwargs, match):
    args = dict(prompt_ids=PROMPT, response_len=2, bad_token_ids=[1]) | kwargs
    with pytest.raises(ValueError, match=match) as info:
        exact_bad_probability(make_model("gpt2"), **args)
    assert "\n" not in str(info.value)


def test_enumeration_limits_raise():
    with pytest.raises(ValueError, match="max_sequences"):
        exact_reward_statistics(make_model("gpt2"), PROMPT, 3, lambda r, m: r.sum(-1), max_sequences=100)
    with pytest.raises(ValueError, match="response_len"):
        enumerate_response_logprobs(make_model("gpt2"), PROMPT, 0)
