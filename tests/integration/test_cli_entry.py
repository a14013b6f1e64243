"""Every command answers --help, and `repulse NAME` dispatches to it."""

from __future__ import annotations

import importlib

import pytest

from repulse.cli.__main__ import COMMANDS
from repulse.cli.__main__ import main as repulse_main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_zero(name, capsys):
    module = importlib.import_module(f"repulse.cli.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: repulse {name} ") and "\n  --" in out  # the command named, its flags listed


def test_dispatcher_lists_commands_and_rejects_unknown(capsys):
    assert repulse_main([]) == 0
    assert "train_sft" in capsys.readouterr().out
    assert repulse_main(["no_such_command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_dispatcher_runs_a_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        repulse_main(["train_rm", "--help"])
    assert exit_info.value.code == 0
    assert "--value_head_prefix" in capsys.readouterr().out
