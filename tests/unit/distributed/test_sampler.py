"""GlobalBatchSampler (training) and ShardSampler (evaluation) invariants."""

from __future__ import annotations

import pytest

from repulse.distributed.sampler import GlobalBatchSampler, ShardSampler


def micro_batches(n, micro, accum, world=1, rank=0, seed=0, epoch=0, start_step=0, shuffle=True):
    sampler = GlobalBatchSampler(n, micro, accum, world, rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch, start_step=start_step)
    return list(sampler)


def test_shapes_and_length():
    # 23 examples, global batch 2 x 3 = 6 -> 3 full optimizer steps (18 examples), 5 dropped.
    batches = micro_batches(23, 2, 3)
    assert len(batches) == 9 == len(GlobalBatchSampler(23, 2, 3))
    assert all(len(b) == 2 for b in batches)
    assert GlobalBatchSampler(23, 2, 3).steps_per_epoch == 3


@pytest.mark.parametrize(("n", "micro", "accum", "world"), [(23, 2, 3, 1), (40, 3, 2, 2), (17, 1, 1, 4)])
def test_each_example_at_most_once_per_epoch(n, micro, accum, world):
    seen = [i for rank in range(world) for b in micro_batches(n, micro, accum, world, rank) for i in b]
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(n))
    steps = n // (micro * accum * world)
    assert len(seen) == steps * micro * accum * world


def test_no_shuffle_is_in_order():
    assert micro_batches(7, 2, 1, shuffle=False) == [[0, 1], [2, 3], [4, 5]]


def test_world2_accum1_equals_world1_accum2():
    n, micro = 30, 3
    single = micro_batches(n, micro, accum=2, world=1, seed=5)
    rank0 = micro_batches(n, micro, accum=1, world=2, rank=0, seed=5)
    rank1 = micro_batches(n, micro, accum=1, world=2, rank=1, seed=5)
    # Step k of the single process uses micro-batches 2k (what rank 0 sees) and 2k+1 (rank 1), in that order.
    assert len(single) == 2 * len(rank0) == 2 * len(rank1) == 10
    for step in range(len(rank0)):
        assert single[2 * step] == rank0[step]
        assert single[2 * step + 1] == rank1[step]


def test_world2_accum2_equals_world1_accum4():
    n, micro = 40, 2
    single = micro_batches(n, micro, accum=4, world=1, seed=1)
    ranks = [micro_batches(n, micro, accum=2, world=2, rank=r, seed=1) for r in range(2)]
    for step in range(n // 8):
        # Rank r's micro-batches of a step, concatenated over ranks = the single process' step.
        merged = ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]
        assert single[4 * step : 4 * step + 4] == merged


@pytest.mark.parametrize("k", [0, 1, 3])
def test_start_step_skips_exactly_k_global_batches(k):
    full = micro_batches(30, 2, 3, seed=2, epoch=1)
    resumed = micro_batches(30, 2, 3, seed=2, epoch=1, start_step=k)
    assert resumed == full[k * 3 :]  # 3 micro-batches per optimizer step
    sampler = GlobalBatchSampler(30, 2, 3, seed=2)
    sampler.set_epoch(1, start_step=k)
    assert len(sampler) == len(resumed) == (5 - k) * 3


def test_start_step_is_per_epoch():
    sampler = GlobalBatchSampler(30, 2, 3, seed=2)
    sampler.set_epoch(0, start_step=2)
    sampler.set_epoch(1)
    assert list(sampler) == micro_batches(30, 2, 3, seed=2, epoch=1)


def test_epochs_differ_and_seed_is_deterministic():
    e0 = micro_batches(50, 5, 2, seed=3, epoch=0)
    e1 = micro_batches(50, 5, 2, seed=3, epoch=1)
    assert e0 != e1
    assert sorted(i for b in e0 for i in b) == sorted(i for b in e1 for i in b) == list(range(50))
    assert micro_batches(50, 5, 2, seed=3, epoch=1) == e1
    assert micro_batches(50, 5, 2, seed=4, epoch=1) != e1


def test_reiterating_gives_the_same_batches():
    sampler = GlobalBatchSampler(20, 2, 2, seed=9)
    assert list(sampler) == list(sampler)


def test_fewer_examples_than_one_global_batch():
    assert micro_batches(5, 2, 2, world=2) == []


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 1), (10, 3, 3), (7, 2, 2), (2, 4, 4), (0, 2, 2)])
def test_shard_sampler_covers_every_index_once(n, batch, world):
    samplers = [ShardSampler(n, batch, world, rank) for rank in range(world)]
    seen = [i for s in samplers for b in s for i in b]
    assert sorted(seen) == list(range(n))
    for s in samplers:
        batches = list(s)
        assert len(batches) == len(s)
        assert all(0 < len(b) <= batch for b in batches)


def test_shard_sampler_strided_order():
    # Rank 1 of 3 over 10 examples takes 1, 4, 7 in batches of 2.
    assert list(ShardSampler(10, 2, 3, 1)) == [[1, 4], [7]]


@pytest.mark.parametrize(("n", "world", "batch"), [(7, 2, 2), (10, 4, 3), (3, 4, 1), (8, 2, 3)])
def test_even_shards_run_the_same_number_of_batches(n, world, batch):
    """Under ZeRO-3/FSDP2 a forward is a collective: every rank needs as many batches as the others."""
    samplers = [ShardSampler(n, batch, world, rank, even=True) for rank in range(world)]
    assert len({len(s) for s in samplers}) == 1
    real = [i for s in samplers for i in s.indices[: len(s.indices) - s.padding]]
    assert sorted(real) == list(range(n))  # every example once, once the repeats are left out
    assert sum(s.padding for s in samplers) == (-n) % world
    plain = [ShardSampler(n, batch, world, rank) for rank in range(world)]
    assert sorted(i for s in plain for i in s.indices) == list(range(n)) and all(s.padding == 0 for s in plain)
