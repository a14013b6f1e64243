"""The schedule warns when no optimizer step of a run would have a non-zero learning rate."""

from __future__ import annotations

import logging

import pytest
import torch

from repulse.config.common import OptimArgs
from repulse.trainers.optim import build_optimizer, build_scheduler

WARNING = "no optimizer step of this run has a non-zero learning rate"


def lrs_of_steps(total_steps: int, **flags) -> list[float]:
    """The learning rate each of `total_steps` optimizer steps uses."""
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model, OptimArgs(learning_rate=1e-3, **flags))
    scheduler = build_scheduler(optimizer, OptimArgs(learning_rate=1e-3, **flags), total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("total_steps", "flags", "warns"),
    [
        (1, {}, True),  # the default 3 % warm-up rounds up to one step: the only step has lr 0
        (2, {}, False),
        (1, {"lr_warmup_ratio": 0.0}, False),
        (3, {"lr_warmup_ratio": 0.9}, False),  # 3 warm-up steps: lr 0, 1/3, 2/3 of the peak
        (10, {"lr_scheduler": "constant"}, False),
        (1, {"lr_scheduler": "linear", "lr_warmup_ratio": 0.0}, False),
    ],
)
def test_warning_matches_the_learning_rates_the_steps_use(total_steps, flags, warns, caplog):
    with caplog.at_level(logging.WARNING, logger="repulse"):
        lrs = lrs_of_steps(total_steps, **flags)
    assert (WARNING in caplog.text) == (not any(lr > 0 for lr in lrs)) == warns
