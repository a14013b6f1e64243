"""DPO training throughput: repulse `train_dpo` against TRL's `DPOTrainer` on the same model, data and batches.

Both train the same weights against the same frozen reference (the policy's weights plus small noise, so that the
first step's loss is not trivially log 2; its log-probs computed on the fly, not precomputed) on
the same prompt/chosen/rejected pairs, in the same micro-batches (TRL reads the rows in the order repulse's seeded
sampler draws them), with the sigmoid DPO loss (beta 0.1, summed response log-probs), AdamW (betas 0.9/0.95, eps
1e-8, no weight decay), constant learning rate, clipping at 1.0, fp32, sdpa attention, no gradient checkpointing.
Each trainer runs in its own fresh Python process; the order alternates between repeats.

pairs/s = batch x timed steps / time from the end of the last warm-up step to the end of the last step. The loss
of the FIRST step (same weights, same batch) must agree between the two to 1e-4 (`checks` in the JSON).

    python benchmarks/dpo_throughput.py                                 # tiny GPT-2 built from config
    python benchmarks/dpo_throughput.py --repeats 3
    python benchmarks/dpo_throughput.py --model smollm2 --steps 4 --warmup 1 --batch_size 4 --max_len 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the benchmarks folder is not a package)
    PeakRSS,
    StepClock,
    format_table,
    machine_info,
    max_rss_mib,
    result_path,
    run_workers,
    set_offline_env,
    smollm2_dir,
    write_json_atomic,
)
from sft_throughput import BETAS, MAX_NORM, batch_tokens, build_model, make_words, repulse_order  # noqa: E402

GOAL_RATIO, LOSS_TOLERANCE = 1.25, 1e-4
SHARED = "yes: 2 cores shared with two other workers running tests; timings are noisy (best of --repeats)"


def synthetic_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """prompt/chosen/rejected with log-normal word counts (so padding matters), short enough not to be truncated."""
    rng = random.Random(seed)
    words = make_words(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]

    def text(lo: int, mu: float, hi: int) -> str:
        count = min(max(int(rng.lognormvariate(mu, 0.6)), lo), hi)
        return " ".join(rng.choices(words, weights=weights, k=count)).capitalize()

    return [
        {
            "prompt": f"Question {i}: {text(3, 2.6, 30)}?\nAnswer:",
            "chosen": f" {text(1, 3.2, 60)}.",
            "rejected": f" {text(1, 3.2, 60)}.",
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------------------- workers
def repulse_argv(spec: dict[str, Any], save_path: str) -> list[str]:
    b = str(spec["batch_size"])
    argv = ["--pretrain", spec["model_dir"], "--dataset", spec["data_path"], "--prompt_key", "prompt"]
    argv += ["--chosen_key", "chosen", "--rejected_key", "rejected", "--max_len", str(spec["max_len"])]
    argv += ["--micro_train_batch_size", b, "--train_batch_size", b, "--max_epochs", "1", "--beta", str(spec["beta"])]
    argv += ["--learning_rate", str(spec["lr"]), "--lr_scheduler", "constant", "--lr_warmup_ratio", "0"]
    argv += ["--ref_pretrain", spec["ref_dir"], "--seed", str(spec["seed"]), "--l2", "0"]
    argv += ["--adam_betas", str(BETAS[0]), str(BETAS[1])]
    return argv + [
        "--max_norm",
        str(MAX_NORM),
        "--save_path",
        save_path,
        "--logging_steps",
        "1",
        "--disable_progress_bar",
    ]


def worker_repulse(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `repulse train_dpo` in this process, timing each optimizer step and the training loop's peak RSS."""
    from repulse.cli import train_dpo
    from repulse.trainers import dpo, loop, session

    clock, mem, losses = StepClock(), PeakRSS(), []
    finish, step, run_loop = loop.finish_optimizer_step, dpo.DPOTrainer.training_step, session.run_training_loop

    def timed_finish(run, micro_metrics, bar):
        finish(run, micro_metrics, bar)
        clock.tick()

    def counted_step(self, batch):
        clock.count(batch_tokens(batch))
        loss, metrics = step(self, batch)
        losses.append(loss.item())
        return loss, metrics

    def measured_loop(run):
        with mem:
            clock.start = time.perf_counter()
            return run_loop(run)

    loop.finish_optimizer_step, dpo.DPOTrainer.training_step = timed_finish, counted_step
    session.run_training_loop = measured_loop
    code = train_dpo.main(repulse_argv(spec, str(Path(spec["workdir"]) / "repulse")))
    if code != 0:
        raise RuntimeError(f"repulse train_dpo exited with {code}")
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "max_rss_mib": round(max_rss_mib(), 1), "losses": losses}


def trl_config(spec: dict[str, Any]):
    import torch
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=spec["total_steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=MAX_NORM,
        max_length=spec["max_len"],
        beta=spec["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
    )


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Run TRL's DPOTrainer in this process with the same timing and memory probes as the repulse worker."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    clock, mem, losses = StepClock(), PeakRSS(), []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.count(batch_tokens(inputs))
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append((out[0] if return_outputs else out).item())
            return out

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list([rows[i] for i in spec["order"]])
    ref = AutoModelForCausalLM.from_pretrained(spec["ref_dir"], dtype=torch.float32, attn_implementation="sdpa")
    trainer = CountingDPOTrainer(
        model=model,
        ref_model=ref,
        args=trl_config(spec),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    with mem:
        clock.start = time.perf_counter()
        trainer.train()
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "max_rss_mib": round(max_rss_mib(), 1), "losses": losses}


def worker_main(name: str, spec_path: str, out_path: str) -> None:
    set_offline_env()
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = worker_trl(spec) if name == "trl" else worker_repulse(spec)
    result["pairs_per_s"] = result["steps_per_s"] * spec["batch_size"]
    result["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- orchestration
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny-gpt2", "smollm2"], default="tiny-gpt2")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--batch_size", type=int, default=8, help="pairs per step (micro = global batch)")
    p.add_argument("--max_len", type=int, default=512, help="longer than every synthetic pair: nothing truncated")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="run each trainer N times; report each one's fastest run")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the workers")
    p.add_argument("--out", default=None, help="result file name under benchmarks/results/")
    p.add_argument("--worker", choices=["repulse", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error("--steps, --warmup, --batch_size and --repeats must be >= 1")
    return args


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    total = args.warmup + args.steps
    rows = synthetic_pairs(total * args.batch_size, args.seed)
    if args.model == "smollm2":
        model_dir = smollm2_dir()
    else:
        sft_like = [{"input": r["prompt"], "output": r["chosen"] + r["rejected"]} for r in rows]
        model_dir = build_model("tiny-gpt2", workdir / "tiny-gpt2", sft_like, args.seed, args.max_len)
    ref_dir = perturbed_reference(Path(model_dir), workdir / "reference", args.seed)
    data_path = workdir / "pairs.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "workdir": str(workdir),
        "model": args.model,
        "model_dir": str(model_dir),
        "ref_dir": str(ref_dir),
        "data_path": str(data_path),
        "rows": len(rows),
        "order": repulse_order(len(rows), args.batch_size, args.seed),
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "total_steps": total,
        "warmup": args.warmup,
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
    }


def perturbed_reference(model_dir: Path, out_dir: Path, seed: int, scale: float = 0.02) -> Path:
    """The reference: the policy's weights plus small Gaussian noise, so that step 1's loss is not just log 2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale * param.std().clamp(min=1e-3))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def run_all(args: argparse.Namespace, spec: dict[str, Any], workdir: Path) -> dict[str, list[dict[str, Any]]]:
    return run_workers(__file__, ("repulse", "trl"), spec, workdir, args.repeats, set_offline_env())


LABELS = {"repulse": "repulse train_dpo", "trl": "TRL DPOTrainer"}
COLUMNS = [
    ("label", "trainer", ""),
    ("pairs_per_s", "pairs/s", ".2f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("ratio_vs_trl", "x TRL", ".2f"),
    ("peak_rss_delta_mib", "train dRSS MiB", ".0f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("first_loss", "loss@1", ".6f"),
    ("last_loss", "loss@end", ".4f"),
]


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    best = {name: max(results, key=lambda r: r["pairs_per_s"]) for name, results in runs.items()}
    return [
        {
            "name": name,
            "label": LABELS[name],
            "pairs_per_s": r["pairs_per_s"],
            "tokens_per_s": r["tokens_per_s"],
            "steps_per_s": r["steps_per_s"],
            "ratio_vs_trl": r["pairs_per_s"] / best["trl"]["pairs_per_s"],
            "peak_rss_delta_mib": r["peak_rss_delta_mib"],
            "peak_rss_mib": r["peak_rss_mib"],
            "first_loss": r["losses"][0],
            "last_loss": r["losses"][-1],
            "pairs_per_s_all_repeats": [x["pairs_per_s"] for x in runs[name]],
        }
        for name, r in best.items()
    ]


def report(args: argparse.Namespace, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    rows = summarize(runs)
    rep, trl = runs["repulse"][0], runs["trl"][0]
    diff = abs(rep["losses"][0] - trl["losses"][0])
    checks = {
        "first_step_loss_repulse": rep["losses"][0],
        "first_step_loss_trl": trl["losses"][0],
        "first_step_loss_abs_diff": diff,
        "first_step_loss_agrees_1e-4": diff <= LOSS_TOLERANCE,
        "same_tokens_per_step": rep["tokens_per_step"] == trl["tokens_per_step"],
        "tokens_per_step_repulse": rep["tokens_per_step"],
        "tokens_per_step_trl": trl["tokens_per_step"],
    }
    ratio = rows[0]["ratio_vs_trl"]
    mem_ok = rows[0]["peak_rss_delta_mib"] <= rows[1]["peak_rss_delta_mib"]
    settings = {k: v for k, v in spec.items() if k not in ("order", "workdir", "data_path")}
    settings.update(
        repeats=args.repeats,
        loss="sigmoid DPO on summed response log-probs, reference on the fly",
        optimizer=f"AdamW betas={BETAS} eps=1e-8 weight_decay=0",
        max_grad_norm=MAX_NORM,
        dtype="float32",
        attention="sdpa",
        gradient_checkpointing=False,
        timing="end of warm-up step to end of last step, each trainer in a fresh subprocess, order "
        "alternating between repeats, fastest repeat reported",
        memory="peak RSS during the training loop (VmHWM reset at its start) and its rise",
    )
    payload = {
        "benchmark": "dpo_throughput",
        "machine": machine_info(("torch", "transformers", "trl", "accelerate")),
        "machine_shared": SHARED,
        "settings": settings,
        "results": rows,
        "repulse_vs_trl_pairs_per_s": ratio,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
        "memory_le_trl": mem_ok,
        "checks": checks,
        "runs": runs,
    }
    print()
    print(format_table(rows, COLUMNS))
    print(
        f"\nrepulse / TRL pairs/s = {ratio:.2f} (goal >= {GOAL_RATIO}); train dRSS <= TRL: {mem_ok}; "
        f"|loss@1 diff| = {diff:.2e} (<= {LOSS_TOLERANCE}: {diff <= LOSS_TOLERANCE}); "
        f"same tokens per step: {checks['same_tokens_per_step']}"
    )
    default = "dpo_throughput.json" if args.model == "tiny-gpt2" else f"dpo_throughput_{args.model}.json"
    print(f"results written to {write_json_atomic(result_path(args.out or default), payload)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0
    set_offline_env()
    with tempfile.TemporaryDirectory(prefix="dpo_throughput_") as tmp:
        spec = prepare(args, Path(tmp))
        print(
            f"[dpo_throughput] {args.model}: {spec['rows']} pairs, {spec['total_steps']} steps "
            f"({args.warmup} warm-up) of {args.batch_size} pairs",
            flush=True,
        )
        runs = run_all(args, spec, Path(tmp))
        report(args, spec, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
