"""What the application sees: a received :class:`Message`, a :class:`Sent` frame."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import crypto

__all__ = ["Message", "Sent"]


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
