"""The web dashboard: the pages a node serves at its API listener's root, and the live
overview they show.

* **Pages.** :meth:`Dashboard.handle` serves the files of the package folder
  ``node/dashboard/`` (hand-written HTML, CSS and JavaScript: no framework, no CDN, no
  build step): ``/`` is ``index.html`` (the overview), ``/chirp`` is ``chirp.html``,
  any other file by its exact name, nothing else (a name is looked up among the files,
  never joined to a path: no traversal). GET and HEAD only. Each answer carries a strict
  Content-Security-Policy (scripts and styles from the node only, no inline code), so
  that even a node name or a post that slipped into the page as markup could not run.
  The files are read once (importlib.resources) and kept.
* **Overview.** ``GET /api/v1/overview`` (the local API's token, as every API call):
  one JSON snapshot of the node (identity, uptime, neighbours with link state, routes
  (the first :data:`ROUTES_SHOWN` and how many), queues per next hop, subscriptions,
  relay attachments, counters, throughput history, recent frames). With ``?follow=1``,
  Server-Sent Events: an ``overview`` event when the snapshot changed, looked at every
  :data:`SNAPSHOT_INTERVAL`, a comment every :data:`KEEPALIVE` when nothing else was
  sent. A snapshot is taken at most once per :data:`SNAPSHOT_INTERVAL` whatever the
  number of pages open: they share it (and its encoding). Every store read runs on the
  store's thread (the node's ``run_store``), never on the event loop.
* **Throughput.** :meth:`Dashboard.sample` (a task of the node) records the frame
  counters every :data:`SAMPLE_INTERVAL` s of the node's clock into a bounded deque
  (:data:`HISTORY` s): the chart's rates in and out.
* **Recent frames.** :class:`RecentFrames` keeps the last :data:`RECENT` frames this
  node sent (with their trace, from the store) and received (with their hops), told by
  the node's send path and by the mesh's intake.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.resources
import itertools
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

import trio

import crypto
import mesh
from mesh import SavedSubscription, StoreStatistics
from node._api import API_PREFIX, KEEPALIVE, neighbours_json, trace_json
from node._commit import RunBlocking
from node._errors import NodeError
from node._mesh import MeshRuntime
from node._message import Published
from node._server import Request, Response

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "HISTORY",
    "OVERVIEW_PATH",
    "PAGES",
    "RECENT",
    "ROUTES_SHOWN",
    "SAMPLE_INTERVAL",
    "SNAPSHOT_INTERVAL",
    "Dashboard",
    "DashboardHost",
    "RecentFrames",
]

#: Where the overview is served (on the API listeners, with the API's token).
OVERVIEW_PATH: Final = f"{API_PREFIX}overview"
#: Paths that name a page rather than a file.
PAGES: Final = {"/": "index.html", "/chirp": "chirp.html"}
#: The package folder holding the pages (package data of ``node``).
_FOLDER: Final = "dashboard"
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: Everything from the node itself, nothing inline, nothing framing the pages.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)
#: How often the overview is read at most, and how often a stream looks at it (s).
SNAPSHOT_INTERVAL: Final = 1.0
#: How often the throughput sampler records the counters (s of the node's clock).
SAMPLE_INTERVAL: Final = 2.0
#: How far back the throughput history goes (s): the chart's width.
HISTORY: Final = 600.0
#: Frames kept of each direction (sent, received) for the recent-frames tables.
RECENT: Final = 50
#: Routes an overview lists (a big mesh has thousands: ``GET /api/v1/routes`` has all).
ROUTES_SHOWN: Final = 50
#: Rows an overview lists of the other tables (neighbours, queues, relaying).
_ROWS: Final = 200
#: Trace states after which a sent frame's trace no longer changes.
_SETTLED: Final = frozenset({"delivered", "dropped"})


class DashboardHost(Protocol):
    """What the dashboard needs from the node."""

    node_id: crypto.NodeId
    store: mesh.Store
    mesh: MeshRuntime
    clock: Callable[[], int]
    run_blocking: RunBlocking
    #: Runs the store's calls (its own thread).
    run_store: RunBlocking

    def status(self, store: StoreStatistics | None = None) -> dict[str, Any]: ...

    def routes(self) -> list[dict[str, Any]]: ...

    async def queues(self) -> list[dict[str, Any]]: ...

    async def subscriptions(self) -> list[SavedSubscription]: ...


#: The local API's token check (:meth:`node._api.LocalApi.refusal`).
Refusal = Callable[[Request, dict[str, list[str]]], Response | None]


@dataclasses.dataclass
class _Sent:
    id: bytes
    kind: str
    to: str  # a node id, or a topic
    size: int
    at: int
    trace: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        trace = self.trace or {}
        return {
            "id": self.id.hex(),
            "kind": self.kind,
            "to": self.to,
            "size": self.size,
            "at": self.at,
            # Publications have no trace: they go to every subscriber, no receipt.
            "state": trace.get("state", "published" if self.kind == "pub" else None),
            "hops": trace.get("hops"),
            "next_hop": trace.get("next_hop"),
            "by": trace.get("by"),
            "why": trace.get("why"),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class _Received:
    """Kept as taken (ids as NodeIds, not text): this is made for every frame the
    store takes, and only the last few are ever shown."""

    id: bytes
    kind: crypto.Kind
    src: crypto.NodeId
    hops: int
    size: int
    at: int
    what: str  # delivered, forwarded, held, publication, receipt
    topic: str | None
    came_from: crypto.NodeId | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.hex(),
            "kind": str(self.kind),
            "src": self.src.text,
            "hops": self.hops,
            "size": self.size,
            "at": self.at,
            "what": self.what,
            "topic": self.topic,
            "from": None if self.came_from is None else self.came_from.text,
        }


class RecentFrames:
    """The last ``limit`` frames this node sent and received (newest last)."""

    def __init__(self, limit: int = RECENT) -> None:
        self._sent: collections.deque[_Sent] = collections.deque(maxlen=limit)
        self._received: collections.deque[_Received] = collections.deque(maxlen=limit)

    def sent(self, frames: Sequence[crypto.Frame], *, at: int) -> None:
        """Messages of ours taken into custody (a batch may hold thousands: only the last
        are kept)."""
        for frame in frames[-(self._sent.maxlen or 0) :]:
            to = "" if frame.dst is None else frame.dst.text
            self._sent.append(_Sent(frame.id, str(frame.kind), to, len(frame.body or b""), at))

    def published(self, published: Published, size: int, *, at: int) -> None:
        """A publication of ours taken into custody."""
        self._sent.append(_Sent(published.id, "pub", published.topic, size, at))

    def received(self, intake: mesh.Intake, *, at: int) -> None:
        """A frame a neighbour handed us that the store took (not a duplicate)."""
        frame = intake.admitted.frame
        decision = intake.decision
        if frame.kind is crypto.Kind.RCPT:
            what = "receipt"
        elif isinstance(decision, mesh.Fanout):
            what = "publication"
        elif isinstance(decision, mesh.Forward):
            what = "held" if decision.next_hop is None else "forwarded"
        else:
            what = "delivered"
        self._received.append(
            _Received(
                id=frame.id,
                kind=frame.kind,
                src=frame.src,
                hops=intake.admitted.hops,
                size=len(frame.body or b""),
                at=at,
                what=what,
                topic=frame.topic,
                came_from=intake.came_from,
            )
        )

    def unsettled(self) -> list[bytes]:
        """Ids of the messages sent whose trace may still change."""
        return [
            item.id
            for item in self._sent
            if item.kind == "msg" and (item.trace is None or item.trace["state"] not in _SETTLED)
        ]

    def settle(self, traces: dict[bytes, mesh.Trace | None]) -> None:
        """Take the traces read for :meth:`unsettled` frames."""
        for item in self._sent:
            trace = traces.get(item.id)
            if trace is not None:
                item.trace = trace_json(trace)

    def to_json(self) -> dict[str, Any]:
        """Newest first."""
        return {
            "sent": [item.to_json() for item in reversed(self._sent)],
            "received": [item.to_json() for item in reversed(self._received)],
        }


@dataclasses.dataclass(frozen=True)
class _Sample:
    at: int  # the node's clock, ms
    frames_in: int
    frames_out: int


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """An overview, encoded once for every page that shows it."""

    taken: float  # trio time
    version: int
    json: bytes
    event: bytes


def _bounded(rows: Sequence[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"count": len(rows), "rows": list(rows[:limit])}


def _error(status: int, words: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = (json.dumps({"error": words}) + "\n").encode("utf-8")
    return Response(status, [("content-type", "application/json"), *headers], body)


class Dashboard:
    """One node's dashboard: its pages, its overview stream, its throughput sampler
    and recent frames. See the module docstring."""

    def __init__(self, node: DashboardHost, refusal: Refusal) -> None:
        self.node = node
        self.refusal = refusal
        self.recent = RecentFrames()
        self._history: collections.deque[_Sample] = collections.deque(
            maxlen=int(HISTORY / SAMPLE_INTERVAL) + 1
        )
        self._files: dict[str, bytes] | None = None
        self._snapshot: _Snapshot | None = None
        self._failure: tuple[float, mesh.MeshError | NodeError] | None = None
        self._last: dict[str, Any] | None = None
        self._version = 0
        self._lock = trio.Lock()
        #: Snapshots taken (each reads the store): at most one per SNAPSHOT_INTERVAL.
        self.reads = 0
        #: When the node started (trio time), for the uptime; None if made outside trio.
        self._started: float | None = None
        with contextlib.suppress(RuntimeError):
            self._started = trio.current_time()

    # -- what the node tells it ---------------------------------------------------------

    def sent(self, frames: Sequence[tuple[crypto.Frame, bytes]]) -> None:
        """Messages of ours (sealed) just taken into custody."""
        self.recent.sent([frame for frame, _ in frames[-RECENT:]], at=self.node.clock())

    def sent_publication(self, published: Published, body: bytes) -> None:
        """A publication of ours just taken into custody."""
        self.recent.published(published, len(body), at=self.node.clock())

    def received(self, intake: mesh.Intake, now: int) -> None:
        """A frame a neighbour handed us, taken by the store at ``now``."""
        self.recent.received(intake, at=now)

    async def sample(self) -> None:
        """Record the frame counters every :data:`SAMPLE_INTERVAL` s, until cancelled."""
        while True:
            self.record_sample()
            await trio.sleep(SAMPLE_INTERVAL)

    def record_sample(self) -> None:
        statistics = self.node.mesh.statistics
        self._history.append(
            _Sample(
                self.node.clock(),
                statistics.frames_accepted,
                statistics.sent_accepted + statistics.sent_duplicate,
            )
        )

    def throughput(self) -> list[list[float]]:
        """``[at (ms), frames in /s, frames out /s]`` between each two samples."""
        points = []
        for before, after in itertools.pairwise(self._history):
            seconds = (after.at - before.at) / 1000
            if seconds <= 0:
                continue
            points.append(
                [
                    after.at,
                    round((after.frames_in - before.frames_in) / seconds, 2),
                    round((after.frames_out - before.frames_out) / seconds, 2),
                ]
            )
        return points

    # -- the pages ----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Serve a page or a file of the dashboard: 405 for a method other than GET or
        HEAD, 404 for a path that names none of them."""
        if request.method not in ("GET", "HEAD"):
            return self._text(
                405,
                f"the dashboard's pages take GET, not {request.method}",
                [("allow", "GET, HEAD")],
            )
        files = await self._load()
        path = request.path
        name = PAGES.get(path) or path[1:]
        body = files.get(name)
        if body is None or not path.startswith("/"):
            return self._text(
                404, f"no such resource: {path} (the dashboard is / and /chirp; the API /api/v1/)"
            )
        suffix = name[name.rfind(".") :]
        headers = [("content-type", _CONTENT_TYPES[suffix]), *_HEADERS]
        return Response(200, headers, b"" if request.method == "HEAD" else body)

    def _text(self, status: int, words: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return Response.text(status, words, [*headers, *_HEADERS])

    async def _load(self) -> dict[str, bytes]:
        """The files of the package folder, by name (read once)."""
        if self._files is None:
            self._files = await self.node.run_blocking(read_files)
        return self._files

    # -- the overview -------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """``GET /api/v1/overview[?follow=1]``: see the module docstring."""
        query = urllib.parse.parse_qs(request.query)
        refused = self.refusal(request, query)
        if refused is not None:
            return refused
        if request.method != "GET":
            return _error(405, f"the overview takes GET, not {request.method}", [("allow", "GET")])
        if query.get("follow", ["0"])[-1].lower() in ("1", "true", "yes"):
            headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
            return Response(200, headers, stream=self._events(), long_lived=True)
        try:
            snapshot = await self.snapshot()
        except (mesh.MeshError, NodeError) as exc:
            return _error(503, f"the node cannot read its store now: {exc}")
        headers = [("content-type", "application/json"), ("cache-control", "no-store")]
        return Response(200, headers, snapshot.json)

    async def _events(self) -> AsyncIterator[bytes]:
        yield b"retry: 3000\n: ptth overview\n\n"
        version: int | None = None
        written = trio.current_time()
        while True:
            try:
                snapshot = await self.snapshot()
            except (mesh.MeshError, NodeError) as exc:
                yield f"event: problem\ndata: {json.dumps({'error': str(exc)})}\n\n".encode()
                written = trio.current_time()
            else:
                if snapshot.version != version:
                    version = snapshot.version
                    yield snapshot.event
                    written = trio.current_time()
                elif trio.current_time() - written >= KEEPALIVE:
                    yield b": keep-alive\n\n"
                    written = trio.current_time()
            await trio.sleep(SNAPSHOT_INTERVAL)

    async def snapshot(self) -> _Snapshot:
        """The overview, read afresh if the last one is :data:`SNAPSHOT_INTERVAL` old.
        Raises :class:`mesh.MeshError` if the store cannot be read."""
        async with self._lock:
            now = trio.current_time()
            failed = self._failure
            if failed is not None and now - failed[0] < SNAPSHOT_INTERVAL:
                raise failed[1]  # a store that just failed is not asked again at once
            snapshot = self._snapshot
            if snapshot is None or now - snapshot.taken >= SNAPSHOT_INTERVAL:
                try:
                    snapshot = self._snapshot = await self._take()
                except (mesh.MeshError, NodeError) as exc:
                    self._failure = (now, exc)
                    raise
                self._failure = None
            return snapshot

    async def _take(self) -> _Snapshot:
        self.reads += 1
        value = await self.read()
        changing = ("uptime", "now")
        steady = {key: item for key, item in value.items() if key not in changing}
        if steady != self._last:
            self._last = steady
            self._version += 1
        data = json.dumps(value, separators=(",", ":"))
        event = f"id: {self._version}\nevent: overview\ndata: {data}\n\n".encode()
        return _Snapshot(trio.current_time(), self._version, (data + "\n").encode(), event)

    async def read(self) -> dict[str, Any]:
        """The overview as JSON (a fresh read: :meth:`snapshot` shares them)."""
        node = self.node
        store = node.store
        unsettled = self.recent.unsettled()

        def from_store() -> tuple[StoreStatistics, dict[bytes, mesh.Trace | None]]:
            return store.statistics(), {frame_id: store.trace(frame_id) for frame_id in unsettled}

        statistics, traces = await node.run_store(from_store)
        queues = await node.queues()
        saved = await node.subscriptions()
        self.recent.settle(traces)
        status = node.status(statistics)
        routes = node.routes()
        neighbours = neighbours_json(status, queues)
        points = self.throughput()
        latest = points[-1] if points else [node.clock(), 0.0, 0.0]
        started = self._started
        subscriptions = node.mesh.subscriptions
        return {
            "node": status["node"],
            "name": status["name"],
            "endpoints": status["endpoints"],
            "now": node.clock(),
            "uptime": None if started is None else round(trio.current_time() - started, 1),
            "inbox": status["inbox"],
            "queued": status["queued"],
            "seen_ids": status["seen_ids"],
            "connections": status["connections"],
            "peers": len(status["peers"]),
            "neighbours": _bounded(neighbours, _ROWS),
            "routes": _bounded(routes, ROUTES_SHOWN),
            "queues": _bounded([q for q in queues if q["frames"] or q["link"]], _ROWS),
            "subscriptions": {
                "named": [
                    {"name": s.name, "patterns": list(s.patterns), "lease": s.lease_ms / 1000}
                    for s in saved
                ],
                "advertised": sorted(subscriptions.advertised),
                "live": len(subscriptions),
            },
            "attachments": status["attachments"],
            "relaying": _bounded(status["relaying"], _ROWS),
            "counters": status["counters"],
            "rates": {"in": latest[1], "out": latest[2]},
            "throughput": {"interval": SAMPLE_INTERVAL, "span": HISTORY, "points": points},
            "recent": self.recent.to_json(),
        }


def read_files() -> dict[str, bytes]:
    """The dashboard's files (package data), by name: those whose type it serves."""
    folder = importlib.resources.files("node").joinpath(_FOLDER)
    files = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            files[entry.name] = entry.read_bytes()
    return files
