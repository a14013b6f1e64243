"""make_base_experience: the scoring pass runs only when something needs its log-probs."""

from __future__ import annotations

import pytest
import torch

from repulse.rl.experience import RewardSettings, make_base_experience
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


def rollout() -> Rollout:
    seq = torch.tensor([[1, 2, 3], [1, 4, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    return Rollout(seq, mask, torch.ones(2, 2, dtype=torch.bool), ["p", "p"], ["a", "b"], 2)


def rewards(prompts, responses):
    return torch.tensor([1.0, -1.0])


@pytest.mark.parametrize(("need", "kl_coef", "calls"), [(True, 0.0, 1), (False, 0.0, 0), (False, 0.1, 2)])
def test_scoring_passes(need, kl_coef, calls):
    policy, reference = CountingLM(), CountingLM()
    exp = make_base_experience(
        rollout(), policy, reference, rewards, RewardSettings(kl_coef=kl_coef), need_behaviour_logps=need
    )
    assert policy.calls + reference.calls == calls
    assert torch.equal(exp.raw_rewards, torch.tensor([1.0, -1.0]))
    if calls:  # uniform over 5 tokens
        assert torch.allclose(exp.behaviour_logps, torch.full((2, 2), -torch.log(torch.tensor(5.0)).item()))
    else:
        assert torch.equal(exp.behaviour_logps, torch.zeros(2, 2)) and torch.equal(exp.kl, torch.zeros(2, 2))
