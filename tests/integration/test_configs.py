"""Every YAML in configs/ parses with the command named in its header comment."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path):
    match = re.search(r"repulse (\w+) --config", path.read_text())
    assert match, f"{path.name}: the header must show the launch command"
    module = importlib.import_module(f"repulse.cli.{match.group(1)}")
    config = module.parse_args(["--config", str(path)])
    assert config is not None
