"""The harmlessness trainer's update (trainers/rl/harmlessness.py: p_backward, negative_term, q_backward, the
optimizer steps) against exact gradients on the enumerable toy of enumerable_toy.py, with plain SGD so that
each step's parameter change is the learning rate times the gradient. p_theta's samples all have the same reward
(RLOO advantages 0), so p_theta moves by the negative term alone; q's samples come in exact proportion to q.
Each test's docstring names the mutations of the code it catches (each was made, and turned the test red).
"""

from __future__ import annotations

import pytest
import torch

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.generation.generate import SamplingParams
from repulse.rl.experience import Experience, RewardShaping
from repulse.rl.potentials import Potential
from repulse.rl.rollout import Rollout
from repulse.trainers.guard import Guard
from repulse.trainers.rl.harmlessness import (
    Annealing,
    HarmlessnessExperience,
    HarmlessnessSettings,
    HarmlessnessTrainer,
)
from repulse.trainers.rl.proposal import ProposalLoss
from repulse.trainers.rl.steps import BatchPlan, TrainedModel
from tests.unit.rl import enumerable_toy as toy

BETA, ALPHA, LR = -2.0, 40.0, 0.5
PROMPT = toy.PROMPTS[0]


def rollout(leaves: torch.Tensor, table: torch.Tensor) -> Rollout:
    """One prompt group: [prompt, s_1, s_2] per row, with the token log-probs of the model that "drew" it."""
    responses = toy.SEQS[leaves]
    sequences = torch.cat([torch.full((len(leaves), 1), PROMPT), responses], 1)
    logps = toy.leaf_token_logps(table, PROMPT)[leaves]
    mask = torch.ones_like(responses, dtype=torch.bool)
    texts = [" ".join(map(str, r.tolist())) for r in responses]
    return Rollout(sequences, torch.ones_like(sequences), mask, ["p"] * len(leaves), texts, toy.N, logps)


def experience() -> HarmlessnessExperience:
    p0, q0 = toy.log_table(toy.P_COUNTS), toy.log_table(toy.Q_COUNTS)
    base_roll = rollout(toy.multiset(toy.P_COUNTS, PROMPT), p0)
    same = torch.zeros(toy.N, dtype=torch.float64)  # equal rewards: REINFORCE's advantages are all 0
    base = Experience(base_roll, same, same, torch.zeros_like(base_roll.logps), base_roll.logps)
    leaves = toy.multiset(toy.Q_COUNTS, PROMPT)
    neg_roll = rollout(leaves, q0)
    raw = toy.rewards()[leaves]
    neg = Experience(neg_roll, raw, raw, torch.zeros_like(neg_roll.logps), neg_roll.logps, BETA * raw)
    return HarmlessnessExperience(base, neg, step=0, beta=BETA, alpha=ALPHA)


def trainer(epochs: int, train_q: bool, base_first: bool = False) -> HarmlessnessTrainer:
    def sgd(table: torch.Tensor, trains: bool) -> TrainedModel:
        model = toy.Bigram(table)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR) if trains else None
        return TrainedModel("model", model, optimizer, max_norm=0.0)

    settings = HarmlessnessSettings(group_size=toy.N, update_base_first=base_first)
    return HarmlessnessTrainer(
        sgd(toy.log_table(toy.P_COUNTS), True),
        sgd(toy.log_table(toy.Q_COUNTS), train_q),
        toy.Bigram(toy.log_table(toy.P_COUNTS)),
        None,
        None,
        sampling=SamplingParams(max_new_tokens=toy.T),
        shaping=RewardShaping(),
        potential=Potential("rlhf"),
        annealing=Annealing(BETA, ALPHA, total_steps=1),
        proposal_loss_spec=ProposalLoss("ctl", "policy_psi_q_p_s_t", toy.N),
        settings=settings,
        plan=BatchPlan(toy.N, toy.N, epochs),
        guard=Guard(SingleProcessStrategy("cpu")),
    )


def log_z(table: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(toy.leaf_log_probs(table, PROMPT) + BETA * toy.rewards(), 0)


def p_step(table: torch.Tensor) -> torch.Tensor:
    """One exact SGD step of p_theta: the negative term's gradient is (alpha / (N T)) grad log Z (token means)."""
    table = table.detach().requires_grad_()
    grad = torch.autograd.grad(log_z(table), table)[0]
    return (table - LR * ALPHA / (toy.N * toy.T) * grad).detach()


def test_p_theta_steps_are_exact_and_each_uses_the_current_p_theta():
    """Two epochs over one buffer: p_theta after them is two exact steps down alpha log Z, the second at the
    parameters the first produced (the weights read log p_theta anew at every micro-batch).

    Catches: stale log-probs (weights computed once per buffer and reused in the second epoch); dropping or
    flipping -log q in the weights; the alpha/N scale; flipping the negative term's sign.
    """
    t = trainer(epochs=2, train_q=False)
    t.update(experience())
    want = p_step(p_step(toy.log_table(toy.P_COUNTS)))
    torch.testing.assert_close(t.policy.model.table.detach(), want, rtol=1e-9, atol=1e-12)
    one = p_step(toy.log_table(toy.P_COUNTS))
    assert (want - one).abs().max() > 1e-3 * (one - toy.log_table(toy.P_COUNTS)).abs().max()


def kl_sigma_q(p_table: torch.Tensor, q_table: torch.Tensor) -> torch.Tensor:
    log_sigma = torch.log_softmax(toy.leaf_log_probs(p_table, PROMPT) + BETA * toy.rewards(), 0)
    return (log_sigma.exp() * (log_sigma - toy.leaf_log_probs(q_table, PROMPT))).sum()


@pytest.mark.parametrize("base_first", [False, True], ids=["q_first", "base_first"])
def test_q_step_is_exact_toward_the_right_p_theta(base_first):
    """q's step is -lr (1/(N T)) grad KL(sigma_theta || q) (CTL with psi = q / p: the pi_t term vanishes in
    expectation) toward sigma of p_theta before its step, or after it with --sampling_target_updated_base.

    Catches: q's target read from p_theta's log-probs of before its step when p_theta stepped first (the shared
    pass reused after the step: stale log-probs); dropping -log q in the sigma weights; log psi = log p - log q.
    """
    t = trainer(epochs=1, train_q=True, base_first=base_first)
    t.update(experience())
    p0, q0 = toy.log_table(toy.P_COUNTS), toy.log_table(toy.Q_COUNTS).requires_grad_()
    target = p_step(p0) if base_first else p0
    grad = torch.autograd.grad(kl_sigma_q(target, q0), q0)[0]
    want = q0.detach() - LR / (toy.N * toy.T) * grad
    torch.testing.assert_close(t.proposal.model.table.detach(), want, rtol=1e-9, atol=1e-12)
    other = torch.autograd.grad(kl_sigma_q(p0 if base_first else p_step(p0), q0), q0)[0]
    assert (other - grad).abs().max() > 1e-3 * grad.abs().max()  # the two targets differ visibly
