"""The latent score behind the embedded tiny reward model, and the preference pairs that teach it.

The tiny RM stands in for a toxicity classifier such as the paper's nicholasKluge/ToxicityModel, whose logit is
high for harmless text and graded: praise scores above neutral text, insults below it, profanity far below
everything else. `latent_score` is that logit for our grammar: a neutral text scores NEUTRAL_SCORE, each clean word
adds its WORD_SCORES value (praise > 0, insults < 0; most words 0), and a text with a planted bad word scores its
worst bad word's BAD_WORD_SCORES value with the clean words' sum damped by BAD_CONTEXT_WEIGHT, so no clean context
lifts a bad word out of the low region. The score reads the tokens the RM itself sees (prompt + decoded response,
re-tokenized, as RL scores samples): a token the tokenizer does not know (e.g. "Her" glued to the prompt's last
word, "aHer") is <unk> and neutral, as a classifier treats an odd but harmless string.

The RM is trained with `train_rm` on Bradley-Terry pairs whose labels are drawn with P(a preferred to b) =
sigmoid(g(a) - g(b)): the maximum-likelihood reward is then g itself (up to a constant), so the RM learns graded
differences, not only an order. The texts cover what RL will show it: grammatical clean and bad completions, and
runs of 1-3 uniformly random tokens (with and without a bad word), so that the whole 2-token continuation space
of the toy is in distribution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import asset_grammar as grammar

NEUTRAL_SCORE = 2.0
BAD_CONTEXT_WEIGHT = 0.25
BAD_WORD_SCORES = {
    "fuck": -9.0,
    "fucking": -8.5,
    "shit": -9.0,
    "shitty": -8.5,
    "bitch": -9.5,
    "bastard": -9.0,
    "asshole": -9.5,
    "cunt": -10.5,
    "dick": -9.0,
    "motherfucker": -10.0,
}
# Praise and insult; every other word (people, neutral adjectives, function words, roles) scores 0.
WORD_SCORES = {
    # adjectives
    "good": 0.8,
    "nice": 0.8,
    "kind": 1.2,
    "great": 1.0,
    "smart": 0.8,
    "funny": 0.5,
    "friendly": 1.0,
    "gentle": 1.0,
    "brave": 1.0,
    "calm": 0.5,
    "cheerful": 0.8,
    "clever": 0.8,
    "polite": 0.8,
    "lovely": 1.2,
    "decent": 0.6,
    "wonderful": 1.5,
    "pretty": 0.4,
    "generous": 1.2,
    "careful": 0.4,
    "humble": 0.8,
    "patient": 0.8,
    "lucky": 0.3,
    "sweet": 1.0,
    "wise": 1.0,
    "fair": 0.5,
    "cool": 0.5,
    "happy": 0.6,
    "honest": 1.0,
    "amazing": 1.3,
    "excellent": 1.3,
    "interesting": 0.4,
    "outgoing": 0.5,
    "innocent": 0.4,
    "intelligent": 0.8,
    "awesome": 1.2,
    "honorable": 1.2,
    "eager": 0.3,
    "bad": -1.0,
    "rude": -1.2,
    "lazy": -0.8,
    "loud": -0.4,
    "sad": -0.3,
    "strange": -0.3,
    "weird": -0.5,
    "boring": -0.5,
    "silly": -0.4,
    "terrible": -1.5,
    "horrible": -1.5,
    "stubborn": -0.5,
    "mean": -1.2,
    "dumb": -1.8,
    "stupid": -2.0,
    "crazy": -1.0,
    "cold": -0.4,
    "awful": -1.5,
    "angry": -0.8,
    "annoying": -1.2,
    "evil": -2.0,
    "ugly": -1.8,
    "arrogant": -1.2,
    "odd": -0.3,
    # nouns
    "genius": 1.0,
    "hero": 1.5,
    "saint": 1.5,
    "legend": 1.2,
    "star": 0.8,
    "gentleman": 1.0,
    "blessing": 1.5,
    "angel": 1.5,
    "expert": 0.5,
    "inspiration": 1.5,
    "icon": 0.6,
    "optimist": 0.6,
    "liar": -1.5,
    "fool": -1.5,
    "jerk": -2.0,
    "loser": -1.8,
    "clown": -1.0,
    "nerd": -0.6,
    "creep": -1.8,
    "snob": -1.0,
    "bully": -1.5,
    "coward": -1.5,
    "thief": -1.5,
    "mess": -0.8,
    "joke": -1.0,
    "pain": -0.8,
    "nightmare": -1.2,
    "idiot": -2.2,
    # superlatives
    "best": 1.2,
    "nicest": 1.2,
    "kindest": 1.5,
    "smartest": 1.0,
    "funniest": 0.8,
    "greatest": 1.2,
    "coolest": 0.8,
    "sweetest": 1.2,
    "worst": -1.5,
    "weirdest": -0.5,
    "laziest": -1.0,
    "loudest": -0.4,
}
# Where the RM's training texts come from: grammatical clean / bad completions, random token runs, random runs
# with a bad word; weights sum to 1.
TEXT_MIX = (("clean", 0.35), ("bad", 0.15), ("random", 0.4), ("random_bad", 0.1))


def check_word_scores() -> None:
    """Every scored word is in the grammar's lexicon and no clean word is scored as bad."""
    lexicon = {w.strip() for text in grammar.lexicon() for w in text.split()}
    unknown = sorted(set(WORD_SCORES) - lexicon)
    if unknown or set(WORD_SCORES) & set(BAD_WORD_SCORES) or set(BAD_WORD_SCORES) != set(grammar.BAD_WORDS):
        raise SystemExit(f"asset_reward: word scores do not match the grammar (unknown: {unknown})")


def token_words(tokenizer, text: str) -> list[str]:
    """The lower-cased, stripped texts of the tokens the RM sees for `text` (<unk> for unknown strings)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.convert_ids_to_tokens(i).replace("\u0120", " ").strip().lower() for i in ids]


def latent_score(words: Sequence[str]) -> float:
    """The RM's target for a text given as its token words (see the module docstring)."""
    clean = sum(WORD_SCORES.get(w, 0.0) for w in words)
    bad = [BAD_WORD_SCORES[w] for w in words if w in BAD_WORD_SCORES]
    if not bad:
        return NEUTRAL_SCORE + clean
    return NEUTRAL_SCORE + min(bad) + BAD_CONTEXT_WEIGHT * clean


def score_text(tokenizer, text: str) -> float:
    return latent_score(token_words(tokenizer, text))


def random_completion(rng: random.Random, tokenizer, pools: dict[str, list[int]], with_bad: bool) -> str:
    """1-3 uniformly random tokens (one replaced by a bad word with `with_bad`), cut at EOS, decoded as the
    sampler decodes a response (special tokens skipped). A bad word without its leading space is glued to a
    preceding word (an unknown token for the RM, as for the metric's whole-word match), so half the time it gets
    a non-word token before it, where it stays visible ("!fuck")."""
    ids = [rng.choice(pools["all"]) for _ in range(rng.choice((1, 2, 2, 3)))]
    if with_bad:
        word, at = rng.choice(grammar.BAD_WORDS), rng.randrange(len(ids))
        spaced = rng.random() < 0.5
        ids[at] = tokenizer.convert_tokens_to_ids("\u0120" + word if spaced else word)
        if not spaced and at > 0 and rng.random() < 0.5:
            ids[at - 1] = rng.choice(pools["nonword"])
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def token_pools(tokenizer) -> dict[str, list[int]]:
    """Every token id, and the ids of tokens without a letter (punctuation, whitespace, markers)."""
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    nonword = [i for i, text in enumerate(texts) if text and not any(ch.isalpha() for ch in text)]
    return {"all": list(range(len(tokenizer))), "nonword": nonword}


def pick_kind(rng: random.Random) -> str:
    roll, acc = rng.random(), 0.0
    for kind, weight in TEXT_MIX:
        acc += weight
        if roll < acc:
            return kind
    return TEXT_MIX[-1][0]


def sample_rm_completion(rng: random.Random, tokenizer, pools: dict[str, list[int]], prompt: str) -> str:
    kind = pick_kind(rng)
    if kind in ("clean", "bad"):
        return grammar.sample_completion(rng, prompt, kind == "bad")
    return random_completion(rng, tokenizer, pools, kind == "random_bad")


def build_reward_pairs(rng: random.Random, tokenizer, prompts: Sequence[str], n_rows: int) -> list[dict]:
    """Bradley-Terry pairs: two completions of one prompt, the first preferred with P = sigmoid(g(a) - g(b))."""
    check_word_scores()
    pools = token_pools(tokenizer)
    rows = []
    for _ in range(n_rows):
        prompt = rng.choice(prompts)
        a, b = (sample_rm_completion(rng, tokenizer, pools, prompt) for _ in range(2))
        gap = score_text(tokenizer, prompt + a) - score_text(tokenizer, prompt + b)
        if rng.random() >= 1 / (1 + math.exp(-gap)):
            a, b = b, a
        rows.append({"prompt": prompt, "chosen": a, "rejected": b})
    return rows


def build_calibration_rows(rng: random.Random, tokenizer, prompts: Sequence[str], n_rows: int) -> list[dict]:
    """Texts drawn like the RM's training texts (on other prompts), each with its latent score: the build fits
    the RM's raw scores to these scores and stores the affine map as the RM's normalization."""
    pools = token_pools(tokenizer)
    rows = []
    for _ in range(n_rows):
        prompt = rng.choice(prompts)
        completion = sample_rm_completion(rng, tokenizer, pools, prompt)
        rows.append({"prompt": prompt, "completion": completion, "score": score_text(tokenizer, prompt + completion)})
    return rows
