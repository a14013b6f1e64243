"""Input distributions for low-probability estimation: independent per-position token distributions
(docs/algorithms/lpe.md).

D(x) = Π_j D_j(x_j) over token sequences of length L, stored as one [L, V] probability table. Every family is
built from a tokenizer's own vocabulary by rules on the decoded token text, so it works for any tokenizer with the
right kind of tokens (docs/algorithms/lpe.md lists how each departs from Wu & Hilton's corpus-weighted versions):

- uniform: every non-special token; hex: tokens that are hex strings; caps: all-caps words after a fixed
  'He/She screamed: "' skeleton; camel: CamelCase word pieces; english / spanish: word tokens from a short
  shipped word list (Spanish also: words with Spanish accents); icl: 'A for <A-word> R for <R-word> ... <letter>
  for'; ifelse: ' if' then code tokens; indent: code tokens then ':'.

Fixed skeleton tokens are point masses (still a product distribution, as ITGIS needs). Skeleton text that the
tokenizer cannot encode is dropped and the distribution's description says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

DISTRIBUTIONS = ("uniform", "hex", "camel", "caps", "english", "spanish", "icl", "ifelse", "indent")
HEX_CHARS = frozenset("0123456789abcdefABCDEF")
ICL_LETTERS = "ARCTHEORY"
PUNCTUATION = frozenset({".", ",", "!", "?", ";", ":"})
CODE_SYMBOLS = frozenset("()[]{}=+-*/%<>!&|^~.,:;@#'\"_")
SPANISH_MARKS = frozenset("ñáéíóúü")
# The most frequent words of each language: a stand-in for the paper's corpus frequency tables.
ENGLISH_TEXT = (
    "the of and to a in is it you that he was for on are with as i his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their time "
    "if will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small end put home "
    "read hand port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father woman"
)
ENGLISH_WORDS = frozenset(ENGLISH_TEXT.split())
SPANISH_TEXT = (
    "de la que el en y a los se del las un por con no una su para es al lo como más pero sus le ya o este sí "
    "porque esta entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante todos uno les "
    "ni contra otros ese eso ante ellos e esto mí antes algunos qué unos yo otro otras otra él tanto esa estos "
    "mucho quienes nada muchos cual poco ella estar estas algunas algo nosotros mi mis tú te ti tu tus ellas "
    "casa perro gato agua tiempo vida día mundo hombre mujer año bueno grande nuevo"
)
SPANISH_WORDS = frozenset(SPANISH_TEXT.split())


@dataclass(frozen=True)
class FactorizedDistribution:
    """D(x) = Π_j probs[j, x_j]: probs [L, V] float64 with rows summing to 1 (0 outside each position's support)."""

    probs: torch.Tensor
    name: str = "custom"
    description: str = ""

    def __post_init__(self) -> None:
        p = self.probs
        if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise ValueError(f"probs must be [L, V] with L, V >= 1, got shape {tuple(p.shape)}")
        if bool((p < 0).any()) or not torch.allclose(p.sum(-1).double(), torch.ones(p.shape[0], dtype=torch.float64)):
            raise ValueError("each row of probs must be a probability distribution")
        object.__setattr__(self, "probs", p.double())

    @property
    def length(self) -> int:
        return int(self.probs.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.probs.shape[1])

    @property
    def log_probs(self) -> torch.Tensor:
        """[L, V] log D_j(v), -inf outside the support."""
        return self.probs.log()

    def support_sizes(self) -> list[int]:
        return [int(n) for n in (self.probs > 0).sum(-1)]

    def num_inputs(self) -> int:
        """|support(D)| = the product of the per-position support sizes (the size of an exact enumeration)."""
        return math.prod(self.support_sizes())

    def variable_positions(self) -> torch.Tensor:
        """Positions whose token is random (support > 1); fixed skeleton positions are left out."""
        return torch.nonzero((self.probs > 0).sum(-1) > 1).flatten()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n independent draws -> [n, L] long."""
        return torch.multinomial(self.probs, n, replacement=True, generator=generator).T.contiguous()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log D(x) for x [n, L] long -> [n] float64."""
        return self.log_probs.gather(1, x.T.cpu()).sum(0)


# ---- token classes by rule --------------------------------------------------------------------------------------
def decode_vocabulary(tokenizer, vocab_size: int) -> list[str | None]:
    """The text of each token id < vocab_size as the tokenizer decodes it alone; None for special tokens and ids
    the tokenizer does not know (e.g. padding rows of a model's embedding matrix)."""
    n = min(vocab_size, len(tokenizer))
    texts: list[str | None] = list(tokenizer.batch_decode([[i] for i in range(n)]))
    for i in tokenizer.all_special_ids:
        if 0 <= i < n:
            texts[i] = None
    return texts + [None] * (vocab_size - n)


def strip_space(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def is_plain(text: str) -> bool:
    return bool(text.strip()) and "\ufffd" not in text


def is_hex(text: str) -> bool:
    core = strip_space(text)
    return bool(core) and set(core) <= HEX_CHARS


def is_caps(text: str) -> bool:
    core = strip_space(text)
    return core.isascii() and core.isalpha() and core.isupper()


def is_camel_piece(text: str) -> bool:
    return (
        len(text) >= 2 and text.isascii() and text.isalpha() and text[0].isupper() and text[1:].islower()
    ) and text not in ("None", "True", "False")


def is_english(text: str) -> bool:
    core = strip_space(text)
    return core.isalpha() and core.lower() in ENGLISH_WORDS


def is_english_continuation(text: str) -> bool:
    return (text.startswith(" ") and is_english(text)) or strip_space(text) in PUNCTUATION


def is_spanish(text: str) -> bool:
    core = strip_space(text).lower()
    return core.isalpha() and (core in SPANISH_WORDS or bool(set(core) & SPANISH_MARKS))


def is_code(text: str) -> bool:
    core = text.strip(" ")
    if not core or "\n" in core or not core.isascii() or not core.isprintable():
        return False
    return core.isidentifier() or core.isdigit() or set(core) <= CODE_SYMBOLS


def select_tokens(texts: Sequence[str | None], rule: Callable[[str], bool]) -> torch.Tensor:
    """[V] bool: tokens whose text satisfies `rule` (never special tokens)."""
    return torch.tensor([t is not None and is_plain(t) and rule(t) for t in texts], dtype=torch.bool)


def find_token(texts: Sequence[str | None], *candidates: str) -> int | None:
    """The id of the first candidate text that is one token of the vocabulary."""
    for cand in candidates:
        for i, t in enumerate(texts):
            if t == cand:
                return i
    return None


# ---- assembling a template ---------------------------------------------------------------------------------------
def uniform_over(mask: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(mask.any()):
        raise ValueError(f"no token of this tokenizer's vocabulary is {what}")
    return mask.double() / mask.sum()


def point_mass(token_id: int, vocab_size: int) -> torch.Tensor:
    row = torch.zeros(vocab_size, dtype=torch.float64)
    row[token_id] = 1.0
    return row


def fill_template(head: list[torch.Tensor], body: torch.Tensor, tail: list[torch.Tensor], length: int, name: str):
    """Rows: the fixed head, `body` repeated to fill `length`, then the fixed tail."""
    n_body = length - len(head) - len(tail)
    if n_body < 1:
        raise ValueError(
            f"--sequence_length {length} is too short for '{name}': it needs >= {len(head) + len(tail) + 1}"
        )
    return torch.stack([*head, *([body] * n_body), *tail])


def skeleton_rows(texts, pieces: Sequence[tuple[str, ...]], vocab_size: int) -> tuple[list[torch.Tensor], list[str]]:
    """One point-mass row per skeleton piece (each a tuple of alternative spellings); pieces absent from the
    vocabulary are dropped and listed."""
    rows, dropped = [], []
    for alternatives in pieces:
        token = find_token(texts, *alternatives)
        if token is None:
            dropped.append(alternatives[0])
        else:
            rows.append(point_mass(token, vocab_size))
    return rows, dropped


def note_dropped(dropped: list[str]) -> str:
    return f"; skeleton tokens not in the vocabulary, dropped: {dropped}" if dropped else ""


def build_caps(texts, length: int, vocab_size: int) -> tuple[torch.Tensor, str]:
    body = uniform_over(select_tokens(texts, is_caps), "an all-caps word")
    he, she = find_token(texts, "He", " He"), find_token(texts, "She", " She")
    head: list[torch.Tensor] = []
    if he is not None and she is not None:
        head.append((point_mass(he, vocab_size) + point_mass(she, vocab_size)) / 2)
    pieces = [(" screamed", "screamed"), (":",), (' "', '"')]
    rows, dropped = skeleton_rows(texts, pieces, vocab_size)
    dropped = ([] if head else ["He/She"]) + dropped
    desc = f'He/She screamed: " then {int((body > 0).sum())} all-caps tokens{note_dropped(dropped)}'
    return fill_template(head + rows, body, [], length, "caps"), desc


def build_icl(texts, length: int, vocab_size: int) -> tuple[torch.Tensor, str]:
    """'A for <A-word> R for <R-word> ...' over the letters of ARCTHEORY (cycled), then '<letter> for'."""
    if length < 5 or (length - 2) % 3:
        raise ValueError(f"--sequence_length {length}: 'icl' needs 3k + 2 tokens (k >= 1), e.g. 5, 8, 11, ..., 29")
    word_for = find_token(texts, " for", "for")
    if word_for is None:
        raise ValueError("'icl' needs the token ' for' in the vocabulary")
    rows, letters = [], []
    for letter in (ICL_LETTERS * length)[: (length - 2) // 3]:
        tok = find_token(texts, " " + letter, letter)
        words = select_tokens(texts, lambda t, c=letter: len(t.strip()) >= 2 and t.strip()[0].upper() == c)
        words &= select_tokens(texts, lambda t: t.strip().isalpha())
        if tok is None or not bool(words.any()):
            raise ValueError(f"'icl' needs the letter token {letter!r} and words starting with it in the vocabulary")
        rows += [point_mass(tok, vocab_size), point_mass(word_for, vocab_size), uniform_over(words, "")]
        letters.append(tok)
    query = torch.stack([point_mass(t, vocab_size) for t in letters]).mean(0)
    probs = torch.stack([*rows, query, point_mass(word_for, vocab_size)])
    return probs, f"{len(letters)} 'letter for word' examples, then a query letter and ' for'"


def build_structured(name: str, texts, length: int, vocab_size: int) -> tuple[torch.Tensor, str]:
    """The families with a skeleton: caps, icl, ifelse, indent, english."""
    if name == "caps":
        return build_caps(texts, length, vocab_size)
    if name == "icl":
        return build_icl(texts, length, vocab_size)
    if name == "english":
        first = uniform_over(select_tokens(texts, is_english), "an English word")
        body = uniform_over(select_tokens(texts, is_english_continuation), "a ' word' or punctuation token")
        desc = f"an English word, then {int((body > 0).sum())} ' word' / punctuation tokens"
        return fill_template([first], body, [], length, name), desc
    code = uniform_over(select_tokens(texts, is_code), "a code token")
    if name == "ifelse":
        head, dropped = skeleton_rows(texts, [(" if", "if")], vocab_size)
        desc = f"' if' then {int((code > 0).sum())} code tokens{note_dropped(dropped)}"
        return fill_template(head, code, [], length, name), desc
    tail, dropped = skeleton_rows(texts, [(":",)], vocab_size)
    desc = f"{int((code > 0).sum())} code tokens then ':'{note_dropped(dropped)}"
    return fill_template([], code, tail, length, name), desc


SIMPLE_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "uniform": (lambda t: True, "a non-special token"),
    "hex": (is_hex, "a hex string"),
    "camel": (is_camel_piece, "a CamelCase word piece"),
    "spanish": (is_spanish, "a Spanish word"),
}


def build_distribution(name: str, tokenizer, sequence_length: int, vocab_size: int) -> FactorizedDistribution:
    """The input distribution `name` (one of DISTRIBUTIONS) over sequences of `sequence_length` tokens < vocab_size.

    Raises ValueError naming the problem when the family is unknown or the tokenizer has no suitable tokens.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown input distribution {name!r}: choose from {', '.join(DISTRIBUTIONS)}")
    if sequence_length < 1:
        raise ValueError(f"--sequence_length must be >= 1, got {sequence_length}")
    texts = decode_vocabulary(tokenizer, vocab_size)
    if name in SIMPLE_RULES:
        rule, what = SIMPLE_RULES[name]
        row = uniform_over(select_tokens(texts, rule) if name != "uniform" else known_tokens(texts), what)
        probs, desc = row.expand(sequence_length, -1).clone(), f"{int((row > 0).sum())} tokens per position"
    else:
        probs, desc = build_structured(name, texts, sequence_length, vocab_size)
    return FactorizedDistribution(probs, name=name, description=desc)


def known_tokens(texts: Sequence[str | None]) -> torch.Tensor:
    """uniform's support: every token the tokenizer knows except special tokens (even whitespace-only ones)."""
    return torch.tensor([t is not None for t in texts], dtype=torch.bool)
