"""Every fork flag parses under its OpenRLHF / RePULSe name into the right group field."""

from __future__ import annotations

import pytest

from repulse.cli import train_dpo, train_rm, train_sft
from repulse.config.fields import ConfigError

# (argv, group, field, expected value): the expected values are the literal command-line values, typed.
SHARED_FLAGS = [
    (["--pretrain", "org/model"], "model", "pretrain", "org/model"),
    (["--micro_train_batch_size", "3"], "optim", "micro_train_batch_size", 3),
    (["--train_batch_size", "48"], "optim", "train_batch_size", 48),
    (["--max_epochs", "4"], "optim", "max_epochs", 4),
    (["--learning_rate", "2e-5"], "optim", "learning_rate", 2e-5),
    (["--lr_scheduler", "constant"], "optim", "lr_scheduler", "constant"),
    (["--lr_warmup_ratio", "0.25"], "optim", "lr_warmup_ratio", 0.25),
    (["--adam_betas", "0.9", "0.95"], "optim", "adam_betas", [0.9, 0.95]),
    (["--adam_betas", "0.5", "0.75"], "optim", "adam_betas", [0.5, 0.75]),
    (["--l2", "0.01"], "optim", "l2", 0.01),
    (["--seed", "7"], "optim", "seed", 7),
    (["--zero_stage", "3"], "strategy", "zero_stage", 3),
    (["--lora_rank", "8"], "lora", "lora_rank", 8),
    (["--lora_alpha", "32"], "lora", "lora_alpha", 32),
    (["--target_modules", "q_proj", "v_proj"], "lora", "target_modules", ["q_proj", "v_proj"]),
    (["--save_path", "runs/x"], "ckpt", "save_path", "runs/x"),
    (["--ckpt_path", "runs/ck"], "ckpt", "ckpt_path", "runs/ck"),
    (["--max_ckpt_num", "5"], "ckpt", "max_ckpt_num", 5),
    (["--save_steps", "10"], "ckpt", "save_steps", 10),
    (["--logging_steps", "2"], "logging", "logging_steps", 2),
    (["--eval_steps", "20"], "logging", "eval_steps", 20),
    (["--use_tensorboard", "tb_logs"], "logging", "use_tensorboard", "tb_logs"),
    (["--use_wandb", "offline"], "logging", "use_wandb", "offline"),
    (["--input_template", "User: {}\nAssistant: "], "data", "input_template", "User: {}\nAssistant: "),
    (["--dataset", "a.jsonl,b.jsonl", "--dataset_probs", "0.7,0.3"], "data", "dataset", "a.jsonl,b.jsonl"),
    (["--dataset", "a.jsonl,b.jsonl", "--dataset_probs", "0.7,0.3"], "data", "dataset_probs", "0.7,0.3"),
    (["--max_samples", "100"], "data", "max_samples", 100),
    (["--max_len", "64"], "data", "max_len", 64),
]
# Prompt/response keys: train_rm reads pairs by the preference keys instead (test_rm_rejects_prompt_response_keys).
SFT_KEY_FLAGS = [
    (["--input_key", "prompt"], "data", "input_key", "prompt"),
    (["--output_key", "response"], "data", "output_key", "response"),
]

BOOL_FLAGS = [
    ("--bf16", "model", "bf16"),
    ("--flash_attn", "model", "flash_attn"),
    ("--gradient_checkpointing", "model", "gradient_checkpointing"),
    ("--load_checkpoint", "ckpt", "load_checkpoint"),
    ("--save_hf_ckpt", "ckpt", "save_hf_ckpt"),
    ("--packing_samples", "data", "packing_samples"),
    ("--apply_chat_template", "data", "apply_chat_template"),
]


@pytest.mark.parametrize("parse", [train_sft.parse_args, train_rm.parse_args], ids=["sft", "rm"])
@pytest.mark.parametrize(("argv", "group", "name", "expected"), SHARED_FLAGS)
def test_shared_flag_parses(parse, argv, group, name, expected):
    cfg = parse(argv)
    assert getattr(getattr(cfg, group), name) == expected


@pytest.mark.parametrize(("argv", "group", "name", "expected"), SFT_KEY_FLAGS)
def test_sft_key_flag_parses(argv, group, name, expected):
    assert getattr(getattr(train_sft.parse_args(argv), group), name) == expected


@pytest.mark.parametrize("parse", [train_rm.parse_args, train_dpo.parse_args], ids=["rm", "dpo"])
@pytest.mark.parametrize("flag", ["--input_key", "--output_key"])
def test_pair_commands_reject_prompt_response_keys(parse, flag, capsys):
    """Pairs are read by the preference keys: a prompt/response key would be accepted and do nothing."""
    with pytest.raises(SystemExit) as exc:
        parse([flag, "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {flag} x" in err
    assert "preference pairs are read by --prompt_key" in err or "preference pairs are read by --chosen_key" in err


@pytest.mark.parametrize(("flag", "group", "name"), BOOL_FLAGS)
@pytest.mark.parametrize(
    ("suffix", "expected"), [([], True), (["true"], True), (["True"], True), (["false"], False), (["0"], False)]
)
def test_boolean_flags_bare_and_with_value(flag, group, name, suffix, expected):
    default = getattr(getattr(train_sft.parse_args([]), group), name)
    assert default is False  # so the bare form really changes it
    assert getattr(getattr(train_sft.parse_args([flag, *suffix]), group), name) is expected


def test_sft_only_flag_pretrain_mode():
    assert train_sft.parse_args([]).sft.pretrain_mode is False
    assert train_sft.parse_args(["--pretrain_mode"]).sft.pretrain_mode is True
    assert train_sft.parse_args(["--pretrain_mode", "false"]).sft.pretrain_mode is False


def test_rm_only_flags():
    cfg = train_rm.parse_args(
        ["--value_head_prefix", "value_head", "--normalize_reward", "--loss", "logexp", "--prompt_key", "prompt"]
    )
    assert cfg.reward.value_head_prefix == "value_head"
    assert cfg.reward.normalize_reward is True
    assert cfg.rm.loss == "logexp"
    assert cfg.keys.prompt_key == "prompt"
    default = train_rm.parse_args([])
    assert (default.reward.value_head_prefix, default.reward.normalize_reward, default.rm.loss) == (
        "score",
        False,
        "sigmoid",
    )


def test_rm_rejects_unknown_loss():
    with pytest.raises(ConfigError, match="--loss"):
        train_rm.parse_args(["--loss", "hinge"])


def test_sft_does_not_accept_rm_flags():
    with pytest.raises(SystemExit):
        train_sft.parse_args(["--value_head_prefix", "score"])


@pytest.mark.parametrize(
    "argv", [["--learning_r", "1e-5"], ["--micro_train", "2"], ["--pretrain_m"], ["--bogus", "1"]]
)
def test_abbreviations_and_unknown_flags_exit(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        train_sft.parse_args(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_list_defaults_are_not_shared_between_parses():
    first = train_sft.parse_args([])
    first.lora.target_modules.append("mutated")
    first.optim.adam_betas[0] = 0.0
    second = train_sft.parse_args([])
    assert second.lora.target_modules == ["all-linear"]
    assert second.optim.adam_betas == [0.9, 0.95]


def test_checkpoint_dir_defaults_under_save_path():
    assert train_sft.parse_args(["--save_path", "out"]).ckpt.checkpoint_dir() == "out/checkpoints"
    assert train_sft.parse_args(["--save_path", "out", "--ckpt_path", "ck"]).ckpt.checkpoint_dir() == "ck"
