"""Rules that span several flag groups of train_ppo (the fork's asserts, as named checks raising ConfigError)."""

from __future__ import annotations

from repulse.config.common import PPOOptimArgs
from repulse.config.evaluation import EvalArgs
from repulse.config.fields import require
from repulse.config.harmlessness import HarmlessnessArgs
from repulse.config.ppo import PPOArgs, ProposalArgs
from repulse.config.rollout import RolloutArgs

HARMLESSNESS_PROPOSAL_LOSSES = ("ctl", "ctl_nosecondterm", "dpg")
NORMALISED_TWISTS = ("policy_psi_q_p_s_t", "policy_psi_q_p_s_1_to_t")


def check_harmlessness(
    rollout: RolloutArgs, ppo: PPOArgs, proposal: ProposalArgs, harm: HarmlessnessArgs, optim: PPOOptimArgs
) -> None:
    n = rollout.duplicate_rollout_batch_by
    if harm.harmlessness_training_loss_type != "reinforce" or harm.use_base_as_proposal:
        require(
            proposal.target_dist_beta is not None,
            "--target_dist_beta is needed for negative training (the beta of sigma ∝ p e^{beta r})",
        )
    if separate_proposal(harm):
        require(
            proposal.actor_loss_type in HARMLESSNESS_PROPOSAL_LOSSES,
            f"--do_harmlessness_training trains q with --actor_loss_type in {HARMLESSNESS_PROPOSAL_LOSSES}",
        )
        require(
            proposal.parameterization != "policy",
            "--do_harmlessness_training with a learned proposal needs a policy_psi_* or modulation_* "
            "--parameterization",
        )
        check_twist_pair(proposal)
    require(
        optim.micro_train_batch_size % n == 0,
        "--micro_train_batch_size must be a multiple of "
        "--duplicate_rollout_batch_by so every update sees whole prompt groups",
    )
    require(ppo.kl_target is None, "--kl_target (adaptive KL) is for PPO mode, not --do_harmlessness_training")


def separate_proposal(harm: HarmlessnessArgs) -> bool:
    """RePULSe draws its own proposal samples; REINFORCE and the base-as-proposal baseline do not."""
    return harm.harmlessness_training_loss_type != "reinforce" and not harm.use_base_as_proposal


def check_ppo_mode(rollout: RolloutArgs, ppo: PPOArgs, proposal: ProposalArgs, optim: PPOOptimArgs) -> None:
    n = rollout.duplicate_rollout_batch_by
    if proposal.actor_loss_type == "ppo":
        require(
            proposal.target_dist_beta is None,
            "--actor_loss_type ppo derives beta = 1/--init_kl_coef: leave --target_dist_beta unset",
        )
        require(proposal.parameterization == "policy", "--actor_loss_type ppo needs --parameterization policy")
    elif proposal.actor_loss_type == "reinforce":
        require(proposal.parameterization == "policy", "--actor_loss_type reinforce needs --parameterization policy")
    else:
        require(
            proposal.parameterization != "policy",
            f"--actor_loss_type {proposal.actor_loss_type} learns a twist: "
            "choose a policy_psi_* or modulation_* --parameterization",
        )
        check_twist_pair(proposal)
        require(
            not ppo.enable_ema or proposal.parameterization.startswith("policy"),
            "--enable_ema averages a full actor LM; a modulation_* proposal has none",
        )
        require(proposal.target_dist_beta is not None, "twist learning needs --target_dist_beta")
        require(n > 1, "twist learning needs --duplicate_rollout_batch_by > 1 (weights are normalised per group)")
        require(ppo.init_kl_coef == 0, "twist learning outside harmlessness mode needs --init_kl_coef 0")
        require(
            optim.micro_train_batch_size % n == 0,
            "--micro_train_batch_size must be a multiple of --duplicate_rollout_batch_by",
        )
    if ppo.reinforce_baseline_type == "expectation":
        require(n > 1, "--reinforce_baseline_type expectation (RLOO) needs --duplicate_rollout_batch_by > 1")


def check_twist_pair(proposal: ProposalArgs) -> None:
    """ctl_nosecondterm keeps only CTL's positive term, E_sigma[grad log psi_t] (docs/algorithms/twist.md). It is
    maximum likelihood of q on sigma-weighted samples only when log psi_t = log q - log p; with a raw logit or a
    modulation m nothing normalises psi, and the term just raises log psi on every sample without bound."""
    require(
        proposal.actor_loss_type != "ctl_nosecondterm" or proposal.parameterization in NORMALISED_TWISTS,
        f"--actor_loss_type ctl_nosecondterm needs --parameterization in {NORMALISED_TWISTS}, not "
        f"{proposal.parameterization}",
    )


def check_common(rollout: RolloutArgs, evaluation: EvalArgs) -> None:
    if evaluation.analytic_bad_word_calc:
        require(
            rollout.generate_max_len <= 3,
            "--analytic_bad_word_calc enumerates every continuation: use --generate_max_len <= 3",
        )


def check_train_ppo(
    rollout: RolloutArgs,
    ppo: PPOArgs,
    proposal: ProposalArgs,
    harm: HarmlessnessArgs,
    evaluation: EvalArgs,
    optim: PPOOptimArgs,
) -> None:
    check_common(rollout, evaluation)
    # One process: --train_batch_size sequences per optimizer step, in micro-batches of --micro_train_batch_size.
    optim.accumulation_steps(1)
    if harm.do_harmlessness_training:
        check_harmlessness(rollout, ppo, proposal, harm, optim)
    else:
        check_ppo_mode(rollout, ppo, proposal, optim)
