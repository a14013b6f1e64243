"""Bad input ends in one line naming the input (exit 2, no traceback): model folders, checkpoints, output paths,
data files and flag ranges; and a --max_len beyond the model's positions is capped instead of crashing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repulse.cli import batch_inference, evaluate_gcg, serve_rm, train_rm, train_sft
from tests.conftest import make_gpt2, write_jsonl
from tests.integration.helpers import TRAIN_FLAGS

SFT_FLAGS = [flag for flag in TRAIN_FLAGS if flag not in ("--max_len", "16")]  # the default --max_len, 512


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("repulse ") and ": error: " in line
    return line


def sft(model_dir, data, save, *extra) -> int:
    return train_sft.main(["--pretrain", str(model_dir), "--dataset", str(data), "--save_path", str(save), *extra])


@pytest.fixture
def long_sft_file(tmp_path) -> Path:
    """Prompt + response of 80 tokens, more than the tiny model's 64 positions."""
    words = " ".join(["this man is a good"] * 8)
    return write_jsonl(tmp_path / "long.jsonl", [{"input": words, "output": " " + words} for _ in range(8)])


def test_max_len_beyond_the_models_positions_is_capped(tmp_path, tiny_model_dir, long_sft_file, capsys):
    code = sft(tiny_model_dir, long_sft_file, tmp_path / "run", *SFT_FLAGS)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "--max_len 512 is more than the 64 positions of the model" in err
    assert "max_len: 64" in (tmp_path / "run" / "config.yaml").read_text()


def test_reward_model_training_caps_max_len_too(tmp_path, tiny_model_dir, capsys):
    words = " ".join(["this man is a"] * 12)
    rows = [{"prompt": words, "chosen": " good " * 10, "rejected": " fool " * 10} for _ in range(8)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    argv = ["--pretrain", str(tiny_model_dir), "--dataset", str(data), "--save_path", str(tmp_path / "rm")]
    assert train_rm.main([*argv, *SFT_FLAGS, "--prompt_key", "prompt"]) == 0
    assert "is more than the 64 positions" in capsys.readouterr().err


def broken_copy(src: Path, dst: Path, breaking) -> Path:
    shutil.copytree(src, dst)
    breaking(dst)
    return dst


def drop_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def empty_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def truncated_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


@pytest.mark.parametrize(
    ("breaking", "message"),
    [
        (drop_tokenizer, "has no tokenizer"),
        (empty_weights, "model.safetensors is empty (0 bytes)"),
        (truncated_weights, "model.safetensors is not a readable safetensors file"),
    ],
)
def test_broken_model_folders(tmp_path, tiny_model_dir, sft_file, capsys, breaking, message):
    model = broken_copy(tiny_model_dir, tmp_path / "model", breaking)
    line = one_line_error(capsys, sft(model, sft_file, tmp_path / "run", *TRAIN_FLAGS))
    assert str(model) in line and message in line


def test_serve_rm_refuses_an_empty_weights_file(tmp_path, tiny_model_dir, capsys):
    model = broken_copy(tiny_model_dir, tmp_path / "rm", empty_weights)
    line = one_line_error(capsys, serve_rm.main(["--reward_pretrain", str(model), "--port", "1"]))
    assert "model.safetensors is empty" in line


@pytest.mark.parametrize("where", ["a file", "under /proc"])
def test_a_save_path_that_cannot_be_written(tmp_path, tiny_model_dir, sft_file, capsys, where):
    save = tmp_path / "taken.txt" if where == "a file" else Path("/proc/repulse-test/run")
    if where == "a file":
        save.write_text("mine")
    line = one_line_error(capsys, sft(tiny_model_dir, sft_file, save, *TRAIN_FLAGS))
    assert f"--save_path {save}" in line


@pytest.mark.parametrize("target", ["a folder", "under /proc"])
def test_an_output_file_that_cannot_be_written(tmp_path, capsys, target):
    out = tmp_path if target == "a folder" else Path("/proc/repulse-test/out.jsonl")
    argv = ["--output_path", str(out), "--max_new_tokens", "2", "--max_samples", "2"]
    line = one_line_error(capsys, batch_inference.main(argv))
    assert f"cannot write {out}" in line


def checkpointed_run(tmp_path, model_dir, data) -> Path:
    save = tmp_path / "run"
    assert sft(model_dir, data, save, *TRAIN_FLAGS, "--max_samples", "16", "--save_steps", "1") == 0
    return save


@pytest.mark.parametrize("damage", ["empty folder", "truncated tensors", "older format", "not a state"])
def test_checkpoints_that_cannot_be_loaded(tmp_path, tiny_model_dir, sft_file, capsys, damage):
    save = checkpointed_run(tmp_path, tiny_model_dir, sft_file)
    latest = save / "checkpoints" / "global_step2"
    if damage == "empty folder":
        shutil.rmtree(latest)
        latest.mkdir()
        expected = f"{latest}: not a checkpoint this version can load"
    elif damage == "truncated tensors":
        tensors = latest / "training_state.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:64])
        expected = f"{tensors}: not a readable safetensors file"
    elif damage == "older format":
        (latest / "checkpoint.json").unlink()
        expected = "no checkpoint.json"
    else:
        from repulse.infra.state_files import save_state

        save_state(latest, "training_state", {"weights": {}})
        expected = "is not a checkpoint of this command (it lacks ['model', 'optimizer'"
    capsys.readouterr()
    line = one_line_error(
        capsys,
        sft(
            tiny_model_dir,
            sft_file,
            save,
            *TRAIN_FLAGS,
            "--max_samples",
            "16",
            "--save_steps",
            "1",
            "--load_checkpoint",
        ),
    )
    assert expected in line


def test_a_checkpoint_of_another_model_size(tmp_path, tiny_tokenizer, sft_file, capsys):
    """Same flags, same --pretrain path, but the folder now holds a wider model."""
    model = tmp_path / "model"
    make_gpt2(len(tiny_tokenizer)).save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    save = checkpointed_run(tmp_path, model, sft_file)
    make_gpt2(len(tiny_tokenizer), n_embd=48).save_pretrained(model)
    capsys.readouterr()
    argv = [*TRAIN_FLAGS, "--max_samples", "16", "--save_steps", "1", "--load_checkpoint"]
    line = one_line_error(capsys, sft(model, sft_file, save, *argv))
    assert "global_step2 does not fit this model" in line and "(another model size?)" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train_batch_size", "0"], "--train_batch_size must be >= 1, got 0"),
        (["--adam_betas", "2", "3"], "--adam_betas must each be in [0, 1), got [2.0, 3.0]"),
        (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0"),
        (["--max_norm", "-1"], "--max_norm must be >= 0"),
        (["--lora_rank", "4", "--lora_alpha", "0"], "--lora_alpha must be > 0"),
    ],
)
def test_flag_ranges(tmp_path, tiny_model_dir, sft_file, capsys, flags, message):
    line = one_line_error(capsys, sft(tiny_model_dir, sft_file, tmp_path / "run", *TRAIN_FLAGS, *flags))
    assert message in line


def test_a_latin1_csv_for_gcg(tmp_path, capsys):
    csv = tmp_path / "behaviors.csv"
    csv.write_bytes("goal,target\nDis-moi,Voil\u00e0\n".encode("latin-1"))
    argv = ["--file_path", str(csv), "--gcg_steps", "1", "--output_path", str(tmp_path / "gcg.json")]
    line = one_line_error(capsys, evaluate_gcg.main(argv))
    assert f"--file_path {csv}: not UTF-8 text (byte 0xe0 on line 2)" in line


def test_a_dataset_with_null_prompts(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "null.jsonl"
    data.write_text(
        json.dumps({"input": "this man is", "output": " good ."})
        + "\n"
        + json.dumps({"input": None, "output": " a ."})
        + "\n"
    )
    line = one_line_error(capsys, sft(tiny_model_dir, data, tmp_path / "run", *TRAIN_FLAGS))
    assert f"dataset {data}: row 2 has no value (null) for key 'input'" in line
