"""Proposal / twist parameterizations (`--parameterization`, docs/algorithms/twist.md).

Twist formulation (Zhao et al. 2024): sigma(s) ∝ p(s) phi(s), intermediate targets pi_t ∝ p(s_{1:t}) psi_t(s_{1:t}),
twist-induced proposal q(s_t | s_<t) ∝ p(s_t | s_<t) psi_t(s_{1:t}).

- "policy" family: q is a full LM; a log-twist is read off q and the base p (p detached, gradient through q only).
- "modulation" family: q(v | s_<t) = softmax_v(log p(v | s_<t) + m(v | s_<t)) and log psi_t = m(s_t | s_<t), with
  m from a head on the base model's last hidden state (linear / MLP) or from a separate LM (modulation_model).

Shapes: logits [B, T, V] predict the response tokens actions [B, T]; action_mask [B, T] marks valid tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repulse.losses.lm import token_log_probs
from repulse.losses.reductions import zero_invalid

PARAMETERIZATIONS = (
    "policy",
    "policy_psi_unnorm",
    "policy_psi_q_p_s_t",
    "policy_psi_q_p_s_1_to_t",
    "modulation_linear_head",
    "modulation_nn_head",
    "modulation_model",
)
POLICY_PSI_PARAMETERIZATIONS = ("policy_psi_unnorm", "policy_psi_q_p_s_t", "policy_psi_q_p_s_1_to_t")


def is_modulation(parameterization: str) -> bool:
    """True for the modulation family (`--actor_modulates_base` is implied when "policy" is not in the name)."""
    return "policy" not in parameterization


def is_cumulative(parameterization: str) -> bool:
    """True when log psi_t is a cumulative sum over tokens (pass as `cumulative_psi` to the CTL loss)."""
    return parameterization == "policy_psi_q_p_s_1_to_t"


def _check_policy_psi(parameterization: str) -> None:
    if parameterization not in POLICY_PSI_PARAMETERIZATIONS:
        raise ValueError(
            f"--parameterization {parameterization!r} defines no twist from a policy; choose from "
            f"{POLICY_PSI_PARAMETERIZATIONS} (plain 'policy' is for PPO only)"
        )


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # Half-precision logits are upcast for the softmax, as in losses.lm.token_log_probs.
    return F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)


def log_psi_from_token_logps(
    q_token_logps: torch.Tensor,
    base_token_logps: torch.Tensor,
    action_mask: torch.Tensor,
    parameterization: str,
    q_token_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """log psi_t [B, T] from per-token quantities, by --parameterization; the base term is detached.

    - policy_psi_q_p_s_t: log q(s_t|s_<t) - log p(s_t|s_<t);
    - policy_psi_q_p_s_1_to_t: Σ_{τ≤t} [log q(s_τ|.) - log p(s_τ|.)] (padded tokens add 0, so a finished row
      carries its final value);
    - policy_psi_unnorm: the raw (unnormalised) q logit of s_t, `q_token_logits` [B, T], minus log p(s_t|s_<t).
    Padded positions are 0 except for the cumulative variant.
    """
    _check_policy_psi(parameterization)
    base = base_token_logps.detach()
    if parameterization == "policy_psi_unnorm":
        if q_token_logits is None:
            raise ValueError("policy_psi_unnorm needs the raw q logits of the sampled tokens (q_token_logits)")
        return zero_invalid(q_token_logits - base, action_mask)
    ratio = zero_invalid(q_token_logps - base, action_mask)
    return ratio.cumsum(dim=1) if parameterization == "policy_psi_q_p_s_1_to_t" else ratio


def log_psi_from_policy(
    q_logits: torch.Tensor,
    base_logits: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    parameterization: str,
) -> torch.Tensor:
    """log psi_t(s_{1:t}) [B, T] from the proposal's and the base model's logits [B, T, V] (gradient through q)."""
    q_logps = token_log_probs(q_logits, actions)
    base_logps = token_log_probs(base_logits.detach(), actions)
    raw = q_logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1) if parameterization == "policy_psi_unnorm" else None
    return log_psi_from_token_logps(q_logps, base_logps, action_mask, parameterization, raw)


def log_psi_all_tokens(
    q_logits: torch.Tensor,
    base_logits: torch.Tensor,
    parameterization: str,
    actions: torch.Tensor | None = None,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """log psi_t(s_<t, v) for every next token v: [B, T, V] (needed by DPG; base detached).

    - policy_psi_q_p_s_t: log q(v|s_<t) - log p(v|s_<t);
    - policy_psi_unnorm: q logit(v) - log p(v|s_<t);
    - policy_psi_q_p_s_1_to_t: Σ_{τ<t}[log q(s_τ|.) - log p(s_τ|.)] + log q(v|s_<t) - log p(v|s_<t); needs the
      sampled `actions` and `action_mask` for the prefix. (The reference code cumsums the all-vocab tensors over
      t instead, which mixes different tokens' ratios; the prefix is constant in v, so DPG's gradient and q̄ are
      the same either way.)
    """
    _check_policy_psi(parameterization)
    base_all = _log_softmax(base_logits.detach())
    if parameterization == "policy_psi_unnorm":
        return q_logits - base_all
    ratio_all = _log_softmax(q_logits) - base_all
    if parameterization == "policy_psi_q_p_s_t":
        return ratio_all
    if actions is None or action_mask is None:
        raise ValueError("policy_psi_q_p_s_1_to_t needs the sampled actions and action_mask for the prefix")
    taken = zero_invalid(ratio_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1), action_mask)
    prefix = taken.cumsum(dim=1) - taken  # exclusive: tokens before t
    return prefix.unsqueeze(-1) + ratio_all


def base_log_probs(base_logits: torch.Tensor) -> torch.Tensor:
    """log p(v|s_<t) [B, T, V] from the base logits, detached (and upcast from half precision).

    The base model is detached: the proposal update must not move p (it is frozen p_0 or p_theta, which has its
    own optimizer).
    """
    return _log_softmax(base_logits.detach())


def modulated_logits(base_logits: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
    """Unnormalised proposal logits log p(v|s_<t) + m(v|s_<t): [B, T, V]; softmax gives q ∝ p e^m (p detached)."""
    return base_log_probs(base_logits) + modulation


def log_psi_from_modulation(
    modulation: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor
) -> torch.Tensor:
    """log psi_t = m(s_t | s_<t) for the modulation family: [B, T, V] -> [B, T], 0 at padded positions.

    The all-vocab log psi for DPG is the modulation itself.
    """
    return zero_invalid(modulation.gather(-1, actions.unsqueeze(-1)).squeeze(-1), action_mask)


def init_modulation_output_(layer: nn.Linear, sd_divider: float = 1.0, init_from: torch.Tensor | None = None) -> None:
    """Xavier-normal weight / sd_divider (or a copy of `init_from` [V, H] / sd_divider), zero bias."""
    if sd_divider <= 0:
        raise ValueError(f"--additional_sd_divider must be > 0, got {sd_divider}")
    with torch.no_grad():
        if init_from is None:
            nn.init.xavier_normal_(layer.weight)
        else:
            if init_from.shape != layer.weight.shape:
                raise ValueError(
                    f"init_from has shape {tuple(init_from.shape)}, the head needs {tuple(layer.weight.shape)}"
                )
            layer.weight.copy_(init_from)
        layer.weight.div_(sd_divider)
        if layer.bias is not None:
            layer.bias.zero_()


class LinearModulationHead(nn.Module):
    """`modulation_linear_head`: m = W h_L + b on the base model's final hidden state h_L [B, T, H] -> [B, T, V].

    `init_from` (`--init_head_from_base`): the base LM head weight [V, H] to copy. Only this head is optimised.
    """

    def __init__(
        self, hidden_size: int, vocab_size: int, sd_divider: float = 1.0, init_from: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, vocab_size)
        init_modulation_output_(self.linear, sd_divider, init_from)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states)


class MLPModulationHead(nn.Module):
    """`modulation_nn_head`: m = MLP(h_L), hidden -> hidden -> hidden -> V with ReLU: [B, T, H] -> [B, T, V].

    The hidden layers keep PyTorch's default init; the output layer is initialised like the linear head.
    """

    def __init__(
        self, hidden_size: int, vocab_size: int, sd_divider: float = 1.0, init_from: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, vocab_size),
        )
        init_modulation_output_(self.net[-1], sd_divider, init_from)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)
