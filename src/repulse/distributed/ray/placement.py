"""Where the workers of train_ppo_ray run: one placement group per set of colocated roles, checked against the
cluster before anything starts (a request the cluster cannot hold would otherwise wait forever).

Each rank takes a bundle of one GPU and one CPU on a cluster with GPUs, one CPU on a cluster without; roles in a
colocated group share its bundle in equal fractions, as OpenRLHF shares a GPU between colocated models.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.ray_cluster import RayArgs
from repulse.infra.errors import UserError

GROUP_READY_S = 60.0  # how long the placement groups may take to be placed once the resources are known to exist


@dataclass(frozen=True)
class Placement:
    """The groups of roles that share a placement group (one bundle each: one rank per role)."""

    groups: tuple[tuple[str, ...], ...]
    use_gpu: bool

    def bundle(self) -> dict[str, float]:
        return {"GPU": 1.0, "CPU": 1.0} if self.use_gpu else {"CPU": 1.0}

    def needed(self) -> dict[str, float]:
        """Resources over all groups."""
        return {k: v * len(self.groups) for k, v in self.bundle().items()}

    def group_of(self, role: str) -> int:
        return next(i for i, group in enumerate(self.groups) if role in group)

    def share(self, role: str) -> dict[str, float]:
        """The actor options' resources of `role`: its fraction of its group's bundle."""
        n = len(self.groups[self.group_of(role)])
        out = {"num_cpus": 1.0 / n}
        if self.use_gpu:
            out["num_gpus"] = 1.0 / n
        return out


def plan_placement(roles: tuple[str, ...], args: RayArgs, use_gpu: bool) -> Placement:
    """Roles ('policy', 'reference', 'critic', 'reward'; those the run has) grouped by the colocation flags."""
    if args.colocate_all_models:
        return Placement((roles,), use_gpu)
    together = []
    if args.colocate_actor_ref:
        together.append({"policy", "reference"})
    if args.colocate_critic_reward:
        together.append({"critic", "reward"})
    groups, seen = [], set()
    for role in roles:
        if role in seen:
            continue
        mates = next((g for g in together if role in g), {role})
        group = tuple(r for r in roles if r in mates)
        seen.update(group)
        groups.append(group)
    return Placement(tuple(groups), use_gpu)


def check_resources(placement: Placement, available: dict[str, float]) -> None:
    """One line when the cluster cannot hold the request (never a placement group that waits forever)."""
    for kind, amount in placement.needed().items():
        have = available.get(kind, 0.0)
        if have + 1e-9 < amount:
            layout = ", ".join("+".join(group) for group in placement.groups)
            raise UserError(
                f"train_ppo_ray needs {amount:g} {kind} (one per placement group: {layout}) but the Ray cluster has "
                f"{have:g}: start Ray with more (ray start --num-cpus / --num-gpus) or colocate the roles "
                "(--colocate_actor_ref, --colocate_critic_reward, --colocate_all_models)"
            )


def create_groups(placement: Placement, timeout: float = GROUP_READY_S) -> list:
    """One placement group per group of roles, placed within `timeout` seconds (else one line)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = [placement_group([placement.bundle()], strategy="PACK") for _ in placement.groups]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout)
    if len(ready) < len(groups):
        for group in groups:
            remove_placement_group(group)
        raise UserError(f"train_ppo_ray: the Ray cluster did not place {placement.groups} within {timeout:g} s")
    return groups


def actor_options(placement: Placement, groups: list, role: str, env: dict[str, str]) -> dict:
    """The .options() of `role`'s worker: its share of its group's bundle, and the driver's import path."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(groups[placement.group_of(role)], placement_group_bundle_index=0)
    return {**placement.share(role), "scheduling_strategy": strategy, "runtime_env": {"env_vars": env}}
