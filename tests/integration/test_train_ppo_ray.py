"""train_ppo_ray on a local Ray cluster of CPU actors (repulse's sampler) against train_ppo: with one worker per role
the same metrics, evaluations and final weights with the same seed, for PPO with a critic and a KL penalty (every
role in its own worker) and for RePULSe; a resume from train_ppo's checkpoint; with 2 policy ranks (DDP) RePULSe
equals one process at the same global batch, and PPO with 2 policy and 2 critic ranks equals train_ppo on 2
processes; each rank observed in its placement group and bundle; an impossible request, critic ranks other than
policy ranks, a timeout and a dead worker each one line.

One module-scoped cluster (3 logical CPUs). In the default suite: the one-rank RePULSe equality and the one-line
errors (about a minute on two busy cores); the runs of several workers or ranks are marked `ray`
(`make test-ray`; several minutes on two busy cores)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from repulse.cli import train_ppo, train_ppo_ray
from repulse.trainers.rl import loop
from tests.integration.helpers import load_weights, run_torchrun
from tests.integration.test_train_ppo import GEOMETRY, HARMLESS, REWARD, bad_words_file, prompt_file  # noqa: F401
from tests.integration.test_train_ppo_distributed import GEOMETRY as DIST_GEOMETRY
from tests.integration.test_train_ppo_distributed import assert_same_run as assert_same_toy_run
from tests.integration.test_train_ppo_distributed import (  # noqa: F401
    four_prompts,
    one_process,
    step_rows,
    toy_argv,
    toy_prompts,
)
from tests.integration.test_train_ppo_resume import REPULSE, metric_rows, saved_tensors

ray = pytest.importorskip("ray")
CPUS = 3  # PPO with a critic has four roles: one of the tests needs colocation to fit


@pytest.fixture(scope="module")
def cluster(one_torch_thread):
    # One torch thread here as in each CPU worker: float sums depend on the thread count.
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()


def ppo_flags(prompts: Path, words: Path) -> list[str]:
    data = ["--prompt_data", str(prompts), "--input_key", "prompt", "--init_kl_coef", "0.05"]
    return [*data, "--analytic_bad_word_calc", "--bad_words_file", str(words), "--save_steps", "1"]


REPULSE_FLAGS = [*HARMLESS, *REPULSE, "--parameterization", "policy_psi_q_p_s_t", "--num_episodes", "2"]


def run(module, tmp_path: Path, model: Path, flags: list[str], name: str) -> Path:
    save = tmp_path / name
    common = ["--pretrain", str(model), "--save_path", str(save), *REWARD, *GEOMETRY]
    assert module.main([*common, *flags, "--max_ckpt_num", "9"]) == 0
    return save


def assert_same_run(a: Path, b: Path) -> None:
    ta, tb = saved_tensors(a), saved_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 0
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    assert metric_rows(a) == metric_rows(b)
    for name in ("summary.json", "evaluations.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text())


@pytest.mark.ray
def test_ppo_with_critic_equals_train_ppo_and_resumes_its_checkpoint(
    cluster,
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    capfd,
    monkeypatch,
):
    flags = ppo_flags(prompt_file, bad_words_file)
    full = run(train_ppo, tmp_path, tiny_model_dir, flags, "train_ppo")
    on_ray = run(train_ppo_ray, tmp_path, tiny_model_dir, [*flags, "--colocate_actor_ref"], "ray")
    assert (full / "final_critic").is_dir() and len(metric_rows(full)) > 3
    assert_same_run(full, on_ray)
    # The workers report the placement group they run in: policy and reference share one.
    assert "workers by placement group: policy+reference, critic, reward" in capfd.readouterr().err
    # train_ppo's checkpoint after step 1, resumed on Ray, ends as the uninterrupted run.
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "global_step1", resumed / "checkpoints" / "global_step1")
    shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")
    ran, step = [], loop.train_step  # seeded runs end equal anyway: the steps run show the resume

    def counted(trainer, prompt_ids, index):
        ran.append(index)
        return step(trainer, prompt_ids, index)

    monkeypatch.setattr(loop, "train_step", counted)
    run(train_ppo_ray, tmp_path, tiny_model_dir, [*flags, "--colocate_all_models", "--load_checkpoint"], "resumed")
    assert ran == [1]
    assert_same_run(full, resumed)


def test_repulse_equals_train_ppo(cluster, tmp_path, tiny_model_dir):
    full = run(train_ppo, tmp_path, tiny_model_dir, REPULSE_FLAGS, "train_ppo")
    on_ray = run(train_ppo_ray, tmp_path, tiny_model_dir, REPULSE_FLAGS, "ray")
    assert (on_ray / "final_proposal").is_dir()
    assert_same_run(full, on_ray)


def test_an_impossible_request_is_one_line_within_seconds(
    cluster,
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    capsys,
):
    start = time.monotonic()
    argv = ["--pretrain", str(tiny_model_dir), "--save_path", str(tmp_path / "x"), *REWARD, *GEOMETRY]
    code = train_ppo_ray.main([*argv, *ppo_flags(prompt_file, bad_words_file)])  # four roles on three CPUs
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.monotonic() - start < 20
    assert err[-1].startswith("repulse train_ppo_ray: error: train_ppo_ray needs 4 CPU")
    assert "Traceback" not in "\n".join(err)


@pytest.mark.ray
def test_a_dead_worker_stops_the_run_in_one_line(cluster, tmp_path, tiny_model_dir, capsys):
    argv = ["--pretrain", str(tiny_model_dir), "--save_path", str(tmp_path / "x"), *GEOMETRY, *HARMLESS]
    dying = ["--reward_fn", "tests.integration.dying_reward:score", "--harmlessness_training_loss_type", "reinforce"]
    code = train_ppo_ray.main([*argv, *dying])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("repulse train_ppo_ray: error: reward worker: the worker died")


def test_a_call_past_the_timeout_is_one_line(cluster):
    from repulse.distributed.ray.calls import WorkerError, wait

    @ray.remote(num_cpus=0)
    def slow() -> int:
        time.sleep(30)
        return 1

    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"^sleeper: no answer within 0.5 s \(--ray_timeout\)"):
        wait(slow.remote(), "sleeper", 0.5)
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------------------- N ranks per role
@pytest.fixture
def placements(monkeypatch) -> list[tuple[dict, dict]]:
    """For each run, once its workers are up: ({role: [placement group of each rank]} as the workers report it,
    {(placement group, bundle index): CPUs in use} as Ray accounts for them)."""
    from repulse.distributed.ray import controller

    seen, describe = [], controller.describe_placement

    def recorded(where):
        free = ray.available_resources()
        used = {}
        for group in {g for ranks in where.values() for g in ranks}:
            bundles = ray.util.placement_group_table()[group]["bundles"]
            used |= {(group, i): b["CPU"] - free.get(f"CPU_group_{i}_{group}", 0.0) for i, b in bundles.items()}
        seen.append((where, used))
        return describe(where)

    monkeypatch.setattr(controller, "describe_placement", recorded)
    return seen


@pytest.mark.ray
@pytest.mark.parametrize("strategy", [["--strategy", "ddp"], ["--zero_stage", "2"]], ids=["ddp", "zero2"])
def test_repulse_on_two_policy_ranks_equals_one_process(
    cluster,
    tmp_path,
    toy_prompts,  # noqa: F811
    one_process,  # noqa: F811
    placements,
    strategy,
):
    """The toy RePULSe run of tests/integration/test_train_ppo_distributed.py (4 prompts x 8 samples a step, each
    of 2 policy ranks sampling and training on 2 of them; DDP, or DeepSpeed ZeRO-2) against
    train_ppo on one process at the same global batch: the exact log P(bad) per fit step, the step metrics and the
    final p_theta and q agree. Two reference replicas share the policy ranks' bundles (--colocate_actor_ref); the
    reward replica has a group of its own."""
    ranks = ["--actor_num_gpus_per_node", "2", "--ref_num_gpus_per_node", "2", "--colocate_actor_ref"]
    two = tmp_path / "two"
    assert train_ppo_ray.main(toy_argv(toy_prompts, two, *strategy, *ranks)) == 0
    assert_same_toy_run(one_process, two, ("final", "final_proposal"))
    # Policy and reference rank i share bundle i (half a CPU each); the reward replica has a group of its own.
    ((where, used),) = placements
    group, reward = where["policy"][0], where["reward"][0]
    assert where == {"policy": [group, group], "reference": [group, group], "reward": [reward]} and reward != group
    assert used == {(group, 0): 1.0, (group, 1): 1.0, (reward, 0): 1.0}


@pytest.mark.ray
def test_ppo_critic_group_of_two_equals_train_ppo_on_two_processes(
    cluster,
    tmp_path,
    tiny_model_dir,
    four_prompts,  # noqa: F811
    placements,
):
    """PPO with a critic on 2 policy and 2 critic ranks (DDP, 2 micro-batches accumulated per optimizer step, so
    the critic group's reduction at the boundary is exercised) against train_ppo under torchrun on 2 processes:
    the same metrics and final actor and critic. Every role in one placement group of 2 bundles
    (--colocate_all_models)."""
    argv = ["--pretrain", str(tiny_model_dir), "--prompt_data", str(four_prompts), *DIST_GEOMETRY]
    argv += ["--init_kl_coef", "0.01", "--micro_train_batch_size", "2", "--strategy", "ddp"]
    run_torchrun("repulse.cli.train_ppo", [*argv, "--save_path", str(tmp_path / "torchrun")])
    ranks = ["--actor_num_gpus_per_node", "2", "--critic_num_gpus_per_node", "2", "--colocate_all_models"]
    assert train_ppo_ray.main([*argv, *ranks, "--save_path", str(tmp_path / "ray")]) == 0
    ref, got = step_rows(tmp_path / "torchrun"), step_rows(tmp_path / "ray")
    assert len(ref) == 2 and [r.keys() for r in got] == [r.keys() for r in ref]
    for key in ("reward_mean", "policy_loss", "value_loss", "critic_grad_norm", "actor_grad_norm"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-6), key
    # Adam at lr 1e-2 turns the float noise of gradient entries near zero (summed in another order) into steps of
    # up to ~1e-4 (as in test_train_ppo_distributed); a missing reduction moves the weights by ~1e-2.
    for folder in ("final", "final_critic"):
        a, b = load_weights(tmp_path / "torchrun" / folder), load_weights(tmp_path / "ray" / folder)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-4, msg=f"{folder}: {key}")
    # One group of 2 bundles: rank 0 of the four roles shares bundle 0, rank 1 of policy and critic bundle 1.
    ((where, used),) = placements
    group = where["policy"][0]
    assert where == {"reference": [group], "critic": [group, group], "reward": [group], "policy": [group, group]}
    assert used == {(group, 0): 1.0, (group, 1): 0.5}


def test_critic_ranks_other_than_policy_ranks_is_one_line(cluster, tmp_path, tiny_model_dir, capsys):
    argv = ["--pretrain", str(tiny_model_dir), "--save_path", str(tmp_path / "x"), *REWARD, *GEOMETRY]
    code = train_ppo_ray.main([*argv, "--actor_num_gpus_per_node", "2", "--critic_num_nodes", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(
        "repulse train_ppo_ray: error: --critic_num_nodes x --critic_num_gpus_per_node = 3 critic ranks, but the "
        "policy has 2"
    )
