"""The demo's own flag (its output folder is --save_path of CheckpointArgs)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class DemoArgs:
    seeds: int = arg(1, "Seeds per method (the table shows the mean over seeds).")

    def __post_init__(self) -> None:
        require(self.seeds >= 1, "--seeds must be >= 1")
