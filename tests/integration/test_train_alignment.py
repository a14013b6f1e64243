"""train_dpo, train_kto, train_kd, train_prm end to end on tiny random GPT-2s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repulse.cli import train_dpo, train_kd, train_kto, train_prm, train_rm
from tests.integration.helpers import TRAIN_FLAGS, changed_and_unchanged, load_weights


def rows(save: Path) -> list[dict]:
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


def run(module, tmp_path: Path, model_dir: Path, data: Path, *extra: str, name: str = "run") -> tuple[int, Path]:
    save = tmp_path / name
    argv = ["--pretrain", str(model_dir), "--dataset", str(data), "--save_path", str(save), *TRAIN_FLAGS, *extra]
    return module.main(argv), save


@pytest.mark.parametrize(
    ("module", "fixture", "extra", "loss_kwargs"),
    [
        (train_dpo, "pref_file", ["--beta", "0.5"], {"beta": 0.5, "ipo": False, "label_smoothing": 0.0}),
        (train_dpo, "pref_file", ["--ipo", "--beta", "0.5", "--ref_offload"], {"beta": 0.5, "ipo": True}),
        (
            train_dpo,
            "pref_file",
            ["--label_smoothing", "0.1", "--nll_loss_coef", "0.5"],
            {"ipo": False, "label_smoothing": 0.1},
        ),
        (train_kto, "unpaired_file", ["--beta", "0.5"], {"beta": 0.5}),
    ],
    ids=["dpo", "ipo", "cdpo_nll", "kto"],
)
def test_policy_changes_and_reference_does_not(
    request, tmp_path, tiny_model_dir, monkeypatch, module, fixture, extra, loss_kwargs
):
    import repulse.trainers.dpo as dpo_trainer
    import repulse.trainers.kto as kto_trainer

    # The variants differ in the loss's arguments: record what the loss was called with.
    seen = []
    owner = dpo_trainer if module is train_dpo else kto_trainer
    name = "dpo_loss" if module is train_dpo else "kto_loss"
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    data = request.getfixturevalue(fixture)
    before = load_weights(tiny_model_dir)
    code, save = run(module, tmp_path, tiny_model_dir, data, "--max_samples", "16", *extra)
    assert code == 0
    assert seen and all(kw[k] == v for kw in seen for k, v in loss_kwargs.items())
    changed, unchanged = changed_and_unchanged(before, load_weights(save / "final"))
    assert unchanged == [] and changed
    assert load_weights(tiny_model_dir).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in load_weights(tiny_model_dir).items())  # reference untouched
    first = rows(save)[0]
    if module is train_dpo:  # policy = reference at step 1: h = 0
        assert first["preference_loss"] == pytest.approx(1.0 if "--ipo" in extra else 0.693147, abs=1e-5)
        nll_coef = 0.5 if "--nll_loss_coef" in extra else 0.0
        assert first["loss"] == pytest.approx(first["preference_loss"] + nll_coef * first["nll_loss"], rel=1e-5)


def test_dpo_learns_the_preference(tmp_path, tiny_model_dir, pref_file):
    code, save = run(train_dpo, tmp_path, tiny_model_dir, pref_file, "--max_epochs", "3", "--beta", "0.5")
    assert code == 0
    history = rows(save)
    assert history[-1]["reward_margin"] > 0.5 and history[-1]["acc"] == 1.0


def test_kd_moves_the_student_toward_the_teacher(tmp_path, tiny_tokenizer, tiny_model_dir, sft_file):
    from tests.conftest import make_gpt2

    teacher = tmp_path / "teacher"
    make_gpt2(len(tiny_tokenizer), seed=11).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    code, save = run(
        train_kd,
        tmp_path,
        tiny_model_dir,
        sft_file,
        "--teacher_model",
        str(teacher),
        "--kd_coef",
        "1.0",
        "--max_epochs",
        "3",
        "--teacher_offload",
    )
    assert code == 0
    kd = [r["kd_loss"] for r in rows(save)]
    assert kd[-1] < 0.7 * kd[0]


def test_kd_rejects_a_teacher_with_another_vocabulary(tmp_path, tiny_tokenizer, tiny_model_dir, sft_file, capsys):
    from tests.conftest import make_gpt2

    teacher = tmp_path / "other_vocab"
    make_gpt2(len(tiny_tokenizer) + 7).save_pretrained(teacher)
    code, _ = run(train_kd, tmp_path, tiny_model_dir, sft_file, "--teacher_model", str(teacher))
    assert code == 2
    assert "same vocabulary" in capsys.readouterr().err


def test_prm_learns_to_rank_good_steps_above_bad(tmp_path, tiny_model_dir, prm_file, tiny_tokenizer):
    from repulse.models.load import load_scoring_lm
    from repulse.trainers.prm import step_rewards

    code, save = run(
        train_prm,
        tmp_path,
        tiny_model_dir,
        prm_file,
        "--max_epochs",
        "25",
        "--micro_train_batch_size",
        "3",
        "--train_batch_size",
        "9",
        "--max_len",
        "24",
    )
    assert code == 0
    model = load_scoring_lm(str(save / "final"))
    scores = step_rewards(
        model, tiny_tokenizer, ["this man is kind ки so fool ки", "this man is jerk ки so tall ки"], "ки", ["+", "-"]
    )
    assert scores[0][0] > scores[0][1]  # kind (+) above fool (-)
    assert scores[1][1] > scores[1][0]  # tall (+) above jerk (-)


def test_prm_soft_labels(tmp_path, tiny_model_dir):
    from tests.conftest import write_jsonl

    data = write_jsonl(tmp_path / "soft.jsonl", [{"input": "this man is good ки", "value": [0.8]}] * 8)
    code, save = run(train_prm, tmp_path, tiny_model_dir, data, "--max_epochs", "2")
    assert code == 0 and rows(save)


@pytest.mark.parametrize(
    ("module", "fixture"), [(train_dpo, "pref_file"), (train_rm, "pref_file"), (train_prm, "prm_file")]
)
def test_packing_gives_the_padded_losses(request, tmp_path, tiny_model_dir, capfd, monkeypatch, module, fixture):
    from repulse.models import packing

    packs = []
    real_pack_rows = packing.pack_rows
    monkeypatch.setattr(packing, "pack_rows", lambda *a, **k: packs.append(1) or real_pack_rows(*a, **k))
    data = request.getfixturevalue(fixture)
    flags = ["--max_samples", "16", "--max_epochs", "2"]
    _, padded = run(module, tmp_path, tiny_model_dir, data, *flags, name="pad")
    assert "packed row" not in capfd.readouterr().err and packs == []
    _, packed = run(module, tmp_path, tiny_model_dir, data, *flags, "--packing_samples", name="pack")
    assert "packed row (a block-diagonal causal mask)" in capfd.readouterr().err
    assert len(packs) >= 4  # every training forward packed (DPO: the policy's and the reference's)
    assert len(rows(padded)) >= 2
    for a, b in zip(rows(padded), rows(packed), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
