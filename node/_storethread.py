"""One thread of the node's own for its store's calls, cheaper to reach than trio's.

A node's SQLite store is called from worker threads so that its statements and fsyncs
never block the event loop. ``trio.to_thread.run_sync`` costs about 115 µs of CPU for
a round trip even for a call that does nothing (its capacity limiter, thread cache and
the report back are Python on both sides); at light load every message takes three of
them at its origin (custody, reading the forwarder's batch, deleting what the neighbour
took). :class:`StoreThread` keeps one thread waiting on a queue instead: a call is put
on it, runs there in its caller's context, and its outcome is handed back to the
waiting task through the trio token: about 64 µs (measured: 3,000 calls of a function
doing nothing, three rounds). The store's calls are serialised by its lock anyway, so
one thread loses no parallelism; work that runs beside the store (verifying a batch of
signatures) keeps trio's threads.

A call, once submitted, cannot be cancelled (as ``trio.to_thread.run_sync`` by default):
its task waits for it, and a cancellation is delivered at its next checkpoint.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["StoreThread"]

_T = TypeVar("_T")
_Job = tuple[Callable[[], Any], contextvars.Context, trio.lowlevel.TrioToken, trio.lowlevel.Task]


class StoreThread:
    """Runs blocking calls one at a time in a thread of its own (see the module
    docstring). :meth:`run` is a ``RunBlocking``; :meth:`close` ends the thread."""

    def __init__(self, name: str = "ptth-store") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    async def run(self, function: Callable[[], _T]) -> _T:
        """``function()`` in the thread; its result, or what it raised."""
        if self._closed:
            raise RuntimeError("the store thread is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        job = (
            function,
            contextvars.copy_context(),
            trio.lowlevel.current_trio_token(),
            trio.lowlevel.current_task(),
        )
        self._jobs.put(job)

        def abort(_: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # it runs to its end: wait for it

        result: _T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def close(self) -> None:
        """End the thread once the calls submitted have run (it does not wait)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, context, token, task = job
            result = outcome.capture(context.run, function)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # nobody left to tell
                pass
