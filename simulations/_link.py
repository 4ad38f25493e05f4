"""Links between simulated hosts: latency, jitter, loss, resets and bandwidth.

A :class:`Link` describes one host pair (the same in both directions). Each direction of
a pair has a :class:`Direction`: its own random source (derived from the simulation's
seed and the two host names, so it does not depend on the order anything is created
in) and its own transmitter (bandwidth is shared by every connection on that
direction). :meth:`Direction.transit` decides what happens to one write.

The model is TCP's, not a datagram network's: a connection never loses, duplicates or
reorders bytes. "Loss" is the probability that a segment (:data:`MSS` bytes) is lost on
the wire; TCP retransmits it after the retransmission timeout (:attr:`Link.rto`,
doubling on each further loss of the same segment), so loss shows up as delay, and
after :data:`MAX_RETRANSMISSIONS` losses of one segment as a reset, as in Linux
(``tcp_retries2``). "Reset" is the probability that a write breaks the connection
instead (a middlebox dropping state, a peer's RST): both ends see it broken. That is
what a node's retry logic has to deal with.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Final

__all__ = ["MAX_RETRANSMISSIONS", "MIN_RTO", "MSS", "Direction", "Link", "Transit"]

#: TCP maximum segment size on Ethernet (1500 - 40 bytes of IP and TCP headers).
MSS: Final = 1460
#: Linux's lower bound on the retransmission timeout (TCP_RTO_MIN), seconds.
MIN_RTO: Final = 0.2
#: Losses of one segment after which the connection is given up (Linux tcp_retries2).
MAX_RETRANSMISSIONS: Final = 15


@dataclasses.dataclass(frozen=True)
class Link:
    """What the network between two hosts does to their traffic (both directions).

    ``latency``: one-way delay in seconds. ``jitter``: extra one-way delay per write,
    uniform in ``[0, jitter]`` seconds (bytes still arrive in order). ``loss``: the
    probability, in ``[0, 1)``, that a segment is lost and retransmitted. ``reset``:
    the probability, in ``[0, 1]``, that a write resets the connection. ``bandwidth``:
    bytes per second in each direction, shared by the pair's connections (``None``:
    unlimited).

    Raises :class:`ValueError` for a value out of range.
    """

    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    reset: float = 0.0
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be >= 0 seconds, not {self.latency!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(f"jitter must be >= 0 seconds, not {self.jitter!r}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be in [0, 1), not {self.loss!r}")
        if not 0 <= self.reset <= 1:
            raise ValueError(f"reset must be in [0, 1], not {self.reset!r}")
        if self.bandwidth is not None and not (self.bandwidth > 0):
            raise ValueError(f"bandwidth must be > 0 bytes/s or None, not {self.bandwidth!r}")

    @property
    def rto(self) -> float:
        """The retransmission timeout: a round trip plus Linux's minimum of 200 ms."""
        return MIN_RTO + 2 * self.latency


@dataclasses.dataclass(frozen=True, slots=True)
class Transit:
    """The fate of one write: when it leaves, when it arrives (before ordering behind
    earlier writes), how many segments were lost on the way, and whether it reset the
    connection instead of arriving."""

    depart: float
    arrival: float
    lost_segments: int
    reset: bool


class Direction:
    """One direction of a host pair: its random source and its transmitter."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.busy_until = -math.inf

    def delay(self, link: Link) -> float:
        """A one-way delay: latency plus jitter."""
        if link.jitter:
            return link.latency + self.rng.uniform(0.0, link.jitter)
        return link.latency

    def lost(self, link: Link) -> bool:
        """Whether one packet (e.g. a SYN) is lost."""
        return bool(link.loss) and self.rng.random() < link.loss

    def transit(self, link: Link, size: int, now: float) -> Transit:
        """Send ``size`` bytes (0 for a FIN or RST) at virtual time ``now``."""
        depart = now
        if link.bandwidth is not None and size:
            depart = max(now, self.busy_until) + size / link.bandwidth
            self.busy_until = depart
        extra = 0.0
        lost = 0
        reset = False
        if link.loss:
            for _ in range(max(1, math.ceil(size / MSS))):
                losses = 0
                while self.rng.random() < link.loss:
                    losses += 1
                    if losses > MAX_RETRANSMISSIONS:
                        reset = True
                        break
                lost += losses
                if losses:
                    extra = max(extra, link.rto * (2 ** min(losses, MAX_RETRANSMISSIONS) - 1))
                if reset:
                    break
        if link.reset and self.rng.random() < link.reset:
            reset = True
        return Transit(depart, depart + self.delay(link) + extra, lost, reset)
