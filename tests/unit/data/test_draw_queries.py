"""forecast_rare_outputs' query set: drawn without replacement from one pool or blended from several."""

from __future__ import annotations

import pytest

from repulse.data.prompts import draw_queries, query_texts
from repulse.infra.errors import DataError

A = [f"a{i}" for i in range(100)]
B = [f"b{i}" for i in range(100)]


def test_one_pool_is_a_sample_without_replacement_or_all_of_it():
    drawn = draw_queries([A], [1.0], 10, seed=0)
    assert len(drawn) == len(set(drawn)) == 10 and set(drawn) <= set(A)
    assert draw_queries([A], [1.0], 10, seed=0) == drawn  # the seed decides
    assert draw_queries([A[:5]], [1.0], 10, seed=0) == A[:5]


def test_several_pools_are_blended_by_their_weights():
    drawn = draw_queries([A, B], [0.8, 0.2], 50, seed=1)
    assert len(drawn) == len(set(drawn)) == 50
    from_a = sum(q.startswith("a") for q in drawn)
    assert 32 <= from_a <= 48  # Binomial(50, 0.8): mean 40, sd 2.8
    assert sum(q.startswith("a") for q in draw_queries([A, B], [0.0, 1.0], 50, seed=1)) == 0


def test_an_exhausted_pool_leaves_the_draws_to_the_others():
    drawn = draw_queries([A[:3], B], [0.9, 0.1], 20, seed=2)
    assert set(A[:3]) <= set(drawn) and len(drawn) == len(set(drawn)) == 20
    assert sorted(draw_queries([A[:3], B[:2]], [0.5, 0.5], 20, seed=2)) == sorted(A[:3] + B[:2])


def test_a_query_that_is_not_text_names_its_row():
    with pytest.raises(DataError, match="row 2: 'prompt' is None"):
        query_texts(["ok", None], "prompt", "q.jsonl")
