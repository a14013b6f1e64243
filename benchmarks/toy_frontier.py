"""Toy frontier: RePULSe against its baselines on the embedded toy at the paper's toy settings, many seeds, every
quantity exact.

Every run is `repulse train_ppo` on the paper's toy settings, configs/paper_toy_{reinforce,repulse}.yaml (N = 500,
50 fit steps, constant lr, RLOO baseline, beta -10, q lr 3e-4), with the embedded models in place of the hub's
(`EMBEDDED`: the tiny LM continues "This man is a" with 2 tokens, the tiny reward model scores them) and the
overrides of its configuration (`configurations`). After every fit step the run computes exactly, over all 78,681
continuations: log P(bad) (a bad word in the continuation), E[r], the entropy of p_theta, KL(p_theta || p_0), and
for a proposal KL(sigma || q), q's exact ESS for sigma and q's bad mass (trainers/rl/evals.py). The grid, for each
KL coefficient c (c = 0 at base lr 1e-4; the paper's appendix c = 10 at base lr 1e-5):

- REINFORCE, 10 p-steps per fit step (equal samples with RePULSe) and 5 (equal p-updates);
- REINFORCE + transform r - e^{-r} (the paper's alpha 1, beta -1), 10 steps;
- base model as proposal (neg_training on p_theta's own samples), beta -10, alpha 0.01 (the paper's), 10 steps;
- RePULSe, beta -10, alpha 0.01 (the paper's), 0.1 and 1, q lr 3e-4 (CTL, a full copy), 5 steps.

Per configuration, over seeds: the final exact log P(bad), E[r], entropy and KL(p_theta || p_0) (mean and standard
error), the paired per-seed difference in log P(bad) from REINFORCE at equal samples and at equal updates, and the
matched-KL comparison: log P(bad) where each run's KL(p_theta || p_0) first reaches a level K (linear
interpolation between fit steps), for K at 1/4, 1/2, 3/4 and all of the smallest final mean KL among the
configurations of that c (so that every configuration reaches each level).

Runs go in `--workers` processes, each running its share one after another inside the process (one torch
thread). Every run's folder under `--runs_dir` keeps its outputs; the table and JSON are rewritten after every
finished run, and a rerun of the same command skips the runs that finished (a run without summary.json starts
again from scratch), so an interrupted sweep resumes.

    python benchmarks/toy_frontier.py                                  # the full grid: 10 seeds x 14 configurations
    python benchmarks/toy_frontier.py --seeds 1 --fit_steps 3 --runs_dir /tmp/tf_probe   # cost probe
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REINFORCE_YAML, REPULSE_YAML = "configs/paper_toy_reinforce.yaml", "configs/paper_toy_repulse.yaml"
# The paper's toy configs name distilgpt2 and its toxicity classifier: here the embedded tiny LM and RM (the same
# paths as the defaults), without the progress bar in each run's log. Their zero_stage is reported as not applied
# (train_ppo runs on one process).
EMBEDDED = ["--disable_progress_bar"]
BASE_LR = {0.0: 1e-4, 10.0: 1e-5}  # the paper's toy lr, and its appendix lr with c = 10
EVAL_KEYS = ("exact_log_p_bad", "exact_expected_reward", "exact_entropy", "exact_kl_to_reference")
PROPOSAL_KEYS = ("exact_kl_target_to_proposal", "exact_proposal_ess_fraction", "exact_proposal_p_bad")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds per configuration (1..N)")
    p.add_argument("--fit_steps", type=int, default=50, help="fit steps per run (exact evaluation after each)")
    p.add_argument("--kl", type=float, nargs="+", default=[0.0, 10.0], help="init_kl_coef values c (0 and/or 10)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="RePULSe alpha values")
    p.add_argument("--only", nargs="+", default=None, help="run only the configurations with these names")
    p.add_argument("--workers", type=int, default=2, help="processes (one torch thread each)")
    p.add_argument("--runs_dir", default=str(Path.home() / ".cache" / "repulse" / "toy_frontier_runs"))
    p.add_argument("--output", default=str(result_path("toy_frontier")))
    args = p.parse_args(argv)
    if min(args.seeds, args.fit_steps, args.workers) < 1:
        p.error("--seeds, --fit_steps and --workers must be >= 1")
    if any(c not in BASE_LR for c in args.kl):
        p.error(f"--kl: the paper's toy settings exist for c in {sorted(BASE_LR)}")
    return args


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration of the grid: name, method, c, base config and its overrides."""
    transform = ["--reward_transform", "minus_alpha_exp_beta_r", "--rew_trans_alpha", "1", "--rew_trans_beta", "-1"]
    base = ["--harmlessness_training_loss_type", "neg_training", "--use_base_as_proposal", "--target_dist_beta", "-10"]
    grid = [
        ("REINFORCE 10 steps", "REINFORCE", REINFORCE_YAML, []),
        ("REINFORCE 5 steps", "REINFORCE", REINFORCE_YAML, ["--harmlessness_training_num_episodes", "5"]),
        ("REINFORCE + r-e^-r", "REINFORCE + transform", REINFORCE_YAML, transform),
        ("base as proposal a=0.01", "base as proposal", REINFORCE_YAML, [*base, "--alpha", "0.01"]),
        *((f"RePULSe a={a:g}", "RePULSe", REPULSE_YAML, ["--alpha", f"{a:g}"]) for a in args.alphas),
    ]
    out = [
        {
            "name": f"c={c:g} {name}",
            "method": method,
            "kl": c,
            "config": config,
            "flags": ["--init_kl_coef", f"{c:g}", "--base_actor_learning_rate", f"{BASE_LR[c]:g}", *flags],
        }
        for c in args.kl
        for name, method, config, flags in grid
    ]
    if args.only:
        unknown = set(args.only) - {c["name"] for c in out}
        if unknown:
            raise SystemExit(f"--only: no configuration named {sorted(unknown)}; names: {[c['name'] for c in out]}")
        out = [c for c in out if c["name"] in args.only]
    return out


def folder_of(root: Path, conf: dict[str, Any], seed: int) -> Path:
    return root / conf["name"].replace(" ", "_").replace("=", "").replace("+", "plus") / f"seed{seed}"


def record_of(conf: dict[str, Any], seed: int, folder: Path, wall_s: float | None) -> dict[str, Any]:
    """What the tables need from one finished run: its summary and its exact evaluation after every fit step."""
    summary = json.loads((folder / "summary.json").read_text())
    evaluations = json.loads((folder / "evaluations.json").read_text())
    curve = [{k: e[k] for k in ("fit_step", *EVAL_KEYS, *PROPOSAL_KEYS) if k in e} for e in evaluations]
    return {
        "config": conf["name"],
        "seed": seed,
        "folder": str(folder),
        "wall_s": wall_s,
        "samples_used": summary["samples_used"],
        "reward_mean_final": summary["reward_mean_final"],
        **{f"{k}_final": summary[f"{k}_final"] for k in (*EVAL_KEYS, *PROPOSAL_KEYS) if f"{k}_final" in summary},
        "exact_log_p_bad_initial": summary["exact_log_p_bad_initial"],
        "curve": curve,
    }


def run_one(conf: dict[str, Any], seed: int, fit_steps: int, folder: str) -> dict[str, Any]:
    """One train_ppo run inside this worker process, its output in folder/log.txt."""
    import torch

    from repulse.cli import train_ppo

    torch.set_num_threads(1)
    path = Path(folder)
    shutil.rmtree(path, ignore_errors=True)  # an unfinished run starts again from scratch
    path.mkdir(parents=True)
    from repulse.assets import TINY_LM_DIR, TINY_RM_DIR

    models = ["--pretrain", str(TINY_LM_DIR), "--reward_pretrain", str(TINY_RM_DIR), *EMBEDDED]
    argv = ["--config", str(REPO / conf["config"]), *models, *conf["flags"], "--fit_steps", str(fit_steps)]
    argv += ["--seed", str(seed), "--save_path", str(path)]
    start = time.perf_counter()
    with open(path / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = train_ppo.main(argv)
        except Exception as err:  # a crash of one run is reported, the sweep goes on
            print(f"toy_frontier: {type(err).__name__}: {err}")
            code = -1
    if code != 0:
        return {"config": conf["name"], "seed": seed, "error": f"exit {code}: see {path / 'log.txt'}"}
    return record_of(conf, seed, path, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------------- tables
def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired(ok: list[dict], base: list[dict], key: str = "exact_log_p_bad_final") -> tuple[float, float, int] | None:
    """Mean and standard error of the per-seed difference from the baseline run of the same seed."""
    by_seed = {r["seed"]: r for r in base}
    diffs = [r[key] - by_seed[r["seed"]][key] for r in ok if r["seed"] in by_seed]
    return (*mean_se(diffs), len(diffs)) if diffs else None


def summarize(confs: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for conf in confs:
        ok = [r for r in runs[conf["name"]] if "error" not in r]
        row = {"config": conf["name"], "kl": conf["kl"], "runs": len(ok), "errors": len(runs[conf["name"]]) - len(ok)}
        if ok:
            row["samples"] = sum(r["samples_used"] for r in ok) / len(ok)
            row["log_p_bad_initial"] = ok[0]["exact_log_p_bad_initial"]
            for key in (*EVAL_KEYS, *PROPOSAL_KEYS, "reward_mean"):
                values = [r[f"{key}_final"] for r in ok if f"{key}_final" in r]
                if values:
                    row[key], row[f"{key}_se"] = mean_se(values)
            for tag, steps in (("equal_samples", 10), ("equal_updates", 5)):
                baseline = f"c={conf['kl']:g} REINFORCE {steps} steps"
                base = [r for r in runs.get(baseline, []) if "error" not in r]
                diff = paired(ok, base) if conf["name"] != baseline else None
                if diff:
                    row[f"vs_{tag}"], row[f"vs_{tag}_se"], _ = diff
        rows.append(row)
    return rows


def at_kl(curve: list[dict[str, float]], level: float) -> float | None:
    """log P(bad) where the run's KL(p_theta || p_0) first reaches `level`, linear in KL between fit steps."""
    for before, after in zip(curve, curve[1:]):
        a, b = before["exact_kl_to_reference"], after["exact_kl_to_reference"]
        if a <= level <= b and b > a:
            t = (level - a) / (b - a)
            return before["exact_log_p_bad"] + t * (after["exact_log_p_bad"] - before["exact_log_p_bad"])
    return None


def matched_kl(confs: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]], rows: list[dict]) -> list[dict]:
    """Per c, log P(bad) of every configuration at KL levels 1/4 .. 1 of the smallest final mean KL of that c."""
    out = []
    for c in sorted({conf["kl"] for conf in confs}):
        finals = [r["exact_kl_to_reference"] for r in rows if r["kl"] == c and "exact_kl_to_reference" in r]
        if not finals or min(finals) <= 0:
            continue
        for level in (min(finals) * f for f in (0.25, 0.5, 0.75, 1.0)):
            for conf in (x for x in confs if x["kl"] == c):
                values = [
                    v for r in runs[conf["name"]] if "error" not in r if (v := at_kl(r["curve"], level)) is not None
                ]
                if values:
                    mean, se = mean_se(values)
                    out.append(
                        {"kl_level": level, "config": conf["name"], "runs": len(values), "log_p_bad": mean, "se": se}
                    )
    return out


COLUMNS = [
    ("config", "configuration", ""),
    ("runs", "runs", "d"),
    ("samples", "samples", ".0f"),
    ("exact_log_p_bad", "log P(bad)", ".3f"),
    ("exact_log_p_bad_se", "+-", ".3f"),
    ("exact_expected_reward", "E[r]", ".3f"),
    ("exact_expected_reward_se", "+-", ".3f"),
    ("exact_entropy", "entropy", ".2f"),
    ("exact_entropy_se", "+-", ".2f"),
    ("exact_kl_to_reference", "KL(p||p0)", ".3f"),
    ("exact_kl_to_reference_se", "+-", ".3f"),
    ("vs_equal_samples", "vs RF10", ".3f"),
    ("vs_equal_samples_se", "+-", ".3f"),
    ("vs_equal_updates", "vs RF5", ".3f"),
    ("vs_equal_updates_se", "+-", ".3f"),
]
PROPOSAL_COLUMNS = [
    ("config", "configuration", ""),
    ("exact_kl_target_to_proposal", "KL(sigma||q)", ".2f"),
    ("exact_kl_target_to_proposal_se", "+-", ".2f"),
    ("exact_proposal_ess_fraction", "ESS/n", ".2e"),
    ("exact_proposal_p_bad", "q P(bad)", ".3g"),
]
MATCHED_COLUMNS = [
    ("kl_level", "KL level", ".4f"),
    ("config", "configuration", ""),
    ("runs", "runs", "d"),
    ("log_p_bad", "log P(bad) at KL", ".3f"),
    ("se", "+-", ".3f"),
]


def report(args, confs, runs, started: float, final: bool) -> dict[str, Any]:
    rows = summarize(confs, runs)
    matched = matched_kl(confs, runs, rows)
    payload = {
        "benchmark": "toy_frontier",
        "complete": final,
        "machine": machine_info(("torch", "transformers")),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "configurations": confs,
        "rows": rows,
        "matched_kl": matched,
        "runs": runs,
        "wall_s": time.perf_counter() - started,
    }
    write_json_atomic(args.output, payload)
    if final:
        print("\n" + format_table(rows, COLUMNS))
        print(
            "\nproposals (final, exact):\n"
            + format_table([r for r in rows if "exact_kl_target_to_proposal" in r], PROPOSAL_COLUMNS)
        )
        print("\nmatched KL(p_theta || p_0):\n" + format_table(matched, MATCHED_COLUMNS))
    return payload


def plot(args, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    from repulse.plotting.frontier import plot_frontier, read_run

    done = [(name, r["folder"]) for name, rs in runs.items() for r in rs if "error" not in r]
    read = [{**read_run(folder), "name": folder, "group": name} for name, folder in done]
    stem = Path(args.output).with_suffix("")
    return [str(plot_frontier(read, f"{stem}.png")), str(plot_frontier(read, f"{stem}_kl.png", x_axis="kl"))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_offline_env()
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    confs = configurations(args)
    root = Path(args.runs_dir)
    runs: dict[str, list[dict[str, Any]]] = {conf["name"]: [] for conf in confs}
    todo = []
    for seed in range(1, args.seeds + 1):  # seed-major: a cut sweep has every configuration at the same seeds
        for conf in confs:
            folder = folder_of(root, conf, seed)
            if (folder / "summary.json").exists():
                runs[conf["name"]].append(record_of(conf, seed, folder, None))
            else:
                todo.append((conf, seed, str(folder)))
    started = time.perf_counter()
    print(f"[toy_frontier] {len(todo)} runs to do, {sum(map(len, runs.values()))} already done in {root}", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(run_one, conf, seed, args.fit_steps, folder) for conf, seed, folder in todo}
        done = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record = future.result()
                runs[record["config"]].append(record)
                done += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (len(todo) - done)
                status = (
                    record.get("error")
                    or f"log P(bad) {record['exact_log_p_bad_final']:.3f}, {record['wall_s']:.0f} s"
                )
                print(
                    f"[toy_frontier] {done}/{len(todo)} {record['config']} seed {record['seed']}: {status} "
                    f"({elapsed / 60:.0f} min, about {eta / 60:.0f} min left)",
                    flush=True,
                )
            report(args, confs, runs, started, final=False)
    for records in runs.values():
        records.sort(key=lambda r: r["seed"])
    report(args, confs, runs, started, final=True)
    try:
        pngs = plot(args, runs)
    except Exception as err:  # the table and JSON matter more than the picture
        pngs = [f"not drawn: {err}"]
    print(f"\nresults in {args.output}; frontier: {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
