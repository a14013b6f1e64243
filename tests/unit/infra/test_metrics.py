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


def test_a_torn_last_line_does_not_block_resume(tmp_path, caplog):
    killed = MetricLogger(str(tmp_path))
    for step in range(1, 4):
        killed.log(step, {"loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # the disk filled up (or the power went) mid-line
    caplog.set_level("WARNING", logger="repulse")
    resumed = MetricLogger(str(tmp_path), resume_step=3)
    resumed.log(4, {"loss": 4.0})
    assert rows(tmp_path) == [{"step": s, "loss": float(s)} for s in range(1, 5)]
    assert "line 4 is not a JSON object" in caplog.text


def test_the_wandb_run_config_never_holds_the_key(tmp_path, monkeypatch):
    wandb = __import__("pytest").importorskip("wandb")
    seen = {}
    monkeypatch.setattr(wandb, "login", lambda key: seen.update(login=key))
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(init=kw) or type("Run", (), {"finish": print})())
    key = "0123456789abcdef0123456789abcdef01234567"
    MetricLogger(str(tmp_path), wandb=key, config={"use_wandb": key, "learning_rate": 0.1})
    assert seen["login"] == key  # the key is used...
    assert key not in json.dumps(seen["init"], default=str)  # ...but not stored with the run
    assert seen["init"]["config"] == {"use_wandb": "True", "learning_rate": 0.1}
