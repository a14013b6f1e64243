"""The modulated proposal q ∝ p e^m: its distribution, its parameters, caching, sampling, saving,
its update (only the head moves), and learning with a modulation head: CTL drives KL(sigma || q) down."""

from __future__ import annotations

import pytest
import torch

from repulse.generation.generate import SamplingParams
from repulse.generation.stepwise import sample_categorical, sample_stepwise
from repulse.infra.checkpoint import load_trainable_state, trainable_state
from repulse.losses.lm import token_log_probs
from repulse.losses.proposal import PROPOSAL_LOSSES
from repulse.models.logprobs import forward_logits
from repulse.models.modulated import ModulatedLM, build_modulated, load_modulated
from repulse.models.proposal import LinearModulationHead, log_psi_from_modulation, modulated_logits
from repulse.rl.experience import proposal_experience, score
from repulse.rl.potentials import Potential
from repulse.rl.rollout import sample_rollout
from repulse.trainers.rl.proposal import ProposalLoss, proposal_loss
from tests.conftest import make_gpt2, make_tokenizer
from tests.unit.losses.test_proposal_losses import SEQS, N, T, V, _exact_kl_and_ess, _logits, _toy_target

MODULATIONS = ["modulation_linear_head", "modulation_nn_head", "modulation_model"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def frozen_base(tok, seed: int = 0):
    return make_gpt2(len(tok), seed=seed).eval().requires_grad_(False)


def proposal(tok, parameterization: str, base=None, **kwargs) -> ModulatedLM:
    base = base if base is not None else frozen_base(tok)
    lm = make_gpt2(len(tok), seed=1) if parameterization == "modulation_model" else None
    return build_modulated(parameterization, base, modulation_lm=lm, **kwargs)


def batch(tok):
    ids = torch.tensor([[0, 0, 5, 7, 9], [3, 4, 5, 6, 8]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_q_is_softmax_of_base_logits_plus_modulation(tok, parameterization):
    q = proposal(tok, parameterization).eval()
    ids, mask = batch(tok)
    out = q(input_ids=ids, attention_mask=mask)
    base_out = q.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    body = q.base if q.modulation_lm is None else q.modulation_lm
    m = q.head(body(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1])
    torch.testing.assert_close(out.logits.softmax(-1), (base_out.logits + m).softmax(-1))
    torch.testing.assert_close(out.base_logits, base_out.logits.log_softmax(-1))
    torch.testing.assert_close(out.modulation, m)


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_zero_output_layer_gives_q_equal_to_p(tok, parameterization):
    q = proposal(tok, parameterization).eval()
    last = q.head.linear if parameterization != "modulation_nn_head" else q.head.net[-1]
    torch.nn.init.zeros_(last.weight)
    ids, mask = batch(tok)
    log_q = q(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    log_p = q.base(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    torch.testing.assert_close(log_q, log_p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_parameters_are_the_head_and_modulation_lm_only(tok, parameterization):
    q = proposal(tok, parameterization)
    names = {n.split(".")[0] for n, _ in q.named_parameters()}
    assert names == ({"head", "modulation_lm"} if parameterization == "modulation_model" else {"head"})
    assert not any(p is b for p in q.parameters() for b in q.base.parameters())
    q.eval()
    assert not q.training and not q.base.training


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_cached_forward_equals_full_forward(tok, parameterization):
    q = proposal(tok, parameterization).eval()
    ids, mask = batch(tok)
    full = q(input_ids=ids, attention_mask=mask).logits
    first = q(input_ids=ids[:, :3], attention_mask=mask[:, :3], use_cache=True)
    rest = q(input_ids=ids[:, 3:], attention_mask=mask, past_key_values=first.past_key_values, use_cache=True)
    # Position ids come from the cache length here, so compare the row without left padding.
    torch.testing.assert_close(rest.logits[1], full[1, 3:], atol=1e-5, rtol=1e-5)


def test_stepwise_greedy_equals_hf_generate(tok):
    """The KV-cached loop decodes like Hugging Face generate, left padding and finished rows included."""
    model = frozen_base(tok)
    ids, mask = batch(tok)
    params = SamplingParams(max_new_tokens=5, greedy=True)
    ours = sample_stepwise(model, tok, ids, mask, params)
    theirs = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=5,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    assert torch.equal(ours, theirs[:, : ours.shape[1]])


def test_stepwise_sampling_equals_uncached_resampling(tok):
    """Same seed, same draws as re-running each whole row without a cache and sampling its last position."""
    model = frozen_base(tok)
    ids, mask = batch(tok)
    torch.manual_seed(4)
    ours = sample_stepwise(model, tok, ids, mask, SamplingParams(max_new_tokens=4, num_samples=3))
    torch.manual_seed(4)
    seq, seq_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    with torch.no_grad():
        for _ in range(ours.shape[1] - ids.shape[1]):
            probs = forward_logits(model, seq, seq_mask)[:, -1].softmax(-1)
            seq = torch.cat([seq, sample_categorical(probs)[:, None]], dim=1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], dim=1)
    assert torch.equal(ours[:, ids.shape[1] :], seq[:, ids.shape[1] :])


def test_modulated_sampling_draws_from_q(tok):
    q = proposal(tok, "modulation_linear_head").eval()
    ids, mask = batch(tok)
    with torch.no_grad():
        probs = forward_logits(q, ids, mask)[:, -1].softmax(-1).repeat_interleave(4, 0)
    torch.manual_seed(7)
    sampled = sample_stepwise(q, tok, ids, mask, SamplingParams(max_new_tokens=1, num_samples=4))[:, -1]
    torch.manual_seed(7)
    assert torch.equal(sampled, sample_categorical(probs))


@pytest.mark.parametrize("parameterization", MODULATIONS)
def test_save_load_and_checkpoint_state_round_trip(tmp_path, tok, parameterization):
    base = frozen_base(tok)
    q = proposal(tok, parameterization, base=base).eval()
    q.save_pretrained(tmp_path / "q")
    again = load_modulated(tmp_path / "q", base)
    ids, mask = batch(tok)
    torch.testing.assert_close(
        again(input_ids=ids, attention_mask=mask).logits, q(input_ids=ids, attention_mask=mask).logits
    )
    fresh = proposal(tok, parameterization, base=base, sd_divider=3.0)
    load_trainable_state(fresh, trainable_state(q))
    torch.testing.assert_close(
        fresh.eval()(input_ids=ids, attention_mask=mask).logits, q(input_ids=ids, attention_mask=mask).logits
    )


@pytest.mark.parametrize(
    ("parameterization", "loss_type"),
    [("modulation_linear_head", "ctl"), ("modulation_nn_head", "dpg"), ("modulation_model", "sixo_approxneg")],
)
def test_update_moves_only_the_proposal(tok, parameterization, loss_type):
    base = make_gpt2(len(tok)).train()  # trainable, as p_theta is in harmlessness training
    q = proposal(tok, parameterization, base=base)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    q_before = {k: v.clone() for k, v in q.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], lr=1e-2)
    prompts = [tok("this man is a")["input_ids"], tok("the woman is")["input_ids"]]
    roll = sample_rollout(q, tok, prompts, 4, SamplingParams(max_new_tokens=3))

    def reward(prompts, responses):
        return torch.tensor([float("good" in r) - 3.0 * ("jerk" in r) for r in responses])

    raw = score(reward, roll)
    exp = proposal_experience(roll, raw, Potential().log_phi(raw, beta=-1.0))
    for _ in range(2):
        loss, _ = proposal_loss(ProposalLoss(loss_type, parameterization, 4), q, exp, base)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(v, base_before[k]) for k, v in base.state_dict().items())
    assert base.training  # the proposal's scoring passes restore p_theta's mode
    assert [k for k, v in q.state_dict().items() if not torch.equal(v, q_before[k])]


# ---- Proposal learning with a modulation head: p frozen, q = p e^{W h + b}, h a one-hot of the context (tabular) ----
def test_e2_ctl_with_linear_modulation_head_reduces_kl_sigma_q(one_torch_thread):
    p1, p2, log_phi_all = _toy_target()
    log_sigma = torch.log_softmax(token_log_probs(_logits(p1, p2, SEQS), SEQS).sum(-1) + log_phi_all, 0)
    head = LinearModulationHead(V + 1, V).double()
    torch.nn.init.zeros_(head.linear.weight)  # q starts at p, as in the paper
    contexts = torch.eye(V + 1, dtype=torch.float64)  # row 0: the prompt; row 1 + v: after first token v

    def q_logits(seqs):
        m = head(contexts[torch.stack([torch.zeros_like(seqs[:, 0]), 1 + seqs[:, 0]], 1)])
        return modulated_logits(_logits(p1, p2, seqs), m), m

    def exact():
        with torch.no_grad():
            logits = q_logits(SEQS)[0]
        return _exact_kl_and_ess(logits[0, 0], torch.stack([logits[v * V, 1] for v in range(V)]), log_sigma)

    kl0, ess0 = exact()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    mask = torch.ones(N, T, dtype=torch.bool)
    torch.manual_seed(1)
    for _ in range(300):
        with torch.no_grad():
            first = torch.multinomial(q_logits(SEQS[:1])[0][0, 0].softmax(-1), N, replacement=True)
            second = torch.multinomial(q_logits(torch.stack([first, first], 1))[0][:, 1].softmax(-1), 1)
        seqs = torch.stack([first, second.squeeze(-1)], 1)  # ancestral samples from q
        logits, m = q_logits(seqs)
        base, prop = token_log_probs(_logits(p1, p2, seqs), seqs), token_log_probs(logits, seqs).detach()
        loss = PROPOSAL_LOSSES["ctl"](
            log_psi_from_modulation(m, seqs, mask), base, prop, log_phi_all[seqs[:, 0] * V + seqs[:, 1]], mask, N
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    kl, ess = exact()
    assert kl0 > 2.0 and ess0 < 0.15
    assert kl < 0.05 and ess > 0.9
