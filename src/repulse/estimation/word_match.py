"""Bad-output criteria for exact enumeration of P(bad): a token set, and whole words in the decoded text.

A response is bad iff `tokenizer.decode(response, skip_special_tokens=True)` contains a bad word as a whole word
(regex `\\b(word1|word2|...)\\b`). Enumerating |V|^T decodes is impossible for real vocabularies, so we exploit that
the verdict on a prefix's continuations depends only on a small *state* of its text (`WordMatcher`):

- the *carry*: the longest suffix of the text that starts at a word boundary and is a prefix of some bad word
  (e.g. " f" leaves carry "f"; " fuck" leaves "fuck", a complete word still waiting for its closing boundary);
- when the carry is empty, whether the last character is a word character (it decides the next `\\b`);
- whether nothing has been emitted yet (the first token's text may differ, e.g. SentencePiece drops its space).

A prefix whose text already holds a bad word followed by a boundary is *decided* bad (state `BAD`). For each state
we compute once, over the whole vocabulary, which tokens make it decided-bad and which state they lead to; every
prefix in that state then shares the row. Most tokens cannot touch a non-empty carry, so a carry state's row is the
empty-carry row with only the tokens whose first character could continue the carry (or close a pending word)
recomputed.

All of this assumes `decode(t1..tn) = first[t1] + mid[t2] + ... + mid[tn]`, which `analyse_token_texts` probes for
every token. Byte-level tokens holding partial UTF-8 (text with U+FFFD) can merge with a neighbour, and tokens that
fail a probe may interact with anything: at such *risky* boundaries the whole response is decoded exactly instead.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch

CLEAN, RIGHT_OPEN, UNRELIABLE = 0, 1, 2  # the boundary a token leaves on its right (a prefix's "tail")
BAD = 0  # state id of a decided-bad prefix
_WORD = re.compile(r"\w")
_REPLACEMENT = "\ufffd"


def _is_word(ch: str) -> bool:
    return _WORD.match(ch) is not None


@dataclass(frozen=True)
class TokenTexts:
    """Per-token text, as the tokenizer decodes it in context (V = model vocabulary size)."""

    first: list[str]  # text of token v when it is the first non-empty token of a response
    mid: list[str]  # text token v appends after earlier text
    nonempty: torch.Tensor  # [V] bool; empty tokens (skipped specials) leave the text unchanged
    tail_class: torch.Tensor  # [V] int8: CLEAN / RIGHT_OPEN (ends in partial UTF-8) / UNRELIABLE
    left_open: torch.Tensor  # [V] bool: starts with partial UTF-8 that may merge with a RIGHT_OPEN neighbour
    unreliable: torch.Tensor  # [V] bool: failed a concatenation probe, so it is risky next to any token


def _pick_anchors(first: list[str]) -> tuple[int, int]:
    """Two plain tokens to probe every other token against: a word ('a') and one starting with a non-word char."""
    word = next((i for i, s in enumerate(first) if s.isascii() and s.isalpha()), None)
    other = next((i for i, s in enumerate(first) if s.isascii() and s[:1] and not _is_word(s[0]) and s.strip()), None)
    fallback = next((i for i, s in enumerate(first) if s and _REPLACEMENT not in s), 0)
    word = fallback if word is None else word
    return word, (word if other is None else other)


def analyse_token_texts(tokenizer, vocab_size: int) -> TokenTexts:
    """Decode every token alone and next to two anchor tokens; flag tokens whose text is not concatenative.

    Costs 5 batched decodes of |V| short sequences. Ids at or past `len(tokenizer)` (padded embedding rows)
    decode to nothing and are treated as empty.
    """
    n = min(vocab_size, len(tokenizer))

    def decode(seqs: list[list[int]]) -> list[str]:
        return list(tokenizer.batch_decode(seqs, skip_special_tokens=True))

    first = decode([[i] for i in range(n)])
    a1, a2 = _pick_anchors(first)
    with_a1 = decode([[a1, i] for i in range(n)])
    ok = [s.startswith(first[a1]) for s in with_a1]
    mid = [s[len(first[a1]) :] if good else first[i] for i, (s, good) in enumerate(zip(with_a1, ok))]
    # Left side against a second anchor, in the middle; right side at the start of a response, where a token
    # with no text of its own leaves the next one first.
    inside = decode([[a2, i, a1] for i in range(n)])
    after = [decode([[i, a] for i in range(n)]) for a in (a1, a2)]
    unreliable = [
        not (
            good
            and inside[i] == first[a2] + mid[i] + mid[a1]
            and all(got[i] == (first[i] + mid[a] if first[i] else first[a]) for got, a in zip(after, (a1, a2)))
        )
        for i, good in enumerate(ok)
    ]
    pad = vocab_size - n
    first, mid, unreliable = first + [""] * pad, mid + [""] * pad, unreliable + [False] * pad
    right_open = [s.endswith(_REPLACEMENT) or t.endswith(_REPLACEMENT) for s, t in zip(first, mid)]
    left_open = [s.startswith(_REPLACEMENT) or t.startswith(_REPLACEMENT) for s, t in zip(first, mid)]
    unreliable_t = torch.tensor(unreliable, dtype=torch.bool)
    tail = torch.where(unreliable_t, UNRELIABLE, torch.tensor(right_open, dtype=torch.int8) * RIGHT_OPEN)
    nonempty = torch.tensor([bool(s or t) for s, t in zip(first, mid)], dtype=torch.bool)
    return TokenTexts(first, mid, nonempty, tail.to(torch.int8), torch.tensor(left_open), unreliable_t)


@dataclass(frozen=True)
class StepOutcome:
    """What a non-final level of the sampling tree does to a batch of b prefixes over the V next tokens."""

    bad: torch.Tensor  # [b, V] bool: (prefix, token) whose probability mass is bad now
    rows: torch.Tensor  # [c] long: prefix index of each surviving child
    cols: torch.Tensor  # [c] long: token of each surviving child
    state: torch.Tensor  # [c] long: the child's state id
    tail: torch.Tensor  # [c] int8: the child's tail class


@dataclass(frozen=True)
class LastOutcome:
    """The bad (prefix, token) pairs of the final level, kept sparse: V can be 50k and bad tokens are few."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]  # (rows [r], cols [c]): every row with every col is bad
    rows: torch.Tensor  # [k] long: further single bad pairs (found by exact decoding)
    cols: torch.Tensor  # [k] long


class WordMatcher:
    """Decides badness of decoded text token by token; state rows are built lazily and reused across calls."""

    def __init__(self, words: list[str], texts: TokenTexts, tokenizer, case_sensitive: bool):
        self.texts, self.tokenizer, self.case_sensitive = texts, tokenizer, case_sensitive
        self.vocab_size = len(texts.mid)
        self.flags = 0 if case_sensitive else re.IGNORECASE
        self.words = sorted(set(words), key=len, reverse=True)
        alt = "|".join(re.escape(w) for w in self.words)
        prefixes = sorted({w[:k] for w in self.words for k in range(1, len(w) + 1)}, key=len, reverse=True)
        self.final_re = re.compile(rf"\b(?:{alt})\b", self.flags)
        # A match followed by at least one more character can never be undone by later text.
        self.decided_re = re.compile(rf"\b(?:{alt})\b(?=[\s\S])", self.flags)
        self.carry_re = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in prefixes) + r")\Z", self.flags)
        # If some token may rewrite the text before it, a decided prefix can still change: keep expanding it.
        self.keep_decided = bool(texts.unreliable.any())
        self.first_word = torch.tensor([bool(s) and _is_word(s[0]) for s in texts.mid], dtype=torch.bool)
        self._by_first_char: dict[str, list[int]] = {}
        for v, s in enumerate(texts.mid):
            if s:
                self._by_first_char.setdefault(s[0], []).append(v)
        self._followers: dict[str, torch.Tensor] = {}
        self.states: list[tuple[bool, str, bool] | None] = [None]
        self.final_flag: list[bool] = [True]
        self.index: dict[tuple[bool, str, bool], int] = {}
        self.decided_rows: list[torch.Tensor | None] = [torch.ones(self.vocab_size, dtype=torch.bool)]
        self.next_rows: list[torch.Tensor | None] = [torch.zeros(self.vocab_size, dtype=torch.int32)]
        self.final_rows: dict[int, torch.Tensor] = {}
        self._last_cols: dict[tuple[int, int], torch.Tensor] = {}
        self.start = self._register((False, "", True))

    # ---- states ----------------------------------------------------------------------------------------------
    def _register(self, state: tuple[bool, str, bool]) -> int:
        """Id of a state (word-char-before-carry, carry, nothing-emitted-yet), creating it on first sight."""
        sid = self.index.get(state)
        if sid is None:
            sid = len(self.states)
            self.index[state] = sid
            self.states.append(state)
            before, carry, _ = state
            self.final_flag.append(self.final_re.search(("a" if before else " ") + carry, 1) is not None)
            self.decided_rows.append(None)
            self.next_rows.append(None)
        return sid

    def advance(self, sid: int, text: str) -> int:
        """State id after appending `text` to a prefix in state `sid` (BAD if a bad word is now closed)."""
        if sid == BAD or not text:
            return sid
        before, carry, _ = self.states[sid]
        # The sentinel stands for the character before the carry: only its word-ness matters to `\b`.
        ctx = ("a" if before else " ") + carry + text
        if self.decided_re.search(ctx, 1):
            return BAD
        m = self.carry_re.search(ctx, 1)
        if m is None:
            return self._register((_is_word(ctx[-1]), "", False))
        new = m.group()
        if not self.case_sensitive and new.isascii():
            new = new.lower()  # ASCII case variants match the same way under IGNORECASE: share their state
        return self._register((_is_word(ctx[m.start() - 1]), new, False))

    # ---- per-state rows over the vocabulary --------------------------------------------------------------------
    def _ensure_rows(self, sid: int) -> None:
        if self.decided_rows[sid] is not None:
            return
        before, carry, at_start = self.states[sid]
        if carry:
            decided, nxt = self._build_carry_row(sid)
        else:
            texts = self.texts.first if at_start else self.texts.mid
            nxt = torch.tensor([self.advance(sid, s) for s in texts], dtype=torch.int32)
            decided = nxt == BAD
        self.decided_rows[sid], self.next_rows[sid] = decided, nxt

    def _build_carry_row(self, sid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of a state with a carry: the empty-carry row, patched where a token interacts with the carry."""
        _, carry, _ = self.states[sid]
        base = self._register((_is_word(carry[-1]), "", False))
        self._ensure_rows(base)
        decided, nxt = self.decided_rows[base].clone(), self.next_rows[base].clone()
        pending, followers = self._find_carry_prospects(sid)
        if pending:  # a complete bad word is waiting: any token opening with a boundary closes it
            closes = self.texts.nonempty & (self.first_word != _is_word(carry[-1]))
            decided |= closes
            nxt[closes] = BAD
        else:
            closes = torch.zeros_like(decided)
        empty = ~self.texts.nonempty
        decided[empty], nxt[empty] = False, sid
        cand = torch.zeros_like(decided)
        for ch in followers:
            cand[self._find_tokens_opening_with(ch)] = True
        for v in (cand & ~closes).nonzero().flatten().tolist():
            nxt[v] = self.advance(sid, self.texts.mid[v])
            decided[v] = bool(nxt[v] == BAD)
        return decided, nxt

    def _find_carry_prospects(self, sid: int) -> tuple[bool, set[str]]:
        """(a complete bad word ends the carry, characters that continue some bad-word prefix ending the carry)."""
        before, carry, _ = self.states[sid]
        ctx = ("a" if before else " ") + carry
        pending, followers = False, set()
        for k in range(1, len(ctx)):
            if not self.carry_re.match(ctx, k):
                continue  # this suffix does not start at a boundary or is no bad-word prefix
            tail = ctx[k:]
            for w in self.words:
                if len(w) >= len(tail) and re.fullmatch(re.escape(w[: len(tail)]), tail, self.flags):
                    if len(w) == len(tail):
                        pending = True
                    else:
                        followers.add(w[len(tail)])
        return pending, followers

    def _find_tokens_opening_with(self, ch: str) -> torch.Tensor:
        """Token ids whose (mid) text starts with a character that the regex would match to `ch`."""
        if ch not in self._followers:
            pat = re.compile(re.escape(ch), self.flags)
            ids = [v for c, vs in self._by_first_char.items() if pat.fullmatch(c) for v in vs]
            self._followers[ch] = torch.tensor(ids, dtype=torch.long)
        return self._followers[ch]

    def _get_final_row(self, sid: int) -> torch.Tensor:
        """[V] bool: the response ending right after this token is bad."""
        row = self.final_rows.get(sid)
        if row is None:
            flags = torch.tensor(self.final_flag, dtype=torch.bool)
            row = self.decided_rows[sid] | flags[self.next_rows[sid].long()]
            self.final_rows[sid] = row
        return row

    # ---- one tree level --------------------------------------------------------------------------------------
    def _mark_risky(self, tail: torch.Tensor) -> torch.Tensor:
        """[b, V] bool: boundaries where per-token texts may not concatenate, so the response is decoded."""
        tx = self.texts
        risky = tx.unreliable[None, :] | (tail == UNRELIABLE)[:, None]
        return risky | ((tail == RIGHT_OPEN)[:, None] & tx.left_open[None, :])

    def step(self, ids, state, tail, ends: torch.Tensor) -> StepOutcome:
        """Classify all (prefix, next token) pairs of a batch when the next token is not the last one.

        ids [b, d] long response prefixes; state [b] long; tail [b] int8; ends [V] bool: tokens that end
        generation (EOS), whose pairs are leaves judged on their full text. Other pairs are decided-bad now or
        become children.
        """
        uniq, inv = torch.unique(state, return_inverse=True)
        for s in uniq.tolist():
            self._ensure_rows(s)
        decided = torch.stack([self.decided_rows[s] for s in uniq.tolist()])[inv]
        final = torch.stack([self._get_final_row(s) for s in uniq.tolist()])[inv]
        leaf = ends[None, :].expand_as(decided)
        risky = self._mark_risky(tail)
        tx = self.texts
        child_tail = torch.where(tx.nonempty[None, :], tx.tail_class[None, :], tail[:, None])
        # A decided prefix stays alive while a later token could still merge into (and rewrite) its text.
        keep = decided & ~leaf & ((child_tail != CLEAN) | self.keep_decided)
        bad = torch.where(leaf, final, decided) & ~keep & ~risky
        rows, cols = (~leaf & ~risky & (~decided | keep)).nonzero(as_tuple=True)
        nxt = torch.stack([self.next_rows[s] for s in uniq.tolist()])
        child_state = nxt[inv[rows], cols].long()
        rr, rc = risky.nonzero(as_tuple=True)
        if rr.numel():
            is_bad, st = self._decode_pairs(ids, rr, rc, leaf[rr, rc], child_tail[rr, rc])
            bad[rr[is_bad], rc[is_bad]] = True
            live = st >= 0
            rows, cols = torch.cat([rows, rr[live]]), torch.cat([cols, rc[live]])
            child_state = torch.cat([child_state, st[live]])
        return StepOutcome(bad, rows, cols, child_state, child_tail[rows, cols])

    def last_step(self, ids, state, tail) -> LastOutcome:
        """Bad pairs when the next token is the last one: every pair is a leaf, EOS or not.

        Rows are grouped by (state, tail), which fixes their bad token set; risky pairs are decoded exactly.
        """
        uniq, inv = torch.unique(state * 3 + tail.long(), return_inverse=True)
        groups = []
        for g, key in enumerate(uniq.tolist()):
            cols = self._get_last_bad_cols(*divmod(key, 3))
            if cols.numel():
                groups.append(((inv == g).nonzero().flatten(), cols))
        risky_rows, risky_cols = [], []
        for t, cols in enumerate(self._mark_risky(torch.tensor([CLEAN, RIGHT_OPEN, UNRELIABLE], dtype=torch.int8))):
            rows = (tail == t).nonzero().flatten()
            cols = cols.nonzero().flatten()
            risky_rows.append(rows.repeat_interleave(len(cols)))
            risky_cols.append(cols.repeat(len(rows)))
        rr, rc = torch.cat(risky_rows), torch.cat(risky_cols)
        if rr.numel():
            is_bad, _ = self._decode_pairs(ids, rr, rc, torch.ones_like(rr, dtype=torch.bool), None)
            rr, rc = rr[is_bad], rc[is_bad]
        return LastOutcome(groups, rr, rc)

    def _get_last_bad_cols(self, sid: int, tail: int) -> torch.Tensor:
        """Tokens that make a final-level prefix in (state, tail) bad, leaving out the risky ones."""
        if (sid, tail) not in self._last_cols:
            self._ensure_rows(sid)
            risky = self._mark_risky(torch.tensor([tail], dtype=torch.int8))[0]
            self._last_cols[sid, tail] = (self._get_final_row(sid) & ~risky).nonzero().flatten()
        return self._last_cols[sid, tail]

    def _decode_pairs(self, ids, rr, rc, leaf, child_tail) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode (prefix rr, token rc) pairs in full. Returns is_bad [k] bool (bad leaves and decided-bad pairs
        that need no further look) and the child state [k] long of the others (-1 for leaves)."""
        seqs = torch.cat([ids[rr], rc[:, None]], dim=1).tolist()
        n_tok = len(self.tokenizer)
        texts = self.tokenizer.batch_decode([[t for t in s if t < n_tok] for s in seqs], skip_special_tokens=True)
        is_bad = torch.zeros(len(seqs), dtype=torch.bool)
        state = torch.full((len(seqs),), -1, dtype=torch.long)
        for k, text in enumerate(texts):
            if leaf[k]:
                is_bad[k] = self.final_re.search(text) is not None
                continue
            sid = self.advance(self.start, text)
            if sid == BAD and child_tail[k] == CLEAN and not self.keep_decided:
                is_bad[k] = True
            else:
                state[k] = sid
        return is_bad, state


# ---- criteria ----------------------------------------------------------------------------------------------------
class TokenSetCriterion:
    """Bad iff some generated token is in a fixed set: no text state needed."""

    def __init__(self, bad_ids: torch.Tensor, vocab: int):
        self.mask = torch.zeros(vocab, dtype=torch.bool)
        self.mask[bad_ids] = True
        self.bad_ids = self.mask.nonzero().flatten()
        self.start, self.vocab_size = 0, vocab

    def step(self, ids, state, tail, ends: torch.Tensor) -> StepOutcome:
        b = ids.shape[0]
        rows, cols = (~(self.mask | ends)).expand(b, -1).nonzero(as_tuple=True)
        zeros = torch.zeros_like(rows)
        return StepOutcome(self.mask.expand(b, -1), rows, cols, zeros, zeros.to(torch.int8))

    def last_step(self, ids, state, tail) -> LastOutcome:
        empty = torch.zeros(0, dtype=torch.long)
        return LastOutcome([(torch.arange(ids.shape[0]), self.bad_ids)], empty, empty)


_MATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _get_word_matcher(tokenizer, vocab: int, words: tuple[str, ...], case_sensitive: bool) -> WordMatcher:
    """One matcher per (tokenizer, vocabulary, words, case): token analysis and state rows are reused across calls."""
    try:
        per_tok = _MATCHERS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no reuse
        per_tok = {}
    texts_key = ("texts", vocab, len(tokenizer))  # added tokens change the analysis
    key = (*texts_key, words, case_sensitive)
    if key not in per_tok:
        if texts_key not in per_tok:
            per_tok[texts_key] = analyse_token_texts(tokenizer, vocab)
        per_tok[key] = WordMatcher(list(words), per_tok[texts_key], tokenizer, case_sensitive)
    return per_tok[key]


def make_criterion(vocab, bad_token_ids, bad_words, tokenizer, case_sensitive) -> TokenSetCriterion | WordMatcher:
    """The criterion for `exact_bad_probability`'s bad-set arguments (validated: ValueError naming the argument)."""
    if (bad_token_ids is None) == (bad_words is None):
        raise ValueError("give exactly one of bad_token_ids or bad_words")
    if bad_token_ids is not None:
        bad = torch.as_tensor(bad_token_ids, dtype=torch.long).flatten()
        if bad.numel() == 0 or int(bad.min()) < 0 or int(bad.max()) >= vocab:
            raise ValueError(f"bad_token_ids must be a non-empty set of ids in [0, {vocab})")
        return TokenSetCriterion(bad, vocab)
    words = (bad_words,) if isinstance(bad_words, str) else tuple(bad_words)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError("bad_words must be a non-empty list of non-empty strings")
    if tokenizer is None:
        raise ValueError("bad_words requires tokenizer (to decode responses)")
    return _get_word_matcher(tokenizer, vocab, words, case_sensitive)
