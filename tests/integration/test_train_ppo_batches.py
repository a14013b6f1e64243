"""--train_batch_size is the number of sequences per optimizer step (the fork's semantics): micro-batches of M
with --train_batch_size 4M train exactly as one micro-batch of 4M, for PPO (actor and critic) and RePULSe (p_theta
and q, whose loss reads the live p_theta, unchanged until the step's end); and it is not the same as four
optimizer steps of M. (With --sampling_target_updated_base q's target is p_theta after its step, which with
accumulation happens after the last micro-batch only, as in the fork: there the two differ by design.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repulse.cli import train_ppo
from tests.conftest import write_jsonl

COMMON = [
    "--reward_fn",
    "tests.integration.toy_reward:score",
    "--generate_max_len",
    "2",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--actor_learning_rate",
    "1e-2",
    "--critic_learning_rate",
    "1e-2",
    "--base_actor_learning_rate",
    "1e-2",
    "--seed",
    "5",
    "--micro_rollout_batch_size",
    "2",
    "--disable_progress_bar",
]
PPO = ["--rollout_batch_size", "2", "--duplicate_rollout_batch_by", "4", "--num_episodes", "2", "--max_epochs", "2"]
REPULSE = [
    "--do_harmlessness_training",
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
    "--reinforce_baseline_type",
    "expectation",
    "--rollout_batch_size",
    "4",
    "--duplicate_rollout_batch_by",
    "2",
    "--harmlessness_training_num_episodes",
    "2",
]
MODES = {
    # 2 prompts x 4 samples = 8 sequences per buffer: one optimizer step of 8, micro-batches of 2 or 8.
    "ppo": (PPO, 2, 8),
    # 4 prompts x 2 samples = 8 sequences (4 groups): micro-batches of one group or all four.
    "repulse": (REPULSE, 2, 8),
}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": p} for p in ("this man is a", "the woman is", "this man is so", "the man is very")]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def train(tmp_path: Path, model: Path, prompts: Path, flags: list[str], micro: int, total: int, name: str) -> Path:
    save = tmp_path / name
    sizes = ["--micro_train_batch_size", str(micro), "--train_batch_size", str(total)]
    argv = ["--pretrain", str(model), "--prompt_data", str(prompts), "--save_path", str(save), *COMMON, *flags]
    assert train_ppo.main([*argv, *sizes]) == 0
    return save


def weights(save: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(save.glob("final*/model.safetensors")):
        out.update({f"{file.parent.name}:{k}": v for k, v in load_file(str(file)).items()})
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a) ** 0.5


def rewards(save: Path) -> list[float]:
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return [r["reward_mean"] for r in rows if "reward_mean" in r]


@pytest.mark.parametrize("mode", list(MODES))
def test_accumulated_micro_batches_equal_one_batch(tmp_path, tiny_model_dir, prompts, mode):
    flags, micro, total = MODES[mode]
    accumulated = train(tmp_path, tiny_model_dir, prompts, flags, micro, total, "accumulated")
    whole = train(tmp_path, tiny_model_dir, prompts, flags, total, total, "whole")
    a, b = weights(accumulated), weights(whole)
    assert a.keys() == b.keys() and len({k.split(":")[0] for k in a}) >= 2  # two trained models compared
    assert rewards(accumulated) == pytest.approx(rewards(whole), abs=1e-6)
    # Micro-batches that each take an optimizer step train differently; the accumulated ones differ from the whole
    # batch by round-off only. (Not entry by entry: Adam turns the round-off of a near-zero gradient into a step of
    # about lr * g / eps, so a few single weights may differ by 1e-5 while the models agree.)
    c = weights(train(tmp_path, tiny_model_dir, prompts, flags, micro, micro, "stepped"))
    print(f"distance accumulated-whole {distance(a, b):.3g}, stepped-whole {distance(c, b):.3g}")
    assert distance(a, b) < 1e-3 * distance(c, b)
