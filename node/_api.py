"""The local API under ``/api/v1/``, for the CLI and for programs in any language.

Every request needs ``Authorization: Bearer <token>``, the token the running node wrote
to ``DIR/api.token`` (mode 0600); it is answered only for clients on loopback (or an
in-memory network). The running node also writes ``DIR/api.json`` with its API URL.

=============================  =======================================================
``POST /api/v1/send?to=ID``    body = the message bytes, ``Content-Type`` = its type;
                               200 ``{"id", "to", "next_hop", "held"}`` once the frame
                               is in this node's durable custody. ``&receipt=1`` asks
                               for a delivery receipt; ``&wait=1[&timeout=S]`` also
                               waits for it: 200 with ``"state": "delivered"``, 422
                               if it was dropped (``"why"``), 504 on time-out
``GET /api/v1/inbox``          Server-Sent Events, one ``message`` event per received
                               message (JSON: id, src, ts, received, hops, ct, body as
                               text or ``body_b64``); ``?follow=0`` ends when drained
``POST /api/v1/inbox/ack``     ``{"ids": ["SRC:ID" or "ID", ...]}`` -> ``{"acked": n}``
``POST /api/v1/publish``       ``?topic=T[&ttl=S]``, body = the publication,
                               ``Content-Type`` = its type; 200 ``{"id", "topic",
                               "next_hops", "delivered_here"}`` once the frame is in
                               this node's durable custody (``next_hops``: the
                               neighbours toward the subscribers known now). 403 for
                               a topic under another node's secure name ``~<id>``
``GET /api/v1/subscribe``      ``?pattern=P[&pattern=Q...]`` (``*`` one word, ``#``
                               zero or more): Server-Sent Events, one ``publication``
                               event per publication that matches (JSON: topic,
                               origin, id, ts, received, hops, ct, body as text or
                               ``body_b64``). Subscribed before the first line (a
                               comment) is sent; unsubscribed when the client leaves
                               (a comment every 15 s notices that)
``GET /api/v1/status``         JSON: node id, endpoints, address, peers, counters
``GET /api/v1/routes``         JSON list: destination, next_hop, hops, age
``GET /api/v1/queues``         JSON list per next hop: frames, bytes, oldest, link
``GET /api/v1/trace/ID``       JSON: where frame ID (sent here) is known to be
``POST /api/v1/peers``         body = an address token: verify, store, greet it
=============================  =======================================================

Errors are JSON ``{"error": words}`` with a fitting status: 400 for a bad request, 413
for a body over the limit, 429 (with ``Retry-After``) when the store is full, 503 when
the node cannot take it now.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import math
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import trio

import crypto
import mesh
from node._errors import NodeError, NotRunning
from node._message import Message, Publication, Published, Sent
from node._pubsub import Subscription
from node._server import Request, Response

__all__ = ["API_PREFIX", "ApiClient", "ApiHost", "LocalApi", "trace_json"]

API_PREFIX: Final = "/api/v1/"
_JSON: Final = "application/json"
#: Seconds between the comments that keep a quiet subscription stream alive: through
#: proxies, and so that a client that left is noticed (a write to it fails) and its
#: subscription ends.
KEEPALIVE: Final = 15.0
#: The longest ``ttl`` a publication may ask for (s): a frame's lifetime limit.
_MAX_TTL: Final = crypto.MAX_LIFETIME_MS / 1000


def _json(status: int, value: Any) -> Response:
    body = (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8")
    return Response(status, [("content-type", _JSON)], body)


def _error(status: int, words: str) -> Response:
    return _json(status, {"error": words})


def _json_error(status: int, words: str, headers: list[tuple[str, str]]) -> Response:
    response = _error(status, words)
    response.headers.extend(headers)
    return response


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes")


def _ack_key(text: str) -> tuple[crypto.NodeId, bytes] | bytes:
    """``SRC:ID`` (origin node id, frame id in hex) or a bare frame id."""
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


def _content_type(request: Request) -> str | None:
    ct = request.header("content-type")
    if ct == "application/x-www-form-urlencoded":  # curl's default, not a real type
        return None
    return ct


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

    async def send_sealed(self, frames: Sequence[tuple[crypto.Frame, bytes]]) -> list[Sent]: ...

    async def delivered(self, frame_id: bytes) -> mesh.Trace: ...

    async def trace(self, frame_id: bytes) -> mesh.Trace | None: ...

    def routes(self) -> list[dict[str, Any]]: ...

    async def queues(self) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def inbox(self, *, follow: bool = True) -> AsyncGenerator[Message, None]: ...

    async def ack(self, keys: Sequence[tuple[crypto.NodeId, bytes] | bytes]) -> int: ...

    async def add_peer(self, token: str) -> crypto.SignedAddress: ...

    async def publish(
        self, topic: str, body: bytes, *, ct: str | None = None, ttl: float | None = None
    ) -> Published: ...

    def subscribe(self, *patterns: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...


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

    async def handle(self, request: Request) -> Response:
        if request.relayed or not _is_local(request.peer):
            return _error(403, "the local API answers only clients on this machine")
        presented = request.header("authorization") or ""
        expected = f"Bearer {self.node.api_token}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return _error(401, "missing or wrong bearer token (see api.token in the data dir)")
        route = (request.method, request.path[len(API_PREFIX) :])
        query = urllib.parse.parse_qs(request.query)
        if route == ("POST", "send"):
            return await self.send(request, query)
        if route == ("GET", "inbox"):
            return self.inbox(query)
        if route == ("POST", "inbox/ack"):
            return await self.ack(request)
        if route == ("GET", "status"):
            return _json(200, self.node.status())
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
            return self.subscribe(query)
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
        try:
            frame = self.node.new_frame(dst, request.body, ct=ct, receipt=receipt)
            envelope = frame.seal(self.node.identity)
        except crypto.Malformed as exc:
            status = 413 if len(request.body) > crypto.MAX_BODY_SIZE else 400
            return _error(status, str(exc))
        try:
            (sent,) = await self.node.send_sealed([(frame, envelope)])
        except mesh.StoreFull as exc:
            return _json_error(429, str(exc), [("retry-after", "30")])
        except NodeError as exc:
            return _error(503, str(exc))
        except mesh.MeshError as exc:
            return _error(503, f"store unavailable: {exc}")
        answer: dict[str, Any] = {
            "id": sent.id.hex(),
            "to": dst.text,
            "next_hop": None if sent.next_hop is None else sent.next_hop.text,
            "held": sent.next_hop is None,
        }
        if not wait:
            return _json(200, answer)
        try:
            with trio.fail_after(timeout if timeout is not None else math.inf):
                trace = await self.node.delivered(sent.id)
        except trio.TooSlowError:
            answer["error"] = f"no receipt within {timeout:g} s; the frame is still in the mesh"
            answer["state"] = "waiting"
            return _json(504, answer)
        # The custody fields (next hop at the time of sending) stay as they were.
        answer.update({k: v for k, v in trace_json(trace).items() if k not in answer})
        if trace.state != "delivered":
            answer["error"] = f"dropped by {trace.by.short if trace.by else '?'}: {trace.why}"
            return _json(422, answer)
        return _json(200, answer)

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
            async with contextlib.aclosing(self.node.inbox(follow=follow)) as messages:
                async for message in messages:
                    data = json.dumps(message_json(message), separators=(",", ":"))
                    yield f"id: {message.seq}\nevent: message\ndata: {data}\n\n".encode()
            yield b"event: end\ndata: {}\n\n"

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        return Response(200, headers, stream=events(), long_lived=follow)

    async def ack(self, request: Request) -> Response:
        try:
            value = json.loads(request.body)
            keys = [_ack_key(text) for text in value["ids"]]
        except (ValueError, KeyError, TypeError, crypto.Malformed) as exc:
            return _error(400, f'body must be {{"ids": ["SRC:ID" or "ID" (hex), ...]}}: {exc}')
        return _json(200, {"acked": await self.node.ack(keys)})

    async def publish(self, request: Request, query: dict[str, list[str]]) -> Response:
        topics = query.get("topic", [])
        if len(topics) != 1:
            return _error(400, "say which topic to publish to, once: ?topic=TOPIC")
        topic = topics[0]
        ttl: float | None = None
        if "ttl" in query:
            try:
                ttl = float(query["ttl"][-1])
                if not 0 < ttl <= _MAX_TTL:
                    raise ValueError(ttl)
            except ValueError:
                return _error(
                    400,
                    f"ttl must be a positive number of seconds up to {_MAX_TTL:.0f}, "
                    f"not {query['ttl'][-1]!r}",
                )
        try:
            crypto.validate_topic(topic)
            owner = mesh.secure_owner(topic)
            published = await self.node.publish(
                topic, request.body, ct=_content_type(request), ttl=ttl
            )
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
        return _json(
            200,
            {
                "id": published.id.hex(),
                "topic": published.topic,
                "next_hops": [hop.text for hop in published.next_hops],
                "delivered_here": published.delivered_here,
            },
        )

    def subscribe(self, query: dict[str, list[str]]) -> Response:
        patterns = query.get("pattern", [])
        if not patterns:
            return _error(
                400,
                "say what to subscribe to: ?pattern=P (repeatable; '*' matches one word, "
                "'#' zero or more)",
            )
        try:
            for pattern in patterns:
                crypto.validate_pattern(pattern)
        except crypto.Malformed as exc:
            return _error(400, str(exc))

        async def events() -> AsyncIterator[bytes]:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    subscription = await stack.enter_async_context(self.node.subscribe(*patterns))
                except NodeError as exc:
                    data = json.dumps({"error": str(exc)}, separators=(",", ":"))
                    yield f"event: end\ndata: {data}\n\n".encode()
                    return
                # Subscribed: whatever is published from now on reaches this stream.
                yield f": ptth subscribe {' '.join(subscription.patterns)}\n\n".encode()
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
                    data = json.dumps(publication_json(publication), separators=(",", ":"))
                    yield (
                        f"id: {publication.id.hex()}\nevent: publication\ndata: {data}\n\n"
                    ).encode()
            yield b"event: end\ndata: {}\n\n"

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        return Response(200, headers, stream=events(), long_lived=True)


class ApiClient:
    """The CLI's side of the local API of the node running for a data directory."""

    def __init__(self, data_dir: Path, *, timeout: float | None = 30.0) -> None:
        self.data_dir = data_dir
        try:
            info = json.loads((data_dir / "api.json").read_text(encoding="utf-8"))
            token = (data_dir / "api.token").read_text(encoding="ascii").strip()
            self.url = str(info["url"])
        except (OSError, ValueError, KeyError) as exc:
            raise self._not_running() from exc
        self.client = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    def _not_running(self) -> NotRunning:
        return NotRunning(
            f"no node is running for {self.data_dir} "
            f"(start one with 'ptth run --data-dir {self.data_dir}')"
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.headers.get("content-type", "").startswith(_JSON):
            value = response.json()
        else:
            value = {"error": response.text.strip()}
        if response.status_code != 200:
            raise NodeError(value.get("error", f"node answered {response.status_code}"))
        return value

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._check(self.client.request(method, path, **kwargs))
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc

    def send(
        self,
        dst: str,
        body: bytes,
        ct: str | None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Send; with ``wait``, return the answer even for a drop (422) or time-out (504)."""
        headers = {"content-type": ct} if ct else {}
        params: dict[str, str] = {"to": dst, "receipt": "1"}
        if wait:
            params["wait"] = "1"
            if timeout is not None:
                params["timeout"] = f"{timeout:g}"
        try:
            response = self.client.post("send", params=params, content=body, headers=headers)
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc
        if wait and response.status_code in (422, 504):
            value = response.json()
            value["status"] = response.status_code
            return value
        return self._check(response)

    def routes(self) -> Any:
        return self.request("GET", "routes")

    def queues(self) -> Any:
        return self.request("GET", "queues")

    def trace(self, frame_id: str) -> Any:
        return self.request("GET", f"trace/{frame_id}")

    def add_peer(self, token: str) -> Any:
        return self.request("POST", "peers", content=token.encode("ascii", "replace"))

    def status(self) -> Any:
        return self.request("GET", "status")

    def ack(self, ids: list[str]) -> int:
        return int(self.request("POST", "inbox/ack", json={"ids": ids})["acked"])

    def _events(self, path: str, params: Any) -> Generator[dict[str, str], None, None]:
        """Yield each Server-Sent Event of ``GET path`` (its fields) as it comes."""
        try:
            with self.client.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code != 200:
                    response.read()
                    self._check(response)
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if event:
                            yield event
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc

    def inbox(self, *, follow: bool) -> Any:
        """Yield each message (a dict) as the node streams it."""
        params = {"follow": "1" if follow else "0"}
        with contextlib.closing(self._events("inbox", params)) as events:
            for event in events:
                if event.get("event") == "message":
                    yield json.loads(event["data"])

    def publish(self, topic: str, body: bytes, ct: str | None, ttl: float | None = None) -> Any:
        """Publish; the answer once the node has it in durable custody."""
        headers = {"content-type": ct} if ct else {}
        params = {"topic": topic}
        if ttl is not None:
            params["ttl"] = f"{ttl:g}"
        return self.request("POST", "publish", params=params, content=body, headers=headers)

    def subscribe(self, patterns: Sequence[str]) -> Generator[dict[str, Any], None, None]:
        """Yield each publication (a dict) that matches ``patterns`` as the node streams
        it, until the node stops. Closing the generator unsubscribes."""
        params = [("pattern", pattern) for pattern in patterns]
        with contextlib.closing(self._events("subscribe", params)) as events:
            for event in events:
                if event.get("event") == "publication":
                    yield json.loads(event["data"])
                elif event.get("event") == "end":
                    error = json.loads(event.get("data") or "{}").get("error")
                    if error:
                        raise NodeError(error)
                    return
