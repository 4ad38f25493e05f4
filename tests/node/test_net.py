"""The network seam: one h11 server and one httpx client, over real TCP and in memory."""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import httpcore
import httpx
import pytest
import trio
import trio.testing

from node._net import MemoryListener, MemoryNetwork, Network, TcpNetwork, make_transport

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
MiB = 1024 * 1024


# -- a tiny h11 server ---------------------------------------------------------------------


def out(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None
    return data


async def receive_request(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body, or None when the client hangs up."""
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        else:
            assert isinstance(event, h11.ConnectionClosed), event
            return None


class EchoServer:
    """Answers each request with ``<method> <target>\\n<body>``; counts what it sees.

    With ``hang_up_when_idle`` it closes each connection after one response (without
    saying ``Connection: close``), then sets ``hung_up``.
    """

    def __init__(self, *, hang_up_when_idle: bool = False) -> None:
        self.connections = 0
        self.requests = 0
        self.hang_up_when_idle = hang_up_when_idle
        self.hung_up = trio.Event()

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while (received := await receive_request(conn, stream)) is not None:
                    request, body = received
                    self.requests += 1
                    answer = request.method + b" " + request.target + b"\n" + body
                    head = h11.Response(
                        status_code=200, headers=[("content-length", str(len(answer)))]
                    )
                    await stream.send_all(
                        out(conn, head)
                        + out(conn, h11.Data(data=answer))
                        + out(conn, h11.EndOfMessage())
                    )
                    if self.hang_up_when_idle or conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
            except trio.BrokenResourceError:
                return  # the client went away mid-response
        if self.hang_up_when_idle:
            self.hung_up.set()


async def read_head(stream: trio.abc.Stream) -> None:
    """Read until the end of a request head (for servers that misbehave by hand)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, "client hung up"
        data += chunk


@asynccontextmanager
async def serving(network: Network, host: str, handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on ``host`` (a free port) while the block runs; yields the base URL."""
    async with trio.open_nursery() as nursery:
        listeners = await network.open_listeners(host, 0)
        await nursery.start(trio.serve_listeners, handler, listeners)
        host, port = network.listener_address(listeners[0])
        yield f"http://{host}:{port}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_for(
    network: Network, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    transport = make_transport(network, ssl_context=ssl_context)
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


# -- both networks -------------------------------------------------------------------------


@dataclass
class Net:
    network: Network
    host: str


@pytest.fixture(params=["tcp", "memory"])
def net(request: pytest.FixtureRequest) -> Net:
    if request.param == "tcp":
        return Net(TcpNetwork(), "127.0.0.1")
    return Net(MemoryNetwork(), "n1")


async def test_get_and_post(net: Net) -> None:
    server = EchoServer()
    big = bytes(range(256)) * (MiB // 256)
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        got = await c.get(f"{url}/hello?x=1")
        assert (got.status_code, got.content) == (200, b"GET /hello?x=1\n")
        posted = await c.post(f"{url}/small", content=b"abc")
        assert posted.content == b"POST /small\nabc"
        posted = await c.post(f"{url}/big", content=big)
        assert posted.content == b"POST /big\n" + big


async def test_keep_alive_reuses_the_connection(net: Net) -> None:
    server = EchoServer()
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        for i in range(3):
            assert (await c.get(f"{url}/{i}")).content == f"GET /{i}\n".encode()
    assert (server.connections, server.requests) == (1, 3)


async def test_concurrent_requests(net: Net) -> None:
    server = EchoServer()
    answers: dict[int, bytes] = {}
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:

        async def fetch(i: int) -> None:
            response = await c.post(f"{url}/{i}", content=b"x" * i)
            response.raise_for_status()
            answers[i] = response.content

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(fetch, i)
    assert answers == {i: f"POST /{i}\n".encode() + b"x" * i for i in range(20)}
    assert server.requests == 20
    assert server.connections <= 16  # the pool's max_connections


async def test_connection_closed_by_the_server_is_not_reused(net: Net) -> None:
    # The adapter reports "is_readable" so httpcore drops a kept-alive connection that
    # the server has closed instead of sending the next request into it.
    server = EchoServer(hang_up_when_idle=True)
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        assert (await c.get(f"{url}/1")).status_code == 200
        await server.hung_up.wait()
        assert (await c.get(f"{url}/2")).status_code == 200
    assert server.connections == 2


async def test_server_hanging_up_mid_response(net: Net) -> None:
    async def half_response(stream: trio.abc.Stream) -> None:
        async with stream:
            await read_head(stream)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    async with serving(net.network, net.host, half_response) as url, client_for(net.network) as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await c.get(url)


async def test_response_closed_before_its_end(net: Net) -> None:
    server = EchoServer()
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        async with c.stream("POST", f"{url}/big", content=b"y" * MiB) as response:
            assert response.status_code == 200  # and the body is left unread
        assert (await c.get(f"{url}/after")).content == b"GET /after\n"
    assert server.connections == 2  # the half-read connection could not be reused


async def test_tls(net: Net, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    server = EchoServer()
    async with trio.open_nursery() as nursery:
        listeners = [
            trio.SSLListener(listener, server_context, https_compatible=True)
            for listener in await net.network.open_listeners(net.host, 0)
        ]
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        host, port = net.network.listener_address(listeners[0])
        url = f"https://{host}:{port}/secret"
        async with (
            client_for(net.network, ssl_context=client_context) as c,
            c.stream("GET", url) as response,
        ):
            await response.aread()
            assert response.content == b"GET /secret\n"
            stream = response.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object").version().startswith("TLS")
        nursery.cancel_scope.cancel()


async def test_tls_to_a_plain_server_fails_to_connect(net: Net) -> None:
    async def plain(stream: trio.abc.Stream) -> None:
        async with stream:
            await stream.receive_some()
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    async with serving(net.network, net.host, plain) as url:
        https = url.replace("http://", "https://")
        async with client_for(net.network) as c:
            with pytest.raises(httpx.ConnectError, match="TLS handshake failed"):
                await c.get(https)


async def test_raw_stream_extra_info(net: Net) -> None:
    go, hung_up = trio.Event(), trio.Event()

    async def hang_up(stream: trio.abc.Stream) -> None:
        await go.wait()
        await stream.aclose()
        hung_up.set()

    async with serving(net.network, net.host, hang_up) as url:
        port = httpx.URL(url).port
        assert port is not None
        stream = await net.network.client_backend().connect_tcp(net.host, port)
        try:
            assert stream.get_extra_info("is_readable") is False
            assert stream.get_extra_info("ssl_object") is None
            assert stream.get_extra_info("no such key") is None
            if isinstance(net.network, TcpNetwork):
                assert stream.get_extra_info("socket") is not None
                assert stream.get_extra_info("server_addr") == (net.host, port)
                assert stream.get_extra_info("client_addr")[0] == net.host
            else:
                assert stream.get_extra_info("socket") is None
                assert stream.get_extra_info("server_addr") is None
            go.set()
            await hung_up.wait()
            assert stream.get_extra_info("is_readable") is True
            assert await stream.read(100) == b""
        finally:
            await stream.aclose()


async def test_listener_address_of_a_foreign_listener(net: Net) -> None:
    other: Network = MemoryNetwork() if isinstance(net.network, TcpNetwork) else TcpNetwork()
    listeners = await other.open_listeners("127.0.0.1", 0)
    try:
        with pytest.raises(TypeError, match="not a"):
            net.network.listener_address(listeners[0])
    finally:
        for listener in listeners:
            await listener.aclose()


# -- the memory network --------------------------------------------------------------------


async def test_memory_connect_to_nobody_is_refused() -> None:
    async with client_for(MemoryNetwork()) as c:
        with pytest.raises(httpx.ConnectError, match="connection refused: nowhere:80"):
            await c.get("http://nowhere/")


async def test_memory_closed_listener() -> None:
    network = MemoryNetwork()
    backend = network.client_backend()
    [waiting, queued] = [(await network.open_listeners("n1", 0))[0] for _ in range(2)]

    async def accept_in_vain() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await waiting.accept()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_in_vain)
        await trio.testing.wait_all_tasks_blocked()
        await waiting.aclose()

    # A connection dialed but never accepted is hung up; later dials are refused.
    stream = await backend.connect_tcp("n1", 40001)
    await queued.aclose()
    await queued.aclose()  # idempotent
    assert await stream.read(10) == b""
    await stream.aclose()
    with pytest.raises(httpcore.ConnectError, match="connection refused: n1:40001"):
        await backend.connect_tcp("n1", 40001)
    with pytest.raises(trio.ClosedResourceError):
        await queued.accept()

    # The address is free again.
    [again] = await network.open_listeners("n1", 40001)
    await again.aclose()


async def test_memory_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def never_answer(stream: trio.abc.Stream) -> None:
        async with stream:
            await read_head(stream)
            await trio.sleep_forever()

    network = MemoryNetwork()
    async with serving(network, "n1", never_answer) as url, client_for(network) as c:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout, match="no data within 5"):
            await c.get(url, timeout=5)
        assert trio.current_time() - start == pytest.approx(5)


async def test_memory_tls_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def silent(stream: trio.abc.Stream) -> None:
        async with stream:
            await trio.sleep_forever()

    network = MemoryNetwork()
    async with serving(network, "n1", silent) as url, client_for(network) as c:
        with pytest.raises(httpx.ConnectTimeout, match="no TLS handshake within 3"):
            await c.get(url.replace("http://", "https://"), timeout=3)


async def test_cancelled_tls_handshake_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    [listener] = await network.open_listeners("n1", 0)
    stream = await network.client_backend().connect_tcp("n1", 40000)
    with trio.move_on_after(1) as scope:
        await stream.start_tls(ssl.create_default_context(), server_hostname="n1")
    assert scope.cancelled_caught
    with pytest.raises(httpcore.ReadError, match="ClosedResourceError"):
        await stream.read(10)
    await listener.aclose()


class SmallBacklog(MemoryNetwork):
    BACKLOG = 1


async def test_memory_full_backlog_waits_until_the_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SmallBacklog()
    [listener] = await network.open_listeners("n1", 0)
    backend = network.client_backend()
    first = await backend.connect_tcp("n1", 40000)
    with pytest.raises(httpcore.ConnectTimeout, match="no connection to n1:40000 within 2"):
        await backend.connect_tcp("n1", 40000, timeout=2)
    await first.aclose()
    await listener.aclose()


async def test_memory_listener_closed_while_a_dial_waits_for_room() -> None:
    network = SmallBacklog()
    [listener] = await network.open_listeners("n1", 0)
    backend = network.client_backend()
    first = await backend.connect_tcp("n1", 40000)

    async def dial_in_vain() -> None:
        with pytest.raises(httpcore.ConnectError, match="connection refused"):
            await backend.connect_tcp("n1", 40000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial_in_vain)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()
    await first.aclose()


async def test_memory_ports() -> None:
    network = MemoryNetwork()

    async def listen(host: str, port: int) -> MemoryListener:
        [listener] = await network.open_listeners(host, port)
        assert isinstance(listener, MemoryListener)
        return listener

    first, second, elsewhere = await listen("n1", 0), await listen("n1", 0), await listen("n2", 0)
    assert [first.address, second.address] == [("n1", 40000), ("n1", 40001)]
    assert elsewhere.address == ("n2", 40000)
    taken = await listen("n1", 40002)
    assert (await listen("n1", 0)).address == ("n1", 40003)  # skips the taken port
    with pytest.raises(OSError, match="address already in use: n1:40000") as info:
        await listen("n1", 40000)
    assert info.value.errno == errno.EADDRINUSE
    await taken.aclose()
    assert network.listener_address(await listen("n1", 40002)) == ("n1", 40002)
    for bad in (-1, 65536):
        with pytest.raises(OSError, match="port must be 0-65535") as info:
            await listen("n1", bad)
        assert info.value.errno == errno.EINVAL


async def test_memory_ports_run_out() -> None:
    class Crowded(MemoryNetwork):
        FIRST_PORT = 65535

    network = Crowded()
    [last] = await network.open_listeners("n1", 0)
    assert network.listener_address(last) == ("n1", 65535)
    with pytest.raises(OSError, match="no free port left on n1") as info:
        await network.open_listeners("n1", 0)
    assert info.value.errno == errno.EADDRNOTAVAIL


class CountingNetwork(MemoryNetwork):
    """A simulator's seam: every connection is made by ``_make_pair``."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str | None, tuple[str, int]]] = []

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        self.pairs.append((src_host, dst))
        return super()._make_pair(src_host, dst)


async def test_memory_make_pair_is_the_seam() -> None:
    network = CountingNetwork()
    server = EchoServer()
    async with serving(network, "n1", server.handle) as url, client_for(network) as c:
        for _ in range(3):
            assert (await c.get(url)).status_code == 200
        assert network.pairs == [(None, ("n1", 40000))]
        stream = await network.client_backend().connect_tcp("n1", 40000, local_address="n2")
        await stream.aclose()
    assert network.pairs[1] == ("n2", ("n1", 40000))


class LockstepNetwork(MemoryNetwork):
    """Connections without buffers: a send waits until the peer receives."""

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return trio.testing.lockstep_stream_pair()


class SelfAware(trio.abc.Stream):
    """A stream of the kind a simulator may make: it says itself whether it is readable."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.readable = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def is_readable(self) -> bool:
        return self.readable


class SelfAwareNetwork(MemoryNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.made: list[SelfAware] = []

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.memory_stream_pair()
        self.made.append(SelfAware(client))
        return self.made[-1], server


async def test_streams_that_know_whether_they_are_readable() -> None:
    network = SelfAwareNetwork()
    [listener] = await network.open_listeners("n1", 0)
    stream = await network.client_backend().connect_tcp("n1", 40000)
    assert stream.get_extra_info("is_readable") is False
    network.made[0].readable = True
    assert stream.get_extra_info("is_readable") is True
    await stream.aclose()
    await listener.aclose()


async def test_stream_errors(autojump_clock: trio.testing.MockClock) -> None:
    network = LockstepNetwork()
    [listener] = await network.open_listeners("n1", 0)
    stream = await network.client_backend().connect_tcp("n1", 40000)
    assert stream.get_extra_info("is_readable") is None  # a lockstep stream cannot tell
    await stream.write(b"")  # nothing to send: no wait
    with pytest.raises(httpcore.WriteTimeout, match="could not send within 1"):
        await stream.write(b"x", timeout=1)
    with pytest.raises(httpcore.ReadTimeout, match="no data within 1"):
        await stream.read(10, timeout=1)
    await stream.aclose()
    with pytest.raises(httpcore.ReadError, match="ClosedResourceError"):
        await stream.read(10)
    with pytest.raises(httpcore.WriteError, match="ClosedResourceError"):
        await stream.write(b"x")
    await listener.aclose()


async def test_memory_peer_gone_on_write() -> None:
    network = MemoryNetwork()
    [listener] = await network.open_listeners("n1", 0)
    stream = await network.client_backend().connect_tcp("n1", 40000)
    server = await listener.accept()
    await server.send_all(b"")  # sends nothing
    assert stream.get_extra_info("is_readable") is False
    await server.aclose()
    with pytest.raises(httpcore.WriteError, match="connection reset"):
        await stream.write(b"hello")
    await stream.aclose()
    await listener.aclose()


async def test_backend_odds_and_ends(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryNetwork().client_backend()
    with pytest.raises(httpcore.ConnectError, match="not supported"):
        await backend.connect_unix_socket("/run/ptth.sock")
    start = trio.current_time()
    await backend.sleep(7)
    assert trio.current_time() - start == 7


async def test_transport_wants_an_async_request() -> None:
    async with make_transport(MemoryNetwork()) as transport:
        request = httpx.Request("POST", "http://n1/", content=iter([b"sync"]))
        with pytest.raises(TypeError, match="async body"):
            await transport.handle_async_request(request)


# -- httpcore errors become httpx errors -----------------------------------------------------


def httpcore_errors() -> list[type[Exception]]:
    """Every public httpcore exception but ConnectionNotAvailable (the pool's own retry)."""
    found = [getattr(httpcore, name) for name in httpcore.__all__]
    return [
        cls
        for cls in found
        if isinstance(cls, type)
        and issubclass(cls, Exception)
        and cls is not httpcore.ConnectionNotAvailable
    ]


class FailingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        raise self.error


class FailingNetwork(MemoryNetwork):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def client_backend(self) -> httpcore.AsyncNetworkBackend:
        return FailingBackend(self.error)


def test_every_httpcore_error_is_mapped() -> None:
    assert len(httpcore_errors()) == 14


@pytest.mark.parametrize("error", httpcore_errors(), ids=lambda cls: cls.__name__)
async def test_httpcore_error_becomes_the_httpx_error_of_the_same_name(
    error: type[Exception],
) -> None:
    async with client_for(FailingNetwork(error("it broke"))) as c:
        with pytest.raises(httpx.HTTPError) as info:
            await c.get("http://n1/")
    assert type(info.value) is getattr(httpx, error.__name__)
    assert str(info.value) == "it broke"
    assert isinstance(info.value.__cause__, error)
    assert info.value.request.url == "http://n1/"


async def test_other_errors_pass_through() -> None:
    async with client_for(FailingNetwork(ValueError("ours"))) as c:
        with pytest.raises(ValueError, match="ours"):
            await c.get("http://n1/")


# -- real TCP ------------------------------------------------------------------------------


async def test_tcp_port_zero_gets_a_real_port() -> None:
    network = TcpNetwork()
    listeners = await network.open_listeners("127.0.0.1", 0)
    try:
        host, port = network.listener_address(listeners[0])
        assert host == "127.0.0.1"
        assert 0 < port < 65536
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_tcp_closed_port_is_refused() -> None:
    network = TcpNetwork()
    listeners = await network.open_listeners("127.0.0.1", 0)
    _, port = network.listener_address(listeners[0])
    for listener in listeners:
        await listener.aclose()
    async with client_for(network) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_tcp_address_in_use() -> None:
    network = TcpNetwork()
    listeners = await network.open_listeners("127.0.0.1", 0)
    try:
        _, port = network.listener_address(listeners[0])
        with pytest.raises(OSError, match="in use") as info:
            await network.open_listeners("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_tcp_socket_options() -> None:
    network = TcpNetwork()
    backend = network.client_backend()
    server = EchoServer()
    async with serving(network, "127.0.0.1", server.handle) as url:
        port = httpx.URL(url).port
        assert port is not None
        options: list[httpcore.SOCKET_OPTION] = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.SOL_SOCKET, socket.SO_RCVBUF, (65536).to_bytes(4, "little")),
        ]
        stream = await backend.connect_tcp("127.0.0.1", port, socket_options=options)
        try:
            raw = stream.get_extra_info("socket")
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            await stream.aclose()
        # (level, option, None, length) passes a NULL value: the kernel refuses it.
        bad: list[httpcore.SOCKET_OPTION] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, None, 4)]
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("127.0.0.1", port, socket_options=bad)


# -- helpers -------------------------------------------------------------------------------


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts around a fresh self-signed certificate for n1 and 127.0.0.1."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ptth test")])
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("n1"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client
