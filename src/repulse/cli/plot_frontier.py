"""plot_frontier: the frontier figure (average reward against exact log10 P(bad), one point per run), the
matched-KL frontier (exact KL(p_theta || p_0) against exact log10 P(bad), with each run's path; when the runs have
the exact diagnostics of --analytic_bad_word_calc) and the per-step curves (exact log10 P(bad), average reward,
and with the diagnostics entropy and KL, against samples drawn), from train_ppo run folders. The average reward is
the exact final E[r] when every run has it, else the mean sampled reward over the last quarter of training.

    repulse plot_frontier runs/repulse runs/reinforce --output_dir plots
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from repulse.cli.runner import run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="repulse plot_frontier",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="train_ppo --save_path folders")
    parser.add_argument(
        "--output_dir", default=".", help="folder for frontier.png, frontier_kl.png (with exact KL) and curves.png"
    )
    return parser.parse_args(argv)


def plot(args: argparse.Namespace) -> None:
    from repulse.plotting.frontier import frontier_points, plot_curves, plot_frontier, read_run

    runs = [read_run(folder) for folder in args.runs]
    written = [plot_frontier(runs, f"{args.output_dir}/frontier.png")]
    if frontier_points(runs, "kl"):
        written.append(plot_frontier(runs, f"{args.output_dir}/frontier_kl.png", x_axis="kl"))
    written.append(plot_curves(runs, f"{args.output_dir}/curves.png"))
    print(f"plot_frontier: {len(runs)} runs -> {', '.join(map(str, written))}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: plot(parse_args(a)), argv, "plot_frontier")


if __name__ == "__main__":
    raise SystemExit(main())
