"""What every command shares: logging set-up, turning user errors into one line and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from repulse.config.fields import ConfigError
from repulse.infra.errors import UserError
from repulse.infra.files import remove_stale_temporaries, write_text_atomic
from repulse.infra.secrets import install_log_filter, redact_flags, redact_text, register_secret

log = logging.getLogger("repulse")


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[repulse] %(message)s", stream=sys.stderr, force=True)
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Library progress bars (shard writing, dataset mapping) would interleave with the training bar.
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    install_log_filter()


SECRET_OPTIONS = ("--use_wandb", "--api_key")


def hide_secret_arguments(argv: Sequence[str] | None) -> list[str]:
    """The arguments to parse. Keys given with --use_wandb / --api_key are registered for redaction and
    replaced in sys.argv (however the command was started: `repulse NAME`, `python -m repulse.cli.NAME`):
    libraries that record the command line (wandb stores it with the run) see no key. (The process's own
    command line, visible in `ps`, cannot be changed: pass keys through the environment instead.)"""
    from repulse.infra.secrets import REDACTED, is_wandb_key, redact_text

    args = list(sys.argv[1:] if argv is None else argv)
    found = set()
    for i, arg in enumerate(args):
        option, eq, inline = arg.partition("=")
        if option not in SECRET_OPTIONS:
            continue
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        if value and (option != "--use_wandb" or is_wandb_key(value)):
            register_secret(value)
            found.add(value)

    def hidden(arg: str) -> str:
        option, eq, value = arg.partition("=")
        if arg in found or (eq and option in SECRET_OPTIONS and value in found):
            return f"{option}={REDACTED}" if eq else REDACTED
        return redact_text(arg)

    sys.argv[1:] = [hidden(arg) for arg in sys.argv[1:]]
    return args


def run_cli(command: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None, name: str) -> int:
    """Run `command(argv)`; user errors print `repulse NAME: error: ...` and return 2 (no traceback)."""
    argv = hide_secret_arguments(argv)
    setup_logging()
    try:
        command(argv)
    except (UserError, ConfigError) as err:
        print(f"repulse {name}: error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"repulse {name}: interrupted", file=sys.stderr)
        return 130
    return 0


OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.json", "final")
KEY_NOTE = (
    "# use_wandb: the API key given on the command line is not stored here; 'True' logs in with\n"
    "# WANDB_API_KEY or the key wandb saved in ~/.netrc.\n"
)


def write_resolved_config(save_path: str | Path, flat: dict[str, Any]) -> Path:
    """`save_path/config.yaml`: every flag's resolved value (keys redacted), so the run can be reproduced with
    --config. Called once at the start of a run (rank 0), it also cleans what an interrupted run left in
    save_path and says when the folder already holds outputs that this run replaces."""
    save_path = Path(save_path)
    for line in remove_stale_temporaries(save_path):
        log.info("%s", line)
    announce_existing_outputs(save_path, bool(flat.get("load_checkpoint")))
    safe = redact_flags({k: v for k, v in flat.items() if k != "config"})
    note = KEY_NOTE if safe.get("use_wandb") != flat.get("use_wandb") else ""
    return write_text_atomic(save_path / "config.yaml", note + yaml.safe_dump(safe, sort_keys=True))


def announce_existing_outputs(save_path: Path, resuming: bool) -> None:
    found = [name for name in OUTPUTS if (save_path / name).exists()]
    if not found:
        return
    if resuming:
        log.info("--save_path %s: resuming; outputs logged after the checkpoint are rewritten", save_path)
    else:
        log.warning(
            "--save_path %s already holds outputs of an earlier run (%s): this run replaces them",
            save_path,
            ", ".join(found),
        )
