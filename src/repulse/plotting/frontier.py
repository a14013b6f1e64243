"""The paper's frontier figure (average reward against log P(bad)), the matched-KL frontier (KL(p_theta || p_0)
against log P(bad)) and per-step curves, from run folders.

Runs are coloured by method (read from each run's config.yaml: RePULSe, REINFORCE, PPO, ...), and each method's
runs (seeds) are summarised by their mean with standard-error bars, as in the paper's figures. The average reward
is the exact E[r] of the final evaluation when every run has one (--analytic_bad_word_calc on an enumerable toy),
else the mean sampled reward over the last quarter of the steps (the paper's).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from repulse.infra.errors import DataError
from repulse.plotting.figure_data import save_figure

HARMLESSNESS_METHODS = {
    "neg_training": "RePULSe",
    "reinforce": "REINFORCE",
    "neg_reinforce": "RePULSe (neg_reinforce)",
}
ACTOR_METHODS = {"ppo": "PPO", "reinforce": "REINFORCE"}


def method_of(config: dict[str, Any]) -> str | None:
    """The method a train_ppo config.yaml describes, in the paper's words; None without a config."""
    if not config:
        return None
    if config.get("do_harmlessness_training"):
        loss = config.get("harmlessness_training_loss_type", "neg_training")
        name = "base as proposal" if config.get("use_base_as_proposal") else HARMLESSNESS_METHODS.get(loss, loss)
    else:
        loss = config.get("actor_loss_type", "ppo")
        name = ACTOR_METHODS.get(loss, f"twist ({loss})")
    transform = config.get("reward_transform")
    return f"{name} + {transform}" if transform else name


def read_run(folder: str | Path) -> dict[str, Any]:
    """summary.json, evaluations.json, metrics.jsonl and the method (config.yaml) of one train_ppo run."""
    folder = Path(folder)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise DataError(f"{folder}: no summary.json (is it a train_ppo --save_path?)")
    evaluations = folder / "evaluations.json"
    metrics = folder / "metrics.jsonl"
    config_file = folder / "config.yaml"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    return {
        "name": folder.name,
        "method": method_of(config or {}) or re.sub(r"[_-]?seed\d+$", "", folder.name) or folder.name,
        "summary": json.loads(summary_file.read_text()),
        "evaluations": json.loads(evaluations.read_text()) if evaluations.exists() else [],
        "steps": [r for r in rows if "reward_mean" in r],
    }


def group_of(run: dict[str, Any]) -> str:
    """A sweep's configuration ("group") when given, else the run's method."""
    return run.get("group") or run.get("method") or run["name"]


X_AXES = ("reward", "kl")


def all_evaluations_have(runs: list[dict[str, Any]], key: str) -> bool:
    """Whether some run has evaluations and every evaluation of every run holds `key`."""
    evaluations = [e for run in runs for e in run["evaluations"]]
    return bool(evaluations) and all(key in e for e in evaluations)


def exact_rewards(runs: list[dict[str, Any]]) -> bool:
    """Whether every evaluation has the exact E[r] (runs with --analytic_bad_word_calc on an enumerable toy)."""
    return all_evaluations_have(runs, "exact_expected_reward")


def reward_label(runs: list[dict[str, Any]]) -> str:
    return "E[r], exact (final)" if exact_rewards(runs) else "average reward (last quarter of training)"


def frontier_points(runs: list[dict[str, Any]], x_axis: str = "reward") -> list[tuple[str, float, float]]:
    """(name, x, final exact log10 P(bad)) per run that has both; x is the average reward (see the module) or, with
    x_axis "kl", the final exact KL(p_theta || p_0)."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, got {x_axis!r}")
    exact = exact_rewards(runs)
    points = []
    for run in runs:
        steps, evals = run["steps"], run["evaluations"]
        if not evals:
            continue
        last = evals[-1]
        if x_axis == "kl":
            if "exact_kl_to_reference" not in last:
                continue
            x = last["exact_kl_to_reference"]
        elif exact:
            x = last["exact_expected_reward"]
        elif steps:
            tail = steps[-max(1, len(steps) // 4) :]
            x = sum(s["reward_mean"] for s in tail) / len(tail)
        else:
            continue
        points.append((run["name"], x, last["exact_log_p_bad"] / math.log(10)))
    return points


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def method_colours(runs: list[dict[str, Any]]) -> dict[str, str]:
    """One colour per method (group), in order of first appearance."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    groups = list(dict.fromkeys(group_of(run) for run in runs))
    return {g: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, g in enumerate(groups)}


def plot_frontier(runs: list[dict[str, Any]], path: str | Path, x_axis: str = "reward") -> Path:
    """Final exact log10 P(bad) against average reward (x_axis "reward") or KL(p_theta || p_0) ("kl"): each run a
    small dot in its method's colour, each method's mean a large marker with standard-error bars in both
    directions; with "kl" each run's path over its evaluations as a faint line (the matched-KL frontier: methods
    compared at equal distance from p_0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(runs, x_axis)
    if not points:
        needs = "KL(p_theta || p_0) in its evaluations" if x_axis == "kl" else "per-step rewards"
        raise DataError(f"no run has both {needs} and exact P(bad) evaluations (--analytic_bad_word_calc)")
    group = {run["name"]: group_of(run) for run in runs}
    colours = method_colours(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    if x_axis == "kl":
        draw_paths(ax, runs, colours)
    for method, col in colours.items():
        mine = [(r, lp) for name, r, lp in points if group[name] == method]
        if not mine:
            continue
        xs, ys = [r for r, _ in mine], [lp for _, lp in mine]
        ax.scatter(xs, ys, s=16, alpha=0.5, color=col, label="_nolegend_")
        ax.errorbar(
            statistics.fmean(xs),
            statistics.fmean(ys),
            xerr=standard_error(xs) or None,
            yerr=standard_error(ys) or None,
            fmt="o",
            markersize=9,
            color=col,
            markeredgecolor="black",
            capsize=3,
            label=f"{method} (n={len(mine)})",
        )
    ax.legend(fontsize=8, title="method: mean ± s.e.", title_fontsize=8)
    if x_axis == "kl":
        ax.set_xlabel("KL(p_θ ‖ p_0), exact (final)")
        ax.set_title("probability of bad outputs at matched KL to the start")
    else:
        ax.set_xlabel(reward_label(runs))
        ax.set_title("reward vs probability of bad outputs")
    ax.set_ylabel("log10 P(bad output), exact")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def draw_paths(ax, runs: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """Each run's (KL, log10 P(bad)) after every evaluation, thin and faint, in its method's colour."""
    for run in runs:
        path = [e for e in run["evaluations"] if "exact_kl_to_reference" in e]
        if len(path) > 1:
            xs = [e["exact_kl_to_reference"] for e in path]
            ys = [e["exact_log_p_bad"] / math.log(10) for e in path]
            ax.plot(xs, ys, color=colours[group_of(run)], alpha=0.25, linewidth=0.8, label="_nolegend_")


EXACT_PANELS = (
    ("exact_entropy", "entropy of p_θ (nats), exact", "entropy"),
    ("exact_kl_to_reference", "KL(p_θ ‖ p_0), exact", "distance from the start"),
)


def eval_samples(run: dict[str, Any]) -> list[float]:
    """Samples drawn by the time of each evaluation (0 before training)."""
    samples = [s.get("samples_used", s["step"]) for s in run["steps"]]
    return [samples[min(e["step"], len(samples)) - 1] if e["step"] > 0 and samples else 0 for e in run["evaluations"]]


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Exact log10 P(bad) and average reward against samples drawn, one line per run in its method's colour; with
    exact diagnostics in the evaluations also the entropy of p_θ and KL(p_θ ‖ p_0), so that a lower P(bad) can be
    told apart from a collapse. The reward is the exact E[r] at each evaluation when every run has it (as in
    plot_frontier), else the sampled reward of every step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = method_colours(runs)
    exact = exact_rewards(runs)
    panels = [panel for panel in EXACT_PANELS if all_evaluations_have(runs, panel[0])]
    fig, axes = plt.subplots(1, 2 + len(panels), figsize=(5 * (2 + len(panels)), 3.8))
    left, right, *extra = axes
    labelled: set[str] = set()
    for run in runs:
        method = group_of(run)
        label = method if method not in labelled else "_nolegend_"
        labelled.add(method)
        evals, at = run["evaluations"], eval_samples(run)
        line = {"color": colours[method], "label": label}
        if evals:
            left.plot(at, [e["exact_log_p_bad"] / math.log(10) for e in evals], marker="o", **line)
        if exact:
            right.plot(at, [e["exact_expected_reward"] for e in evals], marker="o", **line)
        else:
            samples = [s.get("samples_used", s["step"]) for s in run["steps"]]
            right.plot(samples, [s["reward_mean"] for s in run["steps"]], alpha=0.8, **line)
        for ax, (key, _, _) in zip(extra, panels):
            ax.plot(at, [e[key] for e in evals], marker="o", **line)
    left.set(xlabel="samples drawn", ylabel="log10 P(bad), exact", title="probability of bad outputs")
    reward = "E[r] of p_θ, exact" if exact else "average reward of p samples"
    right.set(xlabel="samples drawn", ylabel=reward, title="reward")
    for ax, (_, ylabel, title) in zip(extra, panels):
        ax.set(xlabel="samples drawn", ylabel=ylabel, title=title)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
