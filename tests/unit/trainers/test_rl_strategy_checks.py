"""What train_ppo refuses on several processes or on sharded weights, in one line before anything loads; and the
global batch that must divide over the processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from repulse.cli import train_ppo
from repulse.infra.errors import UserError
from repulse.trainers.rl.build import batch_plan, check_strategy

TOY = ["--config", "configs/toy_repulse.yaml"]
DDP2 = SimpleNamespace(world_size=2, forward_collectives=False)
ZERO3 = SimpleNamespace(world_size=2, forward_collectives=True)


@pytest.mark.parametrize(
    ("flags", "strategy", "message"),
    [
        (["--save_negdata"], DDP2, "--save_negdata"),
        (["--parameterization", "modulation_linear_head"], ZERO3, "--parameterization modulation_linear_head"),
    ],
)
def test_refused_where_it_does_not_run(flags, strategy, message):
    config = train_ppo.parse_args([*TOY, *flags])
    with pytest.raises(UserError, match=message):
        check_strategy(config, strategy)
    check_strategy(config, SimpleNamespace(world_size=1, forward_collectives=False))  # one process: runs


def test_ema_refused_on_sharded_weights():
    config = train_ppo.parse_args(["--actor_loss_type", "reinforce", "--enable_ema"])
    with pytest.raises(UserError, match="--enable_ema"):
        check_strategy(config, SimpleNamespace(world_size=1, forward_collectives=True))
    check_strategy(config, DDP2)


def test_each_rank_steps_on_its_share_of_the_global_batch():
    geometry = ["--duplicate_rollout_batch_by", "8", "--micro_train_batch_size", "8", "--train_batch_size", "32"]
    config = train_ppo.parse_args([*TOY, *geometry])
    assert (batch_plan(config, 1).global_batch, batch_plan(config, 2).global_batch) == (32, 16)
    with pytest.raises(UserError, match="--train_batch_size 32 must be a multiple of --micro_train_batch_size 8 x 3"):
        batch_plan(config, 3)
