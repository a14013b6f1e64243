"""Resumable batch samplers.

Training batches are cut from one seeded permutation per epoch: optimizer step k of an epoch uses
perm[k*B:(k+1)*B] (B = global batch), split into world_size x accumulation micro-batches, and process r takes
micro-batches r*accum ... (r+1)*accum - 1. One process with accumulation 2 therefore sees exactly the micro-batches
that two processes with accumulation 1 see, and resuming at step k needs only (epoch, k).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class GlobalBatchSampler:
    def __init__(
        self,
        num_examples: int,
        micro_batch_size: int,
        accumulation_steps: int,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.num_examples = num_examples
        self.micro = micro_batch_size
        self.accum = accumulation_steps
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start_step = 0

    @property
    def global_batch_size(self) -> int:
        return self.micro * self.accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_examples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_examples, generator=gen).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        perm = self._permutation()
        b = self.global_batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            batch = perm[step * b : (step + 1) * b]
            mine = batch[self.rank * self.micro * self.accum : (self.rank + 1) * self.micro * self.accum]
            for i in range(self.accum):
                yield mine[i * self.micro : (i + 1) * self.micro]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


class ShardSampler:
    """Evaluation / inference: process r takes examples r, r + world, ... in order, batched, nothing dropped.

    With `even`, the index list is first padded to a multiple of the world size by repeating its first examples
    (as torch's DistributedSampler does), so every rank runs the same number of batches: needed where a forward
    pass is a collective (ZeRO-3, FSDP2). `padding` is how many of this rank's indices (its last ones) repeat.
    """

    def __init__(
        self, num_examples: int, batch_size: int, world_size: int = 1, rank: int = 0, even: bool = False
    ) -> None:
        order = list(range(num_examples))
        if even and num_examples % world_size:
            extra = world_size - num_examples % world_size
            order += [order[i % num_examples] for i in range(extra)] if num_examples else []
        self.indices = order[rank::world_size]
        self.padding = sum(1 for i in range(rank, len(order), world_size) if i >= num_examples)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i : i + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size
