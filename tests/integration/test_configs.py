"""Every YAML in configs/ parses with the command named in its header comment, and every value in it reaches the
parsed flags (a config that parsed but was ignored would pass a bare `is not None`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from repulse.config.parser import to_flat_dict

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_every_value_is_applied(path: Path):
    match = re.search(r"repulse (\w+) --config", path.read_text())
    assert match, f"{path.name}: the header must show the launch command"
    module = importlib.import_module(f"repulse.cli.{match.group(1)}")
    flat = to_flat_dict(*module.parse_args(["--config", str(path)]))
    defaults = to_flat_dict(*module.parse_args([]))
    values = yaml.safe_load(path.read_text())
    assert values, f"{path.name} sets no flags"
    for key, value in values.items():
        assert key in flat, f"{path.name}: {key} is no flag of {match.group(1)}"
        assert flat[key] == value, f"{path.name}: {key} is {flat[key]!r} after parsing, {value!r} in the file"
    assert any(flat[key] != defaults[key] for key in values), f"{path.name} changes nothing"
