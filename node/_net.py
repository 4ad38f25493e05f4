"""The network seam of a node: where it listens and what it dials through (docs/architecture.md).

A node never opens a socket itself. Its h11 server accepts from the listeners of a
:class:`Network`, and its httpx client dials through the network's httpcore backend, via
:func:`make_transport`. So the same node code runs over:

- :class:`TcpNetwork`: real TCP, ``trio.open_tcp_listeners`` and ``trio.open_tcp_stream``;
- :class:`MemoryNetwork`: an in-process network of trio memory streams, where listeners
  are registered by ``(host, port)`` and dialing hands one end of a new stream pair to
  the listener. The pair is made by one small method, :meth:`MemoryNetwork._make_pair`,
  that the simulator (``simulations/``) overrides to add latency, loss and NAT.

On the client side one adapter, an httpcore ``AsyncNetworkStream`` over any
``trio.abc.Stream``, serves both networks: it maps trio's errors to httpcore's as
httpcore's own trio backend does, and can tell httpcore when a kept-alive connection
has been closed by the server ("is_readable"), so the pool drops it instead of sending a
request into it. :func:`make_transport` runs an httpcore connection pool on that backend
and maps httpcore's errors to httpx's exactly as ``httpx.AsyncHTTPTransport`` does.
"""

from __future__ import annotations

import contextlib
import errno
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import httpcore
import httpx
import trio

if TYPE_CHECKING:
    # Imported where first used: trio.testing imports pytest where it is installed,
    # a tenth of a second at every start of ptth for what only in-memory networks use.
    import trio.testing

__all__ = [
    "MemoryListener",
    "MemoryNetwork",
    "Network",
    "TcpNetwork",
    "is_readable",
    "make_transport",
]

# What ``connect_tcp`` gets from httpcore and passes to a network's dial function:
# (host, port, local_address, socket_options).
_Dial: TypeAlias = Callable[
    [str, int, str | None, Iterable[httpcore.SOCKET_OPTION]], Awaitable[trio.abc.Stream]
]

# The same table as httpx's ``_load_httpcore_exceptions`` in
# httpx/_transports/default.py (httpx 0.28.1), copied because it is private there.
_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
)


class Network(Protocol):
    """Where a node listens and what it dials through."""

    async def open_listeners(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Listen on ``(host, port)``; port 0 picks a free port.

        Raises :class:`OSError` (e.g. ``EADDRINUSE``) when the address cannot be had.
        """
        ...

    def client_backend(self) -> httpcore.AsyncNetworkBackend:
        """The httpcore backend that dials through this network."""
        ...

    def listener_address(self, listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
        """The ``(host, port)`` a listener of this network is bound to."""
        ...


# -- the client side: httpcore over trio streams -------------------------------------------


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


def _bare(stream: trio.abc.Stream) -> trio.abc.Stream:
    """The transport under any TLS layers."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream


class _StreamAdapter(httpcore.AsyncNetworkStream):
    """An httpcore network stream over a ``trio.abc.Stream`` (mirrors httpcore's TrioStream).

    The ``timeout`` parameters (ruff ASYNC109) are httpcore's interface.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            with trio.fail_after(_seconds(timeout)):
                return bytes(await self._stream.receive_some(max_bytes))
        except trio.TooSlowError as exc:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.ReadError(f"read failed: {exc!r}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            with trio.fail_after(_seconds(timeout)):
                await self._stream.send_all(buffer)
        except trio.TooSlowError as exc:
            raise httpcore.WriteTimeout(f"could not send within {timeout} s") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.WriteError(f"write failed: {exc!r}") from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        tls = trio.SSLStream(
            self._stream, ssl_context, server_hostname=server_hostname, https_compatible=True
        )
        try:
            with trio.fail_after(_seconds(timeout)):
                await tls.do_handshake()
        except BaseException as exc:
            await _close_all(self._stream)  # also when cancelled: httpcore would leak it
            if isinstance(exc, trio.TooSlowError):
                raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from exc
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                reason = exc.__cause__ or repr(exc)
                raise httpcore.ConnectError(f"TLS handshake failed: {reason}") from exc
            raise
        return _StreamAdapter(tls)

    def get_extra_info(self, info: str) -> Any:
        """httpcore's keys, for sockets where they make sense; ``None`` for the rest.

        ``"ssl_object"`` is the ``trio.SSLStream`` (it forwards ``getpeercert``,
        ``selected_alpn_protocol``, ``version``, ... of the ``ssl.SSLObject``);
        ``"is_readable"`` is whether a read would return at once (so an idle connection
        is readable only when the server closed it). The trio stream itself is not
        offered: after an Upgrade, httpcore's wrapper holds bytes already read from it.
        """
        bare = _bare(self._stream)
        socket = bare.socket if isinstance(bare, trio.SocketStream) else None
        if info == "ssl_object":
            return self._stream if isinstance(self._stream, trio.SSLStream) else None
        if info == "is_readable":
            return is_readable(bare)
        if socket is None:
            return None
        if info == "socket":
            return socket
        if info == "client_addr":
            return socket.getsockname()
        if info == "server_addr":
            return socket.getpeername()
        return None


def is_readable(stream: trio.abc.Stream) -> bool | None:
    """Whether ``receive_some`` would return at once; ``None`` if the stream cannot tell.

    Looks through TLS layers to the transport. Sockets are polled; other streams are
    asked through an ``is_readable()`` method of their own or, for a
    ``trio.StapledStream``, of its receive half. An idle HTTP connection that is
    readable has been closed (or spoken out of turn) by its peer.
    """
    stream = _bare(stream)
    if isinstance(stream, trio.SocketStream):
        return stream.socket.is_readable()
    probe: object = stream
    if isinstance(stream, trio.StapledStream):
        probe = stream.receive_stream
    is_readable = getattr(probe, "is_readable", None)
    return bool(is_readable()) if callable(is_readable) else None


class _Backend(httpcore.AsyncNetworkBackend):
    """An httpcore backend that dials with a network's dial function."""

    def __init__(self, dial: _Dial) -> None:
        self._dial = dial

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with trio.fail_after(_seconds(timeout)):
                stream = await self._dial(host, port, local_address, socket_options or ())
        except trio.TooSlowError as exc:
            raise httpcore.ConnectTimeout(
                f"no connection to {host}:{port} within {timeout} s"
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _StreamAdapter(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await trio.lowlevel.checkpoint()
        raise httpcore.ConnectError(f"unix sockets are not supported here: {path}")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# -- the transport: httpx over the httpcore pool -------------------------------------------


@contextlib.contextmanager
def _map_httpcore_exceptions() -> Iterator[None]:
    """Re-raise an httpcore error as the most specific httpx error; let others pass.

    As ``map_httpcore_exceptions`` in httpx/_transports/default.py (httpx 0.28.1).
    """
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.HTTPError] | None = None
        for from_exc, to_exc in _HTTPCORE_TO_HTTPX:
            if isinstance(exc, from_exc) and (mapped is None or issubclass(to_exc, mapped)):
                mapped = to_exc
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, with its errors mapped."""

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_httpcore_exceptions():
            async for part in self._response.aiter_stream():
                yield part

    async def aclose(self) -> None:
        await self._response.aclose()


class _Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncHTTPTransport`` without proxies, on a given httpcore pool."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("an httpx.AsyncClient request was expected (async body stream)")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_httpcore_exceptions():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def make_transport(
    network: Network,
    *,
    max_connections: int = 16,
    keepalive_expiry: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncBaseTransport:
    """An httpx transport that dials through ``network`` (HTTP/1.1 only).

    Up to ``max_connections`` connections, all of which may be kept alive for
    ``keepalive_expiry`` seconds (httpcore measures this with ``time.monotonic``, not
    trio's clock). ``ssl_context`` is for ``https`` URLs (default: httpcore's, with
    certifi's roots). Errors are httpx's, as with ``httpx.AsyncHTTPTransport``:
    ``ConnectError`` when nobody listens, ``ReadTimeout`` when the server is slow,
    ``RemoteProtocolError`` when it breaks HTTP or hangs up mid-response.
    """
    pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=network.client_backend(),
    )
    return _Transport(pool)


def _listener_under_tls(
    listener: trio.abc.Listener[trio.abc.Stream],
) -> trio.abc.Listener[trio.abc.Stream]:
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    return listener


# -- real TCP ------------------------------------------------------------------------------


class TcpNetwork:
    """Real TCP: the operating system's sockets, through trio."""

    async def open_listeners(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """``trio.open_tcp_listeners(port, host=host)``: one listener per address ``host``
        resolves to (with port 0, each gets its own port). Raises :class:`OSError`."""
        return list(await trio.open_tcp_listeners(port, host=host))

    def client_backend(self) -> httpcore.AsyncNetworkBackend:
        """Dials with ``trio.open_tcp_stream``; httpcore's ``socket_options`` are applied."""
        return _Backend(_dial_tcp)

    def listener_address(self, listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
        """The socket's bound ``(host, port)``; :class:`TypeError` for a foreign listener."""
        listener = _listener_under_tls(listener)
        if not isinstance(listener, trio.SocketListener):
            raise TypeError(f"not a TCP listener: {listener!r}")
        host, port = listener.socket.getsockname()[:2]
        return str(host), int(port)


async def _dial_tcp(
    host: str,
    port: int,
    local_address: str | None,
    socket_options: Iterable[httpcore.SOCKET_OPTION],
) -> trio.abc.Stream:
    stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    try:
        for option in socket_options:
            if len(option) == 4:
                level, name, _, length = option
                stream.setsockopt(level, name, None, length)
            else:
                stream.setsockopt(option[0], option[1], option[2])
    except OSError:
        await trio.aclose_forcefully(stream)
        raise
    return stream


# -- the in-memory network -----------------------------------------------------------------


async def _close_all(*streams: trio.abc.Stream) -> None:
    """Close every stream, forcefully, even if the caller is being cancelled."""
    with trio.CancelScope(shield=True):
        for stream in streams:
            await trio.aclose_forcefully(stream)


class _ReceiveBuffer(trio.abc.ReceiveStream):
    """The receiving end of an in-memory one-way connection.

    A ``trio.testing.MemoryReceiveStream`` that also knows whether ``receive_some``
    would return at once (data or end of file waiting), which httpcore asks to drop
    kept-alive connections the server has closed. Fed with :meth:`put_data` and
    :meth:`put_eof`, like the memory stream it wraps.
    """

    def __init__(self) -> None:
        import trio.testing  # (see the imports above)

        self._inner = trio.testing.MemoryReceiveStream()
        self._unread = 0
        self._eof = False

    def put_data(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.put_data(data)
        self._unread += len(data)

    def put_eof(self) -> None:
        self._inner.put_eof()
        self._eof = True

    def is_readable(self) -> bool:
        return self._eof or self._unread > 0

    async def receive_some(self, max_bytes: int | None = None) -> bytearray:
        data = await self._inner.receive_some(max_bytes)
        self._unread -= len(data)
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


def _one_way_pair() -> tuple[trio.testing.MemorySendStream, _ReceiveBuffer]:
    """``trio.testing.memory_stream_one_way_pair`` with a :class:`_ReceiveBuffer`."""
    import trio.testing  # (see the imports above)

    send = trio.testing.MemorySendStream()
    receive = _ReceiveBuffer()

    def pump() -> None:
        try:
            data = send.get_data_nowait()
        except trio.WouldBlock:
            return
        try:
            if data:
                receive.put_data(data)
            else:
                receive.put_eof()
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("connection reset: the peer closed it") from None

    async def async_pump() -> None:
        pump()

    send.send_all_hook = async_pump
    send.close_hook = pump
    return send, receive


def _memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A connected pair of in-memory streams, like ``trio.testing.memory_stream_pair``."""
    a_send, b_receive = _one_way_pair()
    b_send, a_receive = _one_way_pair()
    return trio.StapledStream(a_send, a_receive), trio.StapledStream(b_send, b_receive)


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener of a :class:`MemoryNetwork`, bound to :attr:`address`.

    Dialed connections wait in a backlog of :attr:`MemoryNetwork.BACKLOG` until
    accepted. Closing it unregisters the address, ends pending accepts with
    ``trio.ClosedResourceError`` and hangs up the connections still in the backlog.
    """

    def __init__(self, network: MemoryNetwork, address: tuple[str, int], backlog: int) -> None:
        self.address = address
        self._network = network
        self._closed = False
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](backlog)

    async def accept(self) -> trio.abc.Stream:
        """The server end of the next connection; ``trio.ClosedResourceError`` once closed."""
        return await self._receive.receive()

    async def aclose(self) -> None:
        """Stop listening (idempotent)."""
        self._closed = True
        self._network._unregister(self)
        unaccepted: list[trio.abc.Stream] = []
        while True:
            try:
                unaccepted.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError):
                break
        self._receive.close()
        self._send.close()
        await _close_all(*unaccepted)
        await trio.lowlevel.checkpoint()

    async def _enqueue(self, stream: trio.abc.Stream) -> None:
        """Put a server end in the backlog, waiting for room.

        Raises ``trio.ClosedResourceError`` if the listener closes first (the drain in
        :meth:`aclose` lets a waiting dial in; it must not count as accepted).
        """
        await self._send.send(stream)
        if self._closed:
            raise trio.ClosedResourceError("the listener closed")


class MemoryNetwork:
    """An in-process network: listeners by ``(host, port)``, connections of memory streams.

    Hosts are any strings and only exact ``(host, port)`` matches connect. Port 0 takes
    the next unused port of that host, from 40000 up. Dialing an address nobody listens
    on is refused at once; dialing a listener whose backlog is full waits (like a TCP
    SYN that is not answered) until the connect timeout.
    """

    FIRST_PORT = 40000  # port 0 allocates from here, like an ephemeral range
    BACKLOG = 128  # connections dialed but not yet accepted, per listener (as listen(2))

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], MemoryListener] = {}
        self._next_port: dict[str, int] = {}

    async def open_listeners(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """One :class:`MemoryListener` on ``(host, port)``.

        Raises :class:`OSError` ``EADDRINUSE`` if that address is taken, and
        ``EADDRNOTAVAIL`` if port 0 finds no free port left.
        """
        await trio.lowlevel.checkpoint()
        host = host.lower()  # host names are case-insensitive (and httpx lowercases them)
        if not 0 <= port <= 65535:
            raise OSError(errno.EINVAL, f"port must be 0-65535, not {port}")
        if port == 0:
            port = self._free_port(host)
        elif (host, port) in self._listeners:
            raise OSError(errno.EADDRINUSE, f"address already in use: {host}:{port}")
        listener = MemoryListener(self, (host, port), self.BACKLOG)
        self._listeners[host, port] = listener
        return [listener]

    def client_backend(self) -> httpcore.AsyncNetworkBackend:
        """Dials with :meth:`connect`; ``local_address`` names the dialing host and
        socket options are ignored."""

        async def dial(
            host: str,
            port: int,
            local_address: str | None,
            socket_options: Iterable[httpcore.SOCKET_OPTION],
        ) -> trio.abc.Stream:
            return await self.connect(host, port, src_host=local_address)

        return _Backend(dial)

    def listener_address(self, listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
        """The listener's :attr:`MemoryListener.address`; :class:`TypeError` for others."""
        listener = _listener_under_tls(listener)
        if not isinstance(listener, MemoryListener):
            raise TypeError(f"not a memory listener: {listener!r}")
        return listener.address

    async def connect(
        self, host: str, port: int, *, src_host: str | None = None
    ) -> trio.abc.Stream:
        """Dial ``(host, port)`` and return the client end of a new connection.

        Raises :class:`ConnectionRefusedError` (an :class:`OSError`, as a closed TCP port
        gives) when nobody listens there, or the listener closes while we wait for room
        in its backlog.
        """
        await trio.lowlevel.checkpoint()
        refused = ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused: {host}:{port}")
        listener = self._listeners.get((host.lower(), port))
        if listener is None:
            raise refused
        client, server = self._make_pair(src_host, (host, port))
        try:
            await listener._enqueue(server)
        except BaseException as exc:
            await _close_all(client, server)
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise refused from exc
            raise
        return client

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        """Make the ``(client end, server end)`` of a connection from ``src_host`` to ``dst``.

        The seam for simulators: override it to add latency, loss or bandwidth limits,
        or to refuse. Each end here is a ``trio.StapledStream`` of a
        ``trio.testing.MemorySendStream``, whose ``send_all_hook`` and ``close_hook``
        deliver at once to the other end's receive stream (its ``put_data`` and
        ``put_eof``), as ``trio.testing.memory_stream_one_way_pair`` does; an override
        may call this and rewire those hooks.
        """
        return _memory_pair()

    def _free_port(self, host: str) -> int:
        port = self._next_port.get(host, self.FIRST_PORT)
        while (host, port) in self._listeners:
            port += 1
        if port > 65535:
            raise OSError(errno.EADDRNOTAVAIL, f"no free port left on {host}")
        self._next_port[host] = port + 1
        return port

    def _unregister(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]
