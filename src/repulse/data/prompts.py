"""Prompt datasets: load and blend them (RL), draw a set of queries from several pools (forecasts), format them."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

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


def query_texts(values: Sequence, key: str, source: str) -> list[str]:
    """The queries as given: text only (a null or a number would be scored as 'None' / '123')."""
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str) or not value.strip():
            what = "empty" if isinstance(value, str) else f"{value!r} ({type(value).__name__}), not text"
            raise DataError(f"dataset {source}: row {row}: {key!r} is {what}")
    return list(values)


def load_query_pools(sources: Sequence[str], key: str) -> list[list[str]]:
    """The queries of each source (a file, folder or hub name) under `key`, each one non-empty text."""
    from repulse.data.loading import load_source, require_columns

    pools = []
    for source in sources:
        rows = load_source(source)
        require_columns(rows, [key], source)
        pools.append(query_texts(list(rows[key]), key, source))
    return pools


def draw_queries(pools: Sequence[Sequence[str]], weights: Sequence[float], size: int, seed: int) -> list[str]:
    """`size` queries drawn without replacement. One pool: a uniform sample (all of it when it is smaller). Several:
    each draw picks pool i with probability proportional to weights[i] among the pools with queries left."""
    rng = random.Random(seed)
    if len(pools) == 1:
        return list(pools[0]) if len(pools[0]) <= size else rng.sample(list(pools[0]), size)
    left = [rng.sample(list(pool), len(pool)) for pool in pools]
    drawn: list[str] = []
    while len(drawn) < size and any(left):
        live = [w if pool else 0.0 for w, pool in zip(weights, left, strict=True)]
        drawn.append(left[rng.choices(range(len(left)), weights=live)[0]].pop())
    return drawn


def format_prompts(raw: list, tokenizer, *, input_template: str | None, chat: bool) -> list[str]:
    return [format_prompt(p, tokenizer, input_template=input_template, chat=chat) for p in raw]
