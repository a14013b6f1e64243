"""An enumerable toy on which sample averages are exact expectations, for any proposal.

A bigram LM over V = 5 tokens (next-token logits = table[previous token]) continues a one-token prompt with T = 2
tokens: 25 responses. Every next-token distribution is a rational k / 10 (the table holds log k), so a batch that
holds response s exactly 100 p(s) times IS p's distribution: a self-normalised average over it is the exact
expectation. With such a batch drawn "from" a proposal q that is not p, the importance weights p phi / q must
undo q's multiplicities, so a wrong or missing -log q changes the result; with a uniform proposal (the older
gradient-identity test) it could not.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import torch

V, T, M = 5, 2, 10  # vocabulary, response length, denominator of every next-token probability
N = M**T  # rows per prompt group: one batch of multiplicities
PROMPTS = (4, 3)  # one-token prompts; their rows are contiguous groups of N
SEQS = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [25, T], leaf order
BAD_TOKEN = 2
# Counts k (each row sums to M): p_theta at the start, and a proposal q tilted toward the bad token.
P_COUNTS = [[3, 2, 1, 2, 2], [2, 3, 1, 1, 3], [1, 1, 4, 2, 2], [4, 1, 1, 2, 2], [2, 3, 1, 3, 1]]
Q_COUNTS = [[1, 1, 5, 1, 2], [2, 1, 4, 2, 1], [3, 1, 3, 2, 1], [1, 2, 4, 1, 2], [1, 1, 5, 2, 1]]
QUALITY = torch.tensor([0.3, -0.4, 0.1, 0.8, -0.2], dtype=torch.float64)


def log_table(counts: list[list[int]]) -> torch.Tensor:
    return torch.tensor(counts, dtype=torch.float64).log()


def rewards() -> torch.Tensor:
    """[25] a graded reward with a large penalty for the bad token (the low region sigma is after)."""
    return QUALITY[SEQS].sum(-1) - 6.0 * (SEQS == BAD_TOKEN).any(-1)


def bad() -> torch.Tensor:
    return (SEQS == BAD_TOKEN).any(-1)


def leaf_token_logps(table: torch.Tensor, prompt: int) -> torch.Tensor:
    """[25, T] log p(s_t | s_<t) of every leaf after `prompt` (differentiable in the table)."""
    first = torch.log_softmax(table[prompt], -1)[SEQS[:, 0]]
    second = torch.log_softmax(table, -1)[SEQS[:, 0], SEQS[:, 1]]
    return torch.stack([first, second], 1)


def leaf_log_probs(table: torch.Tensor, prompt: int) -> torch.Tensor:
    return leaf_token_logps(table, prompt).sum(-1)


def multiset(counts: list[list[int]], prompt: int) -> torch.Tensor:
    """[N] leaf indices: leaf s repeated N x (its probability under the counts) times."""
    k = torch.tensor(counts)
    times = k[prompt][SEQS[:, 0]] * k[SEQS[:, 0], SEQS[:, 1]]
    assert int(times.sum()) == N and bool((times > 0).all())
    return torch.arange(len(SEQS)).repeat_interleave(times)


def batch_leaves(counts: list[list[int]]) -> torch.Tensor:
    """[P N] leaf indices of both prompt groups, each drawn "from" the model of `counts`."""
    return torch.cat([multiset(counts, prompt) for prompt in PROMPTS])


def token_logps(table: torch.Tensor, leaves: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T + pad] log-probs of each row's tokens, [B, T + pad] mask) for the groups of PROMPTS: `pad` extra
    columns hold garbage that depends on the table (NaN), which every masked reduction must ignore."""
    per_prompt = torch.stack([leaf_token_logps(table, prompt) for prompt in PROMPTS])  # [P, 25, T]
    groups = torch.arange(len(PROMPTS)).repeat_interleave(N)[: len(leaves)]
    rows = per_prompt[groups, leaves]
    garbage = 1e3 * table.sum() + torch.full((rows.shape[0], pad), math.nan, dtype=table.dtype)
    valid = torch.ones(rows.shape[0], T, dtype=torch.bool)
    mask = torch.cat([valid, torch.zeros(rows.shape[0], pad, dtype=torch.bool)], 1)
    return torch.cat([rows, garbage], 1), mask


def per_leaf(values: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
    """[P, 25]: the sum of each group's row values by leaf."""
    out = torch.zeros(len(PROMPTS), len(SEQS), dtype=values.dtype)
    for g in range(len(PROMPTS)):
        rows = slice(g * N, (g + 1) * N)
        out[g].index_add_(0, leaves[rows], values[rows])
    return out


class Bigram(torch.nn.Module):
    """A causal LM with the Hugging Face call signature: logits = table[input_ids]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.table[input_ids])
