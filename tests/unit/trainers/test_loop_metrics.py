"""The loop's per-step metric average over micro-batches."""

from __future__ import annotations

import math

from repulse.trainers.loop import average_micro_metrics


def test_mean_over_micro_batches():
    out = average_micro_metrics([{"loss": 1.0, "acc": 0.0}, {"loss": 3.0, "acc": 1.0}])
    assert out == {"loss": 2.0, "acc": 0.5}


def test_nan_entries_are_skipped_and_all_nan_stays_nan():
    nan = float("nan")
    out = average_micro_metrics(
        [
            {"loss": 1.0, "reject_reward": nan, "chosen_reward": nan},
            {"loss": 2.0, "reject_reward": -4.0, "chosen_reward": nan},
            {"loss": 3.0, "reject_reward": -2.0, "chosen_reward": nan},
        ]
    )
    assert out["loss"] == 2.0 and out["reject_reward"] == -3.0
    assert math.isnan(out["chosen_reward"])
