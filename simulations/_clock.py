"""Virtual time for a whole simulation run: :class:`VirtualClock`.

``trio.testing.MockClock(autojump_threshold=0)`` jumps to the next deadline once every
task waits, but it takes trio's run loop two passes to do so: one that finds nothing to
run and jumps, then one that wakes the tasks whose deadlines have come (each pass polls
for I/O). In a simulation, where virtual time moves forward thousands of times a virtual
second, the passes that do nothing but jump were a third of all of the loop's passes.

A :class:`VirtualClock` jumps in the same pass. Trio asks a clock how long to sleep
(``deadline_to_sleep_time``) only when no task can run; this clock answers by moving
its time to that deadline and saying not to sleep, and the same pass then wakes the
tasks whose deadlines have come. Tasks wake at the same virtual instants, in the same
batches, as with ``MockClock``: a scenario's report is the same, field for field
(tests/simulations/test_clock.py compares them). Its time reads no real clock.

It also keeps sleepers of its own (:func:`sleep_until`, which the simulator's network
uses for what crosses a link). ``trio.sleep_until`` sleeps in a cancel scope whose
deadline, once it comes, cancels the task awake: the scope's deadline registered and
withdrawn, the cancellation delivered, and a ``Cancelled`` exception raised and caught
again. A sleeper of the clock is a task parked until this clock, moving to the earliest
of trio's deadlines and its own, reschedules it: the same instant, in the same pass, so
the same batch of tasks wakes together (and trio orders a batch by itself), for a
quarter of the work: 20,000 sleeps in a loop, a pass of the run loop included, took
33-49 µs each through ``trio.sleep_until`` and 8-11 µs through the clock. Measured on
2026-12-06 (``star``, 50 nodes, engine level, stand-in signatures, three interleaved
pairs: 704, 592 and 720 delivered messages a wall second before, 802, 791 and 782
after; ``mesh``, 300 nodes, 10 virtual minutes, two pairs: 90.8 and 94.7 s of wall time
before, 74.5 and 75.0 after; the same reports).

What it is not for: code that waits for the run to be idle
(``trio.testing.wait_all_tasks_blocked``), since it never is (time moves on instead),
nor code whose tasks wait on real I/O or threads (time moves on without them). A
simulation has neither: its network is in memory and its stores run inline. Tests that
use pytest-trio's ``autojump_clock`` fixture keep ``MockClock``; both are virtual time
to :func:`simulations.open_simulation`.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Final

import trio

__all__ = ["VirtualClock", "sleep_until"]

#: What to answer when no deadline is set at all: trio then waits for I/O, which in a
#: simulation never comes (as with MockClock, the run is stuck, not finished).
_FOREVER: Final = 999_999_999.0


class VirtualClock(trio.abc.Clock):
    """Virtual time that stands still while any task can run and, once none can, moves
    straight to the next deadline (see the module docstring). It starts at ``start``
    seconds (default 0, as ``MockClock``).

    Give it to ``trio.run(..., clock=VirtualClock())`` around a simulation of your own;
    :func:`simulations.run_scenario` uses one.
    """

    __slots__ = ("_count", "_now", "_sleepers")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        #: Tasks in :meth:`sleep_until`: a heap of ``[when, count, task]``, ``task``
        #: None once it was woken or cancelled.
        self._sleepers: list[list[Any]] = []
        self._count = 0

    def __repr__(self) -> str:
        return f"<VirtualClock, time={self._now:.7f}>"

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # Called by trio's run loop when no task can run: move to the next deadline
        # now, trio's or a sleeper's, and wake the sleepers whose time has come (they
        # run in this pass, with the tasks trio wakes for its deadlines).
        sleepers = self._sleepers
        while sleepers and sleepers[0][2] is None:
            heapq.heappop(sleepers)
        if sleepers and sleepers[0][0] < deadline:
            deadline = sleepers[0][0]
        if deadline > self._now:
            if math.isinf(deadline):
                return _FOREVER
            self._now = deadline
        while sleepers and sleepers[0][0] <= self._now:
            task = heapq.heappop(sleepers)[2]
            if task is not None:
                trio.lowlevel.reschedule(task)
        return 0.0

    async def sleep_until(self, when: float) -> None:
        """``trio.sleep_until(when)``, woken by this clock rather than by a cancel
        scope's deadline: the same instant, in the same pass of trio's run loop, for
        less work (see :func:`sleep_until`)."""
        if not when > self._now:  # now, past, or NaN (which trio refuses)
            await trio.sleep_until(when)
            return
        entry = [when, self._count, trio.lowlevel.current_task()]
        self._count += 1
        heapq.heappush(self._sleepers, entry)

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None  # cancelled: it stays in the heap, skipped when it comes up
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def sleep_until(when: float) -> None:
    """Sleep until ``when`` on trio's clock: through :meth:`VirtualClock.sleep_until`
    when the run's clock is one, else ``trio.sleep_until``."""
    clock = trio.lowlevel.current_clock()
    if type(clock) is VirtualClock:
        await clock.sleep_until(when)
    else:
        await trio.sleep_until(when)
