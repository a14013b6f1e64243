"""Runs inside vLLM's worker processes (LLM(worker_extension_cls=...)): loads one bucket of weights sent by
weight_sync.py. Imported by vLLM there, never by repulse itself."""

from __future__ import annotations


class WeightReceiver:
    def load_bucket(self, blob: bytes) -> int:
        """Load the safetensors-encoded bucket into the model; the number of tensors. On the CPU build vLLM repacks
        linear weights after loading (dropping their loaders), so the layerwise reload wraps the load as vLLM's own
        weight-transfer engines do; a tied lm_head must be in the bucket (the reload processes it separately)."""
        from safetensors.torch import load
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        weights = load(blob)
        model = self.model_runner.model
        initialize_layerwise_reload(model)
        model.load_weights(weights=list(weights.items()))
        finalize_layerwise_reload(model, self.model_runner.model_config)
        return len(weights)
