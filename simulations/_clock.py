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

What it is not for: code that waits for the run to be idle
(``trio.testing.wait_all_tasks_blocked``), since it never is (time moves on instead),
nor code whose tasks wait on real I/O or threads (time moves on without them). A
simulation has neither: its network is in memory and its stores run inline. Tests that
use pytest-trio's ``autojump_clock`` fixture keep ``MockClock``; both are virtual time
to :func:`simulations.open_simulation`.
"""

from __future__ import annotations

import math
from typing import Final

import trio

__all__ = ["VirtualClock"]

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

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __repr__(self) -> str:
        return f"<VirtualClock, time={self._now:.7f}>"

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # Called by trio's run loop when no task can run: move to the deadline now.
        if deadline > self._now:
            if math.isinf(deadline):
                return _FOREVER
            self._now = deadline
        return 0.0
