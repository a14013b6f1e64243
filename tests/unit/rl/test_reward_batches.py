"""LocalRewardModel's batches: at least batch_size rows, at most batch_size x TOKENS_PER_ROW padded tokens; the
rewards do not depend on how the rows are batched."""

from __future__ import annotations

import pytest
import torch

from repulse.assets import TINY_RM_DIR
from repulse.config.common import ModelArgs
from repulse.models.load import load_tokenizer
from repulse.models.reward import load_reward_model
from repulse.rl.rewards import LocalRewardModel


class Budget(LocalRewardModel):
    TOKENS_PER_ROW = 10

    def __init__(self, batch_size: int) -> None:  # batches() reads only batch_size and the budget
        self.batch_size = batch_size


def test_short_rows_fill_the_token_budget_and_long_rows_keep_batch_size():
    rm = Budget(batch_size=2)  # budget: 20 padded tokens
    assert rm.batches([4] * 10) == [(0, 5), (5, 10)]  # 5 rows x 4 tokens
    assert rm.batches([30] * 5) == [(0, 2), (2, 4), (4, 5)]  # never fewer than batch_size rows
    assert rm.batches([2, 2, 2, 9, 2]) == [(0, 3), (3, 5)]  # the long row would make 4 x 9 > 20: a new batch
    assert rm.batches([]) == []
    # every row lands in exactly one batch, in order
    lengths = [1, 7, 3, 12, 2, 2, 2, 5, 9, 1, 1]
    spans = rm.batches(lengths)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))
    assert all(b - a >= 2 or b == len(lengths) for a, b in spans)
    assert all((b - a) * max(lengths[a:b]) <= 20 or b - a <= 2 for a, b in spans)


@pytest.fixture(scope="module")
def tiny_rm():
    return load_reward_model(str(TINY_RM_DIR), ModelArgs()), load_tokenizer(str(TINY_RM_DIR))


def test_rewards_do_not_depend_on_the_batching(tiny_rm):
    model, tok = tiny_rm
    texts = [f"the man is {w}" * (1 + i % 3) for i, w in enumerate(["kind", "here", "a", "tall", "big", "old"] * 4)]
    one_by_one = torch.cat([LocalRewardModel(model, tok, batch_size=1)([""], [t]) for t in texts])
    batched = LocalRewardModel(model, tok, batch_size=4)([""] * len(texts), texts)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
