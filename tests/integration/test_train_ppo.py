"""train_ppo end to end on a tiny random GPT-2 with a deterministic reward function: every mode runs, writes
its outputs, and moves the models it should (and only those)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repulse.cli import train_ppo
from tests.conftest import write_jsonl
from tests.integration.helpers import changed_and_unchanged, load_weights

REWARD = ["--reward_fn", "tests.integration.toy_reward:score"]
GEOMETRY = [
    "--duplicate_rollout_batch_by",
    "8",
    "--micro_train_batch_size",
    "8",
    "--train_batch_size",
    "8",
    "--rollout_batch_size",
    "2",
    "--micro_rollout_batch_size",
    "2",
    "--generate_max_len",
    "2",
    "--actor_learning_rate",
    "1e-2",
    "--critic_learning_rate",
    "1e-2",
    "--base_actor_learning_rate",
    "1e-2",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--disable_progress_bar",
    "--seed",
    "1",
]
HARMLESS = [
    "--do_harmlessness_training",
    "--reinforce_baseline_type",
    "expectation",
    "--new_custom_single_prompt",
    "--custom_prompt",
    "this man is a",
    "--harmlessness_training_num_episodes",
    "3",
]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    rows = [{"prompt": p} for p in ("this man is a", "the woman is", "this man is so", "the man is very")]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


@pytest.fixture(scope="module")
def bad_words_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("words") / "bad.txt"
    path.write_text("jerk\nfool\n")
    return path


def run(tmp_path: Path, model: Path, *flags: str, name: str = "run") -> tuple[int, Path]:
    save = tmp_path / name
    return train_ppo.main(["--pretrain", str(model), "--save_path", str(save), *REWARD, *GEOMETRY, *flags]), save


def steps(save: Path) -> list[dict]:
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward_mean" in r]


@pytest.mark.parametrize(
    "flags",
    [
        [
            "--harmlessness_training_loss_type",
            "neg_training",
            "--target_dist_beta",
            "-1",
            "--alpha",
            "0.5",
            "--actor_loss_type",
            "ctl",
            "--parameterization",
            "policy_psi_q_p_s_t",
            "--num_episodes",
            "2",
        ],
        [
            "--harmlessness_training_loss_type",
            "neg_training",
            "--target_dist_beta",
            "-1",
            "--alpha",
            "0.5",
            "--actor_loss_type",
            "dpg",
            "--parameterization",
            "policy_psi_q_p_s_t",
            "--sampling_target_updated_base",
            "--init_kl_coef",
            "0.1",
            "--anneal_target_dist_beta",
            "--start_target_dist_beta",
            "-0.1",
        ],
        [
            "--harmlessness_training_loss_type",
            "neg_training",
            "--use_base_as_proposal",
            "--target_dist_beta",
            "-1",
            "--alpha",
            "0.5",
            "--uniform_reweight",
        ],
        [
            "--harmlessness_training_loss_type",
            "reinforce",
            "--reward_transform",
            "minus_alpha_exp_beta_r",
            "--rew_trans_alpha",
            "1",
            "--rew_trans_beta",
            "-1",
            "--num_episodes",
            "2",
        ],
        [
            "--harmlessness_training_loss_type",
            "neg_reinforce",
            "--target_dist_beta",
            "-1",
            "--alpha",
            "0.5",
            "--actor_loss_type",
            "ctl_nosecondterm",
            "--parameterization",
            "policy_psi_q_p_s_1_to_t",
            "--neg_baseline_type",
            "expectation",
        ],
    ],
    ids=["repulse_ctl", "repulse_dpg_annealed", "base_as_proposal", "reinforce_transform", "neg_reinforce"],
)
def test_harmlessness_variants(tmp_path, tiny_model_dir, bad_words_file, flags):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        *flags,
        "--analytic_bad_word_calc",
        "--bad_words_file",
        str(bad_words_file),
    )
    assert code == 0
    summary = json.loads((save / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["exact_log_p_bad_initial"] < 0
    changed, unchanged = changed_and_unchanged(load_weights(tiny_model_dir), load_weights(save / "final"))
    assert changed and not [k for k in unchanged if "wpe" not in k]
    separate = "--actor_loss_type" in flags and "--use_base_as_proposal" not in flags
    assert (save / "final_proposal").exists() == separate
    rows = steps(save)
    assert all(r["samples_used"] > 0 for r in rows)
    if separate:
        assert rows[-1]["samples_used"] >= 3 * 2 * 8  # N from p and N from q per step


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--actor_loss_type", "reinforce", "--reinforce_baseline_type", "expectation", "--enable_ema"],
        ["--kl_target", "0.01", "--freezing_actor_steps", "1", "--max_epochs", "2"],
        [
            "--actor_loss_type",
            "ctl",
            "--parameterization",
            "policy_psi_q_p_s_t",
            "--target_dist_beta",
            "-1",
            "--init_kl_coef",
            "0",
        ],
        [
            "--actor_loss_type",
            "sixo_approxneg",
            "--parameterization",
            "policy_psi_q_p_s_t",
            "--target_dist_beta",
            "-1",
            "--init_kl_coef",
            "0",
        ],
    ],
    ids=["ppo", "reinforce_ema", "ppo_adaptive_kl", "twist_ctl", "twist_sixo_approxneg"],
)
def test_ppo_and_twist_modes(tmp_path, tiny_model_dir, prompt_file, flags):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompt_file),
        "--input_key",
        "prompt",
        "--num_episodes",
        "2",
        *flags,
    )
    assert code == 0
    assert len(steps(save)) == 4  # 4 prompts / 2 per step x 2 episodes
    assert (save / "final" / "model.safetensors").exists()
    if not flags:
        assert (save / "final_critic").exists()
    if "--enable_ema" in flags:
        assert (save / "final_ema").exists()


def test_ppo_raises_the_reward(tmp_path, tiny_model_dir, prompt_file):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompt_file),
        "--input_key",
        "prompt",
        "--num_episodes",
        "30",
        "--actor_loss_type",
        "reinforce",
        "--reinforce_baseline_type",
        "expectation",
        "--init_kl_coef",
        "0",
    )
    assert code == 0
    rows = steps(save)
    first = sum(r["reward_mean"] for r in rows[:10]) / 10
    last = sum(r["reward_mean"] for r in rows[-10:]) / 10
    assert last > first + 0.3


def test_save_negdata_and_evaluations(tmp_path, tiny_model_dir, prompt_file):
    neg = write_jsonl(tmp_path / "neg.jsonl", [{"prompt": "this man is a", "response": " jerk"}] * 2)
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_loss_type",
        "reinforce",
        "--save_negdata",
        "--save_negdata_threshold",
        "-5",
        "--evaluate_heldout_sampling",
        "--heldout_prompt_data",
        str(prompt_file),
        "--heldout_input_key",
        "prompt",
        "--evaluate_on_neg_data",
        "--neg_data_load_path",
        str(neg),
        "--threshold",
        "-5",
    )
    assert code == 0
    summary = json.loads((save / "summary.json").read_text())
    assert summary["heldout"]["n_samples"] == 4 * 8
    assert 0 <= summary["heldout"]["fraction_below_threshold"] <= 1
    assert summary["negative_data"]["n_sequences"] == 2
    for row in [json.loads(line) for line in (save / "negdata.jsonl").read_text().splitlines()]:
        assert row["reward"] < -5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--do_harmlessness_training", "--alpha", "1"], "--target_dist_beta is needed"),
        (["--actor_loss_type", "ctl"], "choose a policy_psi_*"),
        (["--target_dist_beta", "1"], "leave --target_dist_beta unset"),
        (["--parameterization", "modulation_model", "--actor_loss_type", "ctl_nosecondterm"], "nosecondterm needs"),
        (["--parameterization", "modulation_nn_head"], "--actor_loss_type ppo needs --parameterization policy"),
        (["--n_samples_per_prompt", "2"], "--n_samples_per_prompt must be 1"),
        (["--rm_type", "toy_rlhf"], "--rm_type must be one of"),
    ],
)
def test_invalid_combinations_are_one_line_errors(tmp_path, tiny_model_dir, capsys, flags, message):
    code, _ = run(tmp_path, tiny_model_dir, *flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
