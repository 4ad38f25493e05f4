"""The sending side of a node (Node.send and its per-peer sender): what it retries, how
long it waits, what it gives up on, and how one bad frame in a batch fails alone.

A :class:`Front` stands on its own address in front of a receiving node: it hands
requests to the node's handler (so answers are really signed by the node) or answers
for it, and logs when each request came, on the virtual clock.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import trio
import trio.testing

import crypto
import mesh
from node import DeliveryFailed, MemoryNetwork, Node, Rejected, Request, Response, Server
from tests.helpers import NodeFactory, peer

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


def point(sender: Node, identity: crypto.Identity, *endpoints: str, seq: int = 1) -> None:
    """Make ``sender`` believe ``identity``'s node is reachable at ``endpoints``."""
    now = sender.clock()
    address = crypto.sign_address(identity, seq=seq, endpoints=endpoints, exp=now + 3_600_000)
    sender.data.peers.add(address, now=now)


async def drain(node: Node) -> list[bytes]:
    bodies = []
    async for message in node.inbox(follow=False):
        bodies.append(message.body)
        await message.ack()
    return bodies


# -- 429: the receiver's store is full -----------------------------------------------


async def test_429_retry_after_is_honoured_until_send_timeout(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", send_timeout=100)
    b = await memory_nodes.open("b", max_inbox_bytes=10)
    peer(a, b)
    start = trio.current_time()
    with pytest.raises(DeliveryFailed, match=r"after 4 attempts: 429 from .*quota of 10"):
        await a.send(b.node_id, b"x" * 11)
    # Attempts at 0, 30, 60 and 90 s; one more at 120 would pass the 100 s budget.
    assert trio.current_time() - start == pytest.approx(90)
    assert (a.statistics.send_requests, a.statistics.send_retries) == (4, 3)
    assert a.statistics.send_failures == 1
    assert b.statistics.requests_refused == 4


async def test_429_shorter_send_timeout_than_retry_after_fails_at_once(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", send_timeout=20)
    b = await memory_nodes.open("b", max_inbox_bytes=10)
    peer(a, b)
    start = trio.current_time()
    with pytest.raises(DeliveryFailed, match="unreachable for 20 s after 1 attempts: 429"):
        await a.send(b.node_id, b"x" * 11)
    assert trio.current_time() == start  # no point waiting 30 s with 20 s to go


async def test_429_then_delivered_once_the_receiver_makes_room(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", max_inbox_bytes=10)
    peer(a, b)
    assert (await a.send(b.node_id, b"12345678")).ok
    acked_at: list[float] = []

    async def make_room() -> None:
        await trio.sleep(10)
        async for message in b.inbox(follow=False):
            await message.ack()
        acked_at.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(make_room)
        result = await a.send(b.node_id, b"12345")
    assert result.outcome is mesh.Outcome.ACCEPTED
    assert acked_at == [pytest.approx(start + 10)]
    assert trio.current_time() - start == pytest.approx(30)  # Retry-After, not backoff
    assert a.statistics.send_retries == 1
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
    a = await memory_nodes.open("a", send_timeout=600)
    b = await memory_nodes.open("b")
    point(a, b.identity, front.url)
    front.target = b
    headers = [] if retry_after is None else [("retry-after", retry_after)]
    front.answers = [Response.text(429, "slow down", headers)]
    assert (await a.send(b.node_id, b"hello")).ok
    assert front.statuses == [429, 200]
    (gap,) = front.gaps
    assert low <= gap <= high


# -- 503: the receiver is shutting down ----------------------------------------------


async def test_503_from_a_shutting_down_receiver_is_retried(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    delivered = trio.Event()
    results: list[mesh.Result] = []

    async def send(dst: crypto.NodeId) -> None:
        results.append(await a.send(dst, b"across a restart"))
        delivered.set()

    async with trio.open_nursery() as nursery:
        async with memory_nodes.session("b") as b:
            point(a, b.identity, front.url)
            front.target = b
            assert b.server is not None
            b.server.shutdown()
            nursery.start_soon(send, b.node_id)
            await front.wait_for(2)
        async with memory_nodes.session("b") as b:
            front.target = b
            await delivered.wait()
            assert await drain(b) == [b"across a restart"]
    assert results[0].outcome is mesh.Outcome.ACCEPTED
    assert front.statuses == [503, 503, 200]
    assert front.gaps == [pytest.approx(5), pytest.approx(5)]  # its Retry-After: 5


# -- answers that are final, and answers that are not from the destination -----------


async def test_401_fails_at_once_without_retry(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    point(a, b.identity, front.url)
    front.target = b
    front.strip_signature = True  # b really answers: unsigned requests are refused
    start = trio.current_time()
    with pytest.raises(DeliveryFailed, match="refused the request: 401 request not authent"):
        await a.send(b.node_id, b"unsigned")
    assert front.statuses == [401]
    assert (a.statistics.send_requests, a.statistics.send_retries) == (1, 0)
    assert trio.current_time() == start
    assert b.statistics.requests_refused == 1


@pytest.mark.parametrize("status", [400, 404, 413, 415])
async def test_other_4xx_are_final(
    memory_nodes: NodeFactory,
    front: Front,
    autojump_clock: trio.testing.MockClock,
    status: int,
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    point(a, b.identity, front.url)
    front.answers = [Response.text(status, "no")]
    with pytest.raises(DeliveryFailed, match=f"refused the request: {status} no"):
        await a.send(b.node_id, b"x")
    assert front.statuses == [status]


async def test_an_answer_not_signed_by_the_destination_is_retried_then_fails(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", send_timeout=5)
    b = await memory_nodes.open("b")
    c = await memory_nodes.open("c")
    # b's record points at c's endpoint (as if c had taken over b's old address).
    point(a, b.identity, c.endpoints[0])
    with pytest.raises(DeliveryFailed, match="bad answer from http://c:8470/ptth/v1/frames"):
        await a.send(b.node_id, b"for b only")
    attempts = a.statistics.send_requests
    assert attempts >= 3
    assert a.statistics.send_retries == attempts - 1
    assert c.statistics.frames_rejected == attempts  # c saw them, and took none
    assert await drain(c) == []
    assert await drain(b) == []


async def test_an_answer_that_is_not_results_is_retried(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    point(a, b.identity, front.url)
    front.target = b
    front.answers = [Response(200, [("content-type", "application/cbor")], b"\xa0")]
    assert (await a.send(b.node_id, b"eventually")).ok
    assert front.statuses == [200, 200]
    assert a.statistics.send_retries == 1
    assert await drain(b) == [b"eventually"]


# -- endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("dead", [1, 2])
async def test_endpoints_rotate_on_failure(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, dead: int
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    dead_ends = [f"http://nobody-{n}:8470" for n in range(dead)]
    point(a, b.identity, *dead_ends, b.endpoints[0])
    start = trio.current_time()
    assert (await a.send(b.node_id, b"the long way")).ok
    # Each dead endpoint is tried once, at once (no backoff within a round) ...
    assert (a.statistics.send_requests, a.statistics.send_retries) == (dead + 1, 0)
    assert trio.current_time() - start < a.config.retry_initial
    # ... and the next batch starts at the endpoint that answered.
    assert (await a.send(b.node_id, b"straight there")).ok
    assert a.statistics.send_requests == dead + 2
    assert await drain(b) == [b"the long way", b"straight there"]


async def test_the_first_endpoint_is_tried_first(
    memory_nodes: NodeFactory, front: Front, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    point(a, b.identity, b.endpoints[0], front.url)
    assert (await a.send(b.node_id, b"direct")).ok
    assert front.log == []
    assert (a.statistics.send_requests, a.statistics.send_retries) == (1, 0)


# -- batches -------------------------------------------------------------------------


def _foreign(a: Node, b: Node, kind: str) -> mesh.WireFrame:
    """A frame ``b`` refuses, for a reason chosen by ``kind``."""
    now = a.clock()
    if kind == "no-route":
        frame = a.new_frame(crypto.Identity.generate().node_id, b"not for b")
        return mesh.WireFrame(0, frame.seal(a.identity))
    if kind == "expired":
        frame = dataclasses.replace(a.new_frame(b.node_id, b"stale"), ts=now - 20, exp=now - 10)
        return mesh.WireFrame(0, frame.seal(a.identity))
    assert kind == "hop-limit"
    frame = a.new_frame(b.node_id, b"too far")
    return mesh.WireFrame(frame.hops, frame.seal(a.identity))


@pytest.mark.parametrize("kind", ["no-route", "expired", "hop-limit"])
async def test_one_rejected_frame_fails_only_its_own_send(
    memory_nodes: NodeFactory, kind: str
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    results: dict[int, mesh.Result] = {}
    failures: list[Rejected] = []

    async def send(n: int) -> None:
        results[n] = await a.send(b.node_id, b"%d" % n)

    async def send_bad() -> None:
        try:
            await a.send_frame(b.node_id, _foreign(a, b, kind))
        except Rejected as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(send, n)
        nursery.start_soon(send_bad)
        for n in range(3, 6):
            nursery.start_soon(send, n)
    assert a.statistics.send_requests == 1  # one batch carried all seven
    (failure,) = failures
    assert failure.code == kind
    assert str(failure).endswith(f"({kind})")
    assert sorted(results) == list(range(6))
    assert all(r.outcome is mesh.Outcome.ACCEPTED for r in results.values())
    assert sorted(await drain(b)) == sorted(b"%d" % n for n in range(6))
    assert (a.statistics.sent_accepted, a.statistics.sent_rejected) == (6, 1)
    assert (b.statistics.frames_accepted, b.statistics.frames_rejected) == (6, 1)


async def test_a_resent_frame_is_a_duplicate_not_an_error(memory_nodes: NodeFactory) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    frame = a.new_frame(b.node_id, b"once")
    wire = mesh.WireFrame(0, frame.seal(a.identity))
    assert (await a.send_frame(b.node_id, wire)).outcome is mesh.Outcome.ACCEPTED
    assert (await a.send_frame(b.node_id, wire)).outcome is mesh.Outcome.DUPLICATE
    assert (a.statistics.sent_accepted, a.statistics.sent_duplicate) == (1, 1)
    assert await drain(b) == [b"once"]


@pytest.mark.parametrize(("waiting", "peak"), [(50, 1), (150, 2)])
async def test_a_second_request_in_flight_only_when_a_full_batch_waits(
    memory_nodes: NodeFactory, waiting: int, peak: int
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    peer(a, b)
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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b.node_id, b"first, alone")
        await held.wait()  # the first request is at b, held there
        for i in range(waiting):
            nursery.start_soon(a.send, b.node_id, b"%d" % i)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert most == peak
    assert a.statistics.sent_accepted == waiting + 1
