"""serve_rm's API key: from REPULSE_RM_API_KEY unless --api_key is given, and never in the log."""

from __future__ import annotations

import logging

from repulse.cli.serve_rm import parse_args, with_api_key
from repulse.infra.secrets import REDACTED, RedactingFilter


def test_the_key_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("REPULSE_RM_API_KEY", "env-key-123456")
    caplog.set_level("WARNING", logger="repulse")
    assert with_api_key(parse_args([]).serve).api_key == "env-key-123456"
    assert "visible to other local users" not in caplog.text


def test_the_flag_wins_and_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("REPULSE_RM_API_KEY", "env-key-123456")
    caplog.set_level("WARNING", logger="repulse")
    assert with_api_key(parse_args(["--api_key", "flag-key-123456"]).serve).api_key == "flag-key-123456"
    assert "--api_key on the command line is visible to other local users" in caplog.text


def test_no_key_anywhere(monkeypatch):
    monkeypatch.delenv("REPULSE_RM_API_KEY", raising=False)
    assert with_api_key(parse_args([]).serve).api_key is None


def test_the_key_is_redacted_from_log_records(monkeypatch):
    monkeypatch.setenv("REPULSE_RM_API_KEY", "env-key-abcdef")
    with_api_key(parse_args([]).serve)
    record = logging.LogRecord("repulse", logging.INFO, __file__, 1, "key is %s", ("env-key-abcdef",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == f"key is {REDACTED}"
