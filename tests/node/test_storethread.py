"""The store's own thread (node/_storethread.py)."""

from __future__ import annotations

import contextvars
import threading

import pytest
import trio

from node._storethread import StoreThread

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="nobody")


async def test_calls_run_in_the_thread_with_their_results() -> None:
    runner = StoreThread(name="test-store")
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * n

    try:
        async with trio.open_nursery() as nursery:
            results: dict[int, int] = {}

            async def one(n: int) -> None:
                results[n] = await runner.run(lambda: call(n))

            for n in range(20):
                nursery.start_soon(one, n)
        assert results == {n: n * n for n in range(20)}
        assert {name for _, name in seen} == {"test-store"}
        assert sorted(seen) == [(n, "test-store") for n in range(20)]
    finally:
        runner.close()


async def test_what_a_call_raises_is_raised_to_its_caller() -> None:
    runner = StoreThread()

    def broken() -> None:
        raise ValueError("no such table: queue")

    try:
        with pytest.raises(ValueError, match="no such table"):
            await runner.run(broken)
        assert await runner.run(lambda: 7) == 7  # the thread goes on
    finally:
        runner.close()


async def test_a_call_runs_in_its_callers_context() -> None:
    runner = StoreThread()
    try:
        WHO.set("the node")
        assert await runner.run(WHO.get) == "the node"
    finally:
        runner.close()


async def test_a_call_under_way_is_not_cancelled_and_its_caller_is_at_its_next_checkpoint() -> None:
    runner = StoreThread()
    started, finish = threading.Event(), threading.Event()
    finished: list[bool] = []
    got: list[int] = []

    def slow() -> int:
        started.set()
        finish.wait(10)
        finished.append(True)
        return 1

    try:
        with trio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                await trio.to_thread.run_sync(started.wait)
                scope.cancel()
                finish.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_started)
                got.append(await runner.run(slow))  # its result, though cancelled
                await trio.lowlevel.checkpoint()  # the cancellation comes here
                pytest.fail("the cancellation was not delivered after the call")
        assert scope.cancelled_caught
        assert finished == [True]  # the call ran to its end
        assert got == [1]
        with trio.CancelScope() as already:
            already.cancel()
            await runner.run(lambda: pytest.fail("a cancelled caller submitted its call"))
    finally:
        runner.close()


async def test_a_closed_thread_takes_no_call() -> None:
    runner = StoreThread()
    runner.close()
    runner.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await runner.run(lambda: 1)
