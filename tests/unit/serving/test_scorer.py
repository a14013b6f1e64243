"""Scoring without HTTP: tokenization and truncation as train_rm's, the cap at the model's positions,
normalization rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from repulse.infra.errors import UserError
from repulse.serving.scorer import normalization_stats
from tests.unit.serving.conftest import STATS
from tests.unit.serving.reference import reference_rewards

TEXTS = ["this man is a good man .", "a", "", "the woman is so very nice and kind ."]


def test_max_len_is_capped_at_the_models_positions(load, caplog):
    caplog.set_level("INFO", logger="repulse")
    scorer = load(max_len=2048)
    positions = scorer.model.config.n_positions
    assert scorer.max_len == positions
    assert f"--max_len 2048 is more than the model's {positions} positions" in caplog.text
    text = " ".join(["this man is a very good man ."] * 20)  # far more tokens than positions
    assert len(scorer.tokenizer(text)["input_ids"]) > positions
    got = torch.tensor(scorer.score_texts([text, "a"]))
    want = reference_rewards(scorer.model, scorer.tokenizer, [text, "a"], max_len=positions)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_normalization_rules():
    plain = SimpleNamespace()
    stored = SimpleNamespace(normalize_reward=True, mean=1.0, std=2.0)
    stats_off = SimpleNamespace(normalize_reward=False, mean=1.0, std=2.0)
    assert normalization_stats(plain, force=False) is None
    assert normalization_stats(stored, force=False) == (1.0, 2.0)
    assert normalization_stats(stats_off, force=False) is None  # the config decides by default
    assert normalization_stats(stats_off, force=True) == (1.0, 2.0)  # the flag forces the stored stats
    with pytest.raises(UserError, match="--normalize_reward"):
        normalization_stats(plain, force=True)


def test_scorer_equals_in_process_rewards_with_normalization(rm_dir_norm, load):
    scorer = load(reward_pretrain=str(rm_dir_norm), batch_size=3)
    assert scorer.stats == STATS
    got = torch.tensor(scorer.score_texts(TEXTS))
    want = reference_rewards(scorer.model, scorer.tokenizer, TEXTS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    raw = reference_rewards(scorer.model, scorer.tokenizer, TEXTS, normalize=False)
    torch.testing.assert_close(got, (raw - STATS[0]) / STATS[1], atol=1e-5, rtol=1e-5)
    assert scorer.calls.calls == 2 and scorer.calls.largest == 3  # 4 texts in calls of at most batch_size


def test_normalize_flag_without_stats_fails_at_load(load):
    with pytest.raises(UserError, match="no 'mean'/'std'"):
        load(normalize_reward=True)


def test_missing_head_is_a_user_error(load):
    with pytest.raises(UserError, match="value_head_prefix"):
        load(value_head_prefix="value_head")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error(load):
    with pytest.raises(UserError, match="no CUDA GPU"):
        load(device="cuda")
