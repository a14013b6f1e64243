"""demo: RePULSe against REINFORCE on the embedded toy, at equal sample budgets, every quantity exact.

The embedded tiny LM continues "This man is a" with 2 tokens; a planted set of bad words is rare. Both methods
train it against the embedded reward model; RePULSe draws N samples from p and N from its learned proposal q per
step and so gets half as many p-steps (the paper's sample accounting). After every fit step, by enumerating all
78,681 continuations: P(bad) (the continuation holds a bad word), E[r], the entropy of p_theta and KL(p_theta ||
p_0), and for RePULSe q's bad mass, KL(sigma || q) and q's exact ESS fraction for sigma. Prints a table (method,
average reward, P(bad) before and after, final entropy and KL to p_0) and the per-fit-step diagnostics, so that a
lower P(bad) that came from a collapse of p_theta (entropy down, KL up) shows as such; writes
<save_path>/demo.json, <save_path>/frontier.png, frontier_kl.png and curves.png. The settings are
configs/toy_repulse.yaml and configs/toy_reinforce.yaml.

    repulse demo --save_path demo_out --seeds 1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs
from repulse.config.demo import DemoArgs
from repulse.config.parser import parse_groups

COMMON = {
    "new_custom_single_prompt": True,
    "generate_max_len": 2,
    "duplicate_rollout_batch_by": 64,
    "micro_rollout_batch_size": 1,
    "rollout_batch_size": 1,
    "micro_train_batch_size": 64,
    "train_batch_size": 64,
    "do_harmlessness_training": True,
    "reinforce_baseline_type": "expectation",
    "init_kl_coef": 0.0,
    "base_actor_learning_rate": 3e-4,
    "lr_scheduler": "constant",
    "lr_warmup_ratio": 0.0,
    "adam_betas": [0.9, 0.999],
    "fit_steps": 4,
    "analytic_bad_word_calc": True,
    "disable_progress_bar": True,
}
METHODS = {
    "REINFORCE": {**COMMON, "harmlessness_training_loss_type": "reinforce", "harmlessness_training_num_episodes": 10},
    "RePULSe": {
        **COMMON,
        "harmlessness_training_loss_type": "neg_training",
        "harmlessness_training_num_episodes": 5,
        "actor_loss_type": "ctl",
        "parameterization": "policy_psi_q_p_s_t",
        "target_dist_beta": -1.0,
        "alpha": 1.0,
        "actor_learning_rate": 1e-3,
    },
}


class DemoConfig(NamedTuple):
    ckpt: CheckpointArgs  # only --save_path: the folder of every run, demo.json and the plots
    demo: DemoArgs


def parse_args(argv: Sequence[str] | None = None) -> DemoConfig:
    only = {CheckpointArgs: ["save_path"]}
    return DemoConfig(
        *parse_groups(
            (CheckpointArgs, DemoArgs), argv, description=__doc__, only=only, defaults={"save_path": "demo_out"}
        )
    )


def to_argv(settings: dict) -> list[str]:
    argv: list[str] = []
    for key, value in settings.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def run_method(name: str, seed: int, folder: str) -> dict:
    import json

    from repulse.cli import train_ppo
    from repulse.infra.errors import UserError

    code = train_ppo.main([*to_argv(METHODS[name]), "--seed", str(seed), "--save_path", folder])
    if code != 0:
        raise UserError(f"the {name} run of the demo failed (exit {code})")
    with open(f"{folder}/summary.json") as f:
        return json.load(f)


def mean(results: list[dict], key: str) -> float:
    return sum(r[key] for r in results) / len(results)


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'method':<10} {'seeds':>5} {'samples':>8} {'avg reward':>11} {'P(bad) before':>14} {'P(bad) after':>13} "
        f"{'entropy':>8} {'KL(p||p0)':>10}"
    )
    for r in rows:
        print(
            f"{r['method']:<10} {r['seeds']:>5} {r['samples']:>8} {r['reward']:>11.3f} {r['p_bad_before']:>14.3e} "
            f"{r['p_bad_after']:>13.3e} {r['entropy']:>8.2f} {r['kl_to_reference']:>10.4f}"
        )


def run(config: DemoConfig) -> dict:
    import math

    from repulse.evaluation.run_steps import steps_table
    from repulse.infra.files import write_json_atomic
    from repulse.plotting.frontier import plot_curves, plot_frontier, read_run

    args, save_path = config.demo, config.ckpt.save_path
    rows, folders = [], []
    for name in METHODS:
        results = []
        for seed in range(1, args.seeds + 1):
            folder = f"{save_path}/{name.lower()}_seed{seed}"
            folders.append(folder)
            results.append(run_method(name, seed, folder))
        rows.append(
            {
                "method": name,
                "seeds": len(results),
                "samples": int(mean(results, "samples_used")),
                "reward": mean(results, "reward_mean_final"),
                "p_bad_before": math.exp(mean(results, "exact_log_p_bad_initial")),
                "p_bad_after": math.exp(mean(results, "exact_log_p_bad_final")),
                "entropy": mean(results, "exact_entropy_final"),
                "kl_to_reference": mean(results, "exact_kl_to_reference_final"),
            }
        )
    print_table(rows)
    for name in METHODS:
        print("\n" + steps_table(name, [f for f in folders if f.rsplit("/", 1)[-1].startswith(f"{name.lower()}_")]))
    runs = [read_run(f) for f in folders]
    frontier = plot_frontier(runs, f"{save_path}/frontier.png")
    plot_frontier(runs, f"{save_path}/frontier_kl.png", x_axis="kl")
    plot_curves(runs, f"{save_path}/curves.png")
    write_json_atomic(f"{save_path}/demo.json", {"rows": rows, "runs": folders, "settings": METHODS})
    print(f"\ndemo: P(bad) shown as exp(mean log P(bad)) over seeds; plots: {frontier}; table: {save_path}/demo.json")
    return {"rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: run(parse_args(a)), argv, "demo")


if __name__ == "__main__":
    raise SystemExit(main())
