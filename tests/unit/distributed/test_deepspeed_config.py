"""The DeepSpeed configs are pure dicts: what each flag combination asks of DeepSpeed."""

from __future__ import annotations

import pytest

from repulse.distributed.deepspeed_config import TrainLayout, eval_config, train_config


def layout(**kw):
    base = dict(stage=2, micro_batch_size=4, accumulation_steps=3, world_size=2, max_norm=1.0)
    return TrainLayout(**{**base, **kw})


def test_batch_geometry_and_clipping():
    config = train_config(layout())
    assert config["train_batch_size"] == 4 * 3 * 2 and config["gradient_accumulation_steps"] == 3
    assert config["gradient_clipping"] == 1.0 and config["zero_optimization"]["stage"] == 2
    assert train_config(layout(stage=0, engine_clips=False))["gradient_clipping"] == 0.0
    assert train_config(layout(bf16=True))["bf16"] == {"enabled": True}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_adam_offload(stage):
    zero = train_config(layout(stage=stage, adam_offload=True))["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert ("offload_param" in zero) == (stage == 3)  # parameters too under ZeRO-3, as OpenRLHF does
    assert "offload_optimizer" not in train_config(layout(stage=stage))["zero_optimization"]


def test_bucket_sizes_follow_the_hidden_size():
    zero = train_config(layout(stage=3, hidden_size=576))["zero_optimization"]
    assert zero["reduce_bucket_size"] == 576 * 576
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 576 * 576)
    assert zero["stage3_param_persistence_threshold"] == 5760


@pytest.mark.parametrize(("train_stage", "eval_stage"), [(0, 0), (1, 0), (2, 0), (3, 3)])
def test_frozen_models_are_sharded_only_under_zero3(train_stage, eval_stage):
    config = eval_config(train_stage, 2, offload_params=True, bf16=False)
    assert config["zero_optimization"]["stage"] == eval_stage
    offloaded = config["zero_optimization"].get("offload_param", {}).get("device") == "cpu"
    assert offloaded == (eval_stage == 3)
    assert "optimizer" not in config
