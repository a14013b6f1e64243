"""lm_loss and the masked reductions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.lm import lm_loss, token_log_probs
from repulse.losses.reductions import masked_mean, masked_sum

# One sequence of 3 tokens over a vocabulary of 3.
#   position 0: logits [0, 0, 0]      -> softmax [1/3, 1/3, 1/3]; it predicts input_ids[1] = 1: p = 1/3
#   position 1: logits [0, ln 2, 0]   -> softmax [1/4, 2/4, 1/4]; it predicts input_ids[2] = 2: p = 1/4
#   position 2: logits [9, 9, 9]      -> predicts nothing (no token after the last one)
LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [9.0, 9.0, 9.0]]])
INPUT_IDS = torch.tensor([[0, 1, 2]])


def test_token_log_probs_by_hand():
    logps = token_log_probs(LOGITS[:, :-1], INPUT_IDS[:, 1:])
    assert logps.shape == (1, 2)
    assert logps[0].tolist() == pytest.approx([math.log(1 / 3), math.log(1 / 4)], abs=1e-6)


@pytest.mark.parametrize("first", [True, False])  # loss_mask[:, 0] is ignored
def test_lm_loss_both_tokens(first):
    loss = lm_loss(LOGITS, INPUT_IDS, torch.tensor([[first, True, True]]))
    # mean NLL = (ln 3 + ln 4) / 2 = ln 12 / 2
    assert loss.item() == pytest.approx(math.log(12.0) / 2, abs=1e-6)


def test_lm_loss_only_last_token():
    loss = lm_loss(LOGITS, INPUT_IDS, torch.tensor([[True, False, True]]))
    assert loss.item() == pytest.approx(math.log(4.0), abs=1e-6)


def test_lm_loss_only_first_prediction():
    loss = lm_loss(LOGITS, INPUT_IDS, torch.tensor([[False, True, False]]))
    assert loss.item() == pytest.approx(math.log(3.0), abs=1e-6)


def test_lm_loss_token_weighted_across_rows():
    # Row 0 trains 2 tokens (NLL ln 3 and ln 4); row 1 trains 1 token with uniform logits over 3 (NLL ln 3).
    # Token-weighted mean: (ln 3 + ln 4 + ln 3) / 3 -- not the mean of per-row means.
    logits = torch.cat([LOGITS, torch.zeros(1, 3, 3)])
    ids = torch.tensor([[0, 1, 2], [0, 2, 0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    expected = (2 * math.log(3.0) + math.log(4.0)) / 3
    assert lm_loss(logits, ids, mask).item() == pytest.approx(expected, abs=1e-6)


def test_lm_loss_nothing_trained_is_zero():
    assert lm_loss(LOGITS, INPUT_IDS, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_lm_loss_gradient_only_on_trained_positions():
    logits = LOGITS.clone().requires_grad_(True)
    lm_loss(logits, INPUT_IDS, torch.tensor([[False, False, True]])).backward()
    grad = logits.grad[0]
    # Only position 1 (predicting token 2) is trained: d NLL / d logits = softmax - onehot(2), divided by 1 token.
    assert grad[1].tolist() == pytest.approx([0.25, 0.5, -0.75], abs=1e-6)
    assert grad[0].abs().sum().item() == 0.0
    assert grad[2].abs().sum().item() == 0.0


def test_half_precision_logits_are_upcast():
    logps = token_log_probs(LOGITS[:, :-1].to(torch.bfloat16), INPUT_IDS[:, 1:])
    assert logps.dtype == torch.float32


def test_masked_mean_and_sum():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert masked_sum(values, mask).item() == 4.0
    assert masked_mean(values, mask).item() == 2.0  # (1 + 3) / 2
    assert masked_sum(values, mask, dim=1).tolist() == [4.0, 0.0]
    assert masked_mean(values, mask, dim=1).tolist() == [2.0, 0.0]  # an empty row gives 0, not NaN
    assert masked_mean(values, mask, dim=0).tolist() == [1.0, 0.0, 3.0]


def test_masked_mean_all_empty():
    values = torch.tensor([[1.0, 2.0]])
    assert masked_mean(values, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_masked_mean_float_mask_weights():
    values = torch.tensor([2.0, 4.0])
    assert masked_mean(values, torch.tensor([1.0, 1.0])).item() == 3.0


def test_masked_mean_gradient_ignores_masked_and_nan_free():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    masked_mean(values, mask, dim=1).sum().backward()
    assert values.grad.tolist() == [[0.5, 0.5], [0.0, 0.0]]
