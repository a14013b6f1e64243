"""last_token_index: where a reward is read, for right and left padding."""

from __future__ import annotations

import torch

from repulse.models.reward import last_token_index


def test_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]


def test_left_padding():
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 3, 3]


def test_bool_mask_and_single_column():
    assert last_token_index(torch.tensor([[True, True, False]])).tolist() == [1]
    assert last_token_index(torch.tensor([[1], [1]])).tolist() == [0, 0]


def test_gather_reads_the_last_real_value():
    values = torch.arange(12.0).reshape(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    picked = values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1)
    assert picked.tolist() == [1.0, 7.0, 11.0]
