"""KL penalty to the reference model and its coefficient controllers (docs/algorithms/harmlessness.md)."""

from __future__ import annotations

import torch

from repulse.losses.reductions import zero_invalid


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k1 estimator per token: log p(s_t|.) - log p_ref(s_t|.) on valid tokens, 0 elsewhere.

    logp, ref_logp, mask: [B, T] -> [B, T]. Its masked sum over t is an unbiased estimate of KL(p || p_ref)
    for s ~ p. Padded positions may hold garbage (inf/nan included): they are replaced, not multiplied.
    """
    return zero_invalid(logp - ref_logp, mask)


class FixedKLController:
    """A constant KL coefficient c (`--init_kl_coef` with `--kl_target` unset, as in every paper command)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, as in OpenRLHF's `AdaptiveKLController`).

    After a batch of `n_steps` samples with observed KL `current_kl`:
    e = clip(current_kl / target - 1, -0.2, 0.2), c <- c * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"--kl_target must be > 0 and --kl_horizon > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
