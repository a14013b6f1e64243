"""train_sft end to end on a tiny random GPT-2: parameters, LoRA, resume, NaN guard, loggers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repulse.cli import train_sft
from repulse.infra.state_files import load_state
from tests.integration.helpers import TRAIN_FLAGS, changed_and_unchanged, load_weights


def run(tmp_path: Path, model_dir: Path, data: Path, *extra: str, name: str = "run") -> tuple[int, Path]:
    save = tmp_path / name
    argv = ["--pretrain", str(model_dir), "--dataset", str(data), "--save_path", str(save), *TRAIN_FLAGS, *extra]
    return train_sft.main(argv), save


def metrics(save: Path) -> list[dict]:
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


def test_every_parameter_changes_in_two_steps(tmp_path, tiny_model_dir, sft_file):
    code, save = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "16")
    assert code == 0
    changed, unchanged = changed_and_unchanged(load_weights(tiny_model_dir), load_weights(save / "final"))
    assert unchanged == []
    assert len(changed) > 10
    rows = metrics(save)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] > 0 for r in rows)
    assert (save / "config.yaml").exists()


def test_prompt_masking_changes_the_loss(tmp_path, tiny_model_dir, sft_file):
    _, masked = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "8", name="masked")
    _, full = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "8", "--pretrain_mode", name="full")
    # Same model and batch: the first-step losses differ because they average over different tokens.
    assert metrics(masked)[0]["tokens"] < metrics(full)[0]["tokens"]
    assert metrics(masked)[0]["loss"] != pytest.approx(metrics(full)[0]["loss"])


def test_packing_gives_the_padded_loss(tmp_path, tiny_model_dir, sft_file):
    _, padded = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "16", name="pad")
    _, packed = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "16", "--packing_samples", name="pack")
    for a, b in zip(metrics(padded), metrics(packed), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


def test_lora_trains_only_adapters_and_merge_matches(tmp_path, tiny_model_dir, sft_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, save = run(
        tmp_path,
        tiny_model_dir,
        sft_file,
        "--max_samples",
        "16",
        "--lora_rank",
        "4",
        "--lora_alpha",
        "8",
        "--target_modules",
        "c_attn",
        "c_fc",
    )
    assert code == 0
    assert (save / "final" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, save / "final").eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: non-zero = trained
    ids = torch.tensor([[4, 5, 9, 11, 15, 8]])
    adapter_logits = model(ids).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, adapter_logits, rtol=1e-5, atol=1e-5)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert all(torch.equal(fresh[k], original[k]) for k in original)  # the base on disk is untouched


def make_dropout_model(tmp_path: Path, tokenizer) -> Path:
    from tests.conftest import make_gpt2

    model = make_gpt2(len(tokenizer), seed=1)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.2
    path = tmp_path / "dropout_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def count_steps_and_capture_start(monkeypatch) -> dict:
    """Patch SFTTrainer.training_step to count its calls and keep a copy of the trainable weights it first saw."""
    from repulse.trainers.sft import SFTTrainer

    original = SFTTrainer.training_step
    seen: dict = {"calls": 0, "first_weights": None}

    def counting(self, batch):
        seen["calls"] += 1
        if seen["first_weights"] is None:
            seen["first_weights"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return original(self, batch)

    monkeypatch.setattr(SFTTrainer, "training_step", counting)
    return seen


def test_resume_continues_from_the_checkpoint(tmp_path, tiny_tokenizer, sft_file, monkeypatch, capsys):
    """The resumed process runs only the steps after the checkpoint, starting from the checkpoint's weights and
    keeping the interrupted process's metrics, and ends where an uninterrupted run ends."""
    from repulse.trainers.sft import SFTTrainer

    model_dir = make_dropout_model(tmp_path, tiny_tokenizer)  # dropout: resume must also restore the RNG
    # 32 examples / global batch 8 = 4 steps per epoch, 2 epochs = 8 steps of 2 micro-batches each.
    flags = ["--max_samples", "32", "--save_steps", "2", "--max_epochs", "2"]
    _, full = run(tmp_path, model_dir, sft_file, *flags, name="full")

    original = SFTTrainer.training_step
    calls = {"n": 0}

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 1:  # during optimizer step 6 (2 micro-batches per step)
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(SFTTrainer, "training_step", interrupted)
    code, resumed = run(tmp_path, model_dir, sft_file, *flags, name="resumed")
    assert code == 130
    assert not (resumed / "final").exists()
    checkpoint = resumed / "checkpoints" / "global_step4"  # step 6 was never reached, 4 is the newest
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["global_step2", "global_step4"]
    # Mark what the interrupted process wrote: a process that rewrote its history would lose the mark.
    rows = metrics(resumed)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    rows[2]["written_by"] = "first process"
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(SFTTrainer, "training_step", original)
    seen = count_steps_and_capture_start(monkeypatch)
    capsys.readouterr()
    code, resumed = run(tmp_path, model_dir, sft_file, *flags, "--load_checkpoint", name="resumed")
    assert code == 0
    assert f"resumed from {checkpoint} (step 4, epoch 1)" in capsys.readouterr().err
    assert seen["calls"] == (8 - 4) * 2  # only steps 5-8 ran
    saved = load_state(checkpoint, "training_state")["model"]
    initial = load_weights(model_dir)
    for name, weights in seen["first_weights"].items():  # the first step started from the checkpoint
        assert torch.equal(weights, saved[name]), name
    assert any(not torch.equal(saved[n], initial[n]) for n in saved if n in initial)  # ...not from --pretrain
    rows = metrics(resumed)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[2]["written_by"] == "first process" and "written_by" not in rows[5]
    a, b = load_weights(full / "final"), load_weights(resumed / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in metrics(full)] == pytest.approx([r["loss"] for r in rows], rel=1e-5)
    kept = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert kept == ["global_step4", "global_step6", "global_step8"]  # --max_ckpt_num 3


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, tiny_model_dir, sft_file, monkeypatch, capsys):
    import repulse.trainers.sft as sft_module

    calls = {"n": 0}
    real_loss = sft_module.lm_loss

    def poisoned(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(sft_module, "lm_loss", poisoned)
    code, save = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "32", "--save_steps", "2")
    assert code == 2
    err = capsys.readouterr().err
    assert "loss is nan at optimizer step 3" in err
    assert "global_step2" in err
    assert not (save / "final").exists()
    state = load_state(save / "checkpoints" / "global_step2", "training_state")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_tensorboard_and_eval(tmp_path, tiny_model_dir, sft_file):
    tb = tmp_path / "tb"
    code, save = run(
        tmp_path,
        tiny_model_dir,
        sft_file,
        "--max_samples",
        "16",
        "--use_tensorboard",
        str(tb),
        "--eval_dataset",
        str(sft_file),
        "--eval_steps",
        "1",
    )
    assert code == 0
    assert list(tb.glob("events.out.tfevents.*"))
    evals = [r for r in metrics(save) if "eval_loss" in r]
    assert len(evals) == 2 and evals[1]["eval_loss"] < evals[0]["eval_loss"] + 1.0


def test_wandb_offline(tmp_path, tiny_model_dir, sft_file, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    code, _ = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "8", "--use_wandb", "offline")
    assert code == 0
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "/no/such/file.jsonl"], "no such file"),
        (["--input_key", "nope"], "missing key(s) ['nope']"),
        (["--train_batch_size", "6"], "--train_batch_size 6 must be a multiple"),
        (["--flash_attn"], "--flash_attn needs a CUDA GPU"),
        (["--lr_scheduler", "bogus"], "--lr_scheduler must be one of"),
    ],
)
def test_user_errors_are_one_line(tmp_path, tiny_model_dir, sft_file, capsys, flags, message):
    code, _ = run(tmp_path, tiny_model_dir, sft_file, *flags)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flags", [["--bf16"], ["--gradient_checkpointing"], ["--packing_samples", "--lora_rank", "2"]]
)
def test_memory_and_precision_options_train(tmp_path, tiny_model_dir, sft_file, flags, monkeypatch):
    seen = count_steps_and_capture_start(monkeypatch)
    from repulse.trainers.sft import SFTTrainer

    counting, state = SFTTrainer.training_step, {}

    def observe(self, batch):  # what the flag must have changed on the model being trained
        state["checkpointing"] = getattr(self.model, "is_gradient_checkpointing", False)
        state["dtype"] = next(self.model.parameters()).dtype
        state["packed"] = batch["input_ids"].shape[0] == 1
        return counting(self, batch)

    monkeypatch.setattr(SFTTrainer, "training_step", observe)
    code, save = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "16", *flags)
    assert code == 0 and seen["calls"] == 4
    losses = [r["loss"] for r in metrics(save)]
    assert all(0 < loss < 10 for loss in losses)
    assert state["dtype"] == (torch.bfloat16 if "--bf16" in flags else torch.float32)
    assert state["checkpointing"] == ("--gradient_checkpointing" in flags)
    assert state["packed"] == ("--packing_samples" in flags)
    if "--bf16" in flags:
        assert all(v.dtype == torch.bfloat16 for v in load_weights(save / "final").values())
    if "--lora_rank" in flags:
        assert (save / "final" / "adapter_config.json").exists()


def test_config_yaml_reproduces_the_run(tmp_path, tiny_model_dir, sft_file):
    _, first = run(tmp_path, tiny_model_dir, sft_file, "--max_samples", "8", name="first")
    again = tmp_path / "again"
    code = train_sft.main(["--config", str(first / "config.yaml"), "--save_path", str(again)])
    assert code == 0
    assert metrics(first)[0]["loss"] == pytest.approx(metrics(again)[0]["loss"], rel=1e-6)
