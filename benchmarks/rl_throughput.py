"""RL step throughput: repulse harmlessness (RePULSe neg_training) and REINFORCE steps against TRL's GRPOTrainer.

One step = sample N responses (generate), score them with the same Python reward function, update the policy.
All three run on the embedded tiny LM (GPT-2, vocabulary 281) with the RePULSe toy prompt "This man is a", N
samples of up to --gen_len new tokens at temperature 1 per step, one optimizer update per step on the whole batch,
no KL penalty (init_kl_coef 0 / beta 0), fp32 on the CPU:
- repulse neg_training: p_theta (REINFORCE + RLOO baseline + alpha x negative training) AND a proposal q trained
  with CTL, so one step also draws N samples from q and updates q (the method's own cost, not extra overhead;
  goal 0.6x TRL);
- repulse REINFORCE: `--actor_loss_type reinforce --reinforce_baseline_type expectation` (RLOO), the same work as
  GRPO per step: N samples, one reward call, one update (goal 1.5x TRL);
- TRL GRPOTrainer: num_generations = batch = N, num_iterations 1, steps_per_generation 1, beta 0.
samples/s = N x timed steps / time from the end of the last warm-up step to the end of the last step (p_theta's
samples only; the q samples of neg_training are not counted). Each trainer in a fresh process, order alternating.

    python benchmarks/rl_throughput.py                       # N = 64, 8 new tokens, 6 timed steps, best of 2
    python benchmarks/rl_throughput.py --gen_len 2 --group 64 --repeats 3
"""

from __future__ import annotations

import argparse
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
    PeakRSS,
    StepClock,
    format_table,
    machine_info,
    max_rss_mib,
    result_path,
    run_workers,
    set_offline_env,
    write_json_atomic,
)

PROMPT = "This man is a"
# Goals against TRL GRPO at equal N: the equal-work REINFORCE step 1.5x; a full RePULSe step, which also samples
# from q and updates it (more than twice GRPO's work), 0.6x.
GOALS = {"repulse_neg_training": 0.6, "repulse_reinforce": 1.5}
NAMES = ("repulse_neg_training", "repulse_reinforce", "trl_grpo")
PAIRED = ("repulse_neg_training", "repulse_reinforce")
LABELS = {
    "repulse_neg_training": "repulse RePULSe neg_training",
    "repulse_reinforce": "repulse REINFORCE (RLOO)",
    "trl_grpo": "TRL GRPOTrainer",
}
SHARED = (
    "under load: the CPUs were shared with other jobs (load averages per run); timings are noisy (best of --repeats)"
)
_BAD: set[str] | None = None


def reward(prompts, completions, **kwargs) -> list[float]:
    """The shared Python reward: -1 per embedded bad word in the response, minus 0.01 per word (repulse passes
    (prompts, responses) positionally, TRL passes prompts=, completions= and more)."""
    global _BAD
    if _BAD is None:
        from repulse.assets import bad_words

        _BAD = set(bad_words())
    out = []
    for text in completions:
        words = text.lower().split()
        out.append(-float(sum(w.strip(".,!?") in _BAD for w in words)) - 0.01 * len(words))
    return out


# --------------------------------------------------------------------------------------------------------- workers
def repulse_argv(name: str, spec: dict[str, Any], save_path: str) -> list[str]:
    n, steps = str(spec["group"]), str(spec["total_steps"])
    argv = ["--new_custom_single_prompt", "--custom_prompt", PROMPT, "--generate_max_len", str(spec["gen_len"])]
    argv += ["--duplicate_rollout_batch_by", n, "--rollout_batch_size", "1", "--micro_rollout_batch_size", "1"]
    argv += ["--micro_train_batch_size", n, "--train_batch_size", n, "--reward_fn", "rl_throughput:reward"]
    argv += ["--reinforce_baseline_type", "expectation", "--init_kl_coef", "0", "--lr_scheduler", "constant"]
    argv += ["--lr_warmup_ratio", "0", "--adam_betas", "0.9", "0.999", "--seed", str(spec["seed"]), "--fit_steps", "1"]
    argv += ["--save_path", save_path, "--disable_progress_bar", "--logging_steps", "1"]
    if name == "repulse_reinforce":
        return argv + [
            "--actor_loss_type",
            "reinforce",
            "--actor_learning_rate",
            str(spec["lr"]),
            "--num_episodes",
            steps,
        ]
    return argv + [
        "--do_harmlessness_training",
        "--harmlessness_training_loss_type",
        "neg_training",
        "--actor_loss_type",
        "ctl",
        "--parameterization",
        "policy_psi_q_p_s_t",
        "--target_dist_beta",
        "-1",
        "--alpha",
        "1",
        "--actor_learning_rate",
        "1e-3",
        "--base_actor_learning_rate",
        str(spec["lr"]),
        "--harmlessness_training_num_episodes",
        steps,
    ]


def worker_repulse(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `repulse train_ppo` in this process, timing each RL step (generate + score + update)."""
    from repulse.cli import train_ppo
    from repulse.trainers.rl import loop

    clock, mem, n = StepClock(), PeakRSS(), spec["group"]
    step = loop.train_step

    def timed_step(trainer, prompt_ids, index):
        if not clock.stamps and not clock._pending:  # the first step: the clock starts here, after set-up
            clock.start = time.perf_counter()
        metrics = step(trainer, prompt_ids, index)
        clock.count(n * len(prompt_ids))
        clock.tick()
        return metrics

    loop.train_step = timed_step
    with mem:
        code = train_ppo.main(repulse_argv(name, spec, str(Path(spec["workdir"]) / name)))
    if code != 0:
        raise RuntimeError(f"repulse train_ppo exited with {code}")
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "max_rss_mib": round(max_rss_mib(), 1)}


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from repulse.models.load import resolve_model_path

    clock, mem, n = StepClock(), PeakRSS(), spec["group"]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.count(n)
            clock.tick()

    path = resolve_model_path(None)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"),
        per_device_train_batch_size=n,
        num_generations=n,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=spec["gen_len"],
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=spec["total_steps"],
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
    )
    dataset = datasets.Dataset.from_list([{"prompt": PROMPT}] * (spec["total_steps"] + 1))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    with mem:
        clock.start = time.perf_counter()
        trainer.train()
    return {**clock.summary(spec["warmup"]), **mem.as_dict(), "max_rss_mib": round(max_rss_mib(), 1)}


def worker_paired(spec: dict[str, Any]) -> dict[str, Any]:
    """RePULSe and REINFORCE steps alternately in one process on one thread: the ratio of their step times, which
    a loaded machine distorts much less than rates measured in separate processes."""
    import statistics

    import torch

    from repulse.cli import train_ppo
    from repulse.trainers.rl.build import build_recipe
    from repulse.trainers.rl.loop import train_step

    torch.set_num_threads(1)
    recipes = {}
    for name in PAIRED:
        config = train_ppo.parse_args(repulse_argv(name, spec, str(Path(spec["workdir"]) / f"paired_{name}")))
        recipes[name] = build_recipe(config, *train_ppo.start(config))
    times: dict[str, list[float]] = {name: [] for name in PAIRED}
    for i in range(spec["warmup"] + spec["paired"]):
        for name in PAIRED if i % 2 else PAIRED[::-1]:
            start = time.perf_counter()
            train_step(recipes[name].trainer, recipes[name].prompt_ids, i)
            if i >= spec["warmup"]:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "median_step_s": median,
        "repulse_over_reinforce_step_time": median["repulse_neg_training"] / median["repulse_reinforce"],
        "step_times_s": {name: [round(t, 5) for t in values] for name, values in times.items()},
    }


def worker_main(name: str, spec_path: str, out_path: str) -> None:
    set_offline_env()
    spec = json.loads(Path(spec_path).read_text())
    try:
        if name == "paired":
            result = worker_paired(spec)
        else:
            result = worker_trl(spec) if name == "trl_grpo" else worker_repulse(name, spec)
            result["samples_per_s"] = result["tokens_per_s"]  # the clock counts samples, not tokens
    except Exception as err:  # recorded in the JSON instead of stopping the whole benchmark
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- orchestration
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", type=int, default=64, help="N samples of the prompt per step (the batch)")
    p.add_argument("--gen_len", type=int, default=8, help="max new tokens per sample")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--lr", type=float, default=3e-4, help="policy (p_theta / actor) learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="run each trainer N times; report each one's fastest run")
    p.add_argument("--out", default="rl_throughput.json")
    p.add_argument("--shared_machine", action="store_true", help="record in the JSON that it ran under load")
    p.add_argument(
        "--paired", type=int, default=0, help="also time N RePULSe / REINFORCE step pairs alternately in one process"
    )
    p.add_argument("--worker", choices=(*NAMES, "paired"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.group, args.gen_len, args.steps, args.warmup, args.repeats) < 1:
        p.error("--group, --gen_len, --steps, --warmup and --repeats must be >= 1")
    return args


def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    env = set_offline_env()
    spec = {
        "workdir": str(workdir),
        "group": args.group,
        "gen_len": args.gen_len,
        "warmup": args.warmup,
        "total_steps": args.warmup + args.steps,
        "lr": args.lr,
        "seed": args.seed,
        "paired": args.paired,
    }
    runs = run_workers(__file__, NAMES, spec, workdir, args.repeats, env)
    if args.paired:
        runs["paired"] = run_workers(__file__, ("paired",), spec, workdir, 1, env)["paired"]
    return runs


COLUMNS = [
    ("label", "trainer", ""),
    ("samples_per_s", "samples/s", ".1f"),
    ("step_s", "s/step", ".3f"),
    ("ratio_vs_trl", "x TRL", ".2f"),
    ("peak_rss_delta_mib", "train dRSS MiB", ".0f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("error", "error", ""),
]


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    best = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        best[name] = max(ok, key=lambda r: r["samples_per_s"]) if ok else results[0]
    trl = best["trl_grpo"].get("samples_per_s")
    rows = []
    for name, r in best.items():
        if "error" in r:
            rows.append({"name": name, "label": LABELS[name], "error": r["error"][:80]})
            continue
        rows.append(
            {
                "name": name,
                "label": LABELS[name],
                "samples_per_s": r["samples_per_s"],
                "step_s": 1 / r["steps_per_s"],
                "ratio_vs_trl": r["samples_per_s"] / trl if trl else None,
                "peak_rss_delta_mib": r["peak_rss_delta_mib"],
                "peak_rss_mib": r["peak_rss_mib"],
                "samples_per_s_all_repeats": [x.get("samples_per_s") for x in runs[name]],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0
    set_offline_env()
    with tempfile.TemporaryDirectory(prefix="rl_throughput_") as tmp:
        runs = run_all(args, Path(tmp))
    paired = runs.pop("paired", [None])[0]
    rows = summarize(runs)
    ratios = {r["name"]: r.get("ratio_vs_trl") for r in rows if r["name"] != "trl_grpo"}
    print()
    print(format_table(rows, COLUMNS))
    print("\n" + ", ".join(f"{k} / TRL = {v:.2f} (goal >= {GOALS[k]})" for k, v in ratios.items() if v))
    if paired is not None and "error" not in paired:
        ratio = paired["repulse_over_reinforce_step_time"]
        print(f"paired in one process: a RePULSe step takes {ratio:.2f}x a REINFORCE step")
    payload = {
        "benchmark": "rl_throughput",
        "machine": machine_info(("torch", "transformers", "trl", "accelerate")),
        "machine_shared": SHARED if args.shared_machine else "no other job ran (timings still vary run to run)",
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("worker", "spec", "result", "out")},
            "model": "embedded tiny LM (GPT-2, V=281)",
            "prompt": PROMPT,
            "dtype": "float32",
            "reward": "Python function: -1 per bad word - 0.01 per word (same function for all)",
            "samples_definition": "p_theta / policy samples per step; neg_training also draws N from q",
            "kl": "none (init_kl_coef 0, GRPO beta 0)",
        },
        "results": rows,
        "ratios_vs_trl": ratios,
        "goal_ratios": GOALS,
        "meets_goal": {k: (v is not None and v >= GOALS[k]) for k, v in ratios.items()},
        "runs": runs,
        "paired": paired,
    }
    print(f"results written to {write_json_atomic(result_path(args.out), payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
