"""The global batch that must divide over the processes, said in one line before anything loads."""

from __future__ import annotations

import pytest

from repulse.cli import train_ppo
from repulse.infra.errors import UserError
from repulse.trainers.rl.build import batch_plan

TOY = ["--config", "configs/toy_repulse.yaml"]


def test_each_rank_steps_on_its_share_of_the_global_batch():
    geometry = ["--duplicate_rollout_batch_by", "8", "--micro_train_batch_size", "8", "--train_batch_size", "32"]
    config = train_ppo.parse_args([*TOY, *geometry])
    assert (batch_plan(config, 1).global_batch, batch_plan(config, 2).global_batch) == (32, 16)
    with pytest.raises(UserError, match="--train_batch_size 32 must be a multiple of --micro_train_batch_size 8 x 3"):
        batch_plan(config, 3)
