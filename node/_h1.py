"""A lean HTTP/1.1 client for the frames POSTs a node makes to its neighbours.

Every message a node forwards leaves it in a ``POST /ptth/v1/frames`` (node/_forwarder.py).
Through httpx and httpcore such a request cost about 1.3 ms of CPU (measured: 3,000
sequential POSTs on loopback, 1,276-1,341 µs each), against 380 µs driving h11
directly; at light load, when each POST carries one frame, that was most of a
forwarded message's cost. :class:`H1Client` drives h11 itself, on the same network
seam (``Network.client_backend()``: real TCP, or a simulation's network), with the
same errors httpcore raises (``ConnectError``, ``ReadTimeout``, ...: their names are
what a forwarder reports) and the same timeouts httpx applies: the connect timeout
to dial (and a TLS handshake), the read timeout for each read, the write timeout for
the request, the pool timeout to wait for a free connection.

:class:`Pool` is its connection policy, httpcore's for HTTP/1.1
(``AsyncConnectionPool._assign_requests_to_connections``), and no I/O of its own: one
request at a time per connection; requests served in turn, each by an idle
connection to its origin, else a new one while there are fewer than ``size``, else a
new one in place of the oldest idle one; otherwise the request waits. An idle
connection expires ``keepalive`` s (trio's clock) after its last answer, or as soon as
``alive`` says its server hung up. The engine-level simulation (simulations/_engine.py)
runs the same class, so it pools connections exactly as a node does.
"""

from __future__ import annotations

import collections
import math
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeAlias, TypeVar

import h11
import httpcore
import trio

__all__ = [
    "KEEPALIVE",
    "MAX_ANSWER",
    "MAX_CONNECTIONS",
    "TRANSPORT_ERRORS",
    "Answer",
    "H1Client",
    "Origin",
    "Pool",
    "PooledConnection",
]

#: Connections to all neighbours at most (all may stay idle), as ``make_transport``.
MAX_CONNECTIONS: Final = 16
#: Seconds an idle connection is kept: under the server's idle timeout (60 s), so the
#: client, not the server, normally closes it.
KEEPALIVE: Final = 30.0
#: Bytes of an answer's body at most: a frames answer is a few bytes per frame; a
#: neighbour sending more is refused (``RemoteProtocolError``) rather than buffered.
MAX_ANSWER: Final = 1024 * 1024
#: Words of a refusal kept for the error: enough for any of ours, bounded for a
#: hostile neighbour's.
MAX_WORDS: Final = 500
#: What :meth:`H1Client.post` raises when it gets no answer (httpcore's classes).
TRANSPORT_ERRORS: Final = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)
_READ_SIZE: Final = 64 * 1024

#: (scheme, host, port): where a connection goes.
Origin: TypeAlias = tuple[str, str, int]


class PooledConnection:
    """One connection of a :class:`Pool`, to ``origin``."""

    __slots__ = ("expire_at", "idle", "new", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        #: Not dialled yet (the request that took it dials it).
        self.new = True
        self.idle = False
        self.expire_at = math.inf


_C = TypeVar("_C", bound=PooledConnection)


class _Ticket(Generic[_C]):
    __slots__ = ("connection", "origin", "ready")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.ready = trio.Event()
        self.connection: _C | None = None


class Pool(Generic[_C]):
    """Connections to many origins, handed out one request at a time (see the module
    docstring). ``make`` makes a connection for an origin; ``dropped`` hears of each
    connection that leaves the pool (expired, dead, replaced, or given back closed)."""

    def __init__(
        self,
        size: int,
        keepalive: float,
        alive: Callable[[_C], bool],
        make: Callable[[Origin], _C],
        dropped: Callable[[_C], None] = lambda connection: None,
    ) -> None:
        self.size = size
        self.keepalive = keepalive
        self.alive = alive
        self.make = make
        self.dropped = dropped
        self.connections: list[_C] = []
        self._queue: collections.deque[_Ticket[_C]] = collections.deque()

    async def acquire(self, origin: Origin) -> _C:
        """A connection to ``origin``, taken (``new`` if it is to be dialled)."""
        return await self.wait(self.request(origin))

    def request(self, origin: Origin) -> _Ticket[_C]:
        """Ask for a connection to ``origin``: the ticket has it at once if one could be
        taken (then nothing waits; else :meth:`wait` for it)."""
        ticket: _Ticket[_C] = _Ticket(origin)
        self._queue.append(ticket)
        try:
            self._assign()
        except BaseException:
            self._queue.remove(ticket)
            raise
        return ticket

    async def wait(self, ticket: _Ticket[_C]) -> _C:
        """The connection of ``ticket`` (from :meth:`request`), once it has one."""
        try:
            if ticket.connection is None:
                await ticket.ready.wait()
            assert ticket.connection is not None
            return ticket.connection
        except BaseException:
            if ticket in self._queue:
                self._queue.remove(ticket)
            elif ticket.connection is not None:  # taken just as this was cancelled
                self.release(ticket.connection, keep=not ticket.connection.new)
            raise

    def release(self, connection: _C, *, keep: bool) -> None:
        """Give ``connection`` back: idle (``keep``) or closed."""
        if keep:
            connection.new = False
            connection.idle = True
            connection.expire_at = trio.current_time() + self.keepalive
        elif connection in self.connections:
            self.connections.remove(connection)
            self.dropped(connection)
        if self._queue:
            self._assign()

    def close_all(self) -> list[_C]:
        """Forget every connection; return them (to be closed)."""
        connections, self.connections = self.connections, []
        return connections

    def _assign(self) -> None:
        now = trio.current_time()
        kept = []
        for c in self.connections:
            if not c.idle or (now <= c.expire_at and self.alive(c)):
                kept.append(c)
            else:
                self.dropped(c)
        self.connections = kept
        idle = [c for c in kept if c.idle]
        while self._queue:
            ticket = self._queue[0]
            connection = next((c for c in idle if c.origin == ticket.origin), None)
            if connection is not None:
                idle.remove(connection)
            else:
                if len(self.connections) >= self.size:
                    if not idle:
                        # No room and nothing idle: no request after this one can be
                        # served either (httpcore would look at each in vain).
                        return
                    oldest = idle.pop(0)
                    self.connections.remove(oldest)
                    self.dropped(oldest)
                connection = self.make(ticket.origin)
                self.connections.append(connection)
            connection.idle = False
            self._queue.popleft()
            ticket.connection = connection
            ticket.ready.set()


class Answer:
    """What came back: ``status``, ``headers`` (lower-case names) and ``body``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def words(self) -> str:
        """The body as text, stripped and bounded: a refusal's words."""
        text = self.body[: MAX_WORDS * 4].decode("utf-8", "replace").strip()
        return text if len(text) <= MAX_WORDS else text[:MAX_WORDS] + "..."


class _Connection(PooledConnection):
    __slots__ = ("h11", "stream")

    def __init__(self, origin: Origin) -> None:
        super().__init__(origin)
        self.stream: httpcore.AsyncNetworkStream | None = None
        self.h11 = h11.Connection(h11.CLIENT)


def _alive(connection: _Connection) -> bool:
    # An idle connection that is readable has been closed (or spoken out of turn) by
    # its server: httpcore's check (``has_expired``).
    stream = connection.stream
    return stream is None or not stream.get_extra_info("is_readable")


class H1Client:
    """POSTs over pooled HTTP/1.1 connections dialled through ``backend`` (see the
    module docstring). ``ssl_context`` is for ``https`` URLs (default: the system's
    trust roots). Use as ``async with``, or call :meth:`aclose`."""

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        pool_timeout: float,
        max_connections: int = MAX_CONNECTIONS,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.backend = backend
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.pool_timeout = pool_timeout
        self.ssl_context = ssl_context
        self.pool: Pool[_Connection] = Pool(
            max_connections, keepalive, _alive, _Connection, self._to_close_later
        )
        self._to_close: list[_Connection] = []
        self._targets: dict[str, tuple[Origin, str, str]] = {}
        #: Connections dialled.
        self.dials = 0

    async def __aenter__(self) -> H1Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        self._to_close += self.pool.close_all()
        await self._close_dropped()

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Answer:
        """POST ``body`` to ``url`` with ``headers`` (plus Host and Content-Length);
        return the answer, whatever its status.

        Raises one of :data:`TRANSPORT_ERRORS` when there is no answer: ``PoolTimeout``,
        ``ConnectError``, ``ConnectTimeout``, ``WriteError``, ``WriteTimeout``,
        ``ReadError``, ``ReadTimeout``, ``RemoteProtocolError`` (not HTTP, hung up
        mid-answer, or an answer over :data:`MAX_ANSWER`).
        """
        origin, authority, target = self._target(url)
        connection = await self._connect(origin)
        kept = False
        try:
            answer = await self._round_trip(connection, authority, target, headers, body)
            kept = connection.h11.our_state is h11.IDLE
            return answer
        finally:
            self.pool.release(connection, keep=kept)
            if self._to_close:
                await self._close_dropped()

    def _target(self, url: str) -> tuple[Origin, str, str]:
        known = self._targets.get(url)
        if known is None:
            split = urllib.parse.urlsplit(url)
            scheme = split.scheme.lower()
            if scheme not in ("http", "https") or not split.hostname:
                raise httpcore.UnsupportedProtocol(f"not an http(s) URL: {url!r}")
            host = split.hostname
            default = 443 if scheme == "https" else 80
            port = split.port or default
            name = f"[{host}]" if ":" in host else host
            authority = name if port == default else f"{name}:{port}"
            target = (split.path or "/") + (f"?{split.query}" if split.query else "")
            known = (scheme, host, port), authority, target
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[url] = known
        return known

    async def _connect(self, origin: Origin) -> _Connection:
        ticket = self.pool.request(origin)
        connection = ticket.connection
        if connection is None:  # none free: wait in turn (a scope only then)
            with trio.move_on_after(self.pool_timeout):
                connection = await self.pool.wait(ticket)
            if connection is None:
                raise httpcore.PoolTimeout(f"no connection free within {self.pool_timeout:g} s")
        if not connection.new:
            return connection
        scheme, host, port = origin
        try:
            stream = await self.backend.connect_tcp(host, port, timeout=self.connect_timeout)
            if scheme == "https":
                context = self.ssl_context or ssl.create_default_context()
                stream = await stream.start_tls(
                    context, server_hostname=host, timeout=self.connect_timeout
                )
        except BaseException:
            self.pool.release(connection, keep=False)
            raise
        self.dials += 1
        connection.stream = stream
        return connection

    async def _round_trip(
        self,
        connection: _Connection,
        authority: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> Answer:
        conn = connection.h11
        stream = connection.stream
        assert stream is not None
        try:
            head = conn.send(
                h11.Request(
                    method="POST",
                    target=target,
                    headers=[
                        ("host", authority),
                        ("content-length", str(len(body))),
                        *headers,
                    ],
                )
            )
            conn.send(h11.Data(data=body))
            conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpcore.LocalProtocolError(str(exc)) from exc
        assert head is not None
        try:
            await stream.write(head + body, timeout=self.write_timeout)
        except httpcore.WriteError:
            # The server may have answered from the head (a refusal) and closed without
            # reading the body: read its answer, as httpcore does.
            pass
        status = 0
        answer_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpcore.RemoteProtocolError(str(exc)) from exc
            if event is h11.NEED_DATA:
                data = await stream.read(_READ_SIZE, timeout=self.read_timeout)
                if not data and conn.their_state is h11.SEND_RESPONSE:
                    raise httpcore.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in event.headers
                ]
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_ANSWER:
                    raise httpcore.RemoteProtocolError(f"an answer of more than {MAX_ANSWER} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise httpcore.RemoteProtocolError("Server disconnected mid-answer.")
            # h11.InformationalResponse (1xx): wait for the final answer
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # kept alive: our_state is IDLE again
        return Answer(status, answer_headers, b"".join(chunks))

    def _to_close_later(self, connection: _Connection) -> None:
        if connection.stream is not None:
            self._to_close.append(connection)

    async def _close_dropped(self) -> None:
        closing, self._to_close = self._to_close, []
        with trio.CancelScope(shield=True):
            for connection in closing:
                stream, connection.stream = connection.stream, None
                if stream is not None:
                    try:
                        with trio.move_on_after(1):  # a TLS close_notify may hang
                            await stream.aclose()
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
