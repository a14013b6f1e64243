"""plot_frontier: the frontier figure (average reward against exact log10 P(bad), one point per run) and the
per-step curves (exact log10 P(bad) and average reward against samples drawn), from train_ppo run folders.

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
    parser.add_argument("--output_dir", default=".", help="folder for frontier.png and curves.png")
    return parser.parse_args(argv)


def plot(args: argparse.Namespace) -> None:
    from repulse.plotting.frontier import plot_curves, plot_frontier, read_run

    runs = [read_run(folder) for folder in args.runs]
    frontier = plot_frontier(runs, f"{args.output_dir}/frontier.png")
    curves = plot_curves(runs, f"{args.output_dir}/curves.png")
    print(f"plot_frontier: {len(runs)} runs -> {frontier}, {curves}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: plot(parse_args(a)), argv, "plot_frontier")


if __name__ == "__main__":
    raise SystemExit(main())
