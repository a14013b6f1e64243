"""The workers of train_ppo_ray (plain classes; the controller makes them Ray actors). Each loads its models with
train_ppo's own functions: the reference p_0, the reward source, PPO's critic, and the policy worker, which
builds train_ppo's recipe around stand-ins for the others (remote.py) and runs its trainer's phases on call."""

from __future__ import annotations

import logging
from typing import Any

import torch

from repulse.trainers.rl.config import RLConfig

log = logging.getLogger("repulse")


class RoleWorker:
    """What every worker does first: threads, logging, the strategy, the seed, the model path and tokenizer."""

    def __init__(self, config: RLConfig, threads: int) -> None:
        from repulse.cli.runner import setup_logging
        from repulse.cli.train_ppo import start

        torch.set_num_threads(threads)  # as many as its CPU share: GEMM results depend on the thread count
        setup_logging()
        self.config = config
        self.strategy, self.path, self.tokenizer = start(config, command="train_ppo_ray")

    def placement_group_id(self) -> str | None:
        from ray.util import get_current_placement_group

        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def ready(self) -> bool:
        return True


class ReferenceWorker(RoleWorker):
    """The frozen reference p_0: log-probs of rollouts' responses."""

    def __init__(self, config: RLConfig, threads: int) -> None:
        from repulse.trainers.rl.models import load_reference

        super().__init__(config, threads)
        self.model = load_reference(config, self.path, self.strategy)

    def response_logps(self, rollout) -> torch.Tensor:
        from repulse.rl.rollout import response_token_logps

        return response_token_logps(self.model, rollout.to(self.strategy.device)).cpu()


class RewardWorker(RoleWorker):
    """The reward source (a reward model, --reward_fn or --remote_rm_url): one score per (prompt, response)."""

    def __init__(self, config: RLConfig, threads: int) -> None:
        from repulse.rl.rewards import make_reward_source

        super().__init__(config, threads)
        self.source = make_reward_source(config.reward, config.model, self.strategy.device)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.source(prompts, responses).cpu()


class CriticWorker(RoleWorker):
    """PPO's critic (trainers/rl/ppo.Critic, built by train_ppo's critic_of once the run's step count is known)."""

    def __init__(self, config: RLConfig, threads: int) -> None:
        from repulse.trainers.guard import Guard
        from repulse.trainers.rl.models import load_critic

        super().__init__(config, threads)
        self.model = load_critic(config, self.path, self.strategy)
        self.guard, self.critic = Guard(self.strategy), None

    def prepare(self, steps: int) -> None:
        from repulse.trainers.rl.build import critic_of

        self.critic = critic_of(self.config, self.model, self.guard, steps)

    def values(self, rollout) -> torch.Tensor:
        return self.critic.values(rollout.to(self.strategy.device)).cpu()

    def start_update(self, step: int, last_checkpoint: str | None) -> None:
        self.guard.step, self.guard.last_checkpoint = step, last_checkpoint
        self.critic.start_update()

    def backward(self, rollout, old_values: torch.Tensor, returns: torch.Tensor, weight: float) -> float:
        device = self.strategy.device
        return self.critic.backward(rollout.to(device), old_values.to(device), returns.to(device), weight)

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

        save_pretrained_atomic(self.strategy.unwrap(self.model), self.tokenizer, folder)
