"""Training strategies on 2 processes: memory per rank and tokens/s of `repulse train_sft` under DDP, DeepSpeed
ZeRO-1/2/3, ZeRO-3 + --adam_offload and FSDP2, against TRL's SFTTrainer under accelerate + DeepSpeed ZeRO-2/3.

Full fine-tuning in fp32 on the CPU (gloo), 2 processes under torchrun, the same model, synthetic rows, micro-batch,
accumulation, AdamW (torch's, betas 0.9/0.95, no weight decay), constant learning rate, clipping at 1.0, sdpa,
response-only loss. TRL gets the same DeepSpeed stage through TrainingArguments(deepspeed=...), its documented
route (accelerate's DeepSpeed plugin underneath), with the bucket sizes at "auto", which the Trainer resolves
from the hidden size exactly as repulse's config sets them; its batches hold the same rows, split between the
ranks its own way.

Per rank:
- **state MiB**: resident memory after an optimizer step (activations freed, malloc_trim'd) above the resident
  memory just before the model loaded: weights + gradients + optimizer state + the strategy's buffers. The goal
  is ZeRO-3 <= 0.55x DDP (two ranks: the physical share is 0.5x).
- **peak MiB**: the training loop's peak RSS (VmHWM reset at its start), activations included.
tokens/s = non-padding tokens of the timed steps on both ranks / the slower rank's time from the end of the
warm-up steps to the end of the last step. Goal: repulse >= 1.2x TRL at the same ZeRO stage.

    python benchmarks/strategies.py                              # SmolLM2-135M-Instruct, small settings
    python benchmarks/strategies.py --steps 6 --warmup 2 --batch_size 4 --max_len 256
    python benchmarks/strategies.py --only ddp zero3            # a subset

Needs deepspeed (the `deepspeed` extra), trl (benchmarks/requirements.txt) and the converted SmolLM2 folder.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the benchmarks folder is not a package)
    REPO_ROOT,
    PeakRSS,
    StepClock,
    current_rss_mib,
    format_table,
    machine_info,
    result_path,
    set_offline_env,
    smollm2_dir,
    write_json_atomic,
)
from sft_throughput import batch_tokens, synthetic_rows  # noqa: E402

BETAS = (0.9, 0.95)
STATE_GOAL, SPEED_GOAL = 0.55, 1.2
STRATEGIES = {
    "ddp": ["--strategy", "ddp"],
    "zero1": ["--strategy", "deepspeed", "--zero_stage", "1"],
    "zero2": ["--strategy", "deepspeed", "--zero_stage", "2"],
    "zero3": ["--strategy", "deepspeed", "--zero_stage", "3"],
    "zero3_offload": ["--strategy", "deepspeed", "--zero_stage", "3", "--adam_offload"],
    "fsdp2": ["--strategy", "fsdp2"],
    "trl_zero2": [],
    "trl_zero3": [],
}
LABELS = {
    "ddp": "repulse DDP",
    "zero1": "repulse ZeRO-1",
    "zero2": "repulse ZeRO-2",
    "zero3": "repulse ZeRO-3",
    "zero3_offload": "repulse ZeRO-3 + offload",
    "fsdp2": "repulse FSDP2",
    "trl_zero2": "TRL SFTTrainer ZeRO-2",
    "trl_zero3": "TRL SFTTrainer ZeRO-3",
}


def trimmed_rss_mib() -> float:
    """RSS after handing freed heap pages back to the kernel (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return current_rss_mib()


# ----------------------------------------------------------------------------------------------------------- workers
def repulse_argv(spec: dict[str, Any], name: str) -> list[str]:
    micro, accum = spec["batch_size"], spec["accumulation"]
    argv = ["--pretrain", spec["model_dir"], "--dataset", spec["data_path"], "--max_len", str(spec["max_len"])]
    argv += ["--micro_train_batch_size", str(micro), "--train_batch_size", str(micro * accum * 2)]
    argv += ["--max_epochs", "1", "--learning_rate", "1e-5", "--lr_scheduler", "constant", "--lr_warmup_ratio", "0"]
    argv += ["--adam_betas", *map(str, BETAS), "--l2", "0", "--max_norm", "1.0", "--seed", str(spec["seed"])]
    argv += ["--save_path", str(Path(spec["workdir"]) / name), "--disable_progress_bar", "--dist_backend", "gloo"]
    return argv + STRATEGIES[name]


def worker_repulse(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """repulse train_sft on this rank, with the step clock, the pre-load RSS and the RSS after each step."""
    from repulse.cli import train_sft, training
    from repulse.trainers import loop, session, sft

    clock, mem, marks = StepClock(), PeakRSS(), {"base": None, "after_step": []}
    finish, step, run_loop, load = (
        loop.finish_optimizer_step,
        sft.SFTTrainer.training_step,
        session.run_training_loop,
        training.load_trained_lm,
    )

    def loading(strategy, path, cfg):
        marks["base"] = trimmed_rss_mib()
        return load(strategy, path, cfg)

    def timed_finish(run, micro_metrics, bar):
        finish(run, micro_metrics, bar)
        clock.tick()
        marks["after_step"].append(trimmed_rss_mib())

    def counted_step(self, batch):
        clock.count(batch_tokens(batch))
        return step(self, batch)

    def measured_loop(run):
        with mem:
            clock.start = time.perf_counter()
            return run_loop(run)

    training.load_trained_lm, session.run_training_loop = loading, measured_loop
    loop.finish_optimizer_step, sft.SFTTrainer.training_step = timed_finish, counted_step
    if train_sft.main(repulse_argv(spec, name)) != 0:
        raise RuntimeError(f"train_sft ({name}) failed")
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "state_mib": marks["after_step"][-1] - marks["base"]}


def worker_trl(spec: dict[str, Any], stage: int) -> dict[str, Any]:
    """TRL's SFTTrainer with DeepSpeed ZeRO-`stage` through TrainingArguments (made before the model loads, so
    ZeRO-3 partitions it at load, as the transformers docs require)."""
    import datasets
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    # Before the config and the model: ZeRO-3's zero.Init in from_pretrained reads the world size from the
    # process group, and accelerate on CPU has not started one by then (DeepSpeed would see 1 process).
    deepspeed.init_distributed("gloo")
    clock, mem, marks = StepClock(), PeakRSS(), {"after_step": []}
    ds_config = {  # "auto": the Trainer fills them from the model (h^2 buckets), as repulse's config does
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
        },
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": False},
    }
    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / f"trl{stage}"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["accumulation"],
        max_steps=spec["total_steps"],
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=spec["max_len"],
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        deepspeed=ds_config,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
    )
    base = trimmed_rss_mib()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    data = datasets.Dataset.from_list([{"prompt": r["input"], "completion": r["output"]} for r in rows])

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()
            marks["after_step"].append(trimmed_rss_mib())

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.count(batch_tokens(inputs))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
    with mem:
        clock.start = time.perf_counter()
        trainer.train()
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "state_mib": marks["after_step"][-1] - base}


def worker_main(name: str, spec_path: str, out_dir: str) -> None:
    set_offline_env()
    spec = json.loads(Path(spec_path).read_text())
    result = worker_trl(spec, int(name[-1])) if name.startswith("trl") else worker_repulse(spec, name)
    rank = int(os.environ.get("RANK", 0))
    Path(out_dir, f"{name}_rank{rank}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- orchestration
def launch(name: str, spec_path: Path, workdir: Path, env: dict[str, str]) -> list[dict[str, Any]] | str:
    """Both ranks' results, or the failure (the log's last lines) as text: one failed run does not stop the rest."""
    with socket.socket() as sock:  # a free port for this launch's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [__file__, "--worker", name, "--spec", str(spec_path), "--result", str(workdir)]
    log = workdir / f"{name}.log"
    print(f"[strategies] running {LABELS[name]} ...", flush=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line or "error" in line]
        print(f"[strategies] {name} failed (exit {done.returncode}): {lines[:3]}", flush=True)
        return f"exit {done.returncode}: " + " | ".join(lines[:6])
    return [json.loads((workdir / f"{name}_rank{r}.json").read_text()) for r in (0, 1)]


def combine(name: str, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    elapsed = max(r["elapsed_s"] for r in ranks)
    return {
        "name": name,
        "label": LABELS[name],
        "tokens_per_s": sum(r["tokens_timed"] for r in ranks) / elapsed,
        "state_mib": max(r["state_mib"] for r in ranks),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
        "step_s": elapsed / ranks[0]["steps_timed"],
    }


def add_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["name"]: r for r in rows}
    for row in rows:
        if "ddp" in by:
            row["state_vs_ddp"] = row["state_mib"] / by["ddp"]["state_mib"]
        peer = by.get(f"trl_{row['name']}")
        if peer:
            row["speed_vs_trl"] = row["tokens_per_s"] / peer["tokens_per_s"]
    goals = {}
    if "zero3" in by and "ddp" in by:
        goals["zero3_state_vs_ddp"] = by["zero3"]["state_vs_ddp"]
        goals["zero3_state_goal_met"] = goals["zero3_state_vs_ddp"] <= STATE_GOAL
    for stage in ("zero2", "zero3"):
        if "speed_vs_trl" in by.get(stage, {}):
            goals[f"{stage}_speed_vs_trl"] = by[stage]["speed_vs_trl"]
            goals[f"{stage}_speed_goal_met"] = by[stage]["speed_vs_trl"] >= SPEED_GOAL
    return goals


COLUMNS = [
    ("label", "run (2 processes)", ""),
    ("state_mib", "state MiB/rank", ".0f"),
    ("state_vs_ddp", "x DDP", ".2f"),
    ("peak_rss_mib", "peak RSS MiB/rank", ".0f"),
    ("tokens_per_s", "tokens/s", ".1f"),
    ("speed_vs_trl", "x TRL", ".2f"),
    ("step_s", "s/step", ".2f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--batch_size", type=int, default=2, help="micro-batch per process")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step per process")
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=list(STRATEGIES), help="run these only")
    p.add_argument("--note", default="", help="written into the JSON (e.g. 'under load')")
    p.add_argument("--out", default="strategies.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0
    env = {**set_offline_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src")])}
    with tempfile.TemporaryDirectory(prefix="strategies_") as tmp:
        workdir = Path(tmp)
        total = args.warmup + args.steps
        rows = synthetic_rows(total * args.batch_size * args.accumulation * 2, args.seed)
        (workdir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = {
            "workdir": str(workdir),
            "model_dir": str(smollm2_dir()),
            "data_path": str(workdir / "sft.jsonl"),
            "batch_size": args.batch_size,
            "accumulation": args.accumulation,
            "max_len": args.max_len,
            "total_steps": total,
            "warmup": args.warmup,
            "seed": args.seed,
        }
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        names = args.only or list(STRATEGIES)
        runs = {name: launch(name, spec_path, workdir, env) for name in names}
    rows = [combine(name, ranks) for name, ranks in runs.items() if not isinstance(ranks, str)]
    failed = {name: error for name, error in runs.items() if isinstance(error, str)}
    goals = add_ratios(rows)
    print()
    print(format_table(rows, COLUMNS))
    print(json.dumps(goals, indent=1))
    settings = {k: v for k, v in spec.items() if k not in ("workdir", "data_path")}
    settings.update(processes=2, backend="gloo", dtype="float32", note=args.note, omp_threads_per_process=1)
    payload = {
        "benchmark": "strategies",
        "machine": machine_info(("torch", "transformers", "deepspeed", "trl", "accelerate")),
        "settings": settings,
        "results": rows,
        "goals": goals,
        "failed": failed,
        "runs": runs,
    }
    path = write_json_atomic(result_path(args.out), payload)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
