"""The key/value cache of the fixed prompt prefix, computed once and expanded for each candidate batch.

Every candidate suffix shares the tokens before it (system prompt, user tag, goal), so GCG and BEAST run the
model on that prefix once and feed only [suffix; after; target] per candidate. transformers 5 takes a
`DynamicCache`; a fresh one is built for every call because the forward pass appends to it in place.
"""

from __future__ import annotations

import torch


class PrefixCache:
    def __init__(self, model, prefix_embeds: torch.Tensor) -> None:
        """Run `model` once on `prefix_embeds` [1, P, d] and keep the per-layer keys and values."""
        with torch.no_grad():
            out = model(inputs_embeds=prefix_embeds, use_cache=True)
        self.config = model.config
        self.length = prefix_embeds.shape[1]
        self.layers = [(keys, values) for keys, values, *_ in out.past_key_values]

    def expand(self, batch_size: int):
        """A new DynamicCache holding the prefix for `batch_size` rows (broadcast views, copied on update)."""
        from transformers import DynamicCache

        data = [(k.expand(batch_size, *k.shape[1:]), v.expand(batch_size, *v.shape[1:])) for k, v in self.layers]
        return DynamicCache(ddp_cache_data=data, config=self.config)
