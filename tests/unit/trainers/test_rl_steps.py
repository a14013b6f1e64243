"""How an update phase cuts an experience buffer into optimizer steps and micro-batches (--train_batch_size,
--micro_train_batch_size, --max_epochs): weights, boundaries, the partial last step and its warning."""

from __future__ import annotations

import logging

import pytest
import torch

from repulse.trainers.rl.build import warn_partial_steps
from repulse.trainers.rl.steps import BatchPlan


def test_steps_micro_batches_weights_and_boundaries():
    plan = BatchPlan(micro_batch=2, global_batch=4, epochs=2)
    steps = list(plan.micro_steps(10))
    # per epoch: steps of 4, 4 and the 2 rows left; each micro-batch's loss weighs its share of its step
    assert [s.rows.tolist() for s in steps[:5]] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [s.weight for s in steps[:5]] == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert [s.boundary for s in steps[:5]] == [False, True, False, True, True]
    assert [s.epoch for s in steps] == [0] * 5 + [1] * 5
    assert plan.steps_per_buffer(10) == 6
    # a step of 3 rows in micro-batches of 2: weights 2/3 and 1/3, so the step's loss is the mean over its rows
    assert [s.weight for s in BatchPlan(2, 4).micro_steps(7)][2:] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]


def test_every_row_once_per_epoch_and_shuffled_when_asked():
    torch.manual_seed(0)
    steps = list(BatchPlan(3, 6, epochs=2, shuffle=True).micro_steps(12))
    for epoch in (0, 1):
        rows = torch.cat([s.rows for s in steps if s.epoch == epoch])
        assert sorted(rows.tolist()) == list(range(12)) and rows.tolist() != list(range(12))


def test_a_global_batch_must_be_whole_micro_batches():
    with pytest.raises(ValueError, match="not a multiple"):
        BatchPlan(micro_batch=3, global_batch=8)


def test_partial_steps_are_announced_once(caplog):
    with caplog.at_level(logging.WARNING, logger="repulse"):
        warn_partial_steps(BatchPlan(2, 4), [8, 8, 6, 6])
        warn_partial_steps(BatchPlan(2, 4), [8, 4])
    assert len(caplog.records) == 1 and "6 sequences" in caplog.records[0].getMessage()
