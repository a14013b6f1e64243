"""train_ppo on 2 gloo processes under torchrun equals one process with the same global batch: each rank samples
its own share of a step's prompts (drawing what one process draws for them), the strategy reduces the
gradients of every trained model, and the exact P(bad) per fit step and the final weights agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repulse.cli import train_ppo
from repulse.config.rollout import DEFAULT_SINGLE_PROMPT
from tests.conftest import write_jsonl
from tests.integration.helpers import load_weights, run_torchrun
from tests.integration.launchers import launch

# The demo's RePULSe toy (embedded tiny LM and reward model, "This man is a" + 2 tokens), 2 fit steps, two q
# updates per step, 2 prompts x 16 samples per step: one per rank on 2 processes, one optimizer step of 32 rows.
TOY = [
    "--config",
    "configs/toy_repulse.yaml",
    "--seed",
    "1",
    "--fit_steps",
    "2",
    "--harmlessness_training_num_episodes",
    "2",
    "--num_episodes",
    "2",
    "--duplicate_rollout_batch_by",
    "16",
    "--rollout_batch_size",
    "2",
    "--micro_rollout_batch_size",
    "1",
    "--micro_train_batch_size",
    "16",
    "--train_batch_size",
    "32",
]


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory) -> Path:
    """The toy's prompt twice: one process samples both groups, two processes one each."""
    rows = [{"prompt": DEFAULT_SINGLE_PROMPT}] * 2
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def toy_argv(prompts: Path, save: Path, *extra: str) -> list[str]:
    return [
        *TOY,
        "--new_custom_single_prompt",
        "false",
        "--prompt_data",
        str(prompts),
        "--save_path",
        str(save),
        *extra,
    ]


def evaluations(save: Path) -> list[float]:
    return [e["exact_log_p_bad"] for e in json.loads((save / "evaluations.json").read_text())]


def step_rows(save: Path) -> list[dict]:
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward_mean" in r]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, toy_prompts) -> Path:
    save = tmp_path_factory.mktemp("one") / "run"
    assert train_ppo.main(toy_argv(toy_prompts, save)) == 0
    return save


def assert_same_run(one: Path, two: Path, folders: tuple[str, ...]) -> None:
    assert evaluations(two) == pytest.approx(evaluations(one), abs=1e-5)
    assert len(evaluations(one)) == 3  # before training and after each fit step
    ref, got = step_rows(one), step_rows(two)
    assert [r["samples_used"] for r in got] == [r["samples_used"] for r in ref]
    for key in ("reward_mean", "proposal_reward_mean", "base_loss", "proposal_loss"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-6), key
    for folder in folders:
        a, b = load_weights(one / folder), load_weights(two / folder)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=f"{folder}: {key}")


def test_repulse_ddp_two_processes_equal_one(tmp_path, toy_prompts, one_process):
    save = tmp_path / "two"
    done = run_torchrun("repulse.cli.train_ppo", toy_argv(toy_prompts, save, "--strategy", "ddp"))
    assert "strategy: torch DDP, rank 0 of 2" in done.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))


def test_repulse_ddp_resumed_equals_one_process(tmp_path, toy_prompts, one_process):
    """Stopped after step 2 of 4 (checkpoints every 2 steps), resumed on 2 processes: the same run."""
    save = tmp_path / "two"
    argv = toy_argv(toy_prompts, save, "--strategy", "ddp", "--save_steps_harmless", "2")
    stopped = launch("torchrun", "tests.integration.interrupt", ["2", "repulse.cli.train_ppo", *argv], ok=False)
    assert stopped.returncode != 0 and not (save / "final").exists(), stopped.stderr[-3000:]
    assert sorted(p.name for p in (save / "checkpoints").iterdir()) == ["global_step2"]
    resumed = launch("torchrun", "repulse.cli.train_ppo", [*argv, "--load_checkpoint"])
    assert f"resumed from {save / 'checkpoints' / 'global_step2'} (step 2)" in resumed.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))


@pytest.mark.parametrize("stage", [2, 3])
def test_repulse_deepspeed_two_processes_equal_one(tmp_path, toy_prompts, one_process, stage):
    """One DeepSpeed engine per trained model (p_theta, q), ZeRO-3 sampling in lock-step; stopped after step 2
    and resumed from DeepSpeed's own shards."""
    save = tmp_path / "two"
    argv = toy_argv(toy_prompts, save, "--zero_stage", str(stage), "--save_steps_harmless", "2")
    stopped = launch("deepspeed", "tests.integration.interrupt", ["2", "repulse.cli.train_ppo", *argv], ok=False)
    assert f"DeepSpeed ZeRO-{stage}, rank 0 of 2" in stopped.stderr
    assert (save / "checkpoints" / "global_step2" / "proposal" / "deepspeed").is_dir(), stopped.stderr[-3000:]
    resumed = launch("torchrun", "repulse.cli.train_ppo", [*argv, "--load_checkpoint"])
    assert f"resumed from {save / 'checkpoints' / 'global_step2'} (step 2)" in resumed.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))
