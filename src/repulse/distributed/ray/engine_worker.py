"""Runs inside vLLM's worker processes (LLM(worker_extension_cls=...)): loads the weights weight_sync.py sends,
from the object store or over the broadcast group. Imported by vLLM there, never by repulse itself."""

from __future__ import annotations

import hashlib


class WeightReceiver:
    def load_bucket(self, blob: bytes) -> int:
        """Load one safetensors-encoded bucket (the object-store transport); the number of tensors."""
        from safetensors.torch import load

        weights = load(blob)
        self.load_named(weights)
        return len(weights)

    def load_named(self, weights: dict) -> None:
        """Load tensors by their Hugging Face names. On the CPU build vLLM repacks linear weights after loading
        (dropping their loaders), so the layerwise reload wraps the load as vLLM's own weight-transfer engines do;
        a tied lm_head must be among them (the reload processes it separately)."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        model = self.model_runner.model
        initialize_layerwise_reload(model)
        model.load_weights(weights=list(weights.items()))
        finalize_layerwise_reload(model, self.model_runner.model_config)

    def join_broadcast(self, backend: str, host: str, port: int, offset: int, world: int, timeout: float) -> int:
        """Join the weight-sync group at rank `offset` + this worker's rank in its engine."""
        from repulse.distributed.ray.weight_sync import side_group

        rank = offset + self.rank
        self.sync_group = side_group(backend, host, port, rank, world, timeout)
        return rank

    def receive_broadcast(self, metas: list) -> int:
        """Every bucket broadcast by rank 0, loaded as it arrives; the number of tensors."""
        from repulse.distributed.ray.weight_sync import receive

        device = "cuda" if type(self.sync_group).__name__ == "ProcessGroupNCCL" else "cpu"
        count = 0
        for bucket in receive(self.sync_group, metas, device):
            self.load_named(bucket)
            count += len(bucket)
        return count

    def weights_digest(self) -> str:
        """A hash of every parameter as vLLM holds it (the same weights give the same digest)."""
        digest = hashlib.sha256()
        for name, param in sorted(self.model_runner.model.named_parameters()):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
