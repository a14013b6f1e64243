"""train_ppo with the modulated proposals q ∝ p e^m (`--parameterization modulation_*`): twist
learning on the frozen p_0 and RePULSe harmlessness training on the current p_theta run end to end, save the
head (and the modulation LM), and train what they should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.helpers import changed_and_unchanged, load_weights
from tests.integration.test_train_ppo import HARMLESS, bad_words_file, prompt_file, run, steps  # noqa: F401

MODULATIONS = ["modulation_linear_head", "modulation_nn_head", "modulation_model"]
TWIST = ["--target_dist_beta", "-1", "--init_kl_coef", "0", "--num_episodes", "1"]


def head(save: Path) -> dict:
    return load_file(str(save / "final_proposal" / "modulation_head.safetensors"))


def output_bias(weights: dict):
    """The bias of the head's output layer, which starts at 0."""
    return weights["linear.bias" if "linear.bias" in weights else "net.4.bias"]


def check_proposal_saved(save: Path, parameterization: str) -> None:
    info = json.loads((save / "final_proposal" / "modulation.json").read_text())
    assert info["parameterization"] == parameterization
    assert output_bias(head(save)).abs().sum() > 0  # the head trained
    assert (save / "final_proposal" / "modulation_lm" / "model.safetensors").exists() == (
        parameterization == "modulation_model"
    )


@pytest.mark.parametrize(
    ("parameterization", "loss"),
    [(p, "ctl") for p in MODULATIONS] + [("modulation_nn_head", "dpg"), ("modulation_linear_head", "sixo")],
)
def test_twist_learning_with_a_modulated_proposal(
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    bad_words_file,  # noqa: F811
    parameterization,
    loss,
):
    extra = ["--init_head_from_base", "--additional_sd_divider", "2"] if loss == "ctl" else []
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompt_file),
        "--input_key",
        "prompt",
        "--parameterization",
        parameterization,
        "--actor_loss_type",
        loss,
        *TWIST,
        *extra,
        "--analytic_bad_word_calc",
        "--bad_words_file",
        str(bad_words_file),
    )
    assert code == 0
    rows = steps(save)
    assert len(rows) == 2 and all("f_q" in r for r in rows)
    # ESS among the low-reward samples: at most their share (each one counts once at most)
    assert all(0 <= r["proposal_low_reward_ess_fraction"] <= r["proposal_low_reward_fraction"] <= 1 for r in rows)
    check_proposal_saved(save, parameterization)
    assert not (save / "final").exists()  # p_0 is frozen: the head is the only thing trained
    summary = json.loads((save / "summary.json").read_text())
    assert summary["exact_log_p_bad_initial"] < 0  # q's exact P(bad) is enumerable through its KV cache
    # q's exact diagnostics against its target sigma ∝ p_0 e^{beta r}
    assert summary["exact_kl_to_reference_final"] > 0 and summary["target_beta_final"] == -1
    assert 0 < summary["exact_proposal_ess_fraction_final"] <= 1 and summary["exact_kl_target_to_proposal_final"] > 0
    if parameterization == "modulation_linear_head" and extra:
        lm_head = load_weights(tiny_model_dir)["transformer.wte.weight"]
        assert not head(save)["linear.weight"].equal(lm_head / 2)


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_harmlessness_training_with_a_modulated_proposal(tmp_path, tiny_model_dir, parameterization):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_num_episodes",
        "2",
        "--harmlessness_training_loss_type",
        "neg_training",
        "--target_dist_beta",
        "-1",
        "--alpha",
        "0.5",
        "--actor_loss_type",
        "ctl",
        "--parameterization",
        parameterization,
    )
    assert code == 0
    rows = steps(save)
    assert len(rows) == 2 and all("proposal_loss" in r and "f_q" in r for r in rows)
    assert rows[-1]["samples_used"] >= 2 * 2 * 8  # N from p_theta and N from q per step
    changed, _ = changed_and_unchanged(load_weights(tiny_model_dir), load_weights(save / "final"))
    assert changed  # p_theta trained; q modulated the current p_theta
    check_proposal_saved(save, parameterization)
