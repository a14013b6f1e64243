"""Flags of PPO / REINFORCE and of the learned proposal (twist) in train_ppo (docs/algorithms/ppo.md, twist.md)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

ACTOR_LOSSES = ("ppo", "reinforce", "ctl", "ctl_nosecondterm", "sixo", "sixo_approxneg", "dpg")
PARAMETERIZATIONS = (
    "policy",
    "policy_psi_unnorm",
    "policy_psi_q_p_s_t",
    "policy_psi_q_p_s_1_to_t",
    "modulation_linear_head",
    "modulation_nn_head",
    "modulation_model",
)


@dataclass
class PPOArgs:
    critic_pretrain: str | None = arg(None, "Critic backbone (default: --pretrain); a new value head is added.")
    no_critic: bool = arg(False, "Train without a critic (forced for non-PPO actor losses).")
    eps_clip: float = arg(0.2, "PPO policy clip range.")
    value_clip: float = arg(0.2, "PPO value clip range.")
    gamma: float = arg(1.0, "GAE discount.")
    lambd: float = arg(0.95, "GAE lambda.")
    init_kl_coef: float = arg(0.01, "c: KL penalty coefficient to the reference model (per token, k1 estimator).")
    kl_target: float | None = arg(None, "Adaptive KL: target KL per sequence (unset: fixed --init_kl_coef).")
    kl_horizon: int = arg(10000, "Adaptive KL controller horizon.")
    reinforce_baseline_type: str | None = arg(None, "REINFORCE baseline: expectation (RLOO), hardcoded, or unset.")
    reinforce_hardcoded_baseline: float = arg(0.0, "Baseline value for --reinforce_baseline_type hardcoded.")
    enable_ema: bool = arg(False, "Keep an exponential moving average of the actor (saved as final_ema/).")
    ema_beta: float = arg(0.992, "EMA decay (the fork hard-codes 0.992).")
    ptx_coef: float = arg(0.05, "Weight of the pre-training (SFT) loss on --pretrain_data (PPO-ptx).")
    pretrain_data: str | None = arg(None, "Text data for the ptx loss (JSON key --pretrain_input_key).")
    pretrain_input_key: str = arg("text", "JSON key of the --pretrain_data text.")
    freezing_actor_steps: int = arg(-1, "Skip actor updates for the first N steps (critic warm-up).")
    model_eval: bool = arg(False, "Run update passes in eval mode (no dropout). Scoring always uses eval mode.")
    fit_steps: int = arg(1, "Repeat training this many times, evaluating after each (toy setting).")
    critic_loss_type: str = arg("mse", "Critic loss; only 'mse' (the clipped PPO value loss) exists, as in the fork.")
    advantage_estimator: str = arg("gae", "PPO advantages: 'gae' (REINFORCE uses --actor_loss_type reinforce).")
    shared_actorcritic: bool = arg(False, "Not supported (it raised in the reference code too); must stay off.")

    def __post_init__(self) -> None:
        require(self.eps_clip > 0, "--eps_clip must be > 0")
        require(0 <= self.gamma <= 1 and 0 <= self.lambd <= 1, "--gamma and --lambd must be in [0, 1]")
        require(self.init_kl_coef >= 0, "--init_kl_coef must be >= 0")
        require(
            self.reinforce_baseline_type in (None, "expectation", "hardcoded"),
            "--reinforce_baseline_type must be expectation, hardcoded or unset",
        )
        require(0 < self.ema_beta < 1, "--ema_beta must be in (0, 1)")
        require(self.fit_steps >= 1, "--fit_steps must be >= 1")
        require(
            self.critic_loss_type == "mse",
            "--critic_loss_type: only mse is implemented (the others raised in the reference code)",
        )
        require(
            self.advantage_estimator == "gae",
            "--advantage_estimator: only gae (use --actor_loss_type "
            "reinforce with --reinforce_baseline_type for REINFORCE/RLOO)",
        )
        require(not self.shared_actorcritic, "--shared_actorcritic is not supported")


@dataclass
class ProposalArgs:
    actor_loss_type: str = arg("ppo", f"Actor / proposal loss: one of {ACTOR_LOSSES}.")
    parameterization: str = arg(
        "policy",
        f"How the proposal is parameterised: one of {PARAMETERIZATIONS}. Attack evaluation takes policy models only.",
    )
    target_dist_beta: float | None = arg(
        None, "beta of the target sigma ∝ p e^{beta r} (beta < 0 targets bad outputs)."
    )
    additional_sd_divider: float = arg(1.0, "Modulation heads: initial weights are divided by this.")
    init_head_from_base: bool = arg(False, "Modulation heads: start from the base LM head (divided as above).")

    def __post_init__(self) -> None:
        require(self.actor_loss_type in ACTOR_LOSSES, f"--actor_loss_type must be one of {ACTOR_LOSSES}")
        require(self.parameterization in PARAMETERIZATIONS, f"--parameterization must be one of {PARAMETERIZATIONS}")
        require(self.additional_sd_divider > 0, "--additional_sd_divider must be > 0")

    @property
    def is_twist_loss(self) -> bool:
        return self.actor_loss_type not in ("ppo", "reinforce")
