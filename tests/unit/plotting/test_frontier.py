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


def write_exact_run(folder, rows: list[tuple[float, float, float, float]], config: dict) -> None:
    """A run whose evaluations carry the exact diagnostics: rows of (log10 P(bad), KL to p_0, E[r], entropy)."""
    write_run(folder, [9.0] * 4, [lp * math.log(10) for lp, *_ in rows], config)
    evaluations = [
        {
            "step": i,
            "exact_log_p_bad": lp * math.log(10),
            "exact_kl_to_reference": kl,
            "exact_expected_reward": r,
            "exact_entropy": h,
        }
        for i, (lp, kl, r, h) in enumerate(rows)
    ]
    (folder / "evaluations.json").write_text(json.dumps(evaluations))


def make_exact_runs(tmp_path) -> list[dict]:
    rows = {
        "RePULSe": [(-3.0, 0.0, 1.8, 8.6), (-3.5, 1.0, 2.0, 7.0), (-4.0, 2.0, 2.5, 5.0)],
        "REINFORCE": [(-3.0, 0.0, 1.8, 8.6), (-3.2, 1.5, 2.2, 6.0), (-3.6, 3.0, 3.0, 2.0)],
    }
    for method, config in (("RePULSe", REPULSE), ("REINFORCE", REINFORCE)):
        for seed in (1, 2):
            shifted = [(lp - 0.1 * seed, kl + 0.1 * seed, r, h) for lp, kl, r, h in rows[method]]
            write_exact_run(tmp_path / f"{method}_seed{seed}", shifted, config)
    return [read_run(folder) for folder in sorted(tmp_path.iterdir())]


def test_kl_points_are_the_final_exact_kl_and_the_reward_is_the_exact_one(tmp_path) -> None:
    runs = make_exact_runs(tmp_path)
    by_name = {name: (x, y) for name, x, y in frontier_points(runs, "kl")}
    assert by_name["RePULSe_seed2"] == pytest.approx((2.2, -4.2)) and by_name["REINFORCE_seed1"] == pytest.approx(
        (3.1, -3.7)
    )
    # with the exact E[r] in every evaluation, the reward axis is its final value, not the sampled 9.0
    assert {x for _, x, _ in frontier_points(runs)} == {2.5, 3.0}
    with pytest.raises(ValueError, match="x_axis"):
        frontier_points(runs, "entropy")


def test_kl_points_skip_runs_without_the_diagnostics(tmp_path) -> None:
    runs = make_exact_runs(tmp_path / "exact")
    write_run(tmp_path / "plain", [0.5], [-7.0], REPULSE)
    plain = read_run(tmp_path / "plain")
    assert [name for name, *_ in frontier_points([plain, *runs], "kl")] == [run["name"] for run in runs]
    # one run without the exact E[r]: every run falls back to the sampled reward of the last quarter
    assert {x for _, x, _ in frontier_points([plain, *runs])} == {0.5, 9.0}
    with pytest.raises(DataError, match="KL"):
        plot_frontier([plain], tmp_path / "none.png", x_axis="kl")


def test_kl_frontier_draws_means_and_each_runs_path(tmp_path) -> None:
    runs = make_exact_runs(tmp_path)
    (ax,) = read_figure_data(plot_frontier(runs, tmp_path / "frontier_kl.png", x_axis="kl"))["axes"]
    assert "KL" in ax["xlabel"] and "log10 P(bad" in ax["ylabel"]
    assert ax["legend"] == ["REINFORCE (n=2)", "RePULSe (n=2)"]
    means = {bar["label"]: (bar["x"], bar["y"]) for bar in ax["error_bars"]}
    assert means["RePULSe (n=2)"] == (pytest.approx([2.15]), pytest.approx([-4.15]))
    paths = [line for line in ax["lines"] if len(line["x"]) > 1]
    assert len(paths) == 4  # one path per run, over its evaluations, in its method's colour
    repulse_path = next(p for p in paths if p["x"] == pytest.approx([0.1, 1.1, 2.1]))
    assert repulse_path["y"] == pytest.approx([-3.1, -3.6, -4.1])
    assert repulse_path["colour"] == next(b["colour"] for b in ax["error_bars"] if b["label"].startswith("RePULSe"))


def test_curves_add_entropy_and_kl_panels_with_the_exact_diagnostics(tmp_path) -> None:
    runs = make_exact_runs(tmp_path)
    axes = read_figure_data(plot_curves(runs, tmp_path / "curves.png"))["axes"]
    assert [ax["title"] for ax in axes] == [
        "probability of bad outputs",
        "reward",
        "entropy",
        "distance from the start",
    ]
    entropy = {tuple(line["y"]) for line in axes[2]["lines"]}
    assert (8.6, 7.0, 5.0) in entropy and (8.6, 6.0, 2.0) in entropy
    assert "exact" in axes[1]["ylabel"] and axes[1]["lines"][0]["y"] == pytest.approx([1.8, 2.2, 3.0])


def test_cli_writes_the_kl_frontier_only_when_the_runs_have_the_kl(tmp_path, capsys) -> None:
    from repulse.cli.plot_frontier import main

    runs = make_exact_runs(tmp_path / "exact")
    assert main([*(str(tmp_path / "exact" / run["name"]) for run in runs), "--output_dir", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"frontier.png", "frontier_kl.png", "curves.png"}
    write_run(tmp_path / "plain" / "run", [0.5], [-7.0], REPULSE)
    out = tmp_path / "plain_plots"
    out.mkdir()
    assert main([str(tmp_path / "plain" / "run"), "--output_dir", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {"frontier.png", "curves.png"}
    assert "frontier_kl" in capsys.readouterr().out.splitlines()[0]
