"""What a training run does with its output folder: it never takes over another run's checkpoints, resumes only
its own configuration, survives what a killed run left, writes Hugging Face checkpoints on request, uses the
user's umask, warns before replacing outputs, and writes no API key anywhere."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from repulse.cli import train_sft
from tests.integration.helpers import TRAIN_FLAGS

FLAGS = [*TRAIN_FLAGS, "--max_samples", "16", "--save_steps", "1"]  # 2 steps, a checkpoint after each


def run(model_dir: Path, data: Path, save: Path, *extra: str) -> int:
    return train_sft.main(
        ["--pretrain", str(model_dir), "--dataset", str(data), "--save_path", str(save), *FLAGS, *extra]
    )


def checkpoint_names(save: Path) -> list[str]:
    return sorted(p.name for p in (save / "checkpoints").iterdir())


def test_a_new_run_refuses_another_runs_checkpoints(tmp_path, tiny_model_dir, sft_file, capsys):
    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "3") == 0  # steps 1-6
    assert checkpoint_names(save) == ["global_step4", "global_step5", "global_step6"]
    config_before = (save / "config.yaml").read_text()
    capsys.readouterr()
    assert run(tiny_model_dir, sft_file, save) == 2  # a different, fresh run in the same folder
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert f"{save / 'checkpoints'} already holds checkpoints of an earlier run" in line
    assert "--load_checkpoint" in line and "--save_path" in line and "Traceback" not in err
    assert checkpoint_names(save) == ["global_step4", "global_step5", "global_step6"]  # nothing deleted
    assert (save / "config.yaml").read_text() == config_before  # nothing written


def test_resume_refuses_another_configuration(tmp_path, tiny_model_dir, sft_file, capsys):
    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "2") == 0
    capsys.readouterr()
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "1", "--load_checkpoint") == 2
    err = capsys.readouterr().err
    assert "global_step4 was written with --max_epochs 2, this run has 1" in err
    assert "Traceback" not in err
    # Flags that do not shape training may change: a resume with another --logging_steps is accepted.
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "2", "--load_checkpoint", "--logging_steps", "2") == 0


def test_resume_refuses_a_checkpoint_of_another_command(tmp_path, tiny_model_dir, sft_file, pref_file, capsys):
    from repulse.cli import train_dpo

    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save) == 0
    argv = ["--pretrain", str(tiny_model_dir), "--dataset", str(pref_file), "--save_path", str(save), *FLAGS]
    assert train_dpo.main([*argv, "--load_checkpoint"]) == 2
    assert "written by the command 'train_sft', this run has 'train_dpo'" in capsys.readouterr().err


def test_resume_survives_a_torn_metrics_line_and_leftover_temporaries(tmp_path, tiny_model_dir, sft_file, capsys):
    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "2") == 0
    shutil.rmtree(save / "checkpoints" / "global_step4")  # as if killed after step 3's checkpoint
    with (save / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.')  # and mid-line
    leftovers = [
        save / "checkpoints" / ".global_step4.k2j3h4g5.repulse-tmp",
        save / "checkpoints" / ".rng_step4_rank0.repulse-tmp",
        save / ".final.abcd1234.repulse-tmp",
        save / ".metrics.jsonl.q1w2e3r4.repulse-tmp",
    ]
    for path in leftovers:
        path.mkdir() if "metrics" not in path.name else path.write_text("half")
    capsys.readouterr()
    assert run(tiny_model_dir, sft_file, save, "--max_epochs", "2", "--load_checkpoint") == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "global_step3" in err
    assert not any(path.exists() for path in leftovers)
    steps = [json.loads(line)["step"] for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_save_hf_ckpt_writes_transformers_checkpoints(tmp_path, tiny_model_dir, sft_file):
    from transformers import AutoModelForCausalLM

    from repulse.infra.state_files import load_state

    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save, "--save_hf_ckpt") == 0
    for step in (1, 2):
        folder = save / "checkpoints" / f"global_step{step}"
        model = AutoModelForCausalLM.from_pretrained(folder / "final")
        trained = load_state(folder, "training_state")["model"]
        weights = dict(model.named_parameters())
        assert all((weights[name].detach() == value).all() for name, value in trained.items())
    assert (save / "checkpoints" / "global_step2" / "final" / "tokenizer.json").exists()
    plain = tmp_path / "plain"
    assert run(tiny_model_dir, sft_file, plain) == 0
    assert not (plain / "checkpoints" / "global_step2" / "final").exists()


def test_outputs_follow_the_umask(tmp_path, tiny_model_dir, sft_file):
    old = os.umask(0o022)
    try:
        assert run(tiny_model_dir, sft_file, tmp_path / "run", "--save_hf_ckpt") == 0
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path): p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*")}
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)}
    assert wrong == {}
    assert Path("run/final/model.safetensors") in modes


def test_rerunning_into_a_folder_with_outputs_says_so(tmp_path, tiny_model_dir, sft_file, capsys):
    save = tmp_path / "run"
    assert (
        train_sft.main(
            ["--pretrain", str(tiny_model_dir), "--dataset", str(sft_file), "--save_path", str(save), *TRAIN_FLAGS]
        )
        == 0
    )
    assert "already holds outputs" not in capsys.readouterr().err
    assert (
        train_sft.main(
            ["--pretrain", str(tiny_model_dir), "--dataset", str(sft_file), "--save_path", str(save), *TRAIN_FLAGS]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"--save_path {save} already holds outputs of an earlier run (config.yaml, metrics.jsonl, final)" in err


def test_no_file_holds_the_wandb_key(tmp_path, tiny_model_dir, sft_file, monkeypatch, capsys):
    """--use_wandb KEY: config.yaml, metrics, checkpoints, the log and everything wandb stores with the run
    (its config and the command line it records) are free of the key."""
    wandb = pytest.importorskip("wandb")
    key = "local-0123456789abcdef0123456789abcdef01234567"
    real_init = wandb.init
    monkeypatch.setattr(wandb, "login", lambda key: None)  # no network here: the login would check the key
    monkeypatch.setattr(wandb, "init", lambda **kw: real_init(**{**kw, "mode": "offline"}))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    save = tmp_path / "run"
    argv = ["--pretrain", str(tiny_model_dir), "--dataset", str(sft_file), "--save_path", str(save), *FLAGS]
    monkeypatch.setattr(sys, "argv", ["repulse", *argv, "--use_wandb", key])
    assert train_sft.main(None) == 0
    wandb.teardown()
    (record,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")  # the offline run: config, metadata, history
    # The wandb service writes the record in its own process, some time after the run finished.
    deadline = time.monotonic() + 60
    while b"--save_path" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"--use_wandb" in record.read_bytes() and b"<redacted>" in record.read_bytes()  # it keeps the argv
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p for p in files if key.encode() in p.read_bytes()] == []
    assert key not in capsys.readouterr().err
