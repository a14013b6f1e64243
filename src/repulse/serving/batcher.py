"""Dynamic batching: texts from concurrent requests are merged into one model call, run off the event loop.

Requests append a job (their texts and a future) to a queue on the event loop. One collector task takes up to
`batch_size` texts from the head of the queue and hands them to a single worker thread, so exactly one model
call runs at a time and the event loop keeps accepting requests meanwhile. Before a call it waits for more texts
to come, at most `max_wait_ms` after the oldest queued text arrived, and stops waiting as soon as as many texts
are queued as the previous call held: under steady load batches fill, and a lone client pays no wait. A request
larger than a batch is split across calls; each request's future resolves once all its texts are scored, with
the rewards in its own order. A model call that fails on a batch of several requests is retried request by
request, so a faulty text fails its own request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("repulse")


class BatcherClosedError(RuntimeError):
    """The server is shutting down and takes no new work."""


@dataclass(eq=False)
class Job:
    texts: list[str]
    future: asyncio.Future
    enqueued: float
    scores: list[float] = field(default_factory=list)
    taken: int = 0  # texts handed to a model call so far
    filled: int = 0  # texts scored so far

    def __post_init__(self) -> None:
        self.scores = [0.0] * len(self.texts)

    def settle(self, start: int, values: list[float]) -> None:
        self.scores[start : start + len(values)] = values
        self.filled += len(values)
        if self.filled == len(self.texts) and not self.future.done():
            self.future.set_result(self.scores)

    def fail(self, err: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(err)


Slice = tuple[Job, int, int]  # (job, first text, one past the last text)


class DynamicBatcher:
    """Merge texts of concurrent `submit` calls into calls of `score_fn(texts) -> rewards` (one at a time)."""

    def __init__(
        self,
        score_fn: Callable[[list[str]], list[float]],
        *,
        batch_size: int,
        max_wait_ms: float,
        disable_batching: bool = False,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self.score_fn = score_fn
        self.batch_size, self.max_wait_s = batch_size, max_wait_ms / 1000.0
        self.disable_batching, self.drain_timeout_s = disable_batching, drain_timeout_s
        self.queued_texts = 0  # texts waiting for a model call (the /health queue depth)
        # The load estimate: texts in the previous model call. A batch goes as soon as it holds this many,
        # so a lone client is not made to wait max_wait_ms for company that cannot come.
        self.expected_texts = batch_size
        self.model_calls = 0
        self.busy = False
        self._jobs: deque[Job] = deque()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup: asyncio.Event | None = None

    async def start(self) -> None:
        """Start the collector on the running loop (the app's lifespan calls this)."""
        self._wakeup = asyncio.Event()
        # One worker thread: model calls never overlap (memory stays that of one batch, and CPU threads of
        # torch are not split between two calls).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repulse-rm")
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="repulse-rm-batcher")

    async def submit(self, texts: list[str]) -> list[float]:
        """Rewards of `texts`, in order, once the model calls holding them have run."""
        if self._closing or self._task is None:
            raise BatcherClosedError("the reward server is shutting down")
        loop = asyncio.get_running_loop()
        job = Job(list(texts), loop.create_future(), loop.time())
        self._jobs.append(job)
        self.queued_texts += len(texts)
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stop taking work, finish what is queued or running (bounded by drain_timeout_s), stop the worker."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()  # a batch waiting to fill goes now: nothing else will arrive
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while (self._jobs or self.busy) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for job in self._jobs:
            job.fail(BatcherClosedError("the reward server shut down before this request was scored"))
        self._jobs.clear()
        self._task = None
        # Joined off the loop: a model call still running after the timeout finishes in its thread.
        await asyncio.to_thread(self._executor.shutdown, True)

    async def _collect_forever(self) -> None:
        while True:
            await self._wait_for_work()
            if not self.disable_batching:
                await self._wait_to_fill()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _wait_for_work(self) -> None:
        while not self._jobs:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _wait_to_fill(self) -> None:
        """Until as many texts are queued as the previous call held (at most batch_size), or the oldest has
        waited max_wait_ms."""
        loop = asyncio.get_running_loop()
        deadline = self._jobs[0].enqueued + self.max_wait_s
        want = min(self.batch_size, self.expected_texts)
        while self.queued_texts < want and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[Slice]:
        """Up to batch_size texts from the head of the queue (one whole job when batching is off)."""
        room = float("inf") if self.disable_batching else self.batch_size
        batch: list[Slice] = []
        while self._jobs and room > 0:
            job = self._jobs[0]
            if job.future.done():  # the client went away (request cancelled): skip its texts
                self._jobs.popleft()
                self.queued_texts -= len(job.texts) - job.taken
                continue
            n = int(min(len(job.texts) - job.taken, room))
            batch.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            self.queued_texts -= n
            if job.taken == len(job.texts):
                self._jobs.popleft()
            if self.disable_batching:
                break
        if batch:
            self.expected_texts = sum(stop - start for _, start, stop in batch)
        return batch

    async def _run(self, batch: list[Slice]) -> None:
        """One model call for the batch. If it fails and the batch holds several requests, each request's texts
        are scored again on their own, so one faulty text fails only the request that sent it."""
        self.busy = True
        try:
            try:
                scores = await self._call([t for job, start, stop in batch for t in job.texts[start:stop]])
            except Exception as err:  # noqa: BLE001  (the server goes on; the requests get the error)
                if len(batch) == 1:
                    log.exception("reward model call on %d texts failed", batch[0][2] - batch[0][1])
                    batch[0][0].fail(err)
                    return
                log.warning("a model call on %d requests failed (%s); scoring each on its own", len(batch), err)
                await self._run_each(batch)
                return
        finally:
            self.busy = False
        offset = 0
        for job, start, stop in batch:
            job.settle(start, scores[offset : offset + stop - start])
            offset += stop - start

    async def _run_each(self, batch: list[Slice]) -> None:
        for job, start, stop in batch:
            if job.future.done():  # failed in an earlier part, or the client went away
                continue
            try:
                job.settle(start, await self._call(job.texts[start:stop]))
            except Exception as err:  # noqa: BLE001
                log.exception("reward model call on %d texts of one request failed", stop - start)
                job.fail(err)

    async def _call(self, texts: list[str]) -> list[float]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.score_fn, texts)
        finally:
            self.model_calls += 1
