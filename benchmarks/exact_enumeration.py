"""Exact 2-token P(bad) by enumeration: the prompt's KV cache reused (repulse) against recomputing every sequence.

repulse.estimation.exact walks the sampling tree level by level; at the last level it needs the next-token
distribution of every length-1 prefix (about 49k rows on SmolLM2-135M-Instruct). The cached path runs the prompt
once and feeds each row only its new token on top of the prompt's KV cache. Two recompute paths run every full
sequence (prompt + prefix) from scratch: `reference`, as the reference code does (`model(ids).logits[:, -1]`: the
LM head at every position), which the speedup goal is measured against, and `lean` (`exact_bad_probability_recompute`
with `logits_to_keep=1`: the head at the last position only), a stricter baseline also reported.

The recompute paths take minutes on a small CPU, so by default they are measured on a contiguous slice of first
tokens (--recompute_fraction of the vocabulary; 1.0 runs it all) and their full times are extrapolated linearly (the
cost is one forward row per live first token, and the rows are all of the same length). On that slice all paths
run the same restricted walk and must give the same probability mass (checked, `checks` in the JSON).

    python benchmarks/exact_enumeration.py                         # SmolLM2-135M-Instruct + the embedded tiny LM
    python benchmarks/exact_enumeration.py --recompute_fraction 1  # measure the whole recompute path
    python benchmarks/exact_enumeration.py --model tiny            # only the quick tiny-LM row
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, smollm2_dir, write_json_atomic  # noqa: E402

PROMPT = "This man is a"
# No project-specific profanity list exists for SmolLM2 (assets/bad_words.txt is the tiny grammar's planted words).
SMOLLM2_BAD_WORDS = ["fuck", "shit", "damn", "bitch", "idiot"]
GOAL_SPEEDUP, GOAL_CACHED_S = 4.0, 120.0


class SliceCriterion:
    """Wraps a bad-word criterion so that only first tokens in [lo, hi) count: the walk restricted to a slice."""

    def __init__(self, inner, lo: int, hi: int) -> None:
        self.inner, self.lo, self.hi = inner, lo, hi
        self.vocab_size, self.start = inner.vocab_size, inner.start

    def step(self, ids, state, tail, ends):
        out = self.inner.step(ids, state, tail, ends)
        if ids.shape[1] != 0:
            return out
        bad = out.bad.clone()
        bad[:, : self.lo] = False
        bad[:, self.hi :] = False
        keep = (out.cols >= self.lo) & (out.cols < self.hi)
        return replace(
            out, bad=bad, rows=out.rows[keep], cols=out.cols[keep], state=out.state[keep], tail=out.tail[keep]
        )

    def last_step(self, ids, state, tail):
        return self.inner.last_step(ids, state, tail)


def reference_style(model):
    """`model` as the reference code calls it: `model(ids).logits[:, -1]`, the LM head run at every position.

    The wrapper hides transformers' `logits_to_keep`, so repulse's recompute scorer cannot skip the head on the
    prompt positions; otherwise the walk, the rows and the batches are the same.
    """
    import torch

    class AllPositionLogits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
            )

    return AllPositionLogits(model)


def slice_walk(model, prompt, criterion, lo: int, hi: int, reuse_cache: bool, eos_id, batch_size: int):
    """(log P(bad and first token in [lo, hi)), seconds, rows, tokens) through exact's own level-by-level walk."""
    from repulse.estimation import exact

    t0 = time.perf_counter()
    log_p, scorer = exact._compute_log_p_bad(
        model, prompt, 2, SliceCriterion(criterion, lo, hi), eos_id, batch_size, False, reuse_cache, 20_000_000
    )
    return log_p, time.perf_counter() - t0, scorer.rows, scorer.tokens


def load(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        path, words = str(smollm2_dir()), SMOLLM2_BAD_WORDS
    else:
        from repulse.assets import bad_words
        from repulse.models.load import resolve_model_path

        path, words = resolve_model_path(None), bad_words()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, tokenizer, path, words


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Cached full walk (timed, best of --repeats), then all three paths on one slice of first tokens."""
    import torch

    from repulse.estimation.exact import exact_bad_probability, exact_bad_probability_recompute
    from repulse.estimation.word_match import make_criterion

    model, tokenizer, path, words = load(name)
    prompt = torch.tensor(tokenizer(PROMPT)["input_ids"])
    vocab, eos = model.get_output_embeddings().weight.shape[0], tokenizer.eos_token_id
    kw = dict(bad_words=words, tokenizer=tokenizer, eos_token_id=eos, batch_size=args.batch_size)
    exact_bad_probability(model, prompt, 1, **kw)  # warm-up: builds the word matcher's token tables (cached)
    fraction = 1.0 if name == "tiny" else args.recompute_fraction
    reference = reference_style(model)
    cached, recompute, refs, slices = [], [], [], []
    for repeat in range(args.repeats):
        print(f"[exact_enumeration] {name}: cached full walk (repeat {repeat + 1}) ...", flush=True)
        cached.append(exact_bad_probability(model, prompt, 2, **kw))
        if fraction >= 1.0:
            print(f"[exact_enumeration] {name}: recompute full walks (lean, reference-style) ...", flush=True)
            recompute.append(exact_bad_probability_recompute(model, prompt, 2, **kw))
            refs.append(exact_bad_probability_recompute(reference, prompt, 2, **kw))
    best = min(cached, key=lambda r: r.wall_time_s)
    row = {
        "model": name,
        "path": path,
        "vocab": int(vocab),
        "prompt_tokens": int(prompt.numel()),
        "bad_words": words,
        "log10_p_bad": best.log_p_bad / math.log(10),
        "p_bad": best.p_bad,
        "cached_s": best.wall_time_s,
        "cached_s_all": [r.wall_time_s for r in cached],
        "rows": best.n_forward_rows,
        "cached_tokens": best.n_forward_tokens,
        "recompute_fraction": fraction,
    }
    if recompute:
        rb, fb = min(recompute, key=lambda r: r.wall_time_s), min(refs, key=lambda r: r.wall_time_s)
        row.update(
            recompute_s=rb.wall_time_s,
            recompute_s_all=[r.wall_time_s for r in recompute],
            reference_s=fb.wall_time_s,
            reference_s_all=[r.wall_time_s for r in refs],
            recompute_measured="full walk",
            recompute_log10_p_bad=rb.log_p_bad / math.log(10),
            recompute_tokens=rb.n_forward_tokens,
            full_abs_diff_p=max(abs(rb.p_bad - best.p_bad), abs(fb.p_bad - best.p_bad)),
        )
    else:
        lo = args.slice_start
        hi = min(vocab, lo + max(1, round(fraction * vocab)))
        criterion = make_criterion(vocab, None, words, tokenizer, False)
        paths = {"cached": (model, True), "recompute": (model, False), "reference": (reference, False)}
        for repeat in range(args.repeats):
            order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
            slices.append(
                {
                    k: slice_walk(paths[k][0], prompt, criterion, lo, hi, paths[k][1], eos, args.batch_size)
                    for k in order
                }
            )
        secs = {k: min(s[k][1] for s in slices) for k in paths}
        lp = {k: slices[0][k][0] for k in paths}
        diff = max(abs(math.exp(lp["cached"]) - math.exp(lp[k])) for k in ("recompute", "reference"))
        scale = vocab / (hi - lo)
        row.update(
            recompute_s=secs["recompute"] * scale,
            reference_s=secs["reference"] * scale,
            recompute_measured=f"first tokens [{lo}, {hi}) of {vocab}, {secs['recompute']:.2f} s (lean), "
            f"{secs['reference']:.2f} s (reference-style), extrapolated x {scale:.2f}",
            slice=[lo, hi],
            slice_recompute_s=secs["recompute"],
            slice_reference_s=secs["reference"],
            slice_cached_s=secs["cached"],
            slice_speedup=secs["reference"] / secs["cached"],
            slice_log10_p_bad_cached=lp["cached"] / math.log(10),
            slice_log10_p_bad_recompute=lp["recompute"] / math.log(10),
            slice_log10_p_bad_reference=lp["reference"] / math.log(10),
            slice_abs_diff_p=diff,
            slice_rel_diff_p=diff / max(math.exp(lp["cached"]), 1e-300),
            slice_runs=slices,
        )
    row["speedup"] = row["reference_s"] / row["cached_s"]  # the goal: against the reference code's way
    row["speedup_vs_lean_recompute"] = row["recompute_s"] / row["cached_s"]
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["all", "smollm2", "tiny"], default="all")
    p.add_argument(
        "--recompute_fraction",
        type=float,
        default=1 / 16,
        help="share of the vocabulary (a contiguous slice of first tokens) on which the recompute path "
        "is measured; its time is extrapolated linearly. 1 runs the whole recompute walk",
    )
    p.add_argument("--slice_start", type=int, default=0, help="first token of the measured slice")
    p.add_argument("--batch_size", type=int, default=512, help="prefix rows per forward (every path)")
    p.add_argument("--repeats", type=int, default=1, help="best of N for each path (order alternates)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default="exact_enumeration.json")
    args = p.parse_args(argv)
    if not 0 < args.recompute_fraction <= 1:
        p.error("--recompute_fraction must be in (0, 1]")
    return args


COLUMNS = [
    ("model", "model", ""),
    ("vocab", "vocab", "d"),
    ("rows", "rows", "d"),
    ("log10_p_bad", "log10 P(bad)", ".4f"),
    ("cached_s", "cached s", ".2f"),
    ("reference_s", "reference s", ".2f"),
    ("recompute_s", "lean recompute s", ".2f"),
    ("recompute_fraction", "measured share", ".4f"),
    ("speedup", "speedup", ".2f"),
    ("speedup_vs_lean_recompute", "vs lean", ".2f"),
    ("slice_speedup", "slice speedup", ".2f"),
    ("slice_rel_diff_p", "slice rel. diff", ".1e"),
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_offline_env()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny", "smollm2"] if args.model == "all" else [args.model]
    rows = [measure(name, args) for name in names]
    print()
    print(format_table(rows, COLUMNS))
    main_row = rows[-1]
    extrapolated = main_row.get("slice") is not None
    note = " (recompute time extrapolated from the measured slice)" if extrapolated else ""
    m = main_row
    print(
        f"\n{m['model']}: cached {m['cached_s']:.1f} s, {m['speedup']:.2f}x the reference-style recompute, "
        f"{m['speedup_vs_lean_recompute']:.2f}x the lean one{note}"
    )
    checks = {
        r["model"]: {
            "slice_rel_diff_p": r.get("slice_rel_diff_p"),
            "full_abs_diff_p": r.get("full_abs_diff_p"),
            "same_mass": (r.get("slice_rel_diff_p") or 0) < 1e-6 and (r.get("full_abs_diff_p") or 0) < 1e-9,
        }
        for r in rows
    }
    payload = {
        "benchmark": "exact_enumeration",
        "machine": machine_info(("torch", "transformers")),
        "machine_shared": "yes: 2 cores shared with other jobs running tests; timings are noisy (best of --repeats)",
        "settings": {
            "prompt": PROMPT,
            "response_len": 2,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "recompute_fraction": args.recompute_fraction,
            "dtype": "float32",
            "attention": "sdpa",
            "extrapolation": "recompute seconds x vocab / slice size (linear in the number of rows)"
            if extrapolated
            else "none: the whole recompute walk was measured",
            "bad": "decoded response contains a bad word as a whole word, case-insensitive",
        },
        "results": rows,
        "goal": {"speedup": GOAL_SPEEDUP, "cached_s_max": GOAL_CACHED_S},
        "meets_goal": main_row["speedup"] >= GOAL_SPEEDUP and main_row["cached_s"] <= GOAL_CACHED_S,
        "checks": checks,
        "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"results written to {write_json_atomic(result_path(args.out), payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
