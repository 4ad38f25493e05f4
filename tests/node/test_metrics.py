"""Prometheus metrics (node/_metrics.py): ``GET /metrics`` parses as the text
exposition format, names follow the conventions, counters move by exactly what
traffic did on both sides, queue depth per next hop, rejections by reason, the HTTP
latency histogram (through the server's observe hook), and label cardinality stays
bounded however many neighbours a node has.

Scrapes go through :meth:`Metrics.handle` with :class:`node.Request` objects (the node's
listeners route ``/metrics`` there). Waits are on events or for the network to settle
(``wait_all_tasks_blocked``), in virtual time.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import crypto
import mesh
from node import MemoryNetwork, Node, Request, Response, Server
from node._forwarder import FRAMES_PATH, Forwarder
from node._metrics import ENDPOINTS, MAX_NEIGHBOUR_LABELS, METRICS_PATH, Metrics, endpoint_of
from node._node import ADDRESS_PATH
from tests.helpers import NodeFactory, Stranger, delivered, messages, record

#: One scrape: (metric name, sorted label items) -> value. Sample names are as
#: exposed (``..._total``, ``..._bucket``).
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape_text(metrics: Metrics) -> str:
    response = await metrics.handle(Request("GET", METRICS_PATH, [("host", "x")], b"", "test"))
    assert response.status == 200, response.body
    assert dict(response.headers)["content-type"] == CONTENT_TYPE_LATEST
    return response.body.decode("utf-8")


async def scrape(node: Node | Metrics) -> Scrape:
    metrics = node.metrics if isinstance(node, Node) else node
    samples: Scrape = {}
    for family in text_string_to_metric_families(await scrape_text(metrics)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Scrape, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(samples: Scrape, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name}


# -- the format and the names -----------------------------------------------------------


async def test_names_follow_the_conventions(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    with trio.fail_after(30):
        await delivered(a, b, b"something to count")
    a.metrics.observe_request(FRAMES_PATH, 200, 0.002)
    families = list(text_string_to_metric_families(await scrape_text(a.metrics)))
    names = {family.name for family in families}
    for family in families:
        assert re.fullmatch(r"ptth_[a-z_]+", family.name), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == family.name + "_total"  # counters end in _total
            if family.type != "counter":
                assert not sample.name.endswith("_total"), sample.name
        # Units in the name, base units only: seconds and bytes, never ms or KiB.
        assert not re.search(r"_(ms|milliseconds|kib|mib|kb|mb)(_|$)", family.name)
    for name in names:
        if "seconds" in name or "bytes" in name:
            assert re.search(r"_(seconds|bytes)(_total|_created)?$", name), name
    histogram = next(f for f in families if f.name == "ptth_http_request_duration_seconds")
    assert histogram.type == "histogram"
    # What the issue asks for is there.
    assert {
        "ptth_frames_received",
        "ptth_frames_rejected",
        "ptth_frames_sent",
        "ptth_frames_acknowledged",
        "ptth_queue_frames",
        "ptth_queue_bytes",
        "ptth_store_bytes",
        "ptth_store_quota_bytes",
        "ptth_routes",
        "ptth_subscriptions",
        "ptth_interests",
        "ptth_relay_attachments",
        "ptth_relay_reversed_connections",
        "ptth_receipts_sent",
        "ptth_receipts_received",
    } <= names
    samples = await scrape(a)
    assert value(samples, "ptth_node_info", node=a.node_id.text) == 1
    assert value(samples, "ptth_routes") == 1  # b
    assert value(samples, "ptth_neighbours", state="up") == 1
    assert value(samples, "ptth_store_quota_bytes", area="queue", scope="total") == (
        a.store.quotas.total
    )


async def test_handle_answers_get_and_head_and_refuses_the_rest(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    metrics = a.metrics

    def request(method: str, target: str = METRICS_PATH) -> Request:
        return Request(method, target, [("host", "x")], b"", "test")

    head = await metrics.handle(request("HEAD"))
    assert (head.status, head.body) == (200, b"")
    assert dict(head.headers)["content-type"] == CONTENT_TYPE_LATEST
    for method in ("POST", "PUT", "DELETE"):
        refused = await metrics.handle(request(method))
        assert refused.status == 405
        assert dict(refused.headers)["allow"] == "GET, HEAD"
        assert f"not {method}" in refused.body.decode()
    elsewhere = await metrics.handle(request("GET", "/metrics/more"))
    assert elsewhere.status == 404
    assert b"/metrics/more" in elsewhere.body
    query = await metrics.handle(request("GET", "/metrics?name[]=ptth_routes"))
    assert query.status == 200  # a query is ignored: everything is served


async def test_a_store_that_fails_is_a_503_not_a_crash(
    pair: tuple[Node, Node, MemoryNetwork], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = pair

    def broken() -> mesh.StoreStatistics:
        raise mesh.MeshError("store /x failed: disk I/O error")

    monkeypatch.setattr(a.store, "statistics", broken)
    response = await a.metrics.handle(Request("GET", METRICS_PATH, [], b"", "test"))
    assert response.status == 503
    assert response.body == b"store unavailable: store /x failed: disk I/O error\n"
    assert dict(response.headers)["retry-after"] == "10"
    monkeypatch.undo()
    assert (await scrape(a))[("ptth_routes", ())] == 1  # and the next scrape works


async def test_a_store_that_fails_to_take_frames_is_counted_and_nothing_is_lost(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    with trio.fail_after(30):
        await delivered(a, b, b"warm up")
    taken = b.store.accept
    failed = trio.Event()

    def broken(*args: object, **kwargs: object) -> list[mesh.Result]:
        failed.set()
        raise mesh.MeshError("store /x failed: disk I/O error")

    b.store.accept = broken  # type: ignore[method-assign]
    sent = await a.send(b.node_id, b"through a bad disk", receipt=True)
    with trio.fail_after(30):
        await failed.wait()
    await trio.testing.wait_all_tasks_blocked()
    failures = b.statistics.store_failures
    assert failures >= 1
    assert value(await scrape(b), "ptth_store_failures_total") == failures
    assert a.statistics.store_failures == 0  # refused by b: a's own store is sound
    b.store.accept = taken  # type: ignore[method-assign]
    with trio.fail_after(120):  # a retries; the message was never lost
        assert (await a.delivered(sent.id)).state == "delivered"


async def test_each_metrics_has_its_own_registry(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, b, _ = pair
    assert a.metrics.registry is not b.metrics.registry
    a.metrics.observe_request(FRAMES_PATH, 200, 0.001)
    count = "ptth_http_request_duration_seconds_count"
    assert value(await scrape(a), count, endpoint="frames", status="200") == 1
    assert (count, (("endpoint", "frames"), ("status", "200"))) not in await scrape(b)
    with pytest.raises(ValueError, match="max_neighbours is -1"):
        Metrics(a, max_neighbours=-1)


# -- counters move with the traffic -----------------------------------------------------


async def test_n_messages_move_the_counters_by_n_on_both_sides(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    with trio.fail_after(30):  # greetings and a first exchange out of the way
        await delivered(a, b, b"warm up")
        await delivered(b, a, b"warm up")
    await trio.testing.wait_all_tasks_blocked()
    before_a, before_b = await scrape(a), await scrape(b)
    n = 7
    sent = [await a.send(b.node_id, b"%d" % i, receipt=True) for i in range(n)]
    with trio.fail_after(30):
        for one in sent:
            assert (await a.delivered(one.id)).state == "delivered"
        await messages(b, n + 1)  # and the warm-up
    await trio.testing.wait_all_tasks_blocked()  # each side has had the other's answers
    after_a, after_b = await scrape(a), await scrape(b)
    to_b, to_a = {"neighbour": b.node_id.text}, {"neighbour": a.node_id.text}
    # a sent n messages to b, which took them all; b sent n receipts back.
    assert delta(before_a, after_a, "ptth_frames_sent_total", **to_b) == n
    assert delta(before_a, after_a, "ptth_frames_acknowledged_total", **to_b) == n
    assert delta(before_a, after_a, "ptth_frames_refused_total", **to_b) == 0
    # Every batch came from the frames handed over, none from the store.
    assert delta(before_a, after_a, "ptth_frame_batches_handed_total", **to_b) >= 1
    assert delta(before_a, after_a, "ptth_frame_batches_read_total", **to_b) == 0
    assert delta(before_a, after_a, "ptth_frames_forwarded_total") == n
    assert delta(before_b, after_b, "ptth_frames_received_total", outcome="accepted") == n
    assert delta(before_b, after_b, "ptth_receipts_sent_total", outcome="delivered") == n
    assert delta(before_b, after_b, "ptth_frames_sent_total", **to_a) == n
    assert delta(before_b, after_b, "ptth_frames_acknowledged_total", **to_a) == n
    assert delta(before_a, after_a, "ptth_frames_received_total", outcome="accepted") == n
    assert delta(before_a, after_a, "ptth_receipts_received_total", outcome="delivered") == n
    for old, new, other in ((before_a, after_a, to_b), (before_b, after_b, to_a)):
        for outcome in ("duplicate", "rejected"):
            assert delta(old, new, "ptth_frames_received_total", outcome=outcome) == 0
        assert delta(old, new, "ptth_frame_post_failures_total", **other) == 0
        assert value(new, "ptth_frames_sent_total", neighbour="other") == 0
    # Nothing is left anywhere, and b's inbox holds what it was sent.
    for samples in (after_a, after_b):
        assert value(samples, "ptth_store_frames", area="queue") == 0
    assert value(after_b, "ptth_store_frames", area="inbox") == n + 1
    assert value(after_b, "ptth_store_bytes", area="inbox") > 0


async def test_queue_depth_for_a_next_hop_that_is_down_then_drained(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", retry_initial=1.0)
    async with memory_nodes.session("b") as b:
        await b.add_peer(a.address_token())  # b will greet a when it comes back
        b_token, b_id = b.address_token(), b.node_id
    posts = record(a)
    await a.add_peer(b_token)  # b is down
    for i in range(3):
        await a.send(b_id, b"waiting %d" % i)
    with trio.fail_after(60):
        await posts.wait_for(lambda: any(post.messages for post in posts.failures(b_id)))
    await trio.sleep(5)  # virtual: the frames age (time itself is the subject here)
    await trio.testing.wait_all_tasks_blocked()  # a has noted the last failure
    samples = await scrape(a)
    hop = b_id.text
    assert value(samples, "ptth_queue_frames", next_hop=hop) == 3
    assert value(samples, "ptth_queue_bytes", next_hop=hop) > 0
    assert value(samples, "ptth_queue_oldest_age_seconds", next_hop=hop) >= 5
    assert value(samples, "ptth_queue_frames", next_hop="held") == 0
    assert value(samples, "ptth_store_frames", area="queue") == 3
    assert value(samples, "ptth_neighbours", state="up") == 0  # backing off
    assert value(samples, "ptth_frame_post_failures_total", neighbour=hop) >= 1
    assert value(samples, "ptth_frames_acknowledged_total", neighbour=hop) == 0
    # b comes back: a drains its queue, and the gauges say so.
    async with memory_nodes.session("b") as b:
        with trio.fail_after(60):
            await messages(b, 3)
        await trio.testing.wait_all_tasks_blocked()
        samples = await scrape(a)
    assert value(samples, "ptth_queue_frames", next_hop=hop) == 0
    assert value(samples, "ptth_queue_bytes", next_hop=hop) == 0
    assert value(samples, "ptth_queue_oldest_age_seconds", next_hop=hop) == 0
    assert value(samples, "ptth_frames_acknowledged_total", neighbour=hop) == 3


async def test_held_frames_have_a_label_of_their_own(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    nowhere = crypto.Identity.generate().node_id
    await a.send(nowhere, b"no route to it")
    samples = await scrape(a)
    assert value(samples, "ptth_queue_frames", next_hop="held") == 1
    assert value(samples, "ptth_frames_held_total") == 1


async def test_rejections_are_counted_by_reason_and_duplicates_apart(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, b, network = pair
    await trio.testing.wait_all_tasks_blocked()  # the greetings are through
    before = await scrape(b)
    as_a = Stranger(network, a.identity)  # frames POSTed by hand, signed as neighbour a
    now = b.clock()
    good = as_a.frame(b.node_id, now)
    forged = bytearray(as_a.frame(b.node_id, now))
    forged[-1] ^= 0x01  # the signature's last byte
    expired = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=a.node_id,
        id=secrets.token_bytes(crypto.FRAME_ID_SIZE),
        ts=now - 120_000,
        exp=now - 60_000,
        hops=8,
        dst=b.node_id,
        body=b"late",
    ).seal(a.identity)
    results = await as_a.post(b, [good, bytes(forged), expired, good])
    assert [r.outcome for r in results] == [
        mesh.Outcome.ACCEPTED,
        mesh.Outcome.REJECTED,
        mesh.Outcome.REJECTED,
        mesh.Outcome.DUPLICATE,
    ]
    assert [r.code for r in results[1:3]] == [mesh.Reason.BAD_SIGNATURE, mesh.Reason.EXPIRED]
    after = await scrape(b)
    assert delta(before, after, "ptth_frames_received_total", outcome="accepted") == 1
    assert delta(before, after, "ptth_frames_received_total", outcome="duplicate") == 1
    assert delta(before, after, "ptth_frames_received_total", outcome="rejected") == 2
    assert delta(before, after, "ptth_frames_rejected_total", reason="bad-signature") == 1
    assert delta(before, after, "ptth_frames_rejected_total", reason="expired") == 1
    # Every reason has its series from the start, and only the two moved.
    reasons = label_values(after, "ptth_frames_rejected_total", "reason")
    assert reasons == {str(reason) for reason in mesh.Reason}
    moved = {r for r in reasons if delta(before, after, "ptth_frames_rejected_total", reason=r)}
    assert moved == {"bad-signature", "expired"}


# -- HTTP requests ------------------------------------------------------------------------


def test_endpoints_are_a_fixed_set_named_from_the_path() -> None:
    cases = {
        FRAMES_PATH: "frames",
        ADDRESS_PATH: "address",
        "/ptth/v1/ping": "ping",
        "/ptth/v1/attach": "relay_attach",
        "/ptth/v1/poll/abc": "relay_poll",
        "/ptth/v1/reply/abc": "relay_reply",
        "/n/somenode/ptth/v1/frames": "relay_visit",
        "/metrics": "metrics",
        "/api/v1/send": "api_send",
        "/api/v1/send/batch": "api_send_batch",
        "/api/v1/inbox": "api_inbox",
        "/api/v1/inbox/ack": "api_inbox_ack",
        "/api/v1/subscriptions/name/ack": "api_subscriptions",
        "/api/v1/trace/0011": "api_trace",
        "/api/v1/chirp/post": "api_chirp",
        "/api/v1/nothing": "api_other",
        "/api/v1/": "api_other",
        "/": "other",
        "/ptth/v1/frames/x": "other",
        "/wp-login.php": "other",
    }
    assert {path: endpoint_of(path) for path in cases} == cases
    assert set(cases.values()) <= ENDPOINTS
    assert len(ENDPOINTS) < 40


@given(st.text())
def test_any_path_has_an_endpoint_from_the_set(path: str) -> None:
    assert endpoint_of(path) in ENDPOINTS
    assert endpoint_of("/api/v1/" + path) in ENDPOINTS


@asynccontextmanager
async def served(
    handler: Callable[[Request], Response | trio.Event],
    observe: Callable[[str, int, float], None],
) -> AsyncIterator[Callable[[str], trio.abc.Stream]]:
    """A server with ``observe`` over memory streams; yields ``connect(head)``."""

    async def handle(request: Request) -> Response:
        answer = handler(request)
        return answer if isinstance(answer, Response) else Response(200)

    server = Server(handle, observe=observe)
    async with trio.open_nursery() as nursery:

        def connect(request: str) -> trio.abc.Stream:
            client, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_end)
            nursery.start_soon(client.send_all, request.encode("latin-1"))
            return client

        yield connect
        nursery.cancel_scope.cancel()


async def read_response(stream: trio.abc.Stream) -> h11.Response:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            return event
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some()))
            continue
        raise AssertionError(event)  # pragma: no cover


async def test_the_server_reports_each_answer_to_the_histogram(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    metrics = Metrics(a)  # of its own: only these requests are in it

    def route(request: Request) -> Response:
        if request.path == "/nope":
            return Response.text(404, "no such resource")
        return Response.text(200, "ok")

    async with served(route, metrics.observe_request) as connect:
        for head in (
            "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /nope?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            # Refused from its head (413): observed too.
            "POST /ptth/v1/frames HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        ):
            await read_response(connect(head))
    after = await scrape(metrics)
    count = "ptth_http_request_duration_seconds_count"
    assert value(after, count, endpoint="api_status", status="200") == 1
    assert value(after, count, endpoint="other", status="404") == 1
    assert value(after, count, endpoint="frames", status="413") == 1
    bucket = "ptth_http_request_duration_seconds_bucket"
    assert value(after, bucket, endpoint="other", status="404", le="+Inf") == 1
    assert sum(v for (name, _), v in after.items() if name == count) == 3


async def test_a_stream_is_observed_at_its_head_and_a_bad_observer_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, int]] = []
    release = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first\n"
        await release.wait()

    def route(request: Request) -> Response:
        if request.path == "/stream":
            return Response(200, [("content-type", "text/plain")], stream=body())
        return Response.text(200, "ok")

    def observe(path: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        seen.append((path, status))
        if path == "/boom":
            raise RuntimeError("observer bug")

    async with served(route, observe) as connect:
        stream = connect("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(stream)).status_code == 200
        assert seen == [("/stream", 200)]  # observed while its body is still open
        release.set()
        with caplog.at_level(logging.ERROR, logger="ptth.server"):
            response = await read_response(connect("GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert response.status_code == 200  # answered all the same
        assert "the request observer failed" in caplog.text
    assert seen == [("/stream", 200), ("/boom", 200)]


async def test_a_malformed_head_is_not_observed() -> None:
    seen: list[tuple[str, int]] = []
    async with served(lambda _: Response(200), lambda p, s, _: seen.append((p, s))) as connect:
        assert (await read_response(connect("NOT HTTP AT ALL\r\n\r\n"))).status_code == 400
    assert seen == []


# -- bounded cardinality ------------------------------------------------------------------


def fake_neighbour(node: Node, sent: int) -> crypto.NodeId:
    """Make a new node id a neighbour of ``node`` with a forwarder that sent ``sent``
    frames (the forwarder does not run: no traffic, only counters)."""
    other = crypto.Identity.generate().node_id
    node.mesh.router.add_neighbour(other, mesh.Role.PEER, node.clock())
    forwarder = Forwarder(node.mesh, other)
    forwarder.frames_sent = forwarder.frames_acknowledged = sent
    node.mesh.forwarders[other] = forwarder
    return other


async def test_labels_stay_bounded_however_many_neighbours(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    for i in range(MAX_NEIGHBOUR_LABELS + 36):
        fake_neighbour(a, i)
    samples = await scrape(a)
    neighbours = label_values(samples, "ptth_frames_sent_total", "neighbour")
    assert len(neighbours) == MAX_NEIGHBOUR_LABELS + 1  # and "other"
    assert "other" in neighbours
    hops = label_values(samples, "ptth_queue_frames", "next_hop")
    assert hops == (neighbours | {"held"})  # the same neighbours, and held
    # Nothing is lost by summing: the labels add up to every forwarder's count.
    total = sum(f.frames_sent for f in a.mesh.forwarders.values())
    labelled = sum(v for (name, _), v in samples.items() if name == "ptth_frames_sent_total")
    assert labelled == total
    # Series per metric are bounded by the cap, not by the mesh.
    assert len(samples) < 40 * MAX_NEIGHBOUR_LABELS


async def test_labels_move_without_counters_going_back(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    """Neighbours come and go, and more of them than labels, at random (seeded);
    every scrape: at most ``cap`` labelled, labels plus other add up to the total, and
    no series of a counter goes down while it is shown."""
    a, _, _ = pair
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cap = 3
    metrics = Metrics(a, max_neighbours=cap)
    fakes: list[crypto.NodeId] = []
    last: dict[str, float] = {}
    name = "ptth_frames_acknowledged_total"
    for step in range(150):
        choice = rng.random()
        if choice < 0.2 or not fakes:
            fakes.append(fake_neighbour(a, rng.randrange(5)))
        elif choice < 0.35:
            gone = fakes.pop(rng.randrange(len(fakes)))
            a.mesh.router.remove_neighbour(gone, mesh.Role.PEER, a.clock())
        else:
            forwarder = a.mesh.forwarders[rng.choice(list(a.mesh.forwarders))]
            forwarder.frames_acknowledged += rng.randrange(1, 4)
        samples = await scrape(metrics)
        shown = {dict(labels)["neighbour"]: v for (n, labels), v in samples.items() if n == name}
        context = f"seed {seed}, step {step}"
        assert len(shown) <= cap + 1, context
        assert sum(shown.values()) == sum(
            f.frames_acknowledged for f in a.mesh.forwarders.values()
        ), context
        for label, count in shown.items():
            if label in last:
                assert count >= last[label], context
        last = shown
        for label in shown.keys() - {"other"}:
            assert crypto.NodeId.parse(label) in a.mesh.router.links, context


def readme_metrics() -> str:
    """The README's "Metrics" section."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]


async def test_the_readme_lists_every_metric_and_endpoint(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    section = readme_metrics()
    table = [line for line in section.splitlines() if line.startswith("| `ptth_")]
    listed = {name for line in table for name in re.findall(r"`(ptth_[a-z_]+)`", line)}
    a.metrics.observe_request(FRAMES_PATH, 200, 0.001)
    exposed = set()
    for family in text_string_to_metric_families(await scrape_text(a.metrics)):
        if family.name.endswith("_created"):
            continue  # when each histogram series began (prometheus_client's own)
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    assert listed == exposed
    endpoints = section.split("`endpoint` is `", 1)[1].split(". ", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", "`" + endpoints)) == ENDPOINTS


# -- relays -------------------------------------------------------------------------------


async def test_relay_attachments_on_both_sides(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    token = relay.address_token()
    upgraded = await memory_nodes.open("up", relays=(token,), relay_mode="upgrade", relay_pool=2)
    polling = await memory_nodes.open("poll", relays=(token,), relay_mode="long-poll", relay_pool=1)
    with trio.fail_after(60):
        await upgraded.links[0].wait_connected(2)
        await polling.links[0].wait_connected(1)
    await trio.testing.wait_all_tasks_blocked()
    at_relay = await scrape(relay)
    assert value(at_relay, "ptth_relay_attachments", state="attached") == 2
    assert value(at_relay, "ptth_relay_attachments", state="detached") == 0
    assert value(at_relay, "ptth_relay_reversed_connections") == 2
    assert value(at_relay, "ptth_relay_poll_sessions") == 1
    # Attached nodes are neighbours of the relay: they have labels there.
    assert {upgraded.node_id.text, polling.node_id.text} <= label_values(
        at_relay, "ptth_frames_sent_total", "neighbour"
    )
    at_node = await scrape(upgraded)
    assert value(at_node, "ptth_relay_link_connections", relay=relay.node_id.text) == 2
    assert value(at_node, "ptth_relay_link_attaches_total", relay=relay.node_id.text) == 2
    assert value(at_node, "ptth_relay_link_failures_total", relay=relay.node_id.text) == 0
    assert value(at_node, "ptth_relay_attachments", state="attached") == 0  # it relays nobody


async def test_subscriptions_here_and_interests_there(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    async with a.subscribe("news.#", "sport.*"), a.subscribe("news.#", name="keep"):
        await trio.testing.wait_all_tasks_blocked()  # b has heard of them
        at_a, at_b = await scrape(a), await scrape(b)
    assert value(at_a, "ptth_subscriptions", kind="live") == 1
    assert value(at_a, "ptth_subscriptions", kind="named") == 1
    assert value(at_a, "ptth_subscription_patterns") == 2  # news.# once
    assert value(at_b, "ptth_interests", state="live") == 2
    assert value(at_b, "ptth_interests_received_total") >= 2
    await a.unsubscribe("keep")
    await trio.testing.wait_all_tasks_blocked()
    at_a, at_b = await scrape(a), await scrape(b)
    assert value(at_a, "ptth_subscriptions", kind="live") == 0
    assert value(at_a, "ptth_subscriptions", kind="named") == 0
    assert value(at_b, "ptth_interests", state="live") == 0
    assert value(at_b, "ptth_interests", state="withdrawn") == 2
