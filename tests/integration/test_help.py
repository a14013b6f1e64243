"""`repulse NAME --help`: named usage, flags grouped by their flag group, the docstring's examples verbatim, and no
text that belongs to another command."""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

from repulse.cli.__main__ import COMMANDS


def help_text(name: str, capsys) -> str:
    module = importlib.import_module(f"repulse.cli.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def split_help(text: str) -> tuple[str, dict[str, str]]:
    """(the description, {first flag of an entry: its whole entry text}) of an argparse help page."""
    description, _, options = text.partition("\noptions:\n")
    entries: dict[str, str] = {}
    current = None
    for line in options.splitlines():
        start = re.match(r"^  (--?[\w-]+|[a-z]\w*)", line)
        if start:
            current = start.group(1)
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None  # a section title or a blank line
    return description, entries


def flags_of(entries: dict[str, str]) -> set[str]:
    """Every spelling the page declares (aliases included) and the documented `--no_` twins."""
    flags = set()
    for entry in entries.values():
        invocation = re.split(r"\s{2,}", entry.strip(), maxsplit=1)[0]
        flags |= set(re.findall(r"--[\w-]+", invocation))
        flags |= set(re.findall(r"Off: (--no_\w+)", entry))
    return flags


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_names_the_command(name, capsys):
    assert help_text(name, capsys).startswith(f"usage: repulse {name} ")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flag_help_names_no_other_command_and_no_foreign_flag(name, capsys):
    _, entries = split_help(help_text(name, capsys))
    own = flags_of(entries)
    leaks = set()
    for flag, entry in entries.items():
        leaks |= {(name, flag, other) for other in COMMANDS if other != name and re.search(rf"\b{other}\b", entry)}
        leaks |= {(name, flag, foreign) for foreign in set(re.findall(r"--[a-z]\w+", entry)) - own}
    assert not leaks, f"help texts naming another command or a flag {name} lacks: {sorted(leaks)}"


def test_no_doubled_negation_and_no_hyphen_twins(capsys):
    text = help_text("train_ppo", capsys) + help_text("evaluate_gcg", capsys)
    assert "--no_no_" not in text
    assert "--flash-attn" not in text  # still parsed, but not listed twice
    assert "--no_gcg_filter_ids" in text  # the default-on switch says how to turn it off


def test_flags_are_grouped_in_the_order_of_the_groups(capsys):
    text = help_text("train_sft", capsys)
    titles = re.findall(r"^(\S[^\n:]*):$", text, re.MULTILINE)
    expected = ["options", "model", "LoRA", "data", "optimisation", "strategy (processes and devices)"]
    assert titles == [*expected, "checkpoints and outputs", "logging and progress", "SFT"]
    model_section = text.split("\nmodel:\n")[1].split("\n\n")[0]
    assert "--bf16" in model_section and "--learning_rate" not in model_section


def test_docstring_examples_keep_their_lines(capsys):
    from repulse.cli import train_sft

    text = help_text("train_sft", capsys)
    example_lines = [line for line in train_sft.__doc__.splitlines() if line.startswith("    repulse ")]
    assert example_lines
    for line in example_lines:
        assert line in text.splitlines()


def test_switches_show_no_value_placeholder(capsys):
    entries = split_help(help_text("train_sft", capsys))[1]
    assert entries["--bf16"].split()[:2] == ["--bf16", "Load"]
    assert entries["--max_len"].split()[:2] == ["--max_len", "INT"]


def fields_with_roles() -> list:
    from tests.unit.config.test_flags_declared_once import config_dataclasses

    return [f for group in config_dataclasses() for f in dataclasses.fields(group) if "roles" in f.metadata]


def test_roles_name_commands():
    assert fields_with_roles()  # --normalize_reward at least
    for field in fields_with_roles():
        assert set(field.metadata["roles"]) <= set(COMMANDS), field.name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_flag_with_several_meanings_shows_the_one_of_the_command(name, capsys):
    """--normalize_reward stores statistics in train_rm, insists on them in train_ppo and serve_rm, and z-scores
    the file in batch_inference: each --help says only what it does there."""
    entries = split_help(help_text(name, capsys))[1]
    for field in fields_with_roles():
        entry = entries.get(f"--{field.name}")
        if entry is None:
            continue
        shown = "".join(entry.split())  # argparse wraps lines at spaces and after hyphens
        roles = field.metadata["roles"]
        assert "".join(roles.get(name, field.metadata["help"]).split()) in shown, (name, field.name)
        for other, text in roles.items():
            if other != name and text != roles.get(name):
                assert "".join(text.split()) not in shown, (name, field.name, other)
