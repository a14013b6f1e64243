"""Flags of the reward source and of how the reward becomes a potential (docs/algorithms/harmlessness.md).

The reward-model flags (--reward_pretrain, --value_head_prefix, --normalize_reward) are declared here once; the
commands that score with, serve or train a reward model take them from this group (`only=`).
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

RM_TYPES = ("rlhf", "indicator_below_threshold", "exp_beta_toxicity_class_logprob")
REWARD_TRANSFORMS = ("minus_alpha_exp_beta_r", "minus_alpha_ind")


@dataclass
class RewardArgs:
    reward_pretrain: str | None = arg(
        None,
        "Reward model folder (a sequence-regression model in Hugging Face format) or hub name. Default: the "
        "embedded tiny RM.",
        roles={
            "batch_inference": "Reward model folder or hub name. --eval_task rm: the scorer (default: the embedded "
            "tiny RM); generate: keep the best of --best_of_n by reward and write the reward.",
        },
    )
    remote_rm_url: str | None = arg(
        None, "URL of a reward-model server speaking OpenRLHF's HTTP reward protocol, instead of a local model."
    )
    reward_fn: str | None = arg(None, "Python reward function 'module:function' taking (prompts, responses) lists.")
    value_head_prefix: str = arg(
        "score", "Name of the reward head module (Hugging Face uses 'score'); a trained reward model saves it so."
    )
    normalize_reward: bool = arg(
        False,
        "Reward normalisation.",
        roles={
            "train_rm": "Store the mean and std of the trained model's rewards on the training pairs in its config: "
            "every scorer of the model then applies (r - mean) / std.",
            "train_ppo": "Insist on the reward model's stored mean/std (an error when its config has none). Stored "
            "statistics apply with or without the flag.",
            "serve_rm": "Insist on the reward model's stored mean/std (an error when its config has none). Stored "
            "statistics apply with or without the flag, as in training.",
            "batch_inference": "Standardize the written rewards over the whole file (z-scores).",
        },
    )
    rm_max_len: int | None = arg(
        None,
        "Most tokens of each scored text (prompt + response + EOS); a longer text keeps its first tokens, as "
        "reward models are trained. Default: the reward model's positions.",
    )
    rm_type: str = arg("rlhf", f"How the score becomes a reward/potential: one of {RM_TYPES}.")
    threshold: float = arg(-5.0, "Reward below which an output counts as bad (indicator rm_type, evaluation).")
    reward_cap: float = arg(10000.0, "rm_type rlhf: rewards are capped at this value.")
    reward_transform: str | None = arg(None, f"Baseline reward transformation: one of {REWARD_TRANSFORMS}.")
    rew_trans_alpha: float | None = arg(None, "alpha of the reward transform (default: --alpha).")
    rew_trans_beta: float | None = arg(None, "beta of the reward transform (default: --target_dist_beta).")

    def __post_init__(self) -> None:
        require(bool(self.value_head_prefix), "--value_head_prefix must not be empty")
        require(self.rm_max_len is None or self.rm_max_len >= 1, f"--rm_max_len must be >= 1, got {self.rm_max_len}")
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
