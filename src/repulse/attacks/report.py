"""Statistics of an attack evaluation: per-sample flags into per-target summaries, per-target rows into ASR."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch


def reward_summary(rewards: torch.Tensor | None) -> dict[str, float | None]:
    if rewards is None or rewards.numel() == 0:
        return {"reward_mean": None, "reward_min": None, "reward_std": None, "reward_median": None}
    r = rewards.float()
    return {
        "reward_mean": float(r.mean()),
        "reward_min": float(r.min()),
        "reward_std": float(r.std(unbiased=False)),
        "reward_median": float(r.median()),
    }


def logprob_summary(logprobs: torch.Tensor) -> dict[str, float]:
    """The reference's three numbers: first target token, mean per token, and sum."""
    return {"first": float(logprobs[0]), "mean": float(logprobs.mean()), "sum": float(logprobs.sum())}


def stats(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "median": None, "min": None}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.pstdev(vals),
        "median": statistics.median(vals),
        "min": min(vals),
    }


def percent(flags: Sequence[bool | None]) -> float | None:
    vals = [bool(f) for f in flags if f is not None]
    return 100.0 * sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict]) -> dict:
    """ASR (%) at the criterion (and at threshold - 1 for rewards), reward and log-prob statistics."""
    attacked = [r["attacked"] for r in rows]
    baseline = [r["baseline"] for r in rows if r.get("baseline")]
    out = {
        "n_targets": len(rows),
        "asr": percent([r["success"] for r in rows]),
        "asr_minus_1": percent([r.get("success_minus_1") for r in rows]),
        "baseline_asr": percent([b["success"] for b in baseline]) if baseline else None,
        # Over targets: the per-target mean reward's mean/std/median, and the minimum of per-target minima.
        "reward_stats": {
            **{k: v for k, v in stats([a["reward_mean"] for a in attacked]).items() if k != "min"},
            "min": stats([a["reward_min"] for a in attacked])["min"],
        },
        "baseline_reward_stats": {
            **{k: v for k, v in stats([b["reward_mean"] for b in baseline]).items() if k != "min"},
            "min": stats([b["reward_min"] for b in baseline])["min"],
        },
        "logprob_before": {k: stats([r["logprob_before"][k] for r in rows])["mean"] for k in ("first", "mean", "sum")},
        "logprob_after": {k: stats([r["logprob_after"][k] for r in rows])["mean"] for k in ("first", "mean", "sum")},
        "attack_time_s": stats([r["attack_time_s"] for r in rows]),
    }
    return out


def format_summary(name: str, summary: dict, seconds: float, output_path: str | None) -> str:
    def fmt(x):
        return "n/a" if x is None else f"{x:.4g}"

    rs, before, after = summary["reward_stats"], summary["logprob_before"], summary["logprob_after"]
    where = f"; results in {output_path}" if output_path else ""
    return (
        f"{name}: ASR {fmt(summary['asr'])}% over {summary['n_targets']} targets "
        f"(baseline {fmt(summary['baseline_asr'])}%, at threshold-1 {fmt(summary['asr_minus_1'])}%); "
        f"reward mean {fmt(rs['mean'])} min {fmt(rs['min'])} std {fmt(rs['std'])} median {fmt(rs['median'])}; "
        f"target log-prob sum {fmt(before['sum'])} -> {fmt(after['sum'])}; {seconds:.1f} s{where}"
    )
