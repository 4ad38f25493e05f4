"""Signed frames between real nodes: delivery, exactly-once, and every bad input."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import httpcore
import httpx
import pytest
import trio

import crypto
import mesh
from node import (
    DeliveryFailed,
    MemoryNetwork,
    Node,
    NodeConfig,
    NodeError,
    PeerUnknown,
    Rejected,
    ServerConfig,
    make_transport,
    run_inline,
)
from node._fabric import sign_request, verify_response
from node._node import SWEEP_INTERVAL
from tests.helpers import NodeFactory, peer


async def drain(node: Node) -> list[bytes]:
    """Every message in ``node``'s inbox, acknowledged."""
    bodies = []
    async for message in node.inbox(follow=False):
        bodies.append(message.body)
        await message.ack()
    return bodies


async def test_two_nodes_on_loopback_tcp_exactly_once(tcp_nodes: NodeFactory) -> None:
    async with tcp_nodes.session("alice") as alice:
        bob_session = tcp_nodes.session("bob", listen="127.0.0.1:0")
        async with bob_session as bob:
            peer(alice, bob)
            bob_port = bob.endpoints[0].rsplit(":", 1)[1]
            result = await alice.send(bob.node_id, b"hello bob", ct="text/plain")
            assert result.outcome is mesh.Outcome.ACCEPTED
            async for message in bob.inbox(follow=False):
                assert (message.src, message.body, message.ct) == (
                    alice.node_id,
                    b"hello bob",
                    "text/plain",
                )
                assert message.hops == 1
                await message.ack()
            frame = alice.new_frame(bob.node_id, b"resent after restart")
            wire = mesh.WireFrame(0, frame.seal(alice.identity))
            assert (await alice.send_frame(bob.node_id, wire)).outcome is mesh.Outcome.ACCEPTED
            assert await drain(bob) == [b"resent after restart"]
        # Restart bob on the same port: his store remembers what he took.
        async with tcp_nodes.session("bob", listen=f"127.0.0.1:{bob_port}") as bob:
            result = await alice.send_frame(bob.node_id, wire)
            assert result.outcome is mesh.Outcome.DUPLICATE
            assert await drain(bob) == []
            assert bob.statistics.frames_duplicate == 1
            assert bob.statistics.frames_accepted == 0


async def test_three_nodes_each_pair(tcp_nodes: NodeFactory) -> None:
    nodes = [await tcp_nodes.open(name) for name in ("a", "b", "c")]
    for i, x in enumerate(nodes):
        for y in nodes[i + 1 :]:
            peer(x, y)
    async with trio.open_nursery() as nursery:
        for x in nodes:
            for y in nodes:
                if x is not y:
                    body = f"{x.config.name}->{y.config.name}".encode()
                    nursery.start_soon(x.send, y.node_id, body)
    for y in nodes:
        got = sorted(await drain(y))
        assert got == sorted(
            f"{x.config.name}->{y.config.name}".encode() for x in nodes if x is not y
        )


async def test_memory_network_batches_concurrent_sends(memory_nodes: NodeFactory) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    async with trio.open_nursery() as nursery:
        for i in range(250):
            nursery.start_soon(a.send, b.node_id, b"%d" % i)
    assert sorted(await drain(b)) == sorted(b"%d" % i for i in range(250))
    # 250 frames queued at once go in batches of at most 100, not one POST each.
    assert a.statistics.send_requests <= 4
    assert a.statistics.sent_accepted == 250


async def test_send_to_unknown_peer(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a")
    with pytest.raises(PeerUnknown, match="no address known for"):
        await a.send(crypto.Identity.generate().node_id, b"x")


async def test_frame_for_another_node_is_rejected_no_route(memory_nodes: NodeFactory) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    stranger = crypto.Identity.generate().node_id
    wire = mesh.WireFrame(0, a.new_frame(stranger, b"x").seal(a.identity))
    with pytest.raises(Rejected, match=r"does not relay yet \(no-route\)"):
        await a.send_frame(b.node_id, wire)
    assert b.statistics.frames_rejected == 1


async def test_unreachable_peer_fails_after_send_timeout(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", send_timeout=30.0)
    async with memory_nodes.session("b") as b:
        peer(a, b)
    start = trio.current_time()
    with pytest.raises(DeliveryFailed, match="unreachable for 30 s after"):
        await a.send(b.node_id, b"into the void")
    assert trio.current_time() - start <= 30.0
    assert a.statistics.send_retries >= 5  # backoff 0.2, 0.4, ... within 30 s


async def test_sender_retries_until_the_peer_comes_back(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    async with memory_nodes.session("b") as b:
        peer(a, b)
    delivered = trio.Event()
    result: list[mesh.Result] = []

    async def send() -> None:
        result.append(await a.send(b.node_id, b"patience"))
        delivered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.sleep(5)  # virtual time: bob is down for 5 s while alice retries
        assert not delivered.is_set()
        async with memory_nodes.session("b") as b:
            await delivered.wait()
            assert await drain(b) == [b"patience"]
    assert result[0].outcome is mesh.Outcome.ACCEPTED
    assert a.statistics.send_retries >= 3


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
    node = await memory_nodes.open("target")
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
    node = await memory_nodes.open("small", server=_small_server())
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


async def test_store_full_is_429_with_retry_after(memory_nodes: NodeFactory) -> None:
    node = await memory_nodes.open("full", max_inbox_bytes=10)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    raw = Raw(memory_nodes.network, node)
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, raw.frame(body=b"x" * 11))]))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert "quota of 10" in response.text
    # What fits is still taken.
    response = await raw.post(mesh.encode_frames([mesh.WireFrame(0, raw.frame(body=b"x" * 5))]))
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


# -- cancellation --------------------------------------------------------------------


async def test_leaving_node_open_with_requests_in_flight(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a")
    async with memory_nodes.session("b") as b:
        peer(a, b)
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(a.send, b.node_id, b"%d" % i)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    # b closed cleanly with sends in flight; a is still healthy and can reach a new b.
    async with memory_nodes.session("b") as b:
        assert (await a.send(b.node_id, b"after")).ok
        assert b"after" in await drain(b)


async def test_cancelling_the_whole_node_ends_cleanly(memory_nodes: NodeFactory) -> None:
    b = await memory_nodes.open("b")
    with trio.CancelScope() as scope:
        async with memory_nodes.session("a") as a:
            peer(a, b)
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(a.send, b.node_id, b"%d" % i)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught


async def test_add_peer_by_token(memory_nodes: NodeFactory) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    address = await a.add_peer(b.address_token())
    assert address.node == b.node_id
    assert (await a.send(b.node_id, b"by token")).ok
    with pytest.raises(crypto.Malformed, match="must start with 'ptth:'"):
        await a.add_peer("nonsense")
    with pytest.raises(NodeError, match="own address"):
        await a.add_peer(a.address_token())


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
        await a.send(b.node_id, b"acked", ttl=60)
        await a.send(b.node_id, b"kept", ttl=60)
        async for message in b.inbox(follow=False):
            if message.body == b"acked":
                await message.ack()
        assert b.store.statistics().seen_ids == 2
        await trio.sleep(2.5 * SWEEP_INTERVAL)  # virtual: two sweeps, long after expiry
        # The acknowledged frame's id is forgotten; the one still in the inbox stays.
        assert b.store.statistics().seen_ids == 1


async def test_a_caller_outside_the_node_hears_when_it_stops(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes.session("b") as b:
        pass  # b existed once; now nobody answers at its address
    errors: list[BaseException] = []

    async def send(a: Node) -> None:
        try:
            await a.send(b.node_id, b"never accepted")
        except NodeError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outside, memory_nodes.session("a") as a:
        await a.add_peer(b.address_token())
        outside.start_soon(send, a)
        await trio.sleep(1)  # virtual: the sender is retrying
        # a has stopped; the caller outside its block is told, not left waiting.
    assert [str(e) for e in errors] == ["node stopped before the frame was accepted"]


async def test_send_timeout_is_not_overrun_by_a_slow_answer(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", send_timeout=5.0, request_timeout=60.0)
    b = await memory_nodes.open("b")
    network = memory_nodes.network
    # b's record points at a host that takes connections and never answers.
    (listener,) = await network.open_listeners("blackhole", 8470)
    held: list[trio.abc.Stream] = []

    async def hold() -> None:
        while True:
            held.append(await listener.accept())

    record = crypto.sign_address(
        b.identity, seq=99, endpoints=["http://blackhole:8470"], exp=b.clock() + 3600_000
    )
    a.data.peers.add(record, now=a.clock())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        start = trio.current_time()
        with pytest.raises(DeliveryFailed, match="before the deadline"):
            await a.send(b.node_id, b"into a black hole")
        assert trio.current_time() - start == pytest.approx(5.0)
        nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await listener.aclose()


async def test_a_peer_removed_after_a_send_is_unknown_for_the_next(
    memory_nodes: NodeFactory,
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    assert (await a.send(b.node_id, b"while known")).ok
    a.data.peers.remove(b.node_id)  # as `ptth peer remove` does, while a runs
    with pytest.raises(PeerUnknown, match="no address known for"):
        await a.send(b.node_id, b"after removal")
