"""No update from a non-finite value in train_ppo: a reward function that starts returning NaN, or a reward so
large that a loss overflows, stops the run before the update with one line naming what, the step and the last
checkpoint (no traceback), and every checkpoint written holds finite weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration import toy_reward
from tests.integration.test_train_ppo import HARMLESS, prompt_file, run  # noqa: F401

BROKEN = ["--reward_fn", "tests.integration.toy_reward:broken"]
REINFORCE = ["--actor_loss_type", "reinforce", "--reinforce_baseline_type", "expectation", "--init_kl_coef", "0"]
REPULSE = [
    *HARMLESS,
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
    "--save_steps_harmless",
    "1",
]


def checkpoint_weights(save: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in (save / "checkpoints").glob("global_step*/final*/model.safetensors"):
        out.update({f"{file.parent.parent.name}/{file.parent.name}:{k}": v for k, v in load_file(str(file)).items()})
    return out


@pytest.mark.parametrize(
    ("mode", "bad_from", "value", "message"),
    [
        # PPO-mode REINFORCE: one reward call per step; the 3rd step's rewards hold a NaN.
        ("reinforce", 3, float("nan"), "reward is nan for 1 of 16 entries at step 3"),
        # the loss overflows (a reward of -3e38 times a log-likelihood; the cap only bounds it above)
        ("reinforce", 3, -3e38, "actor loss is"),
        # RePULSe: p_theta's and q's samples are scored each step; call 3 = p_theta's samples of step 2
        ("repulse", 3, float("nan"), "reward is nan for 1 of 8 entries at step 2"),
        ("repulse", 3, -3e38, "p_theta loss is"),
    ],
    ids=["reinforce_nan_reward", "reinforce_overflow", "repulse_nan_reward", "repulse_overflow"],
)
def test_a_non_finite_step_stops_the_run_before_the_update(
    tmp_path,
    tiny_model_dir,
    prompt_file,  # noqa: F811
    capsys,
    monkeypatch,
    mode,
    bad_from,
    value,
    message,
):
    monkeypatch.setattr(toy_reward, "CALLS", {"n": 0, "bad_from": bad_from, "value": value})
    data = ["--prompt_data", str(prompt_file), "--input_key", "prompt", "--num_episodes", "2", "--save_steps", "1"]
    flags = [*data, *REINFORCE] if mode == "reinforce" else REPULSE
    code, save = run(tmp_path, tiny_model_dir, *flags, *BROKEN, "--max_ckpt_num", "9")
    err = capsys.readouterr().err
    good = 2 if mode == "reinforce" else 1  # the steps before the bad one
    assert code == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if "stopped before applying it" in x]
    assert len(line) == 1 and message in line[0], err[-2000:]
    assert line[0].endswith(str(save / "checkpoints" / f"global_step{good}"))
    assert sorted(p.name for p in (save / "checkpoints").iterdir()) == [f"global_step{s}" for s in range(1, good + 1)]
    weights = checkpoint_weights(save)
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert not (save / "final").exists()
