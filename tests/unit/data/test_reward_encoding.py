"""One encoding of a text for reward scoring: the whole text + EOS, its first max_len tokens, as train_rm trains.
Every scorer (RL's LocalRewardModel, serve_rm's RewardScorer, TextRewards) reads the reward where training did."""

from __future__ import annotations

import pytest
import torch

from repulse.data.tokenize import encode_for_reward, encode_pair
from tests.conftest import make_tokenizer
from tests.unit.serving.rm_fixture import build_tiny_rm

TEXTS = ["this man is a good man .", "a", "", "the woman is so very nice and kind ."]
LONG = "the woman is so very nice and kind ."


def test_encode_matches_training_tokenization_and_appends_eos():
    tok = make_tokenizer()
    encoded = encode_for_reward(tok, TEXTS, max_len=1000)
    assert encoded == [encode_pair(tok, "", t, 1000)[0] for t in TEXTS]
    assert all(ids[-1] == tok.eos_token_id for ids in encoded)
    assert encode_for_reward(tok, TEXTS) == encoded  # no max_len: nothing cut
    # A text that already ends with EOS gets no second one (encode_pair's rule).
    assert encode_for_reward(tok, ["a good man<eos>"], 100)[0].count(tok.eos_token_id) == 1


def test_truncation_keeps_the_first_tokens_as_train_rm():
    tok = make_tokenizer()
    full = encode_for_reward(tok, [LONG])[0]
    cut = encode_for_reward(tok, [LONG], max_len=4)[0]
    assert len(full) > 4 and cut == full[:4]
    assert cut == encode_pair(tok, "the woman is", LONG.removeprefix("the woman is"), 4)[0]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    from repulse.config.common import ModelArgs
    from repulse.models.load import load_tokenizer
    from repulse.models.reward import load_reward_model

    path = str(build_tiny_rm(tmp_path_factory.mktemp("rm")))
    return load_reward_model(path, ModelArgs()).eval(), load_tokenizer(path)


def direct(model, ids: list[int]) -> float:
    from repulse.models.reward import sequence_rewards

    tensor = torch.tensor([ids])
    with torch.inference_mode():
        return sequence_rewards(model, tensor, torch.ones_like(tensor), "score").item()


def test_every_scorer_scores_a_long_text_at_the_token_training_reads(tiny_rm):
    from repulse.models.reward import TextRewards
    from repulse.rl.rewards import LocalRewardModel
    from repulse.serving.scorer import RewardScorer

    model, tok = tiny_rm
    full = encode_for_reward(tok, [LONG])[0]
    as_trained, from_the_end = direct(model, full[:4]), direct(model, full[-4:])
    assert abs(as_trained - from_the_end) > 1e-4  # the two directions give different rewards on this model
    rl = LocalRewardModel(model, tok, max_len=4)(["the woman is"], [LONG.removeprefix("the woman is")]).item()
    served = RewardScorer(model, tok, max_len=4).score_texts([LONG])[0]
    texts = TextRewards(model, tok)
    texts.max_len = 4
    for got in (rl, served, texts([LONG]).item()):
        assert got == pytest.approx(as_trained, abs=1e-5)
