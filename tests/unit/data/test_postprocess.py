"""Post-processors of scored generations: rejection sampling, conditional SFT, iterative DPO."""

from __future__ import annotations

import pytest

from repulse.data.postprocess import normalize_rewards, post_process
from repulse.infra.errors import DataError

ROWS = [
    {"input": "a", "output": "x", "reward": 0.5},
    {"input": "b", "output": "p", "reward": -1.0},
    {"input": "a", "output": "y", "reward": 2.0},
    {"input": "a", "output": "z", "reward": -3.0},
    {"input": "b", "output": "q", "reward": 1.0},
]


def test_rejection_sampling_keeps_the_best_output_per_input_in_first_seen_order():
    out = post_process("rs", ROWS)
    assert out == [{"input": "a", "output": "y", "reward": 2.0}, {"input": "b", "output": "q", "reward": 1.0}]


def test_conditional_sft_writes_the_reward_into_every_input():
    out = post_process("csft", ROWS)
    assert len(out) == len(ROWS)
    assert out[0] == {"input": "a <rm_score>: 0.50 ", "output": "x", "reward": 0.5}
    custom = post_process("csft", ROWS[:1], reward_template="[{reward}] {input}")
    assert custom[0]["input"] == "[0.50] a"


def test_iterative_dpo_pairs_best_against_worst():
    out = post_process("iter_dpo", ROWS)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("a", "y", "z"), ("b", "q", "p")]
    assert out[0]["chosen_reward"] == 2.0 and out[0]["rejected_reward"] == -3.0


def test_iterative_dpo_skips_inputs_without_a_reward_difference_and_fails_when_none_is_left():
    rows = [*ROWS, {"input": "c", "output": "s", "reward": 1.0}, {"input": "c", "output": "t", "reward": 1.0}]
    assert [r["prompt"] for r in post_process("iter_dpo", rows)] == ["a", "b"]
    with pytest.raises(DataError, match="no input"):
        post_process("iter_dpo", rows[-2:])


def test_chat_message_inputs_group_by_content():
    msgs = [{"role": "user", "content": "hi"}]
    rows = [{"input": list(msgs), "output": "1", "reward": 0.0}, {"input": list(msgs), "output": "2", "reward": 1.0}]
    assert post_process("rs", rows)[0]["output"] == "2"
    with pytest.raises(DataError, match="text inputs"):
        post_process("csft", rows)


def test_normalize_gives_z_scores_and_none_passes_rows_through():
    z = [r["reward"] for r in normalize_rewards(ROWS)]
    assert sum(z) == pytest.approx(0.0, abs=1e-12)
    assert sum(v * v for v in z) / (len(z) - 1) == pytest.approx(1.0)
    assert post_process(None, ROWS) is ROWS
    assert [r["reward"] for r in post_process(None, ROWS, normalize=True)] == pytest.approx(z)


def test_rows_without_reward_and_unknown_processor_are_errors():
    with pytest.raises(DataError, match="reward"):
        post_process("rs", [{"input": "a", "output": "x"}])
    with pytest.raises(DataError, match="unknown post-processor"):
        post_process("nope", ROWS)
