"""In-process reference rewards: training's tokenization (encode_pair) and models.reward.sequence_rewards."""

from __future__ import annotations

import torch

from repulse.data.tokenize import encode_pair
from repulse.models.reward import sequence_rewards

NO_LIMIT = 10**9


def training_ids(tokenizer, prompt: str, response: str, max_len: int) -> list[int]:
    """encode_pair's ids (prompt + response + EOS) with the server's rule: keep the LAST max_len tokens."""
    ids, _ = encode_pair(tokenizer, prompt, response, NO_LIMIT)
    return ids[-max_len:]


def reference_rewards(model, tokenizer, queries, prompts=None, max_len: int = NO_LIMIT, normalize=True):
    """One sequence_rewards call per text (no padding at all), so batching cannot leak into the reference."""
    prompts = prompts if prompts is not None else [""] * len(queries)
    out = []
    with torch.inference_mode():
        for prompt, query in zip(prompts, queries, strict=True):
            ids = torch.tensor([training_ids(tokenizer, prompt, query, max_len)])
            out.append(sequence_rewards(model, ids, torch.ones_like(ids), "score", normalize=normalize))
    return torch.cat(out)
