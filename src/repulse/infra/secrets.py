"""Keep API keys out of what the project writes: config.yaml, the W&B run config, logs and error lines.

Two flags can carry a key: `--use_wandb KEY` (besides the words offline/online/True/...) and serve_rm's
`--api_key`. `redact_flags` rewrites them in a flag mapping before it is written anywhere; `register_secret`
adds a value that the log filter and the CLI's error line replace by REDACTED wherever it appears.
"""

from __future__ import annotations

import logging
from typing import Any

REDACTED = "<redacted>"
# --use_wandb values that select a mode rather than carry a key.
WANDB_WORDS = frozenset({"offline", "disabled", "online", "true", "1", "false", "0", "none", ""})
SECRET_FLAGS = ("api_key",)  # flags whose whole value is a secret

_secrets: set[str] = set()


def is_wandb_key(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() not in WANDB_WORDS


def register_secret(value: str | None) -> None:
    """From now on, replace `value` in log records and CLI error lines (keys shorter than 6 characters are
    too likely to occur in ordinary text to be replaced everywhere)."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_flags(flat: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flag mapping safe to write: a --use_wandb key becomes 'True' (an online run that logs in
    from WANDB_API_KEY or ~/.netrc, where `wandb.login` stored the key), --api_key becomes REDACTED."""
    out = dict(flat)
    if is_wandb_key(out.get("use_wandb")):
        register_secret(out["use_wandb"])
        out["use_wandb"] = "True"
    for name in SECRET_FLAGS:
        if out.get(name):
            register_secret(out[name])
            out[name] = REDACTED
    return out


class RedactingFilter(logging.Filter):
    """Replaces registered secrets in the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            clean = redact_text(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Attach the filter to every handler of the root logger (where the project's log lines go)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
