"""train_rm end to end: parameters, head, normalization, loss choice, transformers compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repulse.cli import train_rm
from tests.integration.helpers import TRAIN_FLAGS, changed_and_unchanged, load_weights


def run(tmp_path: Path, model_dir: Path, data: Path, *extra: str, name: str = "rm") -> tuple[int, Path]:
    save = tmp_path / name
    argv = [
        "--pretrain",
        str(model_dir),
        "--dataset",
        str(data),
        "--save_path",
        str(save),
        "--prompt_key",
        "prompt",
        *TRAIN_FLAGS,
        *extra,
    ]
    return train_rm.main(argv), save


def test_reward_model_learns_and_every_parameter_changes(tmp_path, tiny_model_dir, pref_file):
    code, save = run(tmp_path, tiny_model_dir, pref_file, "--max_epochs", "4", "--normalize_reward")
    assert code == 0
    before, after = load_weights(tiny_model_dir), load_weights(save / "final")
    # The LM head is not part of a sequence-regression model; the new `score` head is.
    changed, unchanged = changed_and_unchanged(before, after)
    # The final norm's bias is the one parameter whose gradient is zero in exact arithmetic (see the test below);
    # in floating point it is rounding noise of either sign, which Adam may scale up into a visible step or not,
    # depending on the summation order (and so on the thread count). Every other parameter must move.
    assert set(unchanged) <= {"transformer.ln_f.bias"}
    assert len(changed) >= len(before) - 2  # the LM head is dropped, ln_f.bias may stay
    assert "score.weight" in after and "score.weight" not in before
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["acc"] == 1.0
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    config = json.loads((save / "final" / "config.json").read_text())
    assert config["normalize_reward"] is True and config["std"] > 0


def test_pairwise_loss_gives_a_shift_of_every_reward_no_gradient(tiny_model_dir, pref_file, tiny_tokenizer):
    """A pairwise loss sees only r_c - r_r, so a shift of every reward has zero gradient; the final norm's bias
    feeds the linear head as exactly such a shift (in float64 the cancellation is exact up to 1e-12)."""
    from repulse.config.common import LoraArgs, ModelArgs
    from repulse.data.loading import load_source
    from repulse.data.preference import PairCollator, PreferenceDataset
    from repulse.models.reward import load_reward_model
    from repulse.trainers.rm import RewardModelTrainer

    model = load_reward_model(str(tiny_model_dir), ModelArgs(), LoraArgs(), trainable=True).double()
    data = PreferenceDataset(load_source(str(pref_file)).select(range(8)), tiny_tokenizer, 16)
    batch = PairCollator(tiny_tokenizer.pad_token_id)([data[i] for i in range(8)])
    loss, _ = RewardModelTrainer(model).training_step(batch)
    loss.backward()
    grads = {name: p.grad.abs().max().item() for name, p in model.named_parameters()}
    assert grads["transformer.ln_f.bias"] < 1e-12
    assert min(v for k, v in grads.items() if k != "transformer.ln_f.bias") > 1e-8


def test_scores_match_transformers_sequence_classification(tmp_path, tiny_model_dir, pref_file, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from repulse.config.common import ModelArgs
    from repulse.models.reward import load_reward_model, sequence_rewards

    _, save = run(tmp_path, tiny_model_dir, pref_file, "--max_samples", "8")
    ours = load_reward_model(str(save / "final"), ModelArgs())
    hf = AutoModelForSequenceClassification.from_pretrained(save / "final").eval()
    batch = tiny_tokenizer(
        ["this man is a good .<eos>", "this woman is a jerk<eos>"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = hf(**batch).logits.squeeze(-1)
        got = sequence_rewards(ours, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_logexp_and_sigmoid_give_the_same_first_step(tmp_path, tiny_model_dir, pref_file, monkeypatch):
    from repulse.losses import preference

    used = []  # the two losses are equal by construction: record which one each run calls
    for name, fn in list(preference.PAIRWISE_LOSSES.items()):
        monkeypatch.setitem(preference.PAIRWISE_LOSSES, name, lambda *a, _n=name, _f=fn: used.append(_n) or _f(*a))
    _, a = run(tmp_path, tiny_model_dir, pref_file, "--max_samples", "8", name="sigmoid")
    assert set(used) == {"sigmoid"}
    used.clear()
    _, b = run(tmp_path, tiny_model_dir, pref_file, "--max_samples", "8", "--loss", "logexp", name="logexp")
    assert set(used) == {"logexp"}
    first = [json.loads((p / "metrics.jsonl").read_text().splitlines()[0]) for p in (a, b)]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-6)


def test_lora_reward_model_trains_adapters_and_head(tmp_path, tiny_model_dir, pref_file):
    code, save = run(tmp_path, tiny_model_dir, pref_file, "--max_samples", "8", "--lora_rank", "4")
    assert code == 0
    from safetensors.torch import load_file

    adapter = load_file(str(save / "final" / "adapter_model.safetensors"))
    assert any("score" in k for k in adapter)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


def test_bad_value_head_prefix_is_one_line(tmp_path, tiny_model_dir, pref_file, capsys):
    code, _ = run(tmp_path, tiny_model_dir, pref_file, "--value_head_prefix", "value_head")
    err = capsys.readouterr().err
    assert code == 2
    assert "--value_head_prefix 'value_head'" in err
