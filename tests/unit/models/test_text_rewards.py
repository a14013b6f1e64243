"""score_texts / TextRewards: a saved reward model scored from Python exactly as the project's own scorers do."""

from __future__ import annotations

import json

import pytest
import torch

from repulse.assets import TINY_RM_DIR

PROMPTS = ["This man is a", "That kid is", "Our nurse is so"]
RESPONSES = [" kind man .", " a total jerk !", " lucky and intelligent ."]
TEXTS = [p + r for p, r in zip(PROMPTS, RESPONSES)]


@pytest.fixture(scope="module")
def ours() -> torch.Tensor:
    from repulse.models.reward import score_texts

    return torch.tensor(score_texts(str(TINY_RM_DIR), TEXTS))


def test_equals_the_rl_and_batch_inference_scorer(ours):
    from repulse.config.common import ModelArgs
    from repulse.models.load import load_tokenizer
    from repulse.models.reward import load_reward_model
    from repulse.rl.rewards import LocalRewardModel

    local = LocalRewardModel(load_reward_model(str(TINY_RM_DIR), ModelArgs()), load_tokenizer(str(TINY_RM_DIR)))
    torch.testing.assert_close(ours, local(PROMPTS, RESPONSES), rtol=1e-5, atol=1e-5)


def test_equals_the_serve_rm_scorer(ours):
    from repulse.config.common import ModelArgs
    from repulse.models.load import load_tokenizer
    from repulse.models.reward import load_reward_model
    from repulse.serving.scorer import RewardScorer

    model = load_reward_model(str(TINY_RM_DIR), ModelArgs())
    served = RewardScorer(model, load_tokenizer(str(TINY_RM_DIR)), max_len=64).score_texts(TEXTS)
    torch.testing.assert_close(ours, torch.tensor(served), rtol=1e-5, atol=1e-5)


def test_is_plain_transformers_with_eos_and_the_stored_normalization(ours):
    """The recipe the README gives for plain transformers; without the EOS the scores are different numbers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = json.loads((TINY_RM_DIR / "config.json").read_text())
    assert config["normalize_reward"] is True
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_RM_DIR))
    model = AutoModelForSequenceClassification.from_pretrained(str(TINY_RM_DIR)).eval()

    def plain(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            rewards = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0] for t in texts]
        return (torch.stack(rewards) - config["mean"]) / config["std"]

    torch.testing.assert_close(ours, plain([t + tokenizer.eos_token for t in TEXTS]), rtol=1e-5, atol=1e-5)
    assert (ours - plain(TEXTS)).abs().max() > 0.05


def test_keeps_the_scored_eos_when_a_text_is_longer_than_the_model(ours):
    from repulse.models.reward import TextRewards

    scorer = TextRewards.from_pretrained(str(TINY_RM_DIR))
    long_text = "This man is " + "very " * 100 + "kind ."
    (reward,) = scorer([long_text]).tolist()
    assert torch.isfinite(torch.tensor(reward))
    assert scorer([]).numel() == 0
