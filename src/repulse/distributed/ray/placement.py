"""Where the workers of train_ppo_ray run: one placement group per set of colocated roles, checked against the
cluster before anything starts (a request the cluster cannot hold would otherwise wait forever).

Each rank takes a bundle of one GPU and one CPU on a cluster with GPUs, one CPU on a cluster without. A placement
group has one bundle per rank (as many as its role with the most ranks); colocated roles share bundle i in equal
fractions (rank i of each role), as OpenRLHF shares a GPU between colocated models.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.ray_cluster import RayArgs
from repulse.infra.errors import UserError

GROUP_READY_S = 60.0  # how long the placement groups may take to be placed once the resources are known to exist


@dataclass(frozen=True)
class Placement:
    """The groups of roles that share a placement group, and each role's ranks (one bundle per rank)."""

    groups: tuple[tuple[str, ...], ...]
    use_gpu: bool
    ranks: tuple[tuple[str, int], ...] = ()

    def ranks_of(self, role: str) -> int:
        return dict(self.ranks).get(role, 1)

    def bundle(self) -> dict[str, float]:
        return {"GPU": 1.0, "CPU": 1.0} if self.use_gpu else {"CPU": 1.0}

    def bundles(self, group: int) -> int:
        """The bundles of placement group `group`: one per rank of its role with the most."""
        return max(self.ranks_of(role) for role in self.groups[group])

    def needed(self) -> dict[str, float]:
        """Resources over all groups."""
        n = sum(self.bundles(i) for i in range(len(self.groups)))
        return {k: v * n for k, v in self.bundle().items()}

    def group_of(self, role: str) -> int:
        return next(i for i, group in enumerate(self.groups) if role in group)

    def share(self, role: str) -> dict[str, float]:
        """The actor options' resources of each rank of `role`: its fraction of its bundle."""
        n = len(self.groups[self.group_of(role)])
        out = {"num_cpus": 1.0 / n}
        if self.use_gpu:
            out["num_gpus"] = 1.0 / n
        return out

    def layout(self) -> str:
        """'policy x2+reference x2, reward': the groups, with each role's ranks where more than one."""

        def named(role: str) -> str:
            n = self.ranks_of(role)
            return role if n == 1 else f"{role} x{n}"

        return ", ".join("+".join(named(r) for r in group) for group in self.groups)


def plan_placement(roles: tuple[str, ...], args: RayArgs, use_gpu: bool) -> Placement:
    """Roles ('policy', 'reference', 'critic', 'reward'; those the run has) grouped by the colocation flags."""
    ranks = tuple((role, args.ranks(role)) for role in roles)
    if "critic" in roles and args.ranks("critic") != args.ranks("policy"):
        raise UserError(
            f"--critic_num_nodes x --critic_num_gpus_per_node = {args.ranks('critic')} critic ranks, but the policy "
            f"has {args.ranks('policy')} (--actor_num_nodes x --actor_num_gpus_per_node): policy rank i trains "
            "with critic rank i, so the two must be equal"
        )
    if args.colocate_all_models:
        return Placement((roles,), use_gpu, ranks)
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
    return Placement(tuple(groups), use_gpu, ranks)


def check_resources(placement: Placement, available: dict[str, float]) -> None:
    """One line when the cluster cannot hold the request (never a placement group that waits forever)."""
    for kind, amount in placement.needed().items():
        have = available.get(kind, 0.0)
        if have + 1e-9 < amount:
            raise UserError(
                f"train_ppo_ray needs {amount:g} {kind} (one per rank of each placement group: {placement.layout()}) "
                f"but the Ray cluster has {have:g}: start Ray with more (ray start --num-cpus / --num-gpus), use "
                "fewer ranks or colocate the roles (--colocate_actor_ref, --colocate_critic_reward, "
                "--colocate_all_models)"
            )


def create_groups(placement: Placement, timeout: float = GROUP_READY_S) -> list:
    """One placement group per group of roles, placed within `timeout` seconds (else one line)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = [
        placement_group([placement.bundle()] * placement.bundles(i), strategy="PACK")
        for i in range(len(placement.groups))
    ]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout)
    if len(ready) < len(groups):
        for group in groups:
            remove_placement_group(group)
        raise UserError(f"train_ppo_ray: the Ray cluster did not place {placement.layout()} within {timeout:g} s")
    return groups


def actor_options(placement: Placement, groups: list, role: str, rank: int, env: dict[str, str]) -> dict:
    """The .options() of rank `rank` of `role`: its share of bundle `rank` of its group, the driver's import path."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = groups[placement.group_of(role)]
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
    return {**placement.share(role), "scheduling_strategy": strategy, "runtime_env": {"env_vars": env}}
