"""train_ppo flags that the mode tests do not reach: each run checks the effect the flag promises."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repulse.cli import train_ppo
from tests.conftest import write_jsonl
from tests.integration.test_train_ppo import GEOMETRY, HARMLESS, REWARD, run, steps

TOY = [
    "--new_custom_single_prompt",
    "--generate_max_len",
    "2",
    "--duplicate_rollout_batch_by",
    "8",
    "--micro_train_batch_size",
    "8",
    "--train_batch_size",
    "8",
    "--actor_loss_type",
    "reinforce",
    "--reinforce_baseline_type",
    "expectation",
    "--num_episodes",
    "2",
    "--seed",
    "4",
    "--disable_progress_bar",
]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("prompts")
    a = write_jsonl(folder / "a.jsonl", [{"prompt": "this man is a"}] * 4)
    b = write_jsonl(folder / "b.jsonl", [{"prompt": "the woman is"}] * 4)
    return a, b


def test_ppo_with_a_separate_critic_backbone_value_clip_and_adaptive_kl(tmp_path, tiny_model_dir, prompts):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompts[0]),
        "--input_key",
        "prompt",
        "--critic_pretrain",
        str(tiny_model_dir),
        "--value_clip",
        "0.2",
        "--kl_target",
        "0.05",
        "--kl_horizon",
        "100",
        "--gamma",
        "0.99",
        "--lambd",
        "0.9",
    )
    assert code == 0
    assert (save / "final_critic" / "config.json").exists()
    kls = [r["kl_coef"] for r in steps(save) if "kl_coef" in r]
    assert kls and len(set(kls)) > 1  # the adaptive controller moved


def test_ptx_loss_on_pretrain_data(tmp_path, tiny_model_dir, prompts):
    text = write_jsonl(tmp_path / "text.jsonl", [{"body": "this man is a good man ."}] * 8)
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompts[0]),
        "--input_key",
        "prompt",
        "--ptx_coef",
        "0.5",
        "--pretrain_data",
        str(text),
        "--pretrain_input_key",
        "body",
    )
    assert code == 0
    assert all(r["ptx_loss"] > 0 for r in steps(save))


def test_reward_cap_hardcoded_baseline_and_eval_mode_updates(tmp_path, tiny_model_dir, prompts):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        str(prompts[0]),
        "--input_key",
        "prompt",
        "--actor_loss_type",
        "reinforce",
        "--no_critic",
        "--reinforce_baseline_type",
        "hardcoded",
        "--reinforce_hardcoded_baseline",
        "0.25",
        "--reward_cap",
        "0.5",
        "--model_eval",
    )
    assert code == 0
    assert not (save / "final_critic").exists()
    assert all(r["reward_mean"] <= 0.5 + 1e-6 for r in steps(save))


def test_blended_prompt_data(tmp_path, tiny_model_dir, prompts):
    spec = f"{prompts[0]},{prompts[1]}"
    code, save = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        spec,
        "--prompt_data_probs",
        "0.5,0.5",
        "--input_key",
        "prompt",
        "--max_samples",
        "4",
    )
    assert code == 0 and len(steps(save)) == 2  # 4 blended prompts, 2 per step
    code, _ = run(
        tmp_path,
        tiny_model_dir,
        "--prompt_data",
        spec,
        "--prompt_data_probs",
        "0.5",
        "--input_key",
        "prompt",
        name="bad_probs",
    )
    assert code == 2


def test_alpha_annealing_reweighting_beta_and_episodes_per_loop(tmp_path, tiny_model_dir):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_loss_type",
        "neg_training",
        "--use_base_as_proposal",
        "--target_dist_beta",
        "-1",
        "--alpha",
        "0.5",
        "--start_alpha",
        "0.05",
        "--separate_reweighting_beta",
        "-0.5",
        "--harmlessness_training_episodes_per_loop",
        "2",
    )
    assert code == 0
    rows = steps(save)
    assert len(rows) == 3 * 2
    assert rows[0]["alpha"] == pytest.approx(0.05) and rows[-1]["alpha"] == pytest.approx(0.5)
    assert all(a["alpha"] < b["alpha"] for a, b in zip(rows, rows[1:]))


def test_neg_reinforce_with_a_hardcoded_negative_baseline(tmp_path, tiny_model_dir):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_loss_type",
        "neg_reinforce",
        "--target_dist_beta",
        "-1",
        "--alpha",
        "0.5",
        "--actor_loss_type",
        "ctl",
        "--parameterization",
        "policy_psi_q_p_s_t",
        "--neg_baseline_type",
        "hardcoded",
        "--neg_hardcoded_baseline",
        "-1",
    )
    assert code == 0 and (save / "final_proposal").exists()


def test_analytic_by_threshold_counts_low_reward_continuations(tmp_path, tiny_model_dir):
    code, save = run(
        tmp_path,
        tiny_model_dir,
        *HARMLESS,
        "--harmlessness_training_loss_type",
        "reinforce",
        "--analytic_bad_word_calc",
        "--analytic_by_threshold",
        "--threshold",
        "-5",
        "--generate_max_len",
        "1",
    )
    assert code == 0
    summary = json.loads((save / "summary.json").read_text())
    # One token: P(reward < -5) is the base model's probability of the words the toy reward calls bad.
    assert 0 < math.exp(summary["exact_log_p_bad_initial"]) < 1


def test_only_evaluate_on_neg_data(tmp_path, tiny_model_dir, capsys):
    neg = write_jsonl(tmp_path / "neg.jsonl", [{"prompt": "this man is a", "response": " jerk"}] * 3)
    code = train_ppo.main(
        [
            "--pretrain",
            str(tiny_model_dir),
            "--save_path",
            str(tmp_path / "eval"),
            *REWARD,
            *GEOMETRY,
            "--only_evaluate_on_neg_data",
            "--neg_data_load_path",
            str(neg),
        ]
    )
    assert code == 0
    assert not (tmp_path / "eval" / "final").exists()  # nothing trained
    assert "3" in capsys.readouterr().out + "".join(p.read_text() for p in (tmp_path / "eval").glob("*.json"))


def serve_embedded_rm(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "repulse.cli.serve_rm", "--port", str(port), "--max_wait_ms", "1"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def test_remote_reward_model_gives_the_local_rewards(tmp_path, monkeypatch):
    pytest.importorskip("uvicorn", reason="needs the [serve] extra")
    from tests.integration import test_serve_rm
    from tests.integration.helpers import free_port
    from tests.integration.test_serve_rm import wait_healthy

    # The server's start-up (import torch, load the model) can take long on a busy 2-core machine.
    monkeypatch.setattr(test_serve_rm, "STARTUP_TIMEOUT_S", 120)

    port = free_port()
    log = tmp_path / "server.log"
    server = serve_embedded_rm(port, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, log)
        remote = train_ppo.main(
            [*TOY, "--remote_rm_url", f"http://127.0.0.1:{port}", "--save_path", str(tmp_path / "remote")]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    local = train_ppo.main([*TOY, "--save_path", str(tmp_path / "local")])  # the embedded RM in process
    assert remote == 0 and local == 0
    remote_rows, local_rows = steps(tmp_path / "remote"), steps(tmp_path / "local")
    assert len(remote_rows) == len(local_rows) == 2
    for a, b in zip(remote_rows, local_rows):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-4)


def test_the_embedded_prompts_need_no_input_key(tmp_path):
    """`repulse train_ppo` with no flags reads the embedded prompts with the default --input_key (here on 4 of
    them, with short responses)."""
    save = tmp_path / "defaults"
    argv = ["--save_path", str(save), "--max_samples", "4", "--generate_max_len", "4", "--disable_progress_bar"]
    assert train_ppo.main(argv) == 0
    rows = steps(save)
    assert len(rows) == 1 and rows[0]["samples_used"] == 4


def test_help_of_the_rl_flags_names_no_other_command():
    import dataclasses
    import re

    from repulse.cli.__main__ import COMMANDS

    others = [c for c in COMMANDS if c != "train_ppo"] + ["train_ppo_ray"]
    leaks = [
        f"--{f.name}: {f.metadata['help']}"
        for group in train_ppo.GROUPS[2:]  # the model / LoRA groups are every training command's
        for f in dataclasses.fields(group)
        if any(re.search(rf"\b{c}\b", f.metadata.get("help", "")) for c in others)
    ]
    assert leaks == []


def test_responses_are_capped_at_the_models_positions(tmp_path, tiny_model_dir, capsys):
    """The test GPT-2 has 64 positions: --generate_max_len 100 is lowered (and said); a prompt filling them is an
    error naming --prompt_max_len."""
    code, save = run(tmp_path, tiny_model_dir, *TOY[:1], "--generate_max_len", "100", "--num_episodes", "1")
    err = capsys.readouterr().err
    assert code == 0 and "--generate_max_len 100 capped to" in err
    long_prompt = " ".join(["this man is a"] * 20)
    code, _ = run(tmp_path, tiny_model_dir, "--new_custom_single_prompt", "--custom_prompt", long_prompt, name="long")
    err = capsys.readouterr().err
    assert code == 2 and "--prompt_max_len 1024: a 80-token prompt fills the model's 64 positions" in err
