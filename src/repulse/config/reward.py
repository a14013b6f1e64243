"""Flags of the reward source and of how the reward becomes a potential (METHODS §3)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

RM_TYPES = ("rlhf", "indicator_below_threshold", "exp_beta_toxicity_class_logprob")
REWARD_TRANSFORMS = ("minus_alpha_exp_beta_r", "minus_alpha_ind")


@dataclass
class RewardArgs:
    reward_pretrain: str | None = arg(None, "Reward model folder or hub name. Default: the embedded tiny RM.")
    remote_rm_url: str | None = arg(
        None, "URL of a remote reward model server (OpenRLHF's HTTP reward protocol) instead of a local model."
    )
    reward_fn: str | None = arg(None, "Python reward function 'module:function' taking (prompts, responses) lists.")
    value_head_prefix: str = arg("score", "Reward head module name of a local reward model.")
    normalize_reward: bool = arg(
        False,
        "Require the reward model config to hold mean/std (stored statistics are "
        "always applied; this flag makes their absence an error).",
    )
    rm_max_len: int | None = arg(None, "Truncate reward-model inputs to this many tokens (keeps the end).")
    rm_type: str = arg("rlhf", f"How the score becomes a reward/potential: one of {RM_TYPES}.")
    threshold: float = arg(-5.0, "Reward below which an output counts as bad (indicator rm_type, evaluation).")
    reward_cap: float = arg(10000.0, "rm_type rlhf: rewards are capped at this value.")
    reward_transform: str | None = arg(None, f"Baseline reward transformation: one of {REWARD_TRANSFORMS}.")
    rew_trans_alpha: float | None = arg(None, "alpha of the reward transform (default: --alpha).")
    rew_trans_beta: float | None = arg(None, "beta of the reward transform (default: --target_dist_beta).")

    def __post_init__(self) -> None:
        sources = [s for s in (self.remote_rm_url, self.reward_fn) if s]
        require(len(sources) <= 1, "give at most one of --remote_rm_url and --reward_fn")
        require(
            not (sources and self.reward_pretrain),
            "--reward_pretrain cannot be combined with --remote_rm_url or --reward_fn",
        )
        require(self.rm_type in RM_TYPES, f"--rm_type must be one of {RM_TYPES}, got {self.rm_type!r}")
        if self.reward_transform is not None:
            require(
                self.reward_transform in REWARD_TRANSFORMS, f"--reward_transform must be one of {REWARD_TRANSFORMS}"
            )
        if self.reward_fn is not None:
            require(":" in self.reward_fn, "--reward_fn must look like 'package.module:function'")
