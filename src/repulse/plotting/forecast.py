"""The forecast figure: per model, the queries the Gumbel tail was fitted on and the forecast worst-query
probability Q_p(n) out to the deployment sizes, on log-log axes.

The j-th highest p of m queries is the empirical worst of m/j queries, so the fitted points sit at n = m/j: the
curve Q_p(n) runs through them and on to the forecast sizes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from repulse.estimation.forecast import P_CLIP, GumbelTailFit, forecast_worst_query
from repulse.plotting.figure_data import save_figure


def display_name(model: str) -> str:
    """A model's legend name: a local folder by its last part ('final' with its parent), a hub name as it is."""
    path = Path(model)
    if not path.exists():
        return model
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if parts[-1] in ("final", "merged") and len(parts) > 1 else parts[-1]


def fitted_points(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(n = m/j, p_(j)) for the top_k queries the fit used, p clipped as the fit clips it."""
    fit = result["fit"]
    log_p = sorted((max(q["log_p"], math.log(P_CLIP)) for q in result["queries"]), reverse=True)[: fit["top_k"]]
    return [fit["n_queries"] / j for j in range(1, len(log_p) + 1)], [math.exp(v) for v in log_p]


def plot_forecasts(path: str | Path, scales: list[int], results: list[dict], *, method: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for i, res in enumerate(results):
        name, colour = display_name(res["model"]), f"C{i % 10}"
        xs, ys = fitted_points(res)
        fit = GumbelTailFit(**res["fit"])
        grid = torch.logspace(math.log10(min(xs)), math.log10(max(scales)), 60, dtype=torch.float64)
        ax.plot(grid.tolist(), forecast_worst_query(fit, grid).clamp(min=P_CLIP).tolist(), color=colour, label=name)
        ax.scatter(xs, ys, s=18, color=colour, label=f"{name}: top {fit.top_k} of {fit.n_queries} queries (fitted)")
        q = [max(res["forecast_Q_p"][str(n)], P_CLIP) for n in scales]
        ax.scatter(scales, q, marker="s", s=30, facecolors="white", edgecolors=colour, label="_nolegend_")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="deployment size n (queries)", ylabel="Q_p(n): p of the worst of n queries")
    ax.set_title(f"forecast worst-query probability ({method}; squares: forecast sizes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
