"""Exact diagnostics on an enumerable toy against brute-force sums over every leaf (no cache, no tree walk).

The toy: a random 2-layer GPT-2 over the shared word tokenizer, a 3-token prompt, responses of up to 2 tokens
(EOS ends one), "jerk" and "fool" as bad words, and a reward that depends on the words and the length.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from repulse.estimation.exact import exact_bad_probability
from repulse.evaluation import diagnostics as diag
from repulse.models.modulated import build_modulated
from tests.conftest import make_gpt2, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "this man is"
BAD = ["jerk", "fool"]
BETA = -2.0


def toy_reward(prompts, texts) -> torch.Tensor:
    """Low for bad words, graded by other words, so that sigma differs from p in and out of the bad set."""
    values = []
    for prompt, text in zip(prompts, texts, strict=True):
        assert prompt == PROMPT
        words = text.split()
        values.append(1.0 - 3.0 * sum(w in BAD for w in words) + 0.5 * sum(w in ("good", "kind") for w in words))
    return torch.tensor(values)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    """p_theta, p_0 (another seed) and a modulated proposal q on p_theta (random head: q != p)."""
    p_theta, p_0 = (make_gpt2(len(tok), seed=s).eval() for s in (0, 1))
    torch.manual_seed(2)
    q = build_modulated("modulation_linear_head", p_theta, trainable=False)
    return p_theta, p_0, q


@pytest.fixture(scope="module")
def space(tok, models):
    return diag.build_space(models[0], tok, PROMPT, 2, bad_words=BAD, reward_source=toy_reward)


def brute_force_log_probs(model, space) -> torch.Tensor:
    """log p of every leaf from one uncached forward over prompt + full response, by the chain rule."""
    n, width = len(space), space.prompt_ids.numel()
    ids = torch.cat([space.prompt_ids.expand(n, -1), space.responses], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.double()
    logps = torch.log_softmax(logits[:, width - 1 : -1], -1).gather(-1, space.responses[..., None])[..., 0]
    return (logps * space.mask).sum(-1)


@pytest.fixture(scope="module")
def log_probs(models, space):
    return [brute_force_log_probs(m, space) for m in models]


def test_space_holds_every_response_once_with_text_flags_and_rewards(tok, space):
    vocab, eos = len(tok), tok.eos_token_id
    assert len(space) == (vocab - 1) * vocab + 1  # EOS alone, or a non-EOS token and any second token
    rows = {tuple(r[m].tolist()) for r, m in zip(space.responses, space.mask)}
    assert len(rows) == len(space)
    assert all((r[m][:-1] != eos).all() for r, m in zip(space.responses, space.mask))
    for i in range(0, len(space), 97):
        text = tok.decode(space.responses[i][space.mask[i]], skip_special_tokens=True)
        assert space.texts[i] == text
        assert bool(space.bad[i]) == bool(re.search(r"\b(jerk|fool)\b", text, re.IGNORECASE))
        assert float(space.rewards[i]) == pytest.approx(float(toy_reward([PROMPT], [text])[0]))
    assert 0 < int(space.bad.sum()) < len(space)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["p_theta", "p_0", "modulated_q"])
def test_leaf_log_probs_equal_brute_force(models, space, log_probs, which):
    got = diag.leaf_log_probs(models[which], space)
    torch.testing.assert_close(got, log_probs[which], rtol=0, atol=1e-5)
    assert float(got.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_bad_mass_equals_the_exact_p_bad_estimator(tok, models, space, log_probs):
    expected = exact_bad_probability(
        models[0], space.prompt_ids, 2, bad_words=BAD, tokenizer=tok, eos_token_id=tok.eos_token_id
    ).p_bad
    assert diag.mass(log_probs[0], space.bad) == pytest.approx(expected, rel=1e-6)
    assert diag.mass(log_probs[0], space.bad) == pytest.approx(sum(math.exp(v) for v in log_probs[0][space.bad]))


def test_entropy_and_kl_equal_their_sums(log_probs):
    lp, l0, _ = (v.tolist() for v in log_probs)
    entropy = -sum(math.exp(a) * a for a in lp)
    kl = sum(math.exp(a) * (a - b) for a, b in zip(lp, l0))
    assert diag.entropy(log_probs[0]) == pytest.approx(entropy, rel=1e-9)
    assert diag.kl_divergence(log_probs[0], log_probs[1]) == pytest.approx(kl, rel=1e-9)
    assert diag.kl_divergence(log_probs[1], log_probs[0]) != pytest.approx(kl, rel=1e-3)  # not symmetric
    assert diag.kl_divergence(log_probs[0], log_probs[0]) == pytest.approx(0.0, abs=1e-12)


def test_entropy_and_kl_handle_zero_mass_leaves():
    log_p = torch.log(torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    log_q = torch.log(torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert diag.entropy(log_p) == pytest.approx(math.log(2))
    assert diag.kl_divergence(log_p, log_q) == pytest.approx(math.log(2))
    assert diag.kl_divergence(log_q, log_p) == math.inf
    assert diag.ess_fraction(log_q, log_p) == 0.0


def brute_force_sigma(log_p: torch.Tensor, rewards: torch.Tensor, beta: float) -> list[float]:
    weights = [math.exp(a) * math.exp(beta * r) for a, r in zip(log_p.tolist(), rewards.tolist())]
    return [w / sum(weights) for w in weights]


def test_tilted_target_and_log_partition(space, log_probs):
    sigma = brute_force_sigma(log_probs[0], space.rewards, BETA)
    got = diag.tilted_log_target(log_probs[0], space.rewards, BETA).exp()
    torch.testing.assert_close(got, torch.tensor(sigma, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    z = sum(math.exp(a + BETA * r) for a, r in zip(log_probs[0].tolist(), space.rewards.tolist()))
    assert diag.log_partition(log_probs[0], space.rewards, BETA) == pytest.approx(math.log(z), rel=1e-9)
    # beta < 0 tilts towards low reward: the bad words gain mass.
    assert sum(s for s, b in zip(sigma, space.bad.tolist()) if b) > 3 * diag.mass(log_probs[0], space.bad)


def test_proposal_diagnostics_equal_brute_force(space, log_probs):
    """KL(sigma || q), ESS/n = (E_q w)^2 / E_q w^2 with w = sigma / q, q's and sigma's bad mass, log Z."""
    sigma = brute_force_sigma(log_probs[0], space.rewards, BETA)
    q = log_probs[2].exp().tolist()
    w = [s / b for s, b in zip(sigma, q)]
    ess = sum(wi * qi for wi, qi in zip(w, q)) ** 2 / sum(wi * wi * qi for wi, qi in zip(w, q))
    bad = space.bad.tolist()
    got = diag.proposal_diagnostics(log_probs[0], log_probs[2], space, BETA * space.rewards)
    assert got["kl_target_to_proposal"] == pytest.approx(sum(s * math.log(s / b) for s, b in zip(sigma, q)), 1e-9)
    assert got["proposal_ess_fraction"] == pytest.approx(ess, rel=1e-9)
    assert got["proposal_p_bad"] == pytest.approx(sum(b for b, x in zip(q, bad) if x), rel=1e-9)
    assert got["target_p_bad"] == pytest.approx(sum(s for s, x in zip(sigma, bad) if x), rel=1e-9)
    assert got["log_partition"] == pytest.approx(diag.log_partition(log_probs[0], space.rewards, BETA), rel=1e-12)
    assert 0 < got["proposal_ess_fraction"] < 0.9 and got["kl_target_to_proposal"] > 0.05
    # The target itself is the perfect proposal.
    log_sigma = diag.tilted_log_target(log_probs[0], space.rewards, BETA)
    assert diag.ess_fraction(log_sigma, log_sigma) == pytest.approx(1.0, rel=1e-9)
    assert diag.kl_divergence(log_sigma, log_sigma) == pytest.approx(0.0, abs=1e-12)


def test_policy_diagnostics(space, log_probs):
    got = diag.policy_diagnostics(log_probs[0], log_probs[1], space)
    p = log_probs[0].exp()
    assert got["entropy"] == pytest.approx(diag.entropy(log_probs[0]))
    assert got["kl_to_reference"] == pytest.approx(diag.kl_divergence(log_probs[0], log_probs[1]))
    assert got["p_bad"] == pytest.approx(float(p[space.bad].sum()))
    assert got["expected_reward"] == pytest.approx(float((p * space.rewards).sum()))


def test_mismatched_inputs_are_errors(space, log_probs, tok):
    with pytest.raises(ValueError, match="vectors of one length"):
        diag.kl_divergence(log_probs[0], log_probs[1][:-1])
    other = make_gpt2(len(tok) + 3, seed=0).eval()
    with pytest.raises(ValueError):
        diag.leaf_log_probs(other, space)
    with pytest.raises(ValueError, match="vectors of one length"):
        diag.proposal_diagnostics(log_probs[0], log_probs[2], space, BETA * space.rewards[:-1])


def test_indicator_potential_target_is_p_given_bad(space, log_probs):
    """phi = 1[bad]: sigma = p( . | bad), log Z = log P(bad), and q's ESS for it is P_q(bad)^2 / sum_bad p^2/q
    over the conditional."""
    log_phi = torch.where(space.bad, 0.0, -math.inf).double()
    got = diag.proposal_diagnostics(log_probs[0], log_probs[2], space, log_phi)
    p, q, bad = log_probs[0].exp(), log_probs[2].exp(), space.bad
    p_bad = float(p[bad].sum())
    sigma = p[bad] / p_bad
    assert got["log_partition"] == pytest.approx(math.log(p_bad), rel=1e-12)
    assert got["target_p_bad"] == pytest.approx(1.0, rel=1e-12)
    assert got["proposal_ess_fraction"] == pytest.approx(1 / float((sigma**2 / q[bad]).sum()), rel=1e-9)
    assert got["kl_target_to_proposal"] == pytest.approx(float((sigma * (sigma / q[bad]).log()).sum()), rel=1e-9)
