"""The forwarding side of a node (:mod:`node._forwarder`): a :class:`Forwarder` per
neighbour drains its queue in batches through the :class:`FrameClient`. What it
retries and how long it waits, what a refusal drops, and how one refused frame in a
batch drops alone.

A :class:`Front` stands on its own address in front of a receiving node: it hands
requests to the node's handler (so answers are really signed by the node) or answers
for it, and logs when each request came, on the virtual clock.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection
from typing import Any

import pytest
import trio
import trio.testing

import crypto
import mesh
import node._forwarder
from node import MemoryNetwork, Node, Request, Response, Server
from node._forwarder import (
    BATCH_SIZE,
    EXTRA_AFTER,
    FRAMES_PATH,
    HOLD_BACK,
    MAX_HANDED,
    MAX_HANDED_BYTES,
    WINDOW,
    Forwarder,
)
from node._mesh import STARTING, MeshRuntime
from tests.helpers import NodeFactory, delivered, drain, messages, next_message, peer, record

FRONT = ("front", 8471)  # not port 80: a default port would leave the Host header


class Front:
    """Hands requests to ``target``'s handler, or answers with ``answers`` first."""

    url = f"http://{FRONT[0]}:{FRONT[1]}"

    def __init__(self) -> None:
        self.target: Node | None = None
        self.answers: list[Response] = []
        self.strip_signature = False
        self.log: list[tuple[float, int]] = []
        self._changed = trio.Event()

    async def handle(self, request: Request) -> Response:
        if self.answers:
            response = self.answers.pop(0)
        else:
            assert self.target is not None
            if self.strip_signature:
                headers = [(k, v) for k, v in request.headers if not k.startswith("signature")]
                request = dataclasses.replace(request, headers=headers)
            response = await self.target._handle(request)
        self.log.append((trio.current_time(), response.status))
        self._changed.set()
        self._changed = trio.Event()
        return response

    async def wait_for(self, requests: int) -> None:
        while len(self.log) < requests:
            await self._changed.wait()

    @property
    def statuses(self) -> list[int]:
        return [status for _, status in self.log]

    @property
    def gaps(self) -> list[float]:
        times = [time for time, _ in self.log]
        return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.fixture
async def front(memory_nodes: NodeFactory) -> Front:
    assert isinstance(memory_nodes.network, MemoryNetwork)
    front = Front()
    listeners = await memory_nodes.network.open_listeners(*FRONT)
    await memory_nodes.nursery.start(Server(front.handle).serve, listeners)
    return front


async def point(sender: Node, identity: crypto.Identity, *endpoints: str, seq: int = 1) -> None:
    """Make ``identity``'s node a neighbour of ``sender``, reachable at ``endpoints``."""
    now = sender.clock()
    address = crypto.sign_address(identity, seq=seq, endpoints=endpoints, exp=now + 3_600_000)
    await sender.add_peer_address(address)


# -- 429: the receiver's store is full -----------------------------------------------


def inbox_charge(sender: Node, body: bytes) -> int:
    """What a message from ``sender`` with ``body`` (and a receipt asked) is charged in
    its destination's inbox."""
    frame = sender.new_frame(sender.node_id, body, receipt=True)
    return mesh.stored_charge(len(frame.seal(sender.identity)) + len(body))


async def test_429_retry_after_is_honoured_until_the_frame_expires(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    quota = inbox_charge(a, b"x" * 10)
    b = await memory_nodes.open("b", max_inbox_bytes=quota, max_inbox_bytes_per_origin=2 * quota)
    await peer(a, b)
    posts = record(a)
    start = trio.current_time()
    sent = await a.send(b.node_id, b"x" * 11, ttl=100, receipt=True)
    with trio.fail_after(200):
        trace = await a.delivered(sent.id)
    # Attempts at 0, 30, 60 and 90 s (b's Retry-After: 30); at 120 it has expired.
    tries = [post for post in posts.to(b) if post.messages]
    assert [post.at - start for post in tries] == pytest.approx([0, 30, 60, 90])
    assert all(post.results is None for post in tries)
    assert tries[0].problem is not None
    assert "429 from http://b:8470/ptth/v1/frames" in tries[0].problem
    assert f"quota of {quota}" in tries[0].problem
    assert b.statistics.requests_refused == 4
    # It expired in a's custody: dropped there, with the reason in its trace.
    assert (trace.state, trace.by) == ("dropped", a.node_id)
    assert trace.why is not None
    assert trace.why.startswith(f"expired: expired at {a.node_id.short} (queued for ")
    assert 100 <= trio.current_time() - start <= 100 + 15  # the next tick
    assert a.store.statistics().queued_frames == 0
    assert await drain(b) == []


async def test_429_then_delivered_once_the_receiver_makes_room(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    quota = inbox_charge(a, b"12345678")
    b = await memory_nodes.open("b", max_inbox_bytes=quota, max_inbox_bytes_per_origin=2 * quota)
    await peer(a, b)
    with trio.fail_after(10):
        await delivered(a, b, b"12345678")
    acked_at: list[float] = []

    async def make_room() -> None:
        await trio.sleep(10)
        async for message in b.inbox(follow=False):
            await message.ack()
        acked_at.append(trio.current_time())

    posts = record(a)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(make_room)
        with trio.fail_after(60):
            trace = await delivered(a, b, b"12345")
    assert trace.hops == 1
    assert acked_at == [pytest.approx(start + 10)]
    tries = [post for post in posts.to(b) if post.messages]
    assert [post.at - start for post in tries] == pytest.approx([0, 30])  # Retry-After
    assert [post.results is None for post in tries] == [True, False]
    assert await drain(b) == [b"12345"]


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("7", 7, 7),
        ("100000", 300, 300),  # capped: a peer cannot park us for a day
        (None, 0.1, 0.3),  # backoff: retry_initial 0.2, jitter x0.5..1.5
        ("Wed, 21 Oct 2037 07:28:00 GMT", 0.1, 0.3),  # dates are not honoured
        ("-5", 0.1, 0.3),
    ],
)
async def test_retry_after_values(
    memory_nodes: NodeFactory,
    front: Front,
    autojump_clock: trio.testing.MockClock,
    retry_after: str | None,
    low: float,
    high: float,
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    front.target = b
    headers = [] if retry_after is None else [("retry-after", retry_after)]
    front.answers = [Response.text(429, "slow down", headers)]
    await point(a, b.identity, front.url)
    await a.send(b.node_id, b"hello")
    with trio.fail_after(600):
        assert (await next_message(b)).body == b"hello"
    assert front.statuses == [429, 200]
    (gap,) = front.gaps
    assert low <= gap <= high


# -- 503: the receiver is shutting down ----------------------------------------------


async def test_503_from_a_shutting_down_receiver_is_retried(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    async with memory_nodes.session("b", admission="open") as b:
        front.target = b
        assert b.server is not None
        b.server.shutdown()
        await point(a, b.identity, front.url)
        await a.send(b.node_id, b"across a restart")
        await front.wait_for(2)
    async with memory_nodes.session("b", admission="open") as b:
        front.target = b
        with trio.fail_after(30):
            assert (await next_message(b)).body == b"across a restart"
        assert await drain(b) == [b"across a restart"]
    assert front.statuses == [503, 503, 200]
    assert front.gaps == [pytest.approx(5), pytest.approx(5)]  # its Retry-After: 5


# -- 503: the receiver is starting ---------------------------------------------------


async def test_503_from_a_receiver_not_ready_is_retried_after_a_second(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    # Until its mesh has loaded routes, neighbours, interests and named subscriptions
    # from its store, a node refuses frames it would decide without them.
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    front.target = b
    b.mesh.ready = False  # as in the moment between its server starting and that
    posts = record(a)
    await point(a, b.identity, front.url)
    await a.send(b.node_id, b"after the start")
    await front.wait_for(2)
    b.mesh.ready = True
    with trio.fail_after(30):
        assert (await next_message(b)).body == b"after the start"
    assert front.statuses == [503, 503, 200]
    assert front.gaps == [pytest.approx(1), pytest.approx(1)]  # its Retry-After: 1
    assert posts.failures(b)[0].problem == f"503 from {front.url}{FRAMES_PATH}: {STARTING}"


async def test_a_node_is_ready_for_frames_once_its_mesh_has_loaded(
    memory_nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its server is up before its mesh has read the store: frames wait for the mesh.
    ready_when_loading: list[bool] = []
    serve = MeshRuntime.serve

    async def watched(self: MeshRuntime, *args: Any, **kwargs: Any) -> None:
        ready_when_loading.append(self.ready)
        await serve(self, *args, **kwargs)

    monkeypatch.setattr(MeshRuntime, "serve", watched)
    b = await memory_nodes.open("b")
    assert ready_when_loading == [False]
    assert b.mesh.ready


# -- whole requests refused, and answers not from the destination ----------------------


async def test_a_request_refused_whole_is_retried_with_back_off(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    front.target = b
    front.strip_signature = True  # b really answers: unsigned requests are refused
    posts = record(a)
    await point(a, b.identity, front.url)
    sent = await a.send(b.node_id, b"unsigned, then signed")
    with trio.fail_after(60):
        await front.wait_for(3)
    # Not a refusal of the frame: the frames stay, the link backs off (0.2 s doubling).
    front.strip_signature = False
    with trio.fail_after(60):
        assert (await next_message(b)).body == b"unsigned, then signed"
    assert front.statuses == [401, 401, 401, 200]
    for n, gap in enumerate(front.gaps):
        assert 0.1 * 2**n <= gap <= 0.3 * 2**n
    problem = posts.failures(b)[0].problem
    assert problem is not None
    assert f"{b.node_id.short} refused the request: 401 request not authenticated" in problem
    assert b.statistics.requests_refused == 3
    await trio.testing.wait_all_tasks_blocked()  # a has had b's answer
    trace = await a.trace(sent.id)
    assert trace is not None
    assert (trace.state, trace.first_hop) == ("forwarded", b.node_id)


@pytest.mark.parametrize("status", [400, 404, 413, 415])
async def test_other_4xx_are_retried_too(
    memory_nodes: NodeFactory,
    front: Front,
    autojump_clock: trio.testing.MockClock,
    status: int,
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    front.target = b
    front.answers = [Response.text(status, "no")]
    posts = record(a)
    await point(a, b.identity, front.url)
    await a.send(b.node_id, b"x")
    with trio.fail_after(60):
        assert (await next_message(b)).body == b"x"
    assert front.statuses == [status, 200]
    (failure,) = posts.failures(b)
    assert failure.problem == f"{b.node_id.short} refused the request: {status} no"


async def test_an_answer_not_signed_by_the_destination_is_retried_until_expiry(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    c = await memory_nodes.open("c", admission="open")  # it answers, for itself
    posts = record(a)
    # b's record points at c's endpoint (as if c had taken over b's old address).
    await point(a, b.identity, c.endpoints[0])
    sent = await a.send(b.node_id, b"for b only", ttl=60, receipt=True)
    with trio.fail_after(120):
        trace = await a.delivered(sent.id)
    assert trace.state == "dropped"
    assert trace.why is not None
    assert trace.why.startswith(f"expired: expired at {a.node_id.short}")
    failures = posts.failures(b)
    assert len(failures) >= 5
    assert all(post.results is None for post in posts.to(b))
    assert all(
        "bad answer from http://c:8470/ptth/v1/frames" in (post.problem or "") for post in failures
    )
    # c saw them, and took none (a stranger's frame for another node).
    assert c.statistics.frames_rejected >= len(failures)
    assert c.store.statistics().queued_frames == 0
    assert await drain(c) == []
    assert await drain(b) == []


async def test_an_answer_that_is_not_results_is_retried(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    front.target = b
    front.answers = [Response(200, [("content-type", "application/cbor")], b"\xa0")]
    posts = record(a)
    await point(a, b.identity, front.url)
    await a.send(b.node_id, b"eventually")
    with trio.fail_after(60):
        assert (await next_message(b)).body == b"eventually"
    assert front.statuses == [200, 200]
    (failure,) = posts.failures(b)
    assert failure.problem is not None
    assert failure.problem.startswith(f"bad answer from {front.url}/ptth/v1/frames")
    assert await drain(b) == [b"eventually"]


# -- endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("dead", [1, 2])
async def test_endpoints_rotate_on_failure(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, dead: int
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    dead_ends = [f"http://nobody-{n}:8470" for n in range(dead)]
    start = trio.current_time()
    await point(a, b.identity, *dead_ends, b.endpoints[0])
    await a.send(b.node_id, b"the long way")  # in one batch with a's greeting
    with trio.fail_after(10):
        await next_message(b)
    # Each dead endpoint is tried once, at once (no backoff within a round) ...
    assert (a.statistics.send_requests, a.statistics.send_retries) == (dead + 1, 0)
    assert trio.current_time() - start < a.config.retry_initial
    # ... and later batches start at the endpoint that answered (once it has: b's
    # application may have the frame before a has b's answer).
    await trio.testing.wait_all_tasks_blocked()
    client = a.mesh.frame_client
    tried: list[str] = []
    post_once = client._post_once

    async def recorded(dst: crypto.NodeId, url: str, body: bytes, count: int) -> list[mesh.Result]:
        tried.append(url)
        return await post_once(dst, url, body, count)

    client._post_once = recorded  # type: ignore[method-assign]
    await a.send(b.node_id, b"straight there")
    with trio.fail_after(10):
        await messages(b, 2)
    assert tried
    assert set(tried) == {b.endpoints[0] + FRAMES_PATH}
    assert await drain(b) == [b"the long way", b"straight there"]


async def test_the_first_endpoint_is_tried_first(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    await point(a, b.identity, b.endpoints[0], front.url)
    await a.send(b.node_id, b"direct")
    with trio.fail_after(10):
        await next_message(b)
    assert front.log == []
    assert (a.statistics.send_requests, a.statistics.send_retries) == (1, 0)


# -- batches -------------------------------------------------------------------------


def _bad(a: Node, b: Node, c: Node, kind: str) -> tuple[crypto.Frame, bytes]:
    """A frame of ``a``'s that ``b`` refuses, for the reason ``kind``."""
    if kind == "bad-signature":
        frame = a.new_frame(b.node_id, b"tampered", receipt=True)
        envelope = bytearray(frame.seal(a.identity))
        envelope[-1] ^= 1
        return frame, bytes(envelope)
    if kind == "hop-limit":  # one hop allowed: b may take it, not pass it on
        frame = dataclasses.replace(a.new_frame(c.node_id, b"too far", receipt=True), hops=1)
        return frame, frame.seal(a.identity)
    assert kind == "policy"  # b forwards nothing
    frame = a.new_frame(c.node_id, b"not through b", receipt=True)
    return frame, frame.seal(a.identity)


@pytest.mark.parametrize("kind", ["bad-signature", "hop-limit", "policy"])
async def test_one_refused_frame_in_a_batch_is_dropped_alone(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open(
        "b", forward_policy="off" if kind == "policy" else "neighbours", admission="open"
    )
    c = await memory_nodes.open("c")
    await peer(a, b)
    await peer(b, c)
    with trio.fail_after(60):  # settled (delivered, or dropped by policy): a knows c
        await a.delivered((await a.send(c.node_id, b"warm-up", receipt=True)).id)
    posts = record(a)
    good = [a.new_frame(b.node_id, b"%d" % n, receipt=True) for n in range(6)]
    bad, bad_envelope = _bad(a, b, c, kind)
    batch = [(frame, frame.seal(a.identity)) for frame in good]
    batch.insert(3, (bad, bad_envelope))
    sent = await a.send_sealed(batch)
    assert [s.next_hop for s in sent] == [b.node_id] * 7
    with trio.fail_after(60):
        traces = [await a.delivered(s.id) for s in sent]
    (post,) = [post for post in posts.to(b) if post.messages]  # one batch carried all
    assert len([kind for kind in post.kinds if kind != "ann"]) == 7
    assert post.results is not None
    assert [r.code for r in post.results if not r.ok] == [kind]
    dropped = traces.pop(3)
    assert [t.state for t in traces] == ["delivered"] * 6
    assert (dropped.state, dropped.by) == ("dropped", b.node_id)
    assert dropped.why is not None
    assert dropped.why.startswith(f"{kind}: refused by {b.node_id.short}: ")
    assert sorted(await drain(b)) == sorted(b"%d" % n for n in range(6))
    assert (a.statistics.sent_rejected, a.statistics.frames_dropped) == (
        1 + (kind == "policy"),
        1 + (kind == "policy"),
    )
    # Not retried: it left a's queue with its refusal.
    await trio.sleep(120)
    assert [p for p in posts.to(b) if bad_envelope in [w.envelope for w in p.frames]] == [post]
    assert a.store.statistics().queued_frames == 0


async def test_a_resent_frame_is_a_duplicate_not_an_error(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b", admission="open")
    await peer(a, b)
    frame = a.new_frame(b.node_id, b"once", receipt=True)
    envelope = frame.seal(a.identity)
    posts = record(a)

    def outcomes() -> list[mesh.Outcome]:
        return [
            result.outcome
            for post in posts.to(b)
            for wire, result in zip(post.frames, post.results or (), strict=False)
            if wire.envelope == envelope
        ]

    with trio.fail_after(10):
        await a.send_sealed([(frame, envelope)])
        assert (await a.delivered(frame.id)).state == "delivered"
        # The same frame again (as after a crash between b's answer and a's commit).
        await a.send_sealed([(frame, envelope)])
        await posts.wait_for(lambda: len(outcomes()) == 2)
    assert outcomes() == [mesh.Outcome.ACCEPTED, mesh.Outcome.DUPLICATE]
    await trio.testing.wait_all_tasks_blocked()
    assert (a.statistics.sent_accepted, a.statistics.sent_duplicate) == (1, 1)
    assert a.store.statistics().queued_frames == 0
    assert await drain(b) == [b"once"]


async def test_at_most_a_window_of_requests_in_flight_per_neighbour(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", admission="open")
    await peer(a, b)
    with trio.fail_after(10):
        await delivered(a, b, b"warm-up")  # greetings done
    assert b.server is not None
    inner = b.server.handler
    held = trio.Event()
    release = trio.Event()
    in_flight = 0
    most = 0

    async def counting(request: Request) -> Response:
        nonlocal in_flight, most
        if request.path != "/ptth/v1/frames":
            return await inner(request)
        in_flight += 1
        most = max(most, in_flight)
        held.set()
        await release.wait()
        try:
            return await inner(request)
        finally:
            in_flight -= 1

    b.server.handler = counting
    posts = record(a)

    def sizes() -> list[int]:
        return [post.messages for post in posts.to(b) if post.results and post.messages]

    await a.send(b.node_id, b"first, alone")
    await held.wait()  # the first request is at b, held there
    # Light load: a few frames, each on its own, open no second request (each would
    # cost both nodes a commit and a signature): they wait for the first.
    for i in range(EXTRA_AFTER - 1):
        await a.send(b.node_id, b"alone %d" % i)
        await trio.testing.wait_all_tasks_blocked()
    assert most == 1
    # A backlog opens the window: full batches go at once, up to WINDOW in flight.
    backlog = WINDOW * BATCH_SIZE
    for i in range(backlog):  # at once (the store is inline here: no checkpoint between)
        await a.send(b.node_id, b"%d" % i)
    await trio.testing.wait_all_tasks_blocked()
    assert most == WINDOW
    release.set()
    total = 1 + EXTRA_AFTER - 1 + backlog
    with trio.fail_after(60):
        await messages(b, total + 1)
        await posts.wait_for(lambda: sum(sizes()) == total)
    assert most == WINDOW
    # The first alone; then full batches (the light-load frames first) while the window
    # was open, and what was left once it freed, in full batches and a last one.
    left = total - 1 - (WINDOW - 1) * BATCH_SIZE
    expected = [1] + [BATCH_SIZE] * (WINDOW - 1 + left // BATCH_SIZE) + [left % BATCH_SIZE]
    assert sorted(sizes()) == sorted(n for n in expected if n)


# -- frames handed over instead of read back ----------------------------------------


async def test_frames_go_as_handed_over_without_reading_the_store(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # A chain a - b - c: once a forwarder has read what was queued, what the node
    # queues later (sent here, or taken from a neighbour on its way) is handed over as
    # committed, and goes without a read of the store; each arrives once.
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await peer(a, b)
    await peer(b, c)
    with trio.fail_after(30):
        await delivered(a, c, b"warm-up")
    to_b, to_c = a.mesh.forwarders[b.node_id], b.mesh.forwarders[c.node_id]
    reads = (to_b.batches_read, to_c.batches_read)
    for i in range(20):
        with trio.fail_after(30):
            await delivered(a, c, b"one at a time %d" % i)
    got = await messages(c, 21)
    assert sorted(m.body for m in got) == sorted(
        [b"warm-up"] + [b"one at a time %d" % i for i in range(20)]
    )
    assert (to_b.batches_read, to_c.batches_read) == reads  # no read of the store
    assert to_b.batches_handed >= 20
    assert to_c.batches_handed >= 20


async def test_frames_queued_without_being_handed_over_are_read(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # Frames queued behind the forwarder's back (here straight into the store, then a
    # poke; in a node: a reroute, a drop receipt) are read from the store and sent;
    # those handed over meanwhile are not sent twice.
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    await peer(a, b)
    with trio.fail_after(30):
        await delivered(a, b, b"warm-up")
    forwarder = a.mesh.forwarders[b.node_id]
    posts = record(a)
    frames = [a.new_frame(b.node_id, b"behind %d" % i) for i in range(3)]
    outgoing = [
        mesh.Outgoing.of(frame, frame.seal(a.identity), hops=0, next_hop=b.node_id)
        for frame in frames
    ]
    a.store.enqueue(outgoing, now=a.clock())
    forwarder.poke(len(outgoing))
    await a.send(b.node_id, b"handed over")
    with trio.fail_after(30):
        got = await messages(b, 5)
    assert sorted(m.body for m in got) == sorted(
        [b"warm-up", b"handed over"] + [b"behind %d" % i for i in range(3)]
    )

    def sent() -> int:
        return sum(post.messages for post in posts.to(b) if post.results)

    with trio.fail_after(30):
        await posts.wait_for(lambda: sent() >= 4)
    await trio.testing.wait_all_tasks_blocked()
    assert sent() == 4  # each once
    assert forwarder.batches_read >= 1


NEIGHBOUR = crypto.Identity.generate().node_id


def row(seq: int, size: int = 9) -> mesh.Queued:
    """A frame queued for NEIGHBOUR, ``size`` bytes of envelope."""
    return mesh.Queued(
        seq, NEIGHBOUR, b"i", crypto.Kind.MSG, NEIGHBOUR, 10**15, 1, NEIGHBOUR, None, 0, size, b"e"
    )


class Host:
    """A forwarder's host whose store holds ``rows``; every frame handed over is sendable."""

    frame_client: Any = None

    def __init__(self, rows: list[mesh.Queued] | None = None) -> None:
        self.rows = rows or []
        self.reads = 0

    def endpoints_of(self, node: crypto.NodeId) -> list[str]:
        return ["http://b"]

    async def queued_for(
        self,
        node: crypto.NodeId,
        limit: int,
        *,
        after: int = 0,
        exclude: Collection[crypto.NodeId] = (),
    ) -> list[mesh.Queued]:
        self.reads += 1
        rows = [item for item in self.rows if item.seq > after and item.src not in exclude]
        return rows[:limit]

    def sendable(self, node: crypto.NodeId, queued: list[mesh.Queued]) -> list[mesh.Queued]:
        return queued


def test_handed_frames_go_in_seq_order_and_an_invalidation_reads_them_again() -> None:
    # Commits may be reported out of their order; a batch takes them by seq. Invalidated
    # with frames handed over and unsent, the next read starts before the oldest.
    forwarder = Forwarder(Host(), NEIGHBOUR)  # type: ignore[arg-type]
    forwarder._complete = True
    forwarder._cursor = 10
    forwarder.hand([row(13), row(12)])
    forwarder.hand([row(11)])
    batch = trio.run(forwarder._next_batch)
    assert batch is not None
    assert [item.seq for item in batch[2]] == [11, 12, 13]
    assert forwarder._cursor == 13
    forwarder.hand([row(15), row(14)])
    forwarder.invalidate()
    assert forwarder._cursor == 13  # 14 and 15 are above it: read again from there
    assert not forwarder._complete
    assert forwarder._handed == []
    forwarder._complete = True
    forwarder.hand([row(9)])  # reported late, below the cursor
    forwarder.invalidate()
    assert forwarder._cursor == 8


def test_memory_for_frames_handed_over_is_bounded() -> None:
    # Past MAX_HANDED frames or MAX_HANDED_BYTES of envelopes, the forwarder lets go of
    # them and reads the store again: large frames sent through a node cannot make its
    # forwarders hold more than a window's worth each.
    forwarder = Forwarder(Host(), NEIGHBOUR)  # type: ignore[arg-type]
    forwarder._complete = True
    big = MAX_HANDED_BYTES // 3 + 1
    forwarder.hand([row(1, big), row(2, big)])
    assert forwarder._complete
    assert forwarder._handed_bytes == 2 * big
    forwarder.hand([row(3, big)])
    assert not forwarder._complete
    assert (forwarder._handed, forwarder._handed_bytes) == ([], 0)
    forwarder._complete = True
    forwarder.hand([row(10 + i, 1) for i in range(MAX_HANDED + 1)])
    assert not forwarder._complete
    assert forwarder._handed == []


async def test_a_frame_handed_over_after_a_read_that_got_it_goes_once() -> None:
    # The store's thread may finish a commit and then a read that sees it, and the
    # read's task run first: the frame comes in the read, then is handed over. It is
    # sent once; one handed over that no read got goes as usual.
    forwarder = Forwarder(Host([row(5)]), NEIGHBOUR)  # type: ignore[arg-type]
    first = await forwarder._next_batch()
    assert first is not None
    assert [item.seq for item in first[2]] == [5]
    assert forwarder._complete
    forwarder.hand([row(5), row(6)])  # 5 reported late: the read had it
    second = await forwarder._next_batch()
    assert second is not None
    assert [item.seq for item in second[2]] == [6]
    assert await forwarder._next_batch() is None


async def test_frames_rerouted_here_go_while_newer_ones_are_under_way() -> None:
    # A reroute moves frames queued long ago (lower seqs) into a busy neighbour's
    # queue. They go in the next batch, not after everything under way has landed,
    # and what is under way is not sent twice. (Before, a read past the newest frame
    # under way found nothing, took the queue for complete, and the frames stayed.)
    host = Host([row(20), row(21)])
    forwarder = Forwarder(host, NEIGHBOUR)  # type: ignore[arg-type]
    first = await forwarder._next_batch()
    assert first is not None
    assert [item.seq for item in first[2]] == [20, 21]
    host.rows = [row(5), row(6), row(20), row(21)]  # 20 and 21 are still under way
    forwarder.rewind(2)
    second = await forwarder._next_batch()
    assert second is not None
    assert [item.seq for item in second[2]] == [5, 6]
    assert await forwarder._next_batch() is None


async def test_a_failed_batch_is_read_again_while_a_later_one_is_under_way() -> None:
    host = Host([row(1), row(2)])
    forwarder = Forwarder(host, NEIGHBOUR)  # type: ignore[arg-type]
    first = await forwarder._next_batch()
    assert first is not None
    host.rows += [row(3), row(4)]
    forwarder.poke(2)
    second = await forwarder._next_batch()
    assert second is not None
    assert [item.seq for item in second[2]] == [3, 4]
    forwarder._landed(first[2], back=True)  # its POST failed: 1 and 2 are queued still
    again = await forwarder._next_batch()
    assert again is not None
    assert [item.seq for item in again[2]] == [1, 2]
    assert forwarder._complete  # everything queued is under way
    assert await forwarder._next_batch() is None


async def test_a_batch_refused_frame_by_frame_is_dropped_in_three_store_transactions(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A neighbour that forwards for nobody refuses every frame of a batch for beyond it,
    alone. Taking them out of the queue and telling their origins cost the store a
    transaction per frame and one more per message (synced: a refused batch of 250 kept
    the store's thread busy while the node's sends waited); now one for all of each,
    and each trace says the same as before."""
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", forward_policy="off", admission="open")
    c = await memory_nodes.open("c")
    await peer(a, b)
    await peer(b, c)
    with trio.fail_after(60):  # settled (dropped by policy): a knows c
        await a.delivered((await a.send(c.node_id, b"warm-up", receipt=True)).id)
    transactions = 0
    transaction = a.store._transaction

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return transaction(*args, **kwargs)

    frames = [a.new_frame(c.node_id, b"x" * 200, receipt=True) for _ in range(20)]
    dropped_before = a.statistics.frames_dropped
    sent = await a.send_sealed([(frame, frame.seal(a.identity)) for frame in frames])
    assert {s.next_hop for s in sent} == {b.node_id}
    monkeypatch.setattr(a.store, "_transaction", counted)
    with trio.fail_after(60):
        traces = [await a.delivered(s.id) for s in sent]
    assert {(t.state, t.by) for t in traces} == {("dropped", b.node_id)}
    assert all(t.why and t.why.startswith(f"policy: refused by {b.node_id.short}") for t in traces)
    assert a.statistics.frames_dropped - dropped_before == 20
    assert a.store.statistics().queued_frames == 0
    # Handed on (none), taken out, traced: three, whatever else the node committed.
    assert transactions <= 3 + 2, transactions


async def test_frames_refused_for_want_of_room_are_held_back_not_dropped(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """A destination whose application does not keep up refuses its senders' frames past
    their share of its inbox (store-full), frame by frame. The hop before keeps them and
    holds back that origin's frames for it a while, then sends them again: once the
    application has read, every one is delivered, none dropped."""
    a = await memory_nodes.open("a")
    quota = 1500  # room for one message from a at a time (~800 bytes charged each)
    b = await memory_nodes.open("b", max_inbox_bytes_per_origin=quota)
    await peer(a, b)
    frames = [a.new_frame(b.node_id, b"%d" % n * 100, receipt=True) for n in range(5)]
    sent = await a.send_sealed([(frame, frame.seal(a.identity)) for frame in frames])
    with trio.fail_after(60):
        while a.statistics.frames_held_back == 0:  # noqa: ASYNC110
            await trio.sleep(0.1)  # virtual time: the first POST's answer
    assert a.statistics.frames_dropped == 0
    assert a.store.statistics().queued_frames == 4  # kept, not dropped
    bodies: list[bytes] = []
    with trio.fail_after(600):
        while len(bodies) < 5:
            (message,) = await messages(b, 1)
            bodies.append(message.body)
            await message.ack()  # room again: the next goes once its hold ends
        traces = [await a.delivered(s.id) for s in sent]
    assert sorted(bodies) == sorted(b"%d" % n * 100 for n in range(5))
    assert {t.state for t in traces} == {"delivered"}
    assert a.statistics.frames_dropped == 0
    assert a.statistics.frames_held_back >= 4


async def test_an_origin_held_back_does_not_hold_up_the_others(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """Relaying for c while b has no room for its own frames, a sends c's on: only the
    origin b has no room for waits."""
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", max_inbox_bytes_per_origin=1500)
    c = await memory_nodes.open("c")
    await peer(a, b)
    await peer(c, a)
    with trio.fail_after(60):
        await delivered(c, b, b"c knows the way")
    assert len(await messages(b, 1)) == 1
    await drain(b)
    # Fill b's share for a, and queue more of a's behind than a batch holds: held back
    # at a (read, they would fill every batch ahead of c's).
    own = [a.new_frame(b.node_id, b"a%d" % n) for n in range(BATCH_SIZE + 50)]
    await a.send_sealed([(frame, frame.seal(a.identity)) for frame in own])
    with trio.fail_after(60):
        while a.statistics.frames_held_back == 0:  # noqa: ASYNC110
            await trio.sleep(0.1)
    # c's message goes through a while a's own wait, and b's application reads it first.
    with trio.fail_after(60):
        await delivered(c, b, b"from c")
    arrived = [message.body for message in await messages(b, 2)]
    assert b"from c" in arrived
    assert a.statistics.frames_dropped == 0


def test_an_origin_held_back_is_skipped_read_or_handed_and_read_again_after() -> None:
    """While an origin is held back, neither a read of the store nor the frames handed
    over put its frames in a batch (its new frames would otherwise cost a read of the
    store each, past all its queued ones); when the hold ends the queue is read again
    from its start."""
    other = crypto.Identity.generate().node_id

    def of(seq: int, src: crypto.NodeId) -> mesh.Queued:
        return dataclasses.replace(row(seq), src=src)

    host = Host([of(1, NEIGHBOUR), of(2, other), of(3, NEIGHBOUR)])
    forwarder = Forwarder(host, NEIGHBOUR)  # type: ignore[arg-type]

    async def main() -> None:
        first = await forwarder._next_batch()
        assert first is not None
        assert [item.seq for item in first[2]] == [1, 2, 3]
        forwarder._landed(first[2])
        assert forwarder.hold_back([of(1, NEIGHBOUR), of(3, NEIGHBOUR)]) == []
        host.rows = [of(1, NEIGHBOUR), of(3, NEIGHBOUR)]  # 2 was taken
        assert await forwarder._next_batch() is None  # read: only the held origin's
        assert forwarder._complete  # ... and that was all but them
        reads = host.reads
        forwarder.hand([of(4, NEIGHBOUR), of(5, other)])
        host.rows += [of(4, NEIGHBOUR), of(5, other)]
        batch = await forwarder._next_batch()
        assert batch is not None
        assert [item.seq for item in batch[2]] == [5]  # from those handed over
        assert host.reads == reads
        forwarder._landed(batch[2])
        host.rows.remove(of(5, other))
        await trio.sleep(HOLD_BACK)  # the hold ends: read again from the start
        batch = await forwarder._next_batch()
        assert batch is not None
        assert [item.seq for item in batch[2]] == [1, 3, 4]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_only_messages_receipts_and_publications_are_held_back(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """An interest (or a DHT message) refused store-full is past its node's quotas, not
    short of room for a while: holding back its origin would keep that origin's messages
    waiting for nothing. Such frames are dropped as before."""
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    full = mesh.Result.rejected(mesh.Reason.STORE_FULL, "full here")
    forwarder = a.mesh._forwarder(b.node_id)
    for kind in (crypto.Kind.SUB, crypto.Kind.UNSUB, crypto.Kind.DHT):
        item = dataclasses.replace(row(1), kind=kind, src=a.node_id)
        await a.mesh.handed_on(b.node_id, [], [item], [full])
        assert forwarder._held == {}, kind
    assert a.statistics.frames_held_back == 0
    for kind in (crypto.Kind.MSG, crypto.Kind.RCPT, crypto.Kind.PUB):
        item = dataclasses.replace(row(1), kind=kind, src=a.node_id)
        await a.mesh.handed_on(b.node_id, [], [item], [full])
        assert set(forwarder._held) == {a.node_id}, kind
        forwarder._held.clear()
    assert a.statistics.frames_held_back == 3


async def test_past_the_origins_it_can_hold_back_such_frames_are_dropped(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forwarder holds back at most MAX_HELD_ORIGINS origins: past it, a refusal for
    want of room is a refusal for good, counted, dropped and traced as any other."""
    monkeypatch.setattr(node._forwarder, "MAX_HELD_ORIGINS", 0)
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", max_inbox_bytes_per_origin=1500)  # one message's room
    await peer(a, b)
    frames = [a.new_frame(b.node_id, b"%d" % n * 100, receipt=True) for n in range(5)]
    sent = await a.send_sealed([(frame, frame.seal(a.identity)) for frame in frames])
    with trio.fail_after(60):
        traces = [await a.delivered(s.id) for s in sent]
    refused = [t for t in traces if t.state == "dropped"]
    assert len(refused) == 4
    assert all(t.why and t.why.startswith("store-full: refused by") for t in refused)
    assert a.statistics.frames_held_back == 0
    assert (a.statistics.sent_rejected, a.statistics.frames_dropped) == (4, 4)
    assert a.store.statistics().queued_frames == 0
