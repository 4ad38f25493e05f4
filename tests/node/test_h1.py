"""The frames client (node/_h1.py): h11 over the network seam, pooled as httpcore pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import httpcore
import pytest
import trio
import trio.testing

from node._h1 import MAX_ANSWER, H1Client
from node._net import MemoryNetwork, Network
from tests.node.test_net import (
    EchoServer,
    Net,
    net,
    out,
    read_head,
    receive_request,
    serving,
    tls_contexts,
)

__all__ = ["net"]  # the fixture, shared with test_net.py


@asynccontextmanager
async def client_for(network: Network, **options: object) -> AsyncIterator[H1Client]:
    settings: dict[str, object] = {
        "connect_timeout": 10.0,
        "read_timeout": 30.0,
        "write_timeout": 30.0,
        "pool_timeout": 30.0,
        **options,
    }
    async with H1Client(network.client_backend(), **settings) as client:  # type: ignore[arg-type]
        yield client


class HeadServer:
    """Answers each request with its head: ``Host`` and ``Content-Length`` as seen."""

    def __init__(self) -> None:
        self.heads: list[dict[bytes, bytes]] = []

    async def handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while (received := await receive_request(conn, stream)) is not None:
                request, _ = received
                self.heads.append(dict(request.headers))
                head = h11.Response(
                    status_code=201,
                    headers=[("content-length", "2"), ("X-Answer", "yes"), ("x-answer", "no")],
                )
                await stream.send_all(
                    out(conn, head)
                    + out(conn, h11.Data(data=b"ok"))
                    + out(conn, h11.EndOfMessage())
                )
                conn.start_next_cycle()


async def test_a_post_and_its_answer_and_the_connection_kept(net: Net) -> None:
    server = EchoServer()
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        for i in range(3):
            answer = await c.post(f"{url}/frames/{i}", [("content-type", "x/y")], b"abc")
            assert (answer.status, answer.body) == (200, f"POST /frames/{i}\nabc".encode())
            assert answer.header("content-length") == str(len(answer.body))
    assert (server.connections, server.requests, c.dials) == (1, 3, 1)


async def test_the_head_is_what_httpx_would_send() -> None:
    network = MemoryNetwork()
    server = HeadServer()
    async with trio.open_nursery() as nursery, client_for(network) as c:
        for port in (8470, 80):
            listeners = await network.open_listeners("n1", port)
            await nursery.start(trio.serve_listeners, server.handle, listeners)
        answer = await c.post("http://n1:8470/p?q=1", [("signature", "s")], b"12345")
        await c.post("http://N1:80/default-port", [], b"")
        nursery.cancel_scope.cancel()
    assert answer.status == 201
    assert answer.headers[-2:] == [("x-answer", "yes"), ("x-answer", "no")]  # lower case
    assert answer.header("x-answer") == "yes"
    first, second = server.heads
    assert first[b"host"] == b"n1:8470"
    assert (first[b"content-length"], first[b"signature"]) == (b"5", b"s")
    assert second[b"host"] == b"n1"  # the default port left out, the host lower case


async def test_a_connection_the_server_closed_is_not_reused(net: Net) -> None:
    server = EchoServer(hang_up_when_idle=True)
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        assert (await c.post(f"{url}/1", [], b"")).status == 200
        await server.hung_up.wait()
        assert (await c.post(f"{url}/2", [], b"")).status == 200
    assert (server.connections, c.dials) == (2, 2)


async def test_connection_close_is_honoured(net: Net) -> None:
    server = EchoServer()
    async with serving(net.network, net.host, server.handle) as url, client_for(net.network) as c:
        for _ in range(2):
            # Sent by the client, so the server closes after answering.
            answer = await c.post(f"{url}/x", [("connection", "close")], b"")
            assert answer.status == 200
    assert (server.connections, c.dials) == (2, 2)
    assert c.pool.connections == []


async def test_nobody_listening_is_a_connect_error(net: Net) -> None:
    async with client_for(net.network) as c:
        with pytest.raises(httpcore.ConnectError):
            await c.post(f"http://{net.host}:1/frames", [], b"")
    assert c.pool.connections == []


async def test_a_server_that_hangs_up_without_answering(net: Net) -> None:
    async def rude(stream: trio.abc.Stream) -> None:
        async with stream:
            await read_head(stream)

    async with serving(net.network, net.host, rude) as url, client_for(net.network) as c:
        with pytest.raises(httpcore.RemoteProtocolError, match="without sending a response"):
            await c.post(url, [], b"")
        assert c.pool.connections == []


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SMTP ready\r\n\r\n", "status line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
            "without sending complete message body",
        ),
    ],
)
async def test_a_broken_answer_is_a_protocol_error(net: Net, answer: bytes, words: str) -> None:
    async def broken(stream: trio.abc.Stream) -> None:
        async with stream:
            await read_head(stream)
            await stream.send_all(answer)

    async with serving(net.network, net.host, broken) as url, client_for(net.network) as c:
        with pytest.raises(httpcore.RemoteProtocolError, match=words):
            await c.post(url, [], b"")
        assert c.pool.connections == []


async def test_an_answer_too_large_is_refused_and_its_connection_closed(net: Net) -> None:
    sent = trio.Event()

    async def flood(stream: trio.abc.Stream) -> None:
        async with stream:
            await read_head(stream)
            size = MAX_ANSWER + 1
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
            try:
                await stream.send_all(head + b"x" * size)
            except trio.BrokenResourceError:
                pass
            sent.set()

    async with serving(net.network, net.host, flood) as url, client_for(net.network) as c:
        with pytest.raises(httpcore.RemoteProtocolError, match=f"more than {MAX_ANSWER} bytes"):
            await c.post(url, [], b"")
        assert c.pool.connections == []


class _RefusingStream(httpcore.AsyncNetworkStream):
    """A server that answered from the head and hung up: writes fail, its answer waits."""

    def __init__(self) -> None:
        self.answer = (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\ngo away"
        )

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        await trio.lowlevel.checkpoint()
        data, self.answer = self.answer[:max_bytes], self.answer[max_bytes:]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await trio.lowlevel.checkpoint()
        raise httpcore.WriteError("connection reset by peer")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _RefusingBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        await trio.lowlevel.checkpoint()
        return _RefusingStream()


async def test_an_answer_from_the_head_is_read_though_the_body_was_refused() -> None:
    # A server that refuses from the head and hangs up without reading the body: the
    # write fails, and its answer is what the client reports, as with httpcore.
    async with H1Client(
        _RefusingBackend(),
        connect_timeout=10.0,
        read_timeout=30.0,
        write_timeout=30.0,
        pool_timeout=30.0,
    ) as c:
        answer = await c.post("http://n1:8470/ptth/v1/frames", [], b"x" * 1000)
        assert (answer.status, answer.words) == (403, "go away")
        assert c.pool.connections == []  # Connection: close


async def test_a_silent_server_is_a_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()

    async def silent(stream: trio.abc.Stream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with serving(network, "n1", silent) as url, client_for(network, read_timeout=7.0) as c:
        start = trio.current_time()
        with pytest.raises(httpcore.ReadTimeout):
            await c.post(url, [], b"")
        assert trio.current_time() - start == 7.0
        assert c.pool.connections == []


async def test_a_full_pool_waits_its_turn_then_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    release = trio.Event()

    async def slow(stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while await receive_request(conn, stream) is not None:
                await release.wait()
                head = h11.Response(status_code=200, headers=[("content-length", "0")])
                await stream.send_all(out(conn, head) + out(conn, h11.EndOfMessage()))
                conn.start_next_cycle()

    async with (
        serving(network, "n1", slow) as url,
        client_for(network, max_connections=1, pool_timeout=5.0) as c,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.post, url, [], b"")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            with pytest.raises(httpcore.PoolTimeout, match="within 5 s"):
                await c.post(url, [], b"")
            assert trio.current_time() - start == 5.0

            async def let_go() -> None:
                await trio.sleep(1)
                release.set()

            nursery.start_soon(let_go)
            assert (await c.post(url, [], b"")).status == 200  # took the freed connection
        assert c.dials == 1


async def test_an_idle_connection_expires_and_one_is_dialled_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server = EchoServer()
    async with (
        serving(network, "n1", server.handle) as url,
        client_for(network, keepalive=30.0) as c,
    ):
        await c.post(url, [], b"")
        await trio.sleep(29)
        await c.post(url, [], b"")
        assert c.dials == 1
        await trio.sleep(31)
        await c.post(url, [], b"")
        assert c.dials == 2
        assert len(c.pool.connections) == 1  # the expired one was closed


async def test_a_cancelled_post_closes_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    seen = 0

    async def slow_first(stream: trio.abc.Stream) -> None:
        nonlocal seen
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while await receive_request(conn, stream) is not None:
                seen += 1
                if seen == 1:
                    await trio.sleep(10)
                head = h11.Response(status_code=200, headers=[("content-length", "0")])
                await stream.send_all(out(conn, head) + out(conn, h11.EndOfMessage()))
                conn.start_next_cycle()

    async with serving(network, "n1", slow_first) as url, client_for(network) as c:
        with trio.move_on_after(1):
            await c.post(url, [], b"")
        assert c.pool.connections == []  # its answer would come on it later: not reused
        assert (await c.post(url, [], b"")).status == 200
        assert c.dials == 2


async def test_a_full_pool_closes_an_idle_connection_to_make_room(net: Net) -> None:
    first, second = EchoServer(), EchoServer()
    async with (
        serving(net.network, net.host, first.handle) as one,
        serving(net.network, net.host, second.handle) as two,
        client_for(net.network, max_connections=1) as c,
    ):
        await c.post(one, [], b"")
        await c.post(two, [], b"")
        await c.post(one, [], b"")
    assert (first.connections, second.connections, c.dials) == (2, 1, 3)


async def test_https(net: Net, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    server = EchoServer()
    async with trio.open_nursery() as nursery:
        listeners = [
            trio.SSLListener(listener, server_context, https_compatible=True)
            for listener in await net.network.open_listeners(net.host, 0)
        ]
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        host, port = net.network.listener_address(listeners[0])
        async with client_for(net.network, ssl_context=client_context) as c:
            for _ in range(2):
                answer = await c.post(f"https://{host}:{port}/secret", [], b"s")
                assert answer.body == b"POST /secret\ns"
            assert c.dials == 1
        async with client_for(net.network) as untrusting:
            with pytest.raises(httpcore.ConnectError, match="TLS handshake failed"):
                await untrusting.post(f"https://{host}:{port}/secret", [], b"s")
        nursery.cancel_scope.cancel()


async def test_what_is_not_an_http_url_is_refused() -> None:
    async with client_for(MemoryNetwork()) as c:
        for url in ("ftp://n1/x", "http:///x", "n1:8470/x"):
            with pytest.raises(httpcore.UnsupportedProtocol):
                await c.post(url, [], b"")
