"""The proposal q's loss on a micro-batch of its samples: twist learning toward sigma ∝ p e^{beta r},
shared by twist learning (p = frozen p_0) and harmlessness training (p = the current p_theta).

The loss needs log p on q's samples. The caller passes them when a pass already made them (p_0's at experience
time in twist learning; p_theta's gradient pass for the negative term in harmlessness training); otherwise the
base model runs here, without gradient and in eval mode. A modulated q ∝ p e^m computes log p in its own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repulse.losses.lm import token_log_probs
from repulse.losses.proposal import PROPOSAL_LOSSES, dpg_loss, sixo_loss
from repulse.losses.weights import effective_sample_size
from repulse.models.proposal import (
    is_cumulative,
    is_modulation,
    log_psi_all_tokens,
    log_psi_from_modulation,
    log_psi_from_token_logps,
)
from repulse.rl.experience import Experience
from repulse.rl.rollout import Rollout, response_logits, response_modulation


@dataclass(frozen=True)
class ProposalLoss:
    """`--actor_loss_type` (ctl, ctl_nosecondterm, dpg, sixo, sixo_approxneg), `--parameterization`, N."""

    loss_type: str
    parameterization: str
    group_size: int

    @property
    def needs_negatives(self) -> bool:
        """SIXO classifies q's samples against fresh samples from the base model."""
        return self.loss_type == "sixo"


@torch.no_grad()
def base_logits(base_model, rollout: Rollout) -> torch.Tensor:
    """The base model's logits on the response positions, no gradient, eval mode (restored after)."""
    was_training = base_model.training
    base_model.eval()
    logits = response_logits(base_model, rollout)
    base_model.train(was_training)
    return logits


def twist(
    spec: ProposalLoss, q_model, rollout: Rollout, base_model, base_logps: torch.Tensor | None, all_tokens: bool
):
    """(log psi [B, T] with gradient through q, log psi of every next token [B, T, V] or None, log p [B, T] on the
    sampled tokens, log p of every token [B, T, V] or None)."""
    if is_modulation(spec.parameterization):
        # q ∝ p e^m carries its own base, so one pass gives log p and m: log psi_t = m(s_t), all tokens: m.
        full_base, modulation = response_modulation(q_model, rollout)
        log_psi = log_psi_from_modulation(modulation, rollout.actions, rollout.action_mask)
        taken = token_log_probs(full_base, rollout.actions) * rollout.action_mask
        return log_psi, modulation if all_tokens else None, taken, full_base if all_tokens else None
    q_logits = response_logits(q_model, rollout)
    full_base = base_logits(base_model, rollout) if base_logps is None or all_tokens else None
    if base_logps is None:
        base_logps = token_log_probs(full_base, rollout.actions) * rollout.action_mask
    q_logps = token_log_probs(q_logits, rollout.actions)
    raw = None
    if spec.parameterization == "policy_psi_unnorm":
        raw = q_logits.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    log_psi = log_psi_from_token_logps(q_logps, base_logps, rollout.action_mask, spec.parameterization, raw)
    log_psi_all = None
    if all_tokens:
        log_psi_all = log_psi_all_tokens(
            q_logits, full_base, spec.parameterization, rollout.actions, rollout.action_mask
        )
    return log_psi, log_psi_all, base_logps.detach(), full_base


def proposal_loss(
    spec: ProposalLoss,
    q_model,
    neg: Experience,
    base_model,
    base_logps: torch.Tensor | None = None,
    negatives: Rollout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q's loss on the micro-batch `neg` of its samples, the log p [B, T] it used, detached).

    base_logps [B, T]: log p on neg's tokens from a pass already made (None: computed here); negatives: fresh
    samples of the base model for the same prompts (sixo only).
    """
    roll = neg.rollout
    dpg = spec.loss_type == "dpg"
    log_psi, log_psi_all, base_logps, full_base = twist(spec, q_model, roll, base_model, base_logps, all_tokens=dpg)
    common = (base_logps, neg.behaviour_logps, neg.log_phi, roll.action_mask, spec.group_size)
    if spec.loss_type == "sixo":
        if negatives is None:
            raise ValueError("sixo needs fresh samples from the base model (negatives)")
        log_psi_neg = twist(spec, q_model, negatives, base_model, None, all_tokens=False)[0]
        loss = sixo_loss(log_psi, *common, log_psi_neg=log_psi_neg, neg_action_mask=negatives.action_mask)
    elif dpg:
        all_base = torch.log_softmax(full_base.float(), -1)
        loss = dpg_loss(log_psi, *common, log_psi_all=log_psi_all, base_logps_all=all_base)
    else:
        extra = {"cumulative_psi": is_cumulative(spec.parameterization)} if spec.loss_type == "ctl" else {}
        loss = PROPOSAL_LOSSES[spec.loss_type](log_psi, *common, **extra)
    return loss, base_logps


def low_reward_coverage(
    raw_rewards: torch.Tensor, weights: torch.Tensor, threshold: float, group_size: int
) -> dict[str, float]:
    """How well a batch of proposal samples covers sigma's low-reward region, from their normalised weights [B].

    proposal_low_reward_fraction: the share of the samples scoring below --threshold. proposal_low_reward_ess_fraction:
    the effective sample size (Σ w)² / Σ w² of the weights of those samples only, per group, over N (0 for a group
    without one). The ESS of all the weights would not do: self-normalised weights of a group that holds no
    low-reward sample are spread over harmless outputs and read as a high ESS although the batch holds nothing of
    the region sigma is after (the exact ESS, on an enumerable toy, is exact_proposal_ess_fraction).
    """
    low = raw_rewards < threshold
    kept = torch.where(low, weights.detach(), torch.zeros_like(weights))
    return {
        "proposal_low_reward_fraction": low.float().mean().item(),
        "proposal_low_reward_ess_fraction": effective_sample_size(kept, group_size).mean().item() / group_size,
    }
