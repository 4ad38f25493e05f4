"""Calls on objects: request/response over the mesh, carried by ``msg`` frames.

A call is a ``msg`` frame with content type :data:`CALL_CONTENT_TYPE`; its reply, a
``msg`` frame back with :data:`REPLY_CONTENT_TYPE`. Both travel like any message (signed,
in custody hop by hop) but go to the objects of the node they reach, not to its inbox:
an object checks its own capabilities (``call``), so the inbox's requirements do not
apply to them. The capability a caller presents travels in the call frame's ``cap``
field, under the frame's signature.

The bodies, deterministic CBOR maps (RFC 8949 §4.2.1):

=======  ==========================  ==========================================
map      required                    optional
=======  ==========================  ==========================================
call     ``obj``, ``op``, ``body``   ``ct`` (the content type of ``body``)
reply    ``re``, ``st``, ``body``    ``ct``, ``why`` (text, for an error)
=======  ==========================  ==========================================

``obj`` names the object (:data:`OBJECT_NAME`: one topic word, so that its events have
a topic of their own), ``op`` the operation (1 to :data:`MAX_OPERATION_LENGTH`
printable ASCII characters; spaces inside, e.g. ``GET /hello`` for a forwarded web
service). ``re`` is the id of the call frame a reply answers and ``st`` its status, as
HTTP's (:class:`CallStatus`): 2xx the object did it; 400 a bad call, 403 the capability was
refused, 404 no such object, 500 its handler failed, 502/504 the web service a
``forward`` object stands for failed or did not answer, 503 too busy. Unknown keys, a
wrong type, a value out of range or trailing bytes: :class:`crypto.Malformed`, naming
the field.

Events are publications an object emits on its own topics,
``~<node-id>.obj.<name>.<event>`` (:func:`event_topic`): under the node's secure name,
so only that node publishes them; ``~<node-id>.obj.<name>.#`` is every event of one
object (:func:`events_pattern`).

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any, Final

import crypto
from crypto import _cbor

__all__ = [
    "CALL_CONTENT_TYPE",
    "CALL_CONTENT_TYPES",
    "MAX_CALL_BODY",
    "MAX_OPERATION_LENGTH",
    "MAX_REPLY_WHY",
    "OBJECT_NAME",
    "REPLY_CONTENT_TYPE",
    "Call",
    "CallStatus",
    "Reply",
    "event_topic",
    "events_pattern",
    "validate_object_name",
]

CALL_CONTENT_TYPE: Final = "application/vnd.ptth.call+cbor"
REPLY_CONTENT_TYPE: Final = "application/vnd.ptth.reply+cbor"
CALL_CONTENT_TYPES: Final = frozenset({CALL_CONTENT_TYPE, REPLY_CONTENT_TYPE})

#: Longest operation: an HTTP method and a path with its query fit.
MAX_OPERATION_LENGTH: Final = 255
#: Longest ``why`` of a reply (characters), as a drop receipt's.
MAX_REPLY_WHY: Final = crypto.MAX_WHY_LENGTH
#: Largest body of a call or a reply: a frame's body, less room for the fields around it
#: (a ``why`` of 1024 characters may take 4 KiB of UTF-8).
MAX_CALL_BODY: Final = crypto.MAX_BODY_SIZE - 8 * 1024
#: What an object's name may be: one topic word (so ``~<node>.obj.<name>.<event>`` is
#: a topic), and a valid name for a capability on it.
OBJECT_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPERATION: Final = re.compile(rf"[!-~](?:[ -~]{{0,{MAX_OPERATION_LENGTH - 2}}}[!-~])?")
#: A content type, as a frame's ``ct`` (crypto/_frames.py).
_CT: Final = re.compile(r"[!-~]+(?:; ?[!-~]+)*")
_MAX_CT_LENGTH: Final = 127
_CALL_KEYS: Final = frozenset({"obj", "op", "body", "ct"})
_CALL_REQUIRED: Final = frozenset({"obj", "op", "body"})
_REPLY_KEYS: Final = frozenset({"re", "st", "body", "ct", "why"})
_REPLY_REQUIRED: Final = frozenset({"re", "st", "body"})


class CallStatus(enum.IntEnum):
    """The statuses a node answers calls with itself (a forwarded web service's are
    passed on as they are: any of 200..599)."""

    OK = 200
    #: Done, nothing to say (a queue with nothing waiting).
    NO_CONTENT = 204
    BAD_CALL = 400
    REFUSED = 403
    NO_SUCH_OBJECT = 404
    HANDLER_FAILED = 500
    BAD_GATEWAY = 502
    BUSY = 503
    GATEWAY_TIMEOUT = 504


def validate_object_name(name: object) -> str:
    """Return ``name`` if it may name an object (:data:`OBJECT_NAME`); else raise
    :class:`crypto.Malformed` saying why."""
    if not isinstance(name, str) or not OBJECT_NAME.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise crypto.Malformed(
            f"object name {shown} is not 1..64 characters of A-Z a-z 0-9 _ - (one topic word)"
        )
    return name


def _operation(op: object) -> str:
    if not isinstance(op, str) or not _OPERATION.fullmatch(op):
        shown = repr(op)[:80] if isinstance(op, str) else type(op).__name__
        raise crypto.Malformed(
            f"call op {shown} is not 1..{MAX_OPERATION_LENGTH} printable ASCII characters "
            "(spaces inside only)"
        )
    return op


def _body(body: object, what: str) -> bytes:
    if not isinstance(body, bytes):
        raise crypto.Malformed(f"{what} body must be a byte string, got {type(body).__name__}")
    if len(body) > MAX_CALL_BODY:
        raise crypto.TooLarge(f"{what} body is {len(body)} bytes, limit {MAX_CALL_BODY}")
    return body


def _ct(ct: object, what: str) -> str | None:
    if ct is None:
        return None
    if not isinstance(ct, str) or len(ct) > _MAX_CT_LENGTH or not _CT.fullmatch(ct):
        shown = repr(ct)[:80] if isinstance(ct, str) else type(ct).__name__
        raise crypto.Malformed(
            f"{what} ct {shown} is not a content type of <= {_MAX_CT_LENGTH} characters"
        )
    return ct


def _map(data: bytes, what: str, keys: frozenset[str], required: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise crypto.Malformed(f"a {what} is bytes, not {type(data).__name__}")
    value = _cbor.decode(data, what=what, max_size=crypto.MAX_BODY_SIZE)
    if not isinstance(value, dict):
        raise crypto.Malformed(f"{what} is not a CBOR map but {type(value).__name__}")
    if unknown := set(value) - keys:
        raise crypto.Malformed(f"{what} has unknown keys {', '.join(sorted(map(repr, unknown)))}")
    if missing := required - set(value):
        raise crypto.Malformed(f"{what} lacks {', '.join(sorted(missing))}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """What a call asks: operation ``op`` on object ``obj``, with ``body`` (of type
    ``ct``). Validated on construction: raises :class:`crypto.Malformed` (and
    :class:`crypto.TooLarge` for a body over :data:`MAX_CALL_BODY`)."""

    obj: str
    op: str
    body: bytes = b""
    ct: str | None = None

    def __post_init__(self) -> None:
        validate_object_name(self.obj)
        _operation(self.op)
        _body(self.body, "call")
        _ct(self.ct, "call")

    def encode(self) -> bytes:
        """The body of a call frame."""
        value: dict[str, Any] = {"obj": self.obj, "op": self.op, "body": self.body}
        if self.ct is not None:
            value["ct"] = self.ct
        return _cbor.encode(value)

    @classmethod
    def decode(cls, data: bytes) -> Call:
        """Read a call frame's body. Raises :class:`crypto.Malformed` (the caller's fault)."""
        value = _map(data, "call", _CALL_KEYS, _CALL_REQUIRED)
        return cls(value["obj"], value["op"], value["body"], value.get("ct"))


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """The answer to call frame ``re``: ``status`` (200..599, as HTTP's), ``body`` (of
    type ``ct``) and, for an error, ``why`` in words. Validated on construction: raises
    :class:`crypto.Malformed`."""

    re: bytes
    status: int
    body: bytes = b""
    ct: str | None = None
    why: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.re, bytes) or len(self.re) != crypto.FRAME_ID_SIZE:
            raise crypto.Malformed(f"reply re must be a frame id of {crypto.FRAME_ID_SIZE} bytes")
        status = self.status
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise crypto.Malformed(f"reply st must be a status of 200..599, got {status!r}")
        _body(self.body, "reply")
        _ct(self.ct, "reply")
        why = self.why
        if why is not None and (not isinstance(why, str) or len(why) > MAX_REPLY_WHY):
            raise crypto.Malformed(f"reply why must be text of <= {MAX_REPLY_WHY} characters")

    @property
    def ok(self) -> bool:
        """Did the object do it (a 2xx status)?"""
        return 200 <= self.status < 300

    def encode(self) -> bytes:
        """The body of a reply frame."""
        value: dict[str, Any] = {"re": self.re, "st": int(self.status), "body": self.body}
        if self.ct is not None:
            value["ct"] = self.ct
        if self.why is not None:
            value["why"] = self.why
        return _cbor.encode(value)

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        """Read a reply frame's body. Raises :class:`crypto.Malformed` (the replier's
        fault)."""
        value = _map(data, "reply", _REPLY_KEYS, _REPLY_REQUIRED)
        return cls(value["re"], value["st"], value["body"], value.get("ct"), value.get("why"))

    @classmethod
    def error(cls, re: bytes, status: int, why: str) -> Reply:
        """An error reply saying ``why`` (cut to :data:`MAX_REPLY_WHY` characters)."""
        return cls(re, status, why=why[:MAX_REPLY_WHY])


def event_topic(node: crypto.NodeId, name: str, event: str) -> str:
    """The topic of event ``event`` (one or more dot-separated words) of object
    ``name`` of ``node``: ``~<node-id>.obj.<name>.<event>``. Raises
    :class:`crypto.Malformed` for a bad name or event."""
    validate_object_name(name)
    if not isinstance(event, str) or not event or event.startswith("~"):
        raise crypto.Malformed(f"event {event!r} is not one or more dot-separated words")
    topic = f"~{node.text}.obj.{name}.{event}"
    try:
        return crypto.validate_topic(topic)
    except crypto.Malformed as exc:
        raise crypto.Malformed(f"event {event!r} of object {name!r}: {exc}") from exc


def events_pattern(node: crypto.NodeId, name: str) -> str:
    """The pattern of every event of object ``name`` of ``node``."""
    validate_object_name(name)
    return f"~{node.text}.obj.{name}.#"
