"""serve_rm flags: OpenRLHF names parse into ServeArgs, bad values name the flag, a missing extra is one line."""

from __future__ import annotations

import importlib.util

import pytest

from repulse.cli import serve_rm
from repulse.config.fields import ConfigError

FLAGS = [
    (["--reward_pretrain", "runs/rm/final"], "reward", "reward_pretrain", "runs/rm/final"),
    (["--value_head_prefix", "value_head"], "reward", "value_head_prefix", "value_head"),
    (["--max_len", "128"], "data", "max_len", 128),
    (["--batch_size", "32"], "serve", "batch_size", 32),
    (["--max_wait_ms", "2.5"], "serve", "max_wait_ms", 2.5),
    (["--normalize_reward"], "reward", "normalize_reward", True),
    (["--bf16"], "model", "bf16", True),
    (["--host", "0.0.0.0"], "serve", "host", "0.0.0.0"),
    (["--port", "8123"], "serve", "port", 8123),
    (["--api_key", "k"], "serve", "api_key", "k"),
    (["--max_texts_per_request", "9"], "serve", "max_texts_per_request", 9),
    (["--max_body_bytes", "4096"], "serve", "max_body_bytes", 4096),
    (["--log_requests"], "serve", "log_requests", True),
    (["--disable_batching"], "serve", "disable_batching", True),
    (["--device", "cuda:1"], "serve", "device", "cuda:1"),
    (["--num_threads", "2"], "serve", "num_threads", 2),
]


@pytest.mark.parametrize(("argv", "group", "name", "value"), FLAGS, ids=[f[2] for f in FLAGS])
def test_flags_parse(argv, group, name, value):
    assert getattr(getattr(serve_rm.parse_args(argv), group), name) == value


def test_defaults_bind_loopback_without_a_key():
    cfg = serve_rm.parse_args([]).serve
    assert cfg.host == "127.0.0.1" and cfg.api_key is None and not cfg.is_exposed()
    assert serve_rm.parse_args(["--host", "0.0.0.0"]).serve.is_exposed()


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch_size", "0"],
        ["--max_len", "1"],
        ["--max_wait_ms", "-1"],
        ["--port", "70000"],
        ["--max_texts_per_request", "0"],
        ["--max_body_bytes", "10"],
        ["--api_key", " "],
        ["--device", "tpu"],
        ["--num_threads", "-1"],
    ],
)
def test_bad_values_name_the_flag(argv):
    with pytest.raises(ConfigError, match=argv[0]):
        serve_rm.parse_args(argv)


def test_bad_flag_value_is_one_line_and_exit_2(capsys):
    assert serve_rm.main(["--batch_size", "0"]) == 2
    assert "repulse serve_rm: error: --batch_size" in capsys.readouterr().err


def test_missing_fastapi_is_a_clear_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert serve_rm.main(["--port", "5999"]) == 2
    err = capsys.readouterr().err
    assert "-m pip install -e '" in err and "[serve]'" in err  # from the checkout


def test_help_mentions_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_rm.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--reward_pretrain" in out and "--disable_batching" in out and "--api_key" in out
