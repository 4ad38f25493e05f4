"""The h11 server (node._server): keep-alive, limits, timeouts, shutdown, upgrade.

Clients here are raw: bytes written to an in-memory stream and answers parsed with an
h11 client, so a test sees exactly what the server put on the wire (and when it hung
up). Timeouts run on the autojump clock; orderings are forced with events.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing

from node._net import MemoryNetwork
from node._server import PrefixedStream, Request, Response, Server, ServerConfig

Route = Callable[[Request], Awaitable[Response]]
ADDRESS = ("server", 80)


def guard() -> AbstractContextManager[trio.CancelScope]:
    """A bound on a whole test, so that a server bug fails it instead of hanging it:
    generous on the virtual clock, a few real seconds otherwise."""
    virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    return trio.fail_after(3600 if virtual else 10)


# -- a raw client --------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True  # the body ended with its end of message, not a hang-up


class Client:
    """HTTP/1.1 over one stream, parsed with h11; ``raw`` writes bytes as they are."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(
        self,
        method: str = "GET",
        target: str = "/",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        extra: bytes = b"",
    ) -> None:
        fields = [("host", "example.test"), *headers]
        if body:
            fields.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data + extra)

    async def raw(self, data: bytes, *, method: str = "POST") -> None:
        """Write ``data`` as is; h11 is told a request of ``method`` went out."""
        if self.conn.our_state is h11.IDLE:
            self.conn.send(
                h11.Request(
                    method=method,
                    target="/",
                    headers=[("host", "x"), ("transfer-encoding", "chunked")],
                )
            )
        await self.stream.send_all(data)

    async def _next(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def head(self) -> Answer:
        """The next response head (a 101 too); the body is left to :meth:`body`."""
        event = await self._next()
        assert isinstance(event, h11.Response | h11.InformationalResponse), event
        headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        return Answer(event.status_code, headers, b"", complete=False)

    async def chunk(self) -> bytes | None:
        """The next piece of the body; None at its end."""
        event = await self._next()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        assert isinstance(event, h11.EndOfMessage), event
        return None

    async def response(self) -> Answer:
        answer = await self.head()
        body = bytearray()
        try:
            while (piece := await self.chunk()) is not None:
                body += piece
        except h11.RemoteProtocolError:  # the server hung up mid-body
            answer.body = bytes(body)
            return answer
        answer.body, answer.complete = bytes(body), True
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return answer

    async def closed(self) -> bool:
        """Whether the server has hung up (reads what is left and finds the end)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True

    async def aclose(self) -> None:
        await self.stream.aclose()


# -- a server on a memory network ----------------------------------------------------


@dataclass
class App:
    """A tiny handler: routes by path, the default echoes the request."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Request] = field(default_factory=list)

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        route = self.routes.get(request.path)
        if route is not None:
            return await route(request)
        return Response.text(200, f"{request.method} {request.target} {request.body!r}")


@dataclass
class Served:
    server: Server
    network: MemoryNetwork
    done: trio.Event

    async def connect(self) -> Client:
        return Client(await self.network.connect(*ADDRESS))


@asynccontextmanager
async def serving(app: App, config: ServerConfig | None = None) -> AsyncIterator[Served]:
    network = MemoryNetwork()
    listeners = await network.open_listeners(*ADDRESS)
    server = Server(app, config)
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        await server.serve(listeners, task_status=task_status)
        done.set()

    with guard():
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            yield Served(server, network, done)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def on_stream(
    app: App, config: ServerConfig | None = None, **kwargs: object
) -> AsyncIterator[tuple[Client, Server, trio.Event]]:
    """``Server.serve_stream`` on one end of a memory stream pair; a client on the other."""
    client, server_end = trio.testing.memory_stream_pair()
    server = Server(app, config)
    done = trio.Event()

    async def run() -> None:
        await server.serve_stream(server_end, **kwargs)  # type: ignore[arg-type]
        done.set()

    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            yield Client(client), server, done
            nursery.cancel_scope.cancel()
    await client.aclose()


# -- keep-alive ----------------------------------------------------------------------


async def test_keep_alive_then_connection_close() -> None:
    app = App()
    async with serving(app) as served:
        client = await served.connect()
        await client.send("GET", "/one")
        first = await client.response()
        await client.send("POST", "/two", body=b"payload")
        second = await client.response()
        assert (first.status, first.body) == (200, b"GET /one b''\n")
        assert (second.status, second.body) == (200, b"POST /two b'payload'\n")
        assert "connection" not in first.headers
        assert first.headers["server"] == "ptth"
        assert first.headers["content-type"] == "text/plain; charset=utf-8"
        assert served.server.active_connections == 1
        await client.send("GET", "/three", [("connection", "close")])
        third = await client.response()
        assert third.status == 200
        assert third.headers["connection"] == "close"
        assert await client.closed()
        await client.aclose()
        assert served.server.requests_served == 3
        assert [r.target for r in app.seen] == ["/one", "/two", "/three"]


async def test_client_hanging_up_between_requests_is_fine() -> None:
    async with on_stream(App()) as (client, server, done):
        await client.send()
        assert (await client.response()).status == 200
        await client.stream.send_eof()  # type: ignore[attr-defined]
        await done.wait()
        assert server.active_connections == 0


async def test_client_hanging_up_mid_body() -> None:
    app = App()
    async with on_stream(app) as (client, _, done):
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        await client.stream.send_eof()  # type: ignore[attr-defined]
        await done.wait()
    assert app.seen == []


async def test_request_fields() -> None:
    app = App()
    async with serving(app) as served:
        client = await served.connect()
        headers = [("X-Thing", "a"), ("x-thing", "b"), ("Content-Type", "text/plain")]
        await client.send("PUT", "/path/here?q=1&r=2", headers, b"body")
        assert (await client.response()).status == 200
        await client.aclose()
    (request,) = app.seen
    assert (request.method, request.target, request.path, request.query) == (
        "PUT",
        "/path/here?q=1&r=2",
        "/path/here",
        "q=1&r=2",
    )
    assert ("x-thing", "a") in request.headers  # names are lowercase
    assert request.header("x-thing") == "a, b"
    assert request.header("content-type") == "text/plain"
    assert request.header("x-missing") is None
    assert request.body == b"body"
    assert request.peer == "memory"
    assert (request.base_url, request.relayed) == (None, False)
    assert request.url == "http://example.test/path/here?q=1&r=2"


async def test_serve_stream_passes_base_url_and_relayed_on() -> None:
    app = App()
    base = "http://relay.test:8470/n/abc/"
    async with on_stream(app, peer="relay", base_url=base, relayed=True) as (client, _, _):
        await client.send("GET", "/ptth/v1/frames")
        await client.response()
    (request,) = app.seen
    assert (request.peer, request.base_url, request.relayed) == ("relay", base, True)
    assert request.url == "http://relay.test:8470/n/abc/ptth/v1/frames"


def test_request_url_and_header() -> None:
    def request(headers: list[tuple[str, str]], base_url: str | None = None) -> Request:
        return Request("GET", "/a?b", headers, b"", "peer", base_url=base_url)

    assert request([("host", "h:1")]).url == "http://h:1/a?b"
    assert request([]).url == "http://unknown/a?b"
    assert request([("host", "h")], "https://r/n/x").url == "https://r/n/x/a?b"
    assert request([("host", "h")], "https://r/n/x/").url == "https://r/n/x/a?b"
    joined = request([("via", "1"), ("host", "h"), ("via", "2"), ("via", "3")])
    assert joined.header("via") == "1, 2, 3"
    assert joined.header("Via") is None  # names are looked up as stored: lowercase


# -- connection cap ------------------------------------------------------------------


async def test_connection_cap() -> None:
    async with serving(App(), ServerConfig(max_connections=2)) as served:
        first, second = await served.connect(), await served.connect()
        for client in (first, second):
            await client.send()
            assert (await client.response()).status == 200
        third = await served.connect()
        busy = await third.response()
        assert busy.status == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.headers["connection"] == "close"
        assert b"2 connections open" in busy.body
        assert await third.closed()
        await third.aclose()
        # The two kept-alive connections are still served.
        await first.send("GET", "/again")
        assert (await first.response()).status == 200
        await first.aclose()
        await second.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.active_connections == 0
        fourth, fifth = await served.connect(), await served.connect()
        for client in (fourth, fifth):
            await client.send()
            assert (await client.response()).status == 200
            await client.aclose()


# -- graceful shutdown ---------------------------------------------------------------


async def test_graceful_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    entered, release = trio.Event(), trio.Event()
    stream_closed = trio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.text(200, "done")

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await trio.sleep_forever()
        finally:
            stream_closed.set()

    async def events(request: Request) -> Response:
        return Response(200, stream=endless(), long_lived=True)

    app = App({"/slow": slow, "/events": events})
    async with serving(app) as served:
        busy, idle, streaming = [await served.connect() for _ in range(3)]
        await busy.send("GET", "/slow")
        await entered.wait()
        await idle.send()
        assert (await idle.response()).status == 200
        await streaming.send("GET", "/events")
        assert (await streaming.head()).headers["transfer-encoding"] == "chunked"
        assert await streaming.chunk() == b"first"

        start = trio.current_time()
        served.server.shutdown()
        # The idle connection and the endless stream are closed at once...
        assert await idle.closed()
        assert await streaming.closed()
        assert stream_closed.is_set()
        # ...no new connection is taken...
        with pytest.raises(ConnectionRefusedError):
            await served.connect()
        assert trio.current_time() == start
        # ...and the request in flight finishes with its response.
        assert not served.done.is_set()
        release.set()
        answer = await busy.response()
        assert (answer.status, answer.body) == (200, b"done\n")
        assert answer.headers["connection"] == "close"
        assert await busy.closed()
        await served.done.wait()
        assert trio.current_time() == start
        for client in (busy, idle, streaming):
            await client.aclose()


async def test_shutdown_cancels_requests_past_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, cancelled = trio.Event(), trio.Event()

    async def stuck(request: Request) -> Response:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    async with serving(App({"/stuck": stuck}), ServerConfig(shutdown_grace=5)) as served:
        client = await served.connect()
        await client.send("GET", "/stuck")
        await entered.wait()
        start = trio.current_time()
        served.server.shutdown()
        assert await client.closed()  # no answer: the handler was cancelled
        await served.done.wait()
        assert cancelled.is_set()
        assert trio.current_time() - start == pytest.approx(5)
        await client.aclose()


async def test_shutdown_with_nothing_open_returns_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(App()) as served:
        client = await served.connect()
        await client.send()
        await client.response()
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        served.server.shutdown()
        await served.done.wait()
        assert trio.current_time() == start


# -- handler errors ------------------------------------------------------------------


async def test_handler_error_is_500_and_the_server_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug in the handler")

    async with serving(App({"/broken": broken})) as served:
        client = await served.connect()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            await client.send("POST", "/broken", body=b"x")
            answer = await client.response()
        assert answer.status == 500
        assert b"internal error" in answer.body
        assert "handler failed on POST /broken" in caplog.text
        assert "bug in the handler" in caplog.text
        # Same connection, and a new one: both still served.
        await client.send("GET", "/fine")
        assert (await client.response()).status == 200
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await client.aclose()
        await other.aclose()


class Closable:
    """A response stream that records whether it was closed (and was never read)."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> Closable:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True


@pytest.mark.parametrize("value", ["line\r\nbreak", "\u20acuro"])  # h11 refuses; not latin-1
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_response_that_cannot_be_sent_closes_the_connection_only(
    value: str, streamed: bool
) -> None:
    stream = Closable()

    async def bad_header(request: Request) -> Response:
        if streamed:
            return Response(200, [("x-bad", value)], stream=stream)
        return Response(200, [("x-bad", value)], b"never sent")

    async with serving(App({"/bad": bad_header})) as served:
        client = await served.connect()
        await client.send("GET", "/bad")
        assert await client.closed()
        assert stream.closed is streamed  # its owner gets to release what it holds
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await client.aclose()
        await other.aclose()


async def test_a_stream_is_closed_when_its_client_is_gone_before_the_head() -> None:
    entered, release = trio.Event(), trio.Event()
    stream = Closable()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, stream=stream)

    async with serving(App({"/slow": slow})) as served:
        client = await served.connect()
        await client.send("GET", "/slow")
        await entered.wait()
        await client.aclose()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.closed
        assert served.server.active_connections == 0


async def test_a_response_without_a_body() -> None:
    async def empty(request: Request) -> Response:
        return Response(204)

    async with on_stream(App({"/empty": empty})) as (client, _, _):
        await client.send("GET", "/empty")
        answer = await client.response()
        assert (answer.status, answer.body) == (204, b"")
        await client.send()
        assert (await client.response()).status == 200


async def test_client_gone_before_the_answer() -> None:
    entered, release = trio.Event(), trio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.text(200, "too late")

    async with serving(App({"/slow": slow})) as served:
        client = await served.connect()
        await client.send("GET", "/slow")
        await entered.wait()
        await client.aclose()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert served.server.active_connections == 0
        assert served.server.requests_served == 0
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await other.aclose()


class Resetting(trio.abc.Stream):
    """A server end whose peer resets the connection after ``reads`` reads."""

    def __init__(self, inner: trio.abc.Stream, reads: int) -> None:
        self.inner = inner
        self.reads = reads

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self.reads:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset by peer")
        self.reads -= 1
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_connection_reset_while_reading() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    server = Server(App())
    client = Client(client_end)
    await client.send()
    with guard():
        await server.serve_stream(Resetting(server_end, 1))  # returns: no error escapes
    assert (await client.response()).status == 200
    assert await client.closed()
    assert server.active_connections == 0
    await client.aclose()


# -- upgrade -------------------------------------------------------------------------


async def test_upgrade_hands_the_connection_over_with_the_bytes_after_the_request() -> None:
    got: list[bytes] = []
    finished = trio.Event()

    async def take_over(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, PrefixedStream)
        got.append(bytes(await stream.receive_some(5)))
        got.append(bytes(await stream.receive_some()))
        await stream.send_all(b"hello from the new protocol")
        got.append(bytes(await stream.receive_some()))
        await stream.send_all(b"pong")
        finished.set()

    async def attach(request: Request) -> Response:
        headers = [("upgrade", "PTTH/1.0"), ("connection", "Upgrade"), ("ptth-lease", "60")]
        return Response(101, headers, upgrade=take_over)

    async with serving(App({"/attach": attach})) as served:
        client = await served.connect()
        upgrade = [("upgrade", "PTTH/1.0"), ("connection", "Upgrade")]
        # The first bytes of the new protocol go out in the same write as the request.
        await client.send("POST", "/attach", upgrade, b"lease", extra=b"EARLY BYTES")
        answer = await client.head()
        assert answer.status == 101
        assert answer.headers["upgrade"] == "PTTH/1.0"
        assert answer.headers["ptth-lease"] == "60"
        assert await client._next() is h11.PAUSED
        data, _ = client.conn.trailing_data
        while len(data) < len(b"hello from the new protocol"):
            data += await client.stream.receive_some()
        assert data == b"hello from the new protocol"
        await client.stream.send_all(b"ping")
        assert await client.stream.receive_some() == b"pong"
        await finished.wait()
        assert got == [b"EARLY", b" BYTES", b"ping"]
        assert await client.closed()  # the connection ends with its new protocol
        await client.aclose()
        assert served.server.requests_served == 0


async def test_101_to_a_request_that_did_not_ask_to_upgrade_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def take_over(stream: trio.abc.Stream) -> None:
        raise AssertionError("must not be called")

    async def wrong(request: Request) -> Response:
        return Response(101, [("upgrade", "PTTH/1.0")], upgrade=take_over)

    async with serving(App({"/attach": wrong})) as served:
        client = await served.connect()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            await client.send("POST", "/attach")
            answer = await client.response()
        assert answer.status == 500
        assert "did not ask to upgrade" in caplog.text
        await client.send()
        assert (await client.response()).status == 200
        await client.aclose()


async def test_101_to_connect_closes_the_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def take_over(stream: trio.abc.Stream) -> None:
        raise AssertionError("must not be called")

    async def tunnel(request: Request) -> Response:
        return Response(101, [("upgrade", "PTTH/1.0")], upgrade=take_over)

    app = App()
    app.routes["example.test:443"] = tunnel
    async with serving(app) as served:
        client = await served.connect()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            await client.raw(b"CONNECT example.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await client.closed()
        assert "cannot switch protocols" in caplog.text
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await client.aclose()
        await other.aclose()


async def test_an_upgraded_protocol_that_fails_ends_its_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def take_over(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"about to fail")
        raise RuntimeError("bug in the new protocol")

    async def attach(request: Request) -> Response:
        return Response(
            101, [("upgrade", "PTTH/1.0"), ("connection", "Upgrade")], upgrade=take_over
        )

    async with serving(App({"/attach": attach})) as served:
        client = await served.connect()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            await client.send("POST", "/attach", [("upgrade", "PTTH/1.0")])
            assert (await client.head()).status == 101
            assert await client.closed()
        assert "bug in the new protocol" in caplog.text
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await client.aclose()
        await other.aclose()


async def test_shutdown_cancels_an_upgraded_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running, cancelled = trio.Event(), trio.Event()

    async def take_over(stream: trio.abc.Stream) -> None:
        running.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async def attach(request: Request) -> Response:
        return Response(
            101, [("upgrade", "PTTH/1.0"), ("connection", "Upgrade")], upgrade=take_over
        )

    async with serving(App({"/attach": attach})) as served:
        client = await served.connect()
        await client.send("POST", "/attach", [("upgrade", "PTTH/1.0")])
        assert (await client.head()).status == 101
        await running.wait()
        start = trio.current_time()
        served.server.shutdown()
        await served.done.wait()
        assert cancelled.is_set()
        assert trio.current_time() == start
        await client.aclose()


async def test_upgrade_after_shutdown_began_is_cancelled_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, release, ended = trio.Event(), trio.Event(), trio.Event()

    async def take_over(stream: trio.abc.Stream) -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    async def attach(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(
            101, [("upgrade", "PTTH/1.0"), ("connection", "Upgrade")], upgrade=take_over
        )

    async with serving(App({"/attach": attach})) as served:
        client = await served.connect()
        await client.send("POST", "/attach", [("upgrade", "PTTH/1.0")])
        await entered.wait()
        start = trio.current_time()
        served.server.shutdown()
        release.set()
        assert (await client.head()).status == 101
        await served.done.wait()
        assert ended.is_set()
        assert trio.current_time() == start  # cancelled at its first checkpoint
        await client.aclose()


# -- bodies and timeouts -------------------------------------------------------------


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


async def test_chunked_body_over_the_limit_is_413() -> None:
    app = App()
    async with on_stream(app, ServerConfig(max_body_size=100)) as (client, _, done):
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.raw(chunked(b"a" * 60))
        await client.raw(chunked(b"b" * 41))
        answer = await client.response()
        assert answer.status == 413
        assert b"over the limit of 100" in answer.body
        assert answer.headers["connection"] == "close"
        assert await client.closed()
        await done.wait()
    assert app.seen == []


async def test_chunked_body_at_the_limit_is_taken() -> None:
    app = App()
    async with on_stream(app, ServerConfig(max_body_size=100)) as (client, _, _):
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.raw(chunked(b"a" * 60, b"b" * 40) + b"0\r\n\r\n")
        assert (await client.response()).status == 200
    assert app.seen[0].body == b"a" * 60 + b"b" * 40


async def test_content_length_over_the_limit_is_413_before_the_body() -> None:
    app = App()
    async with on_stream(app, ServerConfig(max_body_size=100)) as (client, _, done):
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
        answer = await client.response()
        assert answer.status == 413
        assert answer.body == b"request body is 101 bytes, limit 100\n"
        await done.wait()
    assert app.seen == []


async def test_body_timeout_is_408(autojump_clock: trio.testing.MockClock) -> None:
    app = App()
    async with on_stream(app, ServerConfig(body_timeout=7)) as (client, _, done):
        await client.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        start = trio.current_time()
        answer = await client.response()
        assert answer.status == 408
        assert answer.body == b"request body took over 7 s\n"
        assert trio.current_time() - start == pytest.approx(7)
        assert await client.closed()
        await done.wait()
    assert app.seen == []


async def test_header_timeout_is_408(autojump_clock: trio.testing.MockClock) -> None:
    async with on_stream(App(), ServerConfig(header_timeout=3)) as (client, _, done):
        await client.raw(b"GET / HTTP/1.1\r\nHost: x\r\n", method="GET")
        start = trio.current_time()
        answer = await client.response()
        assert answer.status == 408
        assert b"headers took too long" in answer.body
        assert trio.current_time() - start == pytest.approx(3)
        await done.wait()


async def test_idle_timeout_closes_quietly(autojump_clock: trio.testing.MockClock) -> None:
    async with on_stream(App(), ServerConfig(idle_timeout=20)) as (client, _, done):
        await client.send()
        await client.response()
        start = trio.current_time()
        assert await client.closed()
        assert trio.current_time() - start == pytest.approx(20)
        await done.wait()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_their_status_and_a_hang_up(data: bytes, status: int) -> None:
    async with on_stream(App(), ServerConfig(max_header_size=256)) as (client, _, done):
        await client.raw(data, method="GET")
        answer = await client.response()
        assert answer.status == status
        assert answer.headers["connection"] == "close"
        await done.wait()


async def test_headers_arriving_in_pieces_over_the_limit() -> None:
    async with on_stream(App(), ServerConfig(max_header_size=256)) as (client, _, done):
        await client.raw(b"GET / HTTP/1.1\r\nHost: x\r\n", method="GET")
        for _ in range(10):
            await trio.testing.wait_all_tasks_blocked()
            if done.is_set():
                break
            await client.stream.send_all(b"X-More: " + b"a" * 50 + b"\r\n")
        answer = await client.response()
        assert answer.status == 431
        await done.wait()


async def test_write_timeout_to_a_client_that_never_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    server = Server(App(), ServerConfig(write_timeout=4))
    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, server_end)
            await client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            start = trio.current_time()
            await trio.testing.wait_all_tasks_blocked()
    # serve_stream gave up on the write and returned: the nursery could end.
    assert trio.current_time() - start == pytest.approx(4)
    assert server.active_connections == 0
    assert server.requests_served == 0
    await client_end.aclose()


# -- streamed responses --------------------------------------------------------------


async def test_streamed_response_is_chunked_and_its_iterator_closed() -> None:
    closed = trio.Event()

    async def pieces() -> AsyncIterator[bytes]:
        try:
            for piece in (b"one ", b"two ", b"three"):
                yield piece
        finally:
            closed.set()

    async def stream(request: Request) -> Response:
        return Response(200, [("content-type", "text/plain")], stream=pieces())

    async with on_stream(App({"/s": stream})) as (client, server, _):
        await client.send("GET", "/s")
        answer = await client.response()
        assert (answer.status, answer.body, answer.complete) == (200, b"one two three", True)
        assert answer.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in answer.headers
        assert closed.is_set()
        await client.send()  # kept alive after a streamed response
        assert (await client.response()).status == 200
        assert server.requests_served == 2


async def test_a_long_lived_stream_outlives_the_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ticks() -> AsyncIterator[bytes]:
        for n in range(10):
            await trio.sleep(10)
            yield b"tick %d\n" % n

    async def events(request: Request) -> Response:
        return Response(200, stream=ticks(), long_lived=True)

    config = ServerConfig(write_timeout=30)
    async with on_stream(App({"/events": events}), config) as (client, _, _):
        await client.send("GET", "/events")
        answer = await client.response()
        assert answer.complete
        assert answer.body == b"".join(b"tick %d\n" % n for n in range(10))
        assert trio.current_time() >= 100


async def test_a_stream_that_fails_closes_its_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("the source went away")

    async def stream(request: Request) -> Response:
        return Response(200, stream=failing())

    async with serving(App({"/s": stream})) as served:
        client = await served.connect()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            await client.send("GET", "/s")
            answer = await client.response()
        assert (answer.status, answer.body, answer.complete) == (200, b"partial", False)
        assert "the source went away" in caplog.text
        other = await served.connect()
        await other.send()
        assert (await other.response()).status == 200
        await client.aclose()
        await other.aclose()


async def test_a_streamed_response_to_a_client_that_stops_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1000
            await trio.sleep(1)

    async def stream(request: Request) -> Response:
        return Response(200, stream=forever())

    client_end, server_end = trio.testing.lockstep_stream_pair()
    server = Server(App({"/s": stream}), ServerConfig(write_timeout=5))
    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, server_end)
            await client_end.send_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(3):  # read a little, then stop
                await client_end.receive_some(65536)
            stopped = trio.current_time()
    assert trio.current_time() - stopped == pytest.approx(5, abs=1)
    assert server.active_connections == 0
    await client_end.aclose()


class Pieces:
    """An async iterator without ``aclose`` (not a generator), with an empty piece."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.pieces:
            raise StopAsyncIteration
        return self.pieces.pop(0)


async def test_a_stream_without_aclose_and_an_empty_piece() -> None:
    async def stream(request: Request) -> Response:
        return Response(200, stream=Pieces(b"a", b"", b"b"))

    async with on_stream(App({"/s": stream})) as (client, _, _):
        await client.send("GET", "/s")
        answer = await client.response()
        # An empty piece must not be written as the last chunk (it would end the body).
        assert (answer.body, answer.complete) == (b"ab", True)
        await client.send()
        assert (await client.response()).status == 200


async def test_a_long_lived_stream_begun_during_shutdown_is_cut_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, release, ended = trio.Event(), trio.Event(), trio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await trio.sleep(1)
        finally:
            ended.set()

    async def events(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, stream=endless(), long_lived=True)

    async with serving(App({"/events": events})) as served:
        client = await served.connect()
        await client.send("GET", "/events")
        await entered.wait()
        start = trio.current_time()
        served.server.shutdown()
        release.set()
        answer = await client.response()
        assert (answer.status, answer.complete) == (200, False)
        await served.done.wait()
        assert ended.is_set()
        assert trio.current_time() == start
        await client.aclose()


# -- the accept loop -----------------------------------------------------------------


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """Fails ``accept`` with EMFILE a few times, then hands out streams, then closes."""

    def __init__(self, failures: int, streams: list[trio.abc.Stream]) -> None:
        self.failures = failures
        self.streams = streams
        self.closed = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "too many open files")
        if self.streams:
            return self.streams.pop(0)
        await self.closed.wait()
        raise trio.ClosedResourceError

    async def aclose(self) -> None:
        self.closed.set()
        await trio.lowlevel.checkpoint()


async def test_accept_errors_back_off_and_serving_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    listener = FlakyListener(3, [server_end])
    server = Server(App())
    start = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="ptth.server"), guard():
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            client = Client(client_end)
            await client.send()
            assert (await client.response()).status == 200
            assert trio.current_time() - start == pytest.approx(0.3)
            server.shutdown()
    assert caplog.text.count("accept failed") == 3
    assert listener.closed.is_set()
    await client.aclose()


class ClosedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener someone else has closed."""

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        raise trio.ClosedResourceError

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_listener_that_closes_ends_only_its_own_accept_loop() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    listener = FlakyListener(0, [server_end])
    server = Server(App())
    with guard():
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [ClosedListener(), listener])
            client = Client(client_end)
            await client.send()
            assert (await client.response()).status == 200
            server.shutdown()
    await client.aclose()


# -- PrefixedStream and peer names ---------------------------------------------------


class NoEof(trio.abc.Stream):
    """A stream without ``send_eof`` (as some transports are)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_prefixed_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"prefix")
    await right.send_all(b"after")
    assert await stream.receive_some(3) == b"pre"
    assert await stream.receive_some() == b"fix"
    assert await stream.receive_some() == b"after"
    await stream.wait_send_all_might_not_block()
    await stream.send_all(b"out")
    await stream.send_eof()
    assert await right.receive_some() == b"out"
    assert await right.receive_some() == b""
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    await right.aclose()

    left, right = trio.testing.memory_stream_pair()
    bare = PrefixedStream(NoEof(left), b"")
    await bare.send_eof()  # nothing to do, and no error
    await right.send_all(b"x")
    assert await bare.receive_some(10) == b"x"
    await bare.aclose()
    await right.aclose()


class FakeSocket:
    def __init__(self, name: tuple[object, ...] | None) -> None:
        self.name = name

    def getpeername(self) -> tuple[object, ...]:
        if self.name is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self.name


class SocketLike(NoEof):
    def __init__(self, inner: trio.abc.Stream, socket: FakeSocket) -> None:
        super().__init__(inner)
        self.socket = socket


@pytest.mark.parametrize(
    ("name", "peer"),
    [(("192.0.2.1", 4321), "192.0.2.1:4321"), (("::1", 80, 0, 0), "::1:80"), (None, "?")],
)
async def test_peer_name_of_a_socket(name: tuple[object, ...] | None, peer: str) -> None:
    app = App()
    client, server_end = trio.testing.memory_stream_pair()
    server = Server(app)
    with guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, SocketLike(server_end, FakeSocket(name)))
            raw = Client(client)
            await raw.send("GET", "/", [("connection", "close")])
            await raw.response()
    assert app.seen[0].peer == peer
    await client.aclose()


def test_request_url_uses_the_servers_scheme() -> None:
    request = Request("POST", "/ptth/v1/frames", [("host", "example.com")], b"", "1.2.3.4:5")
    assert request.url == "http://example.com/ptth/v1/frames"
    behind_tls = Request(
        "POST", "/ptth/v1/frames", [("host", "example.com")], b"", "1.2.3.4:5", scheme="https"
    )
    assert behind_tls.url == "https://example.com/ptth/v1/frames"
