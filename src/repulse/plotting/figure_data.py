"""Save a figure as a PNG that carries what was drawn: every axes' title, labels, legend, lines, scatters and error
bars, as JSON in a PNG text chunk. Users get the numbers behind a plot; tests check a plot's structure without
reading pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repulse.infra.files import write_atomic

CHUNK = "repulse:figure"


def colour(value: Any) -> str:
    from matplotlib.colors import to_hex

    return to_hex(value, keep_alpha=False)


def axes_data(ax) -> dict[str, Any]:
    """What one axes shows, read back from its artists (not from what the caller meant to draw)."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer

    legend = ax.get_legend()
    lines = [
        {
            "label": line.get_label(),
            "x": [float(v) for v in line.get_xdata()],
            "y": [float(v) for v in line.get_ydata()],
            "colour": colour(line.get_color()),
            "marker": str(line.get_marker()),
        }
        for line in ax.get_lines()
    ]
    scatters = []
    for item in ax.collections:
        if isinstance(item, PathCollection):
            scatters.append(
                {
                    "label": item.get_label(),
                    "points": [[float(x), float(y)] for x, y in item.get_offsets()],
                    "colours": sorted({colour(c) for c in item.get_facecolors()}),
                }
            )
    bars = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            line, _, collections = container.lines
            segments = [seg.tolist() for item in collections for seg in item.get_segments()]
            bars.append(
                {
                    "label": container.get_label(),
                    "x": [float(v) for v in line.get_xdata()],
                    "y": [float(v) for v in line.get_ydata()],
                    "colour": colour(line.get_color()),
                    "segments": segments,
                }
            )
    return {
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(),
        "xscale": ax.get_xscale(),
        "yscale": ax.get_yscale(),
        "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
        "lines": lines,
        "scatters": scatters,
        "error_bars": bars,
    }


def save_figure(fig, path: str | Path) -> Path:
    """The PNG (written atomically) with the figure's data in its text chunk; the figure is closed."""
    import matplotlib.pyplot as plt

    data = json.dumps({"axes": [axes_data(ax) for ax in fig.get_axes()]})
    out = write_atomic(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={CHUNK: data})
    )
    plt.close(fig)
    return out


def read_figure_data(path: str | Path) -> dict[str, Any]:
    """The data a PNG written by save_figure carries."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[CHUNK])
