"""Admission of inbound frames: what a node checks before deciding anything.

:func:`admit` is pure: it verifies the envelope, the expiry and the hop limit. What to
do with an admitted frame (deliver, forward, hold, refuse) is the :class:`mesh.Router`'s
decision; the caller stores what is taken (:class:`mesh.Store`) and answers the rest
with their :class:`Result`.
"""

from __future__ import annotations

import dataclasses

import crypto
from mesh._records import quick_init
from mesh._wire import Reason, Result, WireFrame

__all__ = ["Admitted", "admit"]


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """A verified frame, with its envelope and the hops it has made counting this one;
    ``to``: for a publication, the subscribers the previous hop sent it here for
    (:attr:`WireFrame.to`; empty: every matching one)."""

    frame: crypto.Frame
    envelope: bytes
    hops: int
    to: tuple[crypto.NodeId, ...] = ()
    #: The destination's coordinates the previous hop sent with it
    #: (:attr:`WireFrame.coords`): not checked yet.
    coords: bytes | None = None
    #: The origin's coordinates the previous hop sent with it
    #: (:attr:`WireFrame.src_coords`): not checked yet.
    src_coords: bytes | None = None


def admit(wire: WireFrame, *, now: int) -> Admitted | Result:
    """Check one inbound frame at time ``now`` (ms); return it admitted or its rejection."""
    try:
        frame = crypto.Frame.open(wire.envelope, now=now)
    except crypto.CryptoError as exc:
        return Result.for_error(exc)
    if wire.hops >= frame.hops:
        return Result.rejected(
            Reason.HOP_LIMIT, f"frame has made {wire.hops} hops, its origin allows {frame.hops}"
        )
    return Admitted(frame, wire.envelope, wire.hops + 1, wire.to, wire.coords, wire.src_coords)
