"""`--config run.yaml` supplies defaults; the command line overrides; bad files raise ConfigError naming --config."""

from __future__ import annotations

import pytest
import yaml

from repulse.cli import train_rm, train_sft
from repulse.config.fields import ConfigError
from repulse.config.parser import group_fields, to_flat_dict


def write_yaml(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_sets_defaults(tmp_path):
    config = write_yaml(
        tmp_path,
        "learning_rate: 1.0e-4\n"
        "micro_train_batch_size: 2\n"
        "bf16: true\n"
        "adam_betas: [0.8, 0.99]\n"
        "target_modules: [c_attn]\n"
        "dataset: a.jsonl\n"
        "pretrain_mode: true\n",
    )
    cfg = train_sft.parse_args(["--config", config])
    assert cfg.optim.learning_rate == 1e-4
    assert cfg.optim.micro_train_batch_size == 2
    assert cfg.model.bf16 is True
    assert cfg.optim.adam_betas == [0.8, 0.99]
    assert cfg.lora.target_modules == ["c_attn"]
    assert cfg.data.dataset == "a.jsonl"
    assert cfg.sft.pretrain_mode is True
    # Untouched flags keep their declared defaults.
    assert cfg.optim.train_batch_size == 128


def test_yaml_scientific_notation_without_dot_still_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-5` as the *string* "1e-5"; it must still end up as the float 1e-5.
    cfg = train_sft.parse_args(["--config", write_yaml(tmp_path, "learning_rate: 1e-5\n")])
    assert isinstance(cfg.optim.learning_rate, float)
    assert cfg.optim.learning_rate == 1e-5


def test_command_line_overrides_yaml(tmp_path):
    config = write_yaml(tmp_path, "learning_rate: 1.0e-4\nbf16: true\nadam_betas: [0.8, 0.99]\nmax_epochs: 3\n")
    argv = ["--learning_rate", "2e-5", "--bf16", "false", "--adam_betas", "0.5", "0.6"]
    # Flags before and after --config both win over the file.
    for order in (["--config", config, *argv], [*argv, "--config", config]):
        cfg = train_sft.parse_args(order)
        assert cfg.optim.learning_rate == 2e-5
        assert cfg.model.bf16 is False
        assert cfg.optim.adam_betas == [0.5, 0.6]
        assert cfg.optim.max_epochs == 3  # from the file


def test_config_equals_form(tmp_path):
    config = write_yaml(tmp_path, "max_epochs: 5\n")
    assert train_sft.parse_args([f"--config={config}"]).optim.max_epochs == 5


def test_yaml_values_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="^--lr_scheduler"):
        train_sft.parse_args(["--config", write_yaml(tmp_path, "lr_scheduler: exponential\n")])


def test_unknown_yaml_key(tmp_path):
    config = write_yaml(tmp_path, "learning_rate: 1.0e-4\nlearning_rat: 2\n")
    with pytest.raises(ConfigError) as exc:
        train_sft.parse_args(["--config", config])
    assert "--config" in str(exc.value)
    assert "learning_rat" in str(exc.value)


def test_yaml_key_of_another_command_is_unknown(tmp_path):
    # pretrain_mode belongs to train_sft, value_head_prefix to train_rm.
    with pytest.raises(ConfigError, match="pretrain_mode"):
        train_rm.parse_args(["--config", write_yaml(tmp_path, "pretrain_mode: true\n")])
    with pytest.raises(ConfigError, match="value_head_prefix"):
        train_sft.parse_args(["--config", write_yaml(tmp_path, "value_head_prefix: score\n", "b.yaml")])


def test_missing_yaml_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        train_sft.parse_args(["--config", missing])
    assert "--config" in str(exc.value)
    assert missing in str(exc.value)


@pytest.mark.parametrize("text", ["learning_rate: [1, 2\n", "a: b: c\n", "key: 'unterminated\n"])
def test_invalid_yaml(tmp_path, text):
    with pytest.raises(ConfigError, match="--config"):
        train_sft.parse_args(["--config", write_yaml(tmp_path, text)])


@pytest.mark.parametrize("text", ["- learning_rate\n- 1\n", "just a string\n"])
def test_yaml_not_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="--config"):
        train_sft.parse_args(["--config", write_yaml(tmp_path, text)])


def test_empty_yaml_is_all_defaults(tmp_path):
    assert train_sft.parse_args(["--config", write_yaml(tmp_path, "")]) == train_sft.parse_args([])


SFT_ARGV = [
    "--pretrain",
    "m",
    "--learning_rate",
    "3e-5",
    "--lr_scheduler",
    "linear",
    "--adam_betas",
    "0.85",
    "0.9",
    "--target_modules",
    "q_proj",
    "v_proj",
    "--lora_rank",
    "4",
    "--bf16",
    "--dataset",
    "a,b",
    "--dataset_probs",
    "0.7,0.3",
    "--input_template",
    "Q: {}\nA: ",
    "--use_wandb",
    "offline",
    "--packing_samples",
    "--pretrain_mode",
    "--save_path",
    "out",
    "--max_samples",
    "7",
]
RM_ARGV = [
    "--loss",
    "logexp",
    "--normalize_reward",
    "--value_head_prefix",
    "v_head",
    "--margin_key",
    "m",
    "--l2",
    "0.1",
]


@pytest.mark.parametrize(("command", "argv"), [(train_sft, SFT_ARGV), (train_rm, RM_ARGV)])
def test_flat_dict_round_trips_through_yaml(tmp_path, command, argv):
    """config.yaml holds the command's flags (with the part of each shared group it takes), so it parses back."""
    parse = command.parse_args
    original = parse(argv)
    assert original != parse([])  # the argv changes something, so the round trip is not trivially the defaults
    flat = to_flat_dict(*original, only=command.ONLY)
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(flat))
    reloaded = parse(["--config", str(path)])
    for name, group in original._asdict().items():
        assert getattr(reloaded, name) == group, name


def test_flat_dict_is_flat_and_complete():
    cfg = train_sft.parse_args(["--lora_rank", "4"])
    flat = to_flat_dict(*cfg, only=train_sft.ONLY)
    assert flat["lora_rank"] == 4
    assert flat["pretrain_mode"] is False
    assert all(not isinstance(v, dict) for v in flat.values())
    expected = sum(len(group_fields(type(group), train_sft.ONLY)) for group in cfg)
    assert len(flat) == expected  # no two groups give the command the same flag
    assert "label_key" not in flat  # a field of a group train_sft takes in part is not one of its flags


def test_yaml_number_for_string_flag(tmp_path):
    cfg = train_sft.parse_args(["--config", write_yaml(tmp_path, "dataset_probs: 1.0\n")])
    assert cfg.data.probabilities() == [1.0]


def test_trl_yaml_keys_point_to_our_flags(tmp_path):
    text = "output_dir: runs/x\nper_device_train_batch_size: 4\nlearning_rate: 1.0e-4\nnum_train_epochs: 2\n"
    with pytest.raises(ConfigError) as exc:
        train_sft.parse_args(["--config", write_yaml(tmp_path, text)])
    message = str(exc.value)
    assert "\n" not in message
    assert "output_dir (TRL's name for --save_path)" in message
    assert "per_device_train_batch_size (TRL's name for --micro_train_batch_size)" in message
    assert "num_train_epochs (TRL's name for --max_epochs)" in message
    assert "learning_rate" not in message  # the same name here: accepted


def test_trl_flags_on_the_command_line_get_the_same_hint(capsys):
    with pytest.raises(SystemExit) as exc:
        train_sft.parse_args(["--output_dir", "x", "--gradient-accumulation-steps", "4", "--learning_rat", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--output_dir (TRL's name for --save_path)" in err
    assert "--gradient_accumulation_steps (TRL's; here: --train_batch_size" in err
    assert "--learning_rat (did you mean --learning_rate?)" in err
    assert "Traceback" not in err


def test_hint_names_only_flags_the_command_has():
    from repulse.config.hints import flag_hint

    assert flag_hint("max_completion_length", {"generate_max_len"}) == "TRL's name for --generate_max_len"
    assert flag_hint("max_completion_length", {"max_new_tokens"}) == "TRL's name for --max_new_tokens"
    assert flag_hint("output_dir", {"output_path"}) == ""  # not ours under another name, and not close enough
    assert flag_hint("zzz", {"save_path"}) == ""


def test_a_group_limited_to_some_flags_offers_only_those(tmp_path):
    from repulse.cli import forecast_rare_outputs

    cfg = forecast_rare_outputs.parse_args(["--disable_progress_bar"])
    assert cfg.logging.disable_progress_bar is True and cfg.logging.use_wandb is None
    with pytest.raises(ConfigError, match=r"unknown keys: use_wandb"):
        forecast_rare_outputs.parse_args(["--config", write_yaml(tmp_path, "use_wandb: offline\n")])
    with pytest.raises(SystemExit):
        forecast_rare_outputs.parse_args(["--logging_steps", "3"])
