"""Two gloo processes under torchrun (torch DDP) give the same model as one process with the same global batch."""

from __future__ import annotations

import json

import pytest
import torch

from repulse.cli import train_sft
from tests.integration.helpers import TRAIN_FLAGS, load_weights, run_torchrun


def test_two_processes_equal_one(tmp_path, tiny_model_dir, sft_file):
    common = ["--pretrain", str(tiny_model_dir), "--dataset", str(sft_file), *TRAIN_FLAGS, "--max_samples", "24"]
    assert train_sft.main([*common, "--save_path", str(tmp_path / "one")]) == 0  # micro 4 x accumulation 2

    done = run_torchrun("repulse.cli.train_sft", [*common, "--save_path", str(tmp_path / "two"), "--strategy", "ddp"])
    assert "strategy: torch DDP, rank 0 of 2" in done.stderr
    one, two = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    # The attention key bias has an analytically zero gradient (softmax is shift-invariant), so Adam turns
    # float summation noise there into updates of ~1e-5; everything else agrees to float precision.
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-3, atol=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-6)


def test_reward_model_two_processes_equal_one(tmp_path, tiny_model_dir, pref_file):
    """train_rm reads the head's output off the wrapper's own forward: DDP reduces its gradients (it did not when
    the backbone was called past the wrapper, and the ranks drifted apart)."""
    from repulse.cli import train_rm

    keys = ["--prompt_key", "prompt", "--chosen_key", "chosen", "--rejected_key", "rejected"]
    common = ["--pretrain", str(tiny_model_dir), "--dataset", str(pref_file), *TRAIN_FLAGS, *keys]
    assert train_rm.main([*common, "--save_path", str(tmp_path / "one")]) == 0
    run_torchrun("repulse.cli.train_rm", [*common, "--save_path", str(tmp_path / "two"), "--strategy", "ddp"])
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-6)
    one, two = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    # The final norm's bias shifts chosen and rejected scores alike, so the pairwise loss gives it an analytically
    # zero gradient: Adam turns the summation noise there into updates of lr size. Attention key bias: see above.
    for key in (k for k in one if k != "transformer.ln_f.bias"):
        torch.testing.assert_close(one[key], two[key], rtol=1e-3, atol=1e-4)
