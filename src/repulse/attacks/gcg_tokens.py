"""GCG's pure pieces: mellowmax, candidate sampling from the token gradient, and token filtering.

Tensors in, tensors out (the tokenizer is only read), so each piece is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def mellowmax(t: torch.Tensor, alpha: float = 1.0, dim: int = -1) -> torch.Tensor:
    """(1/alpha) * log(mean(exp(alpha * t))): a smooth maximum between the mean (alpha -> 0) and the max."""
    n = t.shape[dim]
    return (torch.logsumexp(alpha * t, dim=dim) - math.log(n)) / alpha


def make_generator(seed: int | None) -> torch.Generator:
    """A private CPU generator: seeded, or randomly seeded without touching the global RNG."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def disallowed_token_ids(tokenizer, allow_non_ascii: bool = False) -> torch.Tensor:
    """Ids GCG must never place in the suffix: special tokens, and (unless allowed) non-ASCII/unprintable ones.

    Special tokens are always excluded: a suffix holding an EOS or a chat-turn marker would end the user turn,
    which is not an attack on the text channel.
    """
    bad: set[int] = set(tokenizer.all_special_ids)
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id):
        if tid is not None:
            bad.add(int(tid))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    bad.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    if not allow_non_ascii:
        for tid in range(len(tokenizer)):
            text = tokenizer.decode([tid])
            if not (text.isascii() and text.isprintable()):
                bad.add(tid)
    return torch.tensor(sorted(bad), dtype=torch.long)


def allowed_mask(
    vocab_size: int, disallowed: torch.Tensor | None, allowed: Iterable[int] | None = None
) -> torch.Tensor:
    """Bool [V]: the tokens candidates may use (an explicit `allowed` set, minus `disallowed`)."""
    if allowed is None:
        mask = torch.ones(vocab_size, dtype=torch.bool)
    else:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[torch.as_tensor(list(allowed), dtype=torch.long)] = True
    if disallowed is not None and disallowed.numel():
        mask[disallowed[disallowed < vocab_size]] = False
    if not mask.any():
        raise ValueError("no token is allowed in the adversarial suffix (check the allowed set and allow_non_ascii)")
    return mask


def sample_candidates(
    ids: torch.Tensor,
    grad: torch.Tensor,
    search_width: int,
    topk: int = 256,
    n_replace: int = 1,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`search_width` copies of `ids` [L], each with `n_replace` random positions set to a random top-k token.

    The top-k at each position are the tokens whose one-hot gradient `grad` [L, V] is most negative (the
    first-order estimate of the largest loss decrease); tokens outside `allowed` [V] are never chosen.
    Returns [search_width, L].
    """
    length = ids.shape[0]
    grad = grad.clone()
    if allowed is not None:
        grad[:, ~allowed.to(grad.device)] = math.inf
        topk = min(topk, int(allowed.sum()))
    topk = min(topk, grad.shape[1])
    top_ids = (-grad).topk(topk, dim=1).indices.cpu()  # [L, k]
    n_replace = min(n_replace, length)
    positions = torch.argsort(torch.rand(search_width, length, generator=generator), dim=1)[:, :n_replace]
    choice = torch.randint(0, topk, (search_width, n_replace), generator=generator)
    values = top_ids[positions, choice]  # [W, n_replace]
    return ids.cpu().unsqueeze(0).repeat(search_width, 1).scatter_(1, positions, values)


def keep_round_trip(tokenizer, candidates: torch.Tensor) -> torch.Tensor:
    """The candidates that decode to a string which encodes back to the same ids (nanoGCG's filter_ids).

    Without this the optimised ids could be unreachable from text, so the printed suffix would not be the
    suffix whose loss was measured.
    """
    texts = tokenizer.batch_decode(candidates)
    keep = []
    for row, text in zip(candidates, texts, strict=True):
        again = tokenizer(text, add_special_tokens=False)["input_ids"]
        keep.append(len(again) == row.shape[0] and torch.equal(torch.as_tensor(again), row))
    return candidates[torch.tensor(keep, dtype=torch.bool)]
