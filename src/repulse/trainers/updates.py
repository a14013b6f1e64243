"""The two updates of harmlessness training: p_theta (REINFORCE + negative training) and the proposal q_xi
(a twist loss toward sigma_theta). Each takes micro-batches of whole prompt groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from repulse.infra.checkpoint import load_optional_state, optional_state
from repulse.losses.lm import token_log_probs
from repulse.losses.policy import neg_reinforce_loss, neg_training_loss, reinforce_loss
from repulse.losses.proposal import PROPOSAL_LOSSES, dpg_loss, sixo_loss
from repulse.models.proposal import (
    is_cumulative,
    is_modulation,
    log_psi_all_tokens,
    log_psi_from_modulation,
    log_psi_from_policy,
)
from repulse.rl.advantages import neg_reinforce_returns, reinforce_advantages
from repulse.rl.experience import Experience
from repulse.rl.importance import (
    effective_sample_size,
    log_importance_weights,
    normalized_group_weights,
    sequence_logprob,
    uniform_group_weights,
    zero_weights_where_not_bad,
)
from repulse.rl.potentials import log_potential
from repulse.rl.rollout import Rollout, response_logits, response_modulation, response_token_logps


@dataclass
class BaseUpdateSettings:
    """How p_theta is updated: loss_type reinforce | neg_training | neg_reinforce, alpha, baselines, and the
    weights of the negative term (uniform, separate beta, indicator zeroing)."""

    group_size: int
    loss_type: str = "neg_training"
    alpha: float = 0.0
    baseline_type: str | None = "expectation"
    hardcoded_baseline: float = 0.0
    neg_baseline_type: str | None = None
    neg_hardcoded_baseline: float = 0.0
    uniform_reweight: bool = False
    reweighting_beta: float | None = None
    rm_type: str = "rlhf"
    beta: float = -10.0
    threshold: float = -5.0
    reward_cap: float = 10000.0
    kl_coef: float = 0.0
    max_norm: float = 1.0


def negative_weights(neg: Experience, current_logps: torch.Tensor, s: BaseUpdateSettings) -> torch.Tensor:
    """Self-normalised weights toward sigma_theta per prompt group (METHODS §2.5), with masked sums."""
    mask = neg.rollout.action_mask
    if s.uniform_reweight:
        return uniform_group_weights(mask.shape[0], s.group_size).to(current_logps)
    log_phi = neg.log_phi
    if s.reweighting_beta is not None:
        log_phi = log_potential(neg.raw_rewards, s.rm_type, s.reweighting_beta, s.threshold, s.reward_cap)
    log_w = log_importance_weights(
        sequence_logprob(current_logps, mask), log_phi, sequence_logprob(neg.behaviour_logps, mask)
    )
    weights = normalized_group_weights(log_w, s.group_size)
    if s.rm_type == "indicator_below_threshold":
        weights = zero_weights_where_not_bad(weights, log_phi)
    return weights


def neg_reinforce_term(model, reference, neg: Experience, neg_logps, weights, s: BaseUpdateSettings):
    """alpha-free negative REINFORCE term on proposal samples (METHODS §2.6, not used by the paper)."""
    token_kl = neg_logps.detach() - (response_token_logps(reference, neg.rollout) if s.kl_coef > 0 else 0.0)
    returns = neg_reinforce_returns(neg.log_phi, token_kl, neg.rollout.action_mask, s.kl_coef)
    adv = reinforce_advantages(returns, s.group_size, s.neg_baseline_type, s.neg_hardcoded_baseline)
    # "Negative" REINFORCE: with beta < 0 the worst samples have the highest advantage, and this term must push
    # their likelihood DOWN, so the REINFORCE loss enters with the opposite sign (METHODS §2.6 leaves it open).
    return -neg_reinforce_loss(neg_logps, neg.rollout.action_mask, weights, adv)


def base_actor_loss(model, base: Experience, neg: Experience | None, s: BaseUpdateSettings, reference=None):
    """(loss, metrics) of p_theta on one micro-batch pair."""
    logps = response_token_logps(model, base.rollout, grad=True)
    adv = reinforce_advantages(base.returns, s.group_size, s.baseline_type, s.hardcoded_baseline)
    loss = reinforce_loss(logps, base.rollout.action_mask, adv)
    metrics = {"rl_loss": loss.item()}
    if s.loss_type == "reinforce" or neg is None or s.alpha == 0:
        return loss, metrics
    neg_logps = response_token_logps(model, neg.rollout, grad=True)
    weights = negative_weights(neg, neg_logps.detach(), s)
    if s.loss_type == "neg_training":
        neg_loss = neg_training_loss(neg_logps, neg.rollout.action_mask, weights)
    else:
        neg_loss = neg_reinforce_term(model, reference, neg, neg_logps, weights, s)
    ess = effective_sample_size(weights, s.group_size).mean().item() / s.group_size
    metrics.update(neg_loss=neg_loss.item(), ess_fraction=ess)
    return loss + s.alpha * neg_loss, metrics


def update_base_actor(
    model,
    optimizer,
    scheduler,
    base: Experience,
    neg: Experience | None,
    s: BaseUpdateSettings,
    strategy: Any,
    reference=None,
) -> dict[str, float]:
    loss, metrics = base_actor_loss(model, base, neg, s, reference)
    if not torch.isfinite(loss):
        from repulse.infra.errors import TrainingDivergedError

        raise TrainingDivergedError(f"p_theta loss is {loss.item()}; stopped before applying it")
    strategy.backward(loss, model)
    metrics["base_grad_norm"] = strategy.optimizer_step(optimizer, model, scheduler, s.max_norm)
    metrics["base_loss"] = loss.item()
    return metrics


class ProposalUpdater:
    """Twist learning for q_xi toward sigma ∝ p e^{beta r}, p = the current base model (METHODS §2.8, §4.2)."""

    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        *,
        loss_type: str,
        parameterization: str,
        group_size: int,
        max_norm: float,
        strategy: Any,
        enabled: bool = True,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loss_type, self.parameterization = loss_type, parameterization
        self.group_size, self.max_norm, self.strategy, self.enabled = group_size, max_norm, strategy, enabled

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": optional_state(self.optimizer), "scheduler": optional_state(self.scheduler)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_optional_state(self.optimizer, state["optimizer"])
        load_optional_state(self.scheduler, state["scheduler"])

    @torch.no_grad()
    def base_logits(self, rollout: Rollout, base_model) -> torch.Tensor:
        was_training = base_model.training
        base_model.eval()
        logits = response_logits(base_model, rollout)
        base_model.train(was_training)
        return logits

    def base_logps(self, neg: Experience, base_model) -> torch.Tensor:
        logits = self.base_logits(neg.rollout, base_model)
        return token_log_probs(logits, neg.rollout.actions) * neg.rollout.action_mask

    def twist(self, rollout: Rollout, base_model, all_tokens: bool = False):
        """(log psi [B, T] with gradient through q, log psi of every next token [B, T, V] or None unless
        `all_tokens`, base logits [B, T, V]) on `rollout`."""
        if is_modulation(self.parameterization):
            # q ∝ p e^m carries its own base (base_model: p_0, or the current p_theta), so one pass gives
            # log p and m; log psi_t = m(s_t), and the all-token twist is m itself.
            base_logits, modulation = response_modulation(self.model, rollout)
            return log_psi_from_modulation(modulation, rollout.actions, rollout.action_mask), modulation, base_logits
        q_logits = response_logits(self.model, rollout)
        base_logits = self.base_logits(rollout, base_model)
        log_psi = log_psi_from_policy(
            q_logits, base_logits, rollout.actions, rollout.action_mask, self.parameterization
        )
        log_psi_all = None
        if all_tokens:
            log_psi_all = log_psi_all_tokens(
                q_logits, base_logits, self.parameterization, rollout.actions, rollout.action_mask
            )
        return log_psi, log_psi_all, base_logits

    def loss(self, neg: Experience, base_model, negatives: Rollout | None = None) -> torch.Tensor:
        roll = neg.rollout
        log_psi, log_psi_all, base_logits = self.twist(roll, base_model, all_tokens=self.loss_type == "dpg")
        base_logps = token_log_probs(base_logits, roll.actions) * roll.action_mask
        common = (base_logps, neg.behaviour_logps, neg.log_phi, roll.action_mask, self.group_size)
        if self.loss_type == "sixo":
            if negatives is None:
                raise ValueError("sixo needs fresh samples from the base model (negatives)")
            log_psi_neg = self.twist(negatives, base_model)[0]
            return sixo_loss(log_psi, *common, log_psi_neg=log_psi_neg, neg_action_mask=negatives.action_mask)
        if self.loss_type == "dpg":
            return dpg_loss(
                log_psi, *common, log_psi_all=log_psi_all, base_logps_all=torch.log_softmax(base_logits.float(), -1)
            )
        extra = {"cumulative_psi": is_cumulative(self.parameterization)} if self.loss_type == "ctl" else {}
        return PROPOSAL_LOSSES[self.loss_type](log_psi, *common, **extra)

    def update(self, neg: Experience, base_model, negatives: Rollout | None = None) -> dict[str, float]:
        if not self.enabled:
            return {}
        loss = self.loss(neg, base_model, negatives)
        self.strategy.backward(loss, self.model)
        norm = self.strategy.optimizer_step(self.optimizer, self.model, self.scheduler, self.max_norm)
        return {"proposal_loss": loss.item(), "proposal_grad_norm": norm}
