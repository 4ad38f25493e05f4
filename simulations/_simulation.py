"""Real nodes on a simulated network, in virtual time.

:func:`open_simulation` opens a :class:`Simulation`: a :class:`~simulations.SimNetwork`,
a data directory, and a nursery where each :class:`SimNode` runs a real
:class:`node.Node` (``Node.open`` with the host's view of the network, a virtual clock,
a seeded RNG and the store called inline). Each node's application consumes its inbox,
acknowledges every message and enters it in the simulation's
:class:`~simulations.Ledger` (whence duplicates, hops and latency) and in
:attr:`SimNode.received`.

Chirp (posts over publish/subscribe): :meth:`SimNode.follow` follows other nodes (the
node's named subscription ``chirp``, kept in its store); from then on, while the node
runs, its application reads that subscription (patterns from
``node.chirp.following()``, again after each restart), acknowledges each post and
enters it in the ledger and in :attr:`SimNode.posts_received`. :meth:`SimNode.chirp`
posts (``node.chirp.post``), entered in the ledger with the author's followers then.

Sending is custody: :meth:`SimNode.send` returns once the origin node has committed the
frame to its store; the mesh then carries it hop by hop (the application never sends
again). The origin's application watches the frames it sent, in one task of the node's
run for them all: the node tells it each frame of its own that settles
(``MeshRuntime.settle_listeners``), and it reads that frame's trace (``node.trace(id)``),
and every outstanding message's trace after each restart. A drop receipt enters the
message in the ledger as dropped, a delivery receipt (when asked for) as acknowledged.
(A task per message, waiting in ``node.delivered(id)``, cost a task, a cancel scope and
a read of the store for each message sent: 5-10% of a ``star`` run.)

Time: the trio run must use ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture) or a :class:`simulations.VirtualClock`: whenever every task
waits, the clock jumps to the next deadline, so an idle hour costs nothing. Time passes by sleeping
(:meth:`Simulation.advance`); the nodes' wall clock is :data:`EPOCH_MS` plus the
virtual time since the simulation opened.

Determinism: every random choice is drawn from an RNG derived from the seed and a name
(:meth:`Simulation.rng`): node identities and frame ids, link delays and losses,
traffic, churn. The same seed and script give the same run, provided trio schedules
tasks deterministically too (:func:`simulations.run_scenario` sees to that).

Crash and restart: :meth:`SimNode.crash` resets the host's connections (peers see
RSTs) and cancels the node at once; :meth:`SimNode.start` runs it again. With
``keep_store=True`` (the default) the data directory is reopened as it is: the store
survives, with the frames it held in custody. With ``keep_store=False`` the SQLite
store is deleted first, but the identity key, address record and peers stay: the same
node (same id, same peers) with an empty seen-set, inbox and queue, as after losing a
disk that held only the store (the frames it held are lost: their messages count as
dropped).

Stores (:class:`Stores`): ``disk`` (the default) opens each node's SQLite store as a
real node does, ``store.sqlite3`` in its data directory; ``memory`` keeps it in an
in-memory SQLite database (``NodeConfig.store_uri``) that the simulation holds open from
the node's creation to the simulation's end, so that it survives the node's crashes and
restarts as the file does: what was committed stays, what was not is rolled back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import functools
import math
import random
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import trio
import trio.testing
from httpcore._async import http11 as _httpcore_http11

import crypto
import mesh
from node import (
    Message,
    Node,
    NodeConfig,
    NodeStatistics,
    Publication,
    Published,
    Sent,
    run_inline,
)
from node._chirp import POST_TTL, SUBSCRIPTION, chirp_topic
from simulations._clock import VirtualClock, sleep_until
from simulations._engine import EngineHost, EngineNetwork, Fidelity
from simulations._engine import fidelity as fidelity_of
from simulations._errors import NodeDown, NotVirtualTime, SimulationError, one_of
from simulations._gc import collect_for_nodes
from simulations._link import Link
from simulations._network import SimNetwork
from simulations._report import (
    ChirpReport,
    Delivery,
    Ledger,
    Report,
    RevocationReport,
    SentMessage,
    SentPost,
    format_duration,
    percentile,
)

__all__ = [
    "EPOCH_MS",
    "LOST",
    "NODE_PORT",
    "SimNode",
    "Signatures",
    "Simulation",
    "Stores",
    "open_simulation",
]

#: The nodes' wall clock at virtual time 0: 2026-01-01T00:00:00Z, the same every run.
EPOCH_MS: Final = 1_767_225_600_000
#: The port every simulated node listens on.
NODE_PORT: Final = 8470
#: Why a message whose origin lost its store (``keep_store=False``) counts as dropped.
LOST: Final = "lost: its origin restarted without the store that held it"

#: How many checked signatures, opened frame envelopes and verified chains a
#: ``verify_once`` simulation remembers (each forgets all at once past it). Reuse comes
#: within a flood or a hop's round trip, so a short memory keeps nearly every hit:
#: ``mesh`` scenario, 300 nodes, 4 virtual minutes, ed25519, the same report either
#: way: at 100,000 (the functions' default) 787 MiB peak and 70.8 s wall, at 4,096
#: 374 MiB and 68.8 s; with stand-in signatures, 62.5 s at 100,000, 54.6 s at 2,000 and
#: 72.9 s at 1. A remembered frame envelope with its chains and signature is ~12 KB.
_REMEMBERED: Final = 4_096
#: Verified chains a ``verify_once`` simulation remembers per node, when that is more
#: than :data:`_REMEMBERED`: a tree holds a chain per node, and a memory that forgets
#: them before they come round again (past a few thousand nodes) has every node check
#: them anew, and lose the one bytes object they share per chain. ``mesh``, 2,000
#: nodes, 90 virtual seconds (engine, stand-in signatures, tree radius 2, seed 0): with
#: room for 0.5 a node, 741,071 grants checked, 353 s of CPU, 2,028 MB at the peak;
#: for 2 a node (4,096), 271,028 and 1,748 MB; for 4 a node, 220,033, 317 s, 1,726 MB.
_CHAINS_PER_NODE: Final = 4

_STORE_FILES: Final = ("store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm")


class Stores(enum.StrEnum):
    """Where a simulation's nodes keep their SQLite stores (see the module docstring)."""

    #: ``store.sqlite3`` in each node's data directory, as a real node keeps it.
    DISK = "disk"
    #: An in-memory database per node, held open by the simulation across the node's
    #: restarts: no file, no journal, no system call per commit.
    MEMORY = "memory"


class Signatures(enum.StrEnum):
    """What the nodes of a simulation sign with (see :func:`open_simulation`)."""

    #: Ed25519, as a real node signs.
    ED25519 = "ed25519"
    #: :func:`crypto.standing_in`: a keyed hash in its place, much cheaper.
    STAND_IN = "stand-in"


def signatures_of(value: Signatures | str) -> Signatures:
    """``value`` as :class:`Signatures`. Raises :class:`SimulationError` naming the
    choices for anything else."""
    return one_of(Signatures, value, "signatures")


def stores_of(value: Stores | str) -> Stores:
    """``value`` as :class:`Stores`. Raises :class:`SimulationError` naming the choices
    for anything else."""
    return one_of(Stores, value, "stores")


def derive_rng(seed: int, *names: str) -> random.Random:
    """An RNG for one purpose, from the seed and names (independent of call order)."""
    return random.Random("/".join([str(seed), *names]))


class SimNode:
    """A node of a simulation, across its crashes and restarts (see the module docstring).

    :attr:`node` is the running :class:`node.Node`; :attr:`node_id` and :attr:`name`
    stay the same for the node's whole life.
    """

    def __init__(self, sim: Simulation, name: str, *, nat: bool, config: NodeConfig) -> None:
        self.sim = sim
        self.name = name
        self.nat = nat
        self.data_dir = sim.data_dir / name
        self.rng = sim.rng("node", name)
        identity = crypto.Identity(sim.rng("identity", name).randbytes(32))
        try:
            self.data_dir.mkdir(mode=0o700)
        except FileExistsError:
            raise SimulationError(
                f"{self.data_dir} exists: a simulation needs a fresh directory per node"
            ) from None
        identity.save(self.data_dir / "identity.key")
        #: At ``Stores.MEMORY``, the connection that keeps this node's in-memory store
        #: alive while the node is down (None at ``Stores.DISK``).
        self._store_keeper: sqlite3.Connection | None = None
        if sim.stores is Stores.MEMORY:
            # Named after the data directory: unique in the process while it exists.
            name_part = urllib.parse.quote(str(self.data_dir.resolve() / "store"), safe="/")
            uri = f"file:{name_part}?mode=memory&cache=shared"
            config = dataclasses.replace(config, store_uri=uri)
            self._store_keeper = self._keep_store(uri)
        self.config = config
        self.node_id = identity.node_id
        #: What this node's application received, in order (duplicates included).
        self.received: list[Delivery] = []
        #: The nodes this one follows (chirp), in the order followed.
        self.following: list[SimNode] = []
        #: The posts this node's application read, in order (duplicates included).
        self.posts_received: list[Delivery] = []
        self._posts_changed = trio.Event()
        self._follows = trio.Lock()  # following and (re)subscribing, one at a time
        self._reading = False
        #: How many times the node was started.
        self.starts = 0
        self._node: Node | None = None
        self._scope: trio.CancelScope | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._stopped.set()
        self._started = trio.Event()
        self._past = NodeStatistics()
        self._received_changed = trio.Event()
        #: Messages this node sent whose outcome its application still waits for.
        self._outstanding: dict[bytes, SentMessage] = {}
        #: Frames being taken into custody by :meth:`send`, not outstanding yet.
        self._sending: set[bytes] = set()
        #: Outstanding messages whose outcome may have come (the node said they settled),
        #: in that order; and whether every outstanding message should be looked at.
        self._to_check: dict[bytes, None] = {}
        self._check_all = False
        self._outcomes_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: When the node last stopped or crashed (trio time; -inf: never).
        self.stopped_at = -math.inf

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {self.node_id.short}{' up' if self.up else ' down'}>"

    @property
    def node(self) -> Node:
        """The running node. Raises :class:`NodeDown` if it is not running."""
        if self._node is None:
            raise NodeDown(f"node {self.name} is not running")
        return self._node

    @property
    def up(self) -> bool:
        return self._node is not None

    def serving(self) -> tuple[Node, trio.Nursery] | None:
        """The running node and the nursery of this run of it (cancelled when it stops
        or crashes), or None while it is not running: an :class:`EngineHost`."""
        if self._node is None or self._nursery is None:
            return None
        return self._node, self._nursery

    @property
    def statistics(self) -> NodeStatistics:
        """The node's counters summed over all its runs."""
        total = dataclasses.asdict(self._past)
        if self._node is not None:
            for key, value in dataclasses.asdict(self._node.statistics).items():
                total[key] += value
        return NodeStatistics(**total)

    # -- life cycle ---------------------------------------------------------------------

    async def start(self, *, keep_store: bool = True) -> None:
        """Run the node (again). ``keep_store=False`` deletes its store first.

        Raises :class:`SimulationError` if it is running or its identity key is gone
        from its data directory, and whatever
        ``Node.open`` raises (:class:`node.NodeError`) if it cannot start.
        """
        if self.up or not self._stopped.is_set():
            raise SimulationError(f"node {self.name} is already running")
        if not (self.data_dir / "identity.key").is_file():
            # It would start as another node, under this one's name: figures made so
            # would be wrong without a word, so the run stops here instead.
            raise SimulationError(
                f"node {self.name} cannot start: its identity key is gone from"
                f" {self.data_dir} (was the run's data directory deleted under it?)"
            )
        if not keep_store:
            if self._store_keeper is not None and self.config.store_uri is not None:
                # The node is down, its connections closed: closing the last one drops
                # the database, and a new one starts an empty store.
                self._store_keeper.close()
                self._store_keeper = self._keep_store(self.config.store_uri)
            for name in _STORE_FILES:
                (self.data_dir / name).unlink(missing_ok=True)
        await self.sim._nursery.start(self._run)
        if self.starts > 1:
            self.sim.log(f"{self.name} restarted" + ("" if keep_store else " with an empty store"))

    @staticmethod
    def _keep_store(uri: str) -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    def _drop_store(self) -> None:
        """Let go of the in-memory store (once the node is down for good)."""
        if self._store_keeper is not None:
            self._store_keeper.close()
            self._store_keeper = None

    async def stop(self) -> None:
        """Shut the node down gracefully. Raises :class:`NodeDown` if it is not running."""
        if not self.up:
            raise NodeDown(f"node {self.name} is not running")
        self._stop.set()
        await self._stopped.wait()
        self.sim.log(f"{self.name} stopped")

    async def crash(self) -> None:
        """Kill the node: its connections are reset, its tasks cancelled at once.

        Raises :class:`NodeDown` if it is not running.
        """
        if not self.up or self._scope is None:
            raise NodeDown(f"node {self.name} is not running")
        self.sim.network.crash_host(self.name)
        self._scope.cancel()
        await self._stopped.wait()
        self.sim.log(f"{self.name} crashed")

    async def restart(self, *, keep_store: bool = True) -> None:
        """Crash the node if it is running, then start it (see :meth:`start`)."""
        if self.up:
            await self.crash()
        await self.start(keep_store=keep_store)

    async def wait_up(self) -> None:
        """Return when the node is running."""
        while not self.up:
            await self._started.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stop = stop = trio.Event()
        self._stopped = stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with Node.open(
                    self.data_dir,
                    config=self.config,
                    network=self.sim.network.host(self.name),
                    clock=self.sim.clock_ms,
                    rng=self.rng,
                    run_blocking=run_inline,
                    frame_client=(
                        None
                        if self.sim.engine is None
                        else self.sim.engine.frame_client(self.name, self.node_id)
                    ),
                ) as node:
                    self._node = node
                    self.starts += 1
                    self._started.set()
                    self._started = trio.Event()
                    try:
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            nursery.start_soon(self._consume, node)
                            if self.following:
                                self._read_posts(node)
                            node.mesh.settle_listeners.append(self._on_settled)
                            self._on_settled(None)  # what settled while it was down
                            nursery.start_soon(self._watch_outcomes, node)
                            task_status.started()
                            await stop.wait()
                            nursery.cancel_scope.cancel()
                    finally:
                        # The run is over (the node closes next): nothing more is
                        # started in it, and the engine takes no more frames for it.
                        self._nursery = None
        finally:
            if self._node is not None:
                for key, value in dataclasses.asdict(self._node.statistics).items():
                    setattr(self._past, key, getattr(self._past, key) + value)
            self._node = None
            self._scope = None
            self._nursery = None
            self._reading = False
            self.stopped_at = trio.current_time()
            stopped.set()

    async def _consume(self, node: Node) -> None:
        async with contextlib.aclosing(node.inbox()) as messages:
            async for message in messages:
                await message.ack()
                self.sim._delivered(self, message)

    # -- chirp ------------------------------------------------------------------------

    async def follow(self, *others: SimNode) -> None:
        """Follow ``others`` (``node.chirp.follow``: kept in the store, so it survives
        restarts); from now on the application reads its posts as they come.

        Raises :class:`NodeDown` if this node is down, :class:`node.NodeError` for
        itself.
        """
        node = self.node
        async with self._follows:
            for other in others:
                await node.chirp.follow(other.node_id)
                if other not in self.following:
                    self.following.append(other)
        self._read_posts(node)

    async def chirp(self, text: str) -> Published:
        """Post ``text`` as this node's application (``node.chirp.post``); return once
        this node has it in custody. The post is entered in the ledger with this node's
        followers now. Raises :class:`NodeDown` if this node is down, and what
        ``node.chirp.post`` raises."""
        node = self.node
        followers = self.sim.followers_of(self)
        known = self.followers_known()
        unknown = frozenset(name for name in followers if self.sim.nodes[name].node_id not in known)
        published = await node.chirp.post(text)
        self.sim.ledger.posted(
            SentPost(
                id=published.id,
                author=self.name,
                posted_at=self.sim.now,
                followers=followers,
                exp=self.sim.now + POST_TTL,
                unknown=unknown,
            )
        )
        return published

    def followers_known(self) -> set[crypto.NodeId]:
        """The followers whose follow reached this node (its posts go to them). Raises
        :class:`NodeDown` if this node is down."""
        mesh = self.node.mesh
        return mesh.router.interests.subscribers(chirp_topic(self.node_id), now=mesh.clock())

    async def wait_posts(self, count: int) -> list[Delivery]:
        """Wait until the application has read ``count`` posts; return them."""
        while len(self.posts_received) < count:
            await self._posts_changed.wait()
        return self.posts_received

    def _read_posts(self, node: Node) -> None:
        """Start reading the ``chirp`` subscription in this run of the node (once)."""
        if self._node is node and self._nursery is not None and not self._reading:
            self._reading = True
            self._nursery.start_soon(self._consume_posts, node)

    async def _consume_posts(self, node: Node) -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with self._follows:
                followed = await node.chirp.following()
                if not followed:
                    return
                patterns = [chirp_topic(author) for author in followed]
                posts = await stack.enter_async_context(
                    node.subscribe(*patterns, name=SUBSCRIPTION)
                )
            async for publication in posts:
                await publication.ack()
                self.sim._post_arrived(self, publication)

    def _note_post(self, delivery: Delivery) -> None:
        self.posts_received.append(delivery)
        self._posts_changed.set()
        self._posts_changed = trio.Event()

    # -- messages -----------------------------------------------------------------------

    async def send(
        self,
        dst: SimNode,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
    ) -> Sent:
        """Send ``body`` to ``dst`` as this node's application (``node.send``); return
        once this node has the frame in custody (committed to its store).

        The message is entered in the ledger (the report counts it), and watched: a drop
        receipt marks it dropped; with ``receipt`` the destination's delivery receipt
        marks it acknowledged. ``ttl``: the frame's lifetime in seconds (default the
        node's ``frame_ttl``). Raises :class:`NodeDown` if this node is down,
        :class:`mesh.StoreFull` if its store's quota is reached (nothing was sent).
        """
        node = self.node
        frame = node.new_frame(dst.node_id, body, ct=ct, ttl=ttl, receipt=receipt)
        self._sending.add(frame.id)
        try:
            (sent,) = await node.send_sealed([(frame, frame.seal(node.identity))])
        finally:
            self._sending.discard(frame.id)
        message = SentMessage(
            id=frame.id,
            src=self.name,
            dst=dst.name,
            size=len(body),
            sent_at=self.sim.now,
            exp=(frame.exp - EPOCH_MS) / 1000,
            receipt=receipt,
        )
        self.sim.ledger.sent(message)
        self._outstanding[frame.id] = message
        if frame.id in self._to_check:  # it settled already, while it was being sent
            self._outcomes_changed.set()
        return sent

    async def post(self, dst: SimNode, wires: Sequence[mesh.WireFrame]) -> list[mesh.Result]:
        """POST ``wires`` to ``dst`` at once, as a forwarder would (no store, no retry):
        for tests that hand a node a frame again. Returns ``dst``'s results.

        Raises :class:`NodeDown` if this node is down, and whatever the POST raises
        (``node._forwarder.PostFailed`` if ``dst`` did not answer).
        """
        node = self.node
        endpoints = node.mesh.endpoints_of(dst.node_id) or dst.node.endpoints
        return await node.mesh.frame_client.post(dst.node_id, endpoints, wires)

    def _on_settled(self, frame_id: bytes | None) -> None:
        """The node says frame ``frame_id`` of ours settled (None: look at them all)."""
        if frame_id is None:
            self._check_all = True
            self._to_check.update(dict.fromkeys(self._sending))  # not outstanding yet
        elif frame_id in self._outstanding or frame_id in self._sending:
            self._to_check[frame_id] = None
        else:
            return
        self._outcomes_changed.set()

    async def _watch_outcomes(self, node: Node) -> None:
        """The application's watch of the messages it sent, in this run of the node: one
        task for them all, woken by the node as each settles (a drop receipt or a drop
        here, or a delivery receipt), which then reads that message's trace."""
        while True:
            await self._outcomes_changed.wait()
            self._outcomes_changed = trio.Event()
            if self._check_all:
                self._check_all = False
                self._to_check.update(dict.fromkeys(self._outstanding))
            checking, self._to_check = self._to_check, {}
            for frame_id in checking:
                if frame_id in self._sending:
                    self._to_check[frame_id] = None  # once send() has entered it
                    continue
                message = self._outstanding.get(frame_id)
                if message is None:
                    continue  # settled meanwhile
                trace = await node.trace(frame_id)
                if trace is None:  # no trace: the store that had it is gone
                    self.sim.ledger.dropped(message, self.sim.now, LOST)
                elif trace.state == "delivered":
                    self.sim.ledger.acknowledged(message, self.sim.now)
                elif trace.state == "dropped":
                    self.sim.ledger.dropped(message, self.sim.now, trace.why or trace.state)
                else:
                    continue  # not settled yet (everyone was asked to look again)
                self._settle(frame_id)

    def _settle(self, frame_id: bytes) -> None:
        """Stop waiting for the outcome of ``frame_id`` (it is known)."""
        self._outstanding.pop(frame_id, None)
        self._to_check.pop(frame_id, None)

    def _arrived(self, message: SentMessage) -> None:
        """``message`` reached its destination's application: unless a receipt was
        asked for, there is nothing left to wait for."""
        if not message.receipt:
            self._settle(message.id)

    async def wait_received(self, count: int) -> list[Delivery]:
        """Wait until the application has received ``count`` messages; return them."""
        while len(self.received) < count:
            await self._received_changed.wait()
        return self.received

    def _note(self, delivery: Delivery) -> None:
        self.received.append(delivery)
        self._received_changed.set()
        self._received_changed = trio.Event()


class Simulation:
    """A simulated network and the nodes on it. Open one with :func:`open_simulation`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        seed: int,
        data_dir: Path,
        link: Link,
        config: NodeConfig,
        fidelity: Fidelity = Fidelity.FULL,
        stores: Stores = Stores.DISK,
        shared_chains: mesh.SharedChains | None = None,
    ) -> None:
        self.seed = seed
        self.data_dir = data_dir
        self.config = config
        #: Where the nodes keep their stores (:class:`Stores`).
        self.stores = stores
        self.network = SimNetwork(nursery, seed=seed, default_link=link)
        #: How much of each node runs (simulations/_engine.py); at ``engine``, what
        #: carries the nodes' frames POSTs (None at ``full``: HTTP does).
        self.fidelity = fidelity
        self.engine = (
            EngineNetwork(self.network, self._engine_host, self.by_id)
            if fidelity is Fidelity.ENGINE
            else None
        )
        self.ledger = Ledger()
        self.start_time = trio.current_time()
        #: ``(virtual time, what happened)``: crashes, restarts, partitions, heals.
        self.events: list[tuple[float, str]] = []
        self.nodes: dict[str, SimNode] = {}
        self._by_id: dict[crypto.NodeId, SimNode] = {}
        self._counters: dict[str, int] = {}
        #: Every pair of nodes peered (by :meth:`peer`), by name.
        self.peerings: set[frozenset[str]] = set()
        #: Makes the report's revocation part (set by what watches one: the
        #: ``revocation`` scenario); None: the report has none.
        self.revocation_report: Callable[[], RevocationReport] | None = None
        self._nursery = nursery
        #: The chains verified once for every node (``verify_once``), sized to them.
        self._shared_chains = shared_chains

    # -- time and randomness ------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the simulation opened."""
        return trio.current_time() - self.start_time

    def clock_ms(self) -> int:
        """The nodes' wall clock: :data:`EPOCH_MS` plus virtual time, in ms."""
        return EPOCH_MS + int(self.now * 1000)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (everything else runs meanwhile).

        Raises ValueError if ``seconds`` is negative or NaN (as ``trio.sleep``)."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be non-negative, not {seconds}")
        await sleep_until(trio.current_time() + seconds)

    async def advance_to(self, when: float) -> None:
        """Let virtual time pass until ``when`` seconds since the simulation opened."""
        await sleep_until(self.start_time + when)

    def rng(self, *names: str) -> random.Random:
        """A random source for one purpose, derived from the seed and ``names``."""
        return derive_rng(self.seed, *names)

    def log(self, text: str) -> None:
        """Note an event in :attr:`events` (and so in the report)."""
        self.events.append((self.now, text))

    # -- nodes --------------------------------------------------------------------------

    async def add_node(
        self, name: str | None = None, *, nat: bool = False, **config: Any
    ) -> SimNode:
        """Add a host named ``name`` (default ``n0``, ``n1``, ...) and start a node there.

        ``nat``: the host is behind a NAT. ``config``: :class:`node.NodeConfig` fields
        that differ from the simulation's. Raises :class:`SimulationError` for a name
        already in use.
        """
        if name is None:
            name = self._next_name("n")
        self.network.add_host(name, nat=nat)
        # A simulated host has no operator at a terminal: no local API listener (its
        # tests and scenarios use the Node's methods).
        settings = dataclasses.replace(
            self.config, listen=f"{name}:{NODE_PORT}", name=name, **{"api_listen": None, **config}
        )
        sim_node = SimNode(self, name, nat=nat, config=settings)
        self.nodes[name] = sim_node
        self._by_id[sim_node.node_id] = sim_node
        if self._shared_chains is not None:
            self._shared_chains.limit = max(_REMEMBERED, _CHAINS_PER_NODE * len(self.nodes))
        collect_for_nodes(len(self.nodes))
        await sim_node.start()
        return sim_node

    async def add_nodes(
        self, count: int, *, prefix: str = "n", nat: bool = False, **config: Any
    ) -> list[SimNode]:
        """Add ``count`` nodes named ``{prefix}{i}`` (numbered on from earlier ones)."""
        return [
            await self.add_node(self._next_name(prefix), nat=nat, **config) for _ in range(count)
        ]

    def _drop_stores(self) -> None:
        for sim_node in self.nodes.values():
            sim_node._drop_store()

    def _next_name(self, prefix: str) -> str:
        number = self._counters.get(prefix, 0)
        while f"{prefix}{number}" in self.nodes:
            number += 1
        self._counters[prefix] = number + 1
        return f"{prefix}{number}"

    async def peer(self, a: SimNode, b: SimNode) -> None:
        """Give ``a`` and ``b`` each other's address token (``ptth peer add``); the
        running nodes make each other neighbours and greet each other at once.

        Raises :class:`NodeDown` unless both are running.
        """
        node_a, node_b = a.node, b.node
        now = self.clock_ms()
        token_a, token_b = node_a.address_token(), node_b.address_token()
        await node_a.add_peer_address(crypto.parse_token(token_b, now=now))
        await node_b.add_peer_address(crypto.parse_token(token_a, now=now))
        self.peerings.add(frozenset((a.name, b.name)))

    async def peer_all(self, pairs: Iterable[tuple[SimNode, SimNode]]) -> None:
        """:meth:`peer` each pair (e.g. ``simulations.chain(nodes)``)."""
        for a, b in pairs:
            await self.peer(a, b)

    def by_id(self, node_id: crypto.NodeId) -> SimNode | None:
        return self._by_id.get(node_id)

    def _engine_host(self, host: str) -> EngineHost | None:
        return self.nodes.get(host)

    def _delivered(self, sim_node: SimNode, message: Message) -> None:
        sent, duplicate = self.ledger.delivered(message.id, self.now, message.hops)
        origin = self._by_id.get(message.src)
        if sent is not None and origin is not None:
            origin._arrived(sent)
        sim_node._note(
            Delivery(
                id=message.id,
                src=origin.name if origin is not None else None,
                dst=sim_node.name,
                body=message.body,
                received_at=self.now,
                latency=None if sent is None else self.now - sent.sent_at,
                hops=message.hops,
                duplicate=duplicate,
            )
        )

    def followers_of(self, author: SimNode) -> tuple[str, ...]:
        """The names of the nodes that follow ``author`` now (:meth:`SimNode.follow`)."""
        return tuple(name for name, node in self.nodes.items() if author in node.following)

    def _post_arrived(self, follower: SimNode, publication: Publication) -> None:
        duplicate = self.ledger.post_arrived(publication.id, follower.name, self.now)
        post = self.ledger.posts.get(publication.id)
        author = self._by_id.get(publication.origin)
        follower._note_post(
            Delivery(
                id=publication.id,
                src=author.name if author is not None else None,
                dst=follower.name,
                body=publication.body,
                received_at=self.now,
                latency=None if post is None else self.now - post.posted_at,
                hops=publication.hops,
                duplicate=duplicate,
            )
        )

    async def wait_posts_delivered(self) -> None:
        """Wait until every post made with :meth:`SimNode.chirp` has reached every
        follower it had (bound it with ``trio.fail_after``)."""
        while self.ledger.posts_outstanding:
            await self.ledger.wait_changed()

    async def wait_delivered(self) -> None:
        """Wait until every message sent with :meth:`SimNode.send` has been delivered
        or dropped (bound it with ``trio.fail_after``)."""
        while self.ledger.pending:
            await self.ledger.wait_changed()

    # -- the network --------------------------------------------------------------------

    def set_link(self, a: SimNode | str, b: SimNode | str, link: Link) -> None:
        """Use ``link`` between two nodes' hosts (see :meth:`SimNetwork.set_link`)."""
        self.network.set_link(_host(a), _host(b), link)

    def partition(self, groups: Iterable[Iterable[SimNode | str]]) -> None:
        """Split the network into ``groups`` (see :meth:`SimNetwork.partition`)."""
        named = [[_host(member) for member in group] for group in groups]
        self.network.partition(named)
        self.log("partition " + " | ".join(_span(group) for group in named))

    def heal(self) -> None:
        """End the partition."""
        self.network.heal()
        self.log("healed")

    async def run_churn(
        self,
        nodes: Sequence[SimNode],
        *,
        interval: float,
        downtime: tuple[float, float],
        keep_store: bool = True,
        until: float = math.inf,
        name: str = "churn",
    ) -> None:
        """Crash a random one of ``nodes`` every ``interval`` s on average (exponential
        gaps) and restart it after ``downtime`` s (uniform between the two bounds),
        keeping its store or not. A node already down is passed over. Crashes stop at
        virtual time ``until``; then this returns once every crashed node is back up.
        ``name`` names the random source (two churns need two names).
        """
        rng = self.rng(name)
        async with trio.open_nursery() as restarts:
            while True:
                when = self.now + rng.expovariate(1 / interval)
                if when >= until:
                    break
                await self.advance_to(when)
                victim = nodes[rng.randrange(len(nodes))]
                down_for = rng.uniform(*downtime)
                if victim.up:
                    await victim.crash()
                    restarts.start_soon(self._restart_later, victim, down_for, keep_store)

    async def _restart_later(self, victim: SimNode, delay: float, keep_store: bool) -> None:
        await self.advance(delay)
        await victim.start(keep_store=keep_store)

    # -- the report ---------------------------------------------------------------------

    def statistics(self) -> NodeStatistics:
        """Every node's counters, summed over nodes and runs."""
        total = NodeStatistics()
        for sim_node in self.nodes.values():
            for key, value in dataclasses.asdict(sim_node.statistics).items():
                setattr(total, key, getattr(total, key) + value)
        return total

    def report(self, *, scenario: str = "custom", wall_seconds: float = 0.0) -> Report:
        """A :class:`Report` of everything so far."""
        messages = list(self.ledger.messages.values())
        now = self.now
        state_of = {message.id: message.state(now) for message in messages}
        states = collections.Counter(state_of.values())
        latencies = [m.latency for m in messages if m.latency is not None]
        hops = [m.hops for m in messages if m.hops is not None]
        nodes = self.statistics()
        net = self.network.statistics
        return Report(
            scenario=scenario,
            nodes=len(self.nodes),
            seed=self.seed,
            fidelity=self.fidelity.value,
            virtual_seconds=round(now, 6),
            wall_seconds=wall_seconds,
            sent=len(messages),
            delivered=states["delivered"],
            dropped=states["dropped"],
            drops=dict(
                collections.Counter(
                    (m.why or "").partition(":")[0].strip()
                    for m in messages
                    if state_of[m.id] == "dropped"
                )
            ),
            expired=states["expired"],
            pending=states["pending"],
            refused=self.ledger.refused,
            duplicates=self.ledger.duplicates,
            acknowledged=sum(1 for m in messages if m.acknowledged_at is not None),
            latency_p50=_rounded(percentile(latencies, 0.50)),
            latency_p95=_rounded(percentile(latencies, 0.95)),
            latency_p99=_rounded(percentile(latencies, 0.99)),
            latency_max=_rounded(max(latencies, default=None)),
            hops_mean=round(sum(hops) / len(hops), 3) if hops else None,
            hops_max=max(hops, default=None),
            http_requests=nodes.send_requests,
            http_bytes=net.bytes,
            connections=net.connections,
            send_retries=nodes.send_retries,
            frames_forwarded=nodes.frames_forwarded,
            frames_dropped=nodes.frames_dropped,
            duplicate_frames=nodes.frames_duplicate,
            announces_sent=nodes.announces_sent,
            announces_received=nodes.announces_received,
            segments_lost=net.segments_lost,
            syns_dropped=net.syns_dropped,
            resets=net.resets,
            dials_refused=net.dials_refused,
            dials_unanswered=net.dials_unanswered,
            store_failures=nodes.store_failures,
            events=tuple(f"{format_duration(when)}: {text}" for when, text in self.events)
            + _store_failures(nodes.store_failures)
            + tuple(self._undelivered_posts())
            + tuple(self._dropped_messages())
            + tuple(self._pending_messages()),
            chirp=self._chirp_report(nodes) if self.ledger.posts else None,
            revocation=None if self.revocation_report is None else self.revocation_report(),
        )

    def _where_held(
        self, next_hops: Callable[[mesh.Store], Iterable[crypto.NodeId | None]]
    ) -> list[str]:
        """Where running nodes hold a frame, by ``next_hops`` (each store's copies of it
        and their next hops): ``A->B`` for a copy queued at A for next hop B, ``A (no way
        on yet)`` for one held at A."""
        names = {sim_node.node_id: name for name, sim_node in self.nodes.items()}
        holders: list[str] = []
        for name, sim_node in self.nodes.items():
            if sim_node.up:
                for hop in next_hops(sim_node.node.mesh.store):
                    where = " (no way on yet)" if hop is None else f"->{names.get(hop, hop.short)}"
                    holders.append(name + where)
        return holders

    def _holders(self, post: SentPost, follower: str) -> list[str]:
        """Where running nodes still hold ``post`` on its way to ``follower``
        (:meth:`_where_held`), and ``F (unread)`` when it waits in the follower's
        subscription. Empty when no running node holds it."""
        author = self.nodes[post.author].node_id
        holders = self._where_held(lambda store: store.copies_of(author, post.id))
        reader = self.nodes[follower]
        if reader.up:
            pending = reader.node.mesh.store.subscription_pending(SUBSCRIPTION, limit=1_000_000)
            if any(entry.id == post.id for entry in pending):
                holders.append(f"{follower} (unread)")
        return holders

    def _undelivered_posts(self, limit: int = 20) -> list[str]:
        """A line for each (post, follower) pair neither delivered nor expired (the
        first ``limit``): where the post is held, or that nobody holds it."""
        now = self.now
        lines: list[str] = []
        for post in self.ledger.posts.values():
            if post.exp <= now:
                continue
            for follower in post.missing:
                if len(lines) == limit:
                    lines.append("... (more undelivered posts)")
                    return lines
                holders = self._holders(post, follower)
                if holders:
                    where = "held at " + ", ".join(holders)
                elif follower in post.unknown:
                    where = "posted before its author knew this follower"
                else:
                    where = "held nowhere: lost"
                lines.append(
                    f"{format_duration(post.posted_at)}: post {post.id.hex()[:12]} by "
                    f"{post.author} not at {follower} at the end; {where}"
                )
        return lines

    def _dropped_messages(self, limit: int = 20) -> list[str]:
        """A line for each message dropped without reaching its destination (the first
        ``limit``): when, between whom, and why, as its drop receipt said."""
        lines: list[str] = []
        for message in self.ledger.messages.values():
            if message.dropped_at is None or message.delivered_at is not None:
                continue
            if len(lines) == limit:
                lines.append("... (more dropped messages)")
                break
            lines.append(
                f"{format_duration(message.sent_at)}: message {message.id.hex()[:12]} "
                f"{message.src}->{message.dst} dropped after "
                f"{format_duration(message.dropped_at - message.sent_at)}: {message.why}"
            )
        return lines

    def _pending_messages(self, limit: int = 20) -> list[str]:
        """A line for each message still pending at the end (the first ``limit``): where
        running nodes hold it (:meth:`_where_held`), or that none does (it is in flight
        between two nodes, or in the store of one that is down)."""
        now = self.now
        lines: list[str] = []
        for message in self.ledger.messages.values():
            if message.state(now) != "pending":
                continue
            if len(lines) == limit:
                lines.append("... (more pending messages)")
                break
            holders = self._where_held(
                functools.partial(
                    mesh.Store.queued_copy,
                    origin=self.nodes[message.src].node_id,
                    frame_id=message.id,
                )
            )
            where = (
                "held at " + ", ".join(holders)
                if holders
                else "not held by a running node (in flight, or at a node that is down)"
            )
            lines.append(
                f"{format_duration(message.sent_at)}: message {message.id.hex()[:12]} "
                f"{message.src}->{message.dst} not delivered at the end; {where}"
            )
        return lines

    def _chirp_report(self, nodes: NodeStatistics) -> ChirpReport:
        now = self.now
        posts = list(self.ledger.posts.values())
        latencies = [
            arrived - post.posted_at
            for post in posts
            for name, arrived in post.arrivals.items()
            if name in post.followers
        ]
        expected = sum(len(post.followers) for post in posts)
        hours = now / 3600
        in_flight = lost = unsent = 0
        for post in posts:
            if post.exp > now:
                for follower in post.missing:
                    if self._holders(post, follower):
                        in_flight += 1
                    elif follower in post.unknown:
                        unsent += 1
                    else:
                        lost += 1
        return ChirpReport(
            posts=len(posts),
            expected=expected,
            delivered=len(latencies),
            expired=sum(len(post.missing) for post in posts if post.exp <= now),
            in_flight=in_flight,
            lost=lost,
            unsent=unsent,
            duplicates=self.ledger.post_duplicates,
            latency_p50=_rounded(percentile(latencies, 0.50)),
            latency_p95=_rounded(percentile(latencies, 0.95)),
            latency_p99=_rounded(percentile(latencies, 0.99)),
            latency_max=_rounded(max(latencies, default=None)),
            copies=nodes.publications_forwarded,
            flood_minimum=len(posts) * max(0, len(self.nodes) - 1),
            flood_naive=len(posts) * 2 * len(self.peerings),
            interests_received=nodes.interests_received,
            interests_received_per_node_hour=(
                round(nodes.interests_received / len(self.nodes) / hours, 3)
                if self.nodes and hours > 0
                else None
            ),
        )


def _host(member: SimNode | str) -> str:
    return member.name if isinstance(member, SimNode) else member


def _span(names: Sequence[str]) -> str:
    if len(names) <= 4:
        return "{" + ",".join(names) + "}"
    return "{" + f"{names[0]},...,{names[-1]}: {len(names)} hosts" + "}"


def _rounded(value: float | None) -> float | None:
    # Virtual times are sums of floats: round away the last bits so reports compare.
    return None if value is None else round(value, 6)


def _store_failures(count: int) -> tuple[str, ...]:
    """The report's line on failed stores, if any failed."""
    if not count:
        return ()
    return (
        f"the nodes' stores failed {count} times (not a quota: the database or its disk;"
        " was the run's data directory deleted under it?): this run's figures are worthless",
    )


class _TrioTime:
    """The ``time`` module, but ``monotonic()`` reads trio's clock (in a trio run)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def monotonic() -> float:
        try:
            return trio.current_time()
        except RuntimeError:  # not in a trio run
            return time.monotonic()


@contextlib.contextmanager
def _virtual_keepalive() -> Iterator[None]:
    """Make httpcore time its kept-alive connections by trio's (virtual) clock.

    httpcore expires an idle connection ``keepalive_expiry`` seconds after its last
    exchange by ``time.monotonic()``: in a simulation that is real time, so whether a
    connection is reused would depend on how fast the machine runs the simulation,
    and two runs of one seed could differ. While a simulation is open, its HTTP/1.1
    connections read trio's clock instead (httpcore reads ``time`` nowhere else there).
    """
    modules = [module for module in (_httpcore_http11,) if hasattr(module, "time")]
    saved = [module.time for module in modules]
    for module in modules:
        module.time = _TrioTime()
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.time = original


@contextlib.asynccontextmanager
async def open_simulation(
    *,
    seed: int = 0,
    data_dir: Path | str | None = None,
    link: Link | None = None,
    config: NodeConfig | None = None,
    fidelity: Fidelity | str = Fidelity.FULL,
    verify_once: bool = False,
    stores: Stores | str = Stores.DISK,
    signatures: Signatures | str = Signatures.ED25519,
) -> AsyncIterator[Simulation]:
    """A fresh simulation for the duration of the block; its nodes end with it.

    ``seed`` fixes every random choice; ``data_dir`` holds the nodes' directories
    (default: a temporary directory, deleted afterwards); ``link`` is the default link
    between any two hosts (default: instant and perfect); ``config`` is the
    :class:`node.NodeConfig` nodes start from (``listen`` and ``name`` are set per node;
    default: ``NodeConfig(store_lean=True)``, stores that keep SQLite's memory small).
    ``fidelity``: ``"full"`` (every byte through HTTP) or ``"engine"`` (frames handed
    between the nodes' meshes as events; simulations/_engine.py). ``verify_once``: a
    signature that verified is not verified again by any node of this simulation
    (:func:`crypto.verifying_once`), nor a frame envelope opened again
    (:func:`crypto.opening_once`), nor a coordinate chain checked again
    (:func:`mesh.verifying_chains_once`), the last few thousand of each remembered: the
    same outcome, much less time; by default each node verifies what it is shown, as a
    real node does. ``stores``: ``"disk"`` (each node's ``store.sqlite3``, as a real
    node) or ``"memory"`` (an in-memory database per node that survives its restarts;
    see :class:`Stores`). ``signatures``:
    ``"ed25519"`` (as a real node) or ``"stand-in"`` (:func:`crypto.standing_in`: every
    signature a keyed hash that anyone could make, checked the same way; the same
    report for a seed, in less time; nothing in the run authenticates anything).

    While it is open, httpcore times kept-alive connections by trio's clock (virtual
    time), not ``time.monotonic()``.

    Raises :class:`NotVirtualTime` unless the trio run uses
    ``trio.testing.MockClock`` (give it ``autojump_threshold=0``) or a
    :class:`simulations.VirtualClock`, and
    :class:`SimulationError` for an unknown fidelity or stores.
    """
    level = fidelity_of(fidelity)
    where = stores_of(stores)
    signing = signatures_of(signatures)
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock | VirtualClock):
        raise NotVirtualTime(
            "simulations run in virtual time: trio.run(..., clock=simulations.VirtualClock()"
            " or trio.testing.MockClock(autojump_threshold=0)), or pytest-trio's autojump_clock"
        )
    with contextlib.ExitStack() as stack:
        stack.enter_context(_virtual_keepalive())
        shared_chains = None
        if verify_once:  # before the nursery: its tasks (every node's) inherit them
            stack.enter_context(crypto.verifying_once(_REMEMBERED))
            stack.enter_context(crypto.opening_once(_REMEMBERED))
            shared_chains = stack.enter_context(mesh.verifying_chains_once(_REMEMBERED))
        if signing is Signatures.STAND_IN:  # the same: every node's tasks inherit it
            stack.enter_context(crypto.standing_in())
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ptth-sim-"))
        # Inline, as every blocking call of a simulation: a thread would let the
        # autojump clock jump while it works.
        Path(data_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        async with trio.open_nursery() as nursery:
            sim = Simulation(
                nursery,
                seed=seed,
                data_dir=Path(data_dir),
                link=link or Link(),
                config=config or NodeConfig(store_lean=True),
                fidelity=level,
                stores=where,
                shared_chains=shared_chains,
            )
            # Once the nursery is done (every node down), before the directory goes.
            stack.callback(sim._drop_stores)
            try:
                yield sim
            finally:
                nursery.cancel_scope.cancel()
