"""Prometheus metrics of one node: ``GET /metrics`` in the text exposition format.

Strategy: almost everything worth exposing is a counter or a state the node keeps
anyway (:class:`node._mesh.NodeStatistics`, the forwarders' counters, the router's
links, routes and interests, the subscriptions, the relay service and the relay
links). A collector reads them when the node is scraped, so counting costs the hot
path nothing. The store's figures (queue depth per next hop, inbox, seen ids) are
SQLite reads: :meth:`Metrics.collect_text` makes them on the store's thread (the
node's ``run_store``, never the event loop) and only then renders. The
one thing observed as it happens is HTTP request latency, by endpoint and status: the
server calls :meth:`Metrics.observe_request` once per answered request
(``Server(..., observe=...)``), which feeds a histogram.

No module state: each :class:`Metrics` has its own ``CollectorRegistry`` (many nodes
run in one process; prometheus_client's global registry is never used).

Bounded labels, however many nodes the mesh has:

* ``endpoint`` is one of :data:`ENDPOINTS`, derived from the path (never the path);
  ``status`` is the HTTP status the node chose; ``reason`` a :class:`mesh.Reason`;
  ``outcome``, ``state``, ``kind``, ``area`` and ``scope`` small fixed sets.
* ``neighbour`` and ``next_hop`` name at most ``max_neighbours`` (default
  :data:`MAX_NEIGHBOUR_LABELS`) of the node's current neighbours (``router.links``);
  everything else is summed under ``other`` (and frames held with no route are
  ``held``). A neighbour keeps its label while it stays a neighbour; free labels go
  to neighbours in the order they became neighbours. Counters stay monotonic across
  these moves: a neighbour's labelled counters count from when it got its label
  (what it had sent before is in ``other`` already), and when it loses it, what it
  counted moves into ``other``. (This relies on the runtime keeping a forwarder, with
  its counters, for as long as the node runs, as it does.)
* ``relay`` names the relays this node attaches to (``--relay``: the operator's list).

Node ids in labels are their full text (52 characters), not the 10-character short
form: short forms can collide (anyone can grind a key whose id starts like a
neighbour's), and two series with the same labels would make the exposition invalid;
the full text is also what ``ptth status``, ``routes`` and ``queues`` print, so a
series can be matched with them. The number of series is bounded by the cap, not by
the labels' length.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, Protocol

import prometheus_client
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

import crypto
import mesh
from mesh import Store
from node._api import API_PREFIX
from node._attach import RelayLink
from node._commit import RunBlocking
from node._forwarder import FRAMES_PATH
from node._mesh import MeshRuntime
from node._relay import ATTACH_PATH, PING_PATH, POLL_PREFIX, REPLY_PREFIX, RelayService
from node._server import Request, Response, Server

__all__ = ["ENDPOINTS", "MAX_NEIGHBOUR_LABELS", "METRICS_PATH", "Metrics", "MetricsHost"]

log = logging.getLogger("ptth.node")

#: Where metrics are served.
METRICS_PATH: Final = "/metrics"
#: Neighbours named in labels at most (the rest are summed as ``other``): a node with
#: more neighbours than this is a hub, watched as a whole, and each labelled neighbour
#: costs about a dozen series.
MAX_NEIGHBOUR_LABELS: Final = 64
#: Request latency buckets (s): a frames POST takes a millisecond or two on a LAN,
#: a big batch or a slow disk tens of ms; long-polls and relayed requests wait up to
#: their hold (25 s by default) before their head is written.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# node._node serves the address here; it imports this module, so the path is spelled
# out (tests/node/test_metrics.py checks that the two agree).
_ADDRESS_PATH: Final = "/ptth/v1/address"
#: Exact paths and their endpoint.
_EXACT: Final = {
    FRAMES_PATH: "frames",
    _ADDRESS_PATH: "address",
    PING_PATH: "ping",
    ATTACH_PATH: "relay_attach",
    METRICS_PATH: "metrics",
}
#: Path prefixes and their endpoint.
_PREFIXES: Final = (
    (POLL_PREFIX, "relay_poll"),
    (REPLY_PREFIX, "relay_reply"),
    ("/n/", "relay_visit"),  # a visitor's request to a node attached here
)
#: The local API's resources (the first segment after ``/api/v1/``), and two that
#: take a second one.
_API_SECTIONS: Final = frozenset(
    {
        "chirp",
        "inbox",
        "peers",
        "policy",
        "publish",
        "queues",
        "routes",
        "send",
        "status",
        "subscribe",
        "subscriptions",
        "trace",
    }
)
_API_PAIRS: Final = {"send/batch": "api_send_batch", "inbox/ack": "api_inbox_ack"}
#: Every value of the ``endpoint`` label.
ENDPOINTS: Final = frozenset(
    {
        *_EXACT.values(),
        *(name for _, name in _PREFIXES),
        *(f"api_{section}" for section in _API_SECTIONS),
        *_API_PAIRS.values(),
        "api_other",
        "other",
    }
)
_REASONS: Final = tuple(str(reason) for reason in mesh.Reason)
_OTHER: Final = "other"
_HELD: Final = "held"


def endpoint_of(path: str) -> str:
    """The ``endpoint`` label of a request for ``path`` (one of :data:`ENDPOINTS`)."""
    exact = _EXACT.get(path)
    if exact is not None:
        return exact
    if path.startswith(API_PREFIX):
        rest = path[len(API_PREFIX) :]
        pair = _API_PAIRS.get(rest)
        if pair is not None:
            return pair
        section = rest.partition("/")[0]
        return f"api_{section}" if section in _API_SECTIONS else "api_other"
    for prefix, name in _PREFIXES:
        if path.startswith(prefix):
            return name
    return _OTHER


class MetricsHost(Protocol):
    """What the metrics read of a node (:class:`node.Node` is one)."""

    @property
    def node_id(self) -> crypto.NodeId: ...

    @property
    def mesh(self) -> MeshRuntime: ...

    @property
    def store(self) -> Store: ...

    @property
    def run_store(self) -> RunBlocking: ...

    @property
    def relay_service(self) -> RelayService: ...

    @property
    def links(self) -> Sequence[RelayLink]: ...

    @property
    def server(self) -> Server | None: ...


@dataclasses.dataclass(frozen=True)
class _StoreFigures:
    """What one scrape read from the store (in a worker thread)."""

    statistics: mesh.StoreStatistics
    queues: list[mesh.QueueStatistics]


def _read_store(store: mesh.Store) -> _StoreFigures:
    return _StoreFigures(store.statistics(), store.queues())


#: A forwarder's counters, in this order: POSTs, POSTs failed, frames sent,
#: acknowledged, refused; batches read from the store, and taken from frames handed over.
_Counts = tuple[int, int, int, int, int, int, int]
_ZERO: Final[_Counts] = (0, 0, 0, 0, 0, 0, 0)
_PER_NEIGHBOUR: Final = (
    ("ptth_frame_posts", "POSTs of frames to the neighbour (each round of endpoints tried)."),
    (
        "ptth_frame_post_failures",
        "POSTs to the neighbour that got no answer to act on (connection error, 429, "
        "503, a refusal of the whole request, a bad answer); they are retried.",
    ),
    (
        "ptth_frames_sent",
        "Stored frames (msg, rcpt, pub; not announces) put in POSTs to the neighbour; "
        "a frame sent again after a failed POST counts again.",
    ),
    (
        "ptth_frames_acknowledged",
        "Frames sent that the neighbour took into its custody (accepted, or held already).",
    ),
    (
        "ptth_frames_refused",
        "Frames sent that the neighbour refused (rejected, or deferred by our relay).",
    ),
    (
        "ptth_frame_batches_read",
        "Batches of stored frames for the neighbour read back from the store.",
    ),
    (
        "ptth_frame_batches_handed",
        "Batches of stored frames for the neighbour taken from those handed to its "
        "forwarder as they were committed (no read of the store).",
    ),
)


class _Collector:
    """Registered with a registry; yields what ``families`` makes at each scrape."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families()


class Metrics:
    """One node's metrics (see the module docstring).

    ``host`` is the node; ``max_neighbours`` caps the ``neighbour`` and ``next_hop``
    labels (:data:`MAX_NEIGHBOUR_LABELS`).
    """

    def __init__(self, host: MetricsHost, *, max_neighbours: int = MAX_NEIGHBOUR_LABELS) -> None:
        if max_neighbours < 0:
            raise ValueError(f"max_neighbours is {max_neighbours}; it must be 0 or more")
        self.host = host
        self.max_neighbours = max_neighbours
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self._latency = prometheus_client.Histogram(
            "ptth_http_request_duration_seconds",
            "HTTP requests this node answered, by endpoint and status: seconds from the "
            "request's head being read to the response's head being written.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        #: The histogram's child per (endpoint, status), so an observation skips the
        #: label lookup (and its lock).
        self._children: dict[tuple[str, int], prometheus_client.Histogram] = {}
        #: Neighbours with a label, and what their counters held when they got it.
        self._slots: dict[crypto.NodeId, _Counts] = {}
        #: The counters of the forwarders summed under ``other`` at the last scrape.
        self._in_other: dict[crypto.NodeId, _Counts] = {}
        self._figures: _StoreFigures | None = None
        self.registry.register(_Collector(self._families))

    # -- the hot path ---------------------------------------------------------------

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request for ``path`` with ``status``, taking ``seconds``
        (the server's ``observe`` hook)."""
        key = (endpoint_of(path), status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._latency.labels(key[0], str(status))
        child.observe(seconds)

    # -- serving --------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Serve ``GET /metrics`` (and ``HEAD``). Whoever routes here checks any token.

        Answers 404 for another path, 405 for another method, and 503 when the store
        cannot be read (the node's fault, or its disk's: a scrape may be retried).
        """
        if request.path != METRICS_PATH:
            return Response.text(404, f"no such resource: {request.path} (metrics: /metrics)")
        if request.method not in ("GET", "HEAD"):
            return Response.text(
                405,
                f"metrics are read with GET (or HEAD), not {request.method}",
                [("allow", "GET, HEAD")],
            )
        headers = [("content-type", prometheus_client.CONTENT_TYPE_LATEST)]
        if request.method == "HEAD":
            return Response(200, headers)  # no body: nothing is read or rendered
        try:
            body = await self.collect_text()
        except mesh.MeshError as exc:
            log.error("metrics: the store failed: %s", exc)
            return Response.text(503, f"store unavailable: {exc}", [("retry-after", "10")])
        return Response(200, headers, body)

    async def collect_text(self) -> bytes:
        """Every metric in the text exposition format (version 0.0.4).

        The store is read on the node's ``run_store`` (its thread); the rest in the
        calling task. Raises :class:`mesh.MeshError` if the store cannot be read.
        """
        store = self.host.store
        self._figures = await self.host.run_store(functools.partial(_read_store, store))
        return prometheus_client.generate_latest(self.registry)

    # -- the collector --------------------------------------------------------------

    def _families(self) -> Iterator[Metric]:
        host = self.host
        runtime = host.mesh
        now = runtime.clock()
        info = GaugeMetricFamily(
            "ptth_node_info", "This node's id (the value is always 1).", labels=["node"]
        )
        info.add_metric([host.node_id.text], 1)
        yield info
        yield from self._inbound(runtime)
        self._assign_labels(runtime)
        yield from self._per_neighbour(runtime)
        yield from self._node_counters(runtime)
        if self._figures is not None:
            yield from self._store(self._figures, now)
        yield from self._router(runtime, now)
        yield from self._relay(host)
        server = host.server
        yield GaugeMetricFamily(
            "ptth_http_connections",
            "Connections open on the node's public listener.",
            value=0 if server is None else server.active_connections,
        )

    def _inbound(self, runtime: MeshRuntime) -> Iterator[Metric]:
        stats = runtime.statistics
        received = CounterMetricFamily(
            "ptth_frames_received",
            "Frames neighbours POSTed to this node, by what it answered for each.",
            labels=["outcome"],
        )
        received.add_metric(["accepted"], stats.frames_accepted)
        received.add_metric(["duplicate"], stats.frames_duplicate)
        received.add_metric(["rejected"], stats.frames_rejected)
        yield received
        rejected = CounterMetricFamily(
            "ptth_frames_rejected",
            "Frames received and rejected, by reason (the code in the answer).",
            labels=["reason"],
        )
        by_reason = dict.fromkeys(_REASONS, 0)
        for reason, count in stats.rejected_by_reason.items():
            key = reason if reason in by_reason else "unknown"
            by_reason[key] = by_reason.get(key, 0) + count
        for reason, count in by_reason.items():
            rejected.add_metric([reason], count)
        yield rejected

    def _assign_labels(self, runtime: MeshRuntime) -> None:
        """Drop the labels of nodes no longer neighbours; give free ones to neighbours
        without one, in the order they became neighbours."""
        links = runtime.router.links
        for node in [node for node in self._slots if node not in links]:
            del self._slots[node]
        for link in links:
            if len(self._slots) >= self.max_neighbours:
                break
            if link.node not in self._slots:
                # What it counted before was reported under "other": it stays there.
                self._slots[link.node] = self._in_other.get(link.node, _ZERO)

    def _per_neighbour(self, runtime: MeshRuntime) -> Iterator[Metric]:
        families = [
            CounterMetricFamily(name, words, labels=["neighbour"]) for name, words in _PER_NEIGHBOUR
        ]
        other = list(_ZERO)
        in_other: dict[crypto.NodeId, _Counts] = {}
        labelled: dict[crypto.NodeId, _Counts] = dict.fromkeys(self._slots, _ZERO)
        for node, forwarder in list(runtime.forwarders.items()):
            counts: _Counts = (
                forwarder.posts,
                forwarder.posts_failed,
                forwarder.frames_sent,
                forwarder.frames_acknowledged,
                forwarder.frames_refused,
                forwarder.batches_read,
                forwarder.batches_handed,
            )
            base = self._slots.get(node)
            if base is None:
                in_other[node] = counts
                parts = counts
            else:
                labelled[node] = counts
                parts = base
            for index, value in enumerate(parts):
                other[index] += value
        self._in_other = in_other
        for node, counts in labelled.items():
            base = self._slots[node]
            for family, value, start in zip(families, counts, base, strict=True):
                family.add_metric([node.text], max(0, value - start))
        for family, value in zip(families, other, strict=True):
            family.add_metric([_OTHER], value)
        yield from families

    def _node_counters(self, runtime: MeshRuntime) -> Iterator[Metric]:
        stats = runtime.statistics
        for name, value, words in (
            (
                "ptth_frames_forwarded",
                stats.frames_forwarded,
                "Frames a next hop took from this node's queue (ours and others').",
            ),
            (
                "ptth_frames_held",
                stats.frames_held,
                "Frames held for want of a route when they came (ours and others').",
            ),
            (
                "ptth_frames_dropped",
                stats.frames_dropped,
                "Frames dropped here: expired, or refused by their next hop.",
            ),
            (
                "ptth_requests_refused",
                stats.requests_refused,
                "Frames POSTs refused whole (unsigned, a stranger, malformed, store full).",
            ),
            (
                "ptth_frame_post_requests",
                stats.send_requests,
                "HTTP requests made for frame POSTs (a POST that tries several of a "
                "neighbour's endpoints makes several).",
            ),
            (
                "ptth_send_retries",
                stats.send_retries,
                "Back-offs before retrying a neighbour (a failed POST, or frames deferred).",
            ),
            (
                "ptth_store_failures",
                stats.store_failures,
                "Store calls that failed (the database or its disk, not a quota); each "
                "was refused or logged. A healthy node has none.",
            ),
            (
                "ptth_frames_held_back",
                stats.frames_held_back,
                "Frames a neighbour had no room for (their origin's share there), kept and "
                "sent again once that origin's hold ended, instead of being dropped.",
            ),
            (
                "ptth_frames_unverified",
                stats.frames_unverified,
                "Messages for other nodes taken from trusted neighbours (ptth trust) and "
                "passed on without their origin's signature checked here.",
            ),
            (
                "ptth_announces_sent",
                stats.announces_sent,
                "Announces of this node queued for neighbours.",
            ),
            (
                "ptth_announces_received",
                stats.announces_received,
                "Announces received from neighbours.",
            ),
            (
                "ptth_tree_offers_sent",
                stats.tree_offers_sent,
                "Tree offers (crd frames) queued for neighbours (--tree).",
            ),
            (
                "ptth_tree_offers_received",
                stats.tree_offers_received,
                "Tree offers received from neighbours (--tree).",
            ),
            (
                "ptth_tree_changes",
                stats.tree_changes,
                "Times this node's place in the spanning tree moved (--tree).",
            ),
            (
                "ptth_dht_sent",
                stats.dht_sent,
                "DHT messages of this node sent toward other nodes (--tree).",
            ),
            (
                "ptth_dht_received",
                stats.dht_received,
                "DHT messages received, for this node or to pass on (--tree).",
            ),
            (
                "ptth_dht_unroutable",
                stats.dht_unroutable,
                "DHT messages of this node dropped for want of a route (--tree).",
            ),
            (
                "ptth_interests_received",
                stats.interests_received,
                "Interests (sub, unsub frames) received from neighbours.",
            ),
            (
                "ptth_publications_received",
                stats.publications_received,
                "Publications received from neighbours.",
            ),
            (
                "ptth_publications_delivered",
                stats.publications_delivered,
                "Publications handed to live subscriptions here.",
            ),
            (
                "ptth_publications_forwarded",
                stats.publications_forwarded,
                "Copies of publications (ours and others') queued for neighbours.",
            ),
            (
                "ptth_publications_hop_limited",
                stats.publications_hop_limited,
                "Publications that made every hop their origin allows here, with "
                "subscribers beyond.",
            ),
            (
                "ptth_receipts_lost",
                stats.receipts_lost,
                "Drop receipts this node could not queue (its store was full).",
            ),
        ):
            yield CounterMetricFamily(name, words, value=value)
        sent = CounterMetricFamily(
            "ptth_receipts_sent",
            "Receipts this node made, by what they say.",
            labels=["outcome"],
        )
        sent.add_metric(["delivered"], stats.receipts_sent - stats.drop_receipts_sent)
        sent.add_metric(["dropped"], stats.drop_receipts_sent)
        yield sent
        received = CounterMetricFamily(
            "ptth_receipts_received",
            "Receipts received for frames this node sent, by what they say.",
            labels=["outcome"],
        )
        received.add_metric(["delivered"], stats.receipts_received_delivered)
        received.add_metric(["dropped"], stats.receipts_received_dropped)
        yield received

    def _store(self, figures: _StoreFigures, now: int) -> Iterator[Metric]:
        frames = GaugeMetricFamily(
            "ptth_queue_frames",
            "Frames queued per next hop (held: no route yet).",
            labels=["next_hop"],
        )
        size = GaugeMetricFamily(
            "ptth_queue_bytes",
            "Bytes charged for the frames queued per next hop, as the quotas count them.",
            labels=["next_hop"],
        )
        age = GaugeMetricFamily(
            "ptth_queue_oldest_age_seconds",
            "Age of the oldest frame queued per next hop (0: none).",
            labels=["next_hop"],
        )
        # Per label: frames, bytes, age of the oldest (s).
        rows: dict[str, tuple[int, int, float]] = {node.text: (0, 0, 0.0) for node in self._slots}
        rows[_HELD] = rows[_OTHER] = (0, 0, 0.0)
        for queue in figures.queues:
            if queue.next_hop is None:
                key = _HELD
            elif queue.next_hop in self._slots:
                key = queue.next_hop.text
            else:
                key = _OTHER
            count, charged, oldest = rows[key]
            rows[key] = (
                count + queue.frames,
                charged + queue.bytes,
                max(oldest, max(0, now - queue.oldest) / 1000),
            )
        for key, (count, charged, oldest) in rows.items():
            frames.add_metric([key], count)
            size.add_metric([key], charged)
            age.add_metric([key], oldest)
        yield from (frames, size, age)
        stats = figures.statistics
        stored = GaugeMetricFamily(
            "ptth_store_frames", "Frames the store holds, by area.", labels=["area"]
        )
        stored.add_metric(["inbox"], stats.inbox_frames)
        stored.add_metric(["queue"], stats.queued_frames)
        yield stored
        stored_bytes = GaugeMetricFamily(
            "ptth_store_bytes",
            "Bytes charged for what the store holds, by area (compare ptth_store_quota_bytes).",
            labels=["area"],
        )
        stored_bytes.add_metric(["inbox"], stats.inbox_bytes)
        stored_bytes.add_metric(["queue"], stats.queued_bytes)
        yield stored_bytes
        store = self.host.store
        quotas = store.quotas
        quota = GaugeMetricFamily(
            "ptth_store_quota_bytes",
            "The store's quotas: of an area in total, or of one origin, next hop or neighbour.",
            labels=["area", "scope"],
        )
        for area, scope, value in (
            ("inbox", "total", store.max_inbox_bytes),
            ("inbox", "per_origin", store.max_inbox_bytes_per_origin),
            ("queue", "total", quotas.total),
            ("queue", "per_origin", quotas.per_origin),
            ("queue", "per_next_hop", quotas.per_next_hop),
            ("queue", "per_neighbour", quotas.per_neighbour),
        ):
            quota.add_metric([area, scope], value)
        yield quota
        yield GaugeMetricFamily(
            "ptth_store_seen_ids",
            "Frame ids remembered to refuse replays (until their frames expire).",
            value=stats.seen_ids,
        )

    def _router(self, runtime: MeshRuntime, now: int) -> Iterator[Metric]:
        router = runtime.router
        yield GaugeMetricFamily(
            "ptth_routes",
            "Destinations this node has a route to (neighbours included).",
            value=len(router.routes(now)),
        )
        neighbours = GaugeMetricFamily(
            "ptth_neighbours", "Neighbours, by the state of the link.", labels=["state"]
        )
        states = dict.fromkeys((str(state) for state in mesh.LinkState), 0)
        for link in router.links:
            states[str(link.state)] += 1
        for state, count in states.items():
            neighbours.add_metric([state], count)
        yield neighbours
        interests = GaugeMetricFamily(
            "ptth_interests",
            "Other nodes' interests (subscribed patterns) held: live, or withdrawn (kept "
            "until they lapse so that a late copy cannot revive them).",
            labels=["state"],
        )
        held = {"live": 0, "withdrawn": 0}
        for interest in router.interests:
            if interest.exp > now:
                held["withdrawn" if interest.withdrawn else "live"] += 1
        for state, count in held.items():
            interests.add_metric([state], count)
        yield interests
        subscriptions = GaugeMetricFamily(
            "ptth_subscriptions",
            "This node's subscriptions: live ones (open in a program) and named ones.",
            labels=["kind"],
        )
        subscriptions.add_metric(["live"], len(runtime.subscriptions))
        subscriptions.add_metric(["named"], len(runtime.subscriptions.durable))
        yield subscriptions
        yield GaugeMetricFamily(
            "ptth_subscription_patterns",
            "Patterns this node advertises to the mesh for its subscriptions.",
            value=len(runtime.subscriptions.advertised),
        )
        yield GaugeMetricFamily(
            "ptth_coordinates_held",
            "Destinations whose tree coordinates this node holds for greedy routing (--tree).",
            value=router.coordinates_held,
        )
        yield CounterMetricFamily(
            "ptth_greedy_forwarded",
            "Frames of other nodes passed on greedily by their destination's "
            "coordinates, no route to it being known (--tree).",
            value=router.greedy_forwarded,
        )
        yield CounterMetricFamily(
            "ptth_greedy_loops",
            "Frames held here for coming back within seconds of going on greedily from "
            "here: a loop while the tree changes; their destination is looked up (--tree).",
            value=router.greedy_loops,
        )
        yield CounterMetricFamily(
            "ptth_coordinate_grants_checked",
            "Grants of tree coordinate chains whose signature this node checked: a chain "
            "is checked below the grants it remembers as verified (--tree).",
            value=router.chains.grants_checked,
        )
        yield CounterMetricFamily(
            "ptth_route_lookups",
            "DHT lookups of destinations whose frames were held here with no way on (--tree).",
            value=router.route_lookups,
        )

    def _relay(self, host: MetricsHost) -> Iterator[Metric]:
        attachments = host.relay_service.statistics()
        attached = [entry for entry in attachments if entry["connections"] or entry["polling"]]
        relaying = GaugeMetricFamily(
            "ptth_relay_attachments",
            "Nodes attached to this node as their relay: attached now, or detached and "
            "kept for their lease.",
            labels=["state"],
        )
        relaying.add_metric(["attached"], len(attached))
        relaying.add_metric(["detached"], len(attachments) - len(attached))
        yield relaying
        yield GaugeMetricFamily(
            "ptth_relay_reversed_connections",
            "Reversed connections attached nodes hold to this relay.",
            value=sum(int(entry["connections"]) for entry in attachments),
        )
        yield GaugeMetricFamily(
            "ptth_relay_poll_sessions",
            "Live long-poll sessions of nodes attached to this relay.",
            value=sum(1 for entry in attachments if entry["polling"]),
        )
        connections = GaugeMetricFamily(
            "ptth_relay_link_connections",
            "This node's connections (or polls) up to each of its relays.",
            labels=["relay"],
        )
        attaches = CounterMetricFamily(
            "ptth_relay_link_attaches",
            "Attaches of this node to each of its relays that succeeded.",
            labels=["relay"],
        )
        failures = CounterMetricFamily(
            "ptth_relay_link_failures",
            "Attaches of this node to each of its relays that failed.",
            labels=["relay"],
        )
        for link in host.links:
            status = link.status()
            relay = [link.relay.node.text]
            connections.add_metric(relay, status["connections"])
            attaches.add_metric(relay, status["attaches"])
            failures.add_metric(relay, status["failures"])
        yield from (connections, attaches, failures)
