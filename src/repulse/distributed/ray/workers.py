"""The workers of train_ppo_ray (plain classes; the controller makes them Ray actors). Each loads its models with
train_ppo's own functions: the reference p_0, the reward source, PPO's critic, and the policy worker, which
builds train_ppo's recipe around stand-ins for the others (remote.py) and runs its trainer's phases on call."""

from __future__ import annotations

import logging
from typing import Any

import torch

from repulse.infra.errors import UserError
from repulse.trainers.rl.config import RLConfig

log = logging.getLogger("repulse")


class RoleWorker:
    """What every worker does: threads and logging when made; then, on setup(), its place in its group (the
    torch.distributed variables of the policy and critic groups, rank 0 giving the address), the strategy, the
    seed, the model path and tokenizer, and its models (load()).

    The policy and critic ranks build train_ppo's strategy from the run's flags (DDP, DeepSpeed ZeRO, FSDP2) in a
    process group of their own; reference and reward ranks are independent one-process replicas."""

    def __init__(self, config: RLConfig, threads: int) -> None:
        from repulse.cli.runner import setup_logging

        torch.set_num_threads(threads)  # as many as its CPU share: GEMM results depend on the thread count
        setup_logging()
        self.config = config

    def master_address(self) -> tuple[str, int]:
        """Rank 0's node address and a port free there: where its group's ranks meet (OpenRLHF's way)."""
        import ray

        from repulse.distributed.torch_ddp import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, env: dict[str, str] | None) -> None:
        """`env`: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT of a group's rank; None for a replica."""
        import os

        from repulse.cli.train_ppo import start

        if env is not None:
            os.environ.update(env)
        self.strategy, self.path, self.tokenizer = start(self.config, command="train_ppo_ray", replica=env is None)
        self.load()

    def load(self) -> None:
        """The role's models (after the strategy and the seed are set)."""

    def placement_group_id(self) -> str | None:
        from ray.util import get_current_placement_group

        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def ready(self) -> bool:
        return True


class ReferenceWorker(RoleWorker):
    """The frozen reference p_0: log-probs of rollouts' responses."""

    def load(self) -> None:
        from repulse.trainers.rl.models import load_reference

        self.model = load_reference(self.config, self.path, self.strategy)

    def response_logps(self, rollout) -> torch.Tensor:
        from repulse.rl.rollout import response_token_logps

        return response_token_logps(self.model, rollout.to(self.strategy.device)).cpu()


class RewardWorker(RoleWorker):
    """The reward source (a reward model, --reward_fn or --remote_rm_url): one score per (prompt, response)."""

    def load(self) -> None:
        from repulse.rl.rewards import make_reward_source

        self.source = make_reward_source(self.config.reward, self.config.model, self.strategy.device)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.source(prompts, responses).cpu()


class CriticWorker(RoleWorker):
    """PPO's critic (trainers/rl/ppo.Critic, built by train_ppo's critic_of once the run's step count is known)."""

    def load(self) -> None:
        from repulse.trainers.guard import Guard
        from repulse.trainers.rl.models import load_critic

        if self.strategy.kind != "replicated":
            raise UserError(
                f"train_ppo_ray: PPO's critic is checkpointed from its full weights, which {self.strategy.kind} "
                "may shard; run a critic on several ranks with --strategy ddp, or use --no_critic"
            )
        self.model = load_critic(self.config, self.path, self.strategy)
        self.guard, self.critic = Guard(self.strategy), None

    def prepare(self, steps: int) -> None:
        from repulse.trainers.rl.build import critic_of

        self.critic = critic_of(self.config, self.model, self.guard, steps, self.strategy)
        self.model = self.critic.trained.model  # as the strategy prepared it

    def values(self, rollout) -> torch.Tensor:
        return self.critic.values(rollout.to(self.strategy.device)).cpu()

    def start_update(self, step: int, last_checkpoint: str | None) -> None:
        self.guard.step, self.guard.last_checkpoint = step, last_checkpoint
        self.critic.start_update()

    def backward(
        self, rollout, old_values: torch.Tensor, returns: torch.Tensor, weight: float, boundary: bool
    ) -> float:
        device = self.strategy.device
        rows = (rollout.to(device), old_values.to(device), returns.to(device))
        return self.critic.backward(*rows, weight, boundary=boundary)

    def step(self) -> float:
        return self.critic.step()

    def state_dict(self) -> dict[str, Any]:
        return self.critic.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state)

    def weights(self) -> dict[str, torch.Tensor]:
        from repulse.trainers.checkpointing import model_states

        return model_states({"critic": self.strategy.unwrap(self.model)})["critic"]

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        from repulse.trainers.checkpointing import load_model_states

        load_model_states({"critic": self.strategy.unwrap(self.model)}, {"critic": weights})

    def save_pretrained(self, folder: str) -> None:
        from repulse.models.load import save_pretrained_atomic

        if self.strategy.is_rank_0():  # the ranks hold the same weights (a replicated strategy)
            save_pretrained_atomic(self.strategy.unwrap(self.model), self.tokenizer, folder)
