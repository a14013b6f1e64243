"""The paper's frontier figure (average reward against log P(bad)) and per-step curves, from run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from repulse.infra.errors import DataError
from repulse.infra.files import write_atomic


def read_run(folder: str | Path) -> dict[str, Any]:
    """summary.json, evaluations.json and metrics.jsonl of one train_ppo run."""
    folder = Path(folder)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise DataError(f"{folder}: no summary.json (is it a train_ppo --save_path?)")
    evaluations = folder / "evaluations.json"
    metrics = folder / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    return {
        "name": folder.name,
        "summary": json.loads(summary_file.read_text()),
        "evaluations": json.loads(evaluations.read_text()) if evaluations.exists() else [],
        "steps": [r for r in rows if "reward_mean" in r],
    }


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


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_frontier(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Final exact log10 P(bad) against average reward, a point per run; runs that carry a "group" (a sweep's
    configuration) are coloured by it, with the group's mean marked, instead of being labelled one by one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(runs)
    if not points:
        raise DataError("no run has both per-step rewards and exact P(bad) evaluations (--analytic_bad_word_calc)")
    groups = {run["name"]: run["group"] for run in runs if run.get("group")}
    fig, ax = plt.subplots(figsize=(6.5, 4.6) if groups else (5.5, 4.2))
    if groups:  # many seeds per configuration: one colour each, the seeds small, their mean large
        for group in dict.fromkeys(groups[name] for name, _, _ in points if name in groups):
            xs, ys = zip(*[(r, lp) for name, r, lp in points if groups.get(name) == group], strict=True)
            dots = ax.scatter(xs, ys, s=14, alpha=0.45)
            ax.scatter(
                [sum(xs) / len(xs)],
                [sum(ys) / len(ys)],
                s=110,
                color=dots.get_facecolor()[0],
                edgecolor="black",
                label=f"{group} (n={len(xs)})",
            )
        ax.legend(fontsize=7)
    for name, reward, log_p in points:
        if name not in groups:
            ax.scatter(reward, log_p, s=40)
            ax.annotate(name, (reward, log_p), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("average reward (last quarter of training)")
    ax.set_ylabel("log10 P(bad output), exact")
    ax.set_title("reward vs probability of bad outputs")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in runs:
        evals = run["evaluations"]
        samples = [s.get("samples_used", s["step"]) for s in run["steps"]]
        if evals:
            per_eval = [samples[min(e["step"], len(samples)) - 1] if e["step"] > 0 and samples else 0 for e in evals]
            left.plot(per_eval, [e["exact_log_p_bad"] / math.log(10) for e in evals], marker="o", label=run["name"])
        right.plot(samples, [s["reward_mean"] for s in run["steps"]], label=run["name"], alpha=0.8)
    left.set_xlabel("samples drawn")
    left.set_ylabel("log10 P(bad), exact")
    right.set_xlabel("samples drawn")
    right.set_ylabel("average reward of p samples")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
