"""The controller of train_ppo_ray: places the workers, then runs train_ppo's RL loop (trainers/rl/loop.py) with a
trainer whose phases run in the policy worker. metrics.jsonl is written here; checkpoints, evaluations and the
final models by the policy worker (and the critic worker for final_critic/), in train_ppo's formats, so either
command resumes the other's checkpoints."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from repulse.config.ray_cluster import RayArgs
from repulse.distributed.ray import import_ray
from repulse.distributed.ray.calls import wait
from repulse.distributed.ray.placement import actor_options, check_resources, create_groups, plan_placement
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.models import has_critic
from repulse.trainers.rl.steps import Progress

log = logging.getLogger("repulse")


class RemoteTrainer:
    """The RLTrainer protocol of trainers/rl/loop.py, each phase a call to the policy worker (which keeps the
    experience between make_experience, update and report)."""

    def __init__(self, policy, info: dict[str, Any], timeout: float) -> None:
        self.policy, self.info, self.timeout = policy, info, timeout
        self.progress = Progress()

    def call(self, method: str, *args: Any) -> Any:
        return wait(getattr(self.policy, method).remote(*args), f"policy worker ({method})", self.timeout)

    def rounds(self) -> tuple[str, ...]:
        return self.info["rounds"]

    def samples_per_prompt(self) -> int:
        return self.info["samples_per_prompt"]

    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str) -> str:
        self.progress.phase(f"make_experience ({kind})")
        self.progress.sampled(self.call("make_experience", prompt_ids, step, kind))
        return kind

    def update(self, experience: str):
        self.progress.phase("update")
        return self.call("update")

    def report(self, experience: str, updates: list) -> dict[str, float]:
        return self.call("report", updates)


def roles_of(config: RLConfig) -> tuple[str, ...]:
    return ("policy", "reference", *(("critic",) if has_critic(config) else ()), "reward")


def start_ray(ray) -> bool:
    """Connect to the cluster (RAY_ADDRESS, as under `ray job submit`) or start a local one; whether we started it."""
    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    return True


def driver_env() -> dict[str, str]:
    """The workers import what the driver imports (this checkout, the modules named by --reward_fn)."""
    paths = [p for p in sys.path if p and os.path.exists(p)]
    return {"PYTHONPATH": os.pathsep.join(paths), "TOKENIZERS_PARALLELISM": "false"}


def start_workers(ray, config: RLConfig, args: RayArgs, handles: dict[str, Any], groups: list) -> None:
    """The workers of every role, each in its placement group, loaded (or one line naming the one that failed).
    `handles` and `groups` fill as they are made, so that whatever was made is stopped if a later one fails."""
    from repulse.distributed.ray.policy_worker import PolicyWorker
    from repulse.distributed.ray.workers import CriticWorker, ReferenceWorker, RewardWorker

    roles = roles_of(config)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    placement = plan_placement(roles, args, use_gpu=use_gpu)
    check_resources(placement, ray.cluster_resources())
    engines = engine_spec(config, args, use_gpu, placement.needed(), ray.cluster_resources())
    groups.extend(create_groups(placement))
    env = driver_env()
    classes = {"reference": ReferenceWorker, "critic": CriticWorker, "reward": RewardWorker}
    for role in roles[1:]:
        options = actor_options(placement, groups, role, env)
        threads = max(1, int(options["num_cpus"]))
        handles[role] = ray.remote(classes[role]).options(**options).remote(config, threads)
    options = actor_options(placement, groups, "policy", env)
    threads = max(1, int(options["num_cpus"]))
    handles["policy"] = (
        ray.remote(PolicyWorker).options(**options).remote(config, threads, dict(handles), args.ray_timeout, engines)
    )
    for role, handle in handles.items():
        wait(handle.ready.remote(), f"{role} worker (loading)", args.ray_timeout)
    log_placement(handles, args.ray_timeout)


def engine_spec(config: RLConfig, args: RayArgs, use_gpu: bool, placed: dict, available: dict):
    """The policy worker's vLLM engines (None: it samples itself): a pool for the policy and one for a plain-LM
    proposal q, checked against what the cluster has beside the workers (never an engine that waits forever)."""
    from repulse.distributed.ray.rollouts import EngineSpec
    from repulse.infra.errors import UserError

    if args.vllm_num_engines == 0:
        return None
    if args.vllm_sync_backend == "nccl" and not use_gpu:
        raise UserError("--vllm_sync_backend nccl needs GPUs; this Ray cluster has none: use gloo or ray")
    spec = EngineSpec(
        args.vllm_num_engines,
        args.vllm_tensor_parallel_size,
        args.vllm_gpu_memory_utilization,
        args.enable_prefix_caching,
        args.enforce_eager,
        args.vllm_enable_sleep,
        args.vllm_sync_backend,
        use_gpu,
    )
    pools = 1 + (config.separate_proposal and not config.modulated)
    for kind, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = placed.get(kind, 0.0) + pools * args.vllm_num_engines * spec.resources()[key]
        if need > available.get(kind, 0.0) + 1e-9:
            raise UserError(
                f"--vllm_num_engines {args.vllm_num_engines} x {pools} pool(s): train_ppo_ray needs {need:g} {kind} "
                f"with the workers but the Ray cluster has {available.get(kind, 0.0):g}"
            )
    return spec


def log_placement(handles: dict[str, Any], timeout: float) -> None:
    """The roles grouped by the placement group each worker reports it runs in."""
    by_group: dict[str | None, list[str]] = {}
    for role, handle in handles.items():
        by_group.setdefault(wait(handle.placement_group_id.remote(), f"{role} worker", timeout), []).append(role)
    order = ("policy", "reference", "critic", "reward")
    named = sorted(
        ("+".join(sorted(r, key=order.index)) for r in by_group.values()), key=lambda g: order.index(g.split("+")[0])
    )
    log.info("workers by placement group: %s", ", ".join(named))


def stop(ray, handles: dict[str, Any], groups: list, started: bool) -> None:
    from ray.util.placement_group import remove_placement_group

    for handle in handles.values():
        ray.kill(handle)
    for group in groups:
        remove_placement_group(group)
    if started:
        ray.shutdown()


def run_train_ppo_ray(config: RLConfig, args: RayArgs, flat: dict[str, Any], write_config) -> dict[str, Any]:
    """The run on Ray workers; its summary (train_ppo's)."""
    ray = import_ray()
    started = start_ray(ray)
    handles: dict[str, Any] = {}
    groups: list = []
    try:
        start_workers(ray, config, args, handles, groups)
        return drive(config, args, flat, write_config, handles["policy"])
    finally:
        stop(ray, handles, groups, started)


def drive(config: RLConfig, args: RayArgs, flat: dict[str, Any], write_config, policy) -> dict[str, Any]:
    from repulse.infra.metrics import MetricLogger
    from repulse.trainers.checkpointing import run_fingerprint
    from repulse.trainers.guard import Guard
    from repulse.trainers.rl.loop import RLLoopState, run_rl_loop
    from repulse.trainers.rl.run import summarize

    def call(method: str, *a: Any) -> Any:
        return wait(getattr(policy, method).remote(*a), f"policy worker ({method})", args.ray_timeout)

    # The fingerprint is train_ppo's: the layout on the cluster does not change what is trained.
    train_flags = {k: v for k, v in flat.items() if k not in RayArgs.__dataclass_fields__}
    call("claim_checkpoints", run_fingerprint("train_ppo", train_flags))
    write_config()
    info = call("build")
    config, state = info["config"], info["state"]
    state = RLLoopState(**state) if state is not None else None
    lg = config.logging
    logger = MetricLogger(
        config.ckpt.save_path,
        enabled=True,
        tensorboard_dir=lg.use_tensorboard,
        wandb=lg.use_wandb,
        wandb_project=lg.wandb_project,
        wandb_run_name=lg.wandb_run_name,
        config=flat,
        resume_step=state.global_step if state else None,
    )
    try:
        state = run_rl_loop(
            RemoteTrainer(policy, info, args.ray_timeout),
            info["prompt_ids"],
            info["settings"],
            logger,
            Guard(None),  # the loop's position; the policy worker's guard checks the values
            evaluate=(lambda fit, step: call("evaluate", fit, step)) if info["evaluates"] else None,
            save=lambda loop: call("save_checkpoint", loop_dict(loop)),
            state=state,
        )
    finally:
        logger.close()
    return call("finish", loop_dict(state), summarize(state))


def loop_dict(state) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(state)
