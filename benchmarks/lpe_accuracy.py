"""Low-probability estimation: ITGIS, MHIS and naive Monte Carlo against exact enumeration, on cases where it matters.

Cases (every one enumerable, so P = E_{x~D}[p(target | x)] is exact):

- planted (the rare cases): tiny Phi-architecture LMs trained from a seed with a planted trigger
  (repulse.estimation.planted), P ≈ 1e-9 .. 1e-5, nearly all of it on inputs of D-probability ≈ 6e-6 or 1.5e-8
  that 2^12-2^14 draws from D almost never contain. `pair`, `split_pair` (the trigger's tokens far apart),
  `triple` (three tokens), `two_pairs` (two separate triggers). Partial triggers raise f (graded).
- limit: `needle`, the same pair trigger but ungraded: nothing points to it until it is complete.
- embedded: the embedded tiny LM's bad words under four rule-based distributions (P ≈ 1e-5 and nearly flat over
  inputs: every estimator does well; kept to show that the rare cases are what separates them).
- smollm2 (--groups smollm2): SmolLM2-135M-Instruct, one token drawn uniformly from its vocabulary before the
  target (49152 inputs, enumerated); a quarter of the budget (2^11 passes) and only experiment 1, for CPU time.

Two experiments per case, over --seeds seeds:

1. Equal budget (2^13 model passes per estimate, a backward pass counted like a forward one): naive MC 8192
   forward rows; ITGIS at the CLI's default sample sizes (n = 4096, batches of 256: 4096 forward + 3840 backward
   rows); MHIS 32 chains x (1 + 31 burn-in + 96 recorded) steps, each a forward and a backward row; CEIS 8192
   forward rows (n = 8192, batches of 256, defensive share 0.2); the ITGIS + CEIS mixture at ITGIS's sizes.
2. Calibration at the CLI's defaults (`mhis_cli`: 256 chains, burn-in 64, n = 4096; `bruteforce_cli`: n = 4096;
   ITGIS's defaults are the run of experiment 1), and `itgis_reference`: ITGIS as the reference estimated (every
   batch counted, including the warm-up), with the same seeds, to show what the warm-up changes.

Reported per case and method: the median |log10(estimate / exact)|, the share within 0.5 decades, the coverage of
the reported 95% interval, how often the estimator warned (ESS < 100, Pareto k̂ > 0.7, split-R̂ > 1.5, a
proposal within 1 nat of D) and the coverage when it did not, the median ESS, model passes and seconds per
estimate. The temperatures are per model family (the gradient scale of a model sets them: --temperature is not
scale-free), chosen on a separately seeded planted model (seed 1) and recorded in the JSON. Wall times were
measured on a shared, loaded machine.

    python benchmarks/lpe_accuracy.py                          # planted + limit (needle), 40 seeds
    python benchmarks/lpe_accuracy.py --groups planted --seeds 40 --out lpe_accuracy_planted.json
    python benchmarks/lpe_accuracy.py --groups smollm2 --seeds 10 --out lpe_accuracy_smollm2.json
    python benchmarks/lpe_accuracy.py --cases triple --methods itgis,ceis,mixture --cache_dir /tmp/planted
    python benchmarks/lpe_accuracy.py --merge a.json,b.json --out lpe_accuracy_adaptive.json   # parallel runs

CEIS's constants (smoothing 0.7, D floor 0.1: textbook values) were not tuned; its defensive share 0.2 was picked
over 0.1 on 10 seeds of `triple` and the 1-nat threshold of the proposal-KL warning after seeing its `triple` misses
(0.5-0.6 nats) against its successes (>= 3.5 nats; `pair_s1` >= 6.5): those two choices saw a test case.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, smollm2_dir, write_json_atomic  # noqa: E402

SHARED = "yes: 2 cores shared with up to four other workers running tests and training; wall times are noisy"
PLANTED = ("pair", "split_pair", "triple", "two_pairs")
EMBEDDED = [("uniform", 2), ("english", 3), ("camel", 3), ("indent", 3)]
BUDGET = 8192  # model passes per estimate in the equal-budget comparison
# Temperatures per model family (ITGIS, MHIS), chosen on the pair case built from seed 1 (not benchmarked), 20 seeds.
# ITGIS (with an earlier warm-up of a quarter of the batches): T = 0.03, 0.1, 0.3 covered 0.50, 1.00, 1.00 with
# median errors 0.038, 0.005, 0.011 decades; the least aggressive one within 0.01 decades of the best is taken.
# MHIS (the equal-budget chains): T = 1, 2, 4 had median errors 1.29, 0.60, 1.05. Embedded, SmolLM2: the CLI's.
TEMPERATURES = {"planted": (0.3, 2.0), "limit": (0.3, 2.0), "embedded": (4.0, 4.0), "smollm2": (4.0, 4.0)}


@dataclass
class Case:
    group: str
    name: str
    scorer: Any
    dist: Any
    info: dict[str, Any] = field(default_factory=dict)
    log_f: Any = None  # log f over the enumerated support, when cached


def method_runs(group: str) -> dict[str, dict[str, Any]]:
    """The estimator settings of both experiments (name -> estimator kwargs, 'kind' picks the estimator)."""
    t_itgis, t_mhis = TEMPERATURES[group]
    if group == "smollm2":  # 135M parameters on a shared CPU: a quarter of the budget, no CLI-default runs
        return {
            "bruteforce": {"kind": "bruteforce", "n_samples": BUDGET // 4, "batch_size": 128},
            "itgis": {"kind": "itgis", "n_samples": 1024, "batch_size": 128, "temperature": t_itgis},
            "ceis": {"kind": "ceis", "n_samples": BUDGET // 4, "batch_size": 128},
            "mixture": {"kind": "mixture", "n_samples": 1024, "batch_size": 128, "temperature": t_itgis},
            "mhis": {"kind": "mhis", "n_samples": 16 * 48, "batch_size": 16, "burn_in": 15, "temperature": t_mhis},
        }
    return {
        "bruteforce": {"kind": "bruteforce", "n_samples": BUDGET, "batch_size": 256},
        "itgis": {"kind": "itgis", "n_samples": 4096, "batch_size": 256, "temperature": t_itgis},
        "ceis": {"kind": "ceis", "n_samples": BUDGET, "batch_size": 256},
        "mixture": {"kind": "mixture", "n_samples": 4096, "batch_size": 256, "temperature": t_itgis},
        "mhis": {"kind": "mhis", "n_samples": 32 * 96, "batch_size": 32, "burn_in": 31, "temperature": t_mhis},
        "ceis_cli": {"kind": "ceis", "n_samples": 4096, "batch_size": 256},
        "itgis_defensive": {
            "kind": "itgis",
            "n_samples": 4096,
            "batch_size": 256,
            "temperature": t_itgis,
            "defensive": 0.2,
        },
        "bruteforce_cli": {"kind": "bruteforce", "n_samples": 4096, "batch_size": 256},
        "itgis_reference": {"kind": "itgis_reference", "n_samples": 4096, "batch_size": 256, "temperature": t_itgis},
        "mhis_cli": {"kind": "mhis", "n_samples": 4096, "batch_size": 256, "burn_in": 64, "temperature": t_mhis},
    }


def selected_runs(group: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    runs = method_runs(group)
    return {k: v for k, v in runs.items() if not args.methods or k in args.methods.split(",")}


def passes(result) -> int:
    """Forward rows plus backward rows (ITGIS's last batch and naive MC run forward only)."""
    if result.method in ("itgis", "mixture"):
        return result.n_model_rows + result.details["n_gradient_rows"]
    return result.n_model_rows * (2 if result.method == "mhis" else 1)


def run_one(case: Case, settings: dict[str, Any], seed: int):
    import torch

    from repulse.estimation import importance
    from repulse.estimation.crossentropy import estimate_ceis
    from repulse.estimation.mhis import estimate_mhis
    from repulse.estimation.mixture import estimate_mixture
    from repulse.estimation.montecarlo import estimate_naive

    kwargs = {k: v for k, v in settings.items() if k != "kind"}
    generator = torch.Generator().manual_seed(10_000 + seed)
    if settings["kind"] == "itgis_reference":  # the reference's estimator: every batch counted, no warm-up
        keep, importance.warmup_batches = importance.warmup_batches, lambda n_batches: 0
        try:
            return importance.estimate_itgis(case.scorer, case.dist, generator=generator, **kwargs)
        finally:
            importance.warmup_batches = keep
    estimators = {
        "itgis": importance.estimate_itgis,
        "ceis": estimate_ceis,
        "mixture": estimate_mixture,
        "mhis": estimate_mhis,
        "bruteforce": estimate_naive,
    }
    return estimators[settings["kind"]](case.scorer, case.dist, generator=generator, **kwargs)


def log10_error(estimate: float, truth: float) -> float:
    if estimate > 0 and truth > 0:
        return abs(math.log10(estimate / truth))
    return 0.0 if estimate == truth else math.inf


WARNING_KINDS = {
    "effective sample size": "ess",
    "Pareto": "pareto_k",
    "chains": "rhat",
    "gradient": "gradient_kl",
    "cross-entropy proposal": "proposal_kl",
}


def warning_kinds(warnings: list[str]) -> list[str]:
    """Short names of the warnings that fired (ESS, Pareto k̂, split-R̂, the ITGIS proposal that did not move)."""
    return [kind for key, kind in WARNING_KINDS.items() if any(key in w for w in warnings)]


def record(case: Case, name: str, seed: int, r, exact: float) -> dict[str, Any]:
    low, high = r.interval()
    return {
        "group": case.group,
        "case": case.name,
        "method": name,
        "seed": seed,
        "estimate": r.estimate,
        "std_err": r.std_err,
        "ci95": [low, high],
        "covered": low <= exact <= high,
        "log10_error": log10_error(r.estimate, exact),
        "ess": r.details.get("ess"),
        "pareto_k": r.details.get("pareto_k"),
        "gradient_kl": r.details.get("gradient_kl"),
        "proposal_kl": r.details.get("proposal_kl"),
        "warned": bool(r.warnings()),
        "warning_kinds": warning_kinds(r.warnings()),
        "passes": passes(r),
        "wall_time_s": r.wall_time_s,
    }


def cached_exact(case: Case):
    import torch

    from repulse.estimation.montecarlo import LPEResult, enumerate_inputs

    total = case.dist.num_inputs()
    log_p = float(torch.logsumexp(case.dist.log_prob(enumerate_inputs(case.dist, 0, total)) + case.log_f, 0))
    return LPEResult("exact", math.exp(log_p), 0.0, total, 0, 0.0, {"cached_log_f": True})


def run_case(case: Case, args: argparse.Namespace) -> list[dict[str, Any]]:
    from repulse.estimation.montecarlo import estimate_exact

    t0 = time.perf_counter()
    if case.log_f is not None:  # the same sum as estimate_exact, over a cached log f
        exact = cached_exact(case)
    else:
        exact = estimate_exact(case.scorer, case.dist, batch_size=args.exact_batch, max_inputs=10**8)
    case.info.update(exact=exact.estimate, support=exact.n_samples, exact_s=time.perf_counter() - t0)
    print(
        f"[lpe_accuracy] {case.name}: exact P = {exact.estimate:.3e} ({exact.n_samples} inputs, "
        f"{case.info['exact_s']:.0f} s)",
        flush=True,
    )
    records = []
    runs = selected_runs(case.group, args)
    for seed in range(args.seeds):
        order = list(runs) if seed % 2 == 0 else list(runs)[::-1]  # drift in machine load hits all alike
        for name in order:
            records.append(record(case, name, seed, run_one(case, runs[name], seed), exact.estimate))
    for name in runs:
        row = summarize([r for r in records if r["method"] == name])
        print(
            f"    {name:15s} median err {row['median_abs_log10_error']:.3f}  coverage {row['coverage']:.2f}  "
            f"warned {row['warned']:.2f}  {row['s_per_estimate']:.2f} s",
            flush=True,
        )
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["log10_error"] for r in records]
    quiet = [r for r in records if not r["warned"]]
    ess = [r["ess"] for r in records if r["ess"] is not None]
    return {
        "estimates": len(records),
        "passes": statistics.median(r["passes"] for r in records),
        "median_abs_log10_error": statistics.median(errors),
        "within_0_5": sum(e <= 0.5 for e in errors) / len(errors),
        "coverage": sum(r["covered"] for r in records) / len(records),
        "warned": 1 - len(quiet) / len(records),
        "coverage_unwarned": sum(r["covered"] for r in quiet) / len(quiet) if quiet else None,
        "median_ess": statistics.median(ess) if ess else None,
        "warned_by": {k: sum(k in r["warning_kinds"] for r in records) / len(records) for k in WARNING_KINDS.values()},
        "s_per_estimate": statistics.fmean(r["wall_time_s"] for r in records),
    }


def summary_rows(records: list[dict[str, Any]], cases: list[Case]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        for name in method_runs(case.group):
            mine = [r for r in records if r["case"] == case.name and r["method"] == name]
            if mine:
                rows.append({"group": case.group, "case": case.name, "method": name, **summarize(mine)})
    return rows


def planted_cases(names, seed: int = 0, cache_dir: str = "") -> list[Case]:
    """Planted cases built from model seed `seed` (named `<case>` for seed 0, `<case>_s<seed>` otherwise)."""
    from repulse.estimation.montecarlo import LMTargetScorer

    out = []
    for name in names:
        t0 = time.perf_counter()
        planted, log_f = load_or_build(name, seed, cache_dir)
        group = "limit" if name == "needle" else "planted"
        info = {"description": planted.describe(), "trigger_mass": planted.trigger_mass()}
        info["build_s"] = time.perf_counter() - t0
        label = name if seed == 0 else f"{name}_s{seed}"
        scorer = LMTargetScorer(planted.model, planted.target_ids)
        out.append(Case(group, label, scorer, planted.dist, info, log_f))
    return out


def load_or_build(name: str, seed: int, cache_dir: str):
    """build_planted(CASES[name] with `seed`), or its trained weights from --cache_dir (`<name>_s<seed>.pt`, written
    here after a build; `<name>_s<seed>_logf.pt`, if present, holds log f over the enumerated support)."""
    from dataclasses import replace

    import torch

    from repulse.estimation.distributions import FactorizedDistribution
    from repulse.estimation.planted import CASES, PlantedCase, build_planted, make_model

    spec = replace(CASES[name], seed=seed)
    path = Path(cache_dir) / f"{name}_s{seed}.pt" if cache_dir else None
    if path is None or not path.exists():
        planted = build_planted(spec)
        if path is not None:
            state = {"state": planted.model.state_dict(), "probs": planted.dist.probs, "trig": planted.trigger_tokens}
            torch.save(state, path)
        return planted, None
    saved = torch.load(path)
    model = make_model(spec)
    model.load_state_dict(saved["state"])
    dist = FactorizedDistribution(saved["probs"], name=spec.name, description=f"Zipf({spec.zipf}) per position")
    log_f_path = path.with_name(f"{name}_s{seed}_logf.pt")
    log_f = torch.load(log_f_path) if log_f_path.exists() else None
    return PlantedCase(spec, model.eval(), dist, saved["trig"]), log_f


def embedded_cases(targets: int) -> list[Case]:
    import torch
    from transformers import AutoModelForCausalLM

    from repulse.assets import bad_words
    from repulse.cli.estimate_rare_harmful_outputs import encode_target
    from repulse.estimation.distributions import build_distribution
    from repulse.estimation.montecarlo import LMTargetScorer
    from repulse.models.load import load_tokenizer, resolve_model_path

    path = resolve_model_path(None)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = int(model.get_input_embeddings().weight.shape[0])
    out = []
    for name, length in EMBEDDED:
        dist = build_distribution(name, tokenizer, length, vocab)
        for word in [" " + w for w in bad_words()[:targets]]:
            scorer = LMTargetScorer(model, encode_target(tokenizer, word))
            out.append(Case("embedded", f"{name}x{length}{word.replace(' ', '_')}", scorer, dist, {"target": word}))
    return out


def smollm2_case(word: str) -> list[Case]:
    import torch
    from transformers import AutoModelForCausalLM

    from repulse.cli.estimate_rare_harmful_outputs import encode_target
    from repulse.estimation.distributions import build_distribution
    from repulse.estimation.montecarlo import LMTargetScorer
    from repulse.models.load import load_tokenizer

    path = str(smollm2_dir())
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    dist = build_distribution("uniform", tokenizer, 1, int(model.get_input_embeddings().weight.shape[0]))
    scorer = LMTargetScorer(model, encode_target(tokenizer, word))
    return [Case("smollm2", f"smollm2_uniformx1{word.replace(' ', '_')}", scorer, dist, {"target": word})]


COLUMNS = [
    ("case", "case", ""),
    ("method", "method", ""),
    ("passes", "passes", ".0f"),
    ("median_abs_log10_error", "median |log10 err|", ".3f"),
    ("within_0_5", "share <= 0.5", ".2f"),
    ("coverage", "95% coverage", ".2f"),
    ("warned", "warned", ".2f"),
    ("coverage_unwarned", "cov. unwarned", ".2f"),
    ("median_ess", "median ESS", ".0f"),
    ("s_per_estimate", "s / estimate", ".2f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", default="planted,limit", help="comma-separated: planted, limit, embedded, smollm2")
    p.add_argument("--cases", default=",".join(PLANTED), help="planted cases to run")
    p.add_argument("--model_seeds", default="0", help="seeds of the planted models (1 was used to pick T)")
    p.add_argument("--seeds", type=int, default=40, help="estimator seeds per case and method")
    p.add_argument("--methods", default="", help="comma-separated runs of method_runs to do (default: all)")
    p.add_argument("--merge", default="", help="comma-separated result files to combine into --out (runs nothing)")
    p.add_argument("--cache_dir", default="", help="keep trained planted models (and cached log f tables) here")
    p.add_argument("--targets", type=int, default=2, help="embedded bad words used as targets")
    p.add_argument("--smollm2_target", default=" kill")
    p.add_argument("--exact_batch", type=int, default=8192)
    p.add_argument("--out", default="lpe_accuracy.json")
    return p.parse_args(argv)


def build_cases(args: argparse.Namespace):
    """Cases one at a time (a planted model is trained only when its turn comes)."""
    groups = args.groups.split(",")
    if "planted" in groups:
        for model_seed in map(int, args.model_seeds.split(",")):
            for name in args.cases.split(","):
                yield from planted_cases([name], model_seed, args.cache_dir)
    if "limit" in groups:
        yield from planted_cases(["needle"], 0, args.cache_dir)
    if "embedded" in groups:
        yield from embedded_cases(args.targets)
    if "smollm2" in groups:
        yield from smollm2_case(args.smollm2_target)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.merge:
        return merge(args)
    set_offline_env()
    torch.set_num_threads(1)  # tiny models: extra intra-op threads only add contention on a shared machine
    records, cases = [], []
    for case in build_cases(args):
        cases.append(case)
        records += run_case(case, args)
        path = write_json_atomic(result_path(args.out), make_payload(args, cases, records))  # partial results too
    print()
    print(format_table(summary_rows(records, cases), COLUMNS))
    print(f"results written to {path}")
    return 0


def rewarn(r: dict[str, Any]) -> dict[str, Any]:
    """The record's warnings under the current thresholds, from its recorded diagnostics (split-R̂ kept as it was)."""
    from repulse.estimation.diagnostics import trust_warnings

    kl = {"gradient_kl": r.get("gradient_kl"), "proposal_kl": r.get("proposal_kl")}
    warnings = trust_warnings(r["ess"], r["pareto_k"], r["estimate"], None, **kl)
    kinds = warning_kinds(warnings) + (["rhat"] if "rhat" in r.get("warning_kinds", []) else [])
    return {**r, "warned": bool(warnings) or bool(kinds), "warning_kinds": kinds}


def merge(args: argparse.Namespace) -> int:
    """Combine result files of runs done in parallel (a record per case, method and seed; later files win), with the
    warnings recomputed from the recorded diagnostics under the current thresholds."""
    import json

    files = args.merge.split(",")
    cases, records = {}, {}
    for name in files:
        payload = json.loads(result_path(name).read_text())
        for c in payload["cases"]:
            info = {k: v for k, v in c.items() if k not in ("group", "case")}
            cases[c["case"]] = Case(c["group"], c["case"], None, None, info)
        records.update({(r["case"], r["method"], r["seed"]): rewarn(r) for r in payload["records"]})
    payload = make_payload(args, list(cases.values()), list(records.values()))
    payload["merged_from"] = files
    path = write_json_atomic(result_path(args.out), payload)
    print(format_table(summary_rows(list(records.values()), list(cases.values())), COLUMNS))
    print(f"results written to {path}")
    return 0


def make_payload(args: argparse.Namespace, cases: list[Case], records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "lpe_accuracy",
        "machine": machine_info(("torch", "transformers")),
        "machine_shared": SHARED,
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "temperatures_itgis_mhis": TEMPERATURES,
            "runs": {g: method_runs(g) for g in TEMPERATURES},
            "budget_passes": BUDGET,
            "budget_definition": "model passes: forward rows + backward rows (ITGIS's gradient batches, every MHIS "
            "row); naive MC forward only",
            "error": "|log10(estimate / exact)|, infinite for a zero estimate",
            "coverage": "share of estimates whose reported 95% interval (estimate ± 1.96 SE) contains exact P",
            "warned": "share of estimates with a warning (ESS < 100, Pareto k > 0.7, MHIS split-R-hat > 1.5, ITGIS "
            "or CEIS proposal within 1 nat of D); warned_by: the share per kind",
        },
        "cases": [{"group": c.group, "case": c.name, **c.info} for c in cases],
        "results": summary_rows(records, cases),
        "records": records,
        "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    raise SystemExit(main())
