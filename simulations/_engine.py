"""Engine-level fidelity: frames POSTs handed from node to node as events, without HTTP.

A simulation runs at one of two fidelities (:class:`Fidelity`) with the same nodes,
network, scenarios and report (docs/simulations-fidelity.md):

* ``full``: everything between nodes goes through each node's HTTP clients and h11
  server over simulated TCP connections (:class:`~simulations.SimNetwork`).
* ``engine``: each node's forwarders post their batches through a
  :class:`DirectFrames` (its :class:`node._forwarder.FrameClient`, given to
  ``Node.open(frame_client=...)``), which hands the batch's frames to the receiving
  node's mesh (``MeshRuntime.receive``, where every frame's COSE signature is checked
  as ever) and its per-frame results back: no HTTP, no RFC 9421 signatures on requests
  and answers, and no CBOR around the frames (their bytes are counted as encoded).
  Attaching to a relay (Reverse HTTP) and its keep-alive pings stay on the simulated
  HTTP network: control traffic, not per message.

A POST meets on its way what the full level's model would do to it, drawn from the
same links and random sources (:class:`EngineNetwork`):

* the sender's connection pool: the node's own (:class:`node._h1.Pool`, as its
  :class:`node._h1.H1Client` runs it: :data:`POOL_CONNECTIONS` connections, idle ones
  kept :data:`KEEPALIVE` s, an idle one closed to make room for another origin,
  requests waiting in turn up to the pool timeout). A POST reuses an idle connection
  to its endpoint or dials one (:meth:`SimNetwork.handshake`: SYNs lost, dropped by
  a partition or a NAT until the connect timeout; refused where nobody listens). A
  connection to a node that has crashed is gone once its RST has had time to arrive;
  one its server left idle past the server's idle timeout is reset when a request
  comes.
* the request (head and body in one write, as the node's client makes it) and the
  answer (one write; two when a relay streams it on) each cross their link direction:
  latency and jitter, loss as retransmission delay, bandwidth shared with all other
  traffic that way, and a reset breaking the exchange (after the node took the frames,
  for an answer's). A partition holds them until it heals, or the sender's read
  timeout ends the wait; a request given up on still lands once the partition heals.
* at the endpoint's host, a node that is down, or was restarted since the connection
  was made, resets the exchange (seen a one-way delay later). Otherwise its server's
  checks come first, as in ``Node._admit`` and ``Node._receive_frames``: shutting down
  (503), a sender its policy refuses (403), a bad body (400, 413), the ``store``
  capability presented (``PTTH-Capability``), then ``mesh.receive``: the store full is
  429 (Retry-After 30), another store error 503 (Retry-After 10). A simulated node's
  intake never waits (its store runs inline), so it is made the instant the request
  arrives, in the request's task (no task of its own: :func:`_at_once`).
* through a relay (an endpoint ``http://RELAY/n/NODE``), the relay decides as its
  :class:`node._relay.RelayService` does for a visitor: 404 if the node has no
  attachment there (or its lease is over), 503 if it gave its place away, waiting up to
  ``visitor_wait`` for an idle reversed connection or a detached node to come back
  (then 503); then request and answer cross the link between relay and node over one
  of the node's real reversed connections (taken and given back as the relay does; its
  capability headers stripped, as the relay strips ``PTTH-*``): 502 if the node crashed
  or the connection reset (which closes it: the node attaches again), 504 past
  ``reply_timeout``.

The sender's forwarder gets what it gets at the full level: results, or
:class:`node._forwarder.PostFailed` (connection errors, timeouts, 429, 503, a bad
answer) or :class:`node.DeliveryFailed` (any other refusal) to retry on.

Not modelled: HTTP's own work and limits (parsing, the servers' connection slots and
the shorter idle timeout under pressure, the body budget, long-poll's round trips),
request signatures and their replay guard. No byte of an exchange crosses a reversed
connection, so the relay still pings one that exchanges keep busy (every other ping
interval: :func:`_last_use`), where at full level the exchanges keep it alive.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, Protocol

import trio

import crypto
import mesh
from node import DeliveryFailed, Node
from node._forwarder import FRAMES_PATH, FrameClient, PostFailed
from node._h1 import KEEPALIVE, MAX_CONNECTIONS, Origin, Pool, PooledConnection
from node._mesh import STARTING
from node._relay import _Reversed, check_presented, presentable
from node._server import PrefixedStream
from simulations._clock import sleep_until
from simulations._errors import one_of
from simulations._link import Transit
from simulations._network import SimNetwork
from simulations._stream import SimStream

__all__ = [
    "KEEPALIVE",
    "POOL_CONNECTIONS",
    "REQUEST_HEAD",
    "RESPONSE_HEAD",
    "DirectFrames",
    "EngineHost",
    "EngineNetwork",
    "Fidelity",
    "fidelity",
]

#: The head of a frames POST, in bytes: request line, host, content type and length,
#: and the RFC 9421 signature headers (as node/_h1.py writes it for host n12: 469).
REQUEST_HEAD: Final = 469
#: The head of its answer: status line, content type and length, signature (505).
RESPONSE_HEAD: Final = 505
#: What a relay adds to the head of an answer it streams on (a ``Via``).
_VIA: Final = 41
#: The node's frames connection pool (node/_h1.py): connections at most (all may stay
#: idle); idle ones are kept KEEPALIVE s.
POOL_CONNECTIONS: Final = MAX_CONNECTIONS
#: Where relays serve visitors of attached nodes (node/_relay.py).
_VISITOR_PREFIX: Final = "/n/"
_CUSTODY_WHAT: Final = "storing frames for others on this relay"


class Fidelity(enum.StrEnum):
    """How much of a node a simulation runs (see the module docstring)."""

    #: Every byte through HTTP: the node's client and server, unchanged.
    FULL = "full"
    #: Frames passed between meshes as events, over the same network model.
    ENGINE = "engine"


def fidelity(value: Fidelity | str) -> Fidelity:
    """``value`` as a :class:`Fidelity`. Raises :class:`SimulationError` naming the
    choices for anything else."""
    return one_of(Fidelity, value, "fidelity")


class EngineHost(Protocol):
    """What the engine needs of a simulated host (:class:`simulations.SimNode` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def stopped_at(self) -> float:
        """When its node last stopped or crashed (trio time; -inf: never)."""
        ...

    def serving(self) -> tuple[Node, trio.Nursery] | None:
        """The running node and a nursery of its run (cancelled when it stops or
        crashes), or None while it is not running."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """What came back to a POST: a status and the size of its body (and words, for a
    refusal), or a reset connection."""

    status: int = 0
    #: The body's length: the engine counts the bytes of answers it does not make.
    size: int = 0
    words: str = ""
    retry_after: float | None = None
    reset: bool = False
    #: Streamed on by a relay: its head (with a ``Via``) and body in two writes.
    relayed: bool = False
    #: The results a 200's body would encode, as the node made them (the sender reads
    #: these; nobody encodes them: :func:`mesh.results_size` gives the body's length).
    results: list[mesh.Result] | None = None

    @classmethod
    def refusal(cls, status: int, words: str, retry_after: float | None = None) -> _Answer:
        return cls(status, len(words.encode()), words, retry_after)


_RESET: Final = _Answer(reset=True)


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    """A frames POST's body as the engine carries it: the frames the sender's
    forwarder gave, and the size of the CBOR sequence the full level would send
    (:func:`mesh.encoded_size`). No byte crosses a wire here, so nobody encodes the
    frames to decode them again at the next node, nor the results back (the
    ``mesh`` scenario, 300 nodes: the same report, 12% less time); the receiving node
    takes the same :class:`mesh.WireFrame` values as ever."""

    frames: tuple[mesh.WireFrame, ...]
    size: int

    def encoded(self) -> bytes:
        """The body on the wire (for the ``store`` capability's content digest)."""
        return mesh.encode_frames(self.frames)


class _Reply:
    """An answer being made at another host (in a task of its node's run)."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: _Answer | None = None


class _Broken(Exception):
    """The exchange got no answer: ``kind`` names it as httpx would."""

    def __init__(self, kind: str, words: str) -> None:
        super().__init__(f"{kind}: {words}")
        self.kind = kind
        self.words = words


class _Connection(PooledConnection):
    """One connection of a node's pool, to ``origin`` ("http", host, port)."""

    __slots__ = ("server", "server_idle_since")

    def __init__(self, origin: Origin) -> None:
        super().__init__(origin)
        #: The run of the node it reached (None: not known yet).
        self.server: Node | None = None
        #: Since when the server has waited for a request on it (accepted, or answered).
        self.server_idle_since = 0.0


class EngineNetwork:
    """Carries the frames POSTs of a simulation's nodes (see the module docstring).

    ``network`` is the simulation's (its links, partitions, NATs and counters);
    ``host`` finds a host's node by host name and ``by_id`` by node id (None: none).
    """

    def __init__(
        self,
        network: SimNetwork,
        host: Callable[[str], EngineHost | None],
        by_id: Callable[[crypto.NodeId], EngineHost | None],
    ) -> None:
        self.network = network
        self._host = host
        self._by_id = by_id

    def frame_client(self, host: str, node: crypto.NodeId) -> Callable[[FrameClient], FrameClient]:
        """What ``Node.open(frame_client=...)`` takes for node ``node`` on ``host``."""

        def wrap(inner: FrameClient) -> FrameClient:
            return DirectFrames(inner, self, host, node)

        return wrap

    # -- the wire ---------------------------------------------------------------------

    def write(self, src: str, dst: str, size: int) -> Transit:
        """One write of ``size`` bytes from ``src`` to ``dst``, counted as the full
        level's streams count theirs."""
        transit = self.network._transit(src, dst, size)
        statistics = self.network.statistics
        statistics.bytes += size
        statistics.writes += 1
        if transit.reset:
            statistics.random_resets += 1
            statistics.resets += 1
        return transit

    def reset(self, src: str, dst: str) -> float:
        """Send an RST from ``src`` to ``dst``; return when it arrives."""
        self.network.statistics.resets += 1
        return self.network._transit(src, dst, 0).arrival

    async def carry(self, src: str, dst: str, arrival: float) -> None:
        """Wait until what left ``src`` for ``dst`` arrives at ``arrival``, and on
        while a partition separates them (TCP retransmits until it heals)."""
        if arrival > trio.current_time():
            await sleep_until(arrival)
        while self.network.is_cut(src, dst):
            await self.network._wait_topology_change()

    def running(self, host: str) -> Node | None:
        """The node running on ``host`` now, if any."""
        target = self._host(host)
        serving = None if target is None else target.serving()
        return None if serving is None else serving[0]

    def alive(self, client: str, connection: _Connection) -> bool:
        """Whether ``client`` may take ``connection`` for alive: the node it reached
        still runs, or ran until so recently that its RST is still on the way."""
        host = connection.origin[1]
        if connection.server is None or self.running(host) is connection.server:
            return True
        target = self._host(host)
        stopped = -math.inf if target is None else target.stopped_at
        return trio.current_time() < stopped + self.network.link(host, client).latency

    def land_later(
        self,
        src: str,
        arrival: float,
        connection: _Connection,
        path: str,
        sender: crypto.NodeId,
        request: _Request,
        headers: Sequence[tuple[str, str]],
    ) -> None:
        """A request its sender gave up on while a partition held it: as TCP's
        retransmissions would, it still reaches the node once the partition heals, and
        is taken there (the answer goes nowhere: the sender hung up)."""

        async def land() -> None:
            await self.carry(src, connection.origin[1], arrival)
            await self.serve(connection, path, sender, request, headers)

        self.network._start_pump(land)

    # -- the receiving host -----------------------------------------------------------

    async def serve(
        self,
        connection: _Connection,
        path: str,
        sender: crypto.NodeId,
        request: _Request,
        headers: Sequence[tuple[str, str]],
    ) -> _Answer:
        """The answer of the node at ``connection``'s host to a frames POST that has
        arrived there now (a reset if none is running, or it is another run)."""
        target = self._host(connection.origin[1])
        serving = None if target is None else target.serving()
        if serving is None or connection.server not in (None, serving[0]):
            return _RESET  # data for a closed socket: the kernel answers with an RST
        node, nursery = serving
        if trio.current_time() > connection.server_idle_since + node.config.server.idle_timeout:
            return _RESET  # the server closed it, idle (its FIN crossed the request)
        connection.server = node
        assert target is not None
        host = target.name
        if path == FRAMES_PATH:
            return _at_once(take_frames(node, sender, request, headers))
        if path.startswith(_VISITOR_PREFIX):
            return await _in_run(nursery, lambda: self._relay(node, host, path, sender, request))
        return _Answer.refusal(404, f"no such resource: {path}")

    async def _relay(
        self, relay: Node, relay_host: str, path: str, sender: crypto.NodeId, request: _Request
    ) -> _Answer:
        """A relay's answer to a visitor's POST for an attached node, as
        ``RelayService.forward`` makes it: over one of the node's reversed connections
        (taken from the idle ones, given back after a whole answer, closed after a
        broken one: the node then attaches again)."""
        service = relay.relay_service
        wait = service.config.visitor_wait
        node_text, _, tail = path[len(_VISITOR_PREFIX) :].partition("/")
        try:
            node_id = crypto.NodeId.parse(node_text)
        except crypto.Malformed as exc:
            return _Answer.refusal(404, f"relay: bad node id: {exc}")
        attachment = service.attachments.get(node_id)
        if attachment is None or (attachment.lease_over() and not attachment.attached):
            return _Answer.refusal(404, f"relay: {node_id.short} is not attached here")
        if service._lapsed(attachment) is not None:
            return _gave_way(attachment.refused, node_id, wait)
        target = self._by_id(node_id)
        if target is None or "/" + tail != FRAMES_PATH:
            return _Answer.refusal(404, f"no such resource: /{tail}")
        attachment.requests += 1
        attachment.last_activity = trio.current_time()
        deadline = trio.current_time() + wait
        while True:
            connection = service._take_idle(attachment)
            if connection is not None or (attachment.polling and not attachment.connections):
                break  # (long-poll: carried as over a connection)
            if attachment.evicted:
                return _gave_way(attachment.refused, node_id, wait)
            if trio.current_time() >= deadline:
                if attachment.attached:
                    words = f"no free connection to {node_id.short} within {wait:g} s"
                    return _Answer.refusal(503, f"relay: {words}", 1)
                words = f"{node_id.short} is detached (its lease holds its URL space)"
                return _Answer.refusal(503, f"relay: {words}", max(1, int(wait)))
            with trio.move_on_at(deadline):
                await attachment.changed.wait()
        answer: _Answer | None = None
        try:
            timeout = service.config.reply_timeout
            with trio.move_on_after(timeout):
                answer = await self._over_reversed(relay_host, target, sender, request)
                if answer is None:
                    reason = "connection reset"
                    return _Answer.refusal(502, f"relay: bad answer from {node_id.short}: {reason}")
                return dataclasses.replace(answer, relayed=True)
            return _Answer.refusal(
                504, f"relay: {node_id.short} did not answer within {timeout:g} s"
            )
        finally:
            if connection is not None:
                # As _RelayedBody.release: idle again after a whole answer, else closed.
                connection.busy = False
                if answer is not None and not connection.closed.is_set():
                    attachment.idle.append(connection)
                    attachment.last_activity = now = trio.current_time()
                    connection.last_used = _last_use(connection, now, service.config.ping_interval)
                else:
                    connection.close()
                attachment.notify()

    async def _over_reversed(
        self, relay_host: str, target: EngineHost, sender: crypto.NodeId, request: _Request
    ) -> _Answer | None:
        """Request (one write: the relay strips the visitor's ``PTTH-*`` headers, its
        capabilities too) and answer over a reversed connection between the relay and
        the node on ``target``; None if it broke."""
        natted = target.name
        sent = self.write(relay_host, natted, REQUEST_HEAD + request.size)
        if sent.reset:
            return None
        await self.carry(relay_host, natted, sent.arrival)
        serving = target.serving()
        if serving is None:
            return None
        answer = _at_once(take_frames(serving[0], sender, request, ()))
        back = self.write(natted, relay_host, RESPONSE_HEAD + answer.size)
        await self.carry(natted, relay_host, back.arrival)
        return None if back.reset else answer


def _last_use(connection: _Reversed, now: float, ping_interval: float) -> float:
    """The last use to note for a reversed connection an exchange was carried over at
    ``now``. The relay pings one unused for ``ping_interval``; at full level the
    exchange's bytes did that, and kept the node's server from closing it for silence.
    At engine level no byte crossed it, so the use noted is no later than one interval
    after the last bytes that did cross (a ping, the Upgrade): the relay then pings a
    busy connection every other interval, in time for the node's idle timeout (60 s,
    2.4 intervals), and an idle one as at full level."""
    stream = connection.stream
    while isinstance(stream, PrefixedStream):
        stream = stream.stream
    if not isinstance(stream, SimStream):
        return now
    return max(connection.last_used, min(now, stream._last_arrival + ping_interval))


async def _in_run(nursery: trio.Nursery, make: Callable[[], Awaitable[_Answer]]) -> _Answer:
    """Make an answer in ``nursery``, a node's run: the sender may give up waiting and
    the node goes on; if the node stops or crashes meanwhile, the connection resets."""
    reply = _Reply()

    async def answer() -> None:
        try:
            reply.answer = await make()
        finally:
            reply.done.set()

    try:
        nursery.start_soon(answer)
    except RuntimeError:  # the node's run is ending ("closed to new arrivals")
        return _RESET  # as its socket would: the request is never answered
    await reply.done.wait()
    return reply.answer or _RESET


def _at_once(making: Coroutine[Any, Any, _Answer]) -> _Answer:
    """The answer ``making`` (a node's :func:`take_frames`) makes without waiting.

    A simulated node's intake never waits (its store and checks run inline,
    ``run_blocking=run_inline``), so its answer is made here, in the task of the request
    that arrived, rather than in a task of the node's run (:func:`_in_run`, for a relay's
    answer, which waits): nothing else runs meanwhile, so neither the sender giving up
    nor the node stopping can come between. An intake that would wait is a bug of the
    simulation: RuntimeError.
    """
    try:
        making.send(None)
    except StopIteration as made:
        answer: _Answer = made.value
        return answer
    making.close()
    raise RuntimeError("a simulated node's intake waited: it must run inline")


def _gave_way(refused: str | None, node: crypto.NodeId, visitor_wait: float) -> _Answer:
    if refused is not None:
        return _Answer.refusal(503, f"relay: {node.short} is no longer attached here: {refused}")
    return _Answer.refusal(
        503,
        f"relay: {node.short} went away; its place here went to another node",
        max(1, int(visitor_wait)),
    )


async def take_frames(
    node: Node, sender: crypto.NodeId, request: _Request, headers: Sequence[tuple[str, str]]
) -> _Answer:
    """``node``'s answer to a frames POST from ``sender``: the checks and the intake of
    ``Node._admit`` and ``Node._receive_frames``, without HTTP and request signatures."""
    statistics = node.mesh.statistics
    router = node.mesh.router

    def refuse(status: int, words: str, retry_after: float | None = None) -> _Answer:
        statistics.requests_refused += 1
        return _Answer.refusal(status, words, retry_after)

    server = node.server
    if server is not None and server._closing.is_set():
        return refuse(503, "node is shutting down", 5)
    if not node.mesh.ready:
        return refuse(503, STARTING, 1)
    refusal = router.policy.sender_refusal(sender, neighbour=sender in router.links)
    if refusal is not None:
        return refuse(403, refusal)
    now = node.clock()
    items: list[mesh.WireFrame | mesh.Result] = list(request.frames)
    try:
        if not items or len(items) > mesh.MAX_FRAMES_PER_REQUEST:  # refused as ever
            items = mesh.decode_frames(request.encoded())
    except crypto.TooLarge as exc:
        return refuse(413, str(exc))
    except crypto.Malformed as exc:
        return refuse(400, f"body is not a CBOR sequence of frames: {exc}")
    try:
        if router.authority.requirements.store:
            with node.store.custody(sender, _custody(node, sender, request, headers)):
                results = await node.mesh.receive(items, sender, now)
        else:
            results = await node.mesh.receive(items, sender, now)
    except mesh.StoreFull as exc:
        return refuse(429, str(exc), 30)
    except mesh.MeshError as exc:
        return refuse(503, f"store unavailable: {exc}", 10)
    return _Answer(200, mesh.results_size(results), results=results)


def _custody(
    node: Node, sender: crypto.NodeId, request: _Request, headers: Sequence[tuple[str, str]]
) -> mesh.Custody:
    """As ``Node._custody``: the terms of the ``store`` capability presented."""
    from crypto import _httpsig  # the request's content digest names the use

    try:
        verified = check_presented(
            node.mesh.router.authority,
            headers,
            now=node.clock(),
            operation=crypto.Operation.STORE,
            presenter=sender,
            use=_httpsig.content_digest(request.encoded()).encode(),
            what=_CUSTODY_WHAT,
        )
    except crypto.CapabilityRefused as exc:
        return mesh.Custody(refused=str(exc))
    return mesh.Custody(quota=verified.quota)


class DirectFrames(FrameClient):
    """A node's :class:`FrameClient` at engine level: each POST (one endpoint tried,
    in the order and with the preference :meth:`FrameClient.post` keeps) is carried
    by ``engine`` to the endpoint's node, as the module docstring says.

    ``inner`` is the node's own FrameClient (its counters, wallet, clock and HTTP
    client's timeouts are this one's); ``host`` is the node's host and ``node`` its id.
    """

    def __init__(
        self, inner: FrameClient, engine: EngineNetwork, host: str, node: crypto.NodeId
    ) -> None:
        super().__init__(
            inner.client, inner.sign_request, inner.clock, inner.on_request, wallet=inner.wallet
        )
        self.engine = engine
        self.host = host
        self.node = node
        self.connect_timeout = inner.client.connect_timeout
        self.read_timeout = inner.client.read_timeout
        self.pool_timeout = inner.client.pool_timeout
        self.pool: Pool[_Connection] = Pool(
            inner.client.pool.size,
            inner.client.pool.keepalive,
            functools.partial(engine.alive, host),
            _Connection,
        )
        self._targets: dict[str, tuple[Origin, str]] = {}  # url: (origin, path)

    async def post(
        self, dst: crypto.NodeId, endpoints: Sequence[str], frames: Sequence[mesh.WireFrame]
    ) -> list[mesh.Result]:
        request = _Request(tuple(frames), mesh.encoded_size(frames))
        return await self.each_endpoint(
            dst, endpoints, functools.partial(self._post_request, dst, request)
        )

    async def _post_request(
        self, dst: crypto.NodeId, request: _Request, url: str
    ) -> list[mesh.Result]:
        target = self._targets.get(url)
        if target is None:
            split = urllib.parse.urlsplit(url)
            origin = ("http", (split.hostname or "").lower(), split.port or 80)
            target = self._targets[url] = (origin, split.path)
        origin, path = target
        headers = (
            [] if self.wallet is None else presentable(self.wallet, crypto.Operation.STORE, dst)
        )
        self.on_request()
        try:
            answer = await self._exchange(origin, path, request, headers)
        except _Broken as exc:
            raise PostFailed(f"{exc.kind} from {url}: {exc.words}") from None
        if answer.status in (429, 503):
            raise PostFailed(f"{answer.status} from {url}: {answer.words}", answer.retry_after)
        if answer.status != 200:
            raise DeliveryFailed(f"{dst.short} refused the request: {answer.status} {answer.words}")
        assert answer.results is not None  # a 200 is made by take_frames, with its results
        return answer.results

    async def _exchange(
        self,
        origin: Origin,
        path: str,
        request: _Request,
        headers: Sequence[tuple[str, str]],
    ) -> _Answer:
        connection = await self._connect(origin)
        kept = False
        try:
            answer = await self._round_trip(connection, path, request, headers)
            kept = True
            return answer
        finally:
            self.pool.release(connection, keep=kept)

    async def _connect(self, origin: Origin) -> _Connection:
        """A connection to ``origin`` from the pool, dialled if new."""
        _, host, port = origin
        ticket = self.pool.request(origin)
        connection = ticket.connection
        if connection is None:  # none free: wait in turn (a scope only then: per POST)
            with trio.move_on_after(self.pool_timeout):
                connection = await self.pool.wait(ticket)
        if connection is None:
            raise _Broken("PoolTimeout", f"no connection free within {self.pool_timeout:g} s")
        if not connection.new:
            return connection
        network = self.engine.network
        try:
            with trio.fail_after(self.connect_timeout):
                await network.handshake(self.host, host, port)
            if not network.listening(host, port):
                network.statistics.dials_refused += 1
                raise _Broken("ConnectError", f"[Errno 111] connection refused: {host}:{port}")
        except trio.TooSlowError:
            self.pool.release(connection, keep=False)
            raise _Broken("ConnectTimeout", f"no answer from {host}:{port}") from None
        except OSError as exc:
            self.pool.release(connection, keep=False)
            raise _Broken("ConnectError", str(exc)) from None
        except BaseException:
            self.pool.release(connection, keep=False)
            raise
        network.statistics.connections += 1
        connection.server = self.engine.running(host)
        connection.server_idle_since = trio.current_time()
        return connection

    async def _round_trip(
        self,
        connection: _Connection,
        path: str,
        request: _Request,
        headers: Sequence[tuple[str, str]],
    ) -> _Answer:
        engine = self.engine
        here, there = self.host, connection.origin[1]
        head = (
            REQUEST_HEAD
            + len(path)
            - len(FRAMES_PATH)
            + sum(len(name) + len(value) + 4 for name, value in headers)
        )
        sent = engine.write(here, there, head + request.size)
        if sent.depart > trio.current_time():
            await sleep_until(sent.depart)  # serialised on the link: back-pressure
        if sent.reset:
            raise _Broken("ReadError", "connection reset")
        arrival = sent.arrival
        landed = False
        with trio.move_on_after(self.read_timeout):
            await engine.carry(here, there, arrival)
            landed = True
            answer = await engine.serve(connection, path, self.node, request, headers)
            connection.server_idle_since = trio.current_time()
            if answer.reset:
                await engine.carry(there, here, engine.reset(there, here))
                raise _Broken("ReadError", f"connection reset by {there}")
            if answer.relayed:
                first = engine.write(there, here, RESPONSE_HEAD + _VIA)
                back = [first] if first.reset else [first, engine.write(there, here, answer.size)]
            else:
                back = [engine.write(there, here, RESPONSE_HEAD + answer.size)]
            await engine.carry(there, here, max(transit.arrival for transit in back))
            if any(transit.reset for transit in back):
                raise _Broken("ReadError", f"connection reset by {there}")
            return answer
        if not landed:
            engine.land_later(here, arrival, connection, path, self.node, request, headers)
        raise _Broken("ReadTimeout", f"no answer within {self.read_timeout:g} s")
