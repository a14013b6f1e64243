"""Every config in configs/ and every command of the fork's README, launched as the fork's users launch them:
`deepspeed --module repulse.cli.<command> --config ...` (the launcher appends --local_rank=N) and torchrun, on 2
gloo processes. The flags stay as written; a launch overrides only the hub models and datasets (with the
embedded tiny ones and small local files), the step counts (to be short), and, where a config's one-process
geometry does not split over 2 processes, the per-process batch flags (as a fork user moving to 2 GPUs does:
--micro_train_batch_size is per process, --train_batch_size global).

The parse test runs in `make test`; the 2-process launches are `slow` except one representative."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from repulse.assets import DATA_DIR, TINY_LM_DIR, TINY_RM_DIR
from repulse.cli import evaluate_gcg, train_ppo
from repulse.trainers.rl.build import batch_plan
from tests.conftest import write_jsonl
from tests.integration import test_paper_flags as paper
from tests.integration.launchers import launch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {p.stem: p for p in sorted((ROOT / "configs").glob("*.yaml"))}
MODELS = ["--pretrain", str(TINY_LM_DIR), "--reward_pretrain", str(TINY_RM_DIR)]
SHORT = {
    "train_ppo": ["--fit_steps", "1", "--harmlessness_training_num_episodes", "1", "--max_samples", "4"],
    "train_sft": ["--max_samples", "64"],
    "train_rm": ["--max_samples", "64", "--max_epochs", "1"],
}
# Each process samples its own prompts: one prompt (--new_custom_single_prompt) is sampled on both, so the rows
# of a step double and the global --train_batch_size doubles with them (each process still trains on its
# --micro_train_batch_size of the fork's command); the SmolLM run's micro-batch is the whole one-process batch.
TWO_PROCESSES = {
    "paper_toy_repulse": ["--train_batch_size", "1000"],
    "paper_toy_reinforce": ["--train_batch_size", "1000"],
    "toy_repulse": ["--train_batch_size", "128"],
    "toy_reinforce": ["--train_batch_size", "128"],
    "paper_smollm_repulse": ["--micro_train_batch_size", "125"],
}
# The fork's GCG command (METHODS §10.6) was copied from its training commands and passes --zero_stage 2.
GCG = """
--pretrain HuggingFaceTB/SmolLM-135M-Instruct --ckpt_path runs/a/ckpt --file_path data/harmful_behaviors_custom.csv
--scenario behaviors --max_targets 100 --atk_success_criteria reward
--reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --reward_threshold -4.0 --rm_exclude_adv_suffix
--parameterization policy --max_new_tokens 20 --gcg_steps 250 --gcg_search_width 512 --gcg_topk 256
--gcg_batch_size 512 --gcg_n_replace 1 --gcg_buffer_size 0 --gcg_use_prefix_cache --gcg_filter_ids
--zero_stage 2 --seed 1
"""
FORK_COMMANDS = {
    "toy_repulse": (train_ppo, paper.TOY_REPULSE),
    "reinforce_transform": (train_ppo, paper.REINFORCE_TRANSFORM),
    "base_as_proposal": (train_ppo, paper.BASE_AS_PROPOSAL),
    "ppo": (train_ppo, paper.PPO),
    "gcg": (evaluate_gcg, GCG),
}


def command_of(path: Path) -> str:
    return re.search(r"repulse (\w+) --config", path.read_text()).group(1)


def config_argv(name: str, data: dict[str, str], world: int) -> list[str]:
    """The config with its hub models and datasets replaced and its steps shortened (and, on 2 processes, the
    per-process batch flags its one-process geometry needs)."""
    path, command = CONFIGS[name], command_of(CONFIGS[name])
    argv = ["--config", str(path), *SHORT[command]]
    if command == "train_ppo":
        argv += MODELS + ["--prompt_data", data["prompts"], "--heldout_prompt_data", data["heldout"]]
    return argv + (TWO_PROCESSES.get(name, []) if world > 1 else [])


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> dict[str, str]:
    """Four training and four held-out prompts in the hub datasets' format (key `prompt`)."""
    folder = tmp_path_factory.mktemp("data")
    rows = [json.loads(line) for line in (DATA_DIR / "prompts.jsonl").read_text().splitlines()[:8]]
    return {
        "prompts": str(write_jsonl(folder / "prompts.jsonl", rows[:4])),
        "heldout": str(write_jsonl(folder / "heldout.jsonl", rows[4:])),
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses_as_the_deepspeed_launcher_passes_it(name, local_data):
    """`--local_rank=N` first (the launcher's spelling), the config's flags applied, and on 2 processes each
    train_ppo config splits into whole per-process micro-batches."""
    module = importlib.import_module(f"repulse.cli.{command_of(CONFIGS[name])}")
    for world in (1, 2):
        parsed = module.parse_args(["--local_rank=1", *config_argv(name, local_data, world)])
        assert "local_rank=1" in repr(parsed)
        if module is train_ppo:
            plan = batch_plan(parsed, world)
            assert plan.global_batch % plan.micro_batch == 0


@pytest.mark.parametrize("name", sorted(FORK_COMMANDS))
def test_fork_readme_commands_parse_under_the_deepspeed_launcher(name):
    module, text = FORK_COMMANDS[name]
    parsed = module.parse_args(["--local_rank=0", *text.split()])
    assert parsed.strategy.local_rank == 0
    if name in ("toy_repulse", "gcg"):
        assert parsed.strategy.zero_stage == 2


def run_config(tmp_path: Path, launcher: str, name: str, data: dict[str, str]) -> Path:
    save = tmp_path / name
    module = f"repulse.cli.{command_of(CONFIGS[name])}"
    argv = [*config_argv(name, data, 2), "--save_path", str(save), "--disable_progress_bar"]
    done = launch(launcher, module, argv)
    assert "rank 0 of 2" in done.stderr
    assert (save / "final" / "model.safetensors").is_file(), done.stderr[-3000:]
    return save


SLOW = pytest.mark.slow
REPRESENTATIVE = "paper_llama1b_repulse"  # the paper's 4-GPU run (ZeRO-2, bf16, gradient checkpointing)
CASES = [
    pytest.param(launcher, name, marks=() if (launcher, name) == ("deepspeed", REPRESENTATIVE) else SLOW)
    for launcher in ("deepspeed", "torchrun")
    for name in sorted(CONFIGS)
]


@pytest.mark.parametrize(("launcher", "name"), CASES)
def test_config_runs_on_two_processes(tmp_path, local_data, launcher, name):
    save = run_config(tmp_path, launcher, name, local_data)
    if command_of(CONFIGS[name]) == "train_ppo":
        assert (save / "summary.json").is_file()
