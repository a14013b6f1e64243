"""The sampler's log-probs are those of the model's own distribution, equal to a scoring pass over the samples
(so RL never runs a model on its own samples again), for plain LMs and the modulated proposal alike."""

from __future__ import annotations

import pytest
import torch

from repulse.generation.generate import SamplingParams
from repulse.models.modulated import build_modulated
from repulse.rl.rollout import response_token_logps, sample_rollout
from tests.conftest import make_gpt2, make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def prompts(tok) -> list[list[int]]:
    return [tok("this man is a")["input_ids"], tok("the woman is")["input_ids"], tok("so")["input_ids"]]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=5),
        # temperature and top-k change how tokens are drawn, not the log-probs RL needs: the model's own
        SamplingParams(max_new_tokens=5, temperature=0.7, top_k=5),
    ],
    ids=["ancestral", "temperature_top_k"],
)
@pytest.mark.parametrize("kind", ["lm", "modulated"])
def test_sampling_logps_equal_a_scoring_pass(tok, one_torch_thread, params, kind):
    torch.manual_seed(0)
    model = make_gpt2(len(tok), seed=2).train()  # the sampler and the scoring pass both switch to eval mode
    if kind == "modulated":
        model = build_modulated("modulation_nn_head", model.eval(), sd_divider=0.5)
    roll = sample_rollout(model, tok, prompts(tok), 4, params, batch_size=2)
    scored = response_token_logps(model, roll)
    assert roll.logps.shape == roll.action_mask.shape == scored.shape
    torch.testing.assert_close(roll.logps, scored, rtol=1e-5, atol=1e-5)
    assert bool((roll.logps[~roll.action_mask] == 0).all())  # nothing after EOS
    assert bool((roll.logps[roll.action_mask] < 0).all())


def test_rows_select_and_move_carry_the_logps(tok):
    roll = sample_rollout(make_gpt2(len(tok)), tok, prompts(tok), 2, SamplingParams(max_new_tokens=3))
    assert torch.equal(roll.rows(2, 4).logps, roll.logps[2:4])
    index = torch.tensor([5, 0])
    assert torch.equal(roll.select(index).logps, roll.logps[index])
    assert torch.equal(roll.to(torch.device("cpu")).logps, roll.logps)
