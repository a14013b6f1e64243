"""Frontier points from run folders; the frontier figure coloured by method with mean and standard-error bars,
checked from the data the saved PNG carries."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from repulse.infra.errors import DataError
from repulse.plotting.figure_data import read_figure_data
from repulse.plotting.frontier import frontier_points, method_of, plot_curves, plot_frontier, read_run

REPULSE = {"do_harmlessness_training": True, "harmlessness_training_loss_type": "neg_training"}
REINFORCE = {"do_harmlessness_training": True, "harmlessness_training_loss_type": "reinforce"}


def write_run(folder, rewards: list[float], log_p_bad: list[float], config: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"exact_log_p_bad_final": log_p_bad[-1]}))
    (folder / "evaluations.json").write_text(
        json.dumps([{"step": i, "exact_log_p_bad": v} for i, v in enumerate(log_p_bad)])
    )
    (folder / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i + 1, "reward_mean": r}) for i, r in enumerate(rewards))
    )
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_points_average_the_last_quarter_and_use_the_final_evaluation(tmp_path) -> None:
    write_run(tmp_path / "a", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0], [-1.0, -2.0, -math.log(10) * 4])
    ((name, reward, log10_p),) = frontier_points([read_run(tmp_path / "a")])
    assert name == "a" and reward == pytest.approx(2.0) and log10_p == pytest.approx(-4.0)


@pytest.mark.parametrize(
    ("config", "method"),
    [
        (REPULSE, "RePULSe"),
        (REINFORCE, "REINFORCE"),
        ({**REINFORCE, "use_base_as_proposal": True}, "base as proposal"),
        ({**REINFORCE, "reward_transform": "minus_alpha_ind"}, "REINFORCE + minus_alpha_ind"),
        ({"actor_loss_type": "ppo"}, "PPO"),
        ({"actor_loss_type": "ctl"}, "twist (ctl)"),
    ],
)
def test_method_is_read_from_the_run_config(config, method, tmp_path):
    assert method_of(config) == method
    write_run(tmp_path / "run_seed3", [0.5], [-7.0], config)
    assert read_run(tmp_path / "run_seed3")["method"] == method


def test_without_a_config_the_seed_suffix_is_dropped(tmp_path):
    write_run(tmp_path / "sweep_a_seed12", [0.5], [-7.0])
    assert read_run(tmp_path / "sweep_a_seed12")["method"] == "sweep_a"


def make_runs(tmp_path) -> tuple[list[dict], dict[str, list[tuple[float, float]]]]:
    """Three seeds each of RePULSe and REINFORCE; also returns each method's (reward, log10 P(bad)) points."""
    runs, expected = [], {}
    for method, config, shift in (("RePULSe", REPULSE, 0.0), ("REINFORCE", REINFORCE, 1.0)):
        for seed in (1, 2, 3):
            reward, log_p = 0.5 + 0.1 * seed + shift, -(7.0 + seed * seed) * math.log(10)
            write_run(tmp_path / f"{method}_seed{seed}", [reward], [-7.0, log_p], config)
            runs.append(read_run(tmp_path / f"{method}_seed{seed}"))
            expected.setdefault(method, []).append((reward, log_p / math.log(10)))
    return runs, expected


def test_frontier_colours_by_method_with_mean_and_standard_error(tmp_path) -> None:
    runs, expected = make_runs(tmp_path)
    (ax,) = read_figure_data(plot_frontier(runs, tmp_path / "frontier.png"))["axes"]
    assert ax["legend"] == ["RePULSe (n=3)", "REINFORCE (n=3)"]
    assert ax["title"] and "log10 P(bad" in ax["ylabel"]
    dots = [s for s in ax["scatters"] if s["label"] == "_nolegend_"]
    assert [len(s["points"]) for s in dots] == [3, 3]  # every seed shown, one scatter per method
    assert all(len(s["colours"]) == 1 for s in dots) and dots[0]["colours"] != dots[1]["colours"]
    means = {bar["label"]: bar for bar in ax["error_bars"]}
    for dot, (method, points) in zip(dots, expected.items()):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        mean = means[f"{method} (n=3)"]
        assert mean["colour"] == dot["colours"][0]
        assert mean["x"] == pytest.approx([statistics.fmean(xs)])
        assert mean["y"] == pytest.approx([statistics.fmean(ys)])
        lengths = sorted(math.dist(*seg) for seg in mean["segments"])
        se = sorted(statistics.stdev(v) / math.sqrt(3) for v in (xs, ys))
        assert lengths == pytest.approx([2 * se[0], 2 * se[1]])  # mean ± s.e. in each direction


def test_curves_use_the_method_colours_and_name_each_method_once(tmp_path) -> None:
    runs, _ = make_runs(tmp_path)
    left, right = read_figure_data(plot_curves(runs, tmp_path / "curves.png"))["axes"]
    for ax in (left, right):
        assert ax["legend"] == ["RePULSe", "REINFORCE"]
        assert len({line["colour"] for line in ax["lines"]}) == 2 and len(ax["lines"]) == 6


def test_frontier_without_evaluations_is_an_error(tmp_path) -> None:
    runs, _ = make_runs(tmp_path)
    with pytest.raises(DataError, match="no run has both"):
        plot_frontier([{**runs[0], "evaluations": []}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
