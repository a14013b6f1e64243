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
from repulse.infra.files import write_text_atomic

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


def run_cli(command: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None, name: str) -> int:
    """Run `command(argv)`; user errors print `repulse NAME: error: ...` and return 2 (no traceback)."""
    setup_logging()
    try:
        command(argv)
    except (UserError, ConfigError) as err:
        print(f"repulse {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"repulse {name}: interrupted", file=sys.stderr)
        return 130
    return 0


def write_resolved_config(save_path: str | Path, flat: dict[str, Any]) -> Path:
    """`save_path/config.yaml`: every flag's resolved value, so the run can be reproduced with --config."""
    flat = {k: v for k, v in flat.items() if k != "config"}
    return write_text_atomic(Path(save_path) / "config.yaml", yaml.safe_dump(flat, sort_keys=True))
