"""An HTTP/1.1 server: h11 over any trio listener (TCP, or a simulated network).

Each connection runs a loop of h11 ``Connection(SERVER)`` cycles: read a request with
its whole body, call the handler, write the response, and keep the connection alive if
h11 says we may. Defences, each a named limit in :class:`ServerConfig`:

* headers bigger than ``max_header_size`` -> 431; a body bigger than ``max_body_size``
  -> 413 (refused from Content-Length before a byte of the body is read);
* a client must finish its headers within ``header_timeout`` of their first byte (a
  client that trickles headers cannot hold a slot), and its body within
  ``body_timeout``; an idle keep-alive connection is closed after ``idle_timeout``;
* at most ``max_connections`` at once; past that a connection is answered 503 with
  ``Retry-After`` and closed;
* a malformed request gets the 4xx h11 suggests, and the connection is closed.

Shutdown (:meth:`Server.shutdown`) is graceful: stop accepting, close idle connections,
let requests in flight finish (up to ``shutdown_grace``), cancel long-lived streams.
Any error in a handler becomes a 500 for that request, logged, not a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import h11
import trio

__all__ = ["Handler", "PrefixedStream", "Request", "Response", "Server", "ServerConfig"]

log = logging.getLogger("ptth.server")

_READ_SIZE: Final = 64 * 1024
_SERVER_NAME: Final = b"ptth"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Limits of one server. Every default has a reason."""

    #: Request line + headers: our requests carry a few signature headers, ~1 KiB.
    max_header_size: int = 16 * 1024
    #: A frames POST of 100 frames of 64 KiB fits; a peer wanting more sends two.
    max_body_size: int = 16 * 1024 * 1024
    #: From a request's first byte to the end of its headers.
    header_timeout: float = 10.0
    #: From the end of the headers to the end of the body: 16 MiB at ~1 MiB/s.
    body_timeout: float = 30.0
    #: How long a keep-alive connection may sit between requests.
    idle_timeout: float = 60.0
    #: How long one write may wait for a slow reader: a whole response, or the head
    #: or one piece of a streamed one (a stream itself may last as long as it likes).
    write_timeout: float = 30.0
    #: Concurrent connections; each costs a task and buffers.
    max_connections: int = 512
    #: On shutdown, how long requests in flight may take to finish.
    shutdown_grace: float = 10.0


@dataclasses.dataclass(frozen=True)
class Request:
    """A request with its whole body. Header names are lowercase."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    peer: str
    #: The URL prefix the client addressed, when the server knows it better than the
    #: Host header does (a request that came through a relay): the relay's public
    #: ``http(s)://relay/n/<node-id>``. None means ``http://<Host>``.
    base_url: str | None = None
    #: The request came through a relay (it is not from this machine, whatever the
    #: transport says).
    relayed: bool = False
    #: The scheme clients use to reach this server: "https" behind a TLS-terminating
    #: proxy (the server itself speaks plain HTTP).
    scheme: str = "http"

    @property
    def url(self) -> str:
        """The absolute URL the client asked for (what its signature covers)."""
        if self.base_url is not None:
            return self.base_url.rstrip("/") + self.target
        return f"{self.scheme}://{self.header('host') or 'unknown'}{self.target}"

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lowercase); repeated fields joined with ", "."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


@dataclasses.dataclass
class Response:
    """A response: a whole body, or a stream of chunks (``stream``)."""

    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    #: A stream that lives until the client leaves (e.g. Server-Sent Events): shutdown
    #: cancels it instead of waiting for it.
    long_lived: bool = False
    #: With status 101: takes over the connection after the 101 is sent, with any
    #: bytes the client sent after its request already in the stream it is given.
    upgrade: Callable[[trio.abc.Stream], Awaitable[None]] | None = None

    @classmethod
    def text(cls, status: int, words: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """A plain-text response (every error says what was wrong in words)."""
        return cls(
            status,
            [("content-type", "text/plain; charset=utf-8"), *headers],
            (words + "\n").encode("utf-8"),
        )


Handler = Callable[[Request], Awaitable[Response]]


class _Closing(Exception):
    """Raised inside a connection loop to end it (client gone, timeout, bad request)."""


class Server:
    """Serves ``handler`` on listeners until :meth:`shutdown` or cancellation."""

    def __init__(
        self, handler: Handler, config: ServerConfig | None = None, *, scheme: str = "http"
    ) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.scheme = scheme
        self._closing = trio.Event()
        self._connections: dict[object, _ConnectionState] = {}
        self._drained: trio.Event | None = None
        self.requests_served = 0

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections until :meth:`shutdown` completes."""
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept_loop, listener, connections)
                    task_status.started()
                    await self._closing.wait()
                    acceptors.cancel_scope.cancel()
                await _close_all(listeners)
                for state in list(self._connections.values()):
                    state.close_if_idle()
                if self._connections:
                    self._drained = trio.Event()
                    with trio.move_on_after(self.config.shutdown_grace):
                        await self._drained.wait()
                connections.cancel_scope.cancel()
        finally:
            await _close_all(listeners)

    def shutdown(self) -> None:
        """Begin a graceful shutdown; :meth:`serve` returns when it is complete."""
        self._closing.set()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self.serve_stream, stream)

    async def serve_stream(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str | None = None,
        base_url: str | None = None,
        relayed: bool = False,
    ) -> None:
        """Serve HTTP on one connection until it closes; then close it.

        The accept loop calls this for every connection; a node calls it for a
        connection it dialled itself (Reverse HTTP: after the 101 the node is the
        server). ``base_url`` and ``relayed`` are passed on to every :class:`Request`.
        """
        key = object()
        state = _ConnectionState(self, stream, peer=peer, base_url=base_url, relayed=relayed)
        self._connections[key] = state
        try:
            if len(self._connections) > self.config.max_connections:
                await state.refuse_busy()
            else:
                await state.run()
        except _Closing:
            pass
        finally:
            del self._connections[key]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            if not self._connections and self._drained is not None:
                self._drained.set()


class _ConnectionState:
    def __init__(
        self,
        server: Server,
        stream: trio.abc.Stream,
        *,
        peer: str | None,
        base_url: str | None,
        relayed: bool,
    ) -> None:
        self.server = server
        self.base_url = base_url
        self.relayed = relayed
        self.config = server.config
        self.stream = stream
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_header_size
        )
        self.idle = True
        self.idle_scope: trio.CancelScope | None = None
        self.stream_scope: trio.CancelScope | None = None
        self.peer = peer or _peer_name(stream)

    def close_if_idle(self) -> None:
        if self.idle and self.idle_scope is not None:
            self.idle_scope.cancel()
        if self.stream_scope is not None:
            self.stream_scope.cancel()

    async def refuse_busy(self) -> None:
        await self.send(
            Response.text(
                503,
                f"server busy: {self.config.max_connections} connections open; retry shortly",
                [("retry-after", "1")],
            ),
            close=True,
        )

    async def run(self) -> None:
        while True:
            self.idle = True
            request = await self.read_request()
            self.idle = False
            response = await self.respond(request)
            if response.status == 101 and response.upgrade is not None:
                if self.conn.their_state is not h11.DONE:  # h11 holds the client's proposal
                    await self.switch_protocols(response)
                    raise _Closing
                # h11 cannot send a 101 the client did not ask for: a handler bug.
                log.error(
                    "handler answered 101 to %s %s, which did not ask to upgrade",
                    request.method,
                    request.path,
                )
                response = Response.text(500, "internal error while handling the request")
            await self.send(response, close=self.server._closing.is_set())
            self.server.requests_served += 1
            if self.conn.our_state is h11.MUST_CLOSE or self.server._closing.is_set():
                raise _Closing
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError as exc:  # the client's request was not finished
                raise _Closing from exc

    async def switch_protocols(self, response: Response) -> None:
        """Send the 101 and hand the connection, with bytes read past it, to the upgrade."""
        assert response.upgrade is not None
        try:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
            await self.write_in_time(h11.InformationalResponse(status_code=101, headers=headers))
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            # e.g. a 101 to CONNECT, or a bad header: the handler's bug, this request's end.
            log.error("cannot switch protocols: %s", exc)
            raise _Closing from exc
        trailing, _ = self.conn.trailing_data
        stream = PrefixedStream(self.stream, bytes(trailing))
        # An upgraded connection lives as long as its new protocol: like a long-lived
        # stream, shutdown cancels it rather than waiting for it.
        try:
            with trio.CancelScope() as scope:
                self.stream_scope = scope
                if self.server._closing.is_set():
                    scope.cancel()
                await response.upgrade(stream)
        except Exception:
            log.exception("the upgraded connection's protocol failed")
        finally:
            self.stream_scope = None

    async def respond(self, request: Request) -> Response:
        try:
            return await self.server.handler(request)
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.path)
            return Response.text(500, "internal error while handling the request")

    async def receive(self) -> None:
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closing from exc
        if not data and self.conn.their_state is h11.IDLE and self.idle:
            raise _Closing  # the client closed a keep-alive connection: fine
        self.conn.receive_data(bytes(data))

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            await self.send_error(exc.error_status_hint, f"malformed request: {exc}")
            raise _Closing from exc

    async def read_request(self) -> Request:
        # Wait for the first byte (idle), then for the rest of the headers.
        head_deadline = math.inf
        request: h11.Request | None = None
        with trio.CancelScope(deadline=trio.current_time() + self.config.idle_timeout) as idle:
            self.idle_scope = idle
            while request is None:
                event = await self.next_event()
                if isinstance(event, h11.Request):
                    request = event
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    raise _Closing
                if event is not h11.NEED_DATA:
                    raise _Closing  # PAUSED or anything unexpected: nothing to serve
                await self.receive()
                if head_deadline == math.inf and self.conn.trailing_data[0]:
                    head_deadline = trio.current_time() + self.config.header_timeout
                    idle.deadline = min(idle.deadline, head_deadline)
                    self.idle = False
        self.idle_scope = None
        if request is None:  # the idle or header deadline passed
            if head_deadline != math.inf and trio.current_time() >= head_deadline:
                await self.send_error(408, "request headers took too long to arrive")
            raise _Closing
        # h11 bounds only headers that arrive in pieces; a whole head in one read is
        # measured here.
        head_size = len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
        if head_size > self.config.max_header_size:
            await self.send_error(
                431, f"request headers are {head_size} bytes, limit {self.config.max_header_size}"
            )
            raise _Closing
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers]
        target = request.target.decode("latin-1")
        length = _content_length(request.headers)
        if length is not None and length > self.config.max_body_size:
            await self.send_error(
                413, f"request body is {length} bytes, limit {self.config.max_body_size}"
            )
            raise _Closing
        body = await self.read_body()
        return Request(
            request.method.decode("ascii"),
            target,
            headers,
            body,
            self.peer,
            scheme=self.server.scheme,
            base_url=self.base_url,
            relayed=self.relayed,
        )

    async def read_body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.config.body_timeout) as scope:
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.config.max_body_size:
                        await self.send_error(
                            413, f"request body is over the limit of {self.config.max_body_size}"
                        )
                        raise _Closing
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                elif event is h11.NEED_DATA:
                    await self.receive()
                else:
                    raise _Closing  # ConnectionClosed mid-body: the client went away
        assert scope.cancelled_caught
        await self.send_error(408, f"request body took over {self.config.body_timeout:g} s")
        raise _Closing

    async def send_error(self, status: int, words: str) -> None:
        # h11 lets a server answer from IDLE too, for a request it could not parse.
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self.send(Response.text(status, words), close=True)

    async def send(self, response: Response, *, close: bool) -> None:
        try:
            headers = [(b"server", _SERVER_NAME)]
            headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
            if close:
                headers.append((b"connection", b"close"))
            if response.stream is None:
                headers.append((b"content-length", str(len(response.body)).encode("ascii")))
            head = h11.Response(status_code=response.status, headers=headers)
            if response.stream is None:
                # One write for the whole response: one syscall, one segment.
                events: list[h11.Event] = [head]
                if response.body:
                    events.append(h11.Data(data=response.body))
                events.append(h11.EndOfMessage())
                await self.write_in_time(*events)
            else:
                # A stream may take as long as it likes (Server-Sent Events live for
                # hours); each write of it is bounded instead.
                await self.write_in_time(head)
                await self.write_stream(response)
                await self.write_in_time(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            log.debug("cannot answer on this connection: %s", exc)
            raise _Closing from exc
        finally:
            if response.stream is not None:
                # Written or not (the head may have failed): its owner may hold
                # something for it, e.g. the relay a reversed connection.
                aclose = getattr(response.stream, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()

    async def write_stream(self, response: Response) -> None:
        assert response.stream is not None
        try:
            with trio.CancelScope() as scope:
                if response.long_lived:
                    self.stream_scope = scope
                    if self.server._closing.is_set():
                        scope.cancel()
                async for chunk in response.stream:
                    await self.write_in_time(h11.Data(data=chunk))
        except (_Closing, h11.LocalProtocolError):
            raise
        except Exception as exc:
            # The head is out: too late for a 500. End this connection, not the server.
            log.exception("response stream failed after its head was sent")
            raise _Closing from exc
        finally:
            self.stream_scope = None
        if scope.cancelled_caught:
            raise _Closing

    async def write_in_time(self, *events: h11.Event) -> None:
        """:meth:`write` within ``write_timeout``; a client that does not read is left."""
        with trio.move_on_after(self.config.write_timeout) as scope:
            await self.write(*events)
        if scope.cancelled_caught:
            raise _Closing

    async def write(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.send(event) or b"" for event in events)
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closing from exc


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read from it by someone else.

    After an Upgrade, h11 has read past the 101 (or the request before it); those
    bytes belong to the next protocol and are served first (wsproto does the same
    with h11's ``trailing_data``).
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _close_all(listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> None:
    with trio.CancelScope(shield=True):
        for listener in listeners:
            await listener.aclose()


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


def _peer_name(stream: trio.abc.Stream) -> str:
    socket = getattr(stream, "socket", None)
    if socket is not None:
        try:
            host, port, *_ = socket.getpeername()
        except (OSError, ValueError):
            return "?"
        return f"{host}:{port}"
    return str(getattr(stream, "peer_name", "memory"))
