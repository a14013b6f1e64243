"""In-process reference rewards: training's tokenization (encode_pair) and models.reward.sequence_rewards."""

from __future__ import annotations

import torch

from repulse.data.tokenize import encode_pair
from repulse.models.reward import sequence_rewards

NO_LIMIT = 10**9


def training_ids(tokenizer, prompt: str, response: str, max_len: int) -> list[int]:
    """What train_rm scores: encode_pair's ids (prompt + response + EOS), the first max_len of them."""
    ids, _ = encode_pair(tokenizer, prompt, response, max_len)
    return ids


def reference_rewards(model, tokenizer, texts, max_len: int = NO_LIMIT, normalize=True):
    """One sequence_rewards call per full text (no padding at all), so batching cannot leak into the reference."""
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([training_ids(tokenizer, "", text, max_len)])
            out.append(sequence_rewards(model, ids, torch.ones_like(ids), "score", normalize=normalize))
    return torch.cat(out)
