"""train_ppo_ray on a local Ray cluster of CPU actors (one worker per role, repulse's sampler) against train_ppo:
the same metrics, evaluations and final weights with the same seed, for PPO with a critic and a KL penalty (every
role in its own worker) and for RePULSe; a resume from train_ppo's checkpoint; colocation observed in the
workers' placement groups; an impossible request, a timeout and a dead worker each one line.

Marked `ray` (deselected by default; `make test-ray`): each run starts four worker processes (about a minute on
two busy cores)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from repulse.cli import train_ppo, train_ppo_ray
from repulse.trainers.rl import loop
from tests.integration.test_train_ppo import GEOMETRY, HARMLESS, REWARD, bad_words_file, prompt_file  # noqa: F401
from tests.integration.test_train_ppo_resume import REPULSE, metric_rows, saved_tensors

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
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
