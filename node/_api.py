"""The local API under ``/api/v1/``, for the CLI and for programs in any language.

Every request needs ``Authorization: Bearer <token>``, the token the running node wrote
to ``DIR/api.token`` (mode 0600); a GET may carry it as ``?access_token=<token>``
instead (RFC 6750 2.3: a browser's ``EventSource`` cannot set headers). It is answered
only for clients on loopback (or an in-memory network). The running node also writes
``DIR/api.json`` with its API URL.

=======================================  ===========================================================
``POST /api/v1/send?to=ID``              body = the message bytes, ``Content-Type`` = its type; 200
                                         ``{"id", "to", "next_hop", "held"}`` once the frame is in
                                         this node's durable custody. ``&receipt=1`` asks for a
                                         delivery receipt; ``&wait=1[&timeout=S]`` also waits for
                                         it: 200 with ``"state": "delivered"``, 422 if it was
                                         dropped (``"why"``), 504 on time-out
``POST /api/v1/send/batch``              many messages in one request, taken into custody in one
                                         store transaction (all or none): the body is NDJSON
                                         (``Content-Type: application/x-ndjson``, one JSON object a
                                         line: ``{"to": ID, "body": text}`` or ``"body_b64"``;
                                         optional ``"ct"``, ``"receipt": true``, ``"ttl"`` in s;
                                         blank lines skipped) or a CBOR sequence (``application/
                                         cbor-seq``, RFC 8742: maps with the same keys, ``body`` a
                                         byte string). 200 ``{"sent": [{"id", "to", "next_hop",
                                         "held"}, ...]}`` in order; 400 names the first bad line
                                         (or item) and why, nothing taken; 413 past
                                         :data:`MAX_BATCH` messages; 415 another content type; 429
                                         when the store is full (nothing taken)
``GET /api/v1/inbox``                    Server-Sent Events, one ``message`` event per received
                                         message (JSON: id, src, ts, received, hops, ct, body as
                                         text or ``body_b64``); ``?follow=0`` ends when drained
``POST /api/v1/inbox/ack``               ``{"ids": ["SRC:ID" or "ID", ...]}`` -> ``{"acked": n}``
``POST /api/v1/publish``                 ``?topic=T[&ttl=S]``, body = the publication,
                                         ``Content-Type`` = its type; 200 ``{"id", "topic",
                                         "next_hops", "delivered_here"}`` once the frame is in this
                                         node's durable custody (``next_hops``: the neighbours
                                         toward the subscribers known now). 403 for a topic under
                                         another node's secure name ``~<id>``
``GET /api/v1/subscribe``                ``?pattern=P[&pattern=Q...]`` (``*`` one word, ``#`` zero
                                         or more): Server-Sent Events, one ``publication`` event per
                                         publication that matches (JSON: topic, origin, id, ts,
                                         received, hops, ct, body as text or ``body_b64``).
                                         Subscribed before the first line (a comment) is sent;
                                         unsubscribed when the client leaves (a comment every 15 s
                                         notices that). With ``&name=N`` the subscription is durable
                                         (kept, and advertised, when the client leaves; its patterns
                                         replace the old ones, or are the old ones if none is
                                         given): the stream first carries what is pending for it,
                                         oldest first, then new ones; each event has its ``seq``
                                         (also the event's ``id``). Streaming acknowledges nothing
``POST /api/v1/subscriptions/NAME/ack``  ``{"seqs": [seq, ...]}`` -> ``{"acked": n}``: done with
                                         these; they are not streamed again
``GET /api/v1/subscriptions``            JSON list of named subscriptions: name, patterns, lease
                                         (s), created (ms since the epoch)
``DELETE /api/v1/subscriptions/NAME``    end it (withdrawn, what was pending dropped): ``{"name",
                                         "removed": true}``; 404 if unknown
``POST /api/v1/chirp/post``              body = the post (UTF-8 text): ``{"id", "topic",
                                         "next_hops"}``
``POST /api/v1/chirp/follow``            ``?node=ID``: ``{"following": [ids]}``
``POST /api/v1/chirp/unfollow``          ``?node=ID``: ``{"unfollowed": bool, "following"}``
``GET /api/v1/chirp/following``          ``{"following": [ids]}``, in the order followed
``GET /api/v1/chirp/timeline``           JSON list of posts (author, text, ts, id, received), oldest
                                         first; ``?follow=1``: Server-Sent Events, one ``post``
                                         event each, the timeline then new posts (a comment every
                                         15 s); 409 if nobody is followed
``GET /api/v1/status``                   JSON: node id, name, endpoints, address, ``uptime`` (s),
                                         peers, ``neighbours`` (as ``GET neighbours``),
                                         ``routes`` (how many ``GET routes`` lists) and
                                         ``route_sample`` (its first :data:`ROUTE_SAMPLE`,
                                         nearest first), ``queues`` (as ``GET queues``),
                                         inbox and queued totals, attachments, relaying,
                                         ``subscriptions`` (named), ``counters``
``GET /api/v1/neighbours``               JSON list: each neighbour's link (node, roles, state,
                                         last_heard, last_ok, last_error, failures, ...), its
                                         ``name`` (a peer's) and what is ``queued`` for it
                                         (frames, bytes)
``GET /api/v1/routes``                   JSON list: destination, next_hop, hops, age
``GET /api/v1/queues``                   JSON list per next hop: frames, bytes, oldest, link
``POST /api/v1/queues/NEXT_HOP/purge``   drop every frame queued for NEXT_HOP (a node id, or
                                         ``held``: those with no route yet): ``{"next_hop",
                                         "frames", "bytes"}``; 400 for a malformed id, 404 if
                                         it is no neighbour and nothing is queued for it
``GET /api/v1/trace/ID``                 JSON: where frame ID (sent here) is known to be
``POST /api/v1/peers``                   body = an address token: verify, store, greet it
``GET /api/v1/policy``                   ``{"admission", "inbox", "blocked": [ids], "allowed":
                                         [ids]}``
``POST /api/v1/policy/block``            ``{"node": ID}``: its requests are refused (403) and its
                                         frames do not reach this node's application; the answer
                                         is the policy with ``"changed": bool``. Also ``unblock``,
                                         ``allow`` and ``unallow`` (the allow-list of inbox policy
                                         ``allow-list``)
``GET /api/v1/capabilities``             ``{"requires": [words], "held": [{"id", "ops", "on"}],
                                         "revocations": n}``
``POST /api/v1/capabilities``            body = a capability token: held (for this run) and
                                         presented where it applies (publications, subscriptions,
                                         messages, relays): ``{"id", "held"}``; 400 for a bad token
``POST /api/v1/capabilities/revocations``  body = a signed revocation (``application/cose``): kept,
                                         enforced and flooded to the mesh: ``{"id", "added"}``
``GET /api/v1/objects``                  JSON list of the objects exposed: name, kind (``forward``,
                                         ``inbox``, ``topic``, ``queue``, or ``program`` for one the
                                         embedding program exposed), target, open, saved
``POST /api/v1/objects``                 ``{"name", "kind", "target", "open"}``: expose a built-in
                                         object, kept in ``objects.json``; 400 bad, 409 name taken
``DELETE /api/v1/objects/NAME``          withdraw it for good (its capability URLs are revoked):
                                         ``{"name", "removed": true}``; 404 if unknown
``POST /api/v1/call``                    ``?to=ID&object=NAME&op=OP[&timeout=S]``, body = the call's
                                         body, ``Content-Type`` its type, ``Ptth-Cap: TOKEN`` the
                                         capability to present: 200 with the reply when one came
                                         (``{"status", "ct", "why", "body"`` or ``"body_b64"}``, and
                                         ``"error"`` for a status not 2xx); 504 when none came in
                                         time, 502 if the call was dropped on the way
``GET /api/v1/cap-urls``                 JSON list of the capability URLs minted: id, object,
                                         created, revoked (ms; their secrets are not kept)
``POST /api/v1/cap-urls``                ``{"object": NAME}``: mint one: ``{"id", "object",
                                         "created", "urls"}`` (the relay forms first); shown once
``DELETE /api/v1/cap-urls/ID``           revoke it (404 from then on): ``{"id", "revoked": true}``
=======================================  ===========================================================

``POST /api/v1/send``, ``POST /api/v1/send/batch`` and ``POST /api/v1/publish`` take an
``Idempotency-Key`` header (1 to 255 printable ASCII characters; the IETF httpapi draft):
the same key within 24 hours returns the first call's answer (with
``Idempotent-Replayed: true``) and takes nothing more, also after the node restarted;
the same key with another request (for a batch: another body) is 422. The key is kept
with the frames in one transaction, so a client that lost its connection retries safely.

Errors are JSON ``{"error": words}`` with a fitting status: 400 for a bad request, 404
for an unknown subscription or next hop, 413 for a body over the limit, 429 (with
``Retry-After``) when the store is full, 503 when the node cannot take it now.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final, Protocol, overload

import trio

import crypto
import mesh
from crypto import _cbor
from node._chirp import SUBSCRIPTION as CHIRP_SUBSCRIPTION
from node._chirp import Chirp, Post, chirp_topic
from node._errors import CallFailed, NodeError, Replayed
from node._message import Message, Publication, Published, Sent
from node._objects import DEFAULT_CALL_TIMEOUT, Exposed, NotFound, Objects, ObjectSpec
from node._pubsub import DurableSubscription, Subscription, validate_name
from node._server import Request, Response

__all__ = [
    "API_PREFIX",
    "MAX_BATCH",
    "ROUTE_SAMPLE",
    "ApiHost",
    "LocalApi",
    "neighbours_json",
    "trace_json",
]

API_PREFIX: Final = "/api/v1/"
_JSON: Final = "application/json"
#: Seconds between the comments that keep a quiet subscription stream alive: through
#: proxies, and so that a client that left is noticed (a write to it fails) and its
#: subscription ends.
KEEPALIVE: Final = 15.0
#: The longest ``ttl`` a publication may ask for (s): a frame's lifetime limit.
_MAX_TTL: Final = crypto.MAX_LIFETIME_MS / 1000
#: Publications of named subscriptions streamed lately whose acknowledgement needs no
#: look in the store (by name and seq, without their bodies); older ones are found
#: among what is pending.
_ACKABLE: Final = 10_000
#: What ``POST /api/v1/policy/<change>`` may ask (mesh.Policy's methods).
_POLICY_CHANGES: Final = ("block", "unblock", "allow", "unallow", "trust", "untrust")
#: The Idempotency-Key header, and what a key may be: printable ASCII, no spaces.
_KEY_HEADER: Final = "idempotency-key"
_KEY_RE: Final = re.compile(r"[!-~]{1,255}")
#: Set on an answer given again for a key seen before.
_REPLAYED: Final = "idempotent-replayed"
#: The most messages one ``POST /api/v1/send/batch`` takes: ten of the CLI's batches. A
#: batch is one store transaction and its frames are sealed before it; a bigger one
#: would only hold the store (and the answer's memory) longer for no gain in rate.
MAX_BATCH: Final = 10_000
#: Routes ``GET /api/v1/status`` lists (``route_sample``): enough for an overview; all
#: of them, thousands in a big mesh, are ``GET /api/v1/routes``.
ROUTE_SAMPLE: Final = 5
#: The batch formats: one JSON object a line, or a CBOR sequence (RFC 8742).
_NDJSON: Final = "application/x-ndjson"
_CBOR_SEQ: Final = "application/cbor-seq"
#: What a message of a batch may say.
_BATCH_FIELDS: Final = frozenset({"to", "body", "body_b64", "ct", "receipt", "ttl"})
#: Frames of a batch sealed between two checkpoints: sealing costs ~60 us a frame, so
#: the node's other tasks (forwarders, the server) run every few milliseconds while a
#: batch of 10,000 (~0.6 s of signing) is sealed.
_SEAL_CHUNK: Final = 64


def _json(status: int, value: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8")
    return Response(status, [("content-type", _JSON), *headers], body)


@dataclasses.dataclass(frozen=True)
class _Key:
    """An ``Idempotency-Key`` and the fingerprint of the request that carried it."""

    key: str
    fingerprint: bytes

    def record(self, answer: dict[str, Any]) -> mesh.Idempotent:
        return mesh.Idempotent(self.key, self.fingerprint, json.dumps(answer).encode("utf-8"))


def _idempotency(request: Request, *parts: str) -> _Key | Response | None:
    """The request's ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header),
    with a fingerprint of what it asks (``parts`` and the body); None without one; a
    400 for a malformed one."""
    key = request.header(_KEY_HEADER)
    if key is None:
        return None
    key = key.strip().strip('"')  # the draft's sf-string form, or a bare token
    if not _KEY_RE.fullmatch(key):
        return _error(
            400,
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces "
            f"(e.g. a random token), not {key[:40]!r}",
        )
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(request.body)
    return _Key(key, digest.digest())


def _key_reused(replay: Replayed) -> Response:
    return _error(
        422,
        f"Idempotency-Key {replay.record.key!r} was used for a different request in the "
        f"last {mesh.IDEMPOTENCY_WINDOW_MS // 3_600_000} h: use a new key for a new request",
    )


def _sent_json(sent: Sent) -> dict[str, Any]:
    return {
        "id": sent.id.hex(),
        "to": sent.dst.text,
        "next_hop": None if sent.next_hop is None else sent.next_hop.text,
        "held": sent.next_hop is None,
    }


def _batch_json(sent: Sequence[Sent]) -> dict[str, Any]:
    return {"sent": [_sent_json(one) for one in sent]}


def _published_json(published: Published) -> dict[str, Any]:
    return {
        "id": published.id.hex(),
        "topic": published.topic,
        "next_hops": [hop.text for hop in published.next_hops],
        "delivered_here": published.delivered_here,
    }


def _error(status: int, words: str) -> Response:
    return _json(status, {"error": words})


def _json_error(status: int, words: str, headers: list[tuple[str, str]]) -> Response:
    response = _error(status, words)
    response.headers.extend(headers)
    return response


def _seconds(query: dict[str, list[str]], name: str) -> float | Response | None:
    """Query parameter ``name``: seconds up to a frame's longest lifetime (None: not
    given), or the 400 that says what is wrong with it."""
    if name not in query:
        return None
    given = query[name][-1]
    try:
        seconds = float(given)
        if not 0 < seconds <= _MAX_TTL:
            raise ValueError(seconds)
    except ValueError:
        return _error(
            400,
            f"{name} must be a positive number of seconds up to {_MAX_TTL:.0f}, not {given!r}",
        )
    return seconds


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes")


def _load_json(body: bytes | str) -> Any:
    """``body`` as JSON; ValueError for anything else (also nesting too deep to parse)."""
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _ack_key(text: object) -> tuple[crypto.NodeId, bytes] | bytes:
    """``SRC:ID`` (origin node id, frame id in hex) or a bare frame id."""
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a string")
    src, sep, frame_id = text.rpartition(":")
    if sep:
        return crypto.NodeId.parse(src), bytes.fromhex(frame_id)
    return bytes.fromhex(text)


def _body_json(body: bytes) -> dict[str, str]:
    """``{"body": text}`` when ``body`` is UTF-8, else ``{"body_b64": base64}``."""
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(body).decode("ascii")}


def message_json(message: Message) -> dict[str, Any]:
    """A received message as JSON: the body as text when it is UTF-8, else base64."""
    value: dict[str, Any] = {
        "id": message.id.hex(),
        "src": message.src.text,
        "ts": message.ts,
        "received": message.received,
        "hops": message.hops,
        "ct": message.ct,
    }
    value.update(_body_json(message.body))
    return value


def publication_json(publication: Publication) -> dict[str, Any]:
    """A received publication as JSON: the body as text when it is UTF-8, else base64."""
    value: dict[str, Any] = {
        "topic": publication.topic,
        "origin": publication.origin.text,
        "id": publication.id.hex(),
        "ts": publication.ts,
        "received": publication.received,
        "hops": publication.hops,
        "ct": publication.ct,
    }
    value.update(_body_json(publication.body))
    return value


def post_json(post: Post) -> dict[str, Any]:
    """A chirp post as JSON."""
    return {
        "author": post.author.text,
        "text": post.text,
        "ts": post.ts,
        "id": post.id.hex(),
        "received": post.received,
    }


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _failure(exc: crypto.Malformed | mesh.MeshError | NodeError) -> Response:
    """The answer to a call the node refused: 400 for a bad value, 429 when the store
    is full, 503 when the node cannot take it now."""
    if isinstance(exc, crypto.Malformed):
        return _error(400, str(exc))
    if isinstance(exc, mesh.StoreFull):
        return _json_error(429, str(exc), [("retry-after", "30")])
    if isinstance(exc, mesh.MeshError):
        return _error(503, f"store unavailable: {exc}")
    return _error(503, str(exc))


class _BadBatch(Exception):
    """A batch refused whole, with the status to answer and why."""

    def __init__(self, status: int, words: str) -> None:
        super().__init__(words)
        self.status = status


@dataclasses.dataclass(frozen=True)
class _Wanted:
    """One message of a batch, checked: what to make its frame of. ``where``: "line N"
    or "item N" (1-based), for the error if its frame cannot be made."""

    where: str
    dst: crypto.NodeId
    body: bytes
    ct: str | None
    receipt: bool
    ttl: float | None


def _batch_items(media: str, body: bytes) -> Iterator[tuple[str, Any]]:
    """The messages of a batch body as decoded values, each with where it stands ("line
    N" of NDJSON, blank lines skipped; "item N" of a CBOR sequence). Raises
    :class:`_BadBatch`: 400 for one that does not decode, 413 past :data:`MAX_BATCH`."""
    too_many = f"more than {MAX_BATCH} messages in one batch: split it"
    if media == _NDJSON:
        count = 0
        for number, line in enumerate(body.split(b"\n"), 1):
            if not line.strip():
                continue
            count += 1
            if count > MAX_BATCH:
                raise _BadBatch(413, f"{too_many} (line {number} is message {count})")
            try:
                text = line.decode("utf-8")  # NDJSON is UTF-8 (not JSON's UTF-16 or 32)
            except UnicodeDecodeError as exc:
                raise _BadBatch(
                    400, f"line {number}: not UTF-8 text (byte {exc.start + 1})"
                ) from None
            try:
                value = _load_json(text)
            except json.JSONDecodeError as exc:
                raise _BadBatch(
                    400, f"line {number}: not JSON: {exc.msg} at column {exc.colno}"
                ) from None
            except ValueError as exc:
                raise _BadBatch(400, f"line {number}: not JSON: {exc}") from None
            yield f"line {number}", value
        return
    items = _cbor.decode_sequence(body, what="CBOR item", max_items=MAX_BATCH)
    number = 0
    while True:
        try:
            value = next(items)
        except StopIteration:
            return
        except crypto.TooLarge:
            raise _BadBatch(413, too_many) from None
        except crypto.Malformed as exc:
            raise _BadBatch(400, f"item {number + 1}: not valid CBOR: {_innermost(exc)}") from None
        number += 1
        yield f"item {number}", value


def _clip(words: str, limit: int = 300) -> str:
    """``words``, cut to ``limit`` characters (an error quoting a huge value)."""
    return words if len(words) <= limit else f"{words[: limit - 3]}..."


def _innermost(exc: BaseException) -> str:
    """The words of the innermost cause of ``exc`` (cbor2's own, not our wrapping)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


def _batch_message(where: str, value: Any, own: crypto.NodeId) -> _Wanted:
    """Check one message of a batch; raise :class:`_BadBatch` (400) saying where and why."""

    def bad(words: str) -> _BadBatch:
        return _BadBatch(400, _clip(f"{where}: {words}"))

    if not isinstance(value, dict):
        raise bad(
            'a message is an object like {"to": NODE_ID, "body": TEXT}, not '
            f"{type(value).__name__}"
        )
    unknown = [name for name in value if name not in _BATCH_FIELDS]
    if unknown:
        named = ", ".join(repr(str(name)[:40]) for name in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise bad(f"unknown field {named}{more} (a message has {', '.join(sorted(_BATCH_FIELDS))})")
    to = value.get("to")
    if not isinstance(to, str):
        raise bad('say who it is for: "to": NODE_ID')
    try:
        dst = crypto.NodeId.parse(to)
    except crypto.Malformed as exc:
        raise bad(f"bad node id: {exc}") from None
    if dst == own:
        raise bad("a node cannot send to itself")
    if ("body" in value) == ("body_b64" in value):
        raise bad('give the body once: "body" (text, or bytes in CBOR) or "body_b64" (base64)')
    body: bytes
    if "body" in value:
        text = value["body"]
        if isinstance(text, bytes):
            body = text
        elif isinstance(text, str):
            try:
                body = text.encode("utf-8")
            except UnicodeEncodeError:
                raise bad('"body" holds a lone surrogate, not text: use "body_b64"') from None
        else:
            raise bad(f'"body" must be text (or bytes in CBOR), not {type(text).__name__}')
    else:
        encoded = value["body_b64"]
        if not isinstance(encoded, str):
            raise bad(f'"body_b64" must be base64 text, not {type(encoded).__name__}')
        try:
            body = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise bad(f'"body_b64" is not base64: {exc}') from None
    ct = value.get("ct")
    if ct is not None and not isinstance(ct, str):
        raise bad(f'"ct" must be a content type (text), not {type(ct).__name__}')
    receipt = value.get("receipt", False)
    if not isinstance(receipt, bool):
        raise bad(f'"receipt" must be true or false, not {receipt!r:.40}')
    ttl = value.get("ttl")
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= _MAX_TTL
    ):
        raise bad(
            f'"ttl" must be a positive number of seconds up to {_MAX_TTL:.0f}, not {ttl!r:.40}'
        )
    return _Wanted(where, dst, body, ct, receipt, None if ttl is None else float(ttl))


def _content_type(request: Request) -> str | None:
    ct = request.header("content-type")
    if ct == "application/x-www-form-urlencoded":  # curl's default, not a real type
        return None
    return ct


def neighbours_json(
    status: dict[str, Any], queues: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each neighbour's link as ``status["neighbours"]`` has it, with its peer ``name``
    (None if it is no peer or has none), what is ``queued`` for it (frames, bytes
    charged) and its ``announces_waiting``, from ``queues`` (``GET queues``)."""
    names = {peer.get("node"): peer.get("name") for peer in status.get("peers", [])}
    by_hop = {queue.get("next_hop"): queue for queue in queues}
    neighbours = []
    for link in status.get("neighbours", []):
        queue = by_hop.get(link.get("node"), {})
        neighbours.append(
            {
                **link,
                "name": names.get(link.get("node")),
                "queued": {"frames": queue.get("frames", 0), "bytes": queue.get("bytes", 0)},
                "announces_waiting": queue.get("announces_waiting", 0),
            }
        )
    return neighbours


def _subscription_json(saved: mesh.SavedSubscription) -> dict[str, Any]:
    return {
        "name": saved.name,
        "patterns": list(saved.patterns),
        "lease": saved.lease_ms / 1000,
        "created": saved.created,
    }


def trace_json(trace: mesh.Trace) -> dict[str, Any]:
    """A frame's trace as JSON (times in ms since the epoch)."""

    def text(node: crypto.NodeId | None) -> str | None:
        return None if node is None else node.text

    return {
        "id": trace.id.hex(),
        "to": trace.dst.text,
        "state": trace.state,
        "created": trace.created,
        "expires": trace.exp,
        "receipt_asked": trace.receipt,
        "next_hop": text(trace.next_hop),
        "first_hop": text(trace.first_hop),
        "first_accepted": trace.first_accepted,
        "settled_at": trace.done_at,
        "hops": trace.hops,
        "by": text(trace.by),
        "why": trace.why,
        "receipts": [
            {
                "by": r.by.text,
                "state": r.state,
                "why": r.why,
                "hops": r.hops,
                "at": r.ts,
                "received": r.received,
            }
            for r in trace.receipts
        ],
    }


class ApiHost(Protocol):
    """What the local API needs from the node."""

    api_token: str
    identity: crypto.Identity

    def new_frame(
        self,
        dst: crypto.NodeId,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
    ) -> crypto.Frame: ...

    async def send_sealed(
        self,
        frames: Sequence[tuple[crypto.Frame, bytes]],
        *,
        idempotent: Callable[[list[Sent]], mesh.Idempotent] | None = None,
    ) -> list[Sent]: ...

    async def delivered(self, frame_id: bytes) -> mesh.Trace: ...

    async def trace(self, frame_id: bytes) -> mesh.Trace | None: ...

    def routes(self) -> list[dict[str, Any]]: ...

    async def queues(self) -> list[dict[str, Any]]: ...

    async def purge_queue(self, next_hop: crypto.NodeId | None) -> tuple[int, int]: ...

    async def current_status(self) -> dict[str, Any]: ...

    def inbox_pages(self, *, follow: bool = True) -> AsyncGenerator[list[Message], None]: ...

    async def ack(self, keys: Sequence[tuple[crypto.NodeId, bytes] | bytes]) -> int: ...

    async def add_peer(self, token: str) -> crypto.SignedAddress: ...

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        idempotent: Callable[[Published], mesh.Idempotent] | None = None,
    ) -> Published: ...

    @overload
    def subscribe(
        self, *patterns: str, name: None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @overload
    def subscribe(
        self, *patterns: str, name: str
    ) -> contextlib.AbstractAsyncContextManager[DurableSubscription]: ...

    async def unsubscribe(self, name: str) -> bool: ...

    async def subscriptions(self) -> list[mesh.SavedSubscription]: ...

    @property
    def chirp(self) -> Chirp: ...

    def policy(self) -> dict[str, Any]: ...

    async def change_policy(self, change: str, node: crypto.NodeId) -> bool: ...

    def capabilities(self) -> dict[str, Any]: ...

    def hold(self, capability: crypto.Capability | str) -> crypto.Capability: ...

    async def add_revocation(self, revocation: crypto.Revocation) -> bool: ...

    @property
    def objects(self) -> Objects: ...


def _is_local(peer: str) -> bool:
    host = peer.rpartition(":")[0].strip("[]") if ":" in peer else peer
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # Not an IP peer: an in-memory network inside this process; "?" is a peer the
        # server could not name, which is not known to be local.
        return host not in ("", "?")


class LocalApi:
    """Serves ``/api/v1/`` for one node."""

    def __init__(self, node: ApiHost) -> None:
        self.node = node
        self._streamed: dict[tuple[str, int], Publication] = {}
        #: When the node started (trio time: it makes its API as it starts), for the
        #: ``uptime`` of ``GET status``; None if made outside trio.
        self._started: float | None = None
        with contextlib.suppress(RuntimeError):
            self._started = trio.current_time()

    def refusal(self, request: Request, query: dict[str, list[str]]) -> Response | None:
        """Why ``request`` may not use the API (403 from elsewhere than this machine,
        401 without the bearer token), or None. Takes ``access_token`` out of
        ``query``."""
        if request.relayed or not _is_local(request.peer):
            return _error(403, "the local API answers only clients on this machine")
        presented = request.header("authorization") or ""
        if not presented and request.method in ("GET", "HEAD") and "access_token" in query:
            # A browser's EventSource cannot set headers: RFC 6750 2.3, for GETs only.
            presented = f"Bearer {query.pop('access_token')[-1]}"
        expected = f"Bearer {self.node.api_token}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return _error(401, "missing or wrong bearer token (see api.token in the data dir)")
        return None

    async def handle(self, request: Request) -> Response:
        query = urllib.parse.parse_qs(request.query)
        refused = self.refusal(request, query)
        if refused is not None:
            return refused
        route = (request.method, request.path[len(API_PREFIX) :])
        if route == ("POST", "send"):
            return await self.send(request, query)
        if route == ("POST", "send/batch"):
            return await self.send_batch(request)
        if route == ("GET", "inbox"):
            return self.inbox(query)
        if route == ("POST", "inbox/ack"):
            return await self.ack(request)
        if route == ("GET", "status"):
            return await self.status()
        if route == ("GET", "neighbours"):
            return await self.neighbours()
        if route == ("GET", "routes"):
            return _json(200, self.node.routes())
        if route == ("GET", "queues"):
            return _json(200, await self.node.queues())
        if route[0] == "GET" and route[1].startswith("trace/"):
            return await self.trace(route[1][len("trace/") :])
        if route == ("POST", "peers"):
            return await self.add_peer(request)
        if route == ("POST", "publish"):
            return await self.publish(request, query)
        if route == ("GET", "subscribe"):
            return await self.subscribe(query)
        if route == ("GET", "subscriptions"):
            return await self.subscriptions()
        method, path = route
        if path.startswith("subscriptions/"):
            name, _, action = path[len("subscriptions/") :].partition("/")
            name = urllib.parse.unquote(name)
            if (method, action) == ("POST", "ack"):
                return await self.ack_subscription(name, request)
            if (method, action) == ("DELETE", ""):
                return await self.unsubscribe(name)
        if path.startswith("queues/"):
            hop, _, action = path[len("queues/") :].partition("/")
            if (method, action) == ("POST", "purge"):
                return await self.purge_queue(urllib.parse.unquote(hop))
        if path.startswith("chirp/"):
            return await self.chirp(method, path[len("chirp/") :], request, query)
        if route == ("GET", "capabilities"):
            return self.capabilities()
        if route == ("POST", "capabilities"):
            return self.hold(request)
        if route == ("POST", "capabilities/revocations"):
            return await self.revocation(request)
        if path in ("objects", "call", "cap-urls") or path.startswith(("objects/", "cap-urls/")):
            return await self.objects(method, path, request, query)
        if route == ("GET", "policy"):
            return _json(200, self.node.policy())
        if method == "POST" and path.startswith("policy/"):
            return await self.change_policy(path[len("policy/") :], request)
        return _error(404, f"no such API call: {request.method} {request.path}")

    async def send(self, request: Request, query: dict[str, list[str]]) -> Response:
        targets = query.get("to", [])
        if len(targets) != 1:
            return _error(400, "say who to send to: ?to=NODE_ID")
        try:
            dst = crypto.NodeId.parse(targets[0])
        except crypto.Malformed as exc:
            return _error(400, f"bad node id: {exc}")
        if dst == self.node.identity.node_id:
            return _error(400, "a node cannot send to itself")
        wait = _flag(query, "wait")
        receipt = wait or _flag(query, "receipt")
        timeout: float | None = None
        if wait and "timeout" in query:
            try:
                timeout = float(query["timeout"][-1])
                if not timeout > 0:
                    raise ValueError(timeout)
            except ValueError:
                return _error(
                    400,
                    f"timeout must be a positive number of seconds, not {query['timeout'][-1]!r}",
                )
        ct = _content_type(request)
        key = _idempotency(request, "send", dst.text, ct or "", str(receipt))
        if isinstance(key, Response):
            return key
        try:
            frame = self.node.new_frame(dst, request.body, ct=ct, receipt=receipt)
            envelope = frame.seal(self.node.identity)
        except crypto.Malformed as exc:
            status = 413 if len(request.body) > crypto.MAX_BODY_SIZE else 400
            return _error(status, str(exc))
        replayed = False
        try:
            (sent,) = await self.node.send_sealed(
                [(frame, envelope)],
                idempotent=None if key is None else lambda s: key.record(_sent_json(s[0])),
            )
            answer = _sent_json(sent)
        except Replayed as replay:
            if key is None or replay.record.fingerprint != key.fingerprint:
                return _key_reused(replay)
            answer, replayed = json.loads(replay.record.response), True
        except mesh.StoreFull as exc:
            return _json_error(429, str(exc), [("retry-after", "30")])
        except NodeError as exc:
            return _error(503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        headers = [(_REPLAYED, "true")] if replayed else []
        if not wait:
            return _json(200, answer, headers)
        try:
            with trio.fail_after(timeout if timeout is not None else math.inf):
                trace = await self.node.delivered(bytes.fromhex(answer["id"]))
        except trio.TooSlowError:
            answer["error"] = f"no receipt within {timeout:g} s; the frame is still in the mesh"
            answer["state"] = "waiting"
            return _json(504, answer, headers)
        # The custody fields (next hop at the time of sending) stay as they were.
        answer.update({k: v for k, v in trace_json(trace).items() if k not in answer})
        if trace.state != "delivered":
            answer["error"] = f"dropped by {trace.by.short if trace.by else '?'}: {trace.why}"
            return _json(422, answer, headers)
        return _json(200, answer, headers)

    async def send_batch(self, request: Request) -> Response:
        """``POST /api/v1/send/batch``: every message of the body into custody in one
        store transaction, or none of them."""
        media = (request.header("content-type") or "").partition(";")[0].strip().lower()
        if media not in (_NDJSON, _CBOR_SEQ):
            return _error(
                415,
                f"a batch is {_NDJSON} (one JSON object a line) or {_CBOR_SEQ} (a CBOR "
                f"sequence): say which with Content-Type, not {media[:60] or 'none'!r}",
            )
        key = _idempotency(request, "send/batch", media)
        if isinstance(key, Response):
            return key
        own = self.node.identity.node_id
        try:
            wanted = [_batch_message(*item, own) for item in _batch_items(media, request.body)]
        except _BadBatch as exc:
            return _error(exc.status, str(exc))
        if not wanted:
            return _error(400, "the batch holds no messages")
        frames: list[crypto.Frame] = []
        for want in wanted:
            try:
                frames.append(
                    self.node.new_frame(
                        want.dst, want.body, ct=want.ct, ttl=want.ttl, receipt=want.receipt
                    )
                )
            except crypto.Malformed as exc:
                # (The words quote the value, which a batch does not bound as a header is.)
                return _error(400, _clip(f"{want.where}: {exc}"))
        sealed: list[tuple[crypto.Frame, bytes]] = []
        for index, frame in enumerate(frames):
            if index and index % _SEAL_CHUNK == 0:
                await trio.lowlevel.checkpoint()  # let the node's other tasks run
            sealed.append((frame, frame.seal(self.node.identity)))
        replayed = False
        try:
            sent = await self.node.send_sealed(
                sealed,
                idempotent=None if key is None else lambda s: key.record(_batch_json(s)),
            )
            answer = _batch_json(sent)
        except Replayed as replay:
            if key is None or replay.record.fingerprint != key.fingerprint:
                return _key_reused(replay)
            answer, replayed = json.loads(replay.record.response), True
        except mesh.StoreFull as exc:
            return _json_error(
                429, f"{exc}; none of the {len(sealed)} messages was taken", [("retry-after", "30")]
            )
        except NodeError as exc:
            return _error(503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, answer, [(_REPLAYED, "true")] if replayed else [])

    def capabilities(self) -> Response:
        return _json(200, self.node.capabilities())

    def hold(self, request: Request) -> Response:
        try:
            text = request.body.decode("ascii")
            capability = self.node.hold(text)
        except UnicodeDecodeError:
            return _error(400, "body must be a capability token (ptthcap:...), ASCII")
        except crypto.CryptoError as exc:
            return _error(400, f"not a usable capability: {exc}")
        return _json(200, {"id": capability.id_text, "held": len(self.node.capabilities()["held"])})

    async def revocation(self, request: Request) -> Response:
        try:
            revocation = crypto.Revocation.open(request.body)
        except crypto.CryptoError as exc:
            return _error(400, f"not a signed revocation: {exc}")
        try:
            added = await self.node.add_revocation(revocation)
        except NodeError as exc:
            return _error(503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, {"id": revocation.id_text, "added": added})

    async def change_policy(self, change: str, request: Request) -> Response:
        if change not in _POLICY_CHANGES:
            return _error(
                404, f"no such policy change {change!r}: use one of {', '.join(_POLICY_CHANGES)}"
            )
        try:
            value = _load_json(request.body)
            node = crypto.NodeId.parse(value["node"])
        except (ValueError, KeyError, TypeError, crypto.Malformed) as exc:
            return _error(400, f'body must be {{"node": "NODE_ID"}}: {exc}')
        try:
            changed = await self.node.change_policy(change, node)
        except (ValueError, NodeError) as exc:
            return _error(409 if isinstance(exc, ValueError) else 503, str(exc))
        return _json(200, {**self.node.policy(), "changed": changed})

    async def trace(self, text: str) -> Response:
        try:
            frame_id = bytes.fromhex(text)
        except ValueError:
            return _error(400, f"frame id {text!r} is not hex")
        trace = await self.node.trace(frame_id)
        if trace is None:
            return _error(404, f"this node sent no frame {text} (or forgot it)")
        return _json(200, trace_json(trace))

    async def add_peer(self, request: Request) -> Response:
        try:
            token = request.body.decode("ascii").strip()
            address = await self.node.add_peer(token)
        except UnicodeDecodeError:
            return _error(400, "the body must be an address token (ptth:...)")
        except crypto.CryptoError as exc:
            return _error(400, f"not added: {exc}")
        except NodeError as exc:
            return _error(400, str(exc))
        return _json(200, {"node": address.node.text, "seq": address.record.seq})

    def inbox(self, query: dict[str, list[str]]) -> Response:
        follow = query.get("follow", ["1"])[-1] not in ("0", "false", "no")

        async def events() -> AsyncIterator[bytes]:
            yield b": ptth inbox\n\n"
            async with contextlib.aclosing(self.node.inbox_pages(follow=follow)) as pages:
                async for page in pages:
                    # A page of events in one write: one send for up to 100 messages.
                    yield "".join(
                        f"id: {message.seq}\nevent: message\ndata: "
                        f"{json.dumps(message_json(message), separators=(',', ':'))}\n\n"
                        for message in page
                    ).encode()
            yield b"event: end\ndata: {}\n\n"

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        return Response(200, headers, stream=events(), long_lived=follow)

    async def ack(self, request: Request) -> Response:
        try:
            value = _load_json(request.body)
            keys = [_ack_key(text) for text in value["ids"]]
        except (ValueError, KeyError, TypeError, crypto.Malformed) as exc:
            return _error(400, f'body must be {{"ids": ["SRC:ID" or "ID" (hex), ...]}}: {exc}')
        return _json(200, {"acked": await self.node.ack(keys)})

    async def publish(self, request: Request, query: dict[str, list[str]]) -> Response:
        topics = query.get("topic", [])
        if len(topics) != 1:
            return _error(400, "say which topic to publish to, once: ?topic=TOPIC")
        topic = topics[0]
        ttl = _seconds(query, "ttl")
        if isinstance(ttl, Response):
            return ttl
        ct = _content_type(request)
        key = _idempotency(request, "publish", topic, ct or "", str(ttl))
        if isinstance(key, Response):
            return key
        owner = None
        try:
            crypto.validate_topic(topic)
            owner = mesh.secure_owner(topic)
            published = await self.node.publish(
                topic,
                request.body,
                ct=ct,
                ttl=ttl,
                idempotent=None if key is None else lambda p: key.record(_published_json(p)),
            )
        except Replayed as replay:
            if key is None or replay.record.fingerprint != key.fingerprint:
                return _key_reused(replay)
            return _json(200, json.loads(replay.record.response), [(_REPLAYED, "true")])
        except crypto.Malformed as exc:
            status = 413 if len(request.body) > crypto.MAX_BODY_SIZE else 400
            return _error(status, str(exc))
        except mesh.StoreFull as exc:
            return _json_error(429, str(exc), [("retry-after", "30")])
        except NodeError as exc:
            # Another node's secure name, or a node that is stopping.
            foreign = owner is not None and owner != self.node.identity.node_id
            return _error(403 if foreign else 503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, _published_json(published))

    async def subscribe(self, query: dict[str, list[str]]) -> Response:
        patterns = query.get("pattern", [])
        names = query.get("name", [])
        if len(names) > 1:
            return _error(400, f"name the subscription once (&name=NAME), not {len(names)} times")
        name = names[0] if names else None
        if not patterns and name is None:
            return _error(
                400,
                "say what to subscribe to: ?pattern=P (repeatable; '*' matches one word, "
                "'#' zero or more)",
            )
        try:
            for pattern in patterns:
                crypto.validate_pattern(pattern)
            if name is not None:
                validate_name(name)
        except crypto.Malformed as exc:
            return _error(400, str(exc))
        if name is not None and not patterns:
            # Resume a named subscription as it is.
            try:
                saved = await self._saved(name)
            except (mesh.MeshError, NodeError) as exc:
                return _failure(exc)
            if saved is None:
                return _no_subscription(name, "give its patterns (&pattern=P) to start it")
            patterns = list(saved.patterns)

        async def events() -> AsyncIterator[bytes]:
            async with contextlib.AsyncExitStack() as stack:
                subscription: Subscription | DurableSubscription
                try:
                    if name is None:
                        subscription = await stack.enter_async_context(
                            self.node.subscribe(*patterns)
                        )
                    else:
                        subscription = await stack.enter_async_context(
                            self.node.subscribe(*patterns, name=name)
                        )
                except NodeError as exc:
                    yield _sse("end", {"error": str(exc)})
                    return
                # Subscribed: whatever is published from now on reaches this stream (and
                # a named subscription's stream starts with what is pending for it).
                named = "" if name is None else f" as {name}"
                yield f": ptth subscribe {' '.join(subscription.patterns)}{named}\n\n".encode()
                while True:
                    publication: Publication | None = None
                    with trio.move_on_after(KEEPALIVE):
                        try:
                            publication = await subscription.get()
                        except trio.EndOfChannel:  # the node stops
                            break
                    if publication is None:
                        yield b": keep-alive\n\n"
                        continue
                    data = publication_json(publication)
                    if name is None:
                        yield _sse("publication", data, publication.id.hex())
                        continue
                    data["seq"] = publication.seq
                    self._remember(name, publication)
                    yield _sse("publication", data, str(publication.seq))
            yield b"event: end\ndata: {}\n\n"

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        return Response(200, headers, stream=events(), long_lived=True)

    def _remember(self, name: str, publication: Publication) -> None:
        """Keep how to acknowledge a streamed publication (not its body)."""
        key = (name, publication.seq)
        self._streamed.pop(key, None)
        self._streamed[key] = dataclasses.replace(publication, body=b"")
        if len(self._streamed) > _ACKABLE:
            del self._streamed[next(iter(self._streamed))]

    async def _saved(self, name: str) -> mesh.SavedSubscription | None:
        for saved in await self.node.subscriptions():
            if saved.name == name:
                return saved
        return None

    async def subscriptions(self) -> Response:
        try:
            saved = await self.node.subscriptions()
        except (mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        return _json(200, [_subscription_json(s) for s in saved])

    # -- the operator's views ------------------------------------------------------------

    async def status(self) -> Response:
        """``GET status``: the node's own status, with what an overview needs besides
        (``ptth status`` makes one request)."""
        try:
            status = await self.node.current_status()
            queues = await self.node.queues()
            saved = await self.node.subscriptions()
        except (mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        routes = self.node.routes()
        started = self._started
        status["uptime"] = None if started is None else round(trio.current_time() - started, 3)
        status["neighbours"] = neighbours_json(status, queues)
        # The destinations with a route in use, neighbours too, as GET routes lists them
        # (nearest first): the routing table alone holds only the learned ones.
        status["routes"] = len(routes)
        status["route_sample"] = routes[:ROUTE_SAMPLE]
        status["queues"] = queues
        status["subscriptions"] = [_subscription_json(s) for s in saved]
        return _json(200, status)

    async def neighbours(self) -> Response:
        try:
            status = await self.node.current_status()
            queues = await self.node.queues()
        except (mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        return _json(200, neighbours_json(status, queues))

    async def purge_queue(self, text: str) -> Response:
        """``POST queues/NEXT_HOP/purge``: NEXT_HOP is a node id, or ``held``."""
        next_hop: crypto.NodeId | None = None
        try:
            if text != "held":
                try:
                    next_hop = crypto.NodeId.parse(text)
                except crypto.Malformed as exc:
                    return _error(
                        400,
                        f"bad next hop {_clip(text, 60)!r}: {exc} (give a node id, or 'held' "
                        "for the frames held with no route)",
                    )
                hops = {queue.get("next_hop") for queue in await self.node.queues()}
                if next_hop.text not in hops:
                    return _error(
                        404,
                        f"this node has no queue for {next_hop.text}: it is no neighbour and "
                        "nothing is queued for it (see GET /api/v1/queues or 'ptth queues')",
                    )
            frames, size = await self.node.purge_queue(next_hop)
        except (mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        hop = None if next_hop is None else next_hop.text
        return _json(200, {"next_hop": hop, "frames": frames, "bytes": size})

    async def ack_subscription(self, name: str, request: Request) -> Response:
        try:
            validate_name(name)
        except crypto.Malformed as exc:
            return _error(400, str(exc))
        try:
            seqs = _load_json(request.body)["seqs"]
            if not isinstance(seqs, list) or not all(
                isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 for seq in seqs
            ):
                raise TypeError(f"got {seqs!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f'body must be {{"seqs": [seq (a positive integer), ...]}}: {exc}')
        try:
            saved = await self._saved(name)
            if saved is None:
                return _no_subscription(name)
            acked = 0
            rest: set[int] = set()
            for seq in dict.fromkeys(seqs):
                streamed = self._streamed.pop((name, seq), None)
                if streamed is None:
                    rest.add(seq)
                else:
                    await streamed.ack()
                    acked += 1
            if rest:
                async with self.node.subscribe(*saved.patterns, name=name) as subscription:
                    for publication in await subscription.pending():
                        if publication.seq in rest:
                            await publication.ack()
                            acked += 1
        except (crypto.Malformed, mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        return _json(200, {"acked": acked})

    async def unsubscribe(self, name: str) -> Response:
        try:
            validate_name(name)
            removed = await self.node.unsubscribe(name)
        except (crypto.Malformed, mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        for key in [key for key in self._streamed if key[0] == name]:
            del self._streamed[key]
        if not removed:
            return _no_subscription(name)
        return _json(200, {"name": name, "removed": True})

    # -- chirp --------------------------------------------------------------------------

    async def chirp(
        self, method: str, call: str, request: Request, query: dict[str, list[str]]
    ) -> Response:
        chirp = self.node.chirp
        try:
            if (method, call) == ("POST", "post"):
                try:
                    text = request.body.decode("utf-8")
                except UnicodeDecodeError:
                    return _error(400, "a post is UTF-8 text; this body is not")
                published = await chirp.post(text)
                return _json(
                    200,
                    {
                        "id": published.id.hex(),
                        "topic": published.topic,
                        "next_hops": [hop.text for hop in published.next_hops],
                    },
                )
            if (method, call) in (("POST", "follow"), ("POST", "unfollow")):
                who = _node_param(query)
                if isinstance(who, Response):
                    return who
                if who == self.node.identity.node_id:
                    return _error(400, f"a node does not {call} itself: give another node's id")
                if call == "follow":
                    return _json(200, {"following": _texts(await chirp.follow(who))})
                unfollowed = await chirp.unfollow(who)
                following = _texts(await chirp.following())
                return _json(200, {"unfollowed": unfollowed, "following": following})
            if (method, call) == ("GET", "following"):
                return _json(200, {"following": _texts(await chirp.following())})
            if (method, call) == ("GET", "timeline"):
                if _flag(query, "follow"):
                    return await self.chirp_watch(chirp)
                return _json(200, [post_json(post) for post in await chirp.timeline()])
        except (crypto.Malformed, mesh.MeshError, NodeError) as exc:
            return _failure(exc)
        return _error(404, f"no such API call: {request.method} {request.path}")

    async def chirp_watch(self, chirp: Chirp) -> Response:
        """The timeline, then each new post, as Server-Sent Events. (This is
        ``Chirp.watch``, but waiting in a way that can be interrupted for the keep-alive
        comments: interrupting that generator would end it.)"""
        followed = await chirp.following()
        if not followed:
            return _error(
                409, "this node follows nobody: follow someone first ('ptth chirp follow NODE_ID')"
            )
        topics = [chirp_topic(author) for author in followed]

        async def events() -> AsyncIterator[bytes]:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    backlog = await chirp.timeline()
                    subscription = await stack.enter_async_context(
                        self.node.subscribe(*topics, name=CHIRP_SUBSCRIPTION)
                    )
                except (mesh.MeshError, NodeError) as exc:
                    yield _sse("end", {"error": str(exc)})
                    return
                yield b": ptth chirp timeline\n\n"
                for post in backlog:
                    yield _sse("post", post_json(post), post.id.hex())
                # The subscription offers the backlog again first: skip it.
                shown = {(post.author, post.id) for post in backlog}
                wanted = set(followed)
                while True:
                    publication: Publication | None = None
                    with trio.move_on_after(KEEPALIVE):
                        publication = await subscription.get()
                    if publication is None:
                        yield b": keep-alive\n\n"
                        continue
                    if (publication.origin, publication.id) in shown:
                        continue
                    if publication.origin in wanted:
                        post = Post.of(publication)
                        yield _sse("post", post_json(post), post.id.hex())

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        return Response(200, headers, stream=events(), long_lived=True)

    # -- objects, calls and capability URLs (node/_objects.py) ---------------------------

    async def objects(
        self, method: str, path: str, request: Request, query: dict[str, list[str]]
    ) -> Response:
        name = urllib.parse.unquote(path.partition("/")[2])
        try:
            objects = self.node.objects
            if (method, path) == ("GET", "objects"):
                return _json(200, [_object_json(exposed) for exposed in objects])
            if (method, path) == ("POST", "objects"):
                value = _load_json(request.body)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
                spec = ObjectSpec.from_json({"open": False, **value})
                if objects.get(spec.name) is not None:
                    return _error(409, f"object {spec.name!r} is exposed already")
                return _json(200, _object_json(await objects.expose_builtin(spec)))
            if method == "DELETE" and path.startswith("objects/"):
                if not await objects.remove(name):
                    return _error(404, f"no object {name!r} is exposed here")
                return _json(200, {"name": name, "removed": True})
            if (method, path) == ("POST", "call"):
                return await self.call(request, query)
            if (method, path) == ("GET", "cap-urls"):
                return _json(200, [url.to_json() for url in await objects.urls()])
            if (method, path) == ("POST", "cap-urls"):
                value = _load_json(request.body)
                if not isinstance(value, dict) or not isinstance(value.get("object"), str):
                    raise ValueError('it must be {"object": NAME}')
                return _json(200, (await objects.mint_url(value["object"])).to_json())
            if method == "DELETE" and path.startswith("cap-urls/"):
                if not await objects.revoke_url(name):
                    return _error(404, f"no capability URL {name!r} to revoke (see GET cap-urls)")
                return _json(200, {"id": name, "revoked": True})
        except ValueError as exc:  # (crypto.Malformed is not one)
            return _error(400, f"bad request body: {exc}")
        except crypto.Malformed as exc:
            return _error(400, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except NodeError as exc:
            return _error(503, str(exc))
        return _error(404, f"no such API call: {method} {API_PREFIX}{path}")

    async def call(self, request: Request, query: dict[str, list[str]]) -> Response:
        wanted = {}
        for key in ("to", "object", "op"):
            values = query.get(key, [])
            if len(values) != 1:
                return _error(400, "say what to call, once each: ?to=NODE_ID&object=NAME&op=OP")
            wanted[key] = values[0]
        timeout = _seconds(query, "timeout")
        if isinstance(timeout, Response):
            return timeout
        try:
            target = crypto.NodeId.parse(wanted["to"])
            reply = await self.node.objects.call(
                target,
                wanted["object"],
                wanted["op"],
                request.body,
                cap=request.header("ptth-cap"),
                timeout=DEFAULT_CALL_TIMEOUT if timeout is None else timeout,
                ct=_content_type(request),
            )
        except CallFailed as exc:
            if exc.reply is None:  # no reply came (time-out, dropped, too many calls)
                return _json(exc.status, {"error": str(exc), "status": exc.status})
            return _json(200, {**_reply_json(exc.reply), "error": str(exc)})
        except crypto.Malformed as exc:
            status = 413 if len(request.body) > mesh.MAX_CALL_BODY else 400
            return _error(status, str(exc))
        except mesh.StoreFull as exc:
            return _json_error(429, str(exc), [("retry-after", "30")])
        except NodeError as exc:
            return _error(503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, _reply_json(reply))


def _object_json(exposed: Exposed) -> dict[str, Any]:
    spec = exposed.spec
    return {
        "name": exposed.name,
        "kind": "program" if spec is None else spec.kind,
        "target": None if spec is None else spec.target,
        "open": exposed.open,
        "saved": spec is not None,
    }


def _reply_json(reply: mesh.Reply) -> dict[str, Any]:
    value: dict[str, Any] = {"status": reply.status, "ct": reply.ct, "why": reply.why}
    value.update(_body_json(reply.body))
    return value


def _texts(nodes: Sequence[crypto.NodeId]) -> list[str]:
    return [node.text for node in nodes]


def _node_param(query: dict[str, list[str]]) -> crypto.NodeId | Response:
    values = query.get("node", [])
    if len(values) != 1:
        return _error(400, "say which node, once: ?node=NODE_ID")
    try:
        return crypto.NodeId.parse(values[0])
    except crypto.Malformed as exc:
        return _error(400, f"bad node id: {exc}")


def _no_subscription(
    name: str, hint: str = "list them with GET /api/v1/subscriptions or 'ptth subscriptions'"
) -> Response:
    return _error(404, f"this node has no subscription named {name!r} ({hint})")
