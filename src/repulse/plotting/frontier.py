"""The paper's frontier figure (average reward against log P(bad)) and per-step curves, from run folders.

Runs are coloured by method (read from each run's config.yaml: RePULSe, REINFORCE, PPO, ...), and each method's
runs (seeds) are summarised by their mean with standard-error bars, as in the paper's figures.
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


def frontier_points(runs: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(name, mean reward over the last quarter of steps, final exact log10 P(bad)) per run that has both."""
    points = []
    for run in runs:
        steps, evals = run["steps"], run["evaluations"]
        if not steps or not evals:
            continue
        tail = steps[-max(1, len(steps) // 4) :]
        reward = sum(s["reward_mean"] for s in tail) / len(tail)
        points.append((run["name"], reward, evals[-1]["exact_log_p_bad"] / math.log(10)))
    return points


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def method_colours(runs: list[dict[str, Any]]) -> dict[str, str]:
    """One colour per method (group), in order of first appearance."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    groups = list(dict.fromkeys(group_of(run) for run in runs))
    return {g: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, g in enumerate(groups)}


def plot_frontier(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Final exact log10 P(bad) against average reward: each run a small dot in its method's colour, each method's
    mean a large marker with standard-error bars in both directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(runs)
    if not points:
        raise DataError("no run has both per-step rewards and exact P(bad) evaluations (--analytic_bad_word_calc)")
    group = {run["name"]: group_of(run) for run in runs}
    colours = method_colours(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
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
    ax.set_xlabel("average reward (last quarter of training)")
    ax.set_ylabel("log10 P(bad output), exact")
    ax.set_title("reward vs probability of bad outputs")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Exact log10 P(bad) and average reward against samples drawn, one line per run in its method's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = method_colours(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labelled: set[str] = set()
    for run in runs:
        method = group_of(run)
        label = method if method not in labelled else "_nolegend_"
        labelled.add(method)
        evals = run["evaluations"]
        samples = [s.get("samples_used", s["step"]) for s in run["steps"]]
        if evals:
            per_eval = [samples[min(e["step"], len(samples)) - 1] if e["step"] > 0 and samples else 0 for e in evals]
            log_p = [e["exact_log_p_bad"] / math.log(10) for e in evals]
            left.plot(per_eval, log_p, marker="o", color=colours[method], label=label)
        right.plot(samples, [s["reward_mean"] for s in run["steps"]], color=colours[method], alpha=0.8, label=label)
    left.set(xlabel="samples drawn", ylabel="log10 P(bad), exact", title="probability of bad outputs")
    right.set(xlabel="samples drawn", ylabel="average reward of p samples", title="reward")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
