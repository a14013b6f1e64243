"""API keys stay out of what the project writes: config.yaml, the log, error lines and the recorded command line."""

from __future__ import annotations

import logging
import sys

import pytest
import yaml

from repulse.cli.runner import hide_secret_arguments, run_cli, setup_logging, write_resolved_config
from repulse.infra.errors import UserError
from repulse.infra.secrets import REDACTED, redact_flags, redact_text, register_secret

KEY = "wk_0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("mode", ["offline", "True", "online", "disabled", None])
def test_wandb_modes_are_not_secrets(mode):
    assert redact_flags({"use_wandb": mode}) == {"use_wandb": mode}


def test_flags_are_redacted_in_a_copy():
    flat = {"use_wandb": KEY, "api_key": "serve-key-123", "learning_rate": 0.1}
    assert redact_flags(flat) == {"use_wandb": "True", "api_key": REDACTED, "learning_rate": 0.1}
    assert flat["use_wandb"] == KEY  # the run itself still has the key


def test_config_yaml_has_no_key_and_still_parses(tmp_path):
    write_resolved_config(tmp_path, {"use_wandb": KEY, "learning_rate": 0.1, "config": None})
    text = (tmp_path / "config.yaml").read_text()
    assert KEY not in text
    assert text.startswith("# use_wandb: the API key")
    assert yaml.safe_load(text) == {"use_wandb": "True", "learning_rate": 0.1}


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_keys_on_the_command_line_are_hidden_from_sys_argv(monkeypatch, form):
    given = ["--use_wandb", KEY] if form == "separate" else [f"--use_wandb={KEY}"]
    monkeypatch.setattr(sys, "argv", ["repulse", "--max_len", "8", *given, "--api_key", "k3y-for-serving"])
    args = hide_secret_arguments(None)
    assert args == ["--max_len", "8", *given, "--api_key", "k3y-for-serving"]  # parsed with the real keys
    assert KEY not in " ".join(sys.argv) and "k3y-for-serving" not in " ".join(sys.argv)  # what wandb records
    assert REDACTED in sys.argv[-1]


def test_keys_are_hidden_from_sys_argv_when_started_as_repulse_name(monkeypatch):
    """`repulse train_sft ...` hands the command its arguments as a list; sys.argv still holds the key."""
    from repulse.cli.__main__ import main

    seen = {}
    monkeypatch.setattr(sys, "argv", ["repulse", "train_sft", "--use_wandb", KEY])
    monkeypatch.setattr(
        "repulse.cli.train_sft.train", lambda cfg: seen.update(key=cfg.logging.use_wandb, argv=list(sys.argv))
    )
    assert main() == 0
    assert seen["key"] == KEY and KEY not in " ".join(seen["argv"]) and seen["argv"][-1] == REDACTED


def test_short_keys_are_hidden_from_sys_argv_too(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["repulse", "--api_key", "abc", "--port", "5000", "--api_key=xyz"])
    hide_secret_arguments(None)
    assert sys.argv == ["repulse", "--api_key", REDACTED, "--port", "5000", f"--api_key={REDACTED}"]


def test_mode_words_stay_on_the_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["repulse", "--use_wandb", "offline"])
    hide_secret_arguments(None)
    assert sys.argv == ["repulse", "--use_wandb", "offline"]


def test_log_records_and_error_lines_are_redacted(capsys):
    register_secret(KEY)
    setup_logging()
    logging.getLogger("repulse").warning("login with %s failed", KEY)

    def failing(argv):
        raise UserError(f"wandb refused the key {KEY}")

    assert run_cli(failing, [], "train_sft") == 2
    err = capsys.readouterr().err
    assert KEY not in err
    assert err.count(REDACTED) == 2
    assert redact_text(f"x{KEY}y") == f"x{REDACTED}y"
