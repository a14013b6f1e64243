"""Prompt datasets for RL: load, blend, format (template or chat) and tokenize (left-truncated)."""

from __future__ import annotations

import logging

from repulse.data.loading import blend_datasets
from repulse.data.templates import format_prompt
from repulse.infra.errors import DataError

log = logging.getLogger("repulse")


def load_prompt_texts(
    names: str | None, probs: str, *, key: str, split: str, seed: int, max_samples: int, default_kind: str = "prompts"
) -> list:
    """Raw prompts (strings or message lists) from comma-separated sources; the embedded ones by default."""
    if not names:
        from repulse.assets import default_dataset

        names = default_dataset(default_kind)
        log.info("no prompt data given: using the embedded default %s", names)
    sources = names.split(",")
    try:
        weights = [float(p) for p in probs.split(",")] if len(sources) > 1 else [1.0]
    except ValueError as err:
        raise DataError(f"--prompt_data_probs {probs!r}: not numbers") from err
    rows = blend_datasets(sources, weights, [key], split=split, seed=seed, max_samples=max_samples)
    return [row[key] for row in rows]


def format_prompts(raw: list, tokenizer, *, input_template: str | None, chat: bool) -> list[str]:
    return [format_prompt(p, tokenizer, input_template=input_template, chat=chat) for p in raw]
