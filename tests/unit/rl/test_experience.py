"""Making experience runs no model on its own samples: the sampler's log-probs are the behaviour log-probs, and
the only pass is the frozen reference's, when a KL penalty needs it."""

from __future__ import annotations

import pytest
import torch

from repulse.rl.experience import RewardShaping, policy_experience, proposal_experience
from repulse.rl.rollout import Rollout


class CountingLM(torch.nn.Module):
    """Uniform next-token distribution over 5 tokens; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.bias = torch.nn.Parameter(torch.zeros(5))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        logits = self.bias.expand(*input_ids.shape, 5)
        return type("Out", (), {"logits": logits})()


SAMPLED = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])  # what the sampler recorded


def rollout() -> Rollout:
    seq = torch.tensor([[1, 2, 3], [1, 4, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    return Rollout(seq, mask, torch.ones(2, 2, dtype=torch.bool), ["p", "p"], ["a", "b"], 2, SAMPLED)


@pytest.mark.parametrize(("kl_coef", "calls"), [(0.0, 0), (0.1, 1)])
def test_scoring_passes(kl_coef, calls):
    reference = CountingLM()
    raw = torch.tensor([1.0, -1.0])
    exp = policy_experience(rollout(), raw, reference, RewardShaping(), kl_coef)
    assert reference.calls == calls
    assert torch.equal(exp.raw_rewards, raw) and torch.equal(exp.behaviour_logps, SAMPLED)
    if calls:  # k1 against the uniform reference over 5 tokens, summed into the return
        kl = SAMPLED + torch.log(torch.tensor(5.0))
        torch.testing.assert_close(exp.kl, kl)
        torch.testing.assert_close(exp.returns, raw - kl_coef * kl.sum(-1))
    else:
        assert torch.equal(exp.kl, torch.zeros(2, 2)) and torch.equal(exp.returns, raw)


def test_proposal_experience_scores_only_a_given_target():
    target, raw, log_phi = CountingLM(), torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])
    exp = proposal_experience(rollout(), raw, log_phi)
    assert exp.target_logps is None and torch.equal(exp.behaviour_logps, SAMPLED)
    exp = proposal_experience(rollout(), raw, log_phi, target=target)
    assert target.calls == 1 and torch.allclose(exp.target_logps, torch.full((2, 2), -torch.log(torch.tensor(5.0))))
