"""Toy frontier (METHODS §13, E1): RePULSe against REINFORCE on the embedded toy, many seeds, exact P(bad).

Every run is `repulse train_ppo` on the demo's toy (configs/toy_*.yaml: the tiny LM continues "This man is a" with
2 tokens, the tiny reward model scores it, the planted bad words are rare) at the paper's sample accounting:
RePULSe draws N from p and N from q per step and gets half as many steps, so both use the same samples. After
training, the probability that the continuation holds a bad word is exact (enumeration). Runs go two at a time,
one thread each. Per configuration the table gives the mean over seeds (with its standard error) of the final
exact log P(bad) and of the last step's average reward; `vs REINFORCE` is the mean per-seed difference of log P(bad)
from REINFORCE at the same KL coefficient and seed (negative: RePULSe reaches a lower P(bad)).

    python benchmarks/toy_frontier.py                                  # 10 seeds, 20 fit steps, c in {0, 1}
    python benchmarks/toy_frontier.py --seeds 3 --fit_steps 4 --kl 0 --betas -1     # the demo's settings
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds per configuration (1..N)")
    p.add_argument("--fit_steps", type=int, default=20, help="fit steps per run (exact P(bad) after each)")
    p.add_argument("--kl", type=float, nargs="+", default=[0.0, 1.0], help="init_kl_coef values (c)")
    p.add_argument("--betas", type=float, nargs="+", default=[-5.0, -10.0], help="RePULSe target_dist_beta values")
    p.add_argument("--alpha", type=float, default=1.0, help="RePULSe alpha")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--keep_runs", default=None, help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--output", default=str(result_path("toy_frontier")))
    args = p.parse_args(argv)
    if min(args.seeds, args.fit_steps, args.workers) < 1:
        p.error("--seeds, --fit_steps and --workers must be >= 1")
    return args


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(name, method, c, beta, config file, overrides) for every configuration of the sweep."""
    out = []
    for c in args.kl:
        out.append(
            {
                "name": f"REINFORCE c={c:g}",
                "method": "REINFORCE",
                "kl": c,
                "beta": None,
                "config": "configs/toy_reinforce.yaml",
                "overrides": ["--init_kl_coef", str(c)],
            }
        )
        for beta in args.betas:
            out.append(
                {
                    "name": f"RePULSe c={c:g} beta={beta:g}",
                    "method": "RePULSe",
                    "kl": c,
                    "beta": beta,
                    "config": "configs/toy_repulse.yaml",
                    "overrides": [
                        "--init_kl_coef",
                        str(c),
                        "--target_dist_beta",
                        str(beta),
                        "--alpha",
                        str(args.alpha),
                    ],
                }
            )
    return out


def run_one(conf: dict[str, Any], seed: int, fit_steps: int, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "repulse.cli.train_ppo",
        "--config",
        str(REPO / conf["config"]),
        *conf["overrides"],
        "--fit_steps",
        str(fit_steps),
        "--seed",
        str(seed),
        "--save_path",
        str(folder),
    ]
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        return {"error": f"exit {code}: see {folder / 'log.txt'}", "seed": seed}
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "seed": seed,
        "wall_s": time.perf_counter() - start,
        "folder": str(folder),
        **{
            k: summary[k]
            for k in ("exact_log_p_bad_initial", "exact_log_p_bad_final", "reward_mean_final", "samples_used")
        },
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(confs: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for conf in confs:
        ok = [r for r in runs[conf["name"]] if "error" not in r]
        row = {
            "config": conf["name"],
            "method": conf["method"],
            "kl": conf["kl"],
            "beta": conf["beta"],
            "runs": len(ok),
            "errors": len(runs[conf["name"]]) - len(ok),
        }
        if ok:
            lp, lp_se = mean_se([r["exact_log_p_bad_final"] for r in ok])
            rew, rew_se = mean_se([r["reward_mean_final"] for r in ok])
            row.update(
                log_p_bad_final=lp,
                log_p_bad_final_se=lp_se,
                reward_final=rew,
                reward_final_se=rew_se,
                log_p_bad_initial=ok[0]["exact_log_p_bad_initial"],
                samples=sum(r["samples_used"] for r in ok) / len(ok),
            )
            base = {r["seed"]: r for r in runs[f"REINFORCE c={conf['kl']:g}"] if "error" not in r}
            diffs = [
                r["exact_log_p_bad_final"] - base[r["seed"]]["exact_log_p_bad_final"]
                for r in ok
                if r["seed"] in base and conf["method"] != "REINFORCE"
            ]
            if diffs:
                row["vs_reinforce"], row["vs_reinforce_se"] = mean_se(diffs)
        rows.append(row)
    return rows


COLUMNS = [
    ("config", "configuration", ""),
    ("runs", "runs", "d"),
    ("samples", "samples", ".0f"),
    ("log_p_bad_initial", "log P(bad) before", ".3f"),
    ("log_p_bad_final", "log P(bad) after", ".3f"),
    ("log_p_bad_final_se", "+-", ".3f"),
    ("reward_final", "avg reward", ".3f"),
    ("reward_final_se", "+-", ".3f"),
    ("vs_reinforce", "vs REINFORCE", ".3f"),
    ("vs_reinforce_se", "+-", ".3f"),
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {**set_offline_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    confs = configurations(args)
    root = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="toy_frontier_"))
    jobs = [(conf, seed) for seed in range(1, args.seeds + 1) for conf in confs]
    runs: dict[str, list[dict[str, Any]]] = {conf["name"]: [] for conf in confs}
    start = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {
            pool.submit(
                run_one, conf, seed, args.fit_steps, root / conf["name"].replace(" ", "_") / f"seed{seed}", env
            ): conf["name"]
            for conf, seed in jobs
        }
        for done, (future, name) in enumerate(futures.items(), 1):
            runs[name].append(future.result())
            print(f"[toy_frontier] {done}/{len(jobs)} runs done ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = summarize(confs, runs)
    print()
    print(format_table(rows, COLUMNS))
    try:
        from repulse.plotting.frontier import plot_frontier, read_run

        done = [(name, r["folder"]) for name, rs in runs.items() for r in rs if "error" not in r]
        read = [{**read_run(folder), "name": folder, "group": name} for name, folder in done]
        png = plot_frontier(read, str(Path(args.output).with_suffix(".png")))
    except Exception as err:  # the table and JSON matter more than the picture
        png = f"not drawn: {err}"
    payload = {
        "benchmark": "toy_frontier",
        "machine": machine_info(("torch", "transformers")),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "configurations": confs,
        "rows": rows,
        "runs": runs,
        "frontier_png": str(png),
        "wall_s": time.perf_counter() - start,
    }
    write_json_atomic(args.output, payload)
    print(f"\nresults in {args.output}; frontier: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
