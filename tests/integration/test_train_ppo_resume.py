"""train_ppo --load_checkpoint: a run resumed from a checkpoint runs only the steps after it, starts from the
state it holds, and ends with the same models and metrics as the uninterrupted run (REINFORCE, PPO with a critic,
PPO-ptx, RePULSe, RePULSe with a modulated proposal). Every run is seeded, so equal outputs alone would not show
that anything was resumed: the step count and a perturbed checkpoint do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repulse.infra.checkpoint import Checkpointer
from repulse.trainers.rl import loop
from tests.conftest import write_jsonl
from tests.integration.test_train_ppo import HARMLESS, bad_words_file, prompt_file, run  # noqa: F401

REPULSE = [
    "--harmlessness_training_loss_type",
    "neg_training",
    "--target_dist_beta",
    "-1",
    "--alpha",
    "0.5",
    "--actor_loss_type",
    "ctl",
]


def saved_tensors(save: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every final model folder (final/, final_proposal/ with its head, final_critic/...)."""
    out = {}
    for file in sorted(save.glob("final*/**/*.safetensors")):
        out.update({f"{file.relative_to(save)}:{k}": v for k, v in load_file(str(file)).items()})
    return out


def metric_rows(save: Path) -> list[dict]:
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ptx_file(tmp_path_factory) -> Path:
    rows = [{"body": f"the {who} is {adj} ."} for who in ("man", "woman") for adj in ("kind", "tall", "nice")]
    return write_jsonl(tmp_path_factory.mktemp("ptx") / "ptx.jsonl", rows)


def modes(prompts: Path, words: Path, ptx: Path) -> dict[str, tuple[list[str], int]]:
    """(flags, the step of the checkpoint to resume from) per mode."""
    data = ["--prompt_data", str(prompts), "--input_key", "prompt"]
    reinforce = ["--actor_loss_type", "reinforce", "--reinforce_baseline_type", "expectation"]
    evals = ["--analytic_bad_word_calc", "--bad_words_file", str(words), "--fit_steps", "2"]
    anneal = ["--anneal_target_dist_beta", "--start_target_dist_beta", "-0.1"]
    return {
        # 2 steps per fit x 2 fits: the checkpoint at step 2 sits on the fit boundary; the EMA copy resumes too.
        "reinforce_ema": ([*data, *reinforce, "--fit_steps", "2", "--enable_ema", "--save_steps", "2"], 2),
        # PPO with its critic and an adaptive KL coefficient, from a checkpoint in the middle of episode 1.
        "ppo_critic": ([*data, "--num_episodes", "2", "--kl_target", "0.01", "--save_steps", "1"], 1),
        # The pre-training stream must continue where it stopped.
        "ppo_ptx": (
            [
                *data,
                "--num_episodes",
                "2",
                "--save_steps",
                "3",
                "--pretrain_data",
                str(ptx),
                "--pretrain_input_key",
                "body",
                "--ptx_coef",
                "0.5",
                "--micro_train_batch_size",
                "4",
            ],
            3,
        ),
        # 3 steps per fit x 2 fits: the exact evaluations after fit 1 and the annealed beta.
        "repulse": (
            [
                *HARMLESS,
                *REPULSE,
                "--parameterization",
                "policy_psi_q_p_s_t",
                *evals,
                *anneal,
                "--save_steps_harmless",
                "3",
            ],
            3,
        ),
        "repulse_modulated": (
            [*HARMLESS, *REPULSE, "--parameterization", "modulation_nn_head", "--save_steps_harmless", "1"],
            2,
        ),
    }


def interrupted_copy(full: Path, step: int, tmp_path: Path) -> None:
    """What an interrupted run leaves: its checkpoint at `step` and the metrics it had logged, rows from after the
    checkpoint included (a resumed run must drop them and write them again)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / f"global_step{step}", resumed / "checkpoints" / f"global_step{step}")
    shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")


def resume(tmp_path: Path, model: Path, flags: list[str], monkeypatch) -> tuple[Path, list[int]]:
    """The resumed run, and the (0-based) steps it ran."""
    ran, step = [], loop.train_step

    def counted(trainer, prompt_ids, index):
        ran.append(index)
        return step(trainer, prompt_ids, index)

    monkeypatch.setattr(loop, "train_step", counted)
    code, save = run(tmp_path, model, *flags, "--max_ckpt_num", "9", "--load_checkpoint", name="resumed")
    assert code == 0
    return save, ran


@pytest.mark.parametrize("mode", ["reinforce_ema", "ppo_critic", "ppo_ptx", "repulse", "repulse_modulated"])
def test_resume_equals_uninterrupted_run(
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    ptx_file,  # noqa: F811
    monkeypatch,
    mode,
):
    flags, step = modes(prompt_file, bad_words_file, ptx_file)[mode]
    code, full = run(tmp_path, tiny_model_dir, *flags, "--max_ckpt_num", "9", name="full")
    assert code == 0
    interrupted_copy(full, step, tmp_path)
    resumed, ran = resume(tmp_path, tiny_model_dir, flags, monkeypatch)
    total = json.loads((full / "summary.json").read_text())["steps"]
    assert ran == list(range(step, total))  # only the steps after the checkpoint
    a, b = saved_tensors(full), saved_tensors(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert metric_rows(resumed) == metric_rows(full)
    assert json.loads((resumed / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())


@pytest.mark.parametrize(
    ("part", "changed"),
    [("policy", "final/"), ("proposal", "final_proposal/"), ("optimizer", "final/")],
)
def test_resume_starts_from_the_checkpoint_state(
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    ptx_file,  # noqa: F811
    monkeypatch,
    part,
    changed,
):
    """A checkpoint whose p_theta, q or p_theta's optimizer state is changed on loading gives a different end: the
    resumed run trains from what the checkpoint holds, not from a restart (which would match the full run)."""
    flags, step = modes(prompt_file, bad_words_file, ptx_file)["repulse"]
    code, full = run(tmp_path, tiny_model_dir, *flags, "--max_ckpt_num", "9", name="full")
    assert code == 0
    interrupted_copy(full, step, tmp_path)
    load = Checkpointer.load

    def perturbed(self, path):
        state = load(self, path)
        if part == "optimizer":
            for entry in state["trainer"]["policy"]["optimizer"]["state"].values():
                entry["exp_avg_sq"].mul_(100.0)
        else:
            for tensor in state["models"][part].values():
                tensor.add_(0.05)
        return state

    monkeypatch.setattr(Checkpointer, "load", perturbed)
    resumed, ran = resume(tmp_path, tiny_model_dir, flags, monkeypatch)
    assert ran[0] == step
    a, b = saved_tensors(full), saved_tensors(resumed)
    assert [k for k in a if k.startswith(changed) and not torch.equal(a[k], b[k])]


def test_checkpoint_of_another_configuration_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    code, full = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        *REPULSE,
        "--parameterization",
        "policy_psi_q_p_s_t",
        "--save_steps_harmless",
        "3",
        name="repulse",
    )
    assert code == 0
    capsys.readouterr()
    code, _ = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_loss_type",
        "reinforce",
        "--load_checkpoint",
        "--ckpt_path",
        str(full / "checkpoints"),
        name="reinforce",
    )
    err = capsys.readouterr().err
    assert code == 2 and "was written with --" in err and "Traceback" not in err


PLAIN = (torch.Tensor, int, float, str, bool, type(None))


def non_plain(value, where: str = "state") -> list[str]:
    """Paths in a checkpoint state that hold anything but tensors, numbers, strings, booleans, None, and lists /
    tuples / dicts (string keys) of these: such a state loads without running code."""
    if isinstance(value, dict):
        return [f"{where}[{k!r}]" for k in value if not isinstance(k, str | int)] + [
            p for k, v in value.items() for p in non_plain(v, f"{where}[{k!r}]")
        ]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_plain(v, f"{where}[{i}]")]
    return [] if isinstance(value, PLAIN) else [f"{where}: {type(value).__name__}"]


@pytest.mark.parametrize("mode", ["ppo_ptx", "repulse_modulated", "reinforce_ema"])
def test_checkpoints_hold_only_plain_values(
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    ptx_file,  # noqa: F811
    monkeypatch,
    mode,
):
    states, save = [], Checkpointer.save

    def capture(self, step, state, extra=None, collective=None):
        states.append(state)
        return save(self, step, state, extra, collective)

    monkeypatch.setattr(Checkpointer, "save", capture)
    flags, _ = modes(prompt_file, bad_words_file, ptx_file)[mode]
    code, _ = run(tmp_path, tiny_model_dir, *flags, name="plain")
    assert code == 0 and states
    assert [p for state in states for p in non_plain(state)] == []
    assert non_plain({"a": [1, object()]}) == ["state['a'][1]: object"]  # the check has power
