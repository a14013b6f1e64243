"""Weight sync from a trainer's model into rollout engines through the Ray object store: the full weights under
their Hugging Face names, in safetensors-encoded buckets put once and read by every engine, then the version."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from repulse.distributed.ray.calls import wait

BUCKET_BYTES = 256 << 20


def named_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the state dict (tied ones too: vLLM reloads a tied lm_head on its own), on the CPU."""
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", dtype=dtype if tensor.is_floating_point() and dtype else tensor.dtype)
        yield name, tensor.contiguous().clone()


def buckets(weights: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES) -> Iterator[bytes]:
    """The weights in order, cut into safetensors blobs of about `bucket_bytes` each."""
    from safetensors.torch import save

    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in weights:
        bucket[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield save(bucket)
            bucket, size = {}, 0
    if bucket:
        yield save(bucket)


def send_weights(model: torch.nn.Module, engines: list, version: int, timeout: float) -> None:
    """The model's weights into every engine (buckets put in the object store once), each then at `version`."""
    import ray

    refs = [ray.put(blob) for blob in buckets(named_weights(model))]  # top-level arguments: Ray resolves them
    held = wait([engine.load_weights.remote(version, *refs) for engine in engines], "rollout engine (sync)", timeout)
    if any(v != version for v in held):
        raise RuntimeError(f"weight sync: engines report versions {held}, expected {version}")
