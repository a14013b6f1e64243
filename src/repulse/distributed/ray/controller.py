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
from repulse.distributed.ray.group import WorkerGroup, setup_groups
from repulse.distributed.ray.placement import actor_options, check_resources, create_groups, plan_placement
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.models import has_critic
from repulse.trainers.rl.steps import Progress

log = logging.getLogger("repulse")


class RemoteTrainer:
    """The RLTrainer protocol of trainers/rl/loop.py, each phase a call to every policy rank at once (each keeps
    its experience between make_experience, update and report); the answers are rank 0's. The loop here runs as
    one process (world 1), so each rank gets the step's whole batch and takes its own share of it."""

    def __init__(self, policy: WorkerGroup, info: dict[str, Any]) -> None:
        self.policy, self.info = policy, info
        self.progress = Progress()

    def rounds(self) -> tuple[str, ...]:
        return self.info["rounds"]

    def samples_per_prompt(self) -> int:
        return self.info["samples_per_prompt"]

    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str) -> str:
        self.progress.phase(f"make_experience ({kind})")
        self.progress.sampled(sum(self.policy.call_all("make_experience", prompt_ids, step, kind)))
        return kind

    def update(self, experience: str) -> None:
        self.progress.phase("update")
        self.policy.call("update")  # each rank keeps its update's metrics for its report

    def report(self, experience: str, updates: list) -> dict[str, float]:
        return self.policy.call("report")


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


def start_workers(ray, config: RLConfig, args: RayArgs, groups: dict[str, WorkerGroup], placed: list) -> None:
    """The ranks of every role, each in its bundle of its placement group, set up and loaded (or one line naming
    the role that failed). `groups` and `placed` fill as they are made, so that whatever was made is stopped if
    a later one fails. Policy rank i calls reference and reward replica i mod their number, and critic rank i."""
    from repulse.distributed.ray.policy_worker import PolicyWorker
    from repulse.distributed.ray.workers import CriticWorker, ReferenceWorker, RewardWorker

    roles = roles_of(config)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    placement = plan_placement(roles, args, use_gpu=use_gpu)
    check_resources(placement, ray.cluster_resources())
    engines = engine_spec(config, args, use_gpu, placement.needed(), ray.cluster_resources())
    placed.extend(create_groups(placement))
    env = driver_env()

    def make(role: str, cls, extra) -> WorkerGroup:
        group = groups[role] = WorkerGroup(role, [], args.ray_timeout)
        for rank in range(args.ranks(role)):
            options = actor_options(placement, placed, role, rank, env)
            threads = max(1, int(options["num_cpus"]))
            group.ranks.append(ray.remote(cls).options(**options).remote(config, threads, *extra(rank)))
        return group

    classes = {"reference": ReferenceWorker, "critic": CriticWorker, "reward": RewardWorker}
    for role in roles[1:]:
        make(role, classes[role], lambda rank: ())

    def policy_args(rank: int) -> tuple:
        return {role: groups[role].handle(rank) for role in roles[1:]}, args.ray_timeout, engines

    make("policy", PolicyWorker, policy_args)
    setup_groups(groups, training=("policy", "critic"))
    log.info("workers by placement group: %s", describe_placement(worker_placement(groups)))


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


def worker_placement(groups: dict[str, WorkerGroup]) -> dict[str, list[str | None]]:
    """{role: [the placement group id of each rank]}, as the workers report them."""
    return {role: group.call_all("placement_group_id") for role, group in groups.items()}


def describe_placement(where: dict[str, list[str | None]]) -> str:
    """The roles grouped by the placement group their ranks run in ('policy x2+reference x2, reward')."""
    order = ("policy", "reference", "critic", "reward")
    by_group: dict[str | None, list[str]] = {}
    for role in sorted(where, key=order.index):
        ranks = where[role]
        by_group.setdefault(ranks[0], []).append(role if len(ranks) == 1 else f"{role} x{len(ranks)}")
    return ", ".join(
        sorted(("+".join(g) for g in by_group.values()), key=lambda g: order.index(g.split(" ")[0].split("+")[0]))
    )


def stop(ray, groups: dict[str, WorkerGroup], placed: list, started: bool) -> None:
    from ray.util.placement_group import remove_placement_group

    for group in groups.values():
        for rank in group.ranks:
            ray.kill(rank)
    for placement_group in placed:
        remove_placement_group(placement_group)
    if started:
        ray.shutdown()


def run_train_ppo_ray(config: RLConfig, args: RayArgs, flat: dict[str, Any], write_config) -> dict[str, Any]:
    """The run on Ray workers; its summary (train_ppo's)."""
    ray = import_ray()
    started = start_ray(ray)
    groups: dict[str, WorkerGroup] = {}
    placed: list = []
    try:
        start_workers(ray, config, args, groups, placed)
        return drive(config, flat, write_config, groups["policy"])
    finally:
        stop(ray, groups, placed, started)


def drive(config: RLConfig, flat: dict[str, Any], write_config, policy: WorkerGroup) -> dict[str, Any]:
    from repulse.infra.metrics import MetricLogger
    from repulse.trainers.checkpointing import run_fingerprint
    from repulse.trainers.guard import Guard
    from repulse.trainers.rl.loop import RLLoopState, run_rl_loop
    from repulse.trainers.rl.run import summarize

    call = policy.call
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
            RemoteTrainer(policy, info),
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
