"""Weight sync from a trainer's model into rollout engines: one sender, two transports. Both send the full weights
under their Hugging Face names, in the state dict's order, cut into the same buckets; then each engine records the
version. The object store (`--vllm_sync_backend ray`) puts safetensors-encoded buckets once for every engine to
read; the broadcast (gloo on CPU, nccl on GPU) sends each bucket's metadata by a call and its tensors over a
process group of the policy worker (rank 0) and every engine worker, made apart from vLLM's own groups."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import torch

from repulse.distributed.ray.calls import wait

BUCKET_BYTES = 256 << 20

Bucket = list[tuple[str, torch.Tensor]]
Meta = list[tuple[str, str, tuple[int, ...]]]  # (name, dtype, shape) of each tensor of a bucket


def named_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the state dict (tied ones too: vLLM reloads a tied lm_head on its own), on the CPU."""
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", dtype=dtype if tensor.is_floating_point() and dtype else tensor.dtype)
        yield name, tensor.contiguous().clone()


def bucketed(weights: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES) -> Iterator[Bucket]:
    """The weights in order, cut into buckets of about `bucket_bytes` (a bucket closes once it reaches it)."""
    bucket: Bucket = []
    size = 0
    for name, tensor in weights:
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def buckets(weights: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES) -> Iterator[bytes]:
    """The buckets as safetensors blobs (the object-store transport)."""
    from safetensors.torch import save

    for bucket in bucketed(weights, bucket_bytes):
        yield save(dict(bucket))


def meta_of(bucket: Bucket) -> Meta:
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in bucket]


def side_group(backend: str, host: str, port: int, rank: int, world: int, timeout: float, store=None):
    """A process group of its own (a TCPStore and the backend's ProcessGroup, never torch.distributed's default
    group), so that it leaves vLLM's groups alone; rank 0 passes the store it started."""
    from torch.distributed import TCPStore

    span = datetime.timedelta(seconds=timeout)
    if store is None:
        store = TCPStore(host, port, world, False, timeout=span)
    if backend == "gloo":
        return torch.distributed.ProcessGroupGloo(store, rank, world, span)
    if backend == "nccl":
        return torch.distributed.ProcessGroupNCCL(store, rank, world)
    raise ValueError(f"weight sync backend {backend!r}: gloo or nccl")


def receive(group, metas: list[Meta], device: str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """The receiving side of a broadcast: each bucket's tensors, in the order the sender sends them."""
    for meta in metas:
        bucket = {}
        for name, dtype, shape in meta:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            group.broadcast(tensor, 0).wait()
            bucket[name] = tensor
        yield bucket


def send(group, parts: list[Bucket], device: str = "cpu") -> None:
    """The sending side of a broadcast (rank 0): every tensor of every bucket, in order."""
    for bucket in parts:
        for _, tensor in bucket:
            group.broadcast(tensor.to(device), 0).wait()


class WeightSender:
    """Sends a model's weights into engines (RolloutEngine actors) with one transport: 'ray' (the object store),
    'gloo' or 'nccl' (a broadcast; the group forms on the first send)."""

    def __init__(self, engines: list, backend: str, timeout: float, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.engines, self.backend, self.timeout, self.bucket_bytes = engines, backend, timeout, bucket_bytes
        self.group: Any = None

    def send(self, model: torch.nn.Module, version: int) -> None:
        weights = named_weights(model)
        if self.backend == "ray":
            refs = self.put(weights, version)
        else:
            refs = self.broadcast(weights, version)
        held = wait(refs, "rollout engine (weight sync)", self.timeout)
        if any(v != version for v in held):
            raise RuntimeError(f"weight sync: engines report versions {held}, expected {version}")

    def put(self, weights, version: int) -> list:
        import ray

        blobs = [ray.put(blob) for blob in buckets(weights, self.bucket_bytes)]  # top-level args: Ray resolves them
        return [engine.load_weights.remote(version, *blobs) for engine in self.engines]

    def broadcast(self, weights, version: int) -> list:
        device = "cuda" if self.backend == "nccl" else "cpu"
        if self.group is None:
            self.group = self.connect()
        parts = list(bucketed(weights, self.bucket_bytes))
        metas = [meta_of(bucket) for bucket in parts]
        # The receivers are called first: each waits in its broadcasts while rank 0 sends, in the same order.
        refs = [engine.receive_broadcast.remote(version, metas) for engine in self.engines]
        send(self.group, parts, device)
        return refs

    def connect(self):
        """The group of rank 0 (here) and every engine worker (ranks 1.. in engine order): the engines' joins are
        called first, then this side joins, then the calls are awaited (any other order deadlocks)."""
        import ray
        from torch.distributed import TCPStore

        sizes = wait([e.num_workers.remote() for e in self.engines], "rollout engine", self.timeout)
        world = 1 + sum(sizes)
        host = ray.util.get_node_ip_address()
        span = datetime.timedelta(seconds=self.timeout)
        store = TCPStore(host, 0, world, True, timeout=span, wait_for_workers=False)
        offsets = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        refs = [
            e.join_broadcast.remote(self.backend, host, store.port, offset, world, self.timeout)
            for e, offset in zip(self.engines, offsets, strict=True)
        ]
        group = side_group(self.backend, host, store.port, 0, world, self.timeout, store=store)
        wait(refs, "rollout engine (joining the weight-sync group)", self.timeout)
        self.store = store  # rank 0's store lives as long as the group
        return group


def send_weights(model: torch.nn.Module, engines: list, version: int, timeout: float) -> None:
    """The model's weights into every engine through the object store, each then at `version`."""
    sender = WeightSender(engines, "ray", timeout)
    sender.send(model, version)
