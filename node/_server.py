"""An HTTP/1.1 server: h11 over any trio listener (TCP, or a simulated network).

Each connection runs a loop of h11 ``Connection(SERVER)`` cycles: read a request with
its whole body, call the handler, write the response, and keep the connection alive if
h11 says we may. Defences, each a named limit in :class:`ServerConfig`:

* headers bigger than ``max_header_size`` -> 431; a body bigger than ``max_body_size``
  -> 413 (refused from Content-Length before a byte of the body is read);
* an admission hook (``Server(..., admit=...)``) sees each request's head before any
  of its body is read, and may answer it at once (e.g. 401 to a stranger's 16 MiB
  POST): the body is never read into memory;
* request bodies held in memory, across all connections, stay within
  ``max_body_bytes_in_flight``: a request's declared Content-Length is reserved
  before its body is read (a chunked body's pieces as they arrive) and released when
  its response has been sent; a request that does not fit is answered 503 with
  ``Retry-After`` and its body is not read;
* a client must finish its headers within ``header_timeout`` of their first byte (a
  client that trickles headers cannot hold a slot), and its body within
  ``body_timeout``; an idle keep-alive connection is closed after ``idle_timeout``;
* at most ``max_connections`` at once, at most ``max_connections_per_address`` from
  one IP address (an IPv6 /64; a peer that is no IP address, on an in-process network
  or a Unix socket, is not capped); past either a connection is answered 503 with
  ``Retry-After`` and closed. When the server is full, a newcomer whose address holds
  less than its fair share (``max_connections`` // addresses) is served by closing a
  connection that is idle or still reading its head, from the address holding the
  most; a connection in the middle of a request, a response or a stream is never
  closed for another;
* under pressure (``busy_fraction`` of ``max_connections`` open) idle and head waits
  are cut to ``busy_idle_timeout`` and ``busy_header_timeout``;
* a malformed request gets the 4xx h11 suggests, and the connection is closed.

Memory: request bodies are at most ``max_body_bytes_in_flight`` (twice that for the
instant a body's pieces are joined into one ``bytes``), plus per connection h11's
buffer of at most ``max_header_size`` + 64 KiB (one read), times ``max_connections``:
with the defaults 64 MiB (128 MiB at worst for an instant) + 512 x 80 KiB = 40 MiB.
Responses are the handler's to bound. A connection refused at once does not hold a
slot; after a refusal whose request body was left unread, the server half-closes and
discards what the client still sends for at most 1 s and 1 MiB ("lingering close",
as nginx does), so that the client reads the refusal instead of a reset.

Connections served by :meth:`Server.serve_stream` with ``relayed=True`` (a node's own
connection to its relay, served after the 101) count against ``max_connections`` and
pass the admission hook and the body budget, but have no address: they are neither
limited per address, nor closed for a newcomer, nor cut short under pressure.

An observer hook (``Server(..., observe=...)``) is told, once per request whose head
was read, its path, the status answered and the seconds from the head being parsed to
the response head being written (a streamed body counts up to its head; a 101 up to
the 101). Requests that end without an answer written (the client left) and bytes that
never made a request (a malformed or unfinished head) are not observed.

Shutdown (:meth:`Server.shutdown`) is graceful: stop accepting, close idle connections,
let requests in flight finish (up to ``shutdown_grace``), cancel long-lived streams.
Any error in a handler (or the admission hook) becomes a 500 for that request, logged,
not a crash.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import h11
import trio

__all__ = [
    "Admit",
    "Handler",
    "Observe",
    "PrefixedStream",
    "Request",
    "Response",
    "Server",
    "ServerConfig",
    "accept_connections",
    "peer_name",
    "source_address",
]

log = logging.getLogger("ptth.server")

_READ_SIZE: Final = 64 * 1024
_SERVER_NAME: Final = b"ptth"
_MIB: Final = 1024 * 1024
#: After a refusal that left a request body unread: how long, and how much of what the
#: client still sends, to discard before closing, so that the close is not a reset that
#: destroys the refusal on its way (a client busy sending reads it once we stop).
_LINGER_TIME: Final = 1.0
_LINGER_BYTES: Final = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Limits of one server. Every default has a reason."""

    #: Request line + headers: our requests carry a few signature headers, ~1 KiB.
    max_header_size: int = 16 * 1024
    #: A frames POST of 250 frames of 64 KiB fits; a peer wanting more sends two.
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
    #: Concurrent connections from one IP address (IPv6: one /64, what one site gets):
    #: a node's client pools at most 16 per peer, so 64 leaves room for a few nodes
    #: behind one NAT, while one address cannot take more than an eighth of the slots.
    max_connections_per_address: int = 64
    #: Request bodies in memory at once, over all connections. Four bodies of the
    #: maximum size (16 MiB), or hundreds of everyday frame batches; without it 200
    #: parallel 16 MiB uploads would take 3.2 GiB before anyone looked at them.
    max_body_bytes_in_flight: int = 64 * 1024 * 1024
    #: The server is under pressure from this share of ``max_connections`` open: half
    #: full leaves time to shed idle connections before newcomers must be refused.
    busy_fraction: float = 0.5
    #: Under pressure, how long a keep-alive connection may sit between requests: a
    #: client that has nothing to say gives its slot to one that has.
    busy_idle_timeout: float = 5.0
    #: Under pressure, how long a client may take from its head's first byte to its
    #: end: an honest head arrives in one round trip.
    busy_header_timeout: float = 5.0
    #: On shutdown, how long requests in flight may take to finish.
    shutdown_grace: float = 10.0

    def __post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_body_size:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) is below "
                f"max_body_size ({self.max_body_size}): a body of the maximum size could "
                "never be taken; raise the budget or lower the body limit"
            )
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ValueError(
                f"max_connections ({self.max_connections}) and max_connections_per_address "
                f"({self.max_connections_per_address}) must be at least 1"
            )
        if not 0 < self.busy_fraction <= 1:
            raise ValueError(f"busy_fraction is {self.busy_fraction}; it must be in (0, 1]")


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
    #: What the admission hook learned from the head (e.g. the authenticated sender),
    #: for the handler: the request it is given carries the same dict.
    notes: dict[str, object] = dataclasses.field(default_factory=dict, compare=False)

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
#: An admission hook: given a request's head (a :class:`Request` whose ``body`` is
#: ``b""``: the body has not been read), a :class:`Response` refuses it (sent with
#: ``connection: close``, the body never read), None lets it in.
Admit = Callable[[Request], Awaitable[Response | None]]
#: An observer: told a request's path, the status answered and the seconds the answer
#: took (see the module docstring). Called in the connection's task: it must not block.
Observe = Callable[[str, int, float], None]


class _Closing(Exception):
    """Raised inside a connection loop to end it (client gone, timeout, bad request)."""


class Server:
    """Serves ``handler`` on listeners until :meth:`shutdown` or cancellation.

    ``admit``, when given, is called with every request's head (its ``body`` is
    ``b""``) once the head has passed the size checks, before any body byte is read;
    a :class:`Response` it returns is sent with ``connection: close`` and the
    connection closed, the body unread. It may leave what it learned in
    ``request.notes`` for the handler. An exception in it is a 500, as in the handler.

    ``observe``, when given, is told each answered request (:data:`Observe`); an
    exception in it is logged and otherwise ignored.
    """

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        *,
        scheme: str = "http",
        admit: Admit | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.handler = handler
        self.admit = admit
        self.observe = observe
        self.config = config or ServerConfig()
        self.scheme = scheme
        self._closing = trio.Event()
        self._connections: dict[object, _ConnectionState] = {}
        self._drained: trio.Event | None = None
        self.requests_served = 0
        #: Request-body bytes reserved now, and the most ever reserved at once.
        self.body_bytes_in_flight = 0
        self.peak_body_bytes_in_flight = 0
        # Connections holding a slot: all of them, and per address (relayed ones have
        # none). ``_waiting`` holds, per address and oldest first, those waiting for a
        # request (idle or reading its head): the ones that may be closed for others.
        self._slots: set[_ConnectionState] = set()
        self._per_address: dict[str, int] = {}
        self._waiting: dict[str, dict[_ConnectionState, None]] = {}
        self._pressure = False

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    @property
    def open_connections(self) -> int:
        """Connections holding a slot (``active_connections`` also counts refused ones
        still being answered)."""
        return len(self._slots)

    @property
    def under_pressure(self) -> bool:
        """Whether ``busy_fraction`` of ``max_connections`` are open (shorter waits)."""
        return self._pressure

    def connections_from(self, address: str) -> int:
        """Connections holding a slot from ``address`` (an IP, an IPv6 /64, or a peer name)."""
        return self._per_address.get(address, 0)

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
        await accept_connections(listener, nursery, self.serve_stream)

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
        server). ``base_url`` and ``relayed`` are passed on to every :class:`Request`;
        a relayed connection has no address (module docstring).
        """
        key = object()
        state = _ConnectionState(self, stream, peer=peer, base_url=base_url, relayed=relayed)
        self._connections[key] = state
        try:
            refusal = self._take_slot(state)
            if refusal is not None:
                await state.refuse(Response.text(503, refusal, [("retry-after", "1")]))
            else:
                await state.run()
        except _Closing:
            pass
        finally:
            self._release_body(state)
            self._release_slot(state)
            del self._connections[key]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            if not self._connections and self._drained is not None:
                self._drained.set()

    # -- slots -------------------------------------------------------------------------

    def _take_slot(self, state: _ConnectionState) -> str | None:
        """Give ``state`` a slot, closing another for it if fair; else the refusal's words."""
        config = self.config
        address = state.address
        held = 0 if address is None else self._per_address.get(address, 0)
        if address is not None and state.limited and held >= config.max_connections_per_address:
            return (
                f"too many connections from {address}: {held} open "
                f"(limit {config.max_connections_per_address}); retry shortly"
            )
        if len(self._slots) >= config.max_connections and not self._make_room(address, held):
            return f"server busy: {config.max_connections} connections open; retry shortly"
        self._slots.add(state)
        if address is not None:
            self._per_address[address] = held + 1
        if not self._pressure and len(self._slots) >= config.busy_fraction * config.max_connections:
            self._pressure = True
            # Once per onset: cut the waits already running (O(connections waiting)).
            for waiting in self._waiting.values():
                for other in list(waiting):
                    other.hurry()
        return None

    def _make_room(self, address: str | None, held: int) -> bool:
        """When full: close a waiting connection of the address holding the most, if
        the newcomer's address holds less than its fair share and that one more."""
        distinct = len(self._per_address) + (0 if held else 1)
        fair = max(1, self.config.max_connections // distinct)
        if held >= fair:
            return False
        victim_address, most = None, fair
        for candidate in self._waiting:  # only addresses with a waiting connection
            count = self._per_address[candidate]
            if count > most:
                victim_address, most = candidate, count
        if victim_address is None:
            return False
        victim = next(iter(self._waiting[victim_address]))  # waiting the longest
        log.debug(
            "full: closing a waiting connection of %s (%d open, fair share %d) for %s",
            victim_address,
            most,
            fair,
            address,
        )
        victim.evict()
        return True

    def _release_slot(self, state: _ConnectionState) -> None:
        if state not in self._slots:
            return
        self._stop_waiting(state)
        self._slots.remove(state)
        address = state.address
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
        config = self.config
        if self._pressure and len(self._slots) < config.busy_fraction * config.max_connections:
            self._pressure = False

    def _start_waiting(self, state: _ConnectionState) -> None:
        if state.address is not None and state in self._slots:
            self._waiting.setdefault(state.address, {})[state] = None

    def _stop_waiting(self, state: _ConnectionState) -> None:
        if state.address is None:
            return
        waiting = self._waiting.get(state.address)
        if waiting is not None and state in waiting:
            del waiting[state]
            if not waiting:
                del self._waiting[state.address]

    # -- the body budget -------------------------------------------------------------

    def _reserve_body(self, state: _ConnectionState, size: int) -> str | None:
        """Reserve ``size`` bytes of body for ``state``; else the refusal's words."""
        limit = self.config.max_body_bytes_in_flight
        if self.body_bytes_in_flight + size > limit:
            return (
                f"server busy: {_size(self.body_bytes_in_flight)} of request bodies in "
                f"memory (limit {_size(limit)}); retry shortly"
            )
        self.body_bytes_in_flight += size
        state.reserved += size
        self.peak_body_bytes_in_flight = max(
            self.peak_body_bytes_in_flight, self.body_bytes_in_flight
        )
        return None

    def _release_body(self, state: _ConnectionState) -> None:
        self.body_bytes_in_flight -= state.reserved
        state.reserved = 0


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
        # While waiting for a request: the scope of the wait, when it began, and when
        # the head began (its first byte) and must end.
        self.wait_scope: trio.CancelScope | None = None
        self.wait_since = 0.0
        self.head_since: float | None = None
        self.head_deadline = math.inf
        self.evicted = False
        self.stream_scope: trio.CancelScope | None = None
        self.peer = peer or peer_name(stream)
        #: The address this connection counts against; None for a relayed connection.
        ip = source_address(self.peer)
        self.address = None if relayed else (ip or self.peer)
        #: Whether the per-address cap applies: only to an IP address (a name is an
        #: in-process network's or the caller's, not a stranger's).
        self.limited = self.address is not None and ip is not None
        #: Request-body bytes reserved from the server's budget.
        self.reserved = 0
        #: The target of the request being answered and when its head was parsed
        #: (perf_counter), until the answer is observed (None: nothing to observe).
        self.head_target: bytes | None = None
        self.head_at = 0.0

    def close_if_idle(self) -> None:
        if self.idle and self.wait_scope is not None:
            self.wait_scope.cancel()
        if self.stream_scope is not None:
            self.stream_scope.cancel()

    def evict(self) -> None:
        """Close this waiting connection for another: its slot is free at once."""
        self.evicted = True
        self.server._release_slot(self)
        if self.wait_scope is not None:
            self.wait_scope.cancel()

    def hurry(self) -> None:
        """Pressure began: cut this connection's wait to the busy timeouts."""
        if self.wait_scope is None:
            return
        config = self.config
        if self.head_since is None:
            limit = min(config.idle_timeout, config.busy_idle_timeout)
            self.wait_scope.deadline = min(self.wait_scope.deadline, self.wait_since + limit)
        else:
            limit = min(config.header_timeout, config.busy_header_timeout)
            self.head_deadline = min(self.head_deadline, self.head_since + limit)
            self.wait_scope.deadline = min(self.wait_scope.deadline, self.head_deadline)

    def _hurried(self) -> bool:
        return self.server._pressure and not self.relayed

    async def refuse(self, response: Response) -> None:
        """Send ``response`` and close; discard, for a moment, what the client still sends.

        What it had of a body is dropped: its reservation is released before the linger.
        """
        self.server._release_body(self)
        await self.send(response, close=True)
        await self.linger()

    async def linger(self) -> None:
        """Half-close, then read and drop what the client sends (at most 1 s, 1 MiB).

        Closing a socket with unread bytes in it resets the connection, and a reset
        may destroy the answer before the client has read it.
        """
        with trio.move_on_after(_LINGER_TIME):
            try:
                send_eof = getattr(self.stream, "send_eof", None)
                if send_eof is not None:
                    await send_eof()
                dropped = 0
                while dropped < _LINGER_BYTES:
                    data = await self.stream.receive_some(_READ_SIZE)
                    if not data:
                        return
                    dropped += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def run(self) -> None:
        while await self.cycle():
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError as exc:  # the client's request was not finished
                raise _Closing from exc

    async def cycle(self) -> bool:
        """Serve one request; whether the connection may serve another.

        The request and response die with this call: an idle connection holds no body.
        """
        self.idle = True
        self.head_target = None
        request = await self.read_request()
        self.idle = False
        response = await self.respond(request)
        if response.status == 101 and response.upgrade is not None:
            if self.conn.their_state is not h11.DONE:  # h11 holds the client's proposal
                self.server._release_body(self)
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
        self.server._release_body(self)
        self.server.requests_served += 1
        return not (self.conn.our_state is h11.MUST_CLOSE or self.server._closing.is_set())

    async def switch_protocols(self, response: Response) -> None:
        """Send the 101 and hand the connection, with bytes read past it, to the upgrade."""
        assert response.upgrade is not None
        try:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
            await self.write_in_time(h11.InformationalResponse(status_code=101, headers=headers))
            self.observed(101)
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

    async def read_head(self) -> h11.Request:
        """Wait for the first byte (idle), then for the rest of the head."""
        config = self.config
        request: h11.Request | None = None
        self.wait_since = trio.current_time()
        self.head_since, self.head_deadline = None, math.inf
        idle_limit = config.idle_timeout
        if self._hurried():
            idle_limit = min(idle_limit, config.busy_idle_timeout)
        try:
            with trio.CancelScope(deadline=self.wait_since + idle_limit) as scope:
                self.wait_scope = scope
                self.server._start_waiting(self)
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
                    if self.head_since is None and self.conn.trailing_data[0]:
                        self.head_since = now = trio.current_time()
                        head_limit = config.header_timeout
                        if self._hurried():
                            head_limit = min(head_limit, config.busy_header_timeout)
                        self.head_deadline = scope.deadline = now + head_limit
                        self.idle = False
        finally:
            self.wait_scope = None
            self.server._stop_waiting(self)
        if self.evicted:  # closed for a newcomer (perhaps just as the head completed)
            if self.head_since is not None:
                await self.send_error(
                    503,
                    f"server busy: {config.max_connections} connections open, and this one "
                    "was waiting for its request; retry shortly",
                    [("retry-after", "1")],
                )
            raise _Closing
        if request is None:  # the idle or header deadline passed
            if trio.current_time() >= self.head_deadline:
                await self.send_error(408, "request headers took too long to arrive")
            raise _Closing
        return request

    async def read_request(self) -> Request:
        request = await self.read_head()
        if self.server.observe is not None:
            self.head_target, self.head_at = request.target, time.perf_counter()
        config = self.config
        # h11 bounds only headers that arrive in pieces; a whole head in one read is
        # measured here.
        head_size = len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
        if head_size > config.max_header_size:
            await self.send_error(
                431, f"request headers are {head_size} bytes, limit {config.max_header_size}"
            )
            raise _Closing
        length = _content_length(request.headers)
        if length is not None and length > config.max_body_size:
            await self.refuse(
                Response.text(413, f"request body is {length} bytes, limit {config.max_body_size}")
            )
            raise _Closing
        head = Request(
            request.method.decode("ascii"),
            request.target.decode("latin-1"),
            [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers],
            b"",
            self.peer,
            scheme=self.server.scheme,
            base_url=self.base_url,
            relayed=self.relayed,
        )
        await self.admit(head)
        if length:
            busy = self.server._reserve_body(self, length)
            if busy is not None:
                await self.refuse(Response.text(503, busy, [("retry-after", "1")]))
                raise _Closing
        body = await self.read_body(reserved=length is not None)
        return dataclasses.replace(head, body=body)  # the same notes

    async def admit(self, head: Request) -> None:
        """Ask the server's admission hook; a refusal is sent and ends the connection."""
        if self.server.admit is None:
            return
        try:
            refusal = await self.server.admit(head)
        except Exception:
            log.exception("admission failed on %s %s", head.method, head.path)
            refusal = Response.text(500, "internal error while handling the request")
        if refusal is not None:
            await self.refuse(refusal)
            raise _Closing

    async def read_body(self, *, reserved: bool) -> bytes:
        """The body; ``reserved``: its declared length is reserved already, else each
        piece is reserved as it arrives."""
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.config.body_timeout) as scope:
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.config.max_body_size:
                        chunks.clear()
                        await self.refuse(
                            Response.text(
                                413,
                                f"request body is over the limit of {self.config.max_body_size}",
                            )
                        )
                        raise _Closing
                    if not reserved:
                        busy = self.server._reserve_body(self, len(event.data))
                        if busy is not None:
                            chunks.clear()
                            await self.refuse(Response.text(503, busy, [("retry-after", "1")]))
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

    async def send_error(
        self, status: int, words: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        # h11 lets a server answer from IDLE too, for a request it could not parse.
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self.send(Response.text(status, words, headers), close=True)

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
                self.observed(response.status)
            else:
                # A stream may take as long as it likes (Server-Sent Events live for
                # hours); each write of it is bounded instead.
                await self.write_in_time(head)
                self.observed(response.status)
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

    def observed(self, status: int) -> None:
        """Tell the server's observer that the request's answer (``status``) is out."""
        target, self.head_target = self.head_target, None
        observe = self.server.observe
        if target is None or observe is None:
            return
        try:
            observe(
                target.partition(b"?")[0].decode("latin-1"),
                status,
                time.perf_counter() - self.head_at,
            )
        except Exception:
            log.exception("the request observer failed")

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


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end of ``stream`` (through TLS, the TCP peer); the
    stream's ``peer_name`` on other transports (an in-memory network, a Unix socket)."""
    while isinstance(stream, trio.SSLStream):  # TLS over TCP: the TCP peer
        stream = stream.transport_stream
    socket = getattr(stream, "socket", None)
    if socket is not None:
        try:
            host, port, *_ = socket.getpeername()
        except (OSError, ValueError):
            return "?"
        return f"{host}:{port}"
    return str(getattr(stream, "peer_name", "memory"))


def source_address(peer: str) -> str | None:
    """The source address a connection or an attach from ``peer`` (``Request.peer``)
    counts against.

    The host part of ``host:port``; an IPv6 address as its /64 (``2001:db8:1:2::/64``),
    an IPv4-mapped one as the IPv4 address. None for a peer that names no IP address (an
    in-memory network's ``memory``, a Unix socket's ``?``).
    """
    host = peer.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # (without an IPv6 zone)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _size(size: int) -> str:
    """``size`` bytes in words: "62 MiB", "1.5 MiB", "300 KiB", "12 bytes"."""
    for unit, scale in (("MiB", _MIB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


async def accept_connections(
    listener: trio.abc.Listener[trio.abc.Stream],
    nursery: trio.Nursery,
    serve: Callable[[trio.abc.Stream], Awaitable[None]],
    what: str = "accept",
) -> None:
    """Accept connections on ``listener`` until it is closed, each served by ``serve``
    in ``nursery``; a failing accept (e.g. EMFILE) is logged as ``what`` and retried
    after a pause instead of spinning."""
    while True:
        try:
            stream = await listener.accept()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        except OSError as exc:
            log.warning("%s failed: %s", what, exc)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(serve, stream)
