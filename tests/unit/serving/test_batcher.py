"""DynamicBatcher with a fake model: merging, order, splitting, the no-batching baseline, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from repulse.serving.batcher import BatcherClosedError, DynamicBatcher


class FakeModel:
    """Scores a text as its length; records every call's texts and the thread it ran on."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return [float(len(t)) for t in texts]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def with_batcher(model, body, **kwargs):
    batcher = DynamicBatcher(model, **{"batch_size": 8, "max_wait_ms": 50.0, **kwargs})
    await batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.close()


def requests_of(n: int, size: int = 1) -> list[list[str]]:
    return [["x" * (i + 1 + j) for j in range(size)] for i in range(n)]


def test_concurrent_requests_share_model_calls_and_keep_their_order():
    model, reqs = FakeModel(), requests_of(20, size=2)

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit(r) for r in reqs))

    results = run(with_batcher(model, body))
    assert results == [[float(len(t)) for t in r] for r in reqs]
    assert len(model.calls) == 5  # 40 texts in calls of 8
    assert all(len(c) <= 8 for c in model.calls)
    assert model.threads and threading.current_thread().name not in model.threads  # off the event loop thread


def test_a_request_larger_than_a_batch_is_split_and_reassembled():
    model, big = FakeModel(), ["y" * k for k in range(1, 20)]

    async def body(batcher):
        return await batcher.submit(big)

    assert run(with_batcher(model, body, max_wait_ms=0.0)) == [float(len(t)) for t in big]
    assert [len(c) for c in model.calls] == [8, 8, 3]


def test_disable_batching_runs_one_request_per_model_call():
    model, reqs = FakeModel(), requests_of(6, size=3)

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit(r) for r in reqs))

    results = run(with_batcher(model, body, disable_batching=True))
    assert results == [[float(len(t)) for t in r] for r in reqs]
    assert sorted(model.calls) == sorted(reqs)


def test_the_wait_adapts_to_the_load_of_the_previous_call():
    model = FakeModel()

    async def body(batcher):
        loop = asyncio.get_running_loop()
        waits = []
        for texts in (["a"], ["b"], ["c", "d"]):
            start = loop.time()
            await batcher.submit(texts)
            waits.append(loop.time() - start)
        return waits

    first, second, third = run(with_batcher(model, body, max_wait_ms=1000.0))
    assert first >= 0.99  # no load known yet: the full window, in case others come
    assert second < 0.5 and third < 0.5  # the previous call held 1 text: a lone request goes at once
    assert model.calls == [["a"], ["b"], ["c", "d"]]


def test_a_failing_call_fails_only_the_faulty_request_and_the_batcher_goes_on():
    model = FakeModel(fail_on="bad")

    async def body(batcher):
        first = await asyncio.gather(
            batcher.submit(["ok"]), batcher.submit(["x", "bad"]), batcher.submit(["yes"]), return_exceptions=True
        )
        after = await batcher.submit(["fine"])
        return first, after

    (ok, failed, yes), after = run(with_batcher(model, body))
    assert isinstance(failed, RuntimeError) and (ok, yes) == ([2.0], [3.0])
    # The shared call failed, then each request was scored on its own.
    assert model.calls == [["ok", "x", "bad", "yes"], ["ok"], ["x", "bad"], ["yes"], ["fine"]]
    assert after == [4.0]


def test_a_lone_failing_request_is_not_retried():
    model = FakeModel(fail_on="bad")

    async def body(batcher):
        return await asyncio.gather(batcher.submit(["bad", "x"]), return_exceptions=True)

    (failed,) = run(with_batcher(model, body))
    assert isinstance(failed, RuntimeError) and model.calls == [["bad", "x"]]


def test_a_request_split_over_calls_fails_once_its_part_fails():
    model = FakeModel(fail_on="bad")
    big = ["y" * k for k in range(1, 12)] + ["bad"]  # 12 texts: calls of 8 and 4

    async def body(batcher):
        return await asyncio.gather(batcher.submit(big), batcher.submit(["ok"]), return_exceptions=True)

    failed, ok = run(with_batcher(model, body, max_wait_ms=0.0))
    assert isinstance(failed, RuntimeError) and ok == [2.0]


def test_close_finishes_queued_work_then_refuses_new_work():
    model = FakeModel()

    async def body():
        batcher = DynamicBatcher(model, batch_size=64, max_wait_ms=200.0)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.submit(["queued"]))
        await asyncio.sleep(0.01)
        assert batcher.queued_texts == 1
        await batcher.close()  # must score the queued text, not drop it
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["late"])
        return await pending

    assert run(body()) == [6.0]
