"""Stand-ins, inside the policy worker, for the models other workers hold: the trainers call them as they call
local ones (trainers/rl/build.RemoteRoles). Tensors travel on the CPU; every call waits at most --ray_timeout."""

from __future__ import annotations

from typing import Any

import torch

from repulse.distributed.ray.calls import wait


class RemoteReference:
    """p_0 in the reference worker: response_token_logps(this, rollout) scores there."""

    def __init__(self, handle, timeout: float) -> None:
        self.handle, self.timeout = handle, timeout

    def remote_response_logps(self, rollout) -> torch.Tensor:
        device = rollout.sequences.device
        logps = wait(self.handle.response_logps.remote(rollout.to("cpu")), "reference worker", self.timeout)
        return logps.to(device)


class RemoteReward:
    """The reward source in the reward worker."""

    def __init__(self, handle, timeout: float) -> None:
        self.handle, self.timeout = handle, timeout

    def __call__(self, prompts, responses) -> torch.Tensor:
        return wait(self.handle.score.remote(list(prompts), list(responses)), "reward worker", self.timeout)


class RemoteCritic:
    """PPO's Critic in the critic worker; the guard's position (step, last checkpoint) goes with each update."""

    def __init__(self, handle, guard, timeout: float) -> None:
        self.handle, self.guard, self.timeout = handle, guard, timeout

    def call(self, method: str, *args: Any) -> Any:
        return wait(getattr(self.handle, method).remote(*args), "critic worker", self.timeout)

    def prepare(self, steps: int) -> RemoteCritic:
        self.call("prepare", steps)
        return self

    def values(self, rollout) -> torch.Tensor:
        return self.call("values", rollout.to("cpu")).to(rollout.sequences.device)

    def start_update(self) -> None:
        self.call("start_update", self.guard.step, self.guard.last_checkpoint)

    def backward(
        self, rollout, old_values: torch.Tensor, returns: torch.Tensor, weight: float, boundary: bool = True
    ) -> float:
        # `boundary`: the critic group's strategy reduces the gradients on the step's last micro-batch only.
        return self.call("backward", rollout.to("cpu"), old_values.cpu(), returns.cpu(), weight, boundary)

    def step(self) -> float:
        return self.call("step")

    def state_dict(self) -> dict[str, Any]:
        return self.call("state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.call("load_state_dict", state)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.call("weights")

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.call("load_weights", weights)

    def save_pretrained(self, folder: str) -> None:
        self.call("save_pretrained", folder)
