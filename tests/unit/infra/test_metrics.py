"""MetricLogger: one JSON row per logged step; a resumed run drops the rows after its checkpoint."""

from __future__ import annotations

import json

from repulse.infra.metrics import MetricLogger


def rows(save_path) -> list[dict]:
    return [json.loads(line) for line in (save_path / "metrics.jsonl").read_text().splitlines()]


def test_writes_jsonl_rows(tmp_path):
    logger = MetricLogger(str(tmp_path / "run"))
    logger.log(1, {"loss": 2.5, "lr": 1e-5})
    logger.log(2, {"loss": 2.0}, prefix="eval/")
    logger.close()
    assert rows(tmp_path / "run") == [{"step": 1, "loss": 2.5, "lr": 1e-5}, {"step": 2, "eval/loss": 2.0}]


def test_non_finite_values_stay_valid_json(tmp_path):
    logger = MetricLogger(str(tmp_path))
    logger.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "n": 3})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # bare NaN / Infinity are not JSON
    row = rows(tmp_path)[0]
    assert row["loss"] == "nan" and row["grad_norm"] == "inf" and row["n"] == 3


def test_fresh_run_replaces_old_file(tmp_path):
    first = MetricLogger(str(tmp_path))
    first.log(1, {"loss": 1.0})
    second = MetricLogger(str(tmp_path))  # a new run (no resume) in the same folder
    second.log(1, {"loss": 9.0})
    assert rows(tmp_path) == [{"step": 1, "loss": 9.0}]


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    killed = MetricLogger(str(tmp_path))
    for step in range(1, 7):
        killed.log(step, {"loss": float(step)})
    killed.log(4, {"acc": 0.5}, prefix="eval/")  # an eval row at step 4 stays with step 4
    resumed = MetricLogger(str(tmp_path), resume_step=4)
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4, 4]
    resumed.log(5, {"loss": 50.0})
    assert rows(tmp_path)[-1] == {"step": 5, "loss": 50.0}
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4, 4, 5]


def test_resume_without_previous_file(tmp_path):
    logger = MetricLogger(str(tmp_path / "new"), resume_step=10)
    logger.log(11, {"loss": 1.0})
    assert rows(tmp_path / "new") == [{"step": 11, "loss": 1.0}]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricLogger(str(tmp_path / "rank1"), enabled=False)
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()
