"""Which strategy a run gets, and what the log says when a strategy flag is not applied."""

from __future__ import annotations

import logging

import pytest

from repulse.config.common import StrategyArgs
from repulse.config.fields import ConfigError
from repulse.distributed.launch import choose, make_strategy, note_not_applicable
from repulse.infra.errors import MissingExtraError, UserError


@pytest.mark.parametrize(
    ("flags", "world", "have_ds", "expected"),
    [
        ({}, 1, True, "ddp"),  # one process: nothing to partition
        ({}, 2, True, "deepspeed"),  # torchrun, deepspeed installed
        ({"local_rank": 0}, 1, True, "deepspeed"),  # the deepspeed launcher, even with one process
        ({"adam_offload": True}, 1, True, "deepspeed"),  # ZeRO-Offload helps one process too
        ({}, 2, False, "ddp"),  # the extra is missing: DDP, said in the log
        ({"strategy": "fsdp2"}, 2, True, "fsdp2"),
        ({"strategy": "ddp"}, 2, True, "ddp"),
        ({"strategy": "deepspeed"}, 1, True, "deepspeed"),
    ],
)
def test_choice(flags, world, have_ds, expected):
    assert choose(StrategyArgs(**flags), world, have_ds)[0] == expected


def test_notes_say_plainly_what_is_not_applied():
    _, note = choose(StrategyArgs(zero_stage=2), 2, have_deepspeed=False)
    assert "--zero_stage 2 is not applied: DeepSpeed is not installed" in note and "torch DDP over 2" in note
    _, note = choose(StrategyArgs(), 2, have_deepspeed=False)  # the fork's default stage, unstated
    assert "--zero_stage 2 is not applied" in note
    _, note = choose(StrategyArgs(zero_stage=3), 1, have_deepspeed=True)
    assert "one process" in note
    assert choose(StrategyArgs(), 1, have_deepspeed=True)[1] is None  # nothing asked, nothing to say
    assert choose(StrategyArgs(zero_stage=2), 2, have_deepspeed=True)[1] is None  # applied: no notice
    _, note = choose(StrategyArgs(strategy="fsdp2", zero_stage=1), 2, have_deepspeed=True)
    assert "does not apply to --strategy fsdp2" in note


def test_missing_deepspeed_is_an_error_where_it_was_asked_for():
    with pytest.raises(MissingExtraError, match="--strategy deepspeed needs the 'deepspeed' package"):
        choose(StrategyArgs(strategy="deepspeed"), 2, have_deepspeed=False)
    with pytest.raises(MissingExtraError, match="--adam_offload"):
        choose(StrategyArgs(adam_offload=True), 1, have_deepspeed=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"strategy": "fsdp2", "adam_offload": True}, "--adam_offload is DeepSpeed's ZeRO-Offload"),
        ({"zero_stage": 0, "adam_offload": True}, "--adam_offload needs --zero_stage 1, 2 or 3"),
        ({"strategy": "zero"}, "--strategy must be one of"),
        ({"zero_stage": 4}, "--zero_stage must be 0, 1, 2 or 3"),
    ],
)
def test_impossible_combinations(flags, message):
    with pytest.raises(ConfigError, match=message):
        StrategyArgs(**flags)


def test_commands_without_sharded_strategies(caplog):
    with pytest.raises(UserError, match="--strategy deepspeed: this command runs on plain torch only"):
        make_strategy(StrategyArgs(strategy="deepspeed"))
    with caplog.at_level(logging.INFO, logger="repulse"):
        strategy = make_strategy(StrategyArgs(zero_stage=2))
    assert strategy.kind == "replicated" and "--zero_stage 2 is not applied: this command runs on plain torch" in (
        caplog.text
    )


def test_inference_commands_name_the_flags(caplog):
    with caplog.at_level(logging.INFO, logger="repulse"):
        note_not_applicable(StrategyArgs(), "evaluate_gcg", "why")
        assert caplog.text == ""
        note_not_applicable(StrategyArgs(zero_stage=2), "evaluate_gcg", "it trains nothing")
    assert "--zero_stage 2: not applicable to evaluate_gcg (it trains nothing); ignored" in caplog.text
