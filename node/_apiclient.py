"""The client side of the local API: what the ``ptth`` command line talks to.

It finds the node running for a data directory from the files that node writes there
(``api.json``: its URL, and the path of its Unix socket if it serves one; ``api.token``:
the bearer token) and turns every answer that is not a success into
:class:`node.NodeError` (or :class:`node.NotRunning`) with the node's own words.

Through the Unix socket (when ``api.json`` names one and it is there) the CLI does not
compete with strangers for the TCP server's connection slots. Sends and publications
may carry an ``Idempotency-Key``: the node then does them at most once per key, and the
client may retry one after a lost connection (a node restarting) without making a
second frame; :meth:`ApiClient.send`, :meth:`ApiClient.send_batch` and
:meth:`ApiClient.publish` do so on their own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from node._errors import NodeError, NotRunning

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "RETRY_FOR",
    "ApiClient",
    "Unconfirmed",
    "batch_line",
    "validate_idempotency_key",
]

log = logging.getLogger("ptth.cli.api")

_JSON: Final = "application/json"
#: How ``POST send/batch`` is given its messages: one JSON object a line.
_NDJSON: Final = "application/x-ndjson"
#: The longest ``Idempotency-Key`` the node keeps (characters).
IDEMPOTENCY_KEY_MAX: Final = 255
#: How long a send or publish with an idempotency key is retried after transport
#: failures (s): long enough for a node to restart.
RETRY_FOR: Final = 30.0
#: The first pause between two attempts (s), doubled after each failure up to
#: ``_RETRY_PAUSE_MAX``: quick for a dropped connection, gentle on a node starting up.
_RETRY_PAUSE: Final = 0.1
_RETRY_PAUSE_MAX: Final = 2.0
#: The host name of requests through the Unix socket (any name would do: the socket
#: is the address).
_SOCKET_HOST: Final = "ptth-local"
#: ``url`` of a node that serves its API on its Unix socket only (--api-listen none).
_NO_URL: Final = "http://ptth-local/api/v1"


def validate_idempotency_key(key: str) -> str:
    """Return ``key`` if it is 1..255 printable ASCII characters without spaces, else
    raise ValueError saying so."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not all("!" <= c <= "~" for c in key):
        raise ValueError(
            f"{key[:40]!r} is not an idempotency key: 1..{IDEMPOTENCY_KEY_MAX} printable "
            "ASCII characters, no spaces"
        )
    return key


def batch_line(message: Mapping[str, Any]) -> bytes:
    """One message of a batch as its NDJSON line (newline included): ``to``, ``body``
    (bytes: as text when they are UTF-8, else as ``body_b64``; or text), and ``ct``,
    ``receipt``, ``ttl`` when given. Raises ValueError for a text body that is not
    valid Unicode (a lone surrogate)."""
    value = dict(message)
    body = value.pop("body", b"")
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        value["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        value["body_b64"] = base64.b64encode(body).decode("ascii")
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class Unconfirmed(NodeError):
    """A send or publish with an idempotency key got no answer, even after retries: it
    may have been done or not. Retrying it with the same ``key`` is safe."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(
            f"{reason}; the request may or may not have been done: retry it with "
            f"Idempotency-Key {key} (the node does it at most once per key within 24 h)"
        )
        self.key = key
        #: What went wrong, without the advice (the CLI gives its own).
        self.reason = reason


class ApiClient:
    """The CLI's side of the local API of the node running for a data directory."""

    def __init__(
        self, data_dir: Path, *, timeout: float | None = 30.0, retry_for: float = RETRY_FOR
    ) -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        #: How long :meth:`send` and :meth:`publish` with an idempotency key retry (s).
        self.retry_for = retry_for
        self.url, self.socket, self.client = self._connect()

    @property
    def where(self) -> str:
        """The node's local API, as error messages name it."""
        if self.socket is None:
            return self.url
        return self.socket if self.url == _NO_URL else f"{self.socket} ({self.url})"

    def _connect(self) -> tuple[str, str | None, httpx.Client]:
        """Read the files the running node wrote; a client for its local API: through
        its Unix socket when it has one, else its loopback TCP listener."""
        try:
            info = json.loads((self.data_dir / "api.json").read_text(encoding="utf-8"))
            token = (self.data_dir / "api.token").read_text(encoding="ascii").strip()
            url = str(info.get("url", _NO_URL))
            socket = info.get("socket")
            if url == _NO_URL and socket is None:
                raise ValueError("api.json names no API listener")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._not_running() from exc
        options: dict[str, Any] = {
            "headers": {"authorization": f"Bearer {token}"},
            "timeout": httpx.Timeout(self.timeout, connect=5.0),
            # The bearer token goes to the node only: never through a proxy from the
            # environment (HTTP_PROXY and friends).
            "trust_env": False,
        }
        if isinstance(socket, str) and Path(socket).is_absolute() and _is_socket(socket):
            path = urllib.parse.urlsplit(url).path or "/api/v1/"
            transport = httpx.HTTPTransport(uds=socket)
            base_url = f"http://{_SOCKET_HOST}{path}"
            return url, socket, httpx.Client(base_url=base_url, transport=transport, **options)
        if url == _NO_URL:
            # Only a socket, and it is gone: the node is not running (or crashed).
            raise self._not_running()
        return url, None, httpx.Client(base_url=url, **options)

    def _reconnect(self) -> None:
        """Read the node's files again (a restarted node has a new token, maybe a new
        port or socket) and start afresh with new connections."""
        self.client.close()
        self.url, self.socket, self.client = self._connect()

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
        value = _json_of(response) if _is_json(response) else {"error": response.text.strip()}
        if response.status_code != 200:
            error = value.get("error") if isinstance(value, dict) else None
            raise NodeError(error or f"node answered {response.status_code}")
        return value

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._check(self.client.request(method, path, **kwargs))
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.where}: {exc}") from exc

    def _post(
        self,
        path: str,
        *,
        params: Any,
        content: bytes,
        headers: Mapping[str, str],
        idempotency_key: str | None,
    ) -> httpx.Response:
        """POST once; with an idempotency key, again with the same key after each
        transport failure (reconnecting: the node may be restarting), for up to
        :attr:`retry_for` seconds from the first failure."""
        if idempotency_key is None:
            try:
                return self.client.post(path, params=params, content=content, headers=headers)
            except httpx.ConnectError as exc:
                raise self._not_running() from exc
            except httpx.TransportError as exc:
                raise NodeError(f"lost the node's local API at {self.where}: {exc}") from exc
        headers = {**headers, "idempotency-key": validate_idempotency_key(idempotency_key)}
        deadline: float | None = None
        pause = _RETRY_PAUSE
        attempts = 0
        stale = False
        while True:
            attempts += 1
            try:
                if stale:
                    self._reconnect()
                    stale = False
                return self.client.post(path, params=params, content=content, headers=headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                stale = True
            except NotRunning:
                problem = f"no node is running for {self.data_dir}"
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.retry_for
            if now >= deadline:
                raise Unconfirmed(
                    idempotency_key,
                    f"no answer from the node's local API at {self.where} in {attempts} "
                    f"attempts over {self.retry_for:g} s (last: {problem})",
                )
            log.info(
                "no answer from the node's local API (%s): trying again in %.1f s with the "
                "same Idempotency-Key %s",
                problem,
                pause,
                idempotency_key,
            )
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, _RETRY_PAUSE_MAX)

    @staticmethod
    def _replayed(response: httpx.Response, value: Any) -> Any:
        """Mark an answer the node replayed for a key it had seen: ``"replayed": true``."""
        if response.headers.get("idempotent-replayed", "").lower() == "true" and isinstance(
            value, dict
        ):
            value["replayed"] = True
        return value

    def send(
        self,
        dst: str,
        body: bytes,
        ct: str | None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send; with ``wait``, return the answer even for a drop (422) or time-out (504).

        With ``idempotency_key`` the node sends it at most once per key (an answer it
        replays has ``"replayed": true``), and a transport failure is retried with the
        same key for up to :attr:`retry_for` seconds; then :class:`Unconfirmed`."""
        headers = {"content-type": ct} if ct else {}
        params: dict[str, str] = {"to": dst, "receipt": "1"}
        if wait:
            params["wait"] = "1"
            if timeout is not None:
                params["timeout"] = f"{timeout:g}"
        response = self._post(
            "send", params=params, content=body, headers=headers, idempotency_key=idempotency_key
        )
        if wait and response.status_code in (422, 504) and _is_json(response):
            value = _json_of(response)
            if isinstance(value, dict) and "id" in value:  # a trace: dropped, or no receipt
                value["status"] = response.status_code
                return self._replayed(response, value)
        return self._replayed(response, self._check(response))

    def send_batch(
        self, messages: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> Any:
        """Send many messages in one request (``POST send/batch``): each a mapping with
        ``to`` (a node id) and ``body`` (bytes or text), optionally ``ct``, ``receipt``
        and ``ttl`` (s). The node takes all of them into custody in one transaction, or
        none (then :class:`NodeError` with its words, which name the first bad line).
        The answer is ``{"sent": [{"id", "to", "next_hop", "held"}, ...]}``, in order.

        An idempotency key works as for :meth:`send`: the node takes the batch at most
        once per key (a replayed answer has ``"replayed": true``), and a transport
        failure is retried with the same key for up to :attr:`retry_for` seconds; then
        :class:`Unconfirmed`."""
        content = b"".join(batch_line(message) for message in messages)
        response = self._post(
            "send/batch",
            params=None,
            content=content,
            headers={"content-type": _NDJSON},
            idempotency_key=idempotency_key,
        )
        answer = self._replayed(response, self._check(response))
        sent = answer.get("sent") if isinstance(answer, dict) else None
        if not isinstance(sent, list) or len(sent) != len(messages):
            count = len(sent) if isinstance(sent, list) else "no"
            raise NodeError(
                f"the node answered a batch of {len(messages)} messages with {count} ids"
            )
        return answer

    def routes(self) -> Any:
        return self.request("GET", "routes")

    def queues(self) -> Any:
        return self.request("GET", "queues")

    def neighbours(self) -> Any:
        """Each neighbour: its link, name and what is queued for it."""
        return self.request("GET", "neighbours")

    def purge_queue(self, next_hop: str | None) -> Any:
        """Drop every frame queued for ``next_hop`` (a node id; None: those held with no
        route): ``{"next_hop", "frames", "bytes"}``. :class:`NodeError` with the node's
        words for a malformed id or one with no queue."""
        hop = "held" if next_hop is None else next_hop
        return self.request("POST", f"queues/{_path_part(hop)}/purge")

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
            raise NodeError(f"lost the node's local API at {self.where}: {exc}") from exc

    def inbox(self, *, follow: bool) -> Any:
        """Yield each message (a dict) as the node streams it."""
        params = {"follow": "1" if follow else "0"}
        with contextlib.closing(self._events("inbox", params)) as events:
            for event in events:
                if event.get("event") == "message":
                    yield json.loads(event["data"])

    def publish(
        self,
        topic: str,
        body: bytes,
        ct: str | None,
        ttl: float | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """Publish; the answer once the node has it in durable custody. An idempotency
        key works as for :meth:`send`."""
        headers = {"content-type": ct} if ct else {}
        params = {"topic": topic}
        if ttl is not None:
            params["ttl"] = f"{ttl:g}"
        response = self._post(
            "publish",
            params=params,
            content=body,
            headers=headers,
            idempotency_key=idempotency_key,
        )
        return self._replayed(response, self._check(response))

    def subscribe(
        self, patterns: Sequence[str], *, name: str | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Yield each publication (a dict) that matches ``patterns`` as the node streams
        it, until the node stops. Closing the generator unsubscribes.

        With ``name`` the subscription is durable (``patterns`` may then be empty: those
        it has): the node streams what is pending for it first, each with its ``seq``;
        acknowledge them with :meth:`ack_subscription`, else they come again."""
        params = [("pattern", pattern) for pattern in patterns]
        if name is not None:
            params.append(("name", name))
        with contextlib.closing(self._events("subscribe", params)) as events:
            yield from _data_of(events, "publication")

    def ack_subscription(self, name: str, seqs: Sequence[int]) -> int:
        """Named subscription ``name`` is done with these; return how many were pending."""
        path = f"subscriptions/{_path_part(name)}/ack"
        return int(self.request("POST", path, json={"seqs": list(seqs)})["acked"])

    def subscriptions(self) -> Any:
        return self.request("GET", "subscriptions")

    def unsubscribe(self, name: str) -> Any:
        return self.request("DELETE", f"subscriptions/{_path_part(name)}")

    def hold_capability(self, token: str) -> Any:
        """Have the node hold a capability (for this run) and present it where it applies."""
        return self.request("POST", "capabilities", content=token.encode("ascii"))

    def capabilities(self) -> Any:
        return self.request("GET", "capabilities")

    def revoke(self, envelope: bytes) -> Any:
        """Hand the node a signed revocation: it keeps it and floods it to the mesh."""
        return self.request(
            "POST",
            "capabilities/revocations",
            content=envelope,
            headers={"content-type": "application/cose"},
        )

    def chirp_post(self, text: str) -> Any:
        return self.request("POST", "chirp/post", content=text.encode("utf-8"))

    def chirp_follow(self, node_id: str) -> list[str]:
        return list(self.request("POST", "chirp/follow", params={"node": node_id})["following"])

    def chirp_unfollow(self, node_id: str) -> Any:
        return self.request("POST", "chirp/unfollow", params={"node": node_id})

    def chirp_following(self) -> list[str]:
        return list(self.request("GET", "chirp/following")["following"])

    def chirp_timeline(self) -> list[dict[str, Any]]:
        """The timeline now, oldest first."""
        return list(self.request("GET", "chirp/timeline"))

    def chirp_watch(self) -> Generator[dict[str, Any], None, None]:
        """Yield each post of the timeline, then each new one as it comes."""
        with contextlib.closing(self._events("chirp/timeline", {"follow": "1"})) as events:
            yield from _data_of(events, "post")

    def policy(self) -> Any:
        """The admission policy: admission, inbox, blocked and allowed node ids."""
        return self.request("GET", "policy")

    def change_policy(self, change: str, node_id: str) -> Any:
        """``block``, ``unblock``, ``allow`` or ``unallow`` a node: the policy after it,
        with ``"changed": false`` if it was so already."""
        return self.request("POST", f"policy/{_path_part(change)}", json={"node": node_id})

    # -- objects (node/_objects.py) -----------------------------------------------------

    def objects(self) -> list[dict[str, Any]]:
        """The objects the node exposes: name, kind, target, open, saved."""
        return list(self.request("GET", "objects"))

    def expose(self, name: str, kind: str, target: str | None, *, open: bool) -> Any:
        """Expose a built-in object (kept across restarts)."""
        spec = {"name": name, "kind": kind, "target": target, "open": open}
        return self.request("POST", "objects", json=spec)

    def remove_object(self, name: str) -> Any:
        return self.request("DELETE", f"objects/{_path_part(name)}")

    def call(
        self,
        to: str,
        name: str,
        op: str,
        body: bytes,
        *,
        ct: str | None = None,
        cap: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call ``op`` on object ``name`` of node ``to``: the reply (``status``, ``ct``,
        ``why``, ``body`` or ``body_b64``; ``error`` when the status is not 2xx).
        :class:`NodeError` with the node's words when no reply came."""
        params = {"to": to, "object": name, "op": op}
        if timeout is not None:
            params["timeout"] = f"{timeout:g}"
        headers = {"content-type": ct} if ct else {}
        if cap is not None:
            headers["ptth-cap"] = cap
        # The node waits up to the call's timeout: this request waits a little longer.
        wait = None if self.timeout is None else max(self.timeout, (timeout or 30.0) + 10.0)
        value = self.request(
            "POST", "call", params=params, content=body, headers=headers, timeout=wait
        )
        return dict(value)

    def cap_urls(self) -> list[dict[str, Any]]:
        """The capability URLs minted: id, object, created, revoked."""
        return list(self.request("GET", "cap-urls"))

    def mint_url(self, name: str) -> dict[str, Any]:
        """A new capability URL for object ``name``: id, object, created, urls."""
        return dict(self.request("POST", "cap-urls", json={"object": name}))

    def revoke_url(self, url_id: str) -> Any:
        return self.request("DELETE", f"cap-urls/{_path_part(url_id)}")


def _is_socket(path: str) -> bool:
    try:
        return Path(path).is_socket()
    except OSError:
        return False


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith(_JSON)


def _json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise NodeError(
            f"the node answered {response.status_code} with JSON that does not parse"
        ) from None


def _path_part(text: str) -> str:
    """``text`` as one segment of a URL path (dots too, so ``..`` is a name, not a step
    up)."""
    return urllib.parse.quote(text, safe="").replace(".", "%2E")


def _data_of(
    events: Generator[dict[str, str], None, None], kind: str
) -> Generator[dict[str, Any], None, None]:
    """The data of each event of ``kind``, until an ``end`` event (which may say why)."""
    for event in events:
        if event.get("event") == kind:
            yield json.loads(event["data"])
        elif event.get("event") == "end":
            error = json.loads(event.get("data") or "{}").get("error")
            if error:
                raise NodeError(error)
            return
