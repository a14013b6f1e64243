"""Twist parameterizations: log psi against hand-computed values, gradients only through q,
the all-vocabulary twists, and the modulation heads' initialisation."""

from __future__ import annotations

import pytest
import torch

from repulse.models.proposal import (
    PARAMETERIZATIONS,
    POLICY_PSI_PARAMETERIZATIONS,
    LinearModulationHead,
    MLPModulationHead,
    is_cumulative,
    is_modulation,
    log_psi_all_tokens,
    log_psi_from_modulation,
    log_psi_from_policy,
    modulated_logits,
)

B, T, V = 3, 4, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q_logits = torch.randn(B, T, V, generator=g, dtype=torch.float64).requires_grad_()
    base_logits = torch.randn(B, T, V, generator=g, dtype=torch.float64).requires_grad_()
    actions = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    return q_logits, base_logits, actions, mask


def _taken(logits, actions):
    return logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def test_policy_psi_q_p_s_t_is_the_per_token_log_ratio():
    q_logits, base_logits, actions, mask = _inputs()
    log_psi = log_psi_from_policy(q_logits, base_logits, actions, mask, "policy_psi_q_p_s_t")
    ratio = _taken(q_logits.log_softmax(-1) - base_logits.log_softmax(-1), actions)
    torch.testing.assert_close(log_psi, torch.where(mask, ratio, 0.0))
    log_psi.sum().backward()
    assert base_logits.grad is None  # the base term is detached
    assert q_logits.grad.abs().sum() > 0
    assert q_logits.grad[1, 2:].abs().sum() == 0  # padded positions carry no gradient


def test_policy_psi_q_p_s_1_to_t_is_the_cumulative_ratio():
    q_logits, base_logits, actions, mask = _inputs()
    log_psi = log_psi_from_policy(q_logits, base_logits, actions, mask, "policy_psi_q_p_s_1_to_t")
    ratio = torch.where(mask, _taken(q_logits.log_softmax(-1) - base_logits.log_softmax(-1), actions), 0.0)
    torch.testing.assert_close(log_psi[:, 0], ratio[:, 0])
    torch.testing.assert_close(log_psi[:, 2], ratio[:, 0] + ratio[:, 1] + ratio[:, 2])
    # a finished row keeps its final cumulative value over the padding
    torch.testing.assert_close(log_psi[1, 3], ratio[1, 0] + ratio[1, 1])
    log_psi.sum().backward()
    assert base_logits.grad is None


def test_policy_psi_unnorm_uses_the_raw_q_logit():
    q_logits, base_logits, actions, mask = _inputs()
    log_psi = log_psi_from_policy(q_logits + 7.0, base_logits, actions, mask, "policy_psi_unnorm")
    expected = _taken(q_logits + 7.0, actions) - _taken(base_logits.log_softmax(-1), actions)
    torch.testing.assert_close(log_psi, torch.where(mask, expected, 0.0))


@pytest.mark.parametrize("parameterization", POLICY_PSI_PARAMETERIZATIONS)
def test_all_token_twists_agree_with_the_sampled_token_twists(parameterization):
    q_logits, base_logits, actions, mask = _inputs(1)
    log_psi = log_psi_from_policy(q_logits, base_logits, actions, mask, parameterization)
    log_psi_all = log_psi_all_tokens(q_logits, base_logits, parameterization, actions, mask)
    assert log_psi_all.shape == (B, T, V)
    torch.testing.assert_close(_taken(log_psi_all, actions)[mask], log_psi[mask])


def test_all_token_twist_of_q_p_s_t_is_log_q_minus_log_p():
    q_logits, base_logits, _, _ = _inputs()
    out = log_psi_all_tokens(q_logits, base_logits, "policy_psi_q_p_s_t")
    torch.testing.assert_close(out, q_logits.log_softmax(-1) - base_logits.log_softmax(-1))
    with pytest.raises(ValueError, match="actions"):
        log_psi_all_tokens(q_logits, base_logits, "policy_psi_q_p_s_1_to_t")


@pytest.mark.parametrize("parameterization", ["policy", "modulation_linear_head"])
def test_parameterizations_without_a_policy_twist_are_rejected(parameterization):
    q_logits, base_logits, actions, mask = _inputs()
    with pytest.raises(ValueError, match="--parameterization"):
        log_psi_from_policy(q_logits, base_logits, actions, mask, parameterization)


def test_family_predicates():
    assert [p for p in PARAMETERIZATIONS if is_modulation(p)] == [
        "modulation_linear_head",
        "modulation_nn_head",
        "modulation_model",
    ]
    assert [p for p in PARAMETERIZATIONS if is_cumulative(p)] == ["policy_psi_q_p_s_1_to_t"]


def test_linear_head_init_from_base_copies_the_head_divided():
    base_head = torch.randn(V, 8)
    head = LinearModulationHead(8, V, sd_divider=4.0, init_from=base_head)
    torch.testing.assert_close(head.linear.weight, base_head / 4.0)
    assert torch.equal(head.linear.bias, torch.zeros(V))
    assert head(torch.randn(2, 3, 8)).shape == (2, 3, V)
    with pytest.raises(ValueError, match="shape"):
        LinearModulationHead(8, V, init_from=torch.randn(V, 9))
    with pytest.raises(ValueError, match="--additional_sd_divider"):
        LinearModulationHead(8, V, sd_divider=0.0)


def test_xavier_normal_init_scaled_by_the_divider():
    torch.manual_seed(0)
    hidden, vocab = 64, 512
    xavier_std = (2.0 / (hidden + vocab)) ** 0.5
    for divider in (1.0, 10.0):
        head = LinearModulationHead(hidden, vocab, sd_divider=divider)
        assert head.linear.weight.std().item() == pytest.approx(xavier_std / divider, rel=0.05)
        assert torch.equal(head.linear.bias, torch.zeros(vocab))
    mlp = MLPModulationHead(hidden, vocab, sd_divider=10.0)
    assert [m.out_features for m in mlp.net if isinstance(m, torch.nn.Linear)] == [hidden, hidden, vocab]
    assert mlp.net[-1].weight.std().item() == pytest.approx(xavier_std / 10.0, rel=0.05)
    assert torch.equal(mlp.net[-1].bias, torch.zeros(vocab))
    assert mlp(torch.randn(2, 3, hidden)).shape == (2, 3, vocab)


def test_modulated_logits_give_q_proportional_to_p_times_e_to_the_m():
    q_logits, base_logits, actions, mask = _inputs()
    modulation = q_logits  # any [B, T, V] tensor
    q = modulated_logits(base_logits, modulation).softmax(-1)
    unnorm = base_logits.softmax(-1) * modulation.exp()
    torch.testing.assert_close(q, unnorm / unnorm.sum(-1, keepdim=True))
    torch.testing.assert_close(
        modulated_logits(base_logits, torch.zeros_like(modulation)).exp(), base_logits.softmax(-1)
    )
    log_psi = log_psi_from_modulation(modulation, actions, mask)
    torch.testing.assert_close(log_psi, torch.where(mask, _taken(modulation, actions), 0.0))
    modulated_logits(base_logits, modulation).sum().backward()
    assert base_logits.grad is None
