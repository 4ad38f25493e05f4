"""The per-hop wire format of ``POST /ptth/v1/frames`` and its per-frame results.

Request body (``application/cbor-seq``, RFC 8742): one CBOR item per frame,
``[hops, envelope]``: the hops the frame has made so far (outside the signature: it is
per-hop data) and the frame's COSE_Sign1 bytes; ``[hops, envelope, to]`` for a copy of a
publication meant for some subscribers only; ``[hops, envelope, to, coords]`` (``to``
empty when it is not such a copy) with the destination's tree coordinates, a
:class:`crypto.CoordChain`, so that a node with no route to it passes it on greedily
(docs/routing-at-scale.md); ``[hops, envelope, to, coords, src_coords]`` (``coords``
null when not sent) with a message's origin's coordinates too, so that a receipt or a
reply goes back without a lookup. Per-hop data too: each node checks a chain before
using it.

Response body (``application/cbor``): one array with a result per frame, in order:
``["accepted"]``, ``["duplicate"]`` or ``["rejected", code, words]``. "accepted" and
"duplicate" both mean the receiver has taken responsibility for the frame.

A body that is not a CBOR sequence is refused whole (its frames cannot even be told
apart); an item that is CBOR but not ``[hops, envelope]`` is rejected alone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any, Final

import crypto
from crypto import _cbor
from mesh._records import quick_init

__all__ = [
    "CONTENT_TYPE_FRAMES",
    "CONTENT_TYPE_RESULTS",
    "MAX_FRAMES_PER_REQUEST",
    "MAX_SUBSCRIBERS_PER_COPY",
    "Outcome",
    "Reason",
    "Result",
    "WireFrame",
    "decode_frames",
    "decode_results",
    "encode_frames",
    "encode_results",
    "encoded_size",
]

CONTENT_TYPE_FRAMES: Final = "application/cbor-seq"
CONTENT_TYPE_RESULTS: Final = "application/cbor"
#: Most frames in one request: batches of 100 are the sweet spot (docs/architecture.md); a
#: request of more than this many is a peer we do not want to spend a whole turn on.
MAX_FRAMES_PER_REQUEST: Final = 1000
#: Most subscribers one copy of a publication may be addressed to (``WireFrame.to``).
MAX_SUBSCRIBERS_PER_COPY: Final = 4096
_NODE_ID_SIZE: Final = 32
_MAX_RESULT_ITEMS: Final = MAX_FRAMES_PER_REQUEST


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Reason(enum.StrEnum):
    """Why a frame was rejected: a code a program can act on."""

    MALFORMED = "malformed"
    TOO_LARGE = "too-large"
    BAD_SIGNATURE = "bad-signature"
    WRONG_PURPOSE = "wrong-purpose"
    EXPIRED = "expired"
    NO_ROUTE = "no-route"
    HOP_LIMIT = "hop-limit"
    STORE_FULL = "store-full"
    POLICY = "policy"
    #: A publication under another node's secure name (``~<node-id>``).
    FORBIDDEN = "forbidden"
    #: The destination does not take frames from this origin (its block or allow list).
    BLOCKED = "blocked"
    UNSUPPORTED = "unsupported"


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What the receiver did with one frame."""

    outcome: Outcome
    code: Reason | None = None
    words: str = ""

    @property
    def ok(self) -> bool:
        """The receiver took responsibility (accepted, or already had it)."""
        return self.outcome is not Outcome.REJECTED

    @classmethod
    def rejected(cls, code: Reason, words: str) -> Result:
        return cls(Outcome.REJECTED, code, words)

    @classmethod
    def for_error(cls, exc: crypto.CryptoError) -> Result:
        """The rejection for a frame that failed :mod:`crypto`'s checks."""
        code = Reason.MALFORMED
        if isinstance(exc, crypto.CapabilityRefused):  # expired or revoked ones too
            code = Reason.FORBIDDEN
        elif isinstance(exc, crypto.TooLarge):
            code = Reason.TOO_LARGE
        elif isinstance(exc, crypto.BadSignature):
            code = Reason.BAD_SIGNATURE
        elif isinstance(exc, crypto.WrongPurpose):
            code = Reason.WRONG_PURPOSE
        elif isinstance(exc, crypto.Expired):
            code = Reason.EXPIRED
        return cls.rejected(code, str(exc))

    def to_cbor(self) -> list[str]:
        if self.outcome is Outcome.REJECTED:
            return [self.outcome.value, str(self.code), self.words]
        return [self.outcome.value]


ACCEPTED: Final = Result(Outcome.ACCEPTED)
DUPLICATE: Final = Result(Outcome.DUPLICATE)


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class WireFrame:
    """One frame as it travels a hop: hops made so far, and the signed envelope.

    ``to``: for a copy of a publication, the subscribers this copy is for (the next hop
    passes it on toward those only, so a publication reaches each subscriber by one
    path); empty: every matching subscriber. Per hop, outside the signature.
    """

    hops: int
    envelope: bytes
    to: tuple[crypto.NodeId, ...] = ()
    #: The destination's coordinates (a :class:`crypto.CoordChain`'s wire form), for a
    #: node with no route to it: per hop, outside the signature, checked before use.
    coords: bytes | None = dataclasses.field(default=None, repr=False)
    #: The origin's coordinates, with a message, so that its destination (and the hops
    #: on the way) can send a receipt or a reply back without looking them up: per hop,
    #: outside the signature, checked before use.
    src_coords: bytes | None = dataclasses.field(default=None, repr=False)
    #: The frame as its origin made it or the hop before opened it: within
    #: :func:`crypto.opening_once` (a simulation, where one process runs every node)
    #: the next hop takes it rather than open the envelope again. Never on the wire,
    #: and ignored anywhere else (:meth:`crypto.Frame.open`).
    opened: crypto.Frame | None = dataclasses.field(default=None, repr=False, compare=False)


def encode_frames(frames: Iterable[WireFrame]) -> bytes:
    """The request body for ``frames``: ``[hops, envelope]`` each, or
    ``[hops, envelope, to]`` with ``to`` the subscriber ids concatenated, or
    ``[hops, envelope, to, coords]``, or ``[hops, envelope, to, coords or null,
    src_coords]``."""
    return b"".join(_cbor.encode(_item(f)) for f in frames)


def _item(f: WireFrame) -> list[Any]:
    if f.src_coords is not None:
        return [f.hops, f.envelope, b"".join(n.raw for n in f.to), f.coords, f.src_coords]
    if f.coords is not None:
        return [f.hops, f.envelope, b"".join(n.raw for n in f.to), f.coords]
    if f.to:
        return [f.hops, f.envelope, b"".join(n.raw for n in f.to)]
    return [f.hops, f.envelope]


def encoded_size(frames: Iterable[WireFrame]) -> int:
    """``len(encode_frames(frames))``, without encoding them (the engine-level
    simulation counts the bytes of bodies it does not make): each item's array head (1
    byte: at most 5 elements), then each element's shortest head (RFC 8949 §4.2.1) and
    its bytes."""
    return sum(1 + sum(map(_element_size, _item(f))) for f in frames)


def _element_size(value: int | bytes | None) -> int:
    if value is None:
        return 1
    if isinstance(value, int):
        return _head_size(value)
    return _head_size(len(value)) + len(value)


def _head_size(argument: int) -> int:
    """Bytes in the shortest CBOR head carrying ``argument`` (RFC 8949 §3.1)."""
    if argument < 24:
        return 1
    if argument < 0x100:
        return 2
    if argument < 0x10000:
        return 3
    return 5 if argument < 0x100000000 else 9


def decode_frames(
    body: bytes, *, max_frames: int = MAX_FRAMES_PER_REQUEST
) -> list[WireFrame | Result]:
    """Split a request body into frames; an item of the wrong shape becomes its rejection.

    Raises :class:`crypto.Malformed` if the body is not a CBOR sequence (or is empty),
    and :class:`crypto.TooLarge` if it holds more than ``max_frames`` items: both refuse
    the whole request, the sender's fault.
    """
    items: list[WireFrame | Result] = []
    for item in _cbor.decode_sequence(body, what="frame", max_items=max_frames):
        items.append(_wire_frame(item, len(items)))
    if not items:
        raise crypto.Malformed("request body holds no frames")
    return items


def _wire_frame(item: Any, index: int) -> WireFrame | Result:
    if not isinstance(item, list) or len(item) not in (2, 3, 4, 5):
        return Result.rejected(
            Reason.MALFORMED,
            f"frame {index} is not [hops, envelope], [hops, envelope, to], "
            "[hops, envelope, to, coords] or [hops, envelope, to, coords, src_coords]",
        )
    hops, envelope = item[0], item[1]
    to: tuple[crypto.NodeId, ...] = ()
    coords: bytes | None = None
    src_coords: bytes | None = None
    if len(item) >= 4:
        # With the origin's coordinates, the destination's may be null.
        coords = item[3]
        if not (coords is None and len(item) == 5) and not _is_chain(coords):
            return _bad_chain(index, "coords")
    if len(item) == 5:
        src_coords = item[4]
        if not _is_chain(src_coords):
            return _bad_chain(index, "src_coords")
    if len(item) >= 3 and (len(item) == 3 or item[2] != b""):
        ids = item[2]
        size = _NODE_ID_SIZE
        if (
            not isinstance(ids, bytes)
            or not ids
            or len(ids) % size
            or len(ids) > size * MAX_SUBSCRIBERS_PER_COPY
        ):
            return Result.rejected(
                Reason.MALFORMED,
                f"frame {index}: 'to' must be 1..{MAX_SUBSCRIBERS_PER_COPY} node ids of "
                f"{size} bytes, concatenated",
            )
        to = tuple(crypto.NodeId(ids[i : i + size]) for i in range(0, len(ids), size))
    if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= crypto.MAX_HOPS:
        return Result.rejected(
            Reason.MALFORMED, f"frame {index}: hops is {hops!r}, expected 0..{crypto.MAX_HOPS}"
        )
    if not isinstance(envelope, bytes):
        return Result.rejected(Reason.MALFORMED, f"frame {index}: envelope is not bytes")
    return WireFrame(hops, envelope, to, coords, src_coords)


def _is_chain(value: Any) -> bool:
    return isinstance(value, bytes) and 0 < len(value) <= crypto.MAX_COORD_CHAIN_SIZE


def _bad_chain(index: int, field: str) -> Result:
    return Result.rejected(
        Reason.MALFORMED,
        f"frame {index}: {field!r} must be a coordinate chain of 1.."
        f"{crypto.MAX_COORD_CHAIN_SIZE} bytes",
    )


def encode_results(results: Sequence[Result]) -> bytes:
    """The response body for ``results``."""
    return _cbor.encode([r.to_cbor() for r in results])


def results_size(results: Sequence[Result]) -> int:
    """``len(encode_results(results))``, without encoding them (the engine-level
    simulation counts the bytes of answers it does not make): the array's head, then
    each result's array (at most 3 strings: a 1-byte head) and its strings, each with its
    shortest head."""
    return _head_size(len(results)) + sum(
        1 + sum(map(_text_size, result.to_cbor())) for result in results
    )


def _text_size(text: str) -> int:
    length = len(text) if text.isascii() else len(text.encode())
    return _head_size(length) + length


def decode_results(body: bytes, *, expected: int) -> list[Result]:
    """Read a response body; raise :class:`crypto.Malformed` unless it holds ``expected``."""
    value = _cbor.decode(body, what="frame results")
    if not isinstance(value, list) or len(value) != expected:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise crypto.Malformed(f"expected {expected} frame results, got {got}")
    return [_result(item, index) for index, item in enumerate(value)]


def _result(item: Any, index: int) -> Result:
    if not isinstance(item, list) or not item:
        raise crypto.Malformed(f"frame result {index} is not a non-empty array")
    try:
        outcome = Outcome(item[0])
    except ValueError as exc:
        raise crypto.Malformed(f"frame result {index}: unknown outcome {item[0]!r}") from exc
    if outcome is not Outcome.REJECTED:
        return ACCEPTED if outcome is Outcome.ACCEPTED else DUPLICATE
    if len(item) != 3 or not isinstance(item[2], str):
        raise crypto.Malformed(f"frame result {index}: a rejection is [outcome, code, words]")
    try:
        code = Reason(item[1])
    except ValueError:
        code = Reason.MALFORMED  # a code from a newer peer: still a rejection
    return Result.rejected(code, item[2])
