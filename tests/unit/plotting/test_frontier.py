"""Frontier points from run folders, and the grouped (sweep) and labelled (few runs) figures."""

from __future__ import annotations

import json
import math

import pytest

from repulse.infra.errors import DataError
from repulse.plotting.frontier import frontier_points, plot_frontier, read_run


def write_run(folder, rewards: list[float], log_p_bad: list[float]) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"exact_log_p_bad_final": log_p_bad[-1]}))
    (folder / "evaluations.json").write_text(
        json.dumps([{"step": i, "exact_log_p_bad": v} for i, v in enumerate(log_p_bad)])
    )
    (folder / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i + 1, "reward_mean": r}) for i, r in enumerate(rewards))
    )


def test_points_average_the_last_quarter_and_use_the_final_evaluation(tmp_path) -> None:
    write_run(tmp_path / "a", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0], [-1.0, -2.0, -math.log(10) * 4])
    ((name, reward, log10_p),) = frontier_points([read_run(tmp_path / "a")])
    assert name == "a" and reward == pytest.approx(2.0) and log10_p == pytest.approx(-4.0)


def test_grouped_and_labelled_figures_are_written(tmp_path) -> None:
    runs = []
    for group in ("REINFORCE", "RePULSe"):
        for seed in (1, 2):
            write_run(tmp_path / group / f"seed{seed}", [0.5, 0.9], [-7.0, -8.0 - seed])
            runs.append({**read_run(tmp_path / group / f"seed{seed}"), "name": f"{group}/{seed}", "group": group})
    for figure, given in (("grouped.png", runs), ("labelled.png", [read_run(tmp_path / "RePULSe" / "seed1")])):
        out = plot_frontier(given, tmp_path / figure)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="no run has both"):
        plot_frontier([{**runs[0], "evaluations": []}], tmp_path / "none.png")
