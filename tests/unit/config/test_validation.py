"""Bad flag values raise ConfigError (a ValueError) whose message names the flag."""

from __future__ import annotations

import pytest

from repulse.cli import train_rm, train_sft
from repulse.config.common import DataArgs, OptimArgs
from repulse.config.fields import ConfigError


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--lr_scheduler", "exponential"], "--lr_scheduler"),
        (["--lora_rank", "-1"], "--lora_rank"),
        (["--lora_dropout", "1.0"], "--lora_dropout"),
        (["--input_template", "User: %s Assistant:"], "--input_template"),
        (["--max_len", "1"], "--max_len"),
        (["--max_samples", "0"], "--max_samples"),
        (["--learning_rate", "0"], "--learning_rate"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--lr_warmup_ratio", "1.0"], "--lr_warmup_ratio"),
        (["--adam_betas", "0.9"], "--adam_betas"),
        (["--adam_betas", "0.9", "0.95", "0.99"], "--adam_betas"),
        (["--micro_train_batch_size", "0"], "--micro_train_batch_size"),
        (["--max_epochs", "0"], "--max_epochs"),
        (["--zero_stage", "4"], "--zero_stage"),
        (["--dist_backend", "mpi"], "--dist_backend"),
        (["--max_ckpt_num", "0"], "--max_ckpt_num"),
        (["--logging_steps", "0"], "--logging_steps"),
        (["--train_batch_size", "0"], "--train_batch_size"),
        (["--adam_betas", "2", "3"], "--adam_betas"),
        (["--adam_betas", "0.9", "1.0"], "--adam_betas"),
        (["--learning_rate", "inf"], "--learning_rate"),
        (["--l2", "-0.1"], "--l2"),
        (["--max_norm", "nan"], "--max_norm"),
        (["--min_lr_ratio", "1.5"], "--min_lr_ratio"),
        (["--lora_alpha", "0"], "--lora_alpha"),
        (["--save_path", " "], "--save_path"),
    ],
)
@pytest.mark.parametrize("parse", [train_sft.parse_args, train_rm.parse_args], ids=["sft", "rm"])
def test_bad_value_names_the_flag(parse, argv, flag):
    with pytest.raises(ConfigError) as exc:
        parse(argv)
    assert str(exc.value).startswith(flag)
    assert isinstance(exc.value, ValueError)


def test_boundary_values_are_accepted():
    cfg = train_sft.parse_args(["--max_len", "2", "--lora_rank", "0", "--lr_warmup_ratio", "0", "--zero_stage", "0"])
    assert (cfg.data.max_len, cfg.lora.lora_rank, cfg.optim.lr_warmup_ratio, cfg.strategy.zero_stage) == (2, 0, 0, 0)
    assert train_sft.parse_args(["--input_template", "Q: {} A:"]).data.input_template == "Q: {} A:"


@pytest.mark.parametrize(
    ("dataset", "probs", "expected"),
    [
        (None, "1.0", [1.0]),
        ("a.jsonl", "1", [1.0]),
        ("a.jsonl,b.jsonl", "0.7,0.3", [0.7, 0.3]),
        ("a,b,c", "0.5,0.25,0.25", [0.5, 0.25, 0.25]),
    ],
)
def test_dataset_probs_valid(dataset, probs, expected):
    assert DataArgs(dataset=dataset, dataset_probs=probs).probabilities() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("dataset", "probs"),
    [
        ("a,b", "0.7,0.2"),  # sums to 0.9
        ("a,b", "0.7,0.4"),  # sums to 1.1
        ("a,b", "1.0"),  # one value for two datasets
        ("a", "0.5,0.5"),  # two values for one dataset
        ("a,b", "1.5,-0.5"),  # sums to 1 but a negative entry
        ("a,b", "1.0,0"),  # a zero entry
        ("a,b", "0.7,x"),  # not a number
    ],
)
def test_dataset_probs_invalid_names_the_flag(dataset, probs):
    with pytest.raises(ConfigError) as exc:  # checked at parse time, before any model loads
        train_sft.parse_args(["--dataset", dataset, "--dataset_probs", probs])
    assert str(exc.value).startswith("--dataset_probs")


def test_dataset_probs_nan_rejected():
    with pytest.raises(ConfigError, match="--dataset_probs"):
        DataArgs(dataset="a,b", dataset_probs="nan,nan")


@pytest.mark.parametrize(
    ("train", "micro", "world", "expected"),
    [
        (128, 8, 1, 16),  # 128 / (8 x 1)
        (128, 8, 2, 8),  # 128 / (8 x 2)
        (16, 4, 4, 1),  # 16 / (4 x 4)
        (12, 2, 3, 2),  # 12 / (2 x 3)
    ],
)
def test_accumulation_steps(train, micro, world, expected):
    optim = OptimArgs(train_batch_size=train, micro_train_batch_size=micro)
    assert optim.accumulation_steps(world) == expected


@pytest.mark.parametrize(("train", "micro", "world"), [(10, 4, 1), (16, 4, 3), (8, 16, 1), (12, 4, 2)])
def test_accumulation_steps_not_a_multiple(train, micro, world):
    optim = train_sft.parse_args(["--train_batch_size", str(train), "--micro_train_batch_size", str(micro)]).optim
    with pytest.raises(ConfigError) as exc:
        optim.accumulation_steps(world)
    message = str(exc.value)
    assert message.startswith("--train_batch_size")
    assert "--micro_train_batch_size" in message
    assert str(micro * world) in message
