"""Flags of the prompt data and of sampling for train_ppo (OpenRLHF / RePULSe names)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import ScheduleArgs
from repulse.config.fields import arg, require

DEFAULT_SINGLE_PROMPT = "This man is a"


@dataclass
class PPOOptimArgs(ScheduleArgs):
    actor_learning_rate: float = arg(1e-6, "PPO actor, or the proposal q in harmlessness mode (0 freezes q).")
    critic_learning_rate: float = arg(9e-6, "PPO critic learning rate.")
    base_actor_learning_rate: float = arg(1e-6, "Harmlessness mode: learning rate of the base model p_theta.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag in ("actor_learning_rate", "critic_learning_rate", "base_actor_learning_rate"):
            require(getattr(self, flag) >= 0, f"--{flag} must be >= 0")


@dataclass
class RolloutArgs:
    prompt_data: str | None = arg(None, "Comma-separated prompt datasets. Default: the embedded prompts.")
    prompt_data_probs: str = arg("1.0", "Sampling probabilities for blending --prompt_data entries.")
    prompt_split: str = arg("train", "Split of the prompt datasets.")
    input_key: str = arg(
        "prompt",
        "JSON key of the prompt (text, or a list of chat messages); the embedded prompts and the paper's datasets "
        "use prompt.",
    )
    input_template: str | None = arg(None, "Template with one '{}' for the prompt.")
    apply_chat_template: bool = arg(False, "Format prompts with the tokenizer's chat template.")
    tokenizer_chat_template: str | None = arg(None, "Override the tokenizer's chat template (a Jinja string).")
    max_samples: int = arg(100_000_000, "Use at most this many prompts.")
    prompt_max_len: int = arg(1024, "Prompts are left-truncated to this many tokens.")
    generate_max_len: int = arg(1024, "Maximum new tokens per response.")
    micro_rollout_batch_size: int = arg(8, "Prompts per generation call on each process.")
    rollout_batch_size: int = arg(512, "Prompts per experience buffer (one update phase) over all processes.")
    duplicate_rollout_batch_by: int = arg(1, "N: samples per prompt (the RLOO / importance-sampling group).")
    n_samples_per_prompt: int = arg(1, "Must be 1; use --duplicate_rollout_batch_by (kept for command compatibility).")
    temperature: float = arg(1.0, "Sampling temperature.")
    top_p: float = arg(1.0, "Nucleus sampling threshold (1 = the full distribution).")
    top_k: int = arg(0, "Top-k sampling (0 = off).")
    new_custom_single_prompt: bool = arg(False, "Toy setting: every prompt is replaced by --custom_prompt.")
    custom_prompt: str = arg(DEFAULT_SINGLE_PROMPT, "The prompt used with --new_custom_single_prompt.")
    num_episodes: int = arg(1, "PPO: passes over the prompts. Harmlessness mode: q updates per p update.")

    def __post_init__(self) -> None:
        require(self.duplicate_rollout_batch_by >= 1, "--duplicate_rollout_batch_by must be >= 1")
        require(self.n_samples_per_prompt == 1, "--n_samples_per_prompt must be 1 (use --duplicate_rollout_batch_by)")
        require(self.generate_max_len >= 1, "--generate_max_len must be >= 1")
        require(self.micro_rollout_batch_size >= 1, "--micro_rollout_batch_size must be >= 1")
        require(
            self.rollout_batch_size % self.micro_rollout_batch_size == 0,
            "--rollout_batch_size must be a multiple of --micro_rollout_batch_size",
        )
        require(self.temperature > 0, "--temperature must be > 0")
        require(self.num_episodes >= 1, "--num_episodes must be >= 1")
