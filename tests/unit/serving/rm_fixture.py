"""A tiny random-init GPT-2 reward model saved as a Hugging Face folder (nothing trained; scores are arbitrary)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import make_tokenizer


def build_tiny_rm(path: Path, stats: tuple[float, float] | None = None, seed: int = 0) -> Path:
    """GPT2ForSequenceClassification (head `score`, one output) + the word tokenizer; `stats` = (mean, std) in the
    config with normalize_reward on."""
    from transformers import AutoModelForSequenceClassification, GPT2Config

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=64,
        num_labels=1,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = AutoModelForSequenceClassification.from_config(config)
    if stats is not None:
        model.config.normalize_reward = True
        model.config.mean, model.config.std = stats
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
