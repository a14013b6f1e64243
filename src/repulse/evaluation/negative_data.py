"""Likelihood of known bad outputs (docs/toy.md): summed response log-probs per (prompt, response), the mean,
the per-prompt mean, and per prompt the log of the total probability of its known-bad set (logsumexp)."""

from __future__ import annotations

from collections import defaultdict

import torch

from repulse.data.collate import pad_sequences
from repulse.data.tokenize import encode_pair
from repulse.models.logprobs import sequence_logps


@torch.no_grad()
def negative_data_likelihood(model, tokenizer, rows: list[dict], *, max_len: int = 512, batch_size: int = 32) -> dict:
    """rows: {'prompt', 'response'} texts. Scores in eval mode; EOS is not appended (bad outputs may continue)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        encoded = [encode_pair(tokenizer, r["prompt"], r["response"], max_len) for r in chunk]
        ids = [torch.tensor(e[0][:-1] if e[0][-1] == tokenizer.eos_token_id else e[0]) for e in encoded]
        mask = pad_sequences([torch.ones(len(i), dtype=torch.long) for i in ids], 0).to(device)
        lens = torch.tensor([e[1] for e in encoded], device=device)
        logps, _, _ = sequence_logps(model, pad_sequences(ids, tokenizer.pad_token_id).to(device), mask, lens)
        scores += logps.double().cpu().tolist()
    model.train(was_training)
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for row, score in zip(rows, scores, strict=True):
        by_prompt[row["prompt"]].append(score)
    per_prompt_lse = {p: torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0).item() for p, v in by_prompt.items()}
    return {
        "n_sequences": len(rows),
        "mean_logprob": sum(scores) / len(scores),
        "mean_over_prompts_of_mean_logprob": sum(sum(v) / len(v) for v in by_prompt.values()) / len(by_prompt),
        "mean_over_prompts_of_logsumexp": sum(per_prompt_lse.values()) / len(per_prompt_lse),
        "per_prompt_logsumexp": per_prompt_lse,
    }
