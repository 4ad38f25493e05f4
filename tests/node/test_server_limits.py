"""The h11 server's defences against strangers (node._server): the admission hook, the
request-body budget, per-address connection caps, fair share when full, and pressure.

Each attack test also shows honest traffic flowing meanwhile or afterwards. Clients are
raw (:class:`tests.node.test_server.Client`), on memory streams whose server ends are
named like TCP peers (so that the server sees distinct addresses), or on real loopback
TCP from 127.0.0.2 / 127.0.0.3. Timeouts run on the autojump clock.
"""

from __future__ import annotations

import gc
import logging
import socket
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import pytest
import trio
import trio.testing

from node._net import MemoryNetwork
from node._server import (
    _LINGER_BYTES,
    Handler,
    Request,
    Response,
    Server,
    ServerConfig,
    _size,
    peer_name,
    source_address,
)
from tests.node.test_server import App, Client, guard

MIB = 1024 * 1024
ADDRESS = ("server", 80)


class Named(trio.abc.HalfCloseableStream):
    """A stream that tells the server who is on the other end (``peer_name``), and
    counts what the server reads from it."""

    def __init__(self, inner: trio.abc.Stream, peer_name: str) -> None:
        self.inner = inner
        self.peer_name = peer_name
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.inner.aclose()


class NamedNetwork(MemoryNetwork):
    """A memory network whose connections carry their source as a TCP-like peer name."""

    def __init__(self) -> None:
        super().__init__()
        self.ports = 40000
        self.server_ends: list[Named] = []

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = super()._make_pair(src_host, dst)
        self.ports += 1
        named = Named(server, f"{src_host or '192.0.2.1'}:{self.ports}")
        self.server_ends.append(named)
        return client, named


@dataclass
class Served:
    server: Server
    network: NamedNetwork

    async def connect(self, source: str = "192.0.2.1") -> Client:
        """A connection from ``source``, once the server has taken it (or refused it):
        connections are taken in the order they are made."""
        client = Client(await self.network.connect(*ADDRESS, src_host=source))
        await settle()
        return client


@asynccontextmanager
async def serving(
    app: Handler, config: ServerConfig | None = None, **kwargs: object
) -> AsyncIterator[Served]:
    network = NamedNetwork()
    listeners = await network.open_listeners(*ADDRESS)
    server = Server(app, config, **kwargs)  # type: ignore[arg-type]
    with guard():
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            yield Served(server, network)
            nursery.cancel_scope.cancel()


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def ok(client: Client, target: str = "/") -> None:
    await client.send("GET", target)
    answer = await client.response()
    assert answer.status == 200, answer


# -- the admission hook ----------------------------------------------------------------


@dataclass
class Gate:
    """An admission hook: a frames POST needs ``x-sender``; it is noted for the handler."""

    seen: list[Request]

    async def __call__(self, head: Request) -> Response | None:
        self.seen.append(head)
        if head.path != "/ptth/v1/frames":
            return None
        sender = head.header("x-sender")
        if sender is None:
            return Response.text(401, "frames need a signature")
        head.notes["sender"] = sender
        return None


async def test_admit_refuses_a_16_mib_post_from_its_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, gate = App(), Gate([])
    async with serving(app, admit=gate) as served:
        client = await served.connect()
        head = b"POST /ptth/v1/frames HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
            16 * MIB
        )
        await client.raw(head)
        answer = await client.response()  # the body was never sent
        assert answer.status == 401
        assert answer.body == b"frames need a signature\n"
        assert answer.headers["connection"] == "close"
        assert await client.closed()
        (end,) = served.network.server_ends
        assert end.received == len(head)  # not a byte of the body
        assert served.server.body_bytes_in_flight == 0
        assert served.server.peak_body_bytes_in_flight == 0
        # An honest sender meanwhile: admitted, and the handler sees what was noted.
        honest = await served.connect()
        await honest.send("POST", "/ptth/v1/frames", [("x-sender", "alice")], b"frames")
        assert (await honest.response()).status == 200
    assert [r.body for r in gate.seen] == [b"", b""]
    (request,) = app.seen
    assert (request.body, request.notes) == (b"frames", {"sender": "alice"})
    assert request.notes is gate.seen[1].notes


async def test_a_refused_client_that_sends_its_body_anyway_is_cut_after_a_linger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = App()
    async with serving(app, admit=Gate([])) as served:
        client = await served.connect()
        await client.raw(
            b"POST /ptth/v1/frames HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n"
        )
        assert (await client.response()).status == 401
        await client.stream.send_all(b"x" * 4 * MIB)  # what a client busy sending does
        assert await client.closed()
        await settle()
        (end,) = served.network.server_ends
        # Read only to be dropped, and at most a linger's worth.
        assert end.received <= 200 + _LINGER_BYTES + 64 * 1024
        assert served.server.active_connections == 0
    assert app.seen == []


async def test_admit_applies_to_a_relayed_connection_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, gate = App(), Gate([])
    client_end, server_end = trio.testing.memory_stream_pair()
    server = Server(app, admit=gate)
    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(server.serve_stream, server_end, peer="relay r", relayed=True)
            )
            client = Client(client_end)
            await client.send("POST", "/ptth/v1/frames", body=b"frames")
            assert (await client.response()).status == 401
            assert await client.closed()
    assert app.seen == []
    assert gate.seen[0].relayed


async def test_an_admit_hook_that_fails_is_a_500_and_a_close(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(head: Request) -> Response | None:
        raise RuntimeError("boom")

    app = App()
    with caplog.at_level(logging.ERROR, logger="ptth.server"):
        async with serving(app, admit=broken) as served:
            client = await served.connect()
            await client.send("POST", "/", body=b"x" * 100)
            answer = await client.response()
            assert (answer.status, answer.headers["connection"]) == (500, "close")
            assert await client.closed()
            assert served.server.body_bytes_in_flight == 0
    assert app.seen == []
    assert "admission failed on POST /" in caplog.text


# -- the request-body budget -----------------------------------------------------------


async def test_uploads_past_the_body_budget_are_refused_and_honest_ones_go_on() -> None:
    config = ServerConfig(max_body_size=256 * 1024, max_body_bytes_in_flight=1 * MIB)
    release = trio.Event()
    inside: list[int] = []

    async def slow(request: Request) -> Response:
        inside.append(len(request.body))
        await release.wait()
        return Response.text(200, "taken")

    app = App({"/upload": slow})
    statuses: list[int] = []
    refusals: list[str] = []
    answered = trio.Event()

    async with serving(app, config) as served:

        async def upload(i: int) -> None:
            client = await served.connect(f"192.0.2.{i + 1}")
            await client.send("POST", "/upload", body=bytes(256 * 1024))
            answer = await client.response()
            statuses.append(answer.status)
            if answer.status == 503:
                await client.aclose()
                assert answer.headers["retry-after"] == "1"
                assert answer.headers["connection"] == "close"
                refusals.append(answer.body.decode())
                assert served.server.body_bytes_in_flight <= config.max_body_bytes_in_flight
            if len(refusals) == 6:
                answered.set()

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(upload, i)
            await answered.wait()
            await settle()
            # Four bodies of 256 KiB fill the budget; their handlers hold them.
            assert inside == [256 * 1024] * 4
            assert served.server.body_bytes_in_flight == 1 * MIB
            release.set()
        assert sorted(statuses) == [200] * 4 + [503] * 6
        assert set(refusals) == {
            "server busy: 1 MiB of request bodies in memory (limit 1 MiB); retry shortly\n"
        }
        assert served.server.peak_body_bytes_in_flight == 1 * MIB
        assert served.server.body_bytes_in_flight == 0
        honest = await served.connect()
        await honest.send("POST", "/echo", body=b"after the storm")
        assert (await honest.response()).body == b"POST /echo b'after the storm'\n"


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


async def test_a_chunked_body_is_reserved_as_it_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(max_body_size=1000, max_body_bytes_in_flight=1000)
    release = trio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return Response.text(200, "held")

    app = App({"/hold": hold})
    async with serving(app, config) as served:
        holder = await served.connect()
        await holder.send("POST", "/hold", body=b"h" * 600)
        await settle()
        assert served.server.body_bytes_in_flight == 600
        client = await served.connect("192.0.2.7")
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.raw(chunked(b"a" * 300))
        await settle()
        assert served.server.body_bytes_in_flight == 900
        await client.raw(chunked(b"b" * 200))
        answer = await client.response()
        assert answer.status == 503
        assert answer.body == (
            b"server busy: 900 bytes of request bodies in memory (limit 1000 bytes); "
            b"retry shortly\n"
        )
        assert await client.closed()
        assert served.server.body_bytes_in_flight == 600  # the refused one's 300 released
        release.set()
        assert (await holder.response()).status == 200
        assert served.server.body_bytes_in_flight == 0
        assert served.server.peak_body_bytes_in_flight == 900


async def test_a_client_gone_mid_body_releases_its_reservation() -> None:
    async with serving(App()) as served:
        client = await served.connect()
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npart")
        await settle()
        assert served.server.body_bytes_in_flight == 100000
        await client.aclose()
        await settle()
        assert served.server.body_bytes_in_flight == 0
        assert served.server.active_connections == 0
        await ok(await served.connect())


async def test_an_idle_connection_does_not_keep_its_last_request() -> None:
    kept: list[weakref.ref[Request]] = []

    async def remember(request: Request) -> Response:
        kept.append(weakref.ref(request))
        return Response.text(200, "ok")

    async with serving(remember) as served:
        client = await served.connect()
        await client.send("POST", "/", body=bytes(100000))
        assert (await client.response()).status == 200
        await settle()  # the connection waits for its next request
        gc.collect()
        assert kept[0]() is None
        assert served.server.active_connections == 1
        await ok(client)


# -- per-address caps ------------------------------------------------------------------


async def test_a_flood_from_one_address_is_capped_and_others_are_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(max_connections=32, max_connections_per_address=4)

    async def trickle(client: Client) -> None:
        try:
            await client.raw(b"GET / HTTP/1.1\r\nX-Slow: ", method="GET")
            while True:
                await trio.sleep(1)
                await client.stream.send_all(b"z")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async with serving(App(), config) as served, trio.open_nursery() as attackers:
        flood = [await served.connect("192.0.2.66") for _ in range(10)]
        # Half say nothing; half trickle a head, a byte a second.
        for client in flood[1::2]:
            attackers.start_soon(trickle, client)
        await settle()
        assert served.server.connections_from("192.0.2.66") == 4
        assert served.server.open_connections == 4
        refused = flood[4:]
        for client in refused:
            answer = await client.response()
            assert answer.status == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.body == (
                b"too many connections from 192.0.2.66: 4 open (limit 4); retry shortly\n"
            )
            assert await client.closed()
        start = trio.current_time()
        honest = await served.connect("198.51.100.9")
        await ok(honest)
        assert trio.current_time() - start < 0.1  # no wait for any timeout
        assert served.server.connections_from("192.0.2.66") == 4
        attackers.cancel_scope.cancel()


async def test_ipv6_addresses_count_per_64() -> None:
    assert source_address("2001:db8:1:2:aaaa::1:443") == "2001:db8:1:2::/64"
    assert source_address("[2001:db8:1:2:bbbb::7]:443") == "2001:db8:1:2::/64"
    assert source_address("::ffff:192.0.2.1:80") == "192.0.2.1"
    assert source_address("192.0.2.1:4321") == "192.0.2.1"
    # No IP address: counted under the peer's own name, and not capped.
    assert source_address("memory") is None
    assert source_address("?") is None
    config = ServerConfig(max_connections_per_address=2)
    async with serving(App(), config) as served:
        first = await served.connect("2001:db8:1:2::1")
        second = await served.connect("2001:db8:1:2:ffff::9")
        third = await served.connect("2001:db8:1:2::3")
        answer = await third.response()
        assert answer.body == (
            b"too many connections from 2001:db8:1:2::/64: 2 open (limit 2); retry shortly\n"
        )
        other_site = await served.connect("2001:db8:1:3::1")
        for client in (first, second, other_site):
            await ok(client)


async def test_connections_without_an_ip_address_are_not_capped_per_address() -> None:
    # An in-process network names no addresses: all its peers are "memory".
    config = ServerConfig(max_connections=8, max_connections_per_address=2)
    network = MemoryNetwork()
    listeners = await network.open_listeners(*ADDRESS)
    server = Server(App(), config)
    with guard():
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            clients = [Client(await network.connect(*ADDRESS)) for _ in range(5)]
            for client in clients:
                await ok(client)
            assert server.connections_from("memory") == 5
            nursery.cancel_scope.cancel()


async def bound_socket(source: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    return sock


async def test_a_flood_over_real_tcp_is_capped_per_source_address() -> None:
    config = ServerConfig(max_connections=32, max_connections_per_address=4)
    server = Server(App(), config)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def connect(source: str) -> Client:
        sock = await bound_socket(source)
        await sock.connect(("127.0.0.1", port))
        return Client(trio.SocketStream(sock))

    with trio.fail_after(20):  # a bound on a hang, not a performance assertion
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            flood = []
            for _ in range(8):
                flood.append(await connect("127.0.0.2"))
                await settle()  # taken, or refused, in the order they came
            answers = []
            for client in flood[4:]:
                answers.append(await client.response())
            assert {a.body for a in answers} == {
                b"too many connections from 127.0.0.2: 4 open (limit 4); retry shortly\n"
            }
            honest = await connect("127.0.0.3")
            await honest.send("GET", "/", [("connection", "close")])
            answer = await honest.response()
            assert answer.status == 200
            assert server.connections_from("127.0.0.2") == 4
            for client in [*flood, honest]:
                await client.aclose()
            nursery.cancel_scope.cancel()


# -- fair share when full ----------------------------------------------------------------


async def test_when_full_a_newcomer_takes_the_slot_of_a_crowd_s_oldest_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(max_connections=4, busy_fraction=1.0)
    release = trio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return Response.text(200, "held")

    async with serving(App({"/hold": hold}), config) as served:
        crowd = [await served.connect("192.0.2.66") for _ in range(4)]
        await crowd[0].send("GET", "/hold")  # in the middle of a request: never closed
        await ok(crowd[1])  # idle since its answer
        await crowd[2].raw(b"GET / HTTP/1.1\r\nHost: x\r\n", method="GET")  # mid-head
        # crowd[3] has said nothing. Waiting longest: crowd[2] and crowd[3] (since they
        # connected), then crowd[1] (since its answer).
        # A newcomer from elsewhere: fair share is 4 // 2 = 2; the crowd holds 4.
        first = await served.connect("198.51.100.1")
        answer = await crowd[2].response()  # mid-head: told why
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.body == (
            b"server busy: 4 connections open, and this one was waiting for its request; "
            b"retry shortly\n"
        )
        await ok(first)
        second = await served.connect("198.51.100.1")
        assert await crowd[3].closed()  # idle: closed quietly
        await ok(second)
        # Now the newcomer's address has its fair share: a third is refused.
        third = await served.connect("198.51.100.1")
        refused = await third.response()
        assert refused.status == 503
        assert refused.body == b"server busy: 4 connections open; retry shortly\n"
        assert served.server.connections_from("192.0.2.66") == 2
        assert served.server.connections_from("198.51.100.1") == 2
        release.set()
        assert (await crowd[0].response()).status == 200
        await ok(crowd[1])


async def test_when_full_of_fair_shares_a_newcomer_is_refused() -> None:
    config = ServerConfig(max_connections=2, busy_fraction=1.0)
    async with serving(App(), config) as served:
        a = await served.connect("192.0.2.1")
        b = await served.connect("192.0.2.2")
        await ok(a)
        await ok(b)
        c = await served.connect("192.0.2.3")  # fair share 2 // 3 -> 1; each holds 1
        assert (await c.response()).status == 503
        await ok(a)
        await ok(b)


# -- pressure ----------------------------------------------------------------------------


async def test_pressure_shortens_idle_and_head_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(
        max_connections=8, idle_timeout=60, busy_idle_timeout=5, busy_header_timeout=3
    )
    release = trio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return Response.text(200, "held")

    async with serving(App({"/hold": hold}), config) as served:
        old = await served.connect("192.0.2.1")
        await ok(old)  # idle from 0 s
        await trio.sleep(10)  # the clock
        recent = await served.connect("192.0.2.2")
        await ok(recent)  # idle from 10 s
        await trio.sleep(2)
        onset = trio.current_time()
        holders = [await served.connect("192.0.2.3") for _ in range(2)]
        for holder in holders:
            await holder.send("GET", "/hold")
        assert not served.server.under_pressure
        # A fifth connection: four open of eight is pressure, and a connection idle
        # over 5 s is closed at once.
        slow = await served.connect("192.0.2.4")
        assert served.server.under_pressure
        assert await old.closed()
        assert trio.current_time() == onset
        # Under pressure a head gets 3 s, not 10.
        await slow.raw(b"GET / HTTP/1.1\r\n", method="GET")
        answer = await slow.response()
        assert answer.status == 408
        assert trio.current_time() - onset == pytest.approx(3)
        # ``recent`` was idle 2 s at the onset: it had 3 s more.
        assert await recent.closed()
        assert trio.current_time() - onset == pytest.approx(3)
        release.set()
        for holder in holders:
            assert (await holder.response()).status == 200
        # Pressure is over (two open); a new idle connection gets the full minute.
        assert not served.server.under_pressure
        calm = await served.connect("192.0.2.5")
        await ok(calm)
        begun = trio.current_time()
        assert await calm.closed()
        assert trio.current_time() - begun == pytest.approx(60)


async def test_a_relayed_connection_keeps_its_idle_timeout_under_pressure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(max_connections=2, idle_timeout=60)
    server = Server(App(), config)
    client_end, server_end = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def run() -> None:
        await server.serve_stream(server_end, peer="relay r", relayed=True)
        done.set()

    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            client = Client(client_end)
            await ok(client)
            assert server.under_pressure  # 1 of 2 open
            begun = trio.current_time()
            await done.wait()
            assert trio.current_time() - begun == pytest.approx(60)


# -- configuration and words -------------------------------------------------------------


def test_a_budget_below_the_body_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="could never be taken"):
        ServerConfig(max_body_size=100 * MIB)
    with pytest.raises(ValueError, match="busy_fraction"):
        ServerConfig(busy_fraction=0)
    with pytest.raises(ValueError, match="at least 1"):
        ServerConfig(max_connections_per_address=0)


def test_sizes_in_words() -> None:
    assert [_size(n) for n in (12, 2048, 1536, 62 * MIB, 64 * MIB, 3 * MIB // 2)] == [
        "12 bytes",
        "2 KiB",
        "1.5 KiB",
        "62 MiB",
        "64 MiB",
        "1.5 MiB",
    ]


async def test_the_peer_of_a_tls_connection_is_its_tcp_peer() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    dialled = await bound_socket("127.0.0.2")
    with listener, dialled:
        await dialled.connect(listener.getsockname())
        accepted, _ = await listener.accept()
        with accepted:
            tls = trio.SSLStream(trio.SocketStream(accepted), ssl.create_default_context())
            assert peer_name(tls).startswith("127.0.0.2:")
            assert source_address(peer_name(tls)) == "127.0.0.2"
