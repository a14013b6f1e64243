"""Long-running inference shows a tqdm bar counting meaningful units, hidden by --disable_progress_bar; the
--zero_stage notice appears only where ZeRO would apply (training)."""

from __future__ import annotations

import re

import pytest

from repulse.assets import TINY_RM_DIR
from repulse.cli import batch_inference, train_sft
from tests.integration.helpers import TRAIN_FLAGS

GEN = ["--max_new_tokens", "4", "--max_samples", "6", "--micro_batch_size", "4"]


def bar_totals(err: str, desc: str, unit: str) -> list[str]:
    """The 'done/total' counts of the final state of every `desc` bar counting `unit`s."""
    return re.findall(rf"{desc}: 100%\|[^|]*\| (\d+/\d+) \[[^\]]*{unit}", err.replace("\r", "\n"))


def test_batch_inference_bars_count_prompts_then_texts(tmp_path, capsys):
    argv = [*GEN, "--best_of_n", "2", "--reward_pretrain", str(TINY_RM_DIR), "--output_path", str(tmp_path / "o")]
    assert batch_inference.main(argv) == 0
    err = capsys.readouterr().err
    # tqdm may print its final state twice (last refresh and close): the counts, not the lines, are checked
    assert set(bar_totals(err, "generate", "prompt")) == {"6/6"}
    assert set(bar_totals(err, "score", "text")) == {"12/12"}  # 2 samples per prompt
    assert "--zero_stage" not in err  # inference: no ZeRO notice


def test_batch_inference_progress_bar_can_be_hidden(tmp_path, capsys):
    assert batch_inference.main([*GEN, "--output_path", str(tmp_path / "o.jsonl"), "--disable_progress_bar"]) == 0
    assert "generate:" not in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--use_wandb", "offline"], ["--logging_steps", "5"], ["--use_tensorboard", "tb"]])
def test_batch_inference_refuses_the_training_logging_flags(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # not flags of batch_inference: it logs no metrics
        batch_inference.main([*GEN, "--output_path", str(tmp_path / "o.jsonl"), *flag])
    assert stop.value.code == 2
    assert f"unrecognized arguments: {flag[0]}" in capsys.readouterr().err


def test_training_says_that_zero_stage_has_no_effect(tmp_path, capsys):
    argv = [*TRAIN_FLAGS, "--max_samples", "8", "--save_path", str(tmp_path / "sft"), "--zero_stage", "3"]
    assert train_sft.main(argv) == 0
    assert "--zero_stage 3 has no effect" in capsys.readouterr().err
