"""Run a batched computation in chunks, halving the chunk size whenever the device runs out of memory."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("repulse")


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class BackoffBatcher:
    """Calls `fn(start, end)` over [0, n) in chunks of `batch_size` rows; on out-of-memory halves the size.

    The reduced size is kept for later calls, so one attack pays for the search only once.
    """

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size

    def map(self, fn: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
        size = min(self.batch_size or n, n)
        out, start = [], 0
        while start < n:
            end = min(start + size, n)
            try:
                out.append(fn(start, end))
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or size == 1:
                    raise
                size = max(size // 2, 1)
                self.batch_size = size
                log.warning("out of memory: retrying with batch size %d", size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start = end
        return torch.cat(out)


# What one extra forward pass costs, in row-tokens of work. CPU: measured on SmolLM2-135M with 2 cores (a forward
# has a fixed cost of about 64 ms, a row-token about 2 ms: the weights are streamed once per call). Accelerators:
# an estimate, not measured here. Kernel launches make the fixed cost of a forward worth ~1,000 row-tokens of a
# 135M model but ~150 of a 7B one; 256 keeps the grouping from costing more than it saves on small models, while
# large ones, where the saving matters, still get most of it. A constant (not a timing) keeps the grouping, and
# so the float rounding of the losses, the same from run to run.
FORWARD_OVERHEAD_ROW_TOKENS = {"cpu": 32, "other": 256}


def forward_overhead(device: torch.device) -> int:
    return FORWARD_OVERHEAD_ROW_TOKENS["cpu" if device.type == "cpu" else "other"]


def shared_prefix_groups(
    first: list[int], counts: list[int], total: int, overhead: int = FORWARD_OVERHEAD_ROW_TOKENS["cpu"]
) -> list[int]:
    """Group start for each distinct first-edit position: which KV-cache length each group of rows reuses.

    `first` are the distinct positions (ascending) where candidates first differ from the reference suffix,
    `counts` how many rows have each, `total` how many tokens a row fed from position 0 holds (suffix and
    what follows it). A group that starts at position d feeds its rows from d on, so merging groups wastes
    work, and every group costs one more forward pass (`overhead` row-tokens). Returns, per entry of `first`,
    the start of its group, chosen by dynamic programming to minimise the total cost.
    """
    m = len(first)
    best, cut = [0.0] * (m + 1), [0] * (m + 1)
    for j in range(1, m + 1):  # best[j]: cost of entries [0, j); the last group is [i, j)
        rows, cost_j = 0, []
        for i in range(j - 1, -1, -1):
            rows += counts[i]
            cost_j.append((best[i] + overhead + rows * (total - first[i]), i))
        best[j], cut[j] = min(cost_j)
    starts, j = [0] * m, m
    while j > 0:
        i = cut[j]
        starts[i:j] = [first[i]] * (j - i)
        j = i
    return starts
