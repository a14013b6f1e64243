"""The k1 KL estimator and the fixed / adaptive KL coefficient controllers."""

from __future__ import annotations

import pytest
import torch

from repulse.rl.kl import AdaptiveKLController, FixedKLController, kl_k1


def test_k1_is_the_masked_log_ratio():
    logp = torch.tensor([[-1.0, -2.0, float("nan")]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, 0.0]], dtype=torch.float64)
    kl = kl_k1(logp, ref, torch.tensor([[True, True, False]]))
    assert kl.tolist() == [[0.5, -1.0, 0.0]]


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05


def test_adaptive_controller_follows_the_ziegler_rule():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2: c *= 1 + 0.2 * 100 / 10000
    assert ctl.value == pytest.approx(0.1 * 1.002)
    ctl.update(current_kl=5.4, n_steps=1000)  # error -0.1: c *= 1 - 0.1 * 0.1
    assert ctl.value == pytest.approx(0.1 * 1.002 * 0.99)
    ctl.update(current_kl=0.0, n_steps=500)  # error clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.002 * 0.99 * 0.99)


def test_adaptive_controller_rejects_a_nonpositive_target():
    with pytest.raises(ValueError, match="--kl_target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
