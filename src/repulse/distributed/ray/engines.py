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
    enable_sleep: bool = False


def sleep_available() -> bool:
    """Whether this vLLM build has a sleep mode (CUDA, ROCm and XPU; not the CPU build)."""
    from vllm.platforms import current_platform

    return current_platform.is_sleep_mode_available()


class RolloutEngine:
    """One vllm.LLM (made a Ray actor by the caller); weights arrive through load_weights or receive_broadcast."""

    def __init__(self, args: EngineArgs) -> None:
        from repulse.cli.runner import setup_logging
        from repulse.generation.vllm_backend import import_vllm

        setup_logging()  # this actor's own process: its warnings reach the driver's log
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # the receiver class is named by import path
        vllm = import_vllm()
        self.vllm, self.version, self.workers = vllm, 0, args.tensor_parallel_size
        self.sleeps = args.enable_sleep and sleep_available()
        if args.enable_sleep and not self.sleeps:
            log.warning("--vllm_enable_sleep: this vLLM build has no sleep mode (CPU); the engine stays awake")
        self.asleep = False
        self.llm = vllm.LLM(
            model=args.model_path,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=args.enable_prefix_caching,
            enforce_eager=args.enforce_eager,
            seed=args.seed,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            enable_sleep_mode=self.sleeps,
            worker_extension_cls=RECEIVER,
        )

    def ready(self) -> bool:
        return True

    def num_workers(self) -> int:
        return self.workers

    # ----------------------------------------------------------------------------------------------- weights in
    def load_weights(self, version: int, *buckets: bytes) -> int:
        """Every bucket into every vLLM worker (object store), then the version now held."""
        self.wake_up(["weights"])
        for blob in buckets:
            self.llm.collective_rpc("load_bucket", args=(blob,))
        return self.loaded(version)

    def join_broadcast(self, backend: str, host: str, port: int, offset: int, world: int, timeout: float) -> list:
        return self.llm.collective_rpc("join_broadcast", args=(backend, host, port, offset, world, timeout))

    def receive_broadcast(self, version: int, metas: list) -> int:
        """Every bucket broadcast by the policy worker into every vLLM worker, then the version now held."""
        self.wake_up(["weights"])
        self.llm.collective_rpc("receive_broadcast", args=(metas,))
        return self.loaded(version)

    def loaded(self, version: int) -> int:
        """After a sync: the KV cache back, the prefix cache (computed with the old weights) dropped."""
        self.wake_up(["kv_cache"])
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    def weight_version(self) -> int:
        return self.version

    def weights_digest(self) -> list[str]:
        return self.llm.collective_rpc("weights_digest")

    # ------------------------------------------------------------------------------------------------ sleeping
    def sleep(self) -> None:
        """Weights offloaded and KV cache freed while the models train (where vLLM can sleep)."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self, tags: list[str]) -> None:
        if self.sleeps and self.asleep:
            self.llm.wake_up(tags)
            self.asleep = "kv_cache" not in tags

    # ---------------------------------------------------------------------------------------------- sampling
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, version: int, greedy: bool = True, seed=0):
        """Token ids of one response per prompt (greedy by default), from an engine that holds `version`."""
        from repulse.generation.generate import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, greedy=greedy)
        return [group[0] for group in self.sample(prompt_ids, params, version, [seed] * len(prompt_ids))]

    def sample(self, prompt_ids: list[list[int]], params, version: int, seeds: list[int | None]):
        """`params.num_samples` token-id lists per prompt (repulse's SamplingParams, one seed per prompt), from an
        engine that holds `version` (else StaleEngineError)."""
        from repulse.generation.vllm_backend import vllm_sampling

        if self.version != version:
            raise StaleEngineError(
                f"rollout engine holds weights version {self.version}, the model is at {version}: refusing to sample"
            )
        self.wake_up(["weights", "kv_cache"])
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        per_prompt = [vllm_sampling(self.vllm, params, seed) for seed in seeds]
        outputs = self.llm.generate(requests, per_prompt, use_tqdm=False)
        return [[list(o.token_ids) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outputs]
