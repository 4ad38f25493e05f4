"""Traffic: applications sending messages to each other at random times.

Each talking pair ``(src, dst)`` sends messages as a Poisson process (exponential gaps,
mean ``interval`` virtual seconds), from a random source derived from the seed and the
two names. Every message is sent in its own task with :meth:`SimNode.send`; with
``resend`` (the default) an application keeps a message its node gave up on and sends
the same frame again, as an application with a durable outbox would, so a partition or a
crash delays messages instead of losing them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import trio

from node import NodeError
from simulations._errors import NodeDown
from simulations._simulation import SimNode, Simulation

__all__ = ["generate_traffic"]


async def generate_traffic(
    sim: Simulation,
    pairs: Sequence[tuple[SimNode, SimNode]],
    *,
    interval: float,
    size: int = 200,
    until: float = math.inf,
    resend: bool = True,
) -> None:
    """Send messages between ``pairs`` until virtual time ``until``, then wait for the
    sends still under way (cancel to stop them).

    Messages are ``size`` bytes. A refused message (:class:`node.Rejected`, e.g.
    ``no-route`` for a pair that is not adjacent) or an unknown peer counts as failed
    in the ledger and does not stop the traffic; so does a send that fails without
    ``resend``. Raises :class:`ValueError` for ``interval <= 0`` or ``size < 0``.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, not {interval}")
    if size < 0:
        raise ValueError(f"size must be >= 0 bytes, not {size}")
    async with trio.open_nursery() as nursery:
        for src, dst in pairs:
            nursery.start_soon(_pair, sim, src, dst, interval, size, until, resend, nursery)


async def _pair(
    sim: Simulation,
    src: SimNode,
    dst: SimNode,
    interval: float,
    size: int,
    until: float,
    resend: bool,
    nursery: trio.Nursery,
) -> None:
    rng = sim.rng("traffic", src.name, dst.name)
    when = sim.now
    number = 0
    while True:
        when += rng.expovariate(1 / interval)
        if when >= until:
            return
        await sim.advance_to(when)
        head = f"{src.name}>{dst.name} #{number} ".encode()
        body = (head + b"." * size)[:size]
        number += 1
        nursery.start_soon(_send, src, dst, body, resend)


async def _send(src: SimNode, dst: SimNode, body: bytes, resend: bool) -> None:
    # Refusals, unknown peers and (without resend) failures and crashes are figures
    # of the report, entered in the ledger, not errors of the traffic.
    with contextlib.suppress(NodeError, NodeDown):
        await src.send(dst, body, resend=resend)
