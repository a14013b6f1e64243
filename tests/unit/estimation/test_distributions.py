"""Input distributions: every family builds from a tokenizer's vocabulary and samples only valid tokens."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from repulse.config.fields import ConfigError
from repulse.config.lpe import LPE_DISTRIBUTIONS, LPEArgs
from repulse.estimation.distributions import (
    DISTRIBUTIONS,
    ENGLISH_WORDS,
    SPANISH_WORDS,
    FactorizedDistribution,
    build_distribution,
)

SPECIAL = ["<pad>", "<eos>", "<unk>"]
# Tokens for every family; "Ġ" is a leading space (byte-level).
PIECES = [
    "a",
    "Ġbad",
    "Ġ1f",
    "C3",
    "Foo",
    "Bar",
    "None",
    "He",
    "She",
    "Ġscreamed",
    ":",
    'Ġ"',
    "ĠHELLO",
    "ĠSTOP",
    "the",
    "Ġthe",
    "Ġman",
    "Ġwater",
    ".",
    "Ġof",
    "Ġperro",
    "Ġgato",
    "Ġfor",
    "ĠA",
    "ĠR",
    "ĠC",
    "ĠT",
    "ĠH",
    "ĠE",
    "ĠO",
    "ĠY",
    "Ġapple",
    "Ġred",
    "Ġcat",
    "Ġtree",
    "Ġhouse",
    "Ġegg",
    "Ġorange",
    "Ġyellow",
    "Ġif",
    "x",
    "Ġ=",
    "(",
    ")",
    "Ġ1",
    "Ċ",
    "Ġ",
]
CODE = set(PIECES) - {"Ċ", "Ġ"}  # every piece but whitespace is an identifier, number or symbol run


@functools.cache
def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {p: i for i, p in enumerate(SPECIAL + PIECES)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def sample_pieces(name: str, length: int, n: int = 300) -> list[list[str]]:
    tok = make_tokenizer()
    dist = build_distribution(name, tok, length, len(tok))
    assert dist.name == name and dist.length == length and dist.description
    x = dist.sample(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, length)
    assert torch.isfinite(dist.log_prob(x)).all()  # every draw lies in the support
    return [[PIECES[i - len(SPECIAL)] if i >= len(SPECIAL) else SPECIAL[i] for i in row] for row in x.tolist()]


def word(piece: str) -> str:
    return piece.removeprefix("Ġ")


HEX = {"a", "Ġbad", "Ġ1f", "C3", "ĠA", "ĠC", "ĠE", "Ġ1"}
CAPS = {"ĠHELLO", "ĠSTOP", "ĠA", "ĠR", "ĠC", "ĠT", "ĠH", "ĠE", "ĠO", "ĠY"}


def english(piece: str) -> bool:
    return word(piece).lower() in ENGLISH_WORDS


CHECKS = {
    "uniform": (3, lambda row: all(p in PIECES for p in row)),
    "hex": (4, lambda row: all(p in HEX for p in row)),
    "camel": (3, lambda row: all(p in ("Foo", "Bar", "He", "She") for p in row)),  # not "None", as in the reference
    "caps": (
        6,
        lambda row: (
            row[0] in ("He", "She") and row[1:4] == ["Ġscreamed", ":", 'Ġ"'] and all(p in CAPS for p in row[4:])
        ),
    ),
    "english": (
        4,
        lambda row: english(row[0]) and all((p.startswith("Ġ") and english(p)) or p in (".", ":") for p in row[1:]),
    ),
    "spanish": (3, lambda row: all(word(p).lower() in SPANISH_WORDS for p in row)),
    "icl": (
        8,
        lambda row: (
            [word(p) for p in row[:6]] == ["A", "for", row[2][1:], "R", "for", row[5][1:]]
            and word(row[2]).startswith("a")
            and word(row[5]).startswith("r")
            and row[6] in ("ĠA", "ĠR")
            and row[7] == "Ġfor"
        ),
    ),
    "ifelse": (4, lambda row: row[0] == "Ġif" and all(p in CODE for p in row[1:])),
    "indent": (4, lambda row: row[-1] == ":" and all(p in CODE for p in row[:-1])),
}


def test_every_family_is_tested_and_listed_in_the_config():
    assert set(CHECKS) == set(DISTRIBUTIONS) == set(LPE_DISTRIBUTIONS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_family_samples_only_valid_tokens(name):
    length, check = CHECKS[name]
    rows = sample_pieces(name, length)
    assert all(p not in SPECIAL for row in rows for p in row)
    bad = [row for row in rows if not check(row)]
    assert not bad, f"{name}: invalid draws such as {bad[:3]}"
    assert len({tuple(r) for r in rows}) > 1  # random positions really vary


def test_icl_query_letter_is_one_of_the_examples():
    rows = sample_pieces("icl", 8, n=200)
    assert {row[6] for row in rows} == {"ĠA", "ĠR"}
    assert {row[2] for row in rows} == {"Ġapple"} and {row[5] for row in rows} == {"Ġred"}


def test_uniform_covers_every_ordinary_token_of_the_embedded_tokenizer():
    from transformers import AutoTokenizer

    from repulse.assets import TINY_LM_DIR

    tok = AutoTokenizer.from_pretrained(TINY_LM_DIR)
    dist = build_distribution("uniform", tok, 2, len(tok) + 3)  # padding rows of an embedding are never drawn
    special = set(tok.all_special_ids)
    support = set(torch.nonzero(dist.probs[0]).flatten().tolist())
    assert support == set(range(len(tok))) - special
    assert dist.num_inputs() == len(support) ** 2
    assert torch.allclose(dist.probs.sum(-1), torch.ones(2, dtype=torch.float64))
    # The embedded word-level tokenizer has no all-caps words and no " for": clear errors name what is missing.
    with pytest.raises(ValueError, match="all-caps"):
        build_distribution("caps", tok, 6, len(tok))
    with pytest.raises(ValueError, match="' for'"):
        build_distribution("icl", tok, 5, len(tok))
    assert "dropped: [' if']" in build_distribution("ifelse", tok, 3, len(tok)).description


@pytest.mark.parametrize(
    ("name", "length", "message"),
    [
        ("hexx", 4, "unknown input distribution 'hexx': choose from uniform, hex"),
        ("uniform", 0, "--sequence_length must be >= 1"),
        ("icl", 6, "'icl' needs 3k \\+ 2 tokens"),
        ("caps", 4, "too short for 'caps': it needs >= 5"),
    ],
)
def test_bad_names_and_lengths_are_clear_errors(name, length, message):
    tok = make_tokenizer()
    with pytest.raises(ValueError, match=message):
        build_distribution(name, tok, length, len(tok))


def test_config_rejects_unknown_distributions():
    with pytest.raises(ConfigError, match="--distribution_name: unknown distribution 'nope'"):
        LPEArgs(distribution_name="nope")
    with pytest.raises(ConfigError, match="--n_samples 100 must be a multiple of --batch_size 64"):
        LPEArgs(n_samples=100, batch_size=64)


def test_factorised_distribution_validates_and_scores():
    with pytest.raises(ValueError, match=r"\[L, V\]"):
        FactorizedDistribution(torch.ones(4, dtype=torch.float64) / 4)
    with pytest.raises(ValueError, match="probability distribution"):
        FactorizedDistribution(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="probability distribution"):
        FactorizedDistribution(torch.tensor([[1.5, -0.5]]))
    dist = FactorizedDistribution(torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]))
    assert dist.probs.dtype == torch.float64 and dist.support_sizes() == [2, 1] and dist.num_inputs() == 2
    assert dist.variable_positions().tolist() == [0]
    logp = dist.log_prob(torch.tensor([[1, 2], [0, 2], [2, 2]]))
    assert logp[:2].tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    assert logp[2] == -math.inf
    draws = dist.sample(4000, torch.Generator().manual_seed(0))
    assert set(draws[:, 1].tolist()) == {2}
    assert float((draws[:, 0] == 1).double().mean()) == pytest.approx(0.75, abs=0.03)
