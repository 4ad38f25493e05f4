"""The mesh runtime: drives :class:`mesh.Router` and :class:`mesh.Store` with I/O.

* **Custody.** :meth:`MeshRuntime.send` seals a ``msg`` frame, asks the router for its
  next hop, commits it to the store (queued for that hop, or held with no route) and
  returns the frame id: from then on the frame survives a crash of this node.
* **Intake.** :meth:`MeshRuntime.receive` takes the frames a neighbour POSTed: each is
  verified (:func:`mesh.admit`), announces update the routes (and are flooded on),
  ``msg`` and ``rcpt`` frames are delivered here or queued for their next hop, all in
  one transaction, before the neighbour is answered.
* **Forwarding.** One :class:`node._forwarder.Forwarder` per neighbour drains its
  queue. A frame refused by the next hop is dropped with a signed ``rcpt`` back to
  its origin; so is one that expires here.
* **Announces.** This node's ``ann`` frame goes to every neighbour at start, to each new
  neighbour with the routes held, and every ``announce_interval`` (with jitter).
* **Timers.** Routes expire, expired frames are dropped with receipts, peers added by
  the CLI are noticed; the routing table is saved a second after it changes.

It performs the router's actions (:class:`mesh.Reroute`, :class:`mesh.Flood`,
:class:`mesh.Greet`, :class:`mesh.Wake`); every decision is the router's.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, Final

import trio

import crypto
import mesh
from node._commit import GroupCommit, RunBlocking
from node._errors import NodeError, Replayed
from node._forwarder import Forwarder, FrameClient
from node._message import Publication, Published
from node._pubsub import DEFAULT_LEASE, LocalSubscriptions, validate_name

__all__ = ["STARTING", "MeshConfig", "MeshRuntime", "NodeStatistics"]

#: Why frames are refused (503) until :attr:`MeshRuntime.ready`.
STARTING: Final = "node is starting: its routes and interests are not loaded yet"

#: Kinds of frames routed to their destination (a publication's copies go by interests;
#: a ``sub`` or ``unsub`` is queued only when addressed to the owner of its pattern).
_ROUTED: Final = frozenset({crypto.Kind.MSG, crypto.Kind.RCPT, crypto.Kind.SUB, crypto.Kind.UNSUB})
#: The kinds a neighbour's refusal for want of room for their origin (``store-full``)
#: holds back rather than drops: messages, receipts, publications. An interest refused
#: so is past its node's interest quotas (§9.11), not short of room for a while:
#: retrying it would hold back its origin's messages for nothing.
_HELD_BACK: Final = frozenset({crypto.Kind.MSG, crypto.Kind.RCPT, crypto.Kind.PUB})
#: Kinds that go with their origin's coordinates: what comes back (a receipt, a reply, a
#: publication for a subscriber) then needs no lookup.
_WITH_ORIGIN: Final = frozenset({crypto.Kind.MSG, crypto.Kind.SUB})

log = logging.getLogger("ptth.node")

#: Frames verified inline; a bigger batch is verified in a worker thread (the GIL is
#: released by libsodium, so the second core helps).
_INLINE_VERIFY: Final = 8
#: How often routes expire, expired frames are swept and the table is saved (s).
TICK_INTERVAL: Final = 15.0
#: How soon after a change the routing table is saved (s).
ROUTES_SAVE_DELAY: Final = 1.0
#: The tables are saved at most this often (s): in a busy mesh routes change every few
#: seconds, and each save writes them all. A node killed in between comes back with
#: slightly older routes and is greeted with fresh ones by its neighbours.
ROUTES_SAVE_INTERVAL: Final = 30.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    hops: int
    frame_ttl: float
    announce_interval: float
    router: mesh.RouterConfig
    lease: float = DEFAULT_LEASE
    #: What this node requires a capability for (mesh/_authority.py).
    requirements: mesh.Requirements = dataclasses.field(default_factory=mesh.Requirements)


@dataclasses.dataclass
class NodeStatistics:
    """Counters since start. ``frames_*`` are inbound, ``sent_*`` outbound (per hop).

    Besides the fields (flat integers: what ``ptth status`` shows, and what simulations
    add up), :attr:`rejected_by_reason` breaks ``frames_rejected`` down by
    :class:`mesh.Reason` (for the metrics). It is no field, so that
    :func:`dataclasses.asdict` (which cannot copy a ``Counter``) and the sums stay as
    they were.
    """

    requests_refused: int = 0
    frames_accepted: int = 0
    frames_duplicate: int = 0
    frames_rejected: int = 0
    frames_forwarded: int = 0
    frames_held: int = 0
    frames_dropped: int = 0
    #: Receipts this node made: delivery receipts and drop receipts.
    receipts_sent: int = 0
    #: Of ``receipts_sent``, the drop receipts.
    drop_receipts_sent: int = 0
    #: Drop receipts this node could not queue (its store was full).
    receipts_lost: int = 0
    #: Receipts that came back for frames this node sent, by what they say.
    receipts_received_delivered: int = 0
    receipts_received_dropped: int = 0
    announces_sent: int = 0
    announces_received: int = 0
    interests_received: int = 0
    #: Tree offers (``crd`` frames) sent to and taken from neighbours, and the times
    #: this node's place in the tree moved (``--tree``).
    tree_offers_sent: int = 0
    tree_offers_received: int = 0
    tree_changes: int = 0
    #: DHT messages (``dht`` frames) of ours sent, received (for us or to pass on),
    #: and ours dropped for want of a route.
    dht_sent: int = 0
    dht_received: int = 0
    dht_unroutable: int = 0
    #: Revocations this node learned (news only: its own and those flooded to it).
    revocations_learned: int = 0
    publications_received: int = 0
    publications_delivered: int = 0
    #: Copies of publications queued for neighbours (ours and others').
    publications_forwarded: int = 0
    #: Publications taken that went no further, having made every hop their origin
    #: allows, while subscribers lay beyond (their paths are too long for the limit).
    publications_hop_limited: int = 0
    sent_accepted: int = 0
    sent_duplicate: int = 0
    sent_rejected: int = 0
    send_requests: int = 0
    send_retries: int = 0
    #: Store calls that failed (not a quota: the database or its disk did); each is
    #: also refused or logged where it happened. A healthy node has none.
    store_failures: int = 0
    #: Messages for other nodes taken from trusted neighbours and passed on without
    #: their origin's signature checked here (``ptth trust``).
    frames_unverified: int = 0
    #: Frames a neighbour had no room for (``store-full``: their origin's share there),
    #: kept and sent again once their origin's hold ended, in place of being dropped.
    frames_held_back: int = 0

    def __post_init__(self) -> None:
        #: ``frames_rejected`` by reason (a :class:`mesh.Reason` value).
        self.rejected_by_reason: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass(slots=True)
class _Watched:
    """Waiting for one frame's outcome (:meth:`MeshRuntime.watching`)."""

    event: trio.Event = dataclasses.field(default_factory=trio.Event)
    holders: int = 0


class MeshRuntime:
    """One node's mesh: see the module docstring."""

    def __init__(
        self,
        *,
        identity: crypto.Identity,
        store: mesh.Store,
        config: MeshConfig,
        clock: Callable[[], int],
        rng: random.Random,
        new_id: Callable[[], bytes],
        run_blocking: RunBlocking,
        run_store: RunBlocking | None = None,
        own_address: Callable[[], crypto.SignedAddress],
        peer_addresses: Callable[[], Iterable[crypto.SignedAddress]],
        book: mesh.CapabilityBook | None = None,
        caps: Iterable[crypto.Capability] = (),
    ) -> None:
        self.identity = identity
        self.local = identity.node_id
        self.store = store
        self.config = config
        self.clock = clock
        self.rng = rng
        self.new_id = new_id
        self.run_blocking = run_blocking
        #: Runs the store's calls (the node's StoreThread; default: run_blocking),
        #: counting those that fail (``statistics.store_failures``).
        self.run_store = self._counting_failures(run_store or run_blocking)
        #: Custody of our own frames (sends, publications): one commit for many.
        self.commits = GroupCommit(store, self.run_store)
        self.own_address = own_address
        self.peer_addresses = peer_addresses
        self.router = mesh.Router(
            self.local,
            rng=rng,
            config=config.router,
            authority=mesh.Authority(self.local, requirements=config.requirements),
            identity=identity,
        )
        #: The ``ts`` of our last tree offer: each is later than the one before, so a
        #: neighbour can tell an offer overtaken on the way (mesh.Router.on_offer).
        self._offer_ts = 0
        #: DHT lookups someone waits for (:meth:`find_coordinates`): their end, by id.
        self._lookups: dict[int, tuple[trio.Event, list[mesh.LookupDone]]] = {}
        #: Where revocations are kept (None: in memory only, as in some tests).
        self.book = book
        #: The capabilities this node presents (``--cap``, and those given to a call).
        self.wallet = mesh.Wallet(self.local, caps)
        self.statistics = NodeStatistics()
        #: Told each frame a neighbour handed us that the store took (the dashboard's
        #: recent frames), with the time it was taken.
        self.on_intake: Callable[[mesh.Intake, int], None] | None = None
        #: Told each ``rev`` frame a neighbour handed us: the revocation if it was news
        #: (None: known already, or refused), the neighbour, the time.
        self.on_revocation: (
            Callable[[crypto.Revocation | None, crypto.NodeId, int], None] | None
        ) = None
        #: Given each call on an object, and each reply to a call, for this node
        #: (``msg`` frames of :data:`mesh.CALL_CONTENT_TYPES`) once committed, with the
        #: time: they go there instead of the inbox (node/_objects.py). None: to the inbox.
        self.on_call: Callable[[mesh.Admitted, int], None] | None = None
        self.frame_client: FrameClient  # set by start()
        self.forwarders: dict[crypto.NodeId, Forwarder] = {}
        #: Address records: peers' (from the data directory), relays', learned ones.
        self.addresses: dict[crypto.NodeId, crypto.SignedAddress] = {}
        self._peers: set[crypto.NodeId] = set()
        self._nursery: trio.Nursery | None = None
        #: True once :meth:`serve` has loaded what the store kept (routes, neighbours,
        #: interests, named subscriptions): frames taken before then would be decided
        #: without them (a publication not passed on toward a subscriber it knew).
        self.ready = False
        #: Who waits for the outcome of which frame of ours (:meth:`watching`): the
        #: event set when it settles, and how many hold it.
        self._outcomes: dict[bytes, _Watched] = {}
        #: Called with a frame of ours when its outcome comes (as :meth:`settled` wakes
        #: its watchers), and with None when every watcher should look again (as
        #: :meth:`release_waiters`): for a program that follows many frames without a
        #: task for each (the simulator's senders).
        self.settle_listeners: list[Callable[[bytes | None], None]] = []
        #: (ts, address envelope) of our current announce (see :meth:`_own_announce`).
        self._announced: tuple[int, bytes] | None = None
        self.inbox_changed = trio.Event()
        self._routes_dirty = trio.Event()
        #: When the router's paced sends held back may go (:attr:`mesh.Router.release_due`,
        #: ms), as last looked; set when it moves earlier, to wake :meth:`_release_loop`.
        self._release_at: int | None = None
        self._release_moved = trio.Event()
        #: Set (and replaced) when an interest of another node is learned or withdrawn.
        self.interests_changed = trio.Event()
        #: Set (and replaced) when this node learns a revocation.
        self.revocations_changed = trio.Event()
        self.subscriptions = LocalSubscriptions(
            local=self.local,
            router=self.router,
            sign=lambda frame: frame.seal(identity),
            apply=self._own_interests,
            send=self.send_frames,
            clock=clock,
            new_id=new_id,
            hops=config.hops,
            lease=config.lease,
            wallet=self.wallet,
        )

    def _counting_failures(self, run: RunBlocking) -> RunBlocking:
        """``run``, counting in ``statistics.store_failures`` each call whose store
        failed (:class:`mesh.MeshError`, but not :class:`mesh.StoreFull`: a full store
        is a quota doing its job)."""

        async def counted(call: Callable[[], Any]) -> Any:
            try:
                return await run(call)
            except mesh.StoreFull:
                raise
            except mesh.MeshError:
                self.statistics.store_failures += 1
                raise

        return counted

    # -- life -------------------------------------------------------------------------

    async def serve(
        self,
        frame_client: FrameClient,
        relays: Sequence[crypto.SignedAddress],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the forwarders, announces and timers until cancelled."""
        self.frame_client = frame_client
        now = self.clock()
        routes = await self.run_store(lambda: self.store.load_routes(now=now))
        learned = await self.run_store(lambda: self.store.addresses(now=now))
        for address in learned:
            self._keep_address(address)
        for interest in await self.run_store(lambda: self.store.interests(now=now)):
            if interest.origin != self.local:  # ours are stated afresh by subscribing
                self.router.interests.learn(interest, now=now)
        await self._load_revocations(now)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for relay in relays:
                self._keep_address(relay)
                await self._apply(self.router.add_neighbour(relay.node, mesh.Role.RELAY, now))
            await self.refresh_peers()
            for route in routes:
                if self.router.is_neighbour(route.via):
                    self.router.table.learn(route)
            # Named subscriptions are ours from the start, reader or not.
            for saved in await self.run_store(self.store.subscriptions):
                await self.subscriptions.keep(saved.name, saved.patterns)
            # Whatever was queued before a restart goes where the routes say now.
            pairs = await self.run_store(self.store.queued_destinations)
            await self._apply(
                [
                    self.router.reroute(dst, now)
                    for dst in sorted({dst for dst, _ in pairs}, key=lambda n: n.raw)
                ]
            )
            for _, hop in pairs:
                if hop is not None:
                    self._forwarder(hop).poke()
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self.subscriptions.refresh_loop)
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._release_loop)
            nursery.start_soon(self._save_loop)
            self.ready = True
            task_status.started()

    def _forwarder(self, node: crypto.NodeId) -> Forwarder:
        forwarder = self.forwarders.get(node)
        if forwarder is None:
            assert self._nursery is not None
            forwarder = self.forwarders[node] = Forwarder(self, node)
            self._nursery.start_soon(forwarder.run)
        return forwarder

    # -- neighbours and addresses -----------------------------------------------------

    def _keep_address(self, address: crypto.SignedAddress) -> bool:
        held = self.addresses.get(address.node)
        if held is not None and held.record.seq >= address.record.seq:
            return False
        self.addresses[address.node] = address
        forwarder = self.forwarders.get(address.node)
        if forwarder is not None:
            forwarder.nudge()  # it may have been waiting for an address
        return True

    def endpoints_of(self, node: crypto.NodeId) -> Sequence[str]:
        address = self.addresses.get(node)
        if address is None or address.record.exp <= self.clock():
            return ()
        return address.record.endpoints

    async def refresh_peers(self) -> None:
        """Make the peers in the data directory neighbours (and forget removed ones)."""
        now = self.clock()
        current: set[crypto.NodeId] = set()
        for address in self.peer_addresses():
            if address.record.exp <= now or address.node == self.local:
                continue
            current.add(address.node)
            self._keep_address(address)
        actions: list[mesh.Action] = []
        for node in sorted(current - self._peers, key=lambda n: n.raw):
            actions += self.router.add_neighbour(node, mesh.Role.PEER, now)
        gone = sorted(self._peers - current, key=lambda n: n.raw)
        for node in gone:
            actions += self.router.remove_neighbour(node, mesh.Role.PEER, now)
        self._peers = current
        await self._apply(actions)
        for node in gone:
            await self._reroute_queued(node)

    async def add_peer(self, address: crypto.SignedAddress) -> None:
        """``address`` was just stored as a peer: greet it now."""
        self._keep_address(address)
        if address.node not in self._peers:
            self._peers.add(address.node)
            await self._apply(self.router.add_neighbour(address.node, mesh.Role.PEER, self.clock()))

    async def greet(self, node: crypto.NodeId) -> None:
        """Send ``node`` our announce with hello (and our routes): it answers with its
        own. A node does this each time it (re)attaches to a relay, since the relay
        refuses announces from a node not attached to it yet."""
        if self.router.is_neighbour(node):
            await self._apply([mesh.Greet(node)])

    async def attachment_changed(self, node: crypto.NodeId, attached: bool) -> None:
        """A node attached to this one as its relay (or detached)."""
        now = self.clock()
        if attached:
            await self._apply(self.router.add_neighbour(node, mesh.Role.ATTACHED, now))
        else:
            await self._apply(self.router.remove_neighbour(node, mesh.Role.ATTACHED, now))
            await self._reroute_queued(node)

    async def _reroute_queued(self, node: crypto.NodeId) -> None:
        """``node`` went down or away: the frames still queued for it (the router
        rerouted those it remembered sending that way) go where the router says now."""
        if self.router.links.usable(node):
            return
        queued = await self.run_store(functools.partial(self.store.destinations_via, node))
        if queued:
            await self._apply(self.router.reroute_queued(node, queued, self.clock()))

    # -- actions ----------------------------------------------------------------------

    async def _apply(self, actions: Sequence[mesh.Action]) -> None:
        due = self.router.release_due
        if due is not None and (self._release_at is None or due < self._release_at):
            self._release_at = due
            self._release_moved.set()
        for action in actions:
            if isinstance(action, mesh.Reroute):
                dst, hop, instead = action.dst, action.next_hop, action.instead
                moved = await self.run_store(
                    functools.partial(self.store.reroute, dst, hop, instead=instead)
                )
                if moved:
                    log.info(
                        "rerouted %d frames for %s via %s",
                        moved,
                        dst.short,
                        hop.short if hop else "nobody (held)",
                    )
                    # Frames left other neighbours' queues, some perhaps handed over.
                    for forwarder in self.forwarders.values():
                        forwarder.invalidate()
                    for node in (hop, instead):
                        if node is not None:
                            self._forwarder(node).rewind()  # frames of any age came
                # Frames left with no way on (all of them, or those that came from the
                # new next hop) are held: their destination is looked up. Also after a
                # restart, and when they were held already (the lookup is not repeated
                # before its time). Looked up as for frames passing through, unless the
                # router knows frames of ours wait for it.
                if (hop is None or instead is None) and self.router.dht is not None:
                    if await self.run_store(functools.partial(self.store.holds, dst)):
                        await self._apply(self.router.held(dst, self.clock()))
                    else:
                        self.router.settled(dst)
                self._routes_dirty.set()
            elif isinstance(action, mesh.Flood):
                for node in action.to:
                    self._forwarder(node).add_control([action.wire])
            elif isinstance(action, mesh.Greet):
                now = self.clock()
                if (
                    self._announced is not None
                    and self._announced[1] != self.own_address().envelope
                ):
                    self.announce()  # a new address: a fresher announce, for everyone
                frames = [
                    self._own_announce(now, hello=action.hello),
                    *self.router.greeting(action.node, now),
                ]
                self.statistics.announces_sent += 1
                self._forwarder(action.node).add_control(frames)
            elif isinstance(action, mesh.Wake):
                self._forwarder(action.node).wake()
            elif isinstance(action, mesh.Notify):
                await self._notify(action)
            elif isinstance(action, mesh.Offer):
                self._forwarder(action.neighbour).add_control([self._offer(action)])
                self.statistics.tree_offers_sent += 1
            elif isinstance(action, mesh.DhtSend):
                self._send_dht(action)
            elif isinstance(action, mesh.LookupDone):
                waiting = self._lookups.pop(action.lookup_id, None)
                if waiting is not None:
                    waiting[1].append(action)
                    waiting[0].set()
            elif isinstance(action, mesh.CoordinatesChanged):
                self.statistics.tree_changes += 1
                new = action.new
                log.info(
                    "tree: %s",
                    "no place"
                    if new is None
                    else f"root {new.root.short}, depth {new.depth}"
                    + (f", parent {new.path[-2].short}" if new.depth else " (we are the root)"),
                )

    def _send_dht(self, send: mesh.DhtSend) -> None:
        """A ``dht`` frame to ``send.dst``, to its next hop now (control traffic: with no
        route it is dropped, and the lookup that sent it sees a timeout)."""
        now = self.clock()
        hop = self.router.next_hop(send.dst, now, coords=send.dst_chain)
        if hop is None:
            self.statistics.dht_unroutable += 1
            return
        frame = crypto.Frame(
            kind=crypto.Kind.DHT,
            src=self.local,
            id=self.new_id(),
            ts=now,
            exp=now + self.config.router.route_ttl_ms,
            hops=self.config.hops,
            dst=send.dst,
            body=send.body,
        )
        self.statistics.dht_sent += 1
        coords = None if hop == send.dst else send.dst_chain
        self._forwarder(hop).add_control(
            [mesh.WireFrame(0, frame.seal(self.identity), coords=coords, opened=frame)]
        )

    async def find_coordinates(self, node: crypto.NodeId) -> crypto.Coordinates | None:
        """Look ``node``'s coordinates up in the DHT (``--tree``); None if the lookup
        found none (or they no longer verify). Raises :class:`mesh.NoRoute` while this
        node has no tree or no place in it, :class:`mesh.StoreFull` with too many
        lookups running."""
        now = self.clock()
        lookup, actions = self.router.find_coordinates(node, now)
        done = trio.Event()
        ended: list[mesh.LookupDone] = []
        self._lookups[lookup] = (done, ended)
        try:
            await self._apply(actions)
            await done.wait()
        finally:
            self._lookups.pop(lookup, None)
        value = ended[0].value
        if value is None:
            return None
        try:
            return crypto.CoordChain.parse(value, now=self.clock())
        except crypto.CryptoError:
            return None

    def _offer(self, offer: mesh.Offer) -> mesh.WireFrame:
        """A ``crd`` frame for ``offer.neighbour``: never passed on (hops 1)."""
        now = self.clock()
        self._offer_ts = max(now, self._offer_ts + 1)
        frame = crypto.Frame(
            kind=crypto.Kind.CRD,
            src=self.local,
            id=self.new_id(),
            ts=self._offer_ts,
            exp=self._offer_ts + self.config.router.route_ttl_ms,
            hops=1,
            dst=offer.neighbour,
            body=mesh.offer_body(offer.chain, offer.grant, offer.around),
        )
        return mesh.WireFrame(0, frame.seal(self.identity))

    async def _notify(self, action: mesh.Notify) -> None:
        """Queue a drop receipt for ``action.origin`` about its frame ``action.ref``."""
        why = action.why[: crypto.MAX_WHY_LENGTH]
        if await self._send_drop_receipt(action.origin, action.ref, why, now=self.clock()):
            log.info("told %s: %s", action.origin.short, why)

    async def _send_drop_receipt(
        self, origin: crypto.NodeId, ref: bytes, why: str, *, now: int
    ) -> bool:
        """Queue a signed drop receipt for ``origin``; False if the store would not take
        it (counted and logged: the frame itself is gone already)."""
        receipt = self._receipt(origin, ref, "dropped", why=why, now=now)
        return await self._queue_drop_receipts([receipt], now=now)

    async def _queue_drop_receipts(self, receipts: list[mesh.Outgoing], *, now: int) -> bool:
        """Queue signed drop receipts in one transaction; False if the store would not
        take them (counted and logged: the frames themselves are gone already)."""
        try:
            await self.run_store(lambda: self.store.enqueue(receipts, now=now))
        except mesh.MeshError as exc:
            self.statistics.receipts_lost += len(receipts)
            origins = ", ".join(sorted({receipt.dst.short for receipt in receipts}))
            log.warning(
                "could not queue %d drop receipts (for %s): %s", len(receipts), origins, exc
            )
            return False
        self.statistics.receipts_sent += len(receipts)
        self.statistics.drop_receipts_sent += len(receipts)
        for hop in {receipt.next_hop for receipt in receipts}:
            if hop is not None:
                self._forwarder(hop).poke()
        return True

    # -- revocations ------------------------------------------------------------------

    async def _load_revocations(self, now: int) -> None:
        """Know the revocations kept in the store; the newest are signed into ``rev``
        frames of ours for greeting new neighbours (not flooded: the mesh had them)."""
        book = self.book
        if book is None:
            return
        held = await self.run_blocking(book.revocation_list)
        for revocation in held[: -mesh.GREETING_REVOCATIONS]:
            self.router.authority.learn(revocation, own=True)  # kept before: taken then
        for revocation in held[-mesh.GREETING_REVOCATIONS :]:
            envelope = self._revocation_frame(revocation, now).seal(self.identity)
            self.router.own_revocation(revocation, envelope, flood=False)

    def _revocation_frame(self, revocation: crypto.Revocation, now: int) -> crypto.Frame:
        return crypto.Frame(
            kind=crypto.Kind.REV,
            src=self.local,
            id=self.new_id(),
            ts=now,
            exp=now + crypto.MAX_LIFETIME_MS,
            hops=crypto.MAX_HOPS,
            body=revocation.envelope,
        )

    async def revoke(self, revocation: crypto.Revocation) -> bool:
        """Keep ``revocation`` (signed by us or handed to us) and flood it to the whole
        mesh; from now on this node refuses the capability and its descendants.
        Returns False if it was held already (it is flooded again all the same: the
        command may be repeated after a partition)."""
        added = True
        if self.book is not None:
            added = await self.run_blocking(lambda: self.book_add(revocation))
        now = self.clock()
        envelope = self._revocation_frame(revocation, now).seal(self.identity)
        self.statistics.revocations_learned += int(added)
        await self._apply(self.router.own_revocation(revocation, envelope))
        self._revocations_changed()
        return added

    def _revocations_changed(self) -> None:
        self.revocations_changed.set()
        self.revocations_changed = trio.Event()

    def book_add(self, revocation: crypto.Revocation) -> bool:
        """Keep a revocation in the store (blocking)."""
        assert self.book is not None
        return self.book.add_revocation(revocation)

    # -- announces --------------------------------------------------------------------

    def _own_announce(
        self, now: int, *, hello: bool = False, fresh: bool = False
    ) -> mesh.WireFrame:
        """Our announce: as fresh as the last one (``ts``) while it carries the same
        address, unless ``fresh`` (sent to every neighbour: :meth:`announce`).

        A greeting (to one neighbour) must not carry a fresher announce than the others
        got: fresher beats shorter in every routing table, so nodes that it reached only
        the long way round (a fresher one within the flood interval is not flooded on
        where the one before was) would route to us that way until the next announce,
        past the hop limit in a large mesh.
        """
        address = self.own_address().envelope
        if fresh or self._announced is None or self._announced[1] != address:
            self._announced = (now, address)
        frame = crypto.Frame(
            kind=crypto.Kind.ANN,
            src=self.local,
            id=self.new_id(),
            ts=self._announced[0],
            exp=now + self.config.router.route_ttl_ms,
            hops=self.config.router.announce_radius or self.config.hops,
            body=self.own_address().envelope,
            hello=True if hello else None,
        )
        return mesh.WireFrame(0, frame.seal(self.identity))

    def announce(self) -> None:
        """Send this node's announce to every neighbour now."""
        now = self.clock()
        wire = self._own_announce(now, fresh=True)
        for link in self.router.links:
            self._forwarder(link.node).add_control([wire])
            self.statistics.announces_sent += 1

    async def _announce_loop(self) -> None:
        interval = self.config.announce_interval
        # Neighbours known at start were greeted (our announce and our routes) already.
        while True:
            await trio.sleep(interval * self.rng.uniform(0.75, 1.25))
            self.announce()

    async def _release_loop(self) -> None:
        """Send what the router's pacing held back (announces, greetings, tree offers:
        one per neighbour per flood interval) as soon as it may go, not at the next
        tick: a tree re-forming takes a flood interval a level, not a tick interval."""
        while True:
            at = self._release_at
            if at is None:
                await self._release_moved.wait()
            else:
                delay = (at - self.clock()) / 1000
                if delay <= 0:
                    self._release_at = None
                    await self._apply(self.router.release(self.clock()))
                    continue
                with trio.move_on_after(delay):
                    await self._release_moved.wait()
            self._release_moved = trio.Event()

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(TICK_INTERVAL)
            await self.tick()

    async def tick(self) -> None:
        """Expire routes, notice peers added or removed, drop expired frames with
        receipts."""
        now = self.clock()
        held = len(self.router.interests)
        await self._apply(self.router.tick(now))
        if len(self.router.interests) != held:  # some lapsed
            self._routes_dirty.set()
            self.interests_changed.set()
            self.interests_changed = trio.Event()
        await self.subscriptions.restate_due()
        await self.refresh_peers()
        while True:
            expired = await self.run_store(lambda: self.store.take_expired(now=now))
            for item in expired:
                where = f"queued for {item.next_hop.short}" if item.next_hop else "held, no route"
                await self._dropped(item, "expired", f"expired at {self.local.short} ({where})")
            if len(expired) < 1000:
                break

    async def _save_loop(self) -> None:
        """Save the routing table (and the interests) soon after it changes, so a node
        killed and restarted routes at once (the table is rebuilt by announces
        otherwise): a second after a change, at most every ROUTES_SAVE_INTERVAL."""
        saved = -math.inf
        try:
            while True:
                await self._routes_dirty.wait()
                # One save for a burst of changes, and not more often than the interval.
                await trio.sleep_until(
                    max(trio.current_time() + ROUTES_SAVE_DELAY, saved + ROUTES_SAVE_INTERVAL)
                )
                saved = trio.current_time()
                self._routes_dirty = trio.Event()
                await self.run_store(self._save_tables())
        finally:
            if self._routes_dirty.is_set():
                # Stopping within a second of a change: save it now, or the restarted
                # node would route with a table older than the one it had.
                with trio.CancelScope(shield=True):
                    try:
                        await self.run_store(self._save_tables())
                    except mesh.MeshError as exc:
                        log.warning("could not save the routing table: %s", exc)

    def _save_tables(self) -> Callable[[], None]:
        routes = self.router.table.all_routes()
        interests = self.router.interests.held(now=self.clock())

        def save() -> None:
            self.store.save_routes(routes)
            self.store.save_interests(interests)

        return save

    # -- publish/subscribe ------------------------------------------------------------

    def inbox_grew(self) -> None:
        """Wake the inbox's readers: something entered it."""
        self.inbox_changed.set()
        self.inbox_changed = trio.Event()

    async def keep_subscription(self, name: str, patterns: Sequence[str]) -> tuple[str, ...]:
        """Hold (or change) named subscription ``name``: saved, then advertised."""
        validate_name(name)
        kept = tuple(dict.fromkeys(crypto.validate_pattern(p) for p in patterns))
        if not kept:
            raise crypto.Malformed("a subscription needs at least one pattern")
        now = self.clock()
        lease_ms = self.subscriptions.lease_ms
        await self.run_store(lambda: self.store.save_subscription(name, kept, lease_ms, now=now))
        return await self.subscriptions.keep(name, kept)

    async def drop_subscription(self, name: str) -> bool:
        """Forget named subscription ``name`` and what was pending for it."""
        dropped = await self.run_store(lambda: self.store.delete_subscription(name))
        forgotten = await self.subscriptions.forget(name)
        return bool(dropped or forgotten)

    async def _own_interests(self, actions: Sequence[mesh.Action]) -> None:
        self._routes_dirty.set()
        await self._apply(actions)

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        idempotent: Callable[[Published], mesh.Idempotent] | None = None,
        cap: crypto.Capability | None = None,
    ) -> Published:
        """Take custody of a publication of ours (see ``Node.publish``; ``idempotent``
        as for :meth:`send_frames`; ``cap`` the capability to present, by default the
        first held that allows it)."""
        crypto.validate_topic(topic)
        if cap is None:
            cap = self.wallet.choose_topic(crypto.Operation.PUBLISH, topic)
        owner = mesh.secure_owner(topic)
        if owner is not None and owner != self.local and cap is None:
            raise NodeError(
                f"topic {topic!r} is {owner.short}'s secure name: only that node, or a holder "
                f"of its capability (--cap), may publish there (ours is ~{self.local.text})"
            )
        now = self.clock()
        lifetime = int((ttl if ttl is not None else self.config.frame_ttl) * 1000)
        frame = crypto.Frame(
            kind=crypto.Kind.PUB,
            src=self.local,
            id=self.new_id(),
            ts=now,
            exp=now + lifetime,
            hops=self.config.hops,
            topic=topic,
            body=body,
            ct=ct,
            cap=None if cap is None else cap.envelope,
        )
        envelope = frame.seal(self.identity)
        decision = self.router.classify(mesh.Admitted(frame, envelope, 0), None, now)
        if isinstance(decision, mesh.Result):
            # Our own capability fails here already (revoked, expired, the wrong one).
            raise NodeError(decision.words)
        assert isinstance(decision, mesh.Fanout)  # our own publication: not a msg
        named = self.subscriptions.durable_names(topic) if decision.deliver else ()
        published = Published(frame.id, topic, decision.next_hops, decision.deliver)
        record = None if idempotent is None else idempotent(published)
        earlier = await self.commits.run(
            self.store.publish_write(
                frame,
                envelope,
                deliver=bool(named),
                next_hops=decision.next_hops,
                now=now,
                named=named,
                to=decision.to,
                held=decision.held,
                idempotent=record,
            )
        )
        if earlier is not None:
            raise Replayed(earlier)
        if named:
            self.inbox_grew()
        for hop in decision.next_hops:
            self._forwarder(hop).poke()
        self.statistics.publications_forwarded += len(decision.next_hops)
        if decision.held:
            await self._apply(self._held(decision.held, now, ours=True))
        if decision.deliver:
            self._hand_over(frame, hops=0, now=now)
        return published

    def _hand_over(self, frame: crypto.Frame, *, hops: int, now: int) -> None:
        assert frame.topic is not None
        publication = Publication(
            topic=frame.topic,
            body=frame.body or b"",
            ct=frame.ct,
            origin=frame.src,
            id=frame.id,
            ts=frame.ts,
            received=now,
            hops=hops,
        )
        if self.subscriptions.dispatch(publication):
            self.statistics.publications_delivered += 1

    # -- sending ----------------------------------------------------------------------

    def new_frame(
        self,
        dst: crypto.NodeId,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
        cap: crypto.Capability | None = None,
    ) -> crypto.Frame:
        """A ``msg`` frame from this node to ``dst``, with ``cap`` (by default the
        first capability held to send to ``dst``'s inbox, if any)."""
        if cap is None:
            cap = self.wallet.choose(crypto.Operation.SEND, crypto.Target.inbox(dst))
        now = self.clock()
        lifetime = int((ttl if ttl is not None else self.config.frame_ttl) * 1000)
        return crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.local,
            id=self.new_id(),
            ts=now,
            exp=now + lifetime,
            hops=self.config.hops,
            dst=dst,
            body=body,
            ct=ct,
            rr=True if receipt else None,
            cap=None if cap is None else cap.envelope,
        )

    async def send_frames(
        self,
        frames: Sequence[tuple[crypto.Frame, bytes]],
        *,
        idempotent: Callable[[list[crypto.NodeId | None]], mesh.Idempotent] | None = None,
    ) -> list[crypto.NodeId | None]:
        """Take custody of sealed frames of ours; return each one's next hop (None: held).

        With ``idempotent`` (given the next hops, the record of this call to keep with
        the frames, in the same transaction): raises :class:`Replayed` if its key was
        used before, having taken nothing. Raises :class:`mesh.StoreFull` if a quota is
        reached (nothing was taken).
        """
        now = self.clock()
        outgoing = []
        hops: list[crypto.NodeId | None] = []
        for frame, envelope in frames:
            assert frame.dst is not None
            if frame.dst == self.local:
                raise NodeError("a node cannot send to itself")
            hop = self.router.next_hop(frame.dst, now)
            hops.append(hop)
            outgoing.append(mesh.Outgoing.of(frame, envelope, hops=0, next_hop=hop))
        receipts = [bool(frame.rr) for frame, _ in frames]
        record = None if idempotent is None else idempotent(hops)
        queued: list[mesh.Queued] = []
        earlier = await self.commits.run(
            self.store.enqueue_write(
                outgoing, now=now, receipts=receipts, idempotent=record, queued=queued
            )
        )
        if earlier is not None:
            raise Replayed(earlier)
        self._hand(queued)
        if None in hops:
            self.statistics.frames_held += 1
            held = {frame.dst for (frame, _), hop in zip(frames, hops, strict=True) if hop is None}
            await self._apply(self._held(held, now, ours=True))
        return hops

    def _hand(self, queued: Sequence[mesh.Queued]) -> None:
        """Hand frames just queued to their next hops' forwarders (held ones stay)."""
        by_hop: dict[crypto.NodeId, list[mesh.Queued]] = {}
        for item in queued:
            if item.next_hop is not None:
                by_hop.setdefault(item.next_hop, []).append(item)
        for hop, items in by_hop.items():
            self._forwarder(hop).hand(items)

    def _held(
        self, destinations: Iterable[crypto.NodeId | None], now: int, *, ours: bool
    ) -> list[mesh.Action]:
        """Frames for ``destinations`` are held here with no way on (``ours``: sent or
        published here; else passing through): the router may look them up (with the
        tree)."""
        actions: list[mesh.Action] = []
        if self.router.tree is not None:
            # In a fixed order (not a set's, which varies from process to process with
            # the hash of bytes): the lookups' queries and their ids, so that a
            # simulation's run is the same for its seed.
            for dst in sorted({d for d in destinations if d is not None}):
                actions += self.router.held(dst, now, ours=ours)
        return actions

    @contextlib.contextmanager
    def watching(self, frame_id: bytes) -> Iterator[trio.Event]:
        """An event set when a receipt (or a drop here) settles frame ``frame_id``, or
        when :meth:`release_waiters` asks every watcher to look again; for as long as
        the ``with`` block runs. Enter it before reading the frame's trace, so that an
        outcome between the two is not missed. Watchers of one frame share its event,
        which is forgotten when the last one leaves: one given up (a timeout, a client
        gone) leaves nothing behind."""
        watched = self._outcomes.get(frame_id)
        if watched is None:
            watched = self._outcomes[frame_id] = _Watched()
        watched.holders += 1
        try:
            yield watched.event
        finally:
            watched.holders -= 1
            if not watched.holders and self._outcomes.get(frame_id) is watched:
                del self._outcomes[frame_id]

    def settled(self, frame_id: bytes) -> None:
        """Frame ``frame_id`` of ours has its outcome: wake whoever waits for it."""
        watched = self._outcomes.pop(frame_id, None)
        if watched is not None:
            watched.event.set()
        for listener in self.settle_listeners:
            listener(frame_id)

    def release_waiters(self) -> None:
        """Wake everyone waiting for an outcome: each looks at its frame's trace again
        (the node stops, and none will come; or a purge settled some)."""
        outcomes, self._outcomes = self._outcomes, {}
        for watched in outcomes.values():
            watched.event.set()
        for listener in self.settle_listeners:
            listener(None)

    # -- forwarder host ---------------------------------------------------------------

    async def queued_for(
        self,
        node: crypto.NodeId,
        limit: int,
        *,
        after: int = 0,
        exclude: Collection[crypto.NodeId] = (),
    ) -> list[mesh.Queued]:
        if limit <= 0:
            return []
        now = self.clock()
        batch: list[mesh.Queued] = await self.run_store(
            lambda: self.store.batch(node, now=now, limit=limit, after=after, exclude=exclude)
        )
        return self._with_coordinates(node, batch, now)

    def sendable(self, node: crypto.NodeId, queued: list[mesh.Queued]) -> list[mesh.Queued]:
        now = self.clock()
        batch = [item for item in queued if item.exp > now]  # as the store reads them
        return self._with_coordinates(node, batch, now)

    def _with_coordinates(
        self, node: crypto.NodeId, batch: list[mesh.Queued], now: int
    ) -> list[mesh.Queued]:
        tree = self.router.tree
        if tree is not None:
            # Frames for nodes beyond the neighbour go with their coordinates, if we
            # hold them: it may have no route to them but pass them on greedily. A
            # message goes with its origin's too (ours: we sent it), so that its
            # receipt or a reply can go back without looking them up.
            coordinates_of = self.router.coordinates_of
            local = self.local
            for index, item in enumerate(batch):
                # A message, receipt or addressed interest, or a copy of a publication
                # held for one subscriber (addressed to it), going beyond the neighbour.
                chain = None
                if item.dst != node and (item.kind in _ROUTED or item.to == (item.dst,)):
                    chain = coordinates_of(item.dst, now)
                origin = None
                if item.kind in _WITH_ORIGIN and item.src != node:
                    origin = tree.chain if item.src == local else coordinates_of(item.src, now)
                if chain is not None or origin is not None:
                    batch[index] = dataclasses.replace(item, coords=chain, src_coords=origin)
        return batch

    async def handed_on(
        self,
        node: crypto.NodeId,
        control: Sequence[mesh.WireFrame],
        queued: Sequence[mesh.Queued],
        results: Sequence[mesh.Result],
    ) -> float | None:
        """Act on a neighbour's per-frame results; return seconds to wait before the
        next batch when frames were kept for a retry (else None)."""
        now = self.clock()
        await self._apply(self.router.sent_ok(node, now))
        taken = []
        refused = []
        held_back: list[tuple[mesh.Queued, mesh.Result]] = []
        deferred = 0
        link = self.router.links.get(node)
        our_relay = link is not None and mesh.Role.RELAY in link.roles
        for item, result in zip(queued, results, strict=True):
            if result.outcome is mesh.Outcome.ACCEPTED:
                self.statistics.sent_accepted += 1
                taken.append(item.seq)
            elif result.outcome is mesh.Outcome.DUPLICATE:
                self.statistics.sent_duplicate += 1
                taken.append(item.seq)
            elif result.code is mesh.Reason.STORE_FULL and item.kind in _HELD_BACK:
                # No room there for its origin now: kept, and that origin's frames held
                # back for this neighbour a while, the others' going on (§9.8).
                held_back.append((item, result))
            elif result.code is mesh.Reason.POLICY and our_relay:
                # A relay counts us as a neighbour once we are attached to it; until
                # then (we just started, or it did) it refuses our frames by policy.
                # Keep them and try again: it will be, in a moment.
                deferred += 1
            else:
                self.statistics.sent_rejected += 1
                refused.append((item, result))
        if taken:
            await self.run_store(lambda: self.store.forwarded(taken, first_hop=node, now=now))
            self.statistics.frames_forwarded += len(taken)
        forwarder = self._forwarder(node)
        held_origins = {item.src for item, _ in held_back}
        forwarder.released(
            item.src
            for item, result in zip(queued, results, strict=True)
            if result.ok and item.src not in held_origins
        )
        if held_back:
            # Those the forwarder cannot hold (too many origins held) are refused for good.
            overflow = {item.seq for item in forwarder.hold_back([item for item, _ in held_back])}
            self.statistics.frames_held_back += len(held_back) - len(overflow)
            self.statistics.sent_rejected += len(overflow)
            refused += [(item, result) for item, result in held_back if item.seq in overflow]
        if refused:
            await self._refused(node, refused)
        if deferred:
            return await self.post_failed(
                node, f"our relay refused {deferred} frames by policy (not attached yet?)", None
            )
        return None

    async def post_failed(self, node: crypto.NodeId, problem: str, after: float | None) -> float:
        self.statistics.send_retries += 1
        now = self.clock()
        was_usable = self.router.links.usable(node)
        wait_ms, actions = self.router.send_failed(
            node, now, problem, retry_after_ms=None if after is None else int(after * 1000)
        )
        log.info("retrying %s in %.1f s: %s", node.short, wait_ms / 1000, problem)
        await self._apply(actions)
        if was_usable:
            await self._reroute_queued(node)
        return wait_ms / 1000

    async def _dropped(
        self, item: mesh.Queued, code: str, words: str, *, by: crypto.NodeId | None = None
    ) -> None:
        """A frame was dropped here: tell its origin (a receipt, or our own trace)."""
        await self._tell_origins([(item, self._drop_noted(item, code, words))], by or self.local)

    async def _refused(
        self, node: crypto.NodeId, refused: list[tuple[mesh.Queued, mesh.Result]]
    ) -> None:
        """Frames ``node`` refused for good: out of the queue, and their origins told, in
        at most three store transactions however many they are (a transaction each
        made a refused batch of 250 cost 500 synced commits, the store's thread busy
        with them while sends waited for it)."""
        seqs = [item.seq for item, _ in refused]
        there = await self.run_store(lambda: self.store.remove_each(seqs))
        await self._tell_origins(
            [
                (
                    item,
                    self._drop_noted(
                        item, str(result.code), f"refused by {node.short}: {result.words}"
                    ),
                )
                for item, result in refused
                if item.seq in there  # the others were purged meanwhile: dropped already
            ],
            node,
        )

    def _drop_noted(self, item: mesh.Queued, code: str, words: str) -> str:
        """Count and log a frame dropped here; return why, as its origin is told."""
        self.statistics.frames_dropped += 1
        why = f"{code}: {words}"[: crypto.MAX_WHY_LENGTH]
        log.info("dropped frame %s from %s: %s", item.id.hex()[:12], item.src.short, why)
        return why

    async def _tell_origins(
        self, dropped: list[tuple[mesh.Queued, str]], by: crypto.NodeId
    ) -> None:
        """Tell the origins of messages dropped here, each ``(frame, why)``, that ``by``
        dropped them: ours in our trace, the others' in drop receipts (no receipts about
        receipts), each kind in one store transaction."""
        now = self.clock()
        ours = [
            (item.id, why)
            for item, why in dropped
            if item.kind is crypto.Kind.MSG and item.src == self.local
        ]
        if ours:
            await self.run_store(
                lambda: self.store.record_outcomes(ours, "dropped", by=by, now=now)
            )
            for ref, _ in ours:
                self.settled(ref)
        receipts = [
            self._receipt(item.src, item.id, "dropped", why=why, now=now)
            for item, why in dropped
            if item.kind is crypto.Kind.MSG and item.src != self.local
        ]
        if receipts:
            await self._queue_drop_receipts(receipts, now=now)

    def _receipt(
        self,
        origin: crypto.NodeId,
        ref: bytes,
        state: str,
        *,
        now: int,
        why: str | None = None,
        hops: int | None = None,
    ) -> mesh.Outgoing:
        frame = crypto.Frame(
            kind=crypto.Kind.RCPT,
            src=self.local,
            id=self.new_id(),
            ts=now,
            exp=now + int(self.config.frame_ttl * 1000),
            hops=self.config.hops,
            dst=origin,
            ref=ref,
            st=state,
            why=why,
            n=hops,
        )
        return mesh.Outgoing.of(
            frame, frame.seal(self.identity), hops=0, next_hop=self.router.next_hop(origin, now)
        )

    # -- intake -----------------------------------------------------------------------

    async def receive(
        self, items: list[mesh.WireFrame | mesh.Result], sender: crypto.NodeId, now: int
    ) -> list[mesh.Result]:
        """Take the frames ``sender`` POSTed; a result per item.

        Raises :class:`mesh.StoreFull` (answer 429: nothing was taken) and
        :class:`mesh.MeshError` (503) from the store.
        """

        # A trusted neighbour's messages for other nodes go on unchecked (mesh.admit).
        unverified_for = self.local if self.router.policy.unverified_from(sender) else None

        def check() -> list[mesh.Admitted | mesh.Result]:
            return [
                item
                if isinstance(item, mesh.Result)
                else mesh.admit(item, now=now, unverified_for=unverified_for)
                for item in items
            ]

        checked = check() if len(items) <= _INLINE_VERIFY else await self.run_blocking(check)
        await self._apply(self.router.heard_from(sender, now))
        results: list[mesh.Result | None] = []
        intakes: list[mesh.Intake] = []
        actions: list[mesh.Action] = []
        learned: list[crypto.SignedAddress] = []
        revoked: list[crypto.Revocation] = []
        live: set[int] = set()  # id() of the admitted publications to hand over here
        refresh = False
        for item in checked:
            if isinstance(item, mesh.Result):
                results.append(item)
                continue
            kind = item.frame.kind
            if kind is crypto.Kind.ANN:
                self.statistics.announces_received += 1
                result, address, more = self.router.on_announce(item, sender, now)
                actions += more
                if result.outcome is mesh.Outcome.ACCEPTED:
                    self._routes_dirty.set()
                if address is not None and self._keep_address(address):
                    learned.append(address)
                results.append(result)
                continue
            if kind is crypto.Kind.REV:
                result, revocation, more = self.router.on_revocation(item, sender, now)
                actions += more
                if self.on_revocation is not None:
                    self.on_revocation(revocation, sender, now)
                if revocation is not None:
                    self.statistics.revocations_learned += 1
                    revoked.append(revocation)
                results.append(result)
                continue
            if kind is crypto.Kind.DHT:
                self.statistics.dht_received += 1
                result, more = self.router.on_dht(item, sender, now)
                actions += more
                results.append(result)
                continue
            if kind is crypto.Kind.CRD:
                self.statistics.tree_offers_received += 1
                result, more = self.router.on_offer(item, sender, now)
                actions += more
                results.append(result)
                continue
            if kind is crypto.Kind.SUB or kind is crypto.Kind.UNSUB:
                self.statistics.interests_received += 1
                if item.frame.dst in (None, self.local):  # else routed on, as a message
                    result, more = self.router.on_interest(item, sender, now)
                    actions += more
                    if result.outcome is mesh.Outcome.ACCEPTED:
                        self._routes_dirty.set()
                        self.interests_changed.set()
                        self.interests_changed = trio.Event()
                    results.append(result)
                    continue
            decision = self.router.classify(item, sender, now)
            if item.unverified:
                if not isinstance(decision, mesh.Forward):
                    # Passed unchecked as another node's, but acted on here after all.
                    try:
                        crypto.Frame.check_signature(item.envelope)
                    except crypto.CryptoError as exc:
                        results.append(mesh.Result.for_error(exc))
                        continue
                else:
                    self.statistics.frames_unverified += 1
            if isinstance(decision, mesh.Result):
                actions += self.router.refused(item, decision, now)
                results.append(decision)
                continue
            receipt = None
            frame = item.frame
            named: tuple[str, ...] = ()
            if isinstance(decision, mesh.Fanout):
                self.statistics.publications_received += 1
                if decision.deliver:
                    live.add(id(item))
                    assert frame.topic is not None
                    named = self.subscriptions.durable_names(frame.topic)
                # The store keeps publications for named subscriptions only; live ones
                # are handed over from memory once the frame is committed.
                decision = dataclasses.replace(decision, deliver=bool(named))
            if isinstance(decision, mesh.Deliver) and frame.rr:
                receipt = self._receipt(frame.src, frame.id, "delivered", now=now, hops=item.hops)
            # Calls and replies are for the objects: the store keeps their seen-set
            # entry only (a copy again is a duplicate), handed over once committed.
            call = (
                isinstance(decision, mesh.Deliver)
                and frame.kind is crypto.Kind.MSG
                and frame.ct in mesh.CALL_CONTENT_TYPES
                and self.on_call is not None
            )
            intakes.append(mesh.Intake(item, decision, sender, receipt, named, seen_only=call))
            results.append(None)
        stored: list[mesh.Result] = []
        queued: list[mesh.Queued] = []
        if intakes:
            stored = await self.run_store(
                lambda: self.store.accept(intakes, now=now, queued=queued)
            )
        self._hand(queued)
        stored_iter = iter(zip(intakes, stored, strict=True))
        final: list[mesh.Result] = []
        held: set[crypto.NodeId | None] = set()  # destinations of frames held here
        delivered = False
        for pending in results:
            if pending is None:
                intake, result = next(stored_iter)
                if result.outcome is mesh.Outcome.ACCEPTED and self.on_intake is not None:
                    self.on_intake(intake, now)
                if result.outcome is mesh.Outcome.ACCEPTED:
                    if isinstance(intake.decision, mesh.Fanout):
                        held.update(intake.decision.held)
                        self.statistics.publications_forwarded += len(intake.decision.next_hops)
                        if intake.decision.hop_limited:
                            self.statistics.publications_hop_limited += 1
                            frame = intake.admitted.frame
                            log.info(
                                "publication %s from %s made its %d hops here: not passed on",
                                frame.id.hex()[:12], frame.src.short, frame.hops,
                            )  # fmt: skip
                        if intake.named:
                            delivered = True
                        if id(intake.admitted) in live:
                            self._hand_over(intake.admitted.frame, hops=intake.admitted.hops,
                                            now=now)  # fmt: skip
                    elif isinstance(intake.decision, mesh.Forward):
                        if intake.decision.next_hop is None:
                            self.statistics.frames_held += 1
                            held.add(intake.admitted.frame.dst)
                    elif intake.admitted.frame.kind is crypto.Kind.RCPT:
                        ref = intake.admitted.frame.ref
                        assert ref is not None
                        self.settled(ref)
                        if intake.admitted.frame.st == "delivered":
                            self.statistics.receipts_received_delivered += 1
                        else:  # "dropped": crypto admits no other state
                            self.statistics.receipts_received_dropped += 1
                        why = intake.admitted.frame.why or ""
                        if self.subscriptions.is_ours(ref) and why.startswith(
                            f"{mesh.Reason.FORBIDDEN}:"
                        ):
                            # A node on the way requires a capability for it: stating
                            # it again would be refused again. Said once, in the log.
                            log.warning("a subscription of ours was refused: %s", why)
                        elif self.subscriptions.is_ours(ref):
                            # A neighbour dropped one of our interests (its lease lapsed
                            # there, or a quota): state them all again.
                            refresh = True
                    else:
                        if intake.seen_only and self.on_call is not None:
                            self.on_call(intake.admitted, now)  # a call or a reply
                        else:
                            delivered = True
                        if intake.receipt is not None:
                            self.statistics.receipts_sent += 1
                            if intake.receipt.next_hop is None:
                                held.add(intake.receipt.dst)
                elif result.outcome is mesh.Outcome.DUPLICATE and isinstance(
                    intake.decision, mesh.Fanout
                ):
                    # A copy that met another here: the store passed it on toward its
                    # subscribers all the same, and held it for those with no way on yet
                    # (the router names such only for a copy addressed to them). Those
                    # are looked up as for a first copy; else nothing would send them on.
                    held.update(intake.decision.held)
            else:
                result = pending
            final.append(result)
            if result.outcome is mesh.Outcome.ACCEPTED:
                self.statistics.frames_accepted += 1
            elif result.outcome is mesh.Outcome.DUPLICATE:
                self.statistics.frames_duplicate += 1
            else:
                self.statistics.frames_rejected += 1
                self.statistics.rejected_by_reason[str(result.code or "unknown")] += 1
                log.info(
                    "rejected a frame from %s: %s: %s", sender.short, result.code, result.words
                )
        if delivered:
            self.inbox_grew()
        if held:
            actions += self._held(held, now, ours=False)
        await self._apply(actions)
        if refresh:
            await self.subscriptions.restate()
        for address in learned:
            await self.run_store(functools.partial(self.store.save_address, address))
        if revoked:
            if self.book is not None:
                await self.run_blocking(functools.partial(self._keep_revocations, revoked))
            self._revocations_changed()
        return final

    def _keep_revocations(self, revocations: Sequence[crypto.Revocation]) -> None:
        assert self.book is not None
        for revocation in revocations:
            try:
                self.book.add_revocation(revocation)
            except mesh.MeshError as exc:
                # Enforced from memory all the same until the node restarts.
                log.warning("could not keep a revocation: %s", exc)

    # -- views ------------------------------------------------------------------------

    def routes(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "destination": route.dst.text,
                "next_hop": route.via.text,
                "hops": route.hops,
                "age": None if not route.learned else round((now - route.learned) / 1000, 1),
                "expires_in": None if not route.expires else round((route.expires - now) / 1000),
                "direct": route.dst == route.via,
            }
            for route in self.router.routes(now)
        ]

    async def purge(self, next_hop: crypto.NodeId | None) -> tuple[int, int]:
        """Drop every frame queued for ``next_hop`` (None: those held with no route);
        return (frames, bytes charged). Its forwarder reads no batch meanwhile and sends
        none it read before (POSTs under way go on: those frames have left). This
        node's own messages among them are settled as dropped (:meth:`mesh.Store.purge`);
        other origins are not told."""
        forwarder = None if next_hop is None else self.forwarders.get(next_hop)
        now = self.clock()
        purge = functools.partial(self.store.purge, next_hop, by=self.local, now=now)
        with contextlib.nullcontext() if forwarder is None else forwarder.purging():
            frames, size = await self.run_store(purge)
        if frames:
            self.release_waiters()  # waits for our own purged frames end
        where = "held here" if next_hop is None else f"queued for {next_hop.short}"
        hop = None if next_hop is None else next_hop.text
        fields = {"next_hop": hop, "frames": frames, "bytes": size}
        log.info("purged %d frames (%d bytes) %s", frames, size, where, extra=fields)
        return frames, size

    async def queues(self) -> list[dict[str, Any]]:
        now = self.clock()
        stats: list[mesh.QueueStatistics] = await self.run_store(self.store.queues)
        by_hop = {item.next_hop: item for item in stats}
        rows = []
        for hop in sorted(
            set(by_hop) | {link.node for link in self.router.links},
            key=lambda n: b"" if n is None else n.raw,
        ):
            item = by_hop.get(hop)
            link = self.router.links.get(hop) if hop is not None else None
            forwarder = self.forwarders.get(hop) if hop is not None else None
            retry = None
            if forwarder is not None and forwarder.retry_at > trio.current_time():
                retry = round(forwarder.retry_at - trio.current_time(), 1)
            rows.append(
                {
                    "next_hop": None if hop is None else hop.text,
                    "frames": item.frames if item else 0,
                    "bytes": item.bytes if item else 0,
                    "oldest_age": None if item is None else round((now - item.oldest) / 1000, 1),
                    "link": None if link is None else str(link.state),
                    "roles": [] if link is None else sorted(str(r) for r in link.roles),
                    "next_attempt_in": retry,
                    "last_error": None if link is None else link.last_error,
                    "announces_waiting": len(forwarder.control) if forwarder else 0,
                }
            )
        return rows
