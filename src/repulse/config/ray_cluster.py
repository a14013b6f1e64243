"""Flags of train_ppo_ray: how the roles of an RL run are laid out on a Ray cluster (OpenRLHF 0.6.3 names)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

ROLES = ("actor", "ref", "critic", "reward")
SYNC_BACKENDS = ("ray", "gloo", "nccl")


@dataclass
class RayArgs:
    _argument_group_name = "Ray cluster"

    actor_num_nodes: int = arg(1, "Nodes of the policy workers (the actor; p_theta and q in harmlessness mode).")
    actor_num_gpus_per_node: int = arg(
        1,
        "Policy worker ranks per node: one GPU each, or one CPU each on a cluster without GPUs. The policy ranks "
        "form one process group, training with the strategy of --strategy / --zero_stage (DDP, DeepSpeed, FSDP2).",
    )
    ref_num_nodes: int = arg(1, "Nodes of the reference (p_0) workers.")
    ref_num_gpus_per_node: int = arg(
        1,
        "Reference worker ranks per node (a GPU each, or a CPU without GPUs): independent replicas; policy rank i "
        "scores with replica i mod their number.",
    )
    critic_num_nodes: int = arg(1, "Nodes of the critic workers (PPO with a critic).")
    critic_num_gpus_per_node: int = arg(
        1,
        "Critic worker ranks per node (a GPU each, or a CPU without GPUs): a process group of its own (the "
        "critic's gradients reduced by its strategy), as many ranks as the policy; policy rank i uses critic rank i.",
    )
    reward_num_nodes: int = arg(1, "Nodes of the reward workers (reward model, --reward_fn or --remote_rm_url).")
    reward_num_gpus_per_node: int = arg(
        1,
        "Reward worker ranks per node (a GPU each, or a CPU without GPUs): independent replicas; policy rank i "
        "scores with replica i mod their number.",
    )
    colocate_actor_ref: bool = arg(False, "Place the policy and reference workers in one placement group.")
    colocate_critic_reward: bool = arg(False, "Place the critic and reward workers in one placement group.")
    colocate_all_models: bool = arg(False, "Place every worker in one placement group (fractional shares).")
    vllm_num_engines: int = arg(
        0,
        "vLLM rollout engines per sampled model (the policy; a plain-LM proposal q gets a pool of its own); 0 samples "
        "in the policy workers with repulse's sampler.",
    )
    vllm_tensor_parallel_size: int = arg(1, "Tensor-parallel workers (GPUs) of each vLLM engine.")
    vllm_gpu_memory_utilization: float = arg(0.9, "Share of its GPU's memory each vLLM engine may take (0, 1].")
    enable_prefix_caching: bool = arg(False, "vLLM prefix caching in the engines (dropped after each weight sync).")
    enforce_eager: bool = arg(False, "Run the vLLM engines eagerly (no CUDA graphs or compiled graphs).")
    vllm_enable_sleep: bool = arg(
        False,
        "Engines sleep (weights offloaded, KV cache freed) while the models train and wake for the weight sync; a "
        "logged no-op where vLLM has no sleep mode (its CPU build).",
    )
    vllm_sync_backend: str = arg(
        "ray",
        "How weights reach the engines after each update: ray (the Ray object store), gloo or nccl (a broadcast from "
        "the policy worker into the engine workers over a process group of their own; nccl needs GPUs).",
    )
    ray_timeout: float = arg(
        1800.0, "Seconds any call to a worker (a load, a step phase, a checkpoint) may take before the run stops."
    )

    def __post_init__(self) -> None:
        for role in ROLES:
            for part in ("num_nodes", "num_gpus_per_node"):
                value = getattr(self, f"{role}_{part}")
                require(value >= 1, f"--{role}_{part} must be >= 1, got {value}")
        require(self.vllm_num_engines >= 0, f"--vllm_num_engines must be >= 0, got {self.vllm_num_engines}")
        # Each policy rank would need its own pool synced from its gathered weights: one rank drives engines for now.
        require(
            self.vllm_num_engines == 0 or self.ranks("policy") == 1,
            f"--vllm_num_engines {self.vllm_num_engines} with {self.ranks('policy')} policy ranks: vLLM engines are "
            "driven by one policy rank (--actor_num_nodes 1 --actor_num_gpus_per_node 1) for now",
        )
        require(
            self.vllm_tensor_parallel_size >= 1,
            f"--vllm_tensor_parallel_size must be >= 1, got {self.vllm_tensor_parallel_size}",
        )
        require(
            0 < self.vllm_gpu_memory_utilization <= 1,
            f"--vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}",
        )
        require(
            self.vllm_sync_backend in SYNC_BACKENDS,
            f"--vllm_sync_backend must be one of {', '.join(SYNC_BACKENDS)}, got {self.vllm_sync_backend!r}",
        )
        require(self.ray_timeout > 0, f"--ray_timeout must be > 0, got {self.ray_timeout}")

    def ranks(self, role: str) -> int:
        """The ranks of `role` ('policy', 'reference', 'critic' or 'reward'): its nodes x GPUs per node."""
        prefix = {"policy": "actor", "reference": "ref"}.get(role, role)
        return getattr(self, f"{prefix}_num_nodes") * getattr(self, f"{prefix}_num_gpus_per_node")
