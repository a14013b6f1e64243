"""Parse the flat OpenRLHF-style flags of a command into its typed flag groups.

`--config run.yaml` supplies defaults (flat keys = flag names); flags on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from repulse.config.fields import ConfigError


def make_parser(groups: Sequence[type], description: str | None = None) -> argparse.ArgumentParser:
    # HfArgumentParser gives `--flag` booleans, `--no_flag`, Optional types and nargs for lists.
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        list(groups),
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=str, default=None, help="YAML file of flag defaults (flat keys).")
    return parser


def convert_like_cli(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, Any]:
    """Give YAML values the types the command line would: argparse converts only string defaults, so
    `dataset_probs: 1.0` would stay a float and `use_wandb: true` a bool."""
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        convert = actions[key].type if key in actions else None
        if convert is None or value is None:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [convert(str(v)) for v in value]
        else:
            try:
                out[key] = convert(str(value))
            except (TypeError, ValueError) as err:
                raise ConfigError(f"--config: {key}: {value!r} is not a valid value ({err})") from err
    return out


def load_yaml_defaults(path: str, known: set[str]) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({err})") from err
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown flags {unknown}")
    return values


def parse_groups(groups: Sequence[type], argv: Sequence[str] | None, description: str | None = None) -> tuple:
    """Return one instance per group, in order. Raises ConfigError (a ValueError) naming the bad flag."""
    parser = make_parser(groups, description)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known_args, _ = pre.parse_known_args(argv)
    if known_args.config:
        fields = {f.name for g in groups for f in dataclasses.fields(g)}
        parser.set_defaults(**convert_like_cli(parser, load_yaml_defaults(known_args.config, fields)))
    namespace = parser.parse_args(argv)
    instances = []
    for group in groups:
        names = {f.name for f in dataclasses.fields(group) if f.init}
        instances.append(group(**{k: v for k, v in vars(namespace).items() if k in names}))
    return tuple(instances)


def to_flat_dict(*groups: Any) -> dict[str, Any]:
    """The resolved flags of several group instances as one flat mapping (for config.yaml)."""
    flat: dict[str, Any] = {}
    for group in groups:
        flat.update(dataclasses.asdict(group))
    return flat
