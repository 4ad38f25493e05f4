"""Admission of inbound frames: what a node checks before deciding anything.

:func:`admit` is pure: it verifies the envelope, the expiry and the hop limit (the
signature aside for a message passing through from a trusted neighbour: ``unverified``,
below). What to do with an admitted frame (deliver, forward, hold, refuse) is the
:class:`mesh.Router`'s decision; the caller stores what is taken (:class:`mesh.Store`)
and answers the rest with their :class:`Result`.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import crypto
from mesh._records import quick_init
from mesh._wire import Reason, Result, WireFrame

__all__ = ["PASSED_ON_UNVERIFIED", "Admitted", "admit"]


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
    #: True when the origin's signature was not checked here (:func:`admit` with
    #: ``unverified_for``): a message for another node, from a trusted neighbour.
    unverified: bool = False


#: The kinds a node passes on unchecked for a trusted neighbour when they are addressed
#: to another node: messages (calls and replies among them) and receipts. Everything
#: else is acted on at every hop (publications are matched and may be delivered here,
#: interests, announces, DHT and tree messages read), so it is always checked.
PASSED_ON_UNVERIFIED: Final = frozenset({crypto.Kind.MSG, crypto.Kind.RCPT})


def admit(
    wire: WireFrame, *, now: int, unverified_for: crypto.NodeId | None = None
) -> Admitted | Result:
    """Check one inbound frame at time ``now`` (ms); return it admitted or its rejection.

    ``unverified_for``: this node's id when the frame came from a trusted neighbour
    (:meth:`mesh.Policy.unverified_from`). A message or receipt addressed to another
    node is then admitted without its origin's signature checked (``unverified``: its
    destination checks it); anything else is checked as ever.
    """
    try:
        if unverified_for is None:
            frame = crypto.Frame.open(wire.envelope, now=now, carried=wire.opened)
        else:
            frame = crypto.Frame.read_unverified(wire.envelope, now=now)
            if (
                frame.kind in PASSED_ON_UNVERIFIED
                and frame.dst is not None
                and frame.dst != unverified_for
            ):
                if wire.hops >= frame.hops:
                    return _hop_limit(wire.hops, frame.hops)
                return Admitted(
                    frame, wire.envelope, wire.hops + 1, wire.to, wire.coords,
                    wire.src_coords, True,
                )  # fmt: skip
            crypto.Frame.check_signature(wire.envelope)  # read already: only verify
    except crypto.CryptoError as exc:
        return Result.for_error(exc)
    if wire.hops >= frame.hops:
        return _hop_limit(wire.hops, frame.hops)
    return Admitted(frame, wire.envelope, wire.hops + 1, wire.to, wire.coords, wire.src_coords)


def _hop_limit(made: int, allowed: int) -> Result:
    return Result.rejected(
        Reason.HOP_LIMIT, f"frame has made {made} hops, its origin allows {allowed}"
    )
