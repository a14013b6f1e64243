"""Sampling from vLLM rollout engines inside the policy worker: a pool of engines per sampled model (the policy;
a plain-LM proposal q has its own), the trainers' Sampler that draws from them, and the weight sync after each
update. Prompts are split over a pool's engines, each prompt with its own seed from the run's seeded streams, so
the draw does not depend on the number of engines. The engines return token ids; the log-probs are the trainer
model's own (rl/rollout.rollout_from_tokens)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from repulse.distributed.ray.calls import wait
from repulse.distributed.ray.weight_sync import WeightSender
from repulse.generation.generate import SamplingParams, stream_seed
from repulse.rl.rollout import Rollout, rollout_from_tokens, sample_rollout

log = logging.getLogger("repulse")


@dataclass(frozen=True)
class EngineSpec:
    """What the policy worker needs to start its engines (train_ppo_ray's --vllm_* flags)."""

    num_engines: int
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = False
    enforce_eager: bool = False
    enable_sleep: bool = False
    sync_backend: str = "ray"
    use_gpu: bool = False

    def resources(self) -> dict[str, float]:
        """One engine's Ray resources: its tensor-parallel GPUs, or one CPU."""
        if self.use_gpu:
            return {"num_cpus": 1, "num_gpus": self.tensor_parallel_size}
        return {"num_cpus": 1, "num_gpus": 0}


def weights_version(model: torch.nn.Module) -> int:
    """A number that moves on whenever a parameter of `model` changes in place (an optimizer step, a load): the sum
    of the parameters' version counters. It is read from the model itself, so that a sync the code forgot leaves
    the engines behind it, never silently in step."""
    return sum(param._version for param in model.parameters())


class EnginePool:
    """The engines of one model and the version of the weights they were last sent."""

    def __init__(self, name: str, engines: list, backend: str, timeout: float) -> None:
        self.name, self.engines, self.timeout = name, engines, timeout
        self.sender = WeightSender(engines, backend, timeout)
        self.version = 0  # the engines start from the model folder at version 0

    def sync(self, model: torch.nn.Module) -> None:
        """The model's weights to every engine, which records their version."""
        self.version = weights_version(model)
        self.sender.send(model, self.version)

    def sample(
        self, model: torch.nn.Module, prompt_ids: list[list[int]], params: SamplingParams, seeds: list
    ) -> list[list[list[int]]]:
        """`params.num_samples` token-id lists per prompt, the prompts split in contiguous shares over the
        engines; an engine that does not hold `model`'s present weights refuses (StaleEngineError)."""
        n, k, version = len(prompt_ids), len(self.engines), weights_version(model)
        cuts = [i * n // k for i in range(k + 1)]
        calls = [
            engine.sample.remote(prompt_ids[a:b], params, version, seeds[a:b])
            for engine, a, b in zip(self.engines, cuts, cuts[1:], strict=False)
            if b > a
        ]
        return [group for share in wait(calls, f"{self.name} rollout engine", self.timeout) for group in share]

    def sleep(self) -> None:
        wait([e.sleep.remote() for e in self.engines], f"{self.name} rollout engine (sleep)", self.timeout)


class EngineSampler:
    """The trainers' Sampler (trainers/rl/steps.Sampler) over engine pools, keyed by the model they serve; any
    other model (a modulated q, p_0) samples here with repulse's sampler."""

    def __init__(self, pools: dict[int, EnginePool]) -> None:
        self.pools = pools

    def __call__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        *,
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
        seed: int | None = None,
        first_prompt: int = 0,
        others_running: Callable[[bool], bool] | None = None,
    ) -> Rollout:
        pool = self.pools.get(id(model))
        if pool is None:
            streams = {"seed": seed, "first_prompt": first_prompt, "others_running": others_running}
            return sample_rollout(model, tokenizer, prompt_ids, group_size, params, batch_size, on_batch, **streams)
        # Each prompt's seed keys on its place in the step's batch, as repulse's sampler keys its calls.
        seeds = [None if seed is None else stream_seed(seed, first_prompt + i) for i in range(len(prompt_ids))]
        responses = pool.sample(model, prompt_ids, replace(params, num_samples=group_size), seeds)
        if on_batch is not None:
            on_batch(len(prompt_ids) * group_size)
        return rollout_from_tokens(model, tokenizer, prompt_ids, responses, group_size)


class EngineRollouts:
    """The policy worker's engines: a pool per role it samples from vLLM ('policy', 'proposal'), the sampler the
    trainer draws with, and the sync after each update."""

    def __init__(self, pools: dict[str, EnginePool], models: dict[str, torch.nn.Module]) -> None:
        self.pools, self.models = pools, models
        self.sampler = EngineSampler({id(models[role]): pool for role, pool in pools.items()})

    def sync(self) -> None:
        """Every pool whose model changed since its last sync gets the new weights (after an update: a
        proposal-only round changes q alone; PPO's frozen actor steps change nothing)."""
        for role, pool in self.pools.items():
            if weights_version(self.models[role]) != pool.version:
                pool.sync(self.models[role])

    def sleep(self) -> None:
        for pool in self.pools.values():
            pool.sleep()


def start_engines(spec: EngineSpec, roles: dict[str, torch.nn.Module], path: str, config, timeout: float):
    """`spec.num_engines` engines for each role in `roles` (Ray actors owned by the caller: they end with it),
    loaded from `path`, then synced with the role's model (which may differ from the folder: a resumed run, q's
    initialisation); the EngineRollouts."""
    import ray

    from repulse.distributed.ray.engines import EngineArgs, RolloutEngine

    args = EngineArgs(
        model_path=path,
        tensor_parallel_size=spec.tensor_parallel_size,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        enable_prefix_caching=spec.enable_prefix_caching,
        enforce_eager=spec.enforce_eager,
        seed=config.optim.seed,
        dtype="bfloat16" if config.model.bf16 else "float32",
        enable_sleep=spec.enable_sleep,
    )
    actor = ray.remote(RolloutEngine).options(**spec.resources())
    engines = {role: [actor.remote(args) for _ in range(spec.num_engines)] for role in roles}
    for role, handles in engines.items():
        wait([h.ready.remote() for h in handles], f"{role} rollout engine (loading)", timeout)
    pools = {role: EnginePool(role, handles, spec.sync_backend, timeout) for role, handles in engines.items()}
    rollouts = EngineRollouts(pools, roles)
    for role, pool in pools.items():  # whatever the folder held: the engines start from the model's weights
        pool.sync(roles[role])
    log.info("rollout engines: %d for %s, weights synced by %s", spec.num_engines, ", ".join(roles), spec.sync_backend)
    return rollouts
