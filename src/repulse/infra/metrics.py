"""Metric sinks: metrics.jsonl (always), TensorBoard and Weights & Biases (optional). Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from repulse.infra.errors import require_package
from repulse.infra.files import write_jsonl_atomic
from repulse.infra.secrets import is_wandb_key, redact_flags, register_secret

log = logging.getLogger("repulse")


class MetricLogger:
    """Writes one JSON object per logged step to `<save_path>/metrics.jsonl`, and mirrors to TB / wandb."""

    def __init__(
        self,
        save_path: str,
        *,
        enabled: bool = True,
        tensorboard_dir: str | None = None,
        wandb: str | None = None,
        wandb_project: str = "repulse",
        wandb_run_name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(save_path) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard_dir:
            require_package("tensorboard", "logging", "--use_tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=tensorboard_dir)
        if wandb:
            self._wandb = start_wandb(wandb, wandb_project, wandb_run_name or Path(save_path).name, config or {})

    def _truncate_after(self, resume_step: int | None) -> None:
        # A resumed run rewrites history from its checkpoint on; rows logged after it by the killed run go.
        if not self.path.exists():
            return
        if resume_step is None:
            self.path.unlink()
            return
        write_jsonl_atomic(self.path, [r for r in read_rows(self.path) if r.get("step", 0) <= resume_step])

    def log(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": step, **{f"{prefix}{k}": clean_number(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line that does not parse (the torn last line of a run killed mid-write,
    on a full disk or at a power cut) is dropped with a warning instead of blocking the resume."""
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            log.warning("%s: line %d is not a JSON object (cut off by an interrupted run?); dropped", path, number)
            continue
        rows.append(row)
    return rows


def clean_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def start_wandb(setting: str, project: str, run_name: str, config: dict[str, Any]) -> Any:
    require_package("wandb", "logging", "--use_wandb")
    import wandb

    if is_wandb_key(setting):
        register_secret(setting)
    mode = "offline" if setting.lower() in ("offline", "disabled") else "online"
    if mode == "online" and setting.lower() not in ("true", "1", "online"):
        wandb.login(key=setting)
    os.environ.setdefault("WANDB_SILENT", "true")
    # The run config is uploaded and stored next to the run: never with the key in it.
    safe = redact_flags(config)
    return wandb.init(project=project, name=run_name, config=safe, mode=mode, reinit="finish_previous")
