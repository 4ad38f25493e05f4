"""The local API under ``/api/v1/``, for the CLI and for programs in any language.

Every request needs ``Authorization: Bearer <token>``, the token the running node wrote
to ``DIR/api.token`` (mode 0600); it is answered only for clients on loopback (or an
in-memory network). The running node also writes ``DIR/api.json`` with its API URL.

===========================  =========================================================
``POST /api/v1/send?to=ID``  body = the message bytes, ``Content-Type`` = its type;
                             200 ``{"id", "to", "result"}`` once ID has taken it
``GET /api/v1/inbox``        Server-Sent Events, one ``message`` event per received
                             message (JSON: id, src, ts, received, hops, ct, body as
                             text or ``body_b64``); ``?follow=0`` ends when drained
``POST /api/v1/inbox/ack``   ``{"ids": [hex, ...]}`` -> ``{"acked": n}``
``GET /api/v1/status``       JSON: node id, endpoints, address, peers, counters
===========================  =========================================================

Errors are JSON ``{"error": words}`` with a fitting status.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

import crypto
import mesh
from node._errors import DeliveryFailed, NodeError, NotRunning, PeerUnknown, Rejected
from node._server import Request, Response

if TYPE_CHECKING:
    from node._node import Message, Node

__all__ = ["API_PREFIX", "ApiClient", "LocalApi"]

API_PREFIX: Final = "/api/v1/"
_JSON: Final = "application/json"


def _json(status: int, value: Any) -> Response:
    body = (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8")
    return Response(status, [("content-type", _JSON)], body)


def _error(status: int, words: str) -> Response:
    return _json(status, {"error": words})


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
    try:
        value["body"] = message.body.decode("utf-8")
    except UnicodeDecodeError:
        value["body_b64"] = base64.b64encode(message.body).decode("ascii")
    return value


def _is_local(peer: str) -> bool:
    host = peer.rpartition(":")[0].strip("[]") if ":" in peer else peer
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # not an IP peer: an in-memory network inside this process


class LocalApi:
    """Serves ``/api/v1/`` for one node."""

    def __init__(self, node: Node) -> None:
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
        return _error(404, f"no such API call: {request.method} {request.path}")

    async def send(self, request: Request, query: dict[str, list[str]]) -> Response:
        targets = query.get("to", [])
        if len(targets) != 1:
            return _error(400, "say who to send to: ?to=NODE_ID")
        try:
            dst = crypto.NodeId.parse(targets[0])
        except crypto.Malformed as exc:
            return _error(400, f"bad node id: {exc}")
        ct = request.header("content-type")
        if ct == "application/x-www-form-urlencoded":  # curl's default, not a real type
            ct = None
        try:
            frame = self.node.new_frame(dst, request.body, ct=ct)
            envelope = frame.seal(self.node.identity)
        except crypto.Malformed as exc:
            status = 413 if len(request.body) > crypto.MAX_BODY_SIZE else 400
            return _error(status, str(exc))
        try:
            result = await self.node.send_frame(dst, mesh.WireFrame(0, envelope))
        except PeerUnknown as exc:
            return _error(404, str(exc))
        except Rejected as exc:
            return _error(422, f"{dst.short} rejected the message: {exc}")
        except DeliveryFailed as exc:
            return _error(504, str(exc))
        except NodeError as exc:
            return _error(503, str(exc))
        return _json(200, {"id": frame.id.hex(), "to": dst.text, "result": str(result.outcome)})

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
            ids = [bytes.fromhex(i) for i in value["ids"]]
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f'body must be {{"ids": [hex frame ids]}}: {exc}')
        return _json(200, {"acked": await self.node.ack(ids)})


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

    def send(self, dst: str, body: bytes, ct: str | None) -> Any:
        headers = {"content-type": ct} if ct else {}
        return self.request("POST", "send", params={"to": dst}, content=body, headers=headers)

    def status(self) -> Any:
        return self.request("GET", "status")

    def ack(self, ids: list[str]) -> int:
        return int(self.request("POST", "inbox/ack", json={"ids": ids})["acked"])

    def inbox(self, *, follow: bool) -> Any:
        """Yield each message (a dict) as the node streams it."""
        try:
            with self.client.stream(
                "GET", "inbox", params={"follow": "1" if follow else "0"}, timeout=None
            ) as response:
                if response.status_code != 200:
                    response.read()
                    self._check(response)
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if event.get("event") == "message":
                            yield json.loads(event["data"])
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc
