"""evaluate_gcg and evaluate_beast end to end on the embedded tiny LM, RM and behaviors.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repulse.cli import evaluate_beast, evaluate_gcg

TINY_EVAL = ["--max_targets", "2", "--samples_per_prompt", "8", "--max_new_tokens", "8"]


def test_evaluate_gcg_on_embedded_defaults(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gcg.json"
    argv = [
        *TINY_EVAL,
        "--gcg_steps",
        "3",
        "--gcg_search_width",
        "16",
        "--gcg_topk",
        "16",
        "--gcg_optim_str_init",
        " the the the",
        "--output_path",
        str(out),
    ]
    assert evaluate_gcg.main(argv) == 0
    doc = json.loads(out.read_text())
    assert 0.0 <= doc["asr"] <= 100.0 and doc["n_targets"] == 2 and doc["config"]["gcg_steps"] == 3
    for row in doc["rows"]:
        assert {"goal", "target", "best_string", "best_loss", "success", "logprob_before", "logprob_after"} <= set(row)
        assert len(row["losses"]) == 3 and row["attacked"]["n_samples"] == 8
        assert row["logprob_after"]["mean"] > row["logprob_before"]["mean"]  # the suffix helps the target
    assert {"mean", "min", "std", "median"} <= set(doc["reward_stats"])
    assert "evaluate_gcg: ASR" in capsys.readouterr().out


def test_evaluate_gcg_universal_prefix_criterion(tmp_path: Path) -> None:
    out = tmp_path / "u.json"
    argv = [
        *TINY_EVAL,
        "--gcg_steps",
        "2",
        "--gcg_search_width",
        "8",
        "--gcg_topk",
        "8",
        "--gcg_universal",
        "--gcg_optim_str_init",
        " the the",
        "--atk_success_criteria",
        "prefix",
        "--skip_baseline",
        "--output_path",
        str(out),
    ]
    assert evaluate_gcg.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["best_string"] == rows[1]["best_string"]  # one suffix for all targets
    assert all(r["success"] for r in rows)  # the tiny LM never writes a refusal phrase
    assert rows[0]["attacked"]["reward_mean"] is None  # no reward model asked for


@pytest.fixture()
def judge_dir(tmp_path: Path) -> Path:
    from tests.unit.attacks.test_judge import yes_no_judge

    judge = yes_no_judge(prefer_yes=True)
    path = tmp_path / "judge"
    judge.model.save_pretrained(path)
    judge.tokenizer.save_pretrained(path)
    return path


def test_evaluate_beast_with_judge(tmp_path: Path, judge_dir: Path) -> None:
    out = tmp_path / "beast.json"
    argv = [
        *TINY_EVAL,
        "--beast_k1",
        "3",
        "--beast_k2",
        "3",
        "--beast_length",
        "4",
        "--beast_ngram",
        "2",
        "--atk_success_criteria",
        "judge",
        "--judge_pretrain",
        str(judge_dir),
        "--output_path",
        str(out),
    ]
    assert evaluate_beast.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["asr"] == 100.0  # this judge always answers Yes
    assert all(len(r["losses"]) == 2 and r["best_string"] for r in doc["rows"])


@pytest.mark.parametrize("main", [evaluate_gcg.main, evaluate_beast.main])
def test_bad_csv_exits_2_with_one_line(tmp_path: Path, capsys, main) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("goal,answer\nx,y\n")
    assert main(["--file_path", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "missing column 'target'" in err and str(bad) in err
    assert main(["--file_path", str(tmp_path / "nope.csv")]) == 2
