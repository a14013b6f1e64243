"""Parse the flat OpenRLHF-style flags of a command into its typed flag groups.

Each flag is a field of one group (a dataclass in repulse.config). A command lists its groups; it may take only
part of a group (`only`), give a flag its own default (`defaults`) and accept the fork's other spelling of a flag
(`aliases`). `--config run.yaml` supplies defaults (flat keys = flag names); flags on the command line win.
`--help` lists the flags group by group (one section per dataclass), names the command as `repulse NAME`, and keeps
the command's docstring (its examples) as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from repulse.config.fields import ConfigError
from repulse.config.hints import describe_unknown

TRUE_WORDS = ("yes", "true", "t", "y", "1")
FALSE_WORDS = ("no", "false", "f", "n", "0")
METAVARS = {int: "INT", float: "FLOAT", str: "STR"}


def to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


to_bool.__name__ = "bool"  # argparse names the type in "invalid bool value: ..."


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring verbatim (its examples keep their lines), defaults shown, one spelling per flag."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=min(shutil.get_terminal_size().columns - 2, 117))

    def _get_help_string(self, action: argparse.Action) -> str:
        # "(default: None)" and "(default: False)" say nothing the flag's text does not.
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        # The hyphenated twin (--flash-attn) still parses; listing it beside --flash_attn only doubles the text.
        names = [s for s in action.option_strings if "-" not in s[2:]]
        shown = ", ".join(names or action.option_strings)
        if action.nargs == 0 or action.const is True:  # switches: --bf16 (or --bf16 false)
            return shown
        return f"{shown} {self._format_args(action, action.metavar or action.dest.upper())}"


def command_name(description: str | None) -> str | None:
    """The command a CLI docstring describes: every command's docstring starts with 'NAME: ...'."""
    match = re.match(r"\s*([a-z_]+):", description or "")
    return match.group(1) if match else None


def group_title(group: type) -> str:
    """A group's section title: its `_argument_group_name` (the transformers convention), else its class name
    in words (PPOArgs -> 'PPO', RolloutArgs -> 'rollout')."""
    title = getattr(group, "_argument_group_name", None)
    if title:
        return title
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*", re.sub(r"Args$", "", group.__name__))
    return " ".join(w if w.isupper() else w.lower() for w in words)


def unwrap_optional(kind: Any) -> Any:
    """X for `X | None` / Optional[X]; the type itself otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a flag has one type, got {kind}")
        return args[0]
    return kind


def field_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def field_help(field: dataclasses.Field, command: str | None) -> str:
    """The help of a flag in `command`: its role there (`arg(roles=...)`) or its general text."""
    return field.metadata.get("roles", {}).get(command, field.metadata.get("help", ""))


def add_field(
    section: Any,
    field: dataclasses.Field,
    kind: Any,
    default: Any,
    aliases: Sequence[str] = (),
    command: str | None = None,
) -> None:
    """One dataclass field as a flag: `--name` (the hyphenated spelling and `aliases` too), typed as the field is,
    with the help of its role in `command`."""
    names = [f"--{field.name}", *aliases]
    if "_" in field.name:
        names.append(f"--{field.name.replace('_', '-')}")
    kwargs: dict[str, Any] = {"default": default, "help": field_help(field, command), "dest": field.name}
    kind = unwrap_optional(kind)
    if kind is bool:
        kwargs.update(type=to_bool, nargs="?", const=True, metavar="BOOL")
        if default is True and not field.name.startswith("no_"):
            kwargs["help"] += f" Off: --no_{field.name}."
    elif typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        kwargs.update(type=item, nargs="+", metavar=METAVARS.get(item, "STR"))
    else:
        kwargs.update(type=kind, metavar=METAVARS.get(kind, "STR"))
    section.add_argument(*names, **kwargs)
    if kind is bool and default is True and not field.name.startswith("no_"):
        # `--no_flag` turns a default-on switch off (the transformers spelling); a flag named no_* needs no twin.
        section.add_argument(f"--no_{field.name}", action="store_false", dest=field.name, help=argparse.SUPPRESS)


def group_fields(group: type, only: Mapping[type, Sequence[str]] | None = None) -> list[dataclasses.Field]:
    """The fields of a group that are flags of this command: all, or the ones `only` names for it."""
    keep = (only or {}).get(group)
    fields = [f for f in dataclasses.fields(group) if f.init]
    if keep is not None:
        unknown = sorted(set(keep) - {f.name for f in fields})
        if unknown:
            raise TypeError(f"{group.__name__} has no fields {unknown}")
        fields = [f for f in fields if f.name in keep]
    return fields


def all_but(group: type, *names: str) -> list[str]:
    """Every field of `group` except `names`: for `only=` when a command takes all of a group but a few flags."""
    fields = [f.name for f in dataclasses.fields(group) if f.init]
    unknown = sorted(set(names) - set(fields))
    if unknown:
        raise TypeError(f"{group.__name__} has no fields {unknown}")
    return [name for name in fields if name not in names]


def make_parser(
    groups: Sequence[type],
    description: str | None = None,
    only: Mapping[type, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    name = command_name(description)
    prog = f"repulse {name}" if name else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [--flag VALUE ...] [--config FILE.yaml]",
        description=description,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config", type=str, default=None, metavar="FILE", help="YAML file of flag defaults (flat keys = flag names)."
    )
    defaults, aliases = dict(defaults or {}), dict(aliases or {})
    for group in groups:
        section = parser.add_argument_group(group_title(group))
        hints = typing.get_type_hints(group)
        for field in group_fields(group, only):
            default = defaults.pop(field.name, field_default(field))
            add_field(section, field, hints[field.name], default, aliases.pop(field.name, ()), name)
    if defaults or aliases:
        raise TypeError(f"defaults or aliases for flags the command does not take: {sorted({*defaults, *aliases})}")
    return parser


def primary_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the action that declared the flag (not its `--no_` twin)."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)
    return actions


def convert_like_cli(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, Any]:
    """Give YAML values the types the command line would: argparse converts only string defaults, so
    `dataset_probs: 1.0` would stay a float and `use_wandb: true` a bool."""
    actions = primary_actions(parser)
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
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
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
        raise ConfigError(f"--config {path}: unknown keys: {describe_unknown(unknown, known, prefix='')}")
    return values


def reject_unknown(parser: argparse.ArgumentParser, argv: Sequence[str] | None, known: set[str]) -> None:
    """Unknown flags stop the parse with a hint (TRL's name for ours, or the closest flag) in argparse's format."""
    _, extra = parser.parse_known_args(argv)
    if extra:
        names = [a[2:].split("=", 1)[0] for a in extra if a.startswith("--")]
        flags = [n.replace("-", "_") for n in names]
        described = describe_unknown(flags, known) if flags else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; {described}" if described else ""))


def parse_groups(
    groups: Sequence[type],
    argv: Sequence[str] | None,
    description: str | None = None,
    only: Mapping[type, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> tuple:
    """Return one instance per group, in order. Raises ConfigError (a ValueError) naming the bad flag.

    `only` limits a shared group to the flags that mean something to this command (e.g. just
    --disable_progress_bar of the logging group); its other fields keep their defaults and are not flags here.
    `defaults` gives a flag this command's own default (shown by --help; a --config file and the command line
    still win). `aliases` adds another spelling of a flag for this command (the fork's name, e.g. --model_path).
    """
    parser = make_parser(groups, description, only, defaults, aliases)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known_args, _ = pre.parse_known_args(argv)
    fields = {f.name for g in groups for f in group_fields(g, only)}
    if known_args.config:
        parser.set_defaults(**convert_like_cli(parser, load_yaml_defaults(known_args.config, fields)))
    reject_unknown(parser, argv, fields)
    namespace = parser.parse_args(argv)
    instances = []
    for group in groups:
        names = {f.name for f in group_fields(group, only)}
        instances.append(group(**{k: v for k, v in vars(namespace).items() if k in names}))
    return tuple(instances)


def to_flat_dict(*groups: Any, only: Mapping[type, Sequence[str]] | None = None) -> dict[str, Any]:
    """The resolved flags of several group instances as one flat mapping (for config.yaml): with the `only` the
    command parsed with, the flags it takes, so the file can be given back to it with --config."""
    flat: dict[str, Any] = {}
    for group in groups:
        values = dataclasses.asdict(group)
        flat.update({f.name: values[f.name] for f in group_fields(type(group), only)})
    return flat
