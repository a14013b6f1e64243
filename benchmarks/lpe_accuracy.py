"""Low-probability estimation accuracy: ITGIS, MHIS and naive Monte Carlo at equal forward-pass budgets.

On the embedded tiny LM (vocabulary 281) the input spaces of a few distributions are small enough to enumerate,
so every case (input distribution x target word) has an exact P = E_{x~D}[p(target | x)]. Each method gets the
same number of model rows (inputs run through the model: MHIS's burn-in counts, so it records fewer states;
ITGIS's rows are forward + backward passes, the others forward only) and is run over several seeds. Reported per
method: the median |log10(estimate / exact)| over all cases and seeds (a zero estimate counts as an infinite
error, which the median tolerates), the share of zero estimates, and the mean wall time per estimate.

    python benchmarks/lpe_accuracy.py                        # 4 distributions x 2 target words x 3 seeds
    python benchmarks/lpe_accuracy.py --budget 4096 --batch_size 256 --chains 64 --targets 3 --seeds 5
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, write_json_atomic  # noqa: E402

DISTRIBUTIONS = [("uniform", 2), ("english", 3), ("camel", 3), ("indent", 3)]
METHODS = ("itgis", "mhis", "bruteforce")
SHARED = "yes: 2 cores shared with two other workers running tests; wall times are noisy"


def log10_error(estimate: float, truth: float) -> float:
    if estimate > 0 and truth > 0:
        return abs(math.log10(estimate / truth))
    return 0.0 if estimate == truth else math.inf


def mhis_recorded(args: argparse.Namespace) -> int:
    """MHIS states recorded: the budget less one starting evaluation and the burn-in steps of every chain."""
    return args.budget - (args.burn_in + 1) * args.chains


def run_method(method: str, scorer, dist, args: argparse.Namespace, seed: int):
    """One estimate with `args.budget` model rows."""
    import torch

    from repulse.estimation.importance import estimate_itgis
    from repulse.estimation.mhis import estimate_mhis
    from repulse.estimation.montecarlo import estimate_naive

    gen = torch.Generator().manual_seed(seed)
    if method == "itgis":
        return estimate_itgis(
            scorer,
            dist,
            n_samples=args.budget,
            batch_size=args.batch_size,
            temperature=args.temperature,
            decay_rate=args.decay_rate,
            generator=gen,
        )
    if method == "mhis":
        recorded = mhis_recorded(args)  # the chains' start and burn-in rows come out of the same budget
        return estimate_mhis(
            scorer,
            dist,
            n_samples=recorded,
            batch_size=args.chains,
            temperature=args.temperature,
            burn_in=args.burn_in,
            generator=gen,
        )
    return estimate_naive(scorer, dist, n_samples=args.budget, batch_size=args.batch_size, generator=gen)


def run_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    from repulse.assets import bad_words
    from repulse.cli.estimate_rare_harmful_outputs import encode_target
    from repulse.estimation.distributions import build_distribution
    from repulse.estimation.montecarlo import LMTargetScorer, estimate_exact
    from repulse.models.load import load_tokenizer, resolve_model_path

    path = resolve_model_path(None)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = int(model.get_input_embeddings().weight.shape[0])
    targets = [" " + w for w in bad_words()[: args.targets]]
    records = []
    for name, length in DISTRIBUTIONS:
        dist = build_distribution(name, tokenizer, length, vocab)
        for word in targets:
            scorer = LMTargetScorer(model, encode_target(tokenizer, word))
            exact = estimate_exact(scorer, dist, batch_size=4096)
            case = {
                "distribution": name,
                "length": length,
                "target": word,
                "support": dist.num_inputs(),
                "exact": exact.estimate,
                "log10_exact": math.log10(exact.estimate),
                "exact_s": exact.wall_time_s,
            }
            print(
                f"[lpe_accuracy] {name} x {length} {word!r}: exact P = {exact.estimate:.3e} "
                f"({case['support']} inputs, {exact.wall_time_s:.2f} s)",
                flush=True,
            )
            for seed in range(args.seeds):
                order = METHODS if seed % 2 == 0 else METHODS[::-1]
                for method in order:
                    r = run_method(method, scorer, dist, args, seed)
                    records.append(
                        {
                            **case,
                            "method": method,
                            "seed": seed,
                            "estimate": r.estimate,
                            "std_err": r.std_err,
                            "n_model_rows": r.n_model_rows,
                            "wall_time_s": r.wall_time_s,
                            "log10_error": log10_error(r.estimate, exact.estimate),
                        }
                    )
    return records


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        mine = [r for r in records if r["method"] == method]
        errors = [r["log10_error"] for r in mine]
        finite = [e for e in errors if math.isfinite(e)]
        rows.append(
            {
                "method": method,
                "estimates": len(mine),
                "model_rows": statistics.median(r["n_model_rows"] for r in mine),
                "median_abs_log10_error": statistics.median(errors),
                "mean_abs_log10_error_finite": statistics.fmean(finite) if finite else None,
                "zero_estimates": sum(r["estimate"] == 0 for r in mine) / len(mine),
                "within_0_5": sum(e <= 0.5 for e in errors) / len(mine),
                "mean_time_s": statistics.fmean(r["wall_time_s"] for r in mine),
            }
        )
    return rows


COLUMNS = [
    ("method", "method", ""),
    ("estimates", "estimates", "d"),
    ("model_rows", "model rows", ".0f"),
    ("median_abs_log10_error", "median |log10 err|", ".3f"),
    ("mean_abs_log10_error_finite", "mean (finite)", ".3f"),
    ("within_0_5", "share <= 0.5", ".2f"),
    ("zero_estimates", "share P=0", ".2f"),
    ("mean_time_s", "s / estimate", ".3f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=1024, help="model rows per estimate (every method)")
    p.add_argument("--batch_size", type=int, default=128, help="ITGIS proposal-update batch; naive MC batch")
    p.add_argument("--chains", type=int, default=32, help="MHIS chains")
    p.add_argument("--burn_in", type=int, default=8, help="MHIS burn-in steps per chain (counted in the budget)")
    p.add_argument("--temperature", type=float, default=4.0, help="ITGIS / MHIS temperature")
    p.add_argument("--decay_rate", type=float, default=0.9, help="ITGIS decay rate")
    p.add_argument("--targets", type=int, default=2, help="how many of the embedded bad words to use as targets")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="lpe_accuracy.json")
    args = p.parse_args(argv)
    recorded = mhis_recorded(args)
    if args.budget % args.batch_size or recorded <= 0 or recorded % args.chains:
        p.error("--batch_size must divide --budget, --chains must divide budget - (burn_in + 1) x chains (> 0)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_offline_env()
    records = run_cases(args)
    rows = summarize(records)
    print()
    print(format_table(rows, COLUMNS))
    payload = {
        "benchmark": "lpe_accuracy",
        "machine": machine_info(("torch", "transformers")),
        "machine_shared": SHARED,
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "model": "embedded tiny LM (GPT-2, V=281)",
            "distributions": DISTRIBUTIONS,
            "budget_definition": "model rows (inputs run through the "
            "model); MHIS burn-in included; ITGIS rows are forward + backward passes",
            "error": "|log10(estimate / exact)|, infinite for a zero estimate",
        },
        "results": rows,
        "cases": sorted({(r["distribution"], r["length"], r["target"], r["exact"]) for r in records}),
        "records": records,
        "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"results written to {write_json_atomic(result_path(args.out), payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
