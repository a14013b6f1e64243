"""The key/value cache of a fixed prompt prefix, computed once and expanded for each candidate batch.

Every candidate suffix shares the tokens before it (system prompt, user tag, goal), so GCG and BEAST run the
model on that prefix once and feed only [suffix; after; target] per candidate. GCG goes further: a candidate
that first differs from the step's current suffix at position d shares the cache of prefix + suffix[:d]
(`extended`, then `truncated`), and a BEAST candidate shares prefix + its beam row (`extended` by the
whole beam, then `rows`). transformers 5 takes a `DynamicCache`; a fresh one is built for every call
because the forward pass appends to it in place.
"""

from __future__ import annotations

import torch


class PrefixCache:
    def __init__(self, model, prefix_embeds: torch.Tensor, past: PrefixCache | None = None) -> None:
        """Run `model` once on `prefix_embeds` [B, P, d] (after `past`, if given) and keep the keys and values."""
        with torch.no_grad():
            cache = past.expand(prefix_embeds.shape[0]) if past is not None else None
            out = model(inputs_embeds=prefix_embeds, past_key_values=cache, use_cache=True)
        self.config = model.config
        self.layers = [(keys, values) for keys, values, *_ in out.past_key_values]
        self.length = self.layers[0][0].shape[-2]

    @classmethod
    def of(cls, config, past) -> PrefixCache:
        """Wrap the (detached) keys and values of a cache a forward pass has filled."""
        out = object.__new__(cls)
        out.config = config
        out.layers = [(keys.detach(), values.detach()) for keys, values, *_ in past]
        out.length = out.layers[0][0].shape[-2]
        return out

    def extended(self, model, embeds: torch.Tensor) -> PrefixCache:
        """The cache of this (one-row) prefix followed by each row of `embeds` [B, n, d]: B rows."""
        return PrefixCache(model, embeds, past=self)

    def truncated(self, length: int) -> PrefixCache:
        """The cache of the first `length` positions (views, no copy)."""
        if not 0 < length <= self.length:
            raise ValueError(f"cannot truncate a {self.length}-position cache to {length}")
        return PrefixCache.of(self.config, [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers])

    def rows(self, index: torch.Tensor) -> PrefixCache:
        """The cache rows `index` [B] of a multi-row cache, in that order (a copy: B rows)."""
        return PrefixCache.of(self.config, [(k[index], v[index]) for k, v in self.layers])

    def expand(self, batch_size: int):
        """A new DynamicCache holding the prefix for `batch_size` rows (broadcast views, copied on update)."""
        from transformers import DynamicCache

        data = [(k.expand(batch_size, *k.shape[1:]), v.expand(batch_size, *v.shape[1:])) for k, v in self.layers]
        return DynamicCache(ddp_cache_data=data, config=self.config)
