"""Admission of inbound frames: what a node checks before it takes responsibility.

:func:`admit` is pure: it verifies the envelope, the expiry and the hop limit, and
decides whether the frame is this node's to take. The caller stores what is admitted
(:class:`mesh.Store`) and answers the rest with their :class:`Result`.
"""

from __future__ import annotations

import dataclasses

import crypto
from mesh._wire import Reason, Result, WireFrame

__all__ = ["Admitted", "admit"]

#: Kinds a node takes for itself when addressed to it (relaying comes with routing).
_POINT_TO_POINT = frozenset({crypto.Kind.MSG, crypto.Kind.RCPT})


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """A verified frame this node may take, with its envelope and hops made so far."""

    frame: crypto.Frame
    envelope: bytes
    hops: int


def admit(wire: WireFrame, *, local: crypto.NodeId, now: int) -> Admitted | Result:
    """Check one inbound frame at time ``now`` (ms); return it admitted or its rejection."""
    try:
        frame = crypto.Frame.open(wire.envelope, now=now)
    except crypto.CryptoError as exc:
        return Result.for_error(exc)
    if wire.hops >= frame.hops:
        return Result.rejected(
            Reason.HOP_LIMIT, f"frame has made {wire.hops} hops, its origin allows {frame.hops}"
        )
    if frame.kind not in _POINT_TO_POINT:
        return Result.rejected(Reason.NO_ROUTE, f"this node does not take {frame.kind} frames yet")
    if frame.dst != local:
        assert frame.dst is not None  # msg and rcpt frames have a dst
        return Result.rejected(
            Reason.NO_ROUTE, f"frame is for {frame.dst.short}; this node does not relay yet"
        )
    return Admitted(frame, wire.envelope, wire.hops + 1)
