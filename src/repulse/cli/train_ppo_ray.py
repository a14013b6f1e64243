"""train_ppo_ray: train_ppo's PPO / REINFORCE and RePULSe harmlessness training with its models on Ray workers.

The controller (this process) runs train_ppo's RL loop and calls the trainer's phases (make_experience, update,
report) on every policy rank at once, taking rank 0's answer. Each role has --{actor,ref,critic,reward}_num_nodes x
_num_gpus_per_node ranks. The policy ranks (the actor; in harmlessness mode p_theta and the proposal q) form one
process group and train as train_ppo's N processes do (--strategy / --zero_stage: DDP, DeepSpeed ZeRO, FSDP2; each
rank samples its share of a step's prompts with repulse's sampler). With --vllm_num_engines N (one policy rank) the
samples come from N vLLM engines per sampled model instead (a plain-LM q has its own pool; a modulated q samples in
the worker), synced after every update (--vllm_sync_backend) and refused when behind the model; the trainer's
models recompute every log-prob. The critic ranks (PPO with a critic; as many as the policy ranks; --strategy ddp
on several) form their own group; policy rank i trains with critic rank i. The reference p_0 and the reward source
(model, --reward_fn or --remote_rm_url) run as independent replicas: policy rank i calls replica i mod their
number. On a cluster without GPUs the workers are CPU actors. Each rank takes a placement-group bundle of one GPU
(or one CPU), checked against the cluster first; the --colocate_* flags put roles in one group, rank i of each
sharing bundle i. Outputs, checkpoints and --load_checkpoint are train_ppo's (either command resumes the other's
checkpoints); with the same seed and no engines the run equals train_ppo's. Twist learning runs in train_ppo.

    repulse train_ppo_ray --config configs/toy_repulse.yaml --colocate_all_models --save_path runs/ray_repulse
    ray job submit --address http://HEAD:8265 -- python3 -m repulse.cli.train_ppo_ray --pretrain MODEL ...
"""

from __future__ import annotations

from collections.abc import Sequence

from repulse.cli.runner import run_cli, write_resolved_config
from repulse.cli.train_ppo import DEFAULTS
from repulse.cli.train_ppo import GROUPS as TRAIN_PPO_GROUPS
from repulse.config.parser import parse_groups, to_flat_dict
from repulse.config.ray_cluster import RayArgs
from repulse.trainers.rl.config import RLConfig

GROUPS = (*TRAIN_PPO_GROUPS, RayArgs)


def parse_args(argv: Sequence[str] | None = None) -> tuple[RLConfig, RayArgs]:
    from repulse.config.fields import ConfigError
    from repulse.config.validate import check_train_ppo

    *groups, ray_args = parse_groups(GROUPS, argv, description=__doc__, defaults=DEFAULTS)
    config = RLConfig(*groups)
    check_train_ppo(config.rollout, config.ppo, config.proposal, config.harm, config.evaluation, config.optim)
    if config.mode == "twist":
        raise ConfigError(
            f"--actor_loss_type {config.proposal.actor_loss_type}: twist learning runs in train_ppo; "
            "train_ppo_ray runs PPO / REINFORCE and harmlessness training"
        )
    if ray_args.vllm_num_engines and config.lora.lora_rank:
        raise ConfigError(
            f"--vllm_num_engines {ray_args.vllm_num_engines} with --lora_rank {config.lora.lora_rank}: the engines "
            "take full weights; train without LoRA or sample in the policy worker (--vllm_num_engines 0)"
        )
    return config, ray_args


def train(config: RLConfig, ray_args: RayArgs) -> dict:
    from repulse.cli.train_ppo import only_negative_data, start
    from repulse.distributed.ray.controller import run_train_ppo_ray

    if config.evaluation.only_evaluate_on_neg_data:  # an evaluation of --pretrain, no workers needed
        return only_negative_data(config, *start(config, command="train_ppo_ray"))
    flat = to_flat_dict(*config, ray_args)

    def write_config() -> None:
        write_resolved_config(config.ckpt.save_path, flat)

    summary = run_train_ppo_ray(config, ray_args, flat, write_config)
    shown = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    summary_line = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    print(f"train_ppo_ray: {summary_line}; outputs in {config.ckpt.save_path}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(*parse_args(a)), argv, "train_ppo_ray")


if __name__ == "__main__":
    raise SystemExit(main())
