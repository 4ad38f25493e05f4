"""Traffic: applications sending messages to each other at random times.

Each talking pair ``(src, dst)`` sends messages as a Poisson process (exponential gaps,
mean ``interval`` virtual seconds), from a random source derived from the seed and the
two names. A message is handed to the source's node (:meth:`SimNode.send`: custody) and
the mesh carries it from there, however many hops away ``dst`` is; the application
never sends it again. An application whose node is down (crashed, not yet restarted)
sends nothing meanwhile: it runs on the same host. A message the node refuses (its
store is full) is counted in the ledger as refused.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import mesh
from simulations._simulation import SimNode, Simulation

__all__ = ["generate_traffic"]


async def generate_traffic(
    sim: Simulation,
    pairs: Sequence[tuple[SimNode, SimNode]],
    *,
    interval: float,
    size: int = 200,
    until: float = math.inf,
    receipt: bool = False,
    ttl: float | None = None,
) -> None:
    """Send messages between ``pairs`` until virtual time ``until``, then return.

    Messages are ``size`` bytes; ``receipt``: ask for delivery receipts (the report
    counts those that came back); ``ttl``: the frames' lifetime (default: the nodes'
    ``frame_ttl``). Raises :class:`ValueError` for ``interval <= 0`` or ``size < 0``.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, not {interval}")
    if size < 0:
        raise ValueError(f"size must be >= 0 bytes, not {size}")
    # One schedule for all pairs (each with its own random source): the next message
    # due is sent, and its pair's next one drawn. No task per pair or per message.
    sources = [sim.rng("traffic", src.name, dst.name) for src, dst in pairs]
    numbers = [0] * len(pairs)
    start = sim.now
    schedule = [(start + rng.expovariate(1 / interval), index) for index, rng in enumerate(sources)]
    heapq.heapify(schedule)
    while schedule:
        when, index = schedule[0]
        if when >= until:
            return
        await sim.advance_to(when)
        heapq.heapreplace(schedule, (when + sources[index].expovariate(1 / interval), index))
        src, dst = pairs[index]
        head = f"{src.name}>{dst.name} #{numbers[index]} ".encode()
        body = (head + b"." * size)[:size]
        numbers[index] += 1
        if not src.up:
            continue
        try:
            await src.send(dst, body, receipt=receipt, ttl=ttl)
        except mesh.StoreFull:
            sim.ledger.refused += 1
