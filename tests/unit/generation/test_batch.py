"""batch_inference's engine: sharding, ordered gathering across processes, best-of-N rows, token budgets."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from repulse.config.sampling import GenerationArgs
from repulse.generation import batch
from repulse.infra.errors import UserError
from tests.conftest import make_gpt2


class ThreadWorld:
    """`world_size` strategies in threads of one process whose all_gather really exchanges tensors."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size)

    def strategy(self, rank: int):
        world = self

        def all_gather(tensor: torch.Tensor) -> torch.Tensor:
            world.slots[rank] = tensor.clone()
            world.barrier.wait()
            out = torch.cat(world.slots)  # type: ignore[arg-type]
            world.barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return out

        return SimpleNamespace(
            rank=rank, world_size=world.world_size, device=torch.device("cpu"), all_gather=all_gather
        )


def run_ranks(world_size: int, body) -> list:
    world, results = ThreadWorld(world_size), [None] * world_size

    def target(rank: int) -> None:
        results[rank] = body(world.strategy(rank))

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_shards_cover_every_item_once():
    shards = [batch.shard_indices(7, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_gather_objects_returns_every_rank_payload_in_rank_order():
    payloads = [{"rank": 0, "text": "x" * 100}, ["short"], None]
    out = run_ranks(3, lambda s: batch.gather_objects(s, payloads[s.rank]))
    assert out == [payloads] * 3


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_map_sharded_keeps_item_order_whatever_the_world_size(world_size):
    items = [f"item{i}" for i in range(5)]
    out = run_ranks(world_size, lambda s: batch.map_sharded(s, items, lambda mine: [x.upper() for x in mine]))
    assert all(o == [x.upper() for x in items] for o in out)


def test_map_sharded_with_more_processes_than_items():
    out = run_ranks(3, lambda s: batch.map_sharded(s, ["a"], lambda mine: [len(x) for x in mine]))
    assert out == [[1]] * 3


def test_rows_and_best_of_n():
    rows = batch.rows_from_groups(["p", "q"], [["a", "b"], ["c", "d"]], [0.1, 0.9, 0.5, 0.5])
    assert [(r["input"], r["output"]) for r in rows] == [("p", "a"), ("p", "b"), ("q", "c"), ("q", "d")]
    best = batch.best_per_input(rows, 2)
    assert [(r["input"], r["output"], r["reward"]) for r in best] == [("p", "b", 0.9), ("q", "c", 0.5)]
    assert "reward" not in batch.rows_from_groups(["p"], [["a"]], None)[0]


def test_prompts_are_truncated_from_the_left(tiny_tokenizer):
    ids = batch.encode_prompts_left_truncated(tiny_tokenizer, ["this man is very good", "a"], max_len=3)
    full = tiny_tokenizer("this man is very good")["input_ids"]
    assert ids[0] == full[-3:] and len(ids[1]) == 1


def test_new_tokens_are_capped_by_the_context_length():
    config = SimpleNamespace(n_positions=16)
    assert batch.cap_new_tokens(config, [[1] * 10, [1] * 4], 100) == 6
    assert batch.cap_new_tokens(config, [[1] * 4], 5) == 5
    assert batch.cap_new_tokens(SimpleNamespace(), [[1] * 40], 7) == 7
    with pytest.raises(UserError, match="--max_len"):
        batch.cap_new_tokens(config, [[1] * 16], 4)


def test_sampling_params_follow_the_flags():
    args = GenerationArgs(temperature=0.7, top_p=0.9, top_k=5, repetition_penalty=1.2)
    p = batch.sampling_params(args, max_new_tokens=5, num_samples=3)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.num_samples, p.greedy) == (
        0.7,
        0.9,
        5,
        1.2,
        3,
        False,
    )


def test_sample_groups_gives_n_texts_per_prompt_and_greedy_ignores_batching(tiny_tokenizer):
    model = make_gpt2(len(tiny_tokenizer), seed=1).eval()
    ids = batch.encode_prompts_left_truncated(tiny_tokenizer, ["this man is", "the woman"], 8)
    sampled = batch.sampling_params(GenerationArgs(), 3, 4)
    groups = batch.sample_groups(model, tiny_tokenizer, ids, sampled, batch_size=1)
    assert [len(g) for g in groups] == [4, 4]
    greedy = batch.sampling_params(GenerationArgs(greedy_sampling=True), 3, 1)
    together = batch.sample_groups(model, tiny_tokenizer, ids, greedy, batch_size=2)
    assert batch.sample_groups(model, tiny_tokenizer, ids[1:], greedy, batch_size=2)[0] == together[1]


def test_greedy_best_of_n_is_a_flag_error():
    from repulse.cli.batch_inference import parse_args
    from repulse.config.fields import ConfigError

    with pytest.raises(ConfigError, match="--best_of_n"):
        parse_args(["--output_path", "x", "--greedy_sampling", "--best_of_n", "2"])
