"""The one helper that declares a flag: a dataclass field with its help text."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


def arg(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field whose default is `default` and whose `--help` text is `help`.

    `roles={command: text}` gives the help of a flag that does something else in some commands (the fork's flags
    carry several meanings): each command's --help shows only what the flag does there. Lists and dicts get a
    default_factory so instances never share a mutable default.
    """
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds; messages start with the flag name."""
    if not condition:
        raise ConfigError(message)
