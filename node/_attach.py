"""The node side of Reverse HTTP: staying reachable through relays (docs/architecture.md).

For each relay (given as its address token) a :class:`RelayLink` keeps a pool of
workers (default 2). Each worker dials the relay, sends a signed ``POST
/ptth/v1/attach`` with ``Upgrade: PTTH/1.0`` (driving h11 itself, so nothing is lost of
the bytes that arrive together with the ``101``), and then serves HTTP on that
connection with the node's own server (:meth:`Server.serve_stream`): the relay is the
client now. When the connection ends, the worker re-attaches at once; when attaching
fails, it backs off 1 s -> 30 s with jitter, and never sooner than the relay's
``Retry-After`` (a full relay's ``503``, a rate or address limit's ``429``; see
:mod:`node._relay`), which it then follows (x1..1.2, so that nodes told the same time do
not all come back at once; at most :data:`RETRY_AFTER_MAX`). The link's status shows the
relay's words (``last_error``) and its ``Retry-After`` (``retry_after``).

A connection on which the relay has sent nothing for the server's idle timeout (60 s:
about 2.4 of the relay's 25 s ping intervals) is closed by the server, and the worker
re-attaches: a silent attachment is restarted.

A relay may require a capability to attach (:mod:`node._relay`): the link presents, in
``PTTH-Capability`` headers of each attach, the capabilities the node holds
(``--cap``, :class:`mesh.Wallet`) that designate that relay with ``attach``. A refusal
(``403``, with the relay's words) backs off like any failure; it is logged as a warning
when its words are new (else at info), and the link's status shows them.

``--relay-mode``: ``upgrade`` insists on the Upgrade; ``long-poll`` uses only the
reversehttp.net long-poll session; ``auto`` (the default) tries Upgrade and falls back
to long-poll when the relay's answer shows the Upgrade was refused or stripped on the
way (a plain ``200`` poll session instead of a ``101``).

A link knows the node it keeps attached only as an :class:`AttachHost`.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import enum
import json
import logging
import math
import random
import re
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, Final, Protocol

import h11
import httpcore
import httpx
import trio

import crypto
import mesh
from node import _wrap
from node._net import Network
from node._relay import ATTACH_PATH, POLL_PREFIX, REPLY_PREFIX, presentable
from node._server import PrefixedStream, Request, Response, Server

__all__ = ["RETRY_AFTER_MAX", "AttachHost", "RelayLink", "RelayMode"]

log = logging.getLogger("ptth.attach")

_READ_SIZE: Final = 64 * 1024
#: Backoff between failed attach attempts: from 1 s, doubling, jittered (x0.5..1.5),
#: never more than 30 s.
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
#: The longest ``Retry-After`` (s) followed: a relay that asks for more (a broken or
#: hostile one) is tried again after this. A relay's lease is at most minutes.
RETRY_AFTER_MAX: Final = 600.0
#: How long the relay may take to answer the attach request.
ATTACH_TIMEOUT: Final = 30.0
DEFAULT_LEASE: Final = 60.0
#: How long the relay holds a poll, unless its session says otherwise.
DEFAULT_HOLD: Final = 25.0


class AttachHost(Protocol):
    """What a :class:`RelayLink` needs of the node it keeps attached (``Node`` is one).

    Read-only: the link never sets any of these.
    """

    @property
    def node_id(self) -> crypto.NodeId:
        """The node's id (its public URL at the relay is made of it)."""

    @property
    def rng(self) -> random.Random:
        """Drives the backoff jitter."""

    @property
    def network(self) -> Network:
        """Where the link dials the relay (for an Upgrade, which httpx cannot do)."""

    @property
    def clock(self) -> Callable[[], int]:
        """Wall time in ms (for ``last_activity`` in the link's status)."""

    @property
    def server(self) -> Server | None:
        """The node's server: it serves the reversed connections and the polled requests."""

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The node's HTTP client (long-poll sessions, polls and replies go through it)."""

    def sign_request(self, method: str, url: str, body: bytes, /) -> list[tuple[str, str]]:
        """RFC 9421 headers signing a request as the node (the attach requests)."""


class RelayMode(enum.StrEnum):
    AUTO = "auto"
    UPGRADE = "upgrade"
    LONG_POLL = "long-poll"


class _AttachFailed(Exception):
    """Attaching failed; the worker backs off and tries again.

    ``retry_after``: the seconds the relay asked us to wait (its ``Retry-After``), if any.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The relay refused this node (403): it will again until something changes.
        self.refused = refused


class _UpgradeRefused(_AttachFailed):
    """The relay answered the Upgrade with a poll session (Upgrade stripped or refused)."""

    def __init__(self, session: dict[str, Any]) -> None:
        super().__init__("the relay did not switch protocols")
        self.session = session


class _NetworkStream(trio.abc.Stream):
    """An httpcore network stream (what the node's network seam dials) as a trio stream."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self.stream.read(max_bytes or _READ_SIZE)
        except httpcore.ReadError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.write(bytes(data))
        except httpcore.WriteError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclasses.dataclass
class _Status:
    mode: str | None = None
    connections: int = 0
    lease: float | None = None
    base_url: str | None = None
    last_activity: int | None = None
    attaches: int = 0
    failures: int = 0
    last_error: str | None = None
    #: The relay's ``Retry-After`` (s) with the last failure, if it sent one.
    retry_after: float | None = None


class RelayLink:
    """Keeps ``node`` attached to one relay with a pool of connections."""

    def __init__(
        self,
        node: AttachHost,
        relay: crypto.SignedAddress,
        *,
        mode: RelayMode = RelayMode.AUTO,
        pool: int = 2,
        lease: float = DEFAULT_LEASE,
        wallet: mesh.Wallet | None = None,
    ) -> None:
        self.node = node
        self.relay = relay
        #: The capabilities the node holds (those for this relay are presented).
        self.wallet = wallet
        self.mode = mode
        self.pool = pool
        self.lease = lease
        self.endpoint = relay.record.endpoints[0].rstrip("/")
        self.status_info = _Status()
        self._changed = trio.Event()
        parts = urllib.parse.urlsplit(self.endpoint)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def public_url(self) -> str:
        """Where visitors reach this node through the relay."""
        return f"{self.endpoint}/n/{self.node.node_id.text}"

    async def wait_connected(self, count: int = 1) -> None:
        """Return once at least ``count`` connections (or polls) to the relay are up."""
        while self.status_info.connections < count:
            await self._changed.wait()

    async def wait_detached(self) -> None:
        """Return once no connection (nor poll) to the relay is up."""
        while self.status_info.connections > 0:
            await self._changed.wait()

    def _connections_changed(self, delta: int) -> None:
        self.status_info.connections += delta
        self._changed.set()
        self._changed = trio.Event()

    def status(self) -> dict[str, Any]:
        info = dataclasses.asdict(self.status_info)
        return {"relay": self.relay.node.text, "endpoint": self.endpoint, **info}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pool of workers until cancelled."""
        async with trio.open_nursery() as nursery:
            for index in range(self.pool):
                nursery.start_soon(self._worker, index)
            task_status.started()

    async def _worker(self, index: int) -> None:
        backoff = BACKOFF_INITIAL
        mode = self.mode  # the worker's mode never changes: auto decides per attach
        while True:
            failure: _AttachFailed
            try:
                if mode is RelayMode.LONG_POLL:
                    await self._long_poll(await self._open_poll_session())
                else:
                    await self._upgrade()
                backoff = BACKOFF_INITIAL  # it worked and ended: re-attach at once
                continue
            except _UpgradeRefused as refused:
                if mode is RelayMode.AUTO:
                    # The refusal came with a poll session: use it. The next attach tries
                    # Upgrade again (the path may have changed); the fallback costs no
                    # extra round trip, as the relay answers a stripped Upgrade with one.
                    if self.status_info.mode != "long-poll":
                        log.info(
                            "relay %s: Upgrade refused or stripped; using long-poll",
                            self.relay.node.short,
                        )
                    try:
                        await self._long_poll(refused.session)
                        backoff = BACKOFF_INITIAL
                        continue
                    except _AttachFailed as exc:
                        failure = exc
                else:
                    failure = _AttachFailed(
                        "the relay did not switch protocols (a proxy on the way may strip "
                        "Upgrade); try --relay-mode auto or long-poll"
                    )
            except _AttachFailed as exc:
                failure = exc
            self._failed(failure)
            await trio.sleep(self._backoff(backoff, failure.retry_after))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _backoff(self, backoff: float, retry_after: float | None) -> float:
        """How long to wait before the next attempt (``backoff``: the current step)."""
        rng = self.node.rng
        wait = min(backoff * rng.uniform(0.5, 1.5), BACKOFF_MAX)
        if retry_after is not None:
            # Never sooner than the relay asked; a little later, spread out.
            wait = max(wait, min(retry_after, RETRY_AFTER_MAX) * rng.uniform(1.0, 1.2))
        return wait

    def _failed(self, exc: _AttachFailed) -> None:
        info = self.status_info
        # A refusal (policy, capability) needs the operator: said once as a warning
        # (the pool's workers and their retries repeat it at info).
        level = logging.WARNING if exc.refused and str(exc) != info.last_error else logging.INFO
        info.failures += 1
        info.last_error = str(exc)
        info.retry_after = exc.retry_after
        log.log(level, "relay %s: attach failed: %s", self.relay.node.short, exc)

    def _attach_headers(self, *, upgrade: bool) -> list[tuple[str, str]]:
        url = self.endpoint + ATTACH_PATH
        headers = [("ptth-lease", f"{self.lease:g}")]
        if upgrade:
            headers += [("upgrade", "PTTH/1.0"), ("connection", "Upgrade")]
        if self.wallet is not None:
            headers += presentable(self.wallet, crypto.Operation.ATTACH, self.relay.node)
        return headers + self.node.sign_request("POST", url, b"")

    # -- Upgrade --------------------------------------------------------------------

    async def _dial(self) -> httpcore.AsyncNetworkStream:
        backend = self.node.network.client_backend()
        try:
            stream = await backend.connect_tcp(self.host, self.port, timeout=ATTACH_TIMEOUT)
            if self.scheme == "https":
                stream = await stream.start_tls(
                    ssl.create_default_context(), server_hostname=self.host, timeout=ATTACH_TIMEOUT
                )
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            raise _AttachFailed(f"cannot reach {self.endpoint}: {exc}") from exc
        return stream

    async def _upgrade(self) -> None:
        raw = await self._dial()
        stream = _NetworkStream(raw)
        try:
            conn = h11.Connection(h11.CLIENT)
            host = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
            request = h11.Request(
                method="POST",
                target=ATTACH_PATH,
                headers=[
                    ("host", host),
                    ("content-length", "0"),
                    *self._attach_headers(upgrade=True),
                ],
            )
            try:
                with trio.fail_after(ATTACH_TIMEOUT):
                    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                    answer = await _read_answer(conn, stream)
            except trio.TooSlowError as exc:
                raise _AttachFailed(f"{self.endpoint} did not answer the attach in time") from exc
            except (trio.BrokenResourceError, h11.ProtocolError) as exc:
                raise _AttachFailed(f"attach to {self.endpoint} failed: {exc}") from exc
            if not isinstance(answer, h11.InformationalResponse):
                status, fields, body = answer
                if status == 200 and _is_poll_session(fields):
                    raise _UpgradeRefused(_session(body))
                words = body.decode(errors="replace").strip()
                raise self._refused(status, words, dict(fields).get("retry-after"))
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in answer.headers}
            trailing = bytes(conn.trailing_data[0])
            base_url = headers.get("ptth-base-url", self.public_url)
            await self._serve(PrefixedStream(stream, trailing), headers, base_url)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, stream: trio.abc.Stream, headers: dict[str, str], base_url: str) -> None:
        info = self.status_info
        info.mode = "upgrade"
        info.attaches += 1
        self._connections_changed(+1)
        info.base_url = base_url
        info.lease = _seconds(headers.get("ptth-lease"), self.lease)
        info.last_activity = self.node.clock()
        info.last_error = info.retry_after = None
        log.info("attached to relay %s (upgrade): %s", self.relay.node.short, base_url)
        assert self.node.server is not None
        try:
            await self.node.server.serve_stream(
                _Touch(stream, info, self.node.clock),
                peer=f"relay {self.relay.node.short}",
                base_url=base_url,
                relayed=True,
            )
        finally:
            self._connections_changed(-1)

    # -- long-poll ------------------------------------------------------------------

    async def _open_poll_session(self) -> dict[str, Any]:
        client = self.node.http_client
        try:
            response = await client.post(
                self.endpoint + ATTACH_PATH,
                content=b"",
                headers=self._attach_headers(upgrade=False),
                timeout=ATTACH_TIMEOUT,
            )
        except httpx.TransportError as exc:
            raise _AttachFailed(f"cannot reach {self.endpoint}: {exc}") from exc
        if response.status_code != 200 or not _is_poll_session(list(response.headers.items())):
            status, words = response.status_code, response.text.strip()
            raise self._refused(status, words, response.headers.get("retry-after"))
        return _session(response.content)

    def _refused(self, status: int, words: str, retry_after: str | None) -> _AttachFailed:
        """The relay refused the attach: its status and words, and its ``Retry-After``."""
        seconds = _retry_after(retry_after, self.node.clock())
        message = f"{self.endpoint} refused the attach: {status} {words}"
        if seconds is not None:
            message += f" (Retry-After: {seconds:g} s)"
        return _AttachFailed(message, seconds, refused=status == 403)

    async def _long_poll(self, session: dict[str, Any]) -> None:
        info = self.status_info
        info.mode = "long-poll"
        info.attaches += 1
        self._connections_changed(+1)
        info.base_url = str(session["base_url"])
        info.lease = _seconds(session.get("lease"), self.lease)
        info.last_error = info.retry_after = None
        hold = _seconds(session.get("hold"), DEFAULT_HOLD)
        poll_url = self.endpoint + str(session["poll"])
        log.info("attached to relay %s (long-poll): %s", self.relay.node.short, info.base_url)
        try:
            # Answers run in this nursery; a failure is returned, not raised in it, so
            # that it reaches the worker as itself, not inside an ExceptionGroup.
            async with trio.open_nursery() as nursery:
                failure = await self._poll(nursery, poll_url, hold, info.base_url)
        finally:
            self._connections_changed(-1)
        if failure is not None:
            raise failure

    async def _poll(
        self, nursery: trio.Nursery, poll_url: str, hold: float, base_url: str
    ) -> _AttachFailed | None:
        """Poll until the session ends (None: attach again at once) or fails."""
        client = self.node.http_client
        while True:
            try:
                response = await client.get(poll_url, timeout=hold + 15)
            except httpx.TransportError as exc:
                return _AttachFailed(f"poll to {self.endpoint} failed: {exc}")
            self.status_info.last_activity = self.node.clock()
            if response.status_code == 204:
                continue
            if response.status_code == 404:
                return None  # the session ended (e.g. the relay restarted)
            if response.status_code != 200:  # e.g. a proxy's 502: back off, do not spin
                words = f"{response.status_code} {response.text.strip()}"
                seconds = _retry_after(response.headers.get("retry-after"), self.node.clock())
                return _AttachFailed(
                    f"poll to {self.endpoint} answered {words}",
                    seconds,
                    refused=response.status_code == 403,  # (its capability stopped holding)
                )
            reply = response.headers.get("ptth-reply", "")
            if not _is_capability(reply, REPLY_PREFIX):
                return _AttachFailed(f"the relay's poll answer has no PTTH-Reply URL: {reply!r}")
            nursery.start_soon(self._answer, response.content, self.endpoint + reply, base_url)

    async def _answer(self, wrapped: bytes, reply_url: str, base_url: str) -> None:
        try:
            method, target, headers, body = _wrap.decode_request(wrapped)
        except _wrap.WrapError as exc:
            unreadable = Response.text(400, f"wrapped request unreadable: {exc}")
            wrapped_response = _encode(unreadable, unreadable.body)
        else:
            request = Request(
                method,
                target,
                [(k.lower(), v) for k, v in headers],
                body,
                f"relay {self.relay.node.short}",
                base_url=base_url,
                relayed=True,
            )
            wrapped_response = await self._respond(request)
        try:
            await self.node.http_client.post(
                reply_url, content=wrapped_response, headers={"content-type": "message/http"}
            )
        except httpx.TransportError as exc:
            log.info("relay %s: could not deliver a reply: %s", self.relay.node.short, exc)

    async def _respond(self, request: Request) -> bytes:
        """The node's wrapped answer to ``request``.

        As on a connection (:class:`Server`), a handler's failure is a 500 for that
        request, logged, not the end of the node.
        """
        assert self.node.server is not None
        try:
            response = await self.node.server.handler(request)
            chunks = [response.body]
            if response.stream is not None:
                try:
                    async for chunk in response.stream:
                        chunks.append(chunk)
                finally:
                    aclose = getattr(response.stream, "aclose", None)
                    if aclose is not None:
                        with trio.CancelScope(shield=True):
                            await aclose()
            return _encode(response, b"".join(chunks))
        except Exception:
            log.exception("handler failed on %s %s (long-poll)", request.method, request.path)
            failed = Response.text(500, "internal error while handling the request")
            return _encode(failed, failed.body)


class _Touch(trio.abc.Stream):
    """Notes the time of the last bytes from the relay, for ``ptth status``."""

    def __init__(self, stream: trio.abc.Stream, info: _Status, clock: Callable[[], int]) -> None:
        self.stream = stream
        self.info = info
        self.clock = clock

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.info.last_activity = self.clock()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _read_answer(
    conn: h11.Connection, stream: trio.abc.Stream
) -> h11.InformationalResponse | tuple[int, list[tuple[str, str]], bytes]:
    """The relay's answer to an attach: the 101, or a whole final response."""
    head: h11.Response | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise h11.RemoteProtocolError("the relay closed the connection without answering")
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            continue
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers]
            return head.status_code, headers, b"".join(body)
        else:
            raise h11.RemoteProtocolError("the relay closed the connection without answering")


def _encode(response: Response, body: bytes) -> bytes:
    return _wrap.encode_response(response.status, response.headers, body)


def _seconds(value: Any, default: float) -> float:
    """A duration the relay sent (lease, poll hold); ``default`` if it is not one."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


def _retry_after(value: str | None, now_ms: int) -> float | None:
    """A ``Retry-After`` value (RFC 9110 §10.2.3) in seconds from now, at most
    :data:`RETRY_AFTER_MAX`; None if absent or unreadable. ``now_ms``: wall time, for
    the HTTP-date form."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": isdigit() takes it, float() not
        # Thousands of digits make float() inf; more than the cap is the cap.
        return min(float(value[:12]) if len(value) <= 12 else RETRY_AFTER_MAX, RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a year, time or zone offset no datetime can hold.
        return None
    if when.tzinfo is None:  # ("-0000": UTC, with no zone said)
        when = when.replace(tzinfo=datetime.UTC)
    seconds = when.timestamp() - now_ms / 1000
    return min(max(0.0, seconds), RETRY_AFTER_MAX) if math.isfinite(seconds) else None


def _is_capability(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` + a token (the relay's session and reply URLs)."""
    return (
        path.startswith(prefix) and re.fullmatch(r"[A-Za-z0-9_-]+", path[len(prefix) :]) is not None
    )


def _is_poll_session(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-type" and v.startswith("application/json") for k, v in headers)


def _session(body: bytes) -> dict[str, Any]:
    try:
        session = json.loads(body)
        if session.get("mode") != "long-poll" or not isinstance(session.get("poll"), str):
            raise ValueError("not a poll session")
        if not _is_capability(session["poll"], POLL_PREFIX):
            raise ValueError(f"poll URL {session['poll']!r} is not {POLL_PREFIX}<token>")
        str(session["base_url"])
    except (ValueError, KeyError, AttributeError, RecursionError) as exc:
        # RecursionError: JSON nested too deeply to parse (a hostile relay's answer).
        raise _AttachFailed(f"the relay's answer is not a poll session: {exc}") from exc
    assert isinstance(session, dict)
    return session
