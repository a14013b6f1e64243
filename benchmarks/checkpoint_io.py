"""Checkpoint state on disk: repulse's data-only format (infra/state_files.py: safetensors + a weights-only torch
file) against one torch.save pickle, the format it replaced.

The state is what the supervised loop saves for a model of --params million parameters in --tensors tensors:
the trainable weights, AdamW's two moments and step counts, the scheduler and loop counters. Save and load
are timed in one process, the peers alternating, best of --repeats; the peer's load is torch.load with
weights_only=False, what the old format needed. Files go to a temporary folder under --dir.

    python benchmarks/checkpoint_io.py                     # 135M parameters (SmolLM2-135M's size)
    python benchmarks/checkpoint_io.py --params 30 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, write_json_atomic  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=135.0, help="millions of trainable parameters")
    p.add_argument("--tensors", type=int, default=272, help="number of parameter tensors (SmolLM2-135M: 272)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per peer (best reported)")
    p.add_argument("--dir", default=None, help="where the files go (default: the system temp folder)")
    p.add_argument("--output", default=None, help="default: results/checkpoint_io.json")
    args = p.parse_args(argv)
    if args.params <= 0 or min(args.tensors, args.repeats) < 1:
        p.error("--params must be > 0, --tensors and --repeats >= 1")
    return args


def make_state(params_m: float, n_tensors: int) -> dict[str, Any]:
    import torch

    per = max(1, int(params_m * 1e6 / n_tensors))
    gen = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{i}.weight": torch.randn(per, generator=gen) for i in range(n_tensors)}
    moments = {
        i: {"step": torch.tensor(10.0), "exp_avg": torch.randn(per, generator=gen), "exp_avg_sq": torch.rand(per)}
        for i in range(n_tensors)
    }
    groups = [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0, "params": list(range(n_tensors))}]
    return {
        "model": weights,
        "optimizer": {"state": moments, "param_groups": groups},
        "scheduler": {"base_lrs": [1e-4], "last_epoch": 10, "_step_count": 11, "lr_lambdas": [None]},
        "loop": {"epoch": 0, "step_in_epoch": 10, "global_step": 10, "consumed_samples": 1280},
    }


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from repulse.infra.state_files import load_state, save_state

    state = make_state(args.params, args.tensors)
    folder = Path(tempfile.mkdtemp(prefix="checkpoint_io.", dir=args.dir))
    try:
        pairs = {
            "save": (lambda: torch.save(state, folder / "peer.pt"), lambda: save_state(folder, "ours", state)),
            "load": (
                lambda: torch.load(folder / "peer.pt", map_location="cpu", weights_only=False),
                lambda: load_state(folder, "ours"),
            ),
        }
        times: dict[str, dict[str, list[float]]] = {what: {"peer": [], "ours": []} for what in pairs}
        for r in range(2):  # alternate the order; save before load each round so the files exist
            for what, (peer, ours) in pairs.items():
                order = [("ours", ours), ("peer", peer)] if r % 2 == 0 else [("peer", peer), ("ours", ours)]
                for name, fn in order:
                    times[what][name].append(best_time(fn, args.repeats))
        size = {
            "peer": (folder / "peer.pt").stat().st_size,
            "ours": sum((folder / f"ours{s}").stat().st_size for s in (".pt", ".safetensors")),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [
        {
            "what": what,
            "params_m": args.params,
            "peer": "torch.save" if what == "save" else "torch.load (pickle)",
            "peer_s": min(t["peer"]),
            "ours_s": min(t["ours"]),
            "ratio": min(t["peer"]) / min(t["ours"]),
            "peer_mib": size["peer"] / 2**20,
            "ours_mib": size["ours"] / 2**20,
        }
        for what, t in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = measure(args)
    columns = [
        ("what", "measure", ""),
        ("params_m", "params (M)", ".0f"),
        ("peer", "peer", ""),
        ("peer_s", "peer s", ".2f"),
        ("ours_s", "repulse s", ".2f"),
        ("ratio", "peer/repulse", ".2f"),
        ("peer_mib", "peer MiB", ".0f"),
        ("ours_mib", "repulse MiB", ".0f"),
    ]
    print(format_table(rows, columns))
    out = args.output or str(result_path("checkpoint_io"))
    write_json_atomic(
        out,
        {
            "benchmark": "checkpoint_io",
            "settings": vars(args),
            "rows": rows,
            "machine": machine_info(("torch", "safetensors")),
        },
    )
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
