"""Each flag is declared once across the package: one dataclass field per flag name. A command that needs a flag
of another group takes that group (or part of it, `only=`); it does not declare the flag again."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections import defaultdict

import pytest

import repulse.config
import repulse.config.parser as parser_module
from repulse.cli.__main__ import COMMANDS

# Commands with a parser of their own: plot_frontier takes run folders and --output_dir, no run flags.
OWN_PARSER = {"plot_frontier"}


def config_dataclasses() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(repulse.config.__path__):
        module = importlib.import_module(f"repulse.config.{info.name}")
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
        ]
    return found


def own_fields(group: type) -> list[str]:
    """The fields a class declares itself (not the ones it inherits from the groups it extends)."""
    return [name for name in vars(group).get("__annotations__", {}) if not name.startswith("_")]


def declarations(groups: list[type]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = defaultdict(list)
    for group in groups:
        for name in own_fields(group):
            owners[name].append(f"{group.__module__}.{group.__qualname__}")
    return owners


def test_no_flag_name_is_declared_twice():
    twice = {name: owners for name, owners in declarations(config_dataclasses()).items() if len(owners) > 1}
    assert not twice, f"flags declared in more than one group: {twice}"


def test_the_check_sees_a_second_declaration():
    @dataclasses.dataclass
    class Twin:
        seed: int = 0

    Twin.__module__ = "repulse.config.twin"
    assert len(declarations([*config_dataclasses(), Twin])["seed"]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_group_of_a_command_is_a_config_dataclass(name, monkeypatch):
    """The scan above covers every flag a command parses: its groups and the groups they extend."""
    seen: list[type] = []
    make_parser = parser_module.make_parser

    def recording(groups, *args, **kwargs):
        seen.extend(groups)
        return make_parser(groups, *args, **kwargs)

    monkeypatch.setattr(parser_module, "make_parser", recording)
    module = importlib.import_module(f"repulse.cli.{name}")
    with pytest.raises(SystemExit):
        module.main(["--help"])
    if name in OWN_PARSER:
        assert not seen
        return
    assert seen, f"{name} parses no flag groups"
    known = set(config_dataclasses())
    for group in seen:
        for cls in group.__mro__:
            if dataclasses.is_dataclass(cls):
                assert cls in known, f"{name}: {cls.__qualname__} is not a dataclass of repulse.config"
