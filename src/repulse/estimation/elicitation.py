"""Elicitation probabilities per query: p(x) = P_{o ~ M(.|x)}[behaviour(o)] (Jones et al. 2025;
docs/algorithms/forecast.md).

Three estimators, all returning log p per query (float64):
- `target_log_probs` (`logprob_specific`): log M(target | query) for a behaviour that is one exact string, from a
  teacher-forced forward over [BOS] + query + target with a proper attention mask and position ids (the reference
  passed no mask, hit an exception and returned -inf for every query). Clamped at -700 like the reference.
- `keyword_log_probs` (`logprob_keyword`): log Σ_k M(keyword_k | query) over a prefix-free set of keyword token
  sequences: the exact probability that the response starts with one of the keywords (a lower bound on "the
  response contains a keyword").
- `sampled_log_probs` (`repeated_sampling`): draw k responses per query through `sample_fn` and count those for
  which `behaviour` holds; p = hits / k. Every query really gets k draws (the reference drew one and divided by k),
  and the draws per query are returned so callers can check.

The model is any causal LM module called as model(input_ids, attention_mask, position_ids) -> .logits. Each
estimator takes an optional `progress(n)` callback, called as rows are done (a progress bar's update).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LOG_P_FLOOR = -700.0
Progress = Callable[[int], object] | None


def prefix_free(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """Distinct non-empty sequences, dropping any that extends another (its probability is already counted)."""
    unique = sorted({tuple(s) for s in sequences if len(s) > 0}, key=len)
    kept: list[tuple[int, ...]] = []
    for seq in unique:
        if not any(seq[: len(k)] == k for k in kept):
            kept.append(seq)
    return [list(s) for s in kept]


@torch.no_grad()
def continuation_log_probs(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 32,
    progress: Progress = None,
) -> torch.Tensor:
    """log M(continuation_i | prefix_i) for each pair -> [N] float64 (right padding, masked, eval mode);
    `progress(rows)` after each model call."""
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations must pair up")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prefixes), batch_size):
        chunk = slice(start, start + batch_size)
        rows = [list(p) + list(c) for p, c in zip(prefixes[chunk], continuations[chunk])]
        starts = [len(p) for p in prefixes[chunk]]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].double(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        # Token t of the row is predicted at t - 1; keep the continuation tokens only.
        index = torch.arange(1, width, device=device)[None]
        keep = (index >= torch.tensor(starts, device=device)[:, None]) & mask[:, 1:].bool()
        out.append((logp * keep).sum(-1).cpu())
        if progress is not None:
            progress(len(rows))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def target_log_probs(
    model,
    query_ids: Sequence[Sequence[int]],
    target_ids: Sequence[int],
    batch_size: int = 32,
    progress: Progress = None,
) -> torch.Tensor:
    """log M(target | query) per query, clamped at -700 -> [m] float64."""
    if not target_ids:
        raise ValueError("the target sequence must have at least one token")
    if any(len(q) == 0 for q in query_ids):
        raise ValueError("every query needs at least one token (add a BOS token to empty queries)")
    logp = continuation_log_probs(model, query_ids, [list(target_ids)] * len(query_ids), batch_size, progress)
    return logp.clamp(min=LOG_P_FLOOR)


def keyword_log_probs(
    model,
    query_ids: Sequence[Sequence[int]],
    keyword_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    progress: Progress = None,
) -> torch.Tensor:
    """log P(the response starts with one of the keywords) per query -> [m] float64, clamped at -700; progress
    counts (query, keyword) continuations."""
    keywords = prefix_free(keyword_ids)
    if not keywords:
        raise ValueError("no keyword token sequences given")
    prefixes = [q for q in query_ids for _ in keywords]
    conts = [k for _ in query_ids for k in keywords]
    logp = continuation_log_probs(model, prefixes, conts, batch_size, progress).view(len(query_ids), len(keywords))
    return torch.logsumexp(logp, dim=-1).clamp(min=LOG_P_FLOOR)


def keyword_behaviour(keywords: Sequence[str]) -> Callable[[str], bool]:
    """True when the text holds one of the keywords as a whole word, ignoring case."""
    words = [k.strip() for k in keywords if k.strip()]
    if not words:
        raise ValueError("no keywords given")
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return lambda text: pattern.search(text) is not None


@dataclass(frozen=True)
class SampledElicitation:
    log_p: torch.Tensor  # [m] float64; -inf where no draw showed the behaviour
    hits: torch.Tensor  # [m] long
    draws: torch.Tensor  # [m] long: responses actually checked per query (k for every query)


def sampled_log_probs(
    queries: Sequence[str],
    k: int,
    sample_fn: Callable[[list[str], int], list[list[str]]],
    behaviour: Callable[[str], bool],
    batch_size: int = 8,
    progress: Progress = None,
) -> SampledElicitation:
    """p = (responses showing the behaviour) / k, with `sample_fn(queries, k)` returning k responses per query;
    progress counts responses."""
    if k < 1:
        raise ValueError(f"--k_samples must be >= 1, got {k}")
    hits, draws = [], []
    for start in range(0, len(queries), batch_size):
        chunk = list(queries[start : start + batch_size])
        responses = sample_fn(chunk, k)
        if len(responses) != len(chunk):
            raise ValueError(f"sample_fn returned {len(responses)} response lists for {len(chunk)} queries")
        for texts in responses:
            draws.append(len(texts))
            hits.append(sum(bool(behaviour(t)) for t in texts))
        if progress is not None:
            progress(sum(len(texts) for texts in responses))
    hits_t, draws_t = torch.tensor(hits, dtype=torch.long), torch.tensor(draws, dtype=torch.long)
    if bool((draws_t != k).any()):
        raise ValueError(f"sample_fn must return exactly k = {k} responses per query, got {sorted(set(draws))}")
    log_p = torch.tensor([math.log(h / k) if h > 0 else -math.inf for h in hits], dtype=torch.float64)
    return SampledElicitation(log_p, hits_t, draws_t)


def keyword_token_sequences(tokenizer, keywords: Sequence[str]) -> list[list[int]]:
    """Token sequences of each keyword as it may start a response: as given, after a space, and capitalised;
    spellings that hit the tokenizer's unknown token are skipped."""
    unk = tokenizer.unk_token_id
    spellings = {v for k in keywords if k.strip() for v in (k.strip(), " " + k.strip(), " " + k.strip().capitalize())}
    sequences = [list(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sorted(spellings)]
    return [s for s in sequences if s and (unk is None or unk not in s)]
