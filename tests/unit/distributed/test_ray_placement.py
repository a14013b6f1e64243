"""train_ppo_ray's placement plan (no Ray needed): the colocation flags group the roles, each group has one bundle
per rank (as many as its role with the most) that rank i of its roles share in equal fractions, critic ranks must
equal policy ranks, and a request the cluster cannot hold is one line naming what is missing."""

from __future__ import annotations

import pytest

from repulse.config.fields import ConfigError
from repulse.config.ray_cluster import RayArgs
from repulse.distributed.ray.placement import check_resources, plan_placement
from repulse.infra.errors import UserError

PPO = ("policy", "reference", "critic", "reward")


@pytest.mark.parametrize(
    ("flags", "groups"),
    [
        ({}, (("policy",), ("reference",), ("critic",), ("reward",))),
        ({"colocate_actor_ref": True}, (("policy", "reference"), ("critic",), ("reward",))),
        ({"colocate_critic_reward": True}, (("policy",), ("reference",), ("critic", "reward"))),
        (
            {"colocate_actor_ref": True, "colocate_critic_reward": True},
            (("policy", "reference"), ("critic", "reward")),
        ),
        ({"colocate_all_models": True}, (PPO,)),
    ],
)
def test_colocation_flags_group_the_roles(flags, groups):
    assert plan_placement(PPO, RayArgs(**flags), use_gpu=False).groups == groups


def test_without_a_critic_critic_reward_colocation_leaves_the_reward_alone():
    roles = ("policy", "reference", "reward")
    assert plan_placement(roles, RayArgs(colocate_critic_reward=True), use_gpu=False).groups == (
        ("policy",),
        ("reference",),
        ("reward",),
    )


def test_colocated_roles_share_their_bundle():
    gpu = plan_placement(PPO, RayArgs(colocate_actor_ref=True), use_gpu=True)
    assert gpu.bundle() == {"GPU": 1.0, "CPU": 1.0} and gpu.needed() == {"GPU": 3.0, "CPU": 3.0}
    assert gpu.share("policy") == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert gpu.share("critic") == {"num_cpus": 1.0, "num_gpus": 1.0}
    cpu = plan_placement(PPO, RayArgs(colocate_all_models=True), use_gpu=False)
    assert cpu.needed() == {"CPU": 1.0} and cpu.share("reward") == {"num_cpus": 0.25}


def test_an_impossible_request_names_what_is_missing():
    placement = plan_placement(PPO, RayArgs(), use_gpu=False)
    check_resources(placement, {"CPU": 4.0})
    with pytest.raises(UserError, match=r"needs 4 CPU .* the Ray cluster has 2:"):
        check_resources(placement, {"CPU": 2.0})
    with pytest.raises(UserError, match=r"needs 1 GPU"):
        check_resources(plan_placement(PPO, RayArgs(colocate_all_models=True), use_gpu=True), {"CPU": 8.0})


def test_each_group_has_a_bundle_per_rank_of_its_largest_role():
    ranks = {"actor_num_nodes": 2, "actor_num_gpus_per_node": 2, "ref_num_gpus_per_node": 2}
    args = RayArgs(**ranks, critic_num_nodes=4, colocate_actor_ref=True)
    placement = plan_placement(PPO, args, use_gpu=True)
    assert [placement.bundles(i) for i in range(3)] == [4, 4, 1]  # policy x4 + reference x2, critic x4, reward
    assert placement.needed() == {"GPU": 9.0, "CPU": 9.0}
    assert placement.share("reference") == {"num_cpus": 0.5, "num_gpus": 0.5}
    with pytest.raises(UserError, match=r"^train_ppo_ray needs 9 GPU \(one per rank .*: policy x4\+reference x2, "):
        check_resources(placement, {"GPU": 8.0, "CPU": 9.0})
    together = plan_placement(PPO, RayArgs(**ranks, critic_num_nodes=4, colocate_all_models=True), use_gpu=False)
    assert together.needed() == {"CPU": 4.0} and together.share("critic") == {"num_cpus": 0.25}


def test_critic_ranks_must_equal_policy_ranks():
    with pytest.raises(UserError, match=r"^--critic_num_nodes x --critic_num_gpus_per_node = 1 critic ranks, but "):
        plan_placement(PPO, RayArgs(actor_num_gpus_per_node=2), use_gpu=False)
    no_critic = ("policy", "reference", "reward")  # REINFORCE, RePULSe: no critic group to match
    assert plan_placement(no_critic, RayArgs(actor_num_gpus_per_node=2), use_gpu=False).bundles(0) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"ref_num_nodes": 0}, "--ref_num_nodes must be >= 1"),
        ({"vllm_num_engines": -1}, "--vllm_num_engines must be >= 0"),
        ({"ray_timeout": 0}, "--ray_timeout must be > 0"),
    ],
)
def test_flags_not_supported_yet_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        RayArgs(**flags)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    import sys

    from repulse.distributed.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError
    with pytest.raises(UserError, match=r"pip install 'repulse\[ray\]'"):
        import_ray()
