"""Frame payloads (purpose ``ptth/frame``): the signed part of every mesh message.

docs/architecture.md lists the keys. Each kind has its own required and optional keys; any
other key is refused, so a frame means exactly one thing to every reader.

=======  ==========================  ============
kind     required (besides common)   optional
=======  ==========================  ============
msg      dst, body                   ct, rr, cap
pub      topic, body                 ct, cap
sub      pat                         cap, dst
unsub    pat                         dst
ann      body (an address envelope)  hello
rcpt     dst, ref, st                why, n
rev      body (a revocation)         --
=======  ==========================  ============

Common to all: ``t, src, id, ts, exp, hops``. Our additions to the table in docs/architecture.md:
``rr`` (true: the origin asks for a delivery receipt), ``hello`` (true, on an announce a
node sends to a neighbour it has just met: "send me your routes"), and for receipts ``ref`` (the id
of the frame the receipt is about), ``st`` (``delivered`` or ``dropped``), ``why`` (for
a drop: ``code: words``) and ``n`` (for a delivery: the hops the frame made). A
``sub`` or ``unsub`` with ``dst`` is addressed to the owner of its pattern's secure name
(its first word is ``~<dst>``): it is routed to that node alone instead of flooded. A
receipt's ``src`` is the node that delivered or dropped the frame. ``cap`` is a
capability envelope (purpose ``ptth/cap``, its whole chain) the origin presents for what
the frame does; enforcement points verify it (crypto only checks its size here). A
``rev`` frame carries a signed revocation (purpose ``ptth/revoke``) and is flooded to
every node, as announces are.

Topics are dot-separated words of ``A-Z a-z 0-9 _ -``; the first word may be
``~<node-id>`` (a secure name only that node may publish under). Patterns are topics
whose words may also be ``*`` (exactly one word) or ``#`` (zero or more words), as in
AMQP's topic exchange.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import itertools
import operator
import re
from collections.abc import Iterator
from typing import Any, Final

from crypto import _cbor, _envelope
from crypto._errors import Expired, Malformed
from crypto._identity import NODE_ID_TEXT_LENGTH, Identity, NodeId

__all__ = [
    "FRAME_ID_SIZE",
    "MAX_BODY_SIZE",
    "MAX_HOPS",
    "MAX_LIFETIME_MS",
    "MAX_WHY_LENGTH",
    "Frame",
    "Kind",
    "opening_once",
    "validate_pattern",
    "validate_topic",
]

FRAME_ID_SIZE: Final = 16
#: Largest body: half the envelope limit, leaving room for headers and the signature.
MAX_BODY_SIZE: Final = 512 * 1024
#: Most hops an origin may allow: a mesh wider than this wants a routing protocol.
MAX_HOPS: Final = 64
#: Longest a frame may live: relays keep a seen-set entry for each frame's lifetime.
MAX_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
#: Latest time a frame may carry: times are stored as SQLite INTEGERs (signed 64-bit).
MAX_TIME_MS: Final = 2**63 - 1
MAX_TOPIC_LENGTH: Final = 255
MAX_TOPIC_WORDS: Final = 32
MAX_CT_LENGTH: Final = 127
#: Largest capability a frame carries (as :data:`crypto.MAX_CAPABILITY_SIZE`; the chain
#: itself is verified by the enforcement point that needs it).
MAX_CAP_SIZE: Final = 16 * 1024
#: Longest reason a drop receipt carries.
MAX_WHY_LENGTH: Final = 1024
#: What a receipt says happened to its frame.
RECEIPT_STATES: Final = frozenset({"delivered", "dropped"})
_WORD: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SECURE_WORD: Final = re.compile(rf"~[a-z2-7]{{{NODE_ID_TEXT_LENGTH}}}")
#: Up to :data:`MAX_TOPIC_WORDS` words of :data:`_WORD`, none secure nor a wildcard.
_PLAIN_WORDS: Final = re.compile(
    rf"[A-Za-z0-9_-]{{1,64}}(?:\.[A-Za-z0-9_-]{{1,64}}){{0,{MAX_TOPIC_WORDS - 1}}}"
)
_CT: Final = re.compile(r"[!-~]+(?:; ?[!-~]+)*")


class Kind(enum.StrEnum):
    """What a frame is."""

    MSG = "msg"
    PUB = "pub"
    SUB = "sub"
    UNSUB = "unsub"
    ANN = "ann"
    RCPT = "rcpt"
    REV = "rev"
    #: A tree offer to one neighbour: our coordinates and a place below us
    #: (docs/routing-at-scale.md); never passed on.
    CRD = "crd"
    #: A DHT message (a lookup, a store, their answers) between any two nodes
    #: (docs/routing-at-scale.md); passed on hop by hop, never stored.
    DHT = "dht"


_COMMON: Final = frozenset({"t", "src", "id", "ts", "exp", "hops"})
_REQUIRED: Final = {
    Kind.MSG: frozenset({"dst", "body"}),
    Kind.PUB: frozenset({"topic", "body"}),
    Kind.SUB: frozenset({"pat"}),
    Kind.UNSUB: frozenset({"pat"}),
    Kind.ANN: frozenset({"body"}),
    Kind.RCPT: frozenset({"dst", "ref", "st"}),
    Kind.REV: frozenset({"body"}),
    Kind.CRD: frozenset({"dst", "body"}),
    Kind.DHT: frozenset({"dst", "body"}),
}
_OPTIONAL: Final = {
    Kind.MSG: frozenset({"ct", "rr", "cap"}),
    Kind.PUB: frozenset({"ct", "cap"}),
    Kind.SUB: frozenset({"cap", "dst"}),
    Kind.UNSUB: frozenset({"dst"}),
    Kind.RCPT: frozenset({"why", "n"}),
    Kind.ANN: frozenset({"hello"}),
}


def _check_words(text: str, what: str, *, wildcards: bool) -> str:
    if type(text) is str and len(text) <= MAX_TOPIC_LENGTH and _PLAIN_WORDS.fullmatch(text):
        return text  # the common case at once; anything else is checked word by word
    if not isinstance(text, str):
        raise Malformed(f"{what} must be text, got {type(text).__name__}")
    if not 0 < len(text) <= MAX_TOPIC_LENGTH:
        raise Malformed(f"{what} is {len(text)} characters, expected 1..{MAX_TOPIC_LENGTH}")
    words = text.split(".")
    if len(words) > MAX_TOPIC_WORDS:
        raise Malformed(f"{what} has {len(words)} words, limit {MAX_TOPIC_WORDS}")
    for index, word in enumerate(words):
        if wildcards and word in ("*", "#"):
            continue
        if index == 0 and word.startswith("~"):
            if not _SECURE_WORD.fullmatch(word):
                raise Malformed(f"{what} {text!r}: a first word with '~' must be ~<node-id>")
            continue
        if not _WORD.fullmatch(word):
            allowed = "words of A-Z a-z 0-9 _ - (1..64)"
            if wildcards:
                allowed += ", '*' or '#'"
            raise Malformed(f"{what} {text!r}: word {index + 1} {word!r} is not one of {allowed}")
    return text


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic (no wildcards); raise :class:`Malformed`."""
    return _check_words(topic, "topic", wildcards=False)


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if valid (words, ``*``, ``#``); raise :class:`Malformed`."""
    return _check_words(pattern, "pattern", wildcards=True)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"frame {name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise Malformed(f"frame {name} is {value}, expected {low}..{high}")
    return value


def _bytes(value: Any, name: str, *, size: int | None = None, limit: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise Malformed(f"frame {name} must be a byte string, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise Malformed(f"frame {name} is {len(value)} bytes, expected {size}")
    if limit is not None and len(value) > limit:
        raise Malformed(f"frame {name} is {len(value)} bytes, limit {limit}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """A frame's signed content, validated on construction (raises :class:`Malformed`).

    Times are ms since the epoch. ``hops`` is the most hops the origin allows.
    """

    kind: Kind
    src: NodeId
    id: bytes
    ts: int
    exp: int
    hops: int
    dst: NodeId | None = None
    topic: str | None = None
    pat: str | None = None
    body: bytes | None = None
    ct: str | None = None
    ref: bytes | None = None
    rr: bool | None = None
    st: str | None = None
    why: str | None = None
    n: int | None = None
    hello: bool | None = None
    cap: bytes | None = None

    def __post_init__(self) -> None:
        kind = _KINDS.get(self.kind) if isinstance(self.kind, str) else None
        if kind is None:
            raise Malformed(f"frame kind {self.kind!r} is not one of {', '.join(Kind)}")
        if self.kind is not kind:
            object.__setattr__(self, "kind", kind)  # a str from a payload becomes the Kind
        if not isinstance(self.src, NodeId):
            raise Malformed("frame src must be a node id")
        self._check_common()
        present = frozenset(
            name
            for name, value in zip(_FIELDS, _field_values(self), strict=True)
            if value is not None
        )
        if present != _REQUIRED[kind]:  # else all is there and nothing else
            if missing := _REQUIRED[kind] - present:
                raise Malformed(f"{kind} frame lacks {', '.join(sorted(missing))}")
            if extra := present - _REQUIRED[kind] - _OPTIONAL.get(kind, frozenset()):
                raise Malformed(f"{kind} frame must not have {', '.join(sorted(extra))}")
        self._check_fields()

    def _check_common(self) -> None:
        """Check the keys every frame has but ``t`` and ``src``."""
        id_, ts, exp, hops = self.id, self.ts, self.exp, self.hops
        if (  # the common case at once; anything else is checked one by one below
            type(id_) is bytes
            and len(id_) == FRAME_ID_SIZE
            and type(ts) is int
            and type(exp) is int
            and type(hops) is int
            and 0 <= ts < exp <= ts + MAX_LIFETIME_MS
            and exp <= MAX_TIME_MS
            and 1 <= hops <= MAX_HOPS
        ):
            return
        _bytes(self.id, "id", size=FRAME_ID_SIZE)
        _int(self.ts, "ts", 0, MAX_TIME_MS - 1)
        _int(self.exp, "exp", self.ts + 1, min(self.ts + MAX_LIFETIME_MS, MAX_TIME_MS))
        _int(self.hops, "hops", 1, MAX_HOPS)

    def _check_fields(self) -> None:
        """Check the value of each key a frame of some kinds has (its presence is the
        caller's to check)."""
        if self.topic is not None:
            validate_topic(self.topic)
        if self.pat is not None:
            validate_pattern(self.pat)
        if self.body is not None:
            _bytes(self.body, "body", limit=MAX_BODY_SIZE)
        if self.ref is not None:
            _bytes(self.ref, "ref", size=FRAME_ID_SIZE)
        if self.dst is not None:
            if not isinstance(self.dst, NodeId):
                raise Malformed("frame dst must be a node id")
            if self.pat is not None and self.pat.split(".", 1)[0] != f"~{self.dst.text}":
                raise Malformed(
                    f"{self.kind} frame for {self.pat!r} is addressed to {self.dst.short}: "
                    "only a pattern under its secure name ~<dst> may be"
                )
        if self.ct is not None and (
            not isinstance(self.ct, str)
            or len(self.ct) > MAX_CT_LENGTH
            or not _CT.fullmatch(self.ct)
        ):
            raise Malformed(f"frame ct {self.ct!r} is not a content type of <= {MAX_CT_LENGTH}")
        if self.rr is not None and self.rr is not True:
            raise Malformed(f"frame rr must be true when present, got {self.rr!r}")
        if self.hello is not None and self.hello is not True:
            raise Malformed(f"frame hello must be true when present, got {self.hello!r}")
        if self.st is not None and (not isinstance(self.st, str) or self.st not in RECEIPT_STATES):
            raise Malformed(f"frame st {self.st!r} is not one of delivered, dropped")
        if self.why is not None and (
            not isinstance(self.why, str) or len(self.why) > MAX_WHY_LENGTH
        ):
            raise Malformed(f"frame why must be text of <= {MAX_WHY_LENGTH} characters")
        if self.n is not None:
            _int(self.n, "n", 0, MAX_HOPS)
        if self.cap is not None:
            _bytes(self.cap, "cap", limit=MAX_CAP_SIZE)

    def to_payload(self) -> dict[str, Any]:
        """The map that is signed."""
        payload: dict[str, Any] = {
            "t": str(self.kind),
            "src": self.src.raw,
            "id": self.id,
            "ts": self.ts,
            "exp": self.exp,
            "hops": self.hops,
        }
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                payload[name] = value.raw if isinstance(value, NodeId) else value
        return payload

    @classmethod
    def from_payload(cls, payload: dict[Any, Any]) -> Frame:
        """Read a signed frame map; raise :class:`Malformed` for anything amiss."""
        # A payload as it is signed has its keys in canonical order: then one look-up
        # finds whether they are those of its kind (the check __post_init__ makes).
        kind_text = payload.get("t")
        shape = _SHAPES.get((kind_text, tuple(payload))) if type(kind_text) is str else None
        if shape is None:
            keys = payload.keys()
            if not keys >= _COMMON:
                raise Malformed(f"frame lacks {', '.join(sorted(_COMMON - keys))}")
            if not keys <= _KEYS:
                raise Malformed(f"frame has unknown keys {sorted(map(repr, keys - _KEYS))}")
        if None in payload.values():
            # None means "absent" here; a signed null would be a second encoding of it.
            nulls = sorted(key for key, value in payload.items() if value is None)
            raise Malformed(f"frame has null {', '.join(nulls)}; absent keys are left out")
        if shape is not None:
            values = list(map(payload.get, _PAYLOAD_KEYS))
            values[0] = shape
            return cls._from_values(values)
        fields = {key: value for key, value in payload.items() if key not in _COMMON}
        if (dst := fields.get("dst")) is not None:
            fields["dst"] = NodeId(_bytes(dst, "dst"))
        return cls(
            kind=payload["t"],
            src=NodeId(_bytes(payload["src"], "src")),
            id=payload["id"],
            ts=payload["ts"],
            exp=payload["exp"],
            hops=payload["hops"],
            **fields,
        )

    @classmethod
    def _from_values(cls, values: list[Any]) -> Frame:
        """:meth:`from_payload` for a payload without nulls whose keys are those of its
        kind (one of :data:`_SHAPES`), given as its values in field order, the kind
        first (a :class:`Kind`), None for absent keys: what the general way does, in
        the same order, less the checks on the keys and the kind, which the shape made."""
        if (dst := values[_DST]) is not None:
            values[_DST] = NodeId(_bytes(dst, "dst"))
        values[_SRC] = NodeId(_bytes(values[_SRC], "src"))
        frame = object.__new__(cls)
        for setter, value in zip(_SETTERS, values, strict=False):  # as many; strict costs
            setter(frame, value)
        frame._check_common()
        frame._check_fields()
        return frame

    def seal(self, identity: Identity) -> bytes:
        """Sign this frame as its origin. Raises :class:`Malformed` if ``src`` is not us."""
        if identity.node_id != self.src:
            raise Malformed(f"frame from {self.src.short} cannot be signed by {identity}")
        # The payload is ours and was validated when this frame was made: no need to
        # decode it again to check that open() will read it.
        payload = _cbor.encode(self.to_payload())
        return _envelope.seal_encoded(identity, _envelope.Purpose.FRAME, payload)

    @classmethod
    def open(
        cls, envelope: bytes, *, now: int | None = None, carried: Frame | None = None
    ) -> Frame:
        """Verify a frame envelope; with ``now`` (ms), refuse it once expired.

        Raises (the sender's fault) what :func:`crypto.open` raises, :class:`Malformed`
        for a bad payload or a ``src`` that is not the signer, :class:`Expired` when
        ``now`` is at or past ``exp``. Within :func:`opening_once` (simulations), an
        envelope that opened before gives the same frame without opening it again, and
        so does ``carried``, the frame this envelope is (as it opened at the hop before,
        or as its origin made it: :attr:`mesh.WireFrame.opened`). Elsewhere ``carried``
        is ignored: a real node opens every frame it is shown.
        """
        opened = _OPENED.get() if isinstance(envelope, bytes) else None  # hashable bytes
        if opened is None:
            frame = None
        elif carried is not None:
            frame = carried
        else:
            frame = opened.get(envelope)
        if frame is None:
            signer, payload_bytes = _envelope.open_encoded(envelope, _envelope.Purpose.FRAME)
            frame = cls._read(signer, payload_bytes)
            if opened is not None:
                opened.add(envelope, frame)
        if now is not None and frame.exp <= now:
            raise Expired(f"frame expired {(now - frame.exp) // 1000} s ago")
        return frame

    @classmethod
    def read_unverified(cls, envelope: bytes, *, now: int | None = None) -> Frame:
        """:meth:`open` without checking the origin's signature: the frame as the envelope
        states it, read and checked as strictly otherwise (its ``src`` must be the signer
        the envelope names). Nothing in it is authenticated: for a node that passes on,
        for a trusted neighbour, a frame it does not act on (mesh/_admission.py).
        Raises what :meth:`open` raises, but :class:`BadSignature`."""
        signer, payload_bytes = _envelope.read_unverified(envelope, _envelope.Purpose.FRAME)
        frame = cls._read(signer, payload_bytes)
        if now is not None and frame.exp <= now:
            raise Expired(f"frame expired {(now - frame.exp) // 1000} s ago")
        return frame

    @staticmethod
    def check_signature(envelope: bytes) -> None:
        """Verify the signature of an envelope that :meth:`read_unverified` read: the
        rest of :meth:`open`, without reading the payload again (the signer it checks
        against is the one named, which ``read_unverified`` found to be the ``src``).
        Raises :class:`BadSignature` (and what ``read_unverified`` raised, for another
        envelope)."""
        _envelope.open_encoded(envelope, _envelope.Purpose.FRAME)

    @classmethod
    def _read(cls, signer: NodeId, payload_bytes: bytes) -> Frame:
        # The shape seal() writes is read here at once; anything else is decoded,
        # checked deterministic, and read the general way.
        values = _read_payload(payload_bytes)
        if values is None:
            frame = cls.from_payload(_envelope.read_payload(payload_bytes))
        else:
            frame = cls._from_values(values)
        if frame.src != signer:
            raise Malformed(f"frame from {frame.src.short} is signed by {signer.short}")
        return frame


class _Opened:
    """Frames that opened, by envelope; forgotten all at once past ``limit`` (as
    :func:`crypto.verifying_once` forgets signatures)."""

    __slots__ = ("_frames", "limit")

    def __init__(self, limit: int) -> None:
        self._frames: dict[bytes, Frame] = {}
        self.limit = limit

    def get(self, envelope: bytes) -> Frame | None:
        return self._frames.get(envelope)

    def add(self, envelope: bytes, frame: Frame) -> None:
        if len(self._frames) >= self.limit:
            self._frames.clear()
        self._frames[envelope] = frame


#: Set by :func:`opening_once` for the tasks and threads started within it (a context
#: variable: no state shared beyond them).
_OPENED: Final = contextvars.ContextVar[_Opened | None]("ptth_opened", default=None)


@contextlib.contextmanager
def opening_once(limit: int = 100_000) -> Iterator[None]:
    """Within this block, and in the trio tasks and threads started in it, an envelope
    that :meth:`Frame.open` opened is not opened again: the last ``limit`` are
    remembered, and the same bytes give the same :class:`Frame` at once (its expiry
    still checked against each call's ``now``). An envelope that failed to open is
    opened, and refused, every time.

    For simulations, with :func:`crypto.verifying_once`: every node of the mesh runs in
    one process and opens the same frames (a publication at every hop, an announce at
    every node); the same bytes open the same way, so the outcome is the same, without
    decoding and validating them again. A real node opens every frame it is shown.
    """
    token = _OPENED.set(_Opened(limit))
    try:
        yield
    finally:
        _OPENED.reset(token)


_FIELDS: Final = (
    "dst", "topic", "pat", "body", "ct", "ref", "rr", "st", "why", "n", "hello", "cap"
)  # fmt: skip
_field_values: Final = operator.attrgetter(*_FIELDS)
#: Every key a frame's map may have.
_KEYS: Final = _COMMON | frozenset(_FIELDS)
_KINDS: Final = {str(kind): kind for kind in Kind}
#: The slots' setters, in field order (a frozen dataclass's __init__ sets each with
#: object.__setattr__, which costs twice as much).
_SETTERS: Final = tuple(getattr(Frame, field.name).__set__ for field in dataclasses.fields(Frame))
#: The payload's key for each field, in field order.
_PAYLOAD_KEYS: Final = ("t", "src", "id", "ts", "exp", "hops", *_FIELDS)
_SRC: Final = _PAYLOAD_KEYS.index("src")
_DST: Final = _PAYLOAD_KEYS.index("dst")


def _encoded_key(key: str) -> bytes:
    return _cbor.encode(key)


def _shapes() -> dict[tuple[str, tuple[str, ...]], Kind]:
    shapes = {}
    for kind in Kind:
        optional = sorted(_OPTIONAL.get(kind, ()))
        for count in range(len(optional) + 1):
            for chosen in itertools.combinations(optional, count):
                keys = _COMMON | _REQUIRED[kind] | frozenset(chosen)
                shapes[str(kind), tuple(sorted(keys, key=_encoded_key))] = kind
    return shapes


#: Every set of keys a frame may have, by its ``t`` and its keys in canonical order
#: (RFC 8949 §4.2.1), the order in which a signed payload has them.
_SHAPES: Final = _shapes()

# -- reading the payload seal() writes ---------------------------------------------------

_UINT, _BYTES, _TEXT, _TRUE = 0, 2, 3, 7  # the CBOR major type of each key's value
_VALUE_TYPES: Final = {
    "t": _TEXT, "src": _BYTES, "id": _BYTES, "ts": _UINT, "exp": _UINT, "hops": _UINT,
    "dst": _BYTES, "topic": _TEXT, "pat": _TEXT, "body": _BYTES, "ct": _TEXT, "ref": _BYTES,
    "rr": _TRUE, "st": _TEXT, "why": _TEXT, "n": _UINT, "hello": _TRUE, "cap": _BYTES,
}  # fmt: skip
#: Each key's bit: the bits rise with the keys' canonical order.
_KEY_BITS: Final = {
    key: 1 << rank for rank, key in enumerate(sorted(_VALUE_TYPES, key=_encoded_key))
}
#: :data:`_SHAPES` by the bits of their keys.
_SHAPE_BITS: Final = {
    (kind_text, sum(_KEY_BITS[key] for key in keys)): kind
    for (kind_text, keys), kind in _SHAPES.items()
}
#: Bytes after additional information 24..27 in a CBOR head, and the least argument
#: each may carry in shortest form (RFC 8949 §4.2.1).
_ARGUMENT_SIZES: Final = {24: (1, 24), 25: (2, 0x100), 26: (4, 0x10000), 27: (8, 0x100000000)}


def _heads() -> dict[bytes, tuple[int, int, int, int, int]]:
    heads: dict[bytes, tuple[int, int, int, int, int]] = {}
    for key, major in _VALUE_TYPES.items():
        before = (_KEY_BITS[key], _PAYLOAD_KEYS.index(key))
        encoded = _encoded_key(key)
        if major == _TRUE:  # read as an unsigned integer whose argument is True
            heads[encoded + b"\xf5"] = (*before, _UINT, 0, True)
            continue
        for info in range(24):
            heads[encoded + bytes((major << 5 | info,))] = (*before, major, 0, info)
        for info, (size, least) in _ARGUMENT_SIZES.items():
            heads[encoded + bytes((major << 5 | info,))] = (*before, major, size, least)
    return heads


#: How to read each key and the head of its value, by their encoding (the key in
#: shortest form, as all our keys are shorter than 24 bytes, and the value's initial
#: byte, of the major type the key wants): the key's bit, its index in
#: :data:`_PAYLOAD_KEYS`, the major type, and either no bytes more and the argument,
#: or the size of the argument that follows and its least value in shortest form.
_HEADS: Final = _heads()


def _read_payload(data: bytes) -> list[Any] | None:
    """The values of a frame payload in exactly the shape :meth:`Frame.seal` writes, in
    field order (the kind first, None for absent keys, node ids raw); None for anything
    else, which is then read the general way, with its refusals.

    Returns values only when the general way would decode the same map from ``data``,
    find it deterministically encoded and its keys those of its kind (the shape
    :meth:`Frame._from_values` takes): a definite-length map whose keys are frame keys in
    canonical order (so none twice), each value a shortest-form unsigned integer, byte
    string, valid UTF-8 text string or ``true`` as its key wants, nothing after the map.
    """
    end = len(data)
    if not 0 < end <= _cbor.MAX_ENVELOPE_SIZE:
        return None
    count = data[0] - 0xA0  # a map of fewer than 24 pairs (a frame has at most 11)
    if not 0 <= count < 24:
        return None
    values: list[Any] = [None] * len(_PAYLOAD_KEYS)
    keys = 0
    at = 1
    try:
        for _ in range(count):
            head_end = at + data[at] - 0x5E  # a text key of fewer than 24 bytes, a byte
            reader = _HEADS.get(data[at:head_end])
            if reader is None:
                return None
            bit, index, major, size, argument = reader
            if bit <= keys:  # not after the key before it in canonical order
                return None
            keys |= bit
            at = head_end
            if size:
                least = argument
                argument = int.from_bytes(data[at : at + size], "big")
                at += size
                if argument < least:  # not in shortest form (or cut short: at > end)
                    return None
            if major == _UINT:
                values[index] = argument
            else:
                start, at = at, at + argument
                if at > end:
                    return None
                values[index] = (
                    data[start:at] if major == _BYTES else data[start:at].decode("utf-8")
                )
    except (IndexError, UnicodeDecodeError):
        return None
    kind = _SHAPE_BITS.get((values[0], keys))
    if kind is None or at != end:
        return None
    values[0] = kind
    return values
