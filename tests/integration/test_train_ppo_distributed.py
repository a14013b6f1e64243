"""train_ppo on 2 gloo processes under torchrun equals one process with the same global batch: each rank samples
its own share of a step's prompts (drawing what one process draws for them), the strategy reduces the
gradients of every trained model, and the exact P(bad) per fit step and the final weights agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repulse.cli import train_ppo
from repulse.config.rollout import DEFAULT_SINGLE_PROMPT
from tests.conftest import write_jsonl
from tests.integration.helpers import changed_and_unchanged, load_weights, run_torchrun
from tests.integration.launchers import launch

# The demo's RePULSe toy (embedded tiny LM and reward model, "This man is a" + 2 tokens), 2 fit steps, two q
# updates per step, 4 prompts x 8 samples per step (2 per rank on 2 processes), one optimizer step of 32 rows in
# micro-batches of 8 (accumulated over 4 on one process, over 2 on each of 2); the samples of p and q scored below 0
# recorded (--save_negdata).
TOY = [
    "--config",
    "configs/toy_repulse.yaml",
    "--seed",
    "1",
    "--fit_steps",
    "2",
    "--harmlessness_training_num_episodes",
    "2",
    "--num_episodes",
    "2",
    "--duplicate_rollout_batch_by",
    "8",
    "--rollout_batch_size",
    "4",
    "--micro_rollout_batch_size",
    "1",
    "--micro_train_batch_size",
    "8",
    "--train_batch_size",
    "32",
    "--save_negdata",
    "--save_negdata_threshold",
    "0",
]


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory) -> Path:
    """The toy's prompt 4 times: one process samples the 4 groups, each of two processes 2."""
    rows = [{"prompt": DEFAULT_SINGLE_PROMPT}] * 4
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def toy_argv(prompts: Path, save: Path, *extra: str) -> list[str]:
    return [
        *TOY,
        "--new_custom_single_prompt",
        "false",
        "--prompt_data",
        str(prompts),
        "--save_path",
        str(save),
        *extra,
    ]


def evaluations(save: Path) -> list[float]:
    return [e["exact_log_p_bad"] for e in json.loads((save / "evaluations.json").read_text())]


def step_rows(save: Path) -> list[dict]:
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward_mean" in r]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, toy_prompts) -> Path:
    save = tmp_path_factory.mktemp("one") / "run"
    assert train_ppo.main(toy_argv(toy_prompts, save)) == 0
    return save


def negdata(save: Path) -> list[dict]:
    return [json.loads(line) for line in (save / "negdata.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, two: Path, folders: tuple[str, ...]) -> None:
    assert evaluations(two) == pytest.approx(evaluations(one), abs=1e-5)
    # every rank's negative samples, in rank order: the one-process file (rewards within float noise)
    expected, got = negdata(one), negdata(two)
    assert len(expected) > 8 and [(r["prompt"], r["response"]) for r in got] == [
        (r["prompt"], r["response"]) for r in expected
    ]
    assert [r["reward"] for r in got] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    assert len(evaluations(one)) == 3  # before training and after each fit step
    ref, got = step_rows(one), step_rows(two)
    assert [r["samples_used"] for r in got] == [r["samples_used"] for r in ref]
    for key in ("reward_mean", "proposal_reward_mean", "base_loss", "proposal_loss"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-6), key
    for folder in folders:
        a, b = load_weights(one / folder), load_weights(two / folder)
        assert a.keys() == b.keys()
        for key in a:
            expected, got = without_key_bias(key, a[key]), without_key_bias(key, b[key])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{folder}: {key}")


def without_key_bias(name: str, weight: torch.Tensor) -> torch.Tensor:
    """GPT-2's fused query/key/value bias without its key third: softmax is shift-invariant, so the key bias has
    an analytically zero gradient, and Adam turns float summation noise there (which differs with the number of
    micro-batches summed) into updates of ~1e-5. Its query and value thirds are compared."""
    if not name.endswith("attn.c_attn.bias"):
        return weight
    third = weight.shape[0] // 3
    return torch.cat([weight[:third], weight[2 * third :]])


def test_repulse_ddp_two_processes_equal_one(tmp_path, toy_prompts, one_process):
    save = tmp_path / "two"
    done = run_torchrun("repulse.cli.train_ppo", toy_argv(toy_prompts, save, "--strategy", "ddp"))
    assert "strategy: torch DDP, rank 0 of 2" in done.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))


@pytest.mark.slow
def test_repulse_ddp_resumed_equals_one_process(tmp_path, toy_prompts, one_process):
    """Stopped after step 2 of 4 (checkpoints every 2 steps), resumed on 2 processes: the same run."""
    save = tmp_path / "two"
    argv = toy_argv(toy_prompts, save, "--strategy", "ddp", "--save_steps_harmless", "2")
    stopped = launch("torchrun", "tests.integration.interrupt", ["2", "repulse.cli.train_ppo", *argv], ok=False)
    assert stopped.returncode != 0 and not (save / "final").exists(), stopped.stderr[-3000:]
    assert sorted(p.name for p in (save / "checkpoints").iterdir()) == ["global_step2"]
    resumed = launch("torchrun", "repulse.cli.train_ppo", [*argv, "--load_checkpoint"])
    assert f"resumed from {save / 'checkpoints' / 'global_step2'} (step 2)" in resumed.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))


@pytest.mark.parametrize("mode", ["repulse", pytest.param("ppo", marks=pytest.mark.slow)])
def test_ddp_reduces_gradients_once_per_optimizer_step(tmp_path, toy_prompts, tiny_model_dir, four_prompts, mode):
    """Micro-batches before a step's last run forward and backward inside DDP's no_sync (DDP decides at the
    forward): each gradient bucket of each trained model is all-reduced once per optimizer step, not once per
    micro-batch (2 per step on each rank here)."""
    counts = tmp_path / "reductions.json"
    if mode == "repulse":
        argv = toy_argv(toy_prompts, tmp_path / "run", "--strategy", "ddp", "--fit_steps", "1")
    else:
        argv = ["--pretrain", str(tiny_model_dir), "--prompt_data", str(four_prompts), *GEOMETRY]
        argv += ["--micro_train_batch_size", "2", "--strategy", "ddp", "--save_path", str(tmp_path / "run")]
    run_torchrun("tests.integration.count_reductions", [str(counts), "repulse.cli.train_ppo", *argv])
    steps = json.loads(counts.read_text())
    assert steps and all(buckets > 0 for _, buckets in steps), steps
    assert [calls for calls, _ in steps] == [buckets for _, buckets in steps], steps


SHARDED = {
    "zero2": ("deepspeed", ["--zero_stage", "2"], "DeepSpeed ZeRO-2, rank 0 of 2", "deepspeed"),
    "zero3": ("deepspeed", ["--zero_stage", "3"], "DeepSpeed ZeRO-3, rank 0 of 2", "deepspeed"),
    "fsdp2": ("torchrun", ["--strategy", "fsdp2"], "FSDP2, rank 0 of 2", "dcp"),
}


@pytest.mark.parametrize(
    "name", [pytest.param("zero2", marks=pytest.mark.slow), "zero3", pytest.param("fsdp2", marks=pytest.mark.slow)]
)
def test_repulse_sharded_two_processes_equal_one(tmp_path, toy_prompts, one_process, name):
    """One engine (or FSDP2 module) per trained model (p_theta, q), p_0 sharded too, sampling in lock-step;
    stopped after step 2 (ZeRO: under the fork's deepspeed launcher) and resumed under torchrun from the
    strategy's own shards."""
    launcher, flags, announced, shards = SHARDED[name]
    save = tmp_path / "two"
    argv = toy_argv(toy_prompts, save, *flags, "--save_steps_harmless", "2")
    stopped = launch(launcher, "tests.integration.interrupt", ["2", "repulse.cli.train_ppo", *argv], ok=False)
    assert announced in stopped.stderr
    assert (save / "checkpoints" / "global_step2" / "proposal" / shards).is_dir(), stopped.stderr[-3000:]
    resumed = launch("torchrun", "repulse.cli.train_ppo", [*argv, "--load_checkpoint"])
    assert f"resumed from {save / 'checkpoints' / 'global_step2'} (step 2)" in resumed.stderr
    assert_same_run(one_process, save, ("final", "final_proposal"))


MODULATED = ["--parameterization", "modulation_linear_head", "--init_head_from_base"]


@pytest.fixture(scope="module")
def modulated_one_process(tmp_path_factory, toy_prompts) -> Path:
    save = tmp_path_factory.mktemp("modulated") / "run"
    assert train_ppo.main(toy_argv(toy_prompts, save, *MODULATED)) == 0
    return save


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero3", "fsdp2"])
def test_modulated_proposal_on_sharded_weights_equals_one_process(tmp_path, toy_prompts, modulated_one_process, name):
    """q = p_theta e^m on a p_theta each rank holds a shard of: the head is shaped and initialised from the
    gathered output layer, q's forward runs p_theta's in lock-step, and the head is saved from its gathered
    weights."""
    launcher, flags, announced, _ = SHARDED[name]
    save = tmp_path / "two"
    done = launch(launcher, "repulse.cli.train_ppo", toy_argv(toy_prompts, save, *flags, *MODULATED))
    assert announced in done.stderr
    assert_same_run(modulated_one_process, save, ("final",))
    head = "final_proposal/modulation_head.safetensors"
    a, b = load_file(str(modulated_one_process / head)), load_file(str(save / head))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def four_prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": p} for p in ("this man is a", "the woman is", "this man is so", "the man is very")]
    return write_jsonl(tmp_path_factory.mktemp("four") / "prompts.jsonl", rows)


GEOMETRY = [
    "--reward_fn",
    "tests.integration.toy_reward:score",
    "--duplicate_rollout_batch_by",
    "4",
    "--micro_train_batch_size",
    "4",
    "--train_batch_size",
    "8",
    "--rollout_batch_size",
    "2",
    "--micro_rollout_batch_size",
    "1",
    "--generate_max_len",
    "3",
    "--actor_learning_rate",
    "1e-2",
    "--critic_learning_rate",
    "1e-2",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--disable_progress_bar",
    "--seed",
    "1",
]
MODES = {
    "reinforce_rloo": ["--actor_loss_type", "reinforce", "--reinforce_baseline_type", "expectation"],
    "twist_ctl": ["--actor_loss_type", "ctl", "--parameterization", "policy_psi_q_p_s_t", "--target_dist_beta", "-1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_group_wise_modes_two_processes_equal_one(tmp_path, tiny_model_dir, four_prompts, mode):
    """REINFORCE with RLOO baselines and twist learning (CTL) are group-wise, so 2 processes equal 1."""
    common = ["--pretrain", str(tiny_model_dir), "--prompt_data", str(four_prompts), *GEOMETRY, *MODES[mode]]
    common += ["--init_kl_coef", "0"]
    assert train_ppo.main([*common, "--save_path", str(tmp_path / "one")]) == 0
    run_torchrun("repulse.cli.train_ppo", [*common, "--save_path", str(tmp_path / "two"), "--strategy", "ddp"])
    ref, got = step_rows(tmp_path / "one"), step_rows(tmp_path / "two")
    assert [r["reward_mean"] for r in got] == pytest.approx([r["reward_mean"] for r in ref], abs=1e-6)
    a, b = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)


PPO_STRATEGIES = {
    "ddp": ["--strategy", "ddp"],
    "zero3": ["--zero_stage", "3"],
    "fsdp2": ["--strategy", "fsdp2"],
}


@pytest.fixture(scope="module")
def ppo_argv(tiny_model_dir, four_prompts) -> list[str]:
    """PPO with a critic, the reference KL and an EMA actor; the held-out sampling after training."""
    argv = ["--pretrain", str(tiny_model_dir), "--prompt_data", str(four_prompts), *GEOMETRY, "--init_kl_coef", "0.01"]
    heldout = ["--evaluate_heldout_sampling", "--heldout_prompt_data", str(four_prompts), "--sampling_iters", "2"]
    return [*argv, *heldout, "--enable_ema", "--ema_beta", "0.5"]


@pytest.fixture(scope="module")
def ppo_one_process(tmp_path_factory, ppo_argv) -> Path:
    save = tmp_path_factory.mktemp("ppo") / "one"
    assert train_ppo.main([*ppo_argv, "--save_path", str(save)]) == 0
    return save


@pytest.mark.parametrize(
    "name", [pytest.param("ddp", marks=pytest.mark.slow), "zero3", pytest.param("fsdp2", marks=pytest.mark.slow)]
)
def test_ppo_with_critic_two_processes_equal_one(tmp_path, tiny_model_dir, ppo_argv, ppo_one_process, name):
    """GAE advantages whitened with the whole step's mean and variance (every rank's valid tokens), the EMA
    actor kept from the gathered weights where they are sharded: the same run as one process. The held-out
    sampling after training runs (in lock-step where sharded), and the outputs are rank 0's."""
    save = tmp_path / "two"
    run_torchrun("repulse.cli.train_ppo", [*ppo_argv, *PPO_STRATEGIES[name], "--save_path", str(save)])
    assert json.loads((save / "summary.json").read_text())["heldout"]["n_samples"] == 2 * 4 * 4
    ref, got = step_rows(ppo_one_process), step_rows(save)
    assert len(got) == 2
    for key in ("reward_mean", "policy_loss", "value_loss", "actor_grad_norm", "critic_grad_norm"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-6), key
    # Adam at lr 1e-2 turns the float noise of gradient entries near zero (summed in another order on 2
    # processes) into steps of up to ~1e-4; whitening per rank moves the weights by ~1e-2.
    initial = load_weights(tiny_model_dir)
    for folder in ("final", "final_critic", "final_ema"):
        a, b = load_weights(ppo_one_process / folder), load_weights(save / folder)
        assert a.keys() == b.keys()
        for key in a:
            expected, got = without_key_bias(key, a[key]), without_key_bias(key, b[key])
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-4, msg=f"{folder}: {key}")
        changed, _ = changed_and_unchanged(initial, b)
        assert changed, folder
