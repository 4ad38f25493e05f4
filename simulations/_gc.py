"""Python's cyclic garbage collector while a simulation runs: :func:`collecting_seldom`.

A simulation holds every node's objects in one heap, millions of them at a few hundred
nodes, nearly all acyclic and freed by reference counting. The collector's youngest
generation is collected each time ``threshold0`` more objects were made than freed;
each collection visits every object made since that is still alive, and each of their
references (a random read of memory, slower as the heap grows). In a bigger simulation
more objects are alive at any moment (more exchanges under way at once), so more of
them are visited, and visited again in the next generation, for nothing: in
the ``mesh`` scenario those collections found no garbage at all. So while a simulation
runs under :func:`collecting_seldom`, ``threshold0`` grows with its nodes
(:func:`collect_for_nodes`, called as each is added): :data:`GC_OBJECTS_PER_NODE` a
node, at least the first of :data:`SIMULATION_GC_THRESHOLDS`.

Measured on ``mesh`` (engine level, stand-in signatures, verify once, tree radius 2,
seed 0), with the collector's time read from ``gc.callbacks``: 2,000 nodes, 90 virtual
seconds, 17.8 s of 300 s in the collector at 50,000 (144 young collections of up to
0.3 s, 7 of the next generation of up to 1.3 s, none finding anything), 5.7 s at
500,000 and 2.8 s at 2,000,000, the same peak memory (1,748 MB); at 10,000 nodes,
py-spy put 14% of a virtual minute of the start in the collector at 50,000. 1,000
nodes, 10 virtual minutes, two interleaved pairs (``python -m simulations run``, the
machine busy with a 10,000-node run besides): 428 and 386 s of wall time at 50,000,
400 and 368 s at 250 a node; 866 MB at the peak either way; every message delivered.
The report is not the same to the last request (656,884 against 657,051): what the
collector frees, and when, decides when some of trio's tasks are woken, so the same
seed gives the same report for the same thresholds.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
from collections.abc import Iterator
from typing import Final

__all__ = [
    "GC_OBJECTS_PER_NODE",
    "SIMULATION_GC_THRESHOLDS",
    "collect_for_nodes",
    "collecting_seldom",
]

#: Python's garbage collector thresholds while a simulation runs
#: (:func:`collecting_seldom`): a young collection every 50,000 net allocations
#: rather than 700, at the least.
SIMULATION_GC_THRESHOLDS: Final = (50_000, 20, 100)
#: Net allocations between two young collections, per node of the simulation, when
#: that is more than ``SIMULATION_GC_THRESHOLDS[0]``: 250,000 at 1,000 nodes.
GC_OBJECTS_PER_NODE: Final = 250

#: The thresholds :func:`collecting_seldom` set, while it runs (None: it does not).
_SELDOM: Final = contextvars.ContextVar[tuple[int, int, int] | None](
    "ptth_collecting_seldom", default=None
)


@contextlib.contextmanager
def collecting_seldom(
    thresholds: tuple[int, int, int] = SIMULATION_GC_THRESHOLDS,
) -> Iterator[None]:
    """Run Python's cyclic garbage collector less often, for one simulation's run, the
    less often the more nodes it has (see the module docstring).

    With the default thresholds (700, 10, 10) the collector traverses a simulation's
    objects again and again: 13% of the wall time of a 300-node ``mesh`` run, 28 full
    collections in 10 virtual minutes. Collecting seldom costs no memory (the same peak
    there). The thresholds found are put back after."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    token = _SELDOM.set(thresholds)
    try:
        yield
    finally:
        _SELDOM.reset(token)
        gc.set_threshold(*before)


def collect_for_nodes(count: int) -> None:
    """Within :func:`collecting_seldom`, collect the youngest generation after
    :data:`GC_OBJECTS_PER_NODE` net allocations a node of ``count`` (at least what it
    set); elsewhere, nothing."""
    thresholds = _SELDOM.get()
    if thresholds is None:
        return
    first, *older = thresholds
    gc.set_threshold(max(first, GC_OBJECTS_PER_NODE * count), *older)
