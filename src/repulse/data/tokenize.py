"""Tokenize prompt/response pairs into ids plus the prompt length (where the loss starts)."""

from __future__ import annotations


def encode_pair(tokenizer, prompt_text: str, response_text: str, max_len: int) -> tuple[list[int], int]:
    """(ids of prompt + response + EOS truncated to max_len, number of prompt tokens).

    The prompt is tokenized on its own so the loss boundary is exact even when the tokenizer would merge
    across it; special tokens (e.g. BOS) are added as the tokenizer normally does.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"] if prompt_text else []
    full_ids = tokenizer(prompt_text + response_text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not full_ids or full_ids[-1] != eos):
        full_ids = [*full_ids, eos]
    return full_ids[:max_len], min(len(prompt_ids), max_len)
