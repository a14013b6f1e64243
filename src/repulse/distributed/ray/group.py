"""A role's ranks on the cluster: one Ray actor per rank, each in its bundle of the role's placement group.

The ranks of a group that trains (policy, critic) meet in a torch.distributed process group of their own, as
OpenRLHF's DistributedTorchRayActor does: rank 0 names its node's address and a free port there, and every rank
gets RANK, WORLD_SIZE, LOCAL_RANK (0: Ray shows each actor its own GPU), MASTER_ADDR and MASTER_PORT before its
strategy (train_ppo's, from the same flags) initialises. Replicas (reference, reward) are one-process workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repulse.distributed.ray.calls import wait


@dataclass
class WorkerGroup:
    role: str
    ranks: list[Any]  # actor handles, rank order
    timeout: float

    def __len__(self) -> int:
        return len(self.ranks)

    def fire(self, method: str, *args: Any) -> list:
        """Every rank's call started (object refs): a collective phase must reach all ranks at once."""
        return [getattr(rank, method).remote(*args) for rank in self.ranks]

    def call_all(self, method: str, *args: Any) -> list:
        """Every rank's answer, in rank order."""
        return wait(self.fire(method, *args), f"{self.role} worker ({method})", self.timeout)

    def call(self, method: str, *args: Any) -> Any:
        """The call on every rank; rank 0's answer (the metrics, evaluations and outputs are rank 0's)."""
        return self.call_all(method, *args)[0]

    def fire_setup(self, envs: list[dict[str, str] | None]) -> list:
        return [rank.setup.remote(env) for rank, env in zip(self.ranks, envs, strict=True)]

    def handle(self, i: int) -> Any:
        """The rank that rank i of another group calls: rank i mod the group's size (replicas), or rank i."""
        return self.ranks[i % len(self.ranks)]


def rank_envs(group: WorkerGroup, trains: bool) -> list[dict[str, str] | None]:
    """Each rank's torch.distributed variables (None for replicas), with rank 0's address and a free port."""
    if not trains:
        return [None] * len(group)
    address, port = wait(group.ranks[0].master_address.remote(), f"{group.role} worker (rank 0)", group.timeout)
    world = len(group)
    return [
        {"RANK": str(i), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": address, "MASTER_PORT": str(port)}
        for i in range(world)
    ]


def setup_groups(groups: dict[str, WorkerGroup], training: tuple[str, ...]) -> None:
    """Set every rank of every group up at once (a group's process group forms only when all its ranks join);
    one line naming the first role that failed."""
    started = {role: g.fire_setup(rank_envs(g, role in training)) for role, g in groups.items()}
    for role, refs in started.items():
        wait(refs, f"{role} worker (loading)", groups[role].timeout)
