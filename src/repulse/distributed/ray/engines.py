"""vLLM rollout engines as Ray actors (the only module of distributed/ray/ that imports vllm). Each engine records
the weight version it holds; a pool refuses to sample from an engine behind the trainer's model (weights that
were never delivered look like a model that stopped learning)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from repulse.infra.errors import UserError

log = logging.getLogger("repulse")
RECEIVER = "repulse.distributed.ray.engine_worker.WeightReceiver"


class StaleEngineError(UserError):
    """An engine holds older weights than the model it samples for."""


@dataclass(frozen=True)
class EngineArgs:
    model_path: str
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = False
    enforce_eager: bool = True
    seed: int = 0
    max_model_len: int | None = None
    dtype: str = "float32"  # the trainer's dtype, so that greedy outputs can be compared


class RolloutEngine:
    """One vllm.LLM (made a Ray actor by the caller); weights arrive through load_weights."""

    def __init__(self, args: EngineArgs) -> None:
        from repulse.generation.vllm_backend import import_vllm

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # the receiver class is named by import path
        vllm = import_vllm()
        self.vllm, self.version = vllm, 0
        self.llm = vllm.LLM(
            model=args.model_path,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=args.enable_prefix_caching,
            enforce_eager=args.enforce_eager,
            seed=args.seed,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            worker_extension_cls=RECEIVER,
        )

    def load_weights(self, version: int, *buckets: bytes) -> int:
        """Every bucket into every vLLM worker, then the prefix cache dropped; the version now held."""
        for blob in buckets:
            self.llm.collective_rpc("load_bucket", args=(blob,))
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    def weight_version(self) -> int:
        return self.version

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, version: int, greedy: bool = True, seed=0):
        """Token ids of one response per prompt, from an engine that holds `version` (else StaleEngineError)."""
        if self.version != version:
            raise StaleEngineError(
                f"rollout engine holds weights version {self.version}, the model is at {version}: refusing to sample"
            )
        params = self.vllm.SamplingParams(temperature=0.0 if greedy else 1.0, max_tokens=max_new_tokens, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]
