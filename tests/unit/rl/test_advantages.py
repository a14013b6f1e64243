"""GAE, whitening, RLOO and other baselines, per-token rewards; the RLOO REINFORCE gradient is unbiased."""

from __future__ import annotations

import pytest
import torch

from repulse.losses.policy import reinforce_loss
from repulse.rl.advantages import (
    compute_gae,
    group_mean_baseline,
    last_valid_index,
    neg_reinforce_returns,
    per_token_rewards,
    reinforce_advantages,
    rloo_baseline,
    whiten,
)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture
def one_thread():
    # Tiny float64 ops are dominated by thread hand-off on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gae_with_gamma_lambda_one_and_zero_values_is_reward_to_go():
    rewards = t([1.0, -2.0, 0.5, 3.0], [0.25, 1.0, 0.0, 0.0])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    adv, ret = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lambd=1.0)
    expected = t([2.5, 1.5, 3.5, 3.0], [1.25, 1.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected)


def test_gae_hand_computed_three_steps():
    # gamma 0.9, lambda 0.5: delta = (1 + .9*1 - .5, 0 + .9*1.5 - 1, 2 + 0 - 1.5) = (1.4, .35, .5)
    # A2 = .5, A1 = .35 + .45*.5 = .575, A0 = 1.4 + .45*.575 = 1.65875; G = A + V
    adv, ret = compute_gae(t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), torch.ones(1, 3, dtype=torch.bool), 0.9, 0.5)
    torch.testing.assert_close(adv, t([1.65875, 0.575, 0.5]))
    torch.testing.assert_close(ret, t([2.15875, 1.575, 2.0]))


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_gae_padding_does_not_leak(left):
    garbage = [float("nan"), 1e6]
    rewards = garbage + [1.0, 0.0, 2.0] if left else [1.0, 0.0, 2.0] + garbage
    values = garbage + [0.5, 1.0, 1.5] if left else [0.5, 1.0, 1.5] + garbage
    mask = torch.tensor([[False, False, True, True, True]] if left else [[True, True, True, False, False]])
    adv, ret = compute_gae(t(rewards), t(values), mask, 0.9, 0.5)
    assert torch.equal(adv[~mask], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ret[~mask], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(adv[mask], t(1.65875, 0.575, 0.5))
    torch.testing.assert_close(ret[mask], t(2.15875, 1.575, 2.0))


def test_whiten_uses_valid_tokens_only():
    x = t([1.0, 3.0, 1e9], [5.0, 7.0, float("nan")])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    out = whiten(x, mask)
    # valid values 1, 3, 5, 7: mean 4, biased std sqrt(5)
    torch.testing.assert_close(out[mask], (t(1.0, 3.0, 5.0, 7.0) - 4) / 5**0.5)
    assert torch.equal(out[~mask], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(whiten(x, mask, shift_mean=False)[mask], (t(1.0, 3.0, 5.0, 7.0) - 4) / 5**0.5 + 4)
    constant = whiten(t([2.0, 2.0]), torch.ones(1, 2, dtype=torch.bool), eps=1e-8)
    assert torch.isfinite(constant).all() and torch.equal(constant, torch.zeros(1, 2, dtype=torch.float64))


def test_rloo_and_group_mean_baselines_hand_values():
    returns = t(1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 1.0)
    torch.testing.assert_close(rloo_baseline(returns, 4), t(11 / 3, 10 / 3, 3.0, 2.0, 2 / 3, 2 / 3, 1 / 3, 1 / 3))
    torch.testing.assert_close(group_mean_baseline(returns, 4), t(3.0, 3.0, 3.0, 3.0, 0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="at least 2"):
        rloo_baseline(returns, 1)
    with pytest.raises(ValueError, match="whole number of groups"):
        rloo_baseline(returns, 3)


def test_reinforce_advantages_for_every_baseline_type():
    returns, other = t(1.0, 3.0, 0.0, 4.0), t(10.0, 20.0, -1.0, 1.0)
    torch.testing.assert_close(reinforce_advantages(returns, 2, "expectation"), t(-2.0, 2.0, -4.0, 4.0))
    torch.testing.assert_close(reinforce_advantages(returns, 2, "hardcoded", hardcoded=1.5), returns - 1.5)
    torch.testing.assert_close(reinforce_advantages(returns, 2, "other_expectation", other=other), t(-14, -12, 0, 4.0))
    torch.testing.assert_close(reinforce_advantages(returns, 2, None), returns)
    with pytest.raises(ValueError, match="--reinforce_baseline_type"):
        reinforce_advantages(returns, 2, "median")
    with pytest.raises(ValueError, match="other"):
        reinforce_advantages(returns, 2, "other_expectation")


def test_per_token_rewards_put_the_sequence_reward_on_the_last_valid_token():
    kl = t([0.1, 0.2, 0.3], [0.5, float("nan"), 7.0], [9.0, 0.4, 0.6])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, True, True]])
    rewards = per_token_rewards(kl, t(1.0, 2.0, 3.0), mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, t([-0.05, -0.1, 0.85], [1.75, 0.0, 0.0], [0.0, -0.2, 2.7]))
    assert last_valid_index(mask).tolist() == [2, 0, 2]


def test_neg_reinforce_returns_subtract_the_masked_kl_sum():
    kl = t([0.5, 0.25], [1.0, float("inf")])
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(neg_reinforce_returns(t(-2.0, -1.0), kl, mask, kl_coef=2.0), t(-3.5, -3.0))


def _batched_reinforce_gradients(theta, rewards, num_batches, group_size, baseline):
    """Per-batch gradients [M, K] of the REINFORCE loss of M independent batches of N samples (vectorised)."""
    thetas = theta.detach().expand(num_batches, -1).clone().requires_grad_()
    samples = torch.multinomial(torch.softmax(theta.detach(), -1).expand(num_batches, -1), group_size, True)
    token_logps = torch.log_softmax(thetas, -1).gather(1, samples).reshape(-1, 1)  # [M*N, T=1]
    returns = rewards[samples].reshape(-1)
    if baseline == "rloo":
        adv = reinforce_advantages(returns, group_size, "expectation")
    else:
        adv = returns - group_mean_baseline(returns, group_size)
    mask = torch.ones_like(token_logps, dtype=torch.bool)
    # reinforce_loss averages over all M*N rows; times M it is the sum of the M per-batch losses.
    (reinforce_loss(token_logps, mask, adv) * num_batches).backward()
    return thetas.grad


def test_rloo_reinforce_gradient_is_unbiased(one_thread):
    torch.manual_seed(0)
    theta = torch.tensor([0.3, -1.0, 0.5, 1.2, -0.4, 0.0], dtype=torch.float64, requires_grad=True)
    rewards = t(1.0, -2.0, 0.5, 3.0, -1.0, 0.0)
    (torch.softmax(theta, -1) * rewards).sum().backward()
    exact = -theta.grad  # the loss is -E[r]
    grads = _batched_reinforce_gradients(theta, rewards, 4000, 4, "rloo")
    mean, se = grads.mean(0), grads.std(0) / 4000**0.5
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
    # The test has power: the self-including group mean shrinks the gradient by (N-1)/N = 3/4.
    shrunk = _batched_reinforce_gradients(theta, rewards, 4000, 4, "group_mean").mean(0)
    assert ((shrunk - exact).abs() > 4 * se).any()
    assert ((shrunk * 4 / 3 - exact).abs() < 5 * se).all()


def test_whiten_over_processes_equals_whiten_of_the_whole_batch():
    """Two shares of a batch, each whitened with `total` summing over both (threads stand in for ranks): the
    whole batch's whitening, not each share's."""
    import threading

    x = torch.tensor([[1.0, 3.0, 2.0], [5.0, 7.0, 0.0], [-4.0, 9.0, 1.0], [0.5, 2.5, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    barrier, posted = threading.Barrier(2), [{}, {}]

    def total_for(rank: int):
        def total(values: dict[str, float]) -> dict[str, float]:
            posted[rank] = values
            barrier.wait()
            summed = {k: posted[0][k] + posted[1][k] for k in values}
            barrier.wait()
            return summed

        return total

    out = [None, None]

    def run(rank: int) -> None:
        rows = slice(2 * rank, 2 * rank + 2)
        out[rank] = whiten(x[rows], mask[rows], total=total_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(torch.cat(out), whiten(x, mask))
    assert not torch.allclose(torch.cat([whiten(x[:2], mask[:2]), whiten(x[2:], mask[2:])]), whiten(x, mask))
