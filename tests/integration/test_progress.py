"""Long-running inference shows a tqdm bar counting meaningful units, hidden by --disable_progress_bar; the
strategy flags are reported where they are not applied."""

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


def test_training_in_one_process_says_that_zero_stage_is_not_applied(tmp_path, capsys):
    argv = [*TRAIN_FLAGS, "--max_samples", "8", "--save_path", str(tmp_path / "sft"), "--zero_stage", "3"]
    assert train_sft.main(argv) == 0
    err = capsys.readouterr().err
    assert "--zero_stage 3 is not applied: one process" in err and "strategy: single process" in err


def test_inference_names_the_strategy_flags_it_does_not_apply(tmp_path, capsys):
    argv = [*GEN, "--output_path", str(tmp_path / "o.jsonl"), "--zero_stage", "2", "--adam_offload"]
    assert batch_inference.main(argv) == 0
    assert "--zero_stage 2 --adam_offload: not applicable to batch_inference" in capsys.readouterr().err
