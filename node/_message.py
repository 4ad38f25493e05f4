"""What the application sees: a received :class:`Message`, a :class:`Sent` frame, a
received :class:`Publication` and a :class:`Published` one."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import crypto

__all__ = ["Message", "Published", "Publication", "Sent"]


@dataclasses.dataclass(frozen=True)
class Message:
    """A received point-to-point message. :meth:`ack` removes it from the inbox."""

    id: bytes
    src: crypto.NodeId
    body: bytes
    ct: str | None
    ts: int
    received: int
    hops: int
    seq: int
    _ack: Callable[[], Awaitable[object]] = dataclasses.field(repr=False, compare=False)

    async def ack(self) -> None:
        """Acknowledge: the application is done with it; it will not be offered again."""
        await self._ack()


@dataclasses.dataclass(frozen=True)
class Sent:
    """A frame in this node's custody: its id, and its next hop (None: held, no route
    yet). Wait for its receipt with ``Node.delivered(sent.id)``."""

    id: bytes
    dst: crypto.NodeId
    next_hop: crypto.NodeId | None


@dataclasses.dataclass(frozen=True)
class Publication:
    """A publication a subscription received: ``origin`` published ``body`` to
    ``topic`` at ``ts`` (ms, its clock); it reached us at ``received`` after ``hops``.
    Those of a named subscription are offered again until acknowledged (:meth:`ack`)."""

    topic: str
    body: bytes
    ct: str | None
    origin: crypto.NodeId
    id: bytes
    ts: int
    received: int
    hops: int
    #: Where it is in the store (a named subscription's publications), else 0.
    seq: int = 0
    _ack: Callable[[], Awaitable[object]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    async def ack(self) -> None:
        """A named subscription is done with it: it will not be offered again. (A live
        subscription's publications need no acknowledgement: this does nothing.)"""
        if self._ack is not None:
            await self._ack()


@dataclasses.dataclass(frozen=True)
class Published:
    """A publication in this node's custody: its id, and the neighbours it goes to now
    (toward the subscribers known here; none: nobody subscribed to the topic)."""

    id: bytes
    topic: str
    next_hops: tuple[crypto.NodeId, ...]
    delivered_here: bool
