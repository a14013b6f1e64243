"""Flags of train_ppo's prompts and rollouts (OpenRLHF / RePULSe names): which prompts, how many, how sampled."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import PromptArgs
from repulse.config.fields import arg, require
from repulse.config.sampling import SamplingArgs

DEFAULT_SINGLE_PROMPT = "This man is a"


@dataclass
class RolloutArgs(PromptArgs, SamplingArgs):
    prompt_data: str | None = arg(None, "Comma-separated prompt datasets. Default: the embedded prompts.")
    prompt_data_probs: str = arg("1.0", "Sampling probabilities for blending --prompt_data entries.")
    prompt_split: str = arg("train", "Split of the prompt datasets.")
    prompt_max_len: int = arg(1024, "Prompts are left-truncated to this many tokens.")
    generate_max_len: int = arg(1024, "Maximum new tokens per response.")
    micro_rollout_batch_size: int = arg(8, "Prompts per generation call on each process.")
    rollout_batch_size: int = arg(512, "Prompts per experience buffer (one update phase) over all processes.")
    duplicate_rollout_batch_by: int = arg(1, "N: samples per prompt (the RLOO / importance-sampling group).")
    n_samples_per_prompt: int = arg(1, "Must be 1; use --duplicate_rollout_batch_by (kept for command compatibility).")
    new_custom_single_prompt: bool = arg(False, "Toy setting: every prompt is replaced by --custom_prompt.")
    custom_prompt: str = arg(DEFAULT_SINGLE_PROMPT, "The prompt used with --new_custom_single_prompt.")
    num_episodes: int = arg(1, "PPO: passes over the prompts. Harmlessness mode: q updates per p update.")

    def __post_init__(self) -> None:
        PromptArgs.__post_init__(self)
        SamplingArgs.__post_init__(self)
        require(self.duplicate_rollout_batch_by >= 1, "--duplicate_rollout_batch_by must be >= 1")
        require(self.n_samples_per_prompt == 1, "--n_samples_per_prompt must be 1 (use --duplicate_rollout_batch_by)")
        require(self.generate_max_len >= 1, "--generate_max_len must be >= 1")
        require(self.micro_rollout_batch_size >= 1, "--micro_rollout_batch_size must be >= 1")
        require(
            self.rollout_batch_size % self.micro_rollout_batch_size == 0,
            "--rollout_batch_size must be a multiple of --micro_rollout_batch_size",
        )
        require(self.num_episodes >= 1, "--num_episodes must be >= 1")
