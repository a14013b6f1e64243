"""Exact probability of bad outputs by enumerating the sampling tree of a causal LM (docs/toy.md).

Sampling is at temperature 1 with the full softmax: up to `response_len` tokens, stopping early at `eos_token_id`
(the EOS token is scored, nothing after it is). The tree is expanded level by level: at depth d every undecided
prefix of length d is run through the model (in batches, reusing the prompt's KV cache) to get its next-token
distribution; the bad part of that mass is added up in float64 log space and only undecided children go on. The
last level needs only next-token distributions of length-(T-1) prefixes, never a forward over full sequences.

The reference implementation scored a second token after EOS; here an EOS ends the response (a leaf).
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from repulse.estimation.word_match import CLEAN, LastOutcome, StepOutcome, make_criterion


@dataclass(frozen=True)
class ExactResult:
    """Outcome of an exact enumeration: P(bad) (or P(r < threshold)), E[r], and what it cost."""

    log_p_bad: float  # natural log of P(bad); -inf if 0 (nan if no bad set was defined)
    p_bad: float
    expected_reward: float | None  # E[r] when a reward function was given, else None
    n_forward_rows: int  # prefix rows run through the model (the prompt counts as one)
    wall_time_s: float
    n_forward_tokens: int = 0  # tokens fed to the model: shows what the prompt cache saves


# ---- validation ------------------------------------------------------------------------------------------------
def model_vocab_size(model) -> int:
    """Rows of the model's output head (which may exceed the tokenizer's vocabulary), else config.vocab_size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        # A ZeRO-3 partitioned parameter holds an empty tensor and keeps its full shape in ds_shape.
        return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
    return int(model.config.vocab_size)


def _validate_common_args(
    model, prompt_ids, response_len: int, eos_token_id, batch_size: int
) -> tuple[torch.Tensor, int]:
    """Validate the arguments shared by every entry point; return (prompt [P] long, vocabulary size V)."""
    if not isinstance(response_len, int) or response_len < 1:
        raise ValueError(f"response_len must be an int >= 1, got {response_len!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompt = torch.as_tensor(prompt_ids).long()
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D tensor of token ids, got shape {tuple(prompt.shape)}")
    vocab = model_vocab_size(model)
    if int(prompt.min()) < 0 or int(prompt.max()) >= vocab:
        raise ValueError(f"prompt_ids holds token ids outside [0, {vocab})")
    if eos_token_id is not None and not 0 <= int(eos_token_id) < vocab:
        raise ValueError(f"eos_token_id must be in [0, {vocab}), got {eos_token_id}")
    return prompt, vocab


# ---- next-token distributions of prefixes ----------------------------------------------------------------------
@contextmanager
def _run_in_eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; the caller's training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _expand_cache(cache, n: int):
    """A cache of batch n built from the batch-1 prompt cache, which is never mutated.

    Plain dynamic layers get expanded views (no copy: `update` concatenates into new tensors); other layer
    kinds are deep-copied and repeated.
    """
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(x).__name__ not in ("DynamicLayer", "DynamicSlidingWindowLayer") for x in layers):
        new = copy.deepcopy(cache)
        new.batch_repeat_interleave(n)
        return new
    new = copy.copy(cache)
    new.layers = []
    for layer in layers:
        view = copy.copy(layer)
        view.keys = layer.keys.expand(n, *layer.keys.shape[1:])
        view.values = layer.values.expand(n, *layer.values.shape[1:])
        new.layers.append(view)
    return new


class _PrefixScorer:
    """Next-token logits (last position, model dtype) for a batch of equal-length response prefixes.

    With `reuse_cache` the prompt runs once and each batch feeds only its prefix tokens on top of a copy of the
    prompt's KV cache; without it every row recomputes prompt + prefix from scratch (the naive baseline).
    """

    def __init__(self, model, prompt: torch.Tensor, reuse_cache: bool):
        self.model, self.reuse_cache = model, reuse_cache
        self.device = next(model.parameters()).device
        self.prompt = prompt.to(self.device)
        params = inspect.signature(model.forward).parameters
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        out = model(
            input_ids=self.prompt[None], attention_mask=torch.ones_like(self.prompt)[None], use_cache=reuse_cache
        )
        self.root = out.logits[0, -1]
        self.cache = out.past_key_values if reuse_cache else None
        self.rows, self.tokens = 1, prompt.numel()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n, d] long -> [n, V] next-token logits."""
        n, d = ids.shape
        if d == 0:
            return self.root.expand(n, -1)
        ids = ids.to(self.device)
        mask = torch.ones(n, self.prompt.numel() + d, dtype=torch.long, device=self.device)
        if self.reuse_cache:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=_expand_cache(self.cache, n),
                use_cache=True,
                **self.extra,
            )
            self.tokens += n * d
        else:
            full = torch.cat([self.prompt.expand(n, -1), ids], dim=1)
            out = self.model(input_ids=full, attention_mask=mask, use_cache=False, **self.extra)
            self.tokens += n * full.shape[1]
        self.rows += n
        return out.logits[:, -1]


# ---- the level-by-level walk -----------------------------------------------------------------------------------
@dataclass
class _Frontier:
    """Live prefixes at one depth: ids [n, d] long, logp [n] float64, state [n] long, tail [n] int8 (CPU)."""

    ids: torch.Tensor
    logp: torch.Tensor
    state: torch.Tensor
    tail: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def slice(self, start: int, stop: int) -> _Frontier:
        return _Frontier(self.ids[start:stop], self.logp[start:stop], self.state[start:stop], self.tail[start:stop])

    @staticmethod
    def root(state: int = 0) -> _Frontier:
        zero = torch.zeros(1, dtype=torch.float64)
        return _Frontier(
            torch.zeros(1, 0, dtype=torch.long), zero, torch.tensor([state]), torch.tensor([CLEAN], dtype=torch.int8)
        )

    @staticmethod
    def cat(parts: list[_Frontier]) -> _Frontier:
        return _Frontier(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "logp", "state", "tail")))


Visit = Callable[[_Frontier, torch.Tensor, bool], "_Frontier | None"]


def _walk(
    scorer: _PrefixScorer,
    root: _Frontier,
    response_len: int,
    batch_size: int,
    visit: Visit,
    limit: int,
    progress: bool = False,
) -> None:
    """Expand the tree level by level; `visit(batch, logits [b, V], last)` returns the batch's live children."""
    frontier = root
    for depth in range(response_len):
        last = depth == response_len - 1
        parts, size = [], 0
        for start in range(0, len(frontier), batch_size):
            batch = frontier.slice(start, start + batch_size)
            child = visit(batch, scorer(batch.ids), last)
            if child is not None and len(child):
                parts.append(child)
                size += len(child)
                if size > limit:
                    raise ValueError(f"more than {limit} live prefixes at depth {depth + 1}: lower response_len")
        if progress:
            sys.stderr.write(f"exact enumeration: depth {depth + 1}/{response_len}, {len(frontier)} prefixes run\n")
        if last or not parts:
            return
        frontier = _Frontier.cat(parts)


def _score_pairs(batch: _Frontier, logits: torch.Tensor) -> torch.Tensor:
    """[b, V] float64 log-prob of each (prefix, next token) pair."""
    return batch.logp.to(logits.device)[:, None] + torch.log_softmax(logits.double(), dim=-1)


def _make_children(batch: _Frontier, node_lp: torch.Tensor, out: StepOutcome) -> _Frontier:
    rows, cols = out.rows, out.cols
    ids = torch.cat([batch.ids[rows], cols[:, None]], dim=1)
    return _Frontier(ids, node_lp[rows.to(node_lp.device), cols.to(node_lp.device)].cpu(), out.state, out.tail)


def _sum_last_level_bad_mass(batch: _Frontier, logits: torch.Tensor, out: LastOutcome) -> torch.Tensor:
    """log of the bad mass among the final (prefix, token) pairs, touching only the bad logits of each row
    (a dense [b, V] float64 pass per mask would dominate the cost at V = 50k)."""
    dev = logits.device
    # Row chunks keep the float64 copy small and cache-resident: 5x faster than one [b, V] float64 pass.
    log_z = torch.cat([torch.logsumexp(chunk.double(), dim=-1) for chunk in logits.split(16)])
    base = batch.logp.to(dev) - log_z  # [b] log P(prefix) - log Z(prefix)
    parts = [torch.full((1,), -math.inf, dtype=torch.float64, device=dev)]
    for rows, cols in out.groups:
        rows, cols = rows.to(dev), cols.to(dev)
        parts.append(torch.logsumexp(logits[rows[:, None], cols[None, :]].double(), dim=-1) + base[rows])
    if out.rows.numel():
        rows, cols = out.rows.to(dev), out.cols.to(dev)
        parts.append(logits[rows, cols].double() + base[rows])
    return torch.logsumexp(torch.cat(parts), dim=0).cpu()


def _compute_log_p_bad(model, prompt, response_len, criterion, eos_token_id, batch_size, progress, reuse_cache, limit):
    """Run the walk with a criterion; return (log P(bad), scorer) — scorer for its cost counters."""
    with _run_in_eval_mode(model):
        scorer = _PrefixScorer(model, prompt, reuse_cache)
        vocab = scorer.root.shape[-1]
        if vocab != criterion.vocab_size:
            raise ValueError(f"model returns {vocab} logits but its output embedding has {criterion.vocab_size} rows")
        ends = torch.zeros(vocab, dtype=torch.bool)
        if eos_token_id is not None:
            ends[int(eos_token_id)] = True
        terms: list[torch.Tensor] = []

        def visit(batch: _Frontier, logits: torch.Tensor, last: bool) -> _Frontier | None:
            if last:
                terms.append(
                    _sum_last_level_bad_mass(batch, logits, criterion.last_step(batch.ids, batch.state, batch.tail))
                )
                return None
            node_lp = _score_pairs(batch, logits)
            out = criterion.step(batch.ids, batch.state, batch.tail, ends)
            masked = node_lp.masked_fill(~out.bad.to(node_lp.device), -math.inf)
            terms.append(torch.logsumexp(masked.flatten(), dim=0).cpu())
            return _make_children(batch, node_lp, out)

        _walk(scorer, _Frontier.root(criterion.start), response_len, batch_size, visit, limit, progress)
    return float(torch.logsumexp(torch.stack(terms), dim=0)), scorer


def exact_bad_probability(
    model,
    prompt_ids,
    response_len,
    *,
    bad_token_ids=None,
    bad_words=None,
    tokenizer=None,
    case_sensitive=False,
    eos_token_id=None,
    batch_size=512,
    progress=False,
    max_prefixes=20_000_000,
    reuse_prompt_cache=True,
) -> ExactResult:
    """Exact P(a sampled response of up to `response_len` tokens is bad).

    model: a causal LM called as `model(input_ids, attention_mask, past_key_values, use_cache)` -> `.logits`;
    prompt_ids [P] long. Bad is either "some generated token is in `bad_token_ids`" or "the decoded response
    contains one of `bad_words` as a whole word" (`\\b` boundaries, case-insensitive unless `case_sensitive`;
    needs `tokenizer`). Prefixes are run in batches of `batch_size` rows on top of the prompt's KV cache (or from
    scratch with `reuse_prompt_cache=False`); more than `max_prefixes` live prefixes at one depth is an error.
    """
    t0 = time.perf_counter()
    prompt, vocab = _validate_common_args(model, prompt_ids, response_len, eos_token_id, batch_size)
    criterion = make_criterion(vocab, bad_token_ids, bad_words, tokenizer, case_sensitive)
    log_p, scorer = _compute_log_p_bad(
        model, prompt, response_len, criterion, eos_token_id, batch_size, progress, reuse_prompt_cache, max_prefixes
    )
    return ExactResult(log_p, math.exp(log_p), None, scorer.rows, time.perf_counter() - t0, scorer.tokens)


def exact_bad_probability_recompute(model, prompt_ids, response_len, **kwargs) -> ExactResult:
    """`exact_bad_probability` (same arguments) without the KV cache: every row recomputes prompt + prefix.

    The naive baseline for benchmarks: same rows, same result, P more tokens per row.
    """
    return exact_bad_probability(model, prompt_ids, response_len, **kwargs, reuse_prompt_cache=False)


# ---- full enumeration of leaves --------------------------------------------------------------------------------
def count_leaves(vocab: int, response_len: int, with_eos: bool) -> int:
    """Number of distinct responses: EOS ends a response, every other token continues until `response_len`."""
    if not with_eos:
        return vocab**response_len
    go_on = vocab - 1
    return sum(go_on**d for d in range(response_len - 1)) + go_on ** (response_len - 1) * vocab


def enumerate_response_logprobs(
    model, prompt_ids, response_len, *, eos_token_id=None, batch_size=512, max_sequences=2_000_000
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every leaf of the sampling tree with its exact log-probability.

    Returns responses [N, T] long (positions after an EOS hold the EOS id), response_mask [N, T] bool (True on
    generated tokens, the EOS included) and logps [N] float64, with logps.exp().sum() == 1 up to rounding.
    """
    responses, mask, logps, _ = _enumerate(model, prompt_ids, response_len, eos_token_id, batch_size, max_sequences)
    return responses, mask, logps


def _enumerate(model, prompt_ids, response_len, eos_token_id, batch_size, max_sequences):
    """(responses [N, T], response_mask [N, T], logps [N], scorer) for every leaf; see enumerate_response_logprobs."""
    prompt, vocab = _validate_common_args(model, prompt_ids, response_len, eos_token_id, batch_size)
    n_leaves = count_leaves(vocab, response_len, eos_token_id is not None)
    if n_leaves > max_sequences:
        raise ValueError(f"max_sequences={max_sequences} is below the {n_leaves} responses to enumerate")
    pad = 0 if eos_token_id is None else int(eos_token_id)
    leaves: list[tuple[torch.Tensor, torch.Tensor]] = []

    def visit(batch: _Frontier, logits: torch.Tensor, last: bool) -> _Frontier | None:
        node_lp = _score_pairs(batch, logits).cpu()
        b = batch.ids.shape[0]
        if last:
            ids = torch.cat([batch.ids.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(b)[:, None]], 1)
            leaves.append((ids, node_lp.flatten()))
            return None
        go_on = torch.ones(vocab, dtype=torch.bool)
        if eos_token_id is not None:  # EOS ends the response here: a leaf, nothing after it is scored
            leaves.append((torch.cat([batch.ids, torch.full((b, 1), pad)], 1), node_lp[:, pad]))
            go_on[pad] = False
        rows, cols = go_on.expand(b, -1).nonzero(as_tuple=True)
        ids = torch.cat([batch.ids[rows], cols[:, None]], 1)
        return _Frontier(ids, node_lp[rows, cols], torch.zeros_like(rows), torch.zeros_like(rows).to(torch.int8))

    with _run_in_eval_mode(model):
        scorer = _PrefixScorer(model, prompt, reuse_cache=True)
        _walk(scorer, _Frontier.root(), response_len, batch_size, visit, max_sequences)
    responses = torch.full((n_leaves, response_len), pad, dtype=torch.long)
    mask = torch.zeros(n_leaves, response_len, dtype=torch.bool)
    logps, row = torch.empty(n_leaves, dtype=torch.float64), 0
    for ids, lp in leaves:
        n, d = ids.shape
        responses[row : row + n, :d], mask[row : row + n, :d], logps[row : row + n] = ids, True, lp
        row += n
    return responses, mask, logps, scorer


def exact_reward_statistics(
    model,
    prompt_ids,
    response_len,
    reward_fn,
    *,
    threshold=None,
    eos_token_id=None,
    batch_size=512,
    max_sequences=2_000_000,
) -> ExactResult:
    """E[r] and P(r < threshold) over all responses, by enumeration.

    reward_fn(responses [n, T] long, response_mask [n, T] bool) -> [n] rewards, called in batches of `batch_size`.
    Without a threshold the P(bad) fields are nan.
    """
    t0 = time.perf_counter()
    responses, mask, logps, scorer = _enumerate(
        model, prompt_ids, response_len, eos_token_id, batch_size, max_sequences
    )
    rewards = []
    for i in range(0, len(responses), batch_size):
        scores = reward_fn(responses[i : i + batch_size], mask[i : i + batch_size])
        rewards.append(torch.as_tensor(scores).double().cpu().flatten())
    rewards = torch.cat(rewards)
    if rewards.shape != logps.shape:
        raise ValueError(f"reward_fn must return one reward per response: got {tuple(rewards.shape)}")
    expected = float((logps.exp() * rewards).sum())
    log_p = math.nan
    if threshold is not None:
        log_p = float(torch.logsumexp(logps.masked_fill(~(rewards < threshold), -math.inf), dim=0))
    p = math.nan if threshold is None else math.exp(log_p)
    return ExactResult(log_p, p, expected, scorer.rows, time.perf_counter() - t0, scorer.tokens)
