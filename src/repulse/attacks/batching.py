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
