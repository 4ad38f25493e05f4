"""Signed frames between real nodes: delivery, exactly-once, custody across stops,
and every bad input straight at a node's frames endpoint."""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import httpcore
import httpx
import pytest
import trio

import crypto
import mesh
from node import (
    MemoryNetwork,
    Node,
    NodeConfig,
    NodeError,
    Request,
    Response,
    ServerConfig,
    make_transport,
    run_inline,
)
from node._fabric import sign_request, verify_response
from node._forwarder import BATCH_SIZE
from node._mesh import TICK_INTERVAL
from node._node import SWEEP_INTERVAL
from tests.helpers import (
    NodeFactory,
    delivered,
    drain,
    messages,
    next_message,
    peer,
    record,
)


async def test_two_nodes_on_loopback_tcp_exactly_once(tcp_nodes: NodeFactory) -> None:
    async with tcp_nodes.session("alice") as alice:
        posts = record(alice)
        bob_session = tcp_nodes.session("bob", listen="127.0.0.1:0")
        async with bob_session as bob:
            await peer(alice, bob)
            bob_port = bob.endpoints[0].rsplit(":", 1)[1]
            with trio.fail_after(10):
                trace = await delivered(alice, bob, b"hello bob", ct="text/plain")
            assert (trace.hops, trace.by, trace.first_hop) == (1, bob.node_id, bob.node_id)
            async for message in bob.inbox(follow=False):
                assert (message.src, message.body, message.ct) == (
                    alice.node_id,
                    b"hello bob",
                    "text/plain",
                )
                assert message.hops == 1
                await message.ack()
            frame = alice.new_frame(bob.node_id, b"resent after restart")
            envelope = frame.seal(alice.identity)
            await alice.send_sealed([(frame, envelope)])
            with trio.fail_after(10):
                assert [m.body for m in await messages(bob, 1)] == [b"resent after restart"]
            assert await drain(bob) == [b"resent after restart"]
        # Restart bob on the same port: his store remembers what he took. The frame
        # comes again (as after a crash of alice between bob's answer and her commit).
        async with tcp_nodes.session("bob", listen=f"127.0.0.1:{bob_port}") as bob:
            await alice.send_sealed([(frame, envelope)])

            def answered() -> list[mesh.Outcome]:
                return [
                    result.outcome
                    for post in posts.to(bob)
                    if post.results is not None
                    for wire, result in zip(post.frames, post.results, strict=True)
                    if wire.envelope == envelope
                ]

            with trio.fail_after(10):
                await posts.wait_for(lambda: len(answered()) == 2)
            assert answered() == [mesh.Outcome.ACCEPTED, mesh.Outcome.DUPLICATE]
            assert bob.statistics.frames_duplicate == 1
            # A frame after it goes in a later batch: alice has counted the duplicate.
            with trio.fail_after(10):
                await delivered(alice, bob, b"after")
            assert alice.statistics.sent_duplicate == 1
            assert await drain(bob) == [b"after"]


async def test_three_nodes_each_pair(tcp_nodes: NodeFactory) -> None:
    nodes = [await tcp_nodes.open(name) for name in ("a", "b", "c")]
    for i, x in enumerate(nodes):
        for y in nodes[i + 1 :]:
            await peer(x, y)
    traces: list[mesh.Trace] = []

    async def send(x: Node, y: Node) -> None:
        body = f"{x.config.name}->{y.config.name}".encode()
        traces.append(await delivered(x, y, body))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for x in nodes:
                for y in nodes:
                    if x is not y:
                        nursery.start_soon(send, x, y)
    assert sorted(t.hops or 0 for t in traces) == [1] * 6  # each pair directly
    for y in nodes:
        got = sorted(await drain(y))
        assert got == sorted(
            f"{x.config.name}->{y.config.name}".encode() for x in nodes if x is not y
        )


async def test_memory_network_batches_concurrent_sends(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    posts = record(a)
    async with trio.open_nursery() as nursery:
        for i in range(250):
            nursery.start_soon(a.send, b.node_id, b"%d" % i)

    def batches() -> list[int]:
        return [post.messages for post in posts.to(b) if post.results and post.messages]

    with trio.fail_after(30):
        got = await messages(b, 250)
        await posts.wait_for(lambda: sum(batches()) == 250)
    assert sorted(m.body for m in got) == sorted(b"%d" % i for i in range(250))
    # 250 frames queued at once go in batches of at most 100, not one POST each.
    sizes = batches()
    assert max(sizes) <= BATCH_SIZE
    assert len(sizes) <= 4
    assert a.statistics.sent_accepted == 250


async def test_send_to_a_node_nobody_knows_is_held(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a")
    stranger = crypto.Identity.generate().node_id
    sent = await a.send(stranger.text, b"x")
    assert (sent.dst, sent.next_hop) == (stranger, None)
    trace = await a.trace(sent.id)
    assert trace is not None
    assert (trace.state, trace.dst, trace.next_hop, trace.receipt) == (
        "held",
        stranger,
        None,
        False,
    )
    assert a.statistics.frames_held == 1
    with pytest.raises(NodeError, match="cannot send to itself"):
        await a.send(a.node_id, b"x")
    with pytest.raises(crypto.Malformed, match="52 characters"):
        await a.send("nope", b"x")
    with pytest.raises(crypto.Malformed, match="body"):
        await a.send(stranger, b"x" * (crypto.MAX_BODY_SIZE + 1))
    assert await a.trace(b"\x00" * crypto.FRAME_ID_SIZE) is None
    with pytest.raises(NodeError, match="this node sent no frame 0000"):
        await a.delivered(b"\x00" * crypto.FRAME_ID_SIZE)


# -- bad input, straight at the server ----------------------------------------------


class Raw:
    """Crafted requests to a node's frames endpoint, from a node identity of our own."""

    def __init__(self, network: MemoryNetwork, target: Node) -> None:
        self.identity = crypto.Identity.generate()
        self.network = network
        self.target = target
        self.url = target.endpoints[0] + "/ptth/v1/frames"

    def frame(self, *, dst: crypto.NodeId | None = None, body: bytes = b"x") -> bytes:
        now = self.target.clock()
        return crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.identity.node_id,
            id=os.urandom(16),
            ts=now,
            exp=now + 60_000,
            hops=4,
            dst=dst or self.target.node_id,
            body=body,
        ).seal(self.identity)

    def signed_headers(
        self, body: bytes, *, content_type: str = "application/cbor-seq"
    ) -> list[tuple[str, str]]:
        return [
            ("content-type", content_type),
            *sign_request(self.identity, "POST", self.url, body, now=self.target.clock() // 1000),
        ]

    async def post(
        self, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> httpx.Response:
        if headers is None:
            headers = self.signed_headers(body)
        async with httpx.AsyncClient(transport=make_transport(self.network)) as client:
            return await client.post(self.url, content=body, headers=headers)


@pytest.fixture
async def target(memory_nodes: NodeFactory) -> tuple[Node, Raw]:
    node = await memory_nodes.open("target", admission="open")  # Raw is a stranger
    assert isinstance(memory_nodes.network, MemoryNetwork)
    return node, Raw(memory_nodes.network, node)


async def assert_still_serving(node: Node, raw: Raw) -> None:
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame(body=b"good"))])
    response = await raw.post(body)
    assert response.status_code == 200, response.text
    assert mesh.decode_results(response.content, expected=1)[0].outcome is mesh.Outcome.ACCEPTED


async def test_good_request_gets_a_signed_receipt(target: tuple[Node, Raw]) -> None:
    node, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame()), mesh.WireFrame(0, raw.frame())])
    headers = raw.signed_headers(body)
    response = await raw.post(body, headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/cbor"
    digest = dict(headers)["content-digest"]
    verify_response(
        200,
        list(response.headers.multi_items()),
        response.content,
        expected=node.node_id,
        request_digest=digest,
        now=node.clock() // 1000,
    )
    with pytest.raises(crypto.BadSignature, match="expected"):
        verify_response(
            200,
            list(response.headers.multi_items()),
            response.content,
            expected=raw.identity.node_id,
            request_digest=digest,
            now=node.clock() // 1000,
        )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"\xff\xfe garbage", 400, "not a CBOR sequence"),
        (b"", 400, "holds no frames"),
        (b"\x82\x00", 400, "not valid CBOR"),
    ],
)
async def test_malformed_bodies_are_400(
    target: tuple[Node, Raw], body: bytes, status: int, words: str
) -> None:
    node, raw = target
    response = await raw.post(body)
    assert response.status_code == status
    assert words in response.text
    await assert_still_serving(node, raw)


async def test_per_frame_rejections_do_not_fail_the_batch(target: tuple[Node, Raw]) -> None:
    node, raw = target
    good = raw.frame(body=b"fine")
    tampered = bytearray(raw.frame(body=b"tampered"))
    tampered[-1] ^= 1
    body = b"".join(
        [
            mesh.encode_frames([mesh.WireFrame(0, bytes(tampered))]),
            crypto._cbor.encode("not a frame"),
            mesh.encode_frames([mesh.WireFrame(0, good)]),
            mesh.encode_frames([mesh.WireFrame(0, good)]),
            mesh.encode_frames([mesh.WireFrame(4, raw.frame())]),
            mesh.encode_frames([mesh.WireFrame(0, b"\x00")]),
        ]
    )
    response = await raw.post(body)
    assert response.status_code == 200
    results = mesh.decode_results(response.content, expected=6)
    assert [(r.outcome.value, r.code) for r in results] == [
        ("rejected", mesh.Reason.BAD_SIGNATURE),
        ("rejected", mesh.Reason.MALFORMED),
        ("accepted", None),
        ("duplicate", None),
        ("rejected", mesh.Reason.HOP_LIMIT),
        ("rejected", mesh.Reason.MALFORMED),
    ]
    assert "does not verify" in results[0].words
    assert await drain(node) == [b"fine"]


async def test_a_strangers_frame_for_another_node_is_refused_by_policy(
    target: tuple[Node, Raw],
) -> None:
    node, raw = target
    elsewhere = crypto.Identity.generate().node_id
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, raw.frame(dst=elsewhere))]))
    assert response.status_code == 200
    (result,) = mesh.decode_results(response.content, expected=1)
    assert (result.outcome, result.code) == (mesh.Outcome.REJECTED, mesh.Reason.POLICY)
    assert result.words == (
        f"this node forwards only for its neighbours; {raw.identity.node_id.short} is not one"
    )
    assert node.statistics.frames_rejected == 1
    assert node.store.statistics().queued_frames == 0


async def test_announces_from_a_stranger_are_refused(target: tuple[Node, Raw]) -> None:
    node, raw = target
    now = node.clock()
    address = crypto.sign_address(
        raw.identity, seq=1, endpoints=["http://stranger:8470"], exp=now + 3_600_000
    )
    announce = crypto.Frame(
        kind=crypto.Kind.ANN,
        src=raw.identity.node_id,
        id=os.urandom(16),
        ts=now,
        exp=now + 60_000,
        hops=4,
        body=address.envelope,
    ).seal(raw.identity)
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, announce)]))
    (result,) = mesh.decode_results(response.content, expected=1)
    assert (result.outcome, result.code) == (mesh.Outcome.REJECTED, mesh.Reason.POLICY)
    assert "announces are taken from neighbours only" in result.words
    assert node.routes() == []


async def test_expired_frame_rejected(target: tuple[Node, Raw]) -> None:
    node, raw = target
    now = node.clock()
    old = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=raw.identity.node_id,
        id=os.urandom(16),
        ts=now - 120_000,
        exp=now - 60_000,
        hops=4,
        dst=node.node_id,
        body=b"stale",
    ).seal(raw.identity)
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, old)]))
    (result,) = mesh.decode_results(response.content, expected=1)
    assert result.code is mesh.Reason.EXPIRED


async def test_missing_signature_is_401(target: tuple[Node, Raw]) -> None:
    node, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    response = await raw.post(body, [("content-type", "application/cbor-seq")])
    assert response.status_code == 401
    assert "not authenticated" in response.text
    await assert_still_serving(node, raw)


async def test_bad_signature_is_401(target: tuple[Node, Raw]) -> None:
    node, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    headers = raw.signed_headers(body)
    # The signature covers the body's digest: another body under it does not verify.
    other = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    response = await raw.post(other, headers)
    assert response.status_code == 401
    signature = dict(headers)["signature"]
    forged = [
        (k, v) if k != "signature" else (k, signature[:10] + "A" + signature[11:])
        for k, v in headers
    ]
    response = await raw.post(body, forged)
    assert response.status_code == 401
    await assert_still_serving(node, raw)


async def test_replayed_request_is_401(target: tuple[Node, Raw]) -> None:
    _, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    headers = raw.signed_headers(body)
    assert (await raw.post(body, headers)).status_code == 200
    again = await raw.post(body, headers)
    assert again.status_code == 401
    assert "replayed request" in again.text


async def test_old_signature_is_401(target: tuple[Node, Raw]) -> None:
    node, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    headers = [
        ("content-type", "application/cbor-seq"),
        *sign_request(raw.identity, "POST", raw.url, body, now=node.clock() // 1000 - 3600),
    ]
    response = await raw.post(body, headers)
    assert response.status_code == 401
    assert "ago" in response.text


async def test_wrong_content_type_is_415(target: tuple[Node, Raw]) -> None:
    node, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, raw.frame())])
    response = await raw.post(body, raw.signed_headers(body, content_type="application/json"))
    assert response.status_code == 415
    assert "application/cbor-seq" in response.text
    await assert_still_serving(node, raw)


async def test_wrong_method_and_unknown_path(target: tuple[Node, Raw]) -> None:
    node, raw = target
    async with httpx.AsyncClient(transport=make_transport(raw.network)) as client:
        response = await client.get(raw.url)
        assert response.status_code == 405
        response = await client.get(node.endpoints[0] + "/nothing/here")
        assert response.status_code == 404
        response = await client.get(node.endpoints[0] + "/ptth/v1/address")
        assert response.status_code == 200
        opened = crypto.SignedAddress.open(response.content, now=node.clock())
        assert opened.token == node.address_token()


async def test_oversized_body_is_413_before_it_is_read(memory_nodes: NodeFactory) -> None:
    node = await memory_nodes.open("small", server=_small_server(), admission="open")
    assert isinstance(memory_nodes.network, MemoryNetwork)
    raw = Raw(memory_nodes.network, node)
    body = b"\x00" * 5000
    response = await raw.post(body)
    assert response.status_code == 413
    assert "5000 bytes, limit 4096" in response.text
    await assert_still_serving(node, raw)


def _small_server() -> ServerConfig:
    return ServerConfig(max_body_size=4096)


async def test_too_many_frames_is_413(target: tuple[Node, Raw]) -> None:
    _, raw = target
    body = mesh.encode_frames([mesh.WireFrame(0, b"")] * (mesh.MAX_FRAMES_PER_REQUEST + 1))
    response = await raw.post(body)
    assert response.status_code == 413
    assert f"more than {mesh.MAX_FRAMES_PER_REQUEST} items" in response.text


def _inbox_charge(body: bytes) -> int:
    """What a message with ``body`` from a Raw sender is charged in the inbox."""
    identity = crypto.Identity.generate()
    now = int(time.time() * 1000)
    envelope = crypto.Frame(
        kind=crypto.Kind.MSG, src=identity.node_id, id=bytes(16), ts=now, exp=now + 60_000,
        hops=4, dst=identity.node_id, body=body,
    ).seal(identity)  # fmt: skip
    return mesh.stored_charge(len(envelope) + len(body))


async def test_store_full_is_429_with_retry_after(memory_nodes: NodeFactory) -> None:
    quota = _inbox_charge(b"x" * 2000)
    node = await memory_nodes.open(
        "full", max_inbox_bytes=quota, max_inbox_bytes_per_origin=10 * quota, admission="open"
    )
    assert isinstance(memory_nodes.network, MemoryNetwork)
    raw = Raw(memory_nodes.network, node)
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, raw.frame(body=b"x" * 2001))]))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert f"quota of {quota}" in response.text
    assert node.statistics.store_failures == 0  # a quota doing its job, not a failure
    # What fits is still taken.
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, raw.frame(body=b"x" * 2000))]))
    assert response.status_code == 200


# -- slow and broken connections -----------------------------------------------------


async def raw_stream(network: MemoryNetwork, node: Node) -> httpcore.AsyncNetworkStream:
    host, port = node.endpoints[0].removeprefix("http://").rsplit(":", 1)
    return await network.client_backend().connect_tcp(host, int(port))


async def read_all(stream: httpcore.AsyncNetworkStream) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def test_slow_headers_get_408_and_free_the_slot(
    target: tuple[Node, Raw], autojump_clock: trio.testing.MockClock
) -> None:
    node, raw = target
    stream = await raw_stream(raw.network, node)
    await stream.write(b"POST /ptth/v1/frames HTTP/1.1\r\nHost: x\r\n")
    start = trio.current_time()
    answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"headers took too long" in answer
    assert trio.current_time() - start == pytest.approx(node.config.server.header_timeout)
    await stream.aclose()
    await assert_still_serving(node, raw)


async def test_idle_keepalive_connection_is_closed(
    target: tuple[Node, Raw], autojump_clock: trio.testing.MockClock
) -> None:
    node, raw = target
    stream = await raw_stream(raw.network, node)
    start = trio.current_time()
    assert await read_all(stream) == b""
    assert trio.current_time() - start == pytest.approx(node.config.server.idle_timeout)
    await stream.aclose()


async def test_connection_dropped_mid_body(target: tuple[Node, Raw]) -> None:
    node, raw = target
    stream = await raw_stream(raw.network, node)
    await stream.write(
        b"POST /ptth/v1/frames HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial"
    )
    await stream.aclose()
    await assert_still_serving(node, raw)
    assert await drain(node) == [b"good"]


async def test_malformed_request_line_gets_400(target: tuple[Node, Raw]) -> None:
    node, raw = target
    stream = await raw_stream(raw.network, node)
    await stream.write(b"THIS IS NOT HTTP\r\n\r\n")
    answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"malformed request" in answer
    await stream.aclose()
    await assert_still_serving(node, raw)


async def test_huge_headers_get_431(target: tuple[Node, Raw]) -> None:
    node, raw = target
    stream = await raw_stream(raw.network, node)
    await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 431 ")
    await stream.aclose()
    await assert_still_serving(node, raw)


# -- cancellation and shutdown ----------------------------------------------------------


async def test_a_receiver_stopping_with_requests_in_flight_loses_nothing(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    held = trio.Event()
    async with memory_nodes.session("b") as b:
        await peer(a, b)
        assert b.server is not None
        inner = b.server.handler

        async def stuck(request: Request) -> Response:
            if request.path == "/ptth/v1/frames":
                held.set()
                await trio.sleep_forever()
            return await inner(request)

        b.server.handler = stuck
        sent = [await a.send(b.node_id, b"%d" % i, receipt=True) for i in range(50)]
        await held.wait()  # a's first batch is at b, which will never answer it
    # b stopped with a's request in flight; a keeps the frames and, once b is back
    # (and greets it), hands each over exactly once.
    async with memory_nodes.session("b") as b:
        with trio.fail_after(60):
            traces = [await a.delivered(s.id) for s in sent]
        assert {t.state for t in traces} == {"delivered"}
        assert sorted(await drain(b)) == sorted(b"%d" % i for i in range(50))
        assert a.store.statistics().queued_frames == 0


async def test_cancelling_the_whole_node_ends_cleanly(memory_nodes: NodeFactory) -> None:
    b = await memory_nodes.open("b")
    with trio.CancelScope() as scope:
        async with memory_nodes.session("a") as a:
            await peer(a, b)
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(a.send, b.node_id, b"%d" % i)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught


async def test_add_peer_by_token(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # One-sided peering: b takes frames from any node (admission open).
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b", admission="open")
    address = await a.add_peer(b.address_token())
    assert address.node == b.node_id
    assert a.peer_address(b.node_id) == address  # stored in the peer book
    # A neighbour at once: a route to it, and frames go straight there.
    assert [(r["destination"], r["direct"]) for r in a.routes()] == [(b.node_id.text, True)]
    sent = await a.send(b.node_id, b"by token")
    assert sent.next_hop == b.node_id
    with trio.fail_after(10):
        assert (await next_message(b)).body == b"by token"
    assert b.statistics.announces_received >= 1  # a greeted b
    assert not await a.add_peer_address(address)  # held already
    with pytest.raises(crypto.Malformed, match="must start with 'ptth:'"):
        await a.add_peer("nonsense")
    with pytest.raises(NodeError, match="own address"):
        await a.add_peer(a.address_token())
    older = crypto.sign_address(
        b.identity, seq=0, endpoints=list(b.endpoints), exp=b.clock() + 3_600_000
    )
    with pytest.raises(crypto.Stale):
        await a.add_peer(older.token)


async def test_the_sweeper_forgets_expired_ids_but_not_unacked_ones(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    network = MemoryNetwork()

    def clock() -> int:
        return 1_800_000_000_000 + int(trio.current_time() * 1000)

    def opened(name: str) -> contextlib.AbstractAsyncContextManager[Node]:
        return Node.open(
            tmp_path / name,
            config=NodeConfig(listen=f"{name}:8470"),
            network=network,
            clock=clock,
            rng=random.Random(name),
            run_blocking=run_inline,
        )

    async with opened("a") as a, opened("b") as b:
        await a.add_peer(b.address_token())
        await b.add_peer(a.address_token())
        await a.send(b.node_id, b"acked", ttl=60)
        await a.send(b.node_id, b"kept", ttl=60)
        with trio.fail_after(10):
            got = await messages(b, 2)
        for message in got:
            if message.body == b"acked":
                await message.ack()
        assert b.store.statistics().seen_ids == 2
        await trio.sleep(2.5 * SWEEP_INTERVAL)  # virtual: two sweeps, long after expiry
        # The acknowledged frame's id is forgotten; the one still in the inbox stays.
        assert b.store.statistics().seen_ids == 1


@pytest.mark.parametrize("how", ["leaves its block", "is cancelled"])
async def test_a_caller_outside_the_node_hears_when_it_stops(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with memory_nodes.session("b") as b:
        pass  # b existed once; now nobody answers at its address
    errors: list[BaseException] = []

    async def wait(a: Node, frame_id: bytes) -> None:
        try:
            await a.delivered(frame_id)
        except NodeError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outside:
        with trio.CancelScope() as scope:
            async with memory_nodes.session("a") as a:
                await a.add_peer(b.address_token())
                sent = await a.send(b.node_id, b"never accepted", receipt=True)
                outside.start_soon(wait, a, sent.id)
                await trio.sleep(1)  # virtual: the forwarder is retrying
                if how == "is cancelled":
                    scope.cancel()
        # a has stopped; the caller outside its block is told, not left waiting.
    assert [str(e) for e in errors] == [
        f"node stopped before frame {sent.id.hex()} was settled (it stays in the store)"
    ]
    with pytest.raises(NodeError, match="node is not running"):
        await a.send(b.node_id, b"too late")


async def test_a_slow_neighbour_costs_an_attempt_no_more_than_the_request_timeout(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", request_timeout=5.0)
    b = await memory_nodes.open("b")
    network = memory_nodes.network
    # b's record points at a host that takes connections and never answers.
    (listener,) = await network.open_listeners("blackhole", 8470)
    held: list[trio.abc.Stream] = []

    async def hold() -> None:
        while True:
            held.append(await listener.accept())

    record_ = crypto.sign_address(
        b.identity, seq=99, endpoints=["http://blackhole:8470"], exp=b.clock() + 3600_000
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        posts = record(a)
        start = trio.current_time()
        await a.add_peer_address(record_)
        sent = await a.send(b.node_id, b"into a black hole")
        with trio.fail_after(60):
            await posts.wait_for(lambda: len(posts.failures(b)) >= 2)
        first, second = posts.failures(b)[:2]
        assert first.at - start == pytest.approx(5.0)
        assert first.problem is not None
        assert "ReadTimeout from http://blackhole:8470/ptth/v1/frames" in first.problem
        assert second.at - first.at == pytest.approx(5.0, abs=0.5)  # back-off + 5 s
        trace = await a.trace(sent.id)
        assert trace is not None
        assert (trace.state, trace.next_hop) == ("queued", b.node_id)
        nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await listener.aclose()


async def test_a_peer_removed_while_running_is_no_neighbour_after_a_tick(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    with trio.fail_after(10):
        await delivered(a, b, b"while known")
    a.data.peers.remove(b.node_id)  # as `ptth peer remove` does, while a runs
    await trio.sleep(TICK_INTERVAL + 1)  # virtual: a notices on its next tick
    assert a.routes() == []
    assert [q["next_hop"] for q in await a.queues()] == []
    sent = await a.send(b.node_id, b"after removal")
    assert sent.next_hop is None  # held: b is nobody to a now
    assert await drain(b) == [b"while known"]
