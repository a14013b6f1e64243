"""The buckets of a weight sync (no Ray, no vLLM): every tensor of the state dict under its Hugging Face name, tied
lm_head included (vLLM's reload processes it on its own), in the state dict's order, cut by size, decoded equal."""

from __future__ import annotations

import torch
from safetensors.torch import load

from repulse.distributed.ray.weight_sync import buckets, named_weights
from tests.conftest import make_gpt2


def test_buckets_carry_every_weight_under_its_name():
    model = make_gpt2(30)
    state = model.state_dict()
    assert "lm_head.weight" in state  # tied to the embedding
    for size in (1, 4096, 1 << 30):
        blobs = list(buckets(named_weights(model), bucket_bytes=size))
        decoded = [load(blob) for blob in blobs]
        # Buckets follow the state dict's order (safetensors orders the names inside a bucket its own way).
        start = 0
        for part in decoded:
            assert set(part) == set(list(state)[start : start + len(part)])
            start += len(part)
        assert start == len(state)
        merged = {k: v for part in decoded for k, v in part.items()}
        assert all(torch.equal(merged[k], state[k]) for k in state)
        if size == 1:
            assert len(blobs) == len(state)
        if size == 1 << 30:
            assert len(blobs) == 1


def test_weights_are_sent_in_the_engine_dtype():
    weights = dict(named_weights(make_gpt2(30), dtype=torch.bfloat16))
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
