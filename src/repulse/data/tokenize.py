"""Tokenize prompt/response pairs into ids plus the prompt length (where the loss starts), and whole texts as a
reward model scores them."""

from __future__ import annotations

from collections.abc import Sequence


def with_eos(tokenizer, ids: list[int]) -> list[int]:
    """`ids` ending in the tokenizer's EOS (appended unless already last): a reward model reads its reward there."""
    eos = tokenizer.eos_token_id
    return [*ids, eos] if eos is not None and (not ids or ids[-1] != eos) else list(ids)


def encode_pair(tokenizer, prompt_text: str, response_text: str, max_len: int) -> tuple[list[int], int]:
    """(ids of prompt + response + EOS truncated to max_len, number of prompt tokens).

    The prompt is tokenized on its own so the loss boundary is exact even when the tokenizer would merge
    across it; special tokens (e.g. BOS) are added as the tokenizer normally does.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"] if prompt_text else []
    full_ids = with_eos(tokenizer, tokenizer(prompt_text + response_text, add_special_tokens=True)["input_ids"])
    return full_ids[:max_len], min(len(prompt_ids), max_len)


def encode_for_reward(tokenizer, texts: Sequence[str], max_len: int | None = None) -> list[list[int]]:
    """Token ids of each whole text (prompt + response) + EOS, its first `max_len` of them: exactly the ids
    train_rm trains on (`encode_pair`). A longer text is scored at its max_len-th token, where training read it;
    keeping the end instead would score a text the model never saw (without its start). Every reward scorer
    (RL, serving, batch scoring, `score_texts`) encodes with this function."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    return [with_eos(tokenizer, ids)[:max_len] if max_len else with_eos(tokenizer, ids) for ids in encoded]
