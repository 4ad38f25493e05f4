"""The sans-IO core of the mesh: what to do with each frame, and when routes change.

:class:`Router` holds the neighbours (:class:`mesh.Links`) and the routing table
(:class:`mesh.RoutingTable`). The runtime feeds it events with the time (``now``, ms)
and performs the actions it hands back; it never touches a socket, a file or a clock.

Events and what comes back:

=====================================  ===============================================
``classify(admitted, sender, now)``    :class:`Deliver` (it is for us),
                                       :class:`Forward` (queue for ``next_hop``; None:
                                       hold until a route appears) or a rejection
                                       :class:`mesh.Result`
``on_announce(...)``                   its result, and actions: :class:`Reroute`
                                       frames whose best next hop changed,
                                       :class:`Flood` the announce to other neighbours,
                                       :class:`Greet` back a neighbour saying hello
``add_neighbour`` / ``remove_neighbour``  :class:`Greet` a new neighbour (our announce
                                       and the routes we hold), :class:`Reroute`
``sent_ok`` / ``send_failed`` /        link state changes: :class:`Reroute` around a
``heard_from``                         neighbour gone DOWN and back, :class:`Wake` its
                                       forwarder
``tick(now)``                          routes expired: :class:`Reroute`; a hello that
                                       came too soon is answered: :class:`Greet`; a
                                       fresher announce that came too soon after the
                                       last flood of its origin: :class:`Flood`
``on_offer(...)``                      with the tree on (``RouterConfig.tree``): a
                                       neighbour's ``crd`` frame; its result, and
                                       :class:`mesh.Offer` s to send, and
                                       :class:`mesh.CoordinatesChanged`
=====================================  ===============================================

The spanning tree (:class:`mesh.Tree`, docs/routing-at-scale.md) is built beside the
flooded routes when ``RouterConfig.tree`` is on: neighbours offer each other their
coordinates in ``crd`` frames (never passed on), from neighbour events and at ticks.
Frames for a node no route is known to go greedily by its coordinates (a neighbour
nearer it in the tree), learned with frames or looked up in the DHT (``held``). The
tree, the DHT and greedy routing share one :class:`mesh.VerifiedChains`: a chain one of
them verified is not parsed again by another while it is valid.

Forwarding policy (whose frames this node relays): ``neighbours`` (default: its peers,
its relays and the nodes attached to it), ``open`` (anyone), ``off`` (nobody; frames
for this node are still taken).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import crypto
from crypto import _cbor
from mesh._admission import Policy
from mesh._allowance import Allowances
from mesh._authority import Authority
from mesh._calls import CALL_CONTENT_TYPES
from mesh._chains import VerifiedChains
from mesh._dht import Contacts, Records
from mesh._errors import NoRoute, StoreFull
from mesh._intake import Admitted
from mesh._interests import (
    DEFAULT_MAX_INTERESTS,
    DEFAULT_MAX_PATTERNS_PER_ORIGIN,
    Interest,
    Interests,
    Learned,
    secure_owner,
)
from mesh._links import Links, LinkState, Role
from mesh._lookups import Dht, DhtSend, LookupDone
from mesh._routes import DEFAULT_MAX_DESTINATIONS, Route, RoutingTable
from mesh._tree import (
    DEFAULT_STALE_GRACE_MS,
    DEFAULT_TREE_INTERVAL_MS,
    DEFAULT_TREE_LIFETIME_MS,
    MAX_AROUND,
    CoordinatesChanged,
    Offer,
    Path,
    Tree,
    TreeAction,
)
from mesh._wire import (
    ACCEPTED,
    DUPLICATE,
    MAX_SUBSCRIBERS_PER_COPY,
    Reason,
    Result,
    WireFrame,
)

__all__ = [
    "GREETING_REVOCATIONS",
    "Action",
    "Deliver",
    "Fanout",
    "Flood",
    "ForwardPolicy",
    "Forward",
    "Greet",
    "Notify",
    "offer_body",
    "Reroute",
    "Router",
    "RouterConfig",
    "Wake",
]

#: How often a node announces itself, and how long a route lives without a fresh copy.
DEFAULT_ANNOUNCE_INTERVAL_MS: Final = 10 * 60 * 1000
DEFAULT_ROUTE_TTL_MS: Final = 3 * DEFAULT_ANNOUNCE_INTERVAL_MS
#: Revocations a new neighbour is greeted with (the newest): one that missed a flood
#: while it was away hears of what was revoked meanwhile.
GREETING_REVOCATIONS: Final = 256
#: Tree offers a neighbour may send in a burst, and how fast that allowance refills
#: (ms per offer): each offer costs a signature check per level of its chain, so a
#: neighbour sending them in a loop is refused past this, not verified. Honest nodes
#: send one per neighbour at most every flood interval (the rest wait for a tick).
OFFER_BURST: Final = 4
OFFER_REFILL_MS: Final = 1_000
#: DHT messages for this node (questions, stores, answers) each origin may send in a
#: burst, and how fast that refills; and the same for all origins together. A message
#: may carry chains to check (up to 33 signatures each): past these, it is refused
#: before anything is checked. An honest node sends well under one a second (a node's
#: hourly upkeep in a 10,000-node mesh is ~5,000 messages, most passed on by others).
DHT_BURST: Final = 32
DHT_REFILL_MS: Final = 250
DHT_TOTAL_BURST: Final = 256
DHT_TOTAL_REFILL_MS: Final = 10
#: Destinations whose coordinates a router keeps for greedy routing, at most (the
#: oldest learned go first); coordinates a neighbour sends with frames
#: (:attr:`WireFrame.coords`) it checks at most this fast (bursts, then ms per chain:
#: a chain costs a signature check per level); a destination held here with no way on
#: is looked up in the DHT again after this long if the lookup found nothing (twice
#: as long after each lookup that fails, up to :data:`LOOKUP_RETRY_MAX_MS`, and
#: :data:`LOOKUP_ATTEMPTS` lookups in all, about an hour: then only a new frame for it
#: starts them again); and at most this many such destinations wait for one. (A cap
#: of 5 minutes instead of 1 delivered slightly fewer within a 40-minute `mesh` run of
#: 100 nodes with churn and a partition: 99.12% against 99.27%.)
DEFAULT_MAX_COORDINATES: Final = 1024
#: Coordinates held for greedy routing that came with frames passing through and that
#: no frame used since (came with one again, routed one, or went on with one) for this
#: long are forgotten: a node on many paths holds the destinations of the frames
#: passing through lately, not of every frame since the chain was signed (its lifetime
#: is half an hour). A frame that waits here longer (its next hop down) goes on without
#: them, or they are looked up. Those we looked up ourselves are kept until they expire
#: (or the cache is full): a lookup costs queries across the mesh, and a sender writes
#: to its destinations less often than this.
DEFAULT_COORDINATES_IDLE_MS: Final = 120_000
HINT_BURST: Final = 64
HINT_REFILL_MS: Final = 20
LOOKUP_RETRY_MS: Final = 30_000
LOOKUP_RETRY_MAX_MS: Final = 60_000
LOOKUP_ATTEMPTS: Final = 60
MAX_WANTED: Final = 1024
#: Greedy routing is loop-free in a settled tree, but while the tree changes a node's
#: view of its neighbours' coordinates can be a few seconds old (offers are sent at
#: most once per flood interval), and views that disagree can pass a frame round a
#: loop until its hop limit drops it. So a router remembers the frames it passed on
#: greedily within this window (the last :data:`MAX_GREEDY_SENT` of them), and one that
#: comes back in it is held, its destination looked up, instead of going round again;
#: for :data:`LOOP_PLAIN_MS` after, frames for that destination go on from here only
#: to a neighbour nearer it by coordinates we verified (:meth:`Tree.next_hop`,
#: ``plain``), not by what neighbours said of theirs. The window spans the lookups'
#: retries (:data:`LOOKUP_RETRY_MS`): a frame held at a dead end goes back after one,
#: and comes round again that much later (seen in a 300-node mesh while a region was
#: cut off: frames went round four nodes, held and let go at each, until their 32 hops
#: were spent, with the neighbours' words naming places across the cut).
LOOP_WINDOW_MS: Final = 300_000
MAX_GREEDY_SENT: Final = 1024
LOOP_PLAIN_MS: Final = 300_000
#: A fresher announce of one origin is flooded at most this often: an origin that
#: signs announces in a loop cannot make the mesh carry them all. A neighbour's hello
#: is answered with our routes at most this often too.
DEFAULT_FLOOD_INTERVAL_MS: Final = 5_000


class ForwardPolicy(enum.StrEnum):
    NEIGHBOURS = "neighbours"
    OPEN = "open"
    OFF = "off"


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    announce_interval_ms: int = DEFAULT_ANNOUNCE_INTERVAL_MS
    route_ttl_ms: int = DEFAULT_ROUTE_TTL_MS
    flood_interval_ms: int = DEFAULT_FLOOD_INTERVAL_MS
    forward_policy: ForwardPolicy = ForwardPolicy.NEIGHBOURS
    max_destinations: int = DEFAULT_MAX_DESTINATIONS
    max_patterns_per_origin: int = DEFAULT_MAX_PATTERNS_PER_ORIGIN
    max_interests: int = DEFAULT_MAX_INTERESTS
    #: Build the spanning tree with the neighbours (``crd`` offers); needs the
    #: router's ``identity`` to sign grants. Off: this node refuses offers.
    tree: bool = False
    #: May this node be the tree's root and place any neighbour below it: a public
    #: node. False for a node behind NAT (a leaf under its relays).
    tree_root: bool = True
    tree_interval_ms: int = DEFAULT_TREE_INTERVAL_MS
    tree_lifetime_ms: int = DEFAULT_TREE_LIFETIME_MS
    #: With the tree: how many hops our announces go (None: as far as their hop limit
    #: lets them); farther nodes are reached greedily by their coordinates, found in
    #: the DHT. Routes held are those of the nodes this close, and we greet a new
    #: neighbour with those that reach it within this many hops.
    announce_radius: int | None = None
    max_coordinates: int = DEFAULT_MAX_COORDINATES
    coordinates_idle_ms: int = DEFAULT_COORDINATES_IDLE_MS


#: A destination's coordinates held for greedy routing: verified, the chain's wire
#: form, when a frame last used them (ms), whether we looked them up for frames of ours
#: (kept until they expire; the others are forgotten when idle).
_HeldCoordinates: TypeAlias = tuple[crypto.Coordinates, bytes, int, bool]


@dataclasses.dataclass(frozen=True, slots=True)
class _Wanted:
    """A destination held here with no way on: when to look it up next, how many
    lookups of it were started, and whether frames of ours are among those held."""

    retry_at: int
    attempts: int
    ours: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """The frame is for this node."""


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """Queue the frame for ``next_hop``; None holds it until a route appears."""

    next_hop: crypto.NodeId | None


@dataclasses.dataclass(frozen=True, slots=True)
class Reroute:
    """Frames queued for ``dst`` now go to ``next_hop`` (None: hold them); those that
    came from ``next_hop`` go to ``instead`` (None: hold them). ``instead`` is
    ``next_hop`` itself only when held frames whose one way on is back where they came
    from are sent back (:meth:`Router.tick`, at a held destination's retry time)."""

    dst: crypto.NodeId
    next_hop: crypto.NodeId | None
    instead: crypto.NodeId | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Fanout:
    """A ``pub`` frame: deliver it here if ``deliver`` (a local subscription matches),
    and queue a copy for each of ``next_hops`` (neighbours toward matching subscribers);
    ``to[i]`` lists the subscribers the copy for ``next_hops[i]`` is for (empty: the
    next hop works them out itself).

    The store takes it once per (origin, id): a publication seen before is a duplicate.
    """

    deliver: bool
    next_hops: tuple[crypto.NodeId, ...]
    to: tuple[tuple[crypto.NodeId, ...], ...] = ()
    #: Matching subscribers with no way on now but straight back: a copy for each is
    #: held here (addressed to it) until a route to it appears.
    held: tuple[crypto.NodeId, ...] = ()
    #: Subscribers lie beyond, but the frame has made all the hops its origin allows:
    #: it goes no further (counted, so a path too long for its hop limit shows).
    hop_limited: bool = False

    def subscribers_for(self, index: int) -> tuple[crypto.NodeId, ...]:
        return self.to[index] if index < len(self.to) else ()


@dataclasses.dataclass(frozen=True, slots=True)
class Flood:
    """Send ``wire`` (an announce) to each of ``to``: control traffic, not stored."""

    to: tuple[crypto.NodeId, ...]
    wire: WireFrame


@dataclasses.dataclass(frozen=True, slots=True)
class Greet:
    """Send ``node`` our announce and :meth:`Router.greeting` (the routes we hold).

    ``hello``: ``node`` is a new neighbour; our announce carries ``hello`` so that it
    greets us back. A greeting back (``hello`` False) does not ask for one.
    """

    node: crypto.NodeId
    hello: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Wake:
    """``node``'s forwarder should try now (it was heard from)."""

    node: crypto.NodeId


@dataclasses.dataclass(frozen=True, slots=True)
class Notify:
    """Tell ``origin`` that its frame ``ref`` was dropped here, and ``why`` (a drop
    receipt): a publication under another's secure name, or a neighbour's interest
    refused by a quota or lapsed (so that the subscriber states it again)."""

    origin: crypto.NodeId
    ref: bytes
    why: str


Action = Reroute | Flood | Greet | Wake | Notify | Offer | CoordinatesChanged | DhtSend | LookupDone

_DELIVER: Final = Deliver()
_TRANSIT: Final = frozenset({crypto.Kind.MSG, crypto.Kind.RCPT})
#: Kinds that are routed to their ``dst`` when they have one (an interest addressed to
#: the owner of its pattern's secure name), and flooded otherwise.
_INTERESTS: Final = frozenset({crypto.Kind.SUB, crypto.Kind.UNSUB})

_K = TypeVar("_K")
_V = TypeVar("_V")


class Router:
    """Routing decisions for the node ``local`` (see the module docstring)."""

    def __init__(
        self,
        local: crypto.NodeId,
        *,
        rng: random.Random,
        config: RouterConfig | None = None,
        links: Links | None = None,
        policy: Policy | None = None,
        authority: Authority | None = None,
        identity: crypto.Identity | None = None,
    ) -> None:
        self.local = local
        self.config = config or RouterConfig()
        self.links = links or Links(rng=rng)
        #: Whose frames we take and whose reach our application (mesh/_admission.py).
        self.policy = policy or Policy()
        #: The capabilities this node requires, and the revocations it knows.
        self.authority = authority or Authority(local)
        #: The newest revocation frames, for greeting a new neighbour.
        self.revocation_wires: collections.deque[WireFrame] = collections.deque(
            maxlen=GREETING_REVOCATIONS
        )
        self.table = RoutingTable(max_destinations=self.config.max_destinations)
        self.interests = Interests(
            max_per_origin=self.config.max_patterns_per_origin,
            max_total=self.config.max_interests,
        )
        #: Per origin: (ts, when) of the last announce flooded on.
        self._flooded: dict[crypto.NodeId, tuple[int, int]] = {}
        #: Per origin: a fresher announce taken within the flood interval and not
        #: flooded then, as (sender, ts, copy): flooded on once the interval is over
        #: (:meth:`release`). Dropped, it would reach only the nodes that did not flood
        #: the one before: those far from them would hold the freshest only by a long
        #: way round, and route along it (fresher beats shorter) until the next announce.
        self._flood_later: dict[crypto.NodeId, tuple[crypto.NodeId, int, WireFrame]] = {}
        #: Per neighbour: when we last greeted it back (answering its hello).
        self._greeted_back: dict[crypto.NodeId, int] = {}
        #: Neighbours whose hello came within the rate limit: greeted back once the
        #: interval is over (:meth:`release`).
        self._greet_later: set[crypto.NodeId] = set()
        #: Per origin: when we last sent it a drop notice (at most one per flood
        #: interval: a stranger cannot make us fill our queue with notices to it).
        self._notified: dict[crypto.NodeId, int] = {}
        #: The spanning tree (``config.tree``), and per neighbour the ``ts`` of the
        #: newest offer taken from it: an older one, overtaken on the way, is ignored.
        self.tree: Tree | None = None
        #: With the tree, the DHT where nodes publish and find coordinates.
        self.dht: Dht | None = None
        self._offer_ts: dict[crypto.NodeId, int] = {}
        #: Per neighbour: offers it may still send now, as of when (a token bucket).
        self._offer_allowance = Allowances(burst=OFFER_BURST, refill_ms=OFFER_REFILL_MS)
        #: Per origin, and for all together: DHT messages for us it may still send.
        self._dht_allowance = Allowances(burst=DHT_BURST, refill_ms=DHT_REFILL_MS)
        self._dht_total = Allowances(burst=DHT_TOTAL_BURST, refill_ms=DHT_TOTAL_REFILL_MS)
        #: Per neighbour: when we last sent it an offer, and the newest one held back
        #: since (sent a flood interval after the last: :meth:`release`).
        self._offer_sent: dict[crypto.NodeId, int] = {}
        self._offer_later: dict[crypto.NodeId, Offer] = {}
        #: No announce, greeting or offer held back goes before this (ms; None: none
        #: held): when to call :meth:`release`.
        self._release_due: int | None = None
        #: The coordinate chains this node verified (with the tree: shared by it, the
        #: DHT and greedy routing, so none is parsed twice while it is valid).
        self.chains = VerifiedChains()
        #: Greedy routing (with the tree): per destination, its verified coordinates
        #: (without their chain: :meth:`VerifiedChains.verify`'s), the chain's wire
        #: form, when a frame last used them, and whether we looked them up for frames
        #: of ours (least lately used first, at most ``config.max_coordinates``; the
        #: others, of frames passing through, idle for at most
        #: ``config.coordinates_idle_ms``);
        #: the neighbour the last frame for it went to greedily; the destinations held
        #: here with no way on, and when a lookup of them may start again; the lookups
        #: of such destinations running, by id.
        self._coordinates: dict[crypto.NodeId, _HeldCoordinates] = {}
        self._greedy_via: dict[crypto.NodeId, crypto.NodeId] = {}
        self._wanted: dict[crypto.NodeId, _Wanted] = {}
        self._finding: dict[int, crypto.NodeId] = {}
        self._hint_allowance = Allowances(burst=HINT_BURST, refill_ms=HINT_REFILL_MS)
        #: The frames passed on greedily lately, by id: when (oldest first).
        self._greedy_sent: dict[bytes, int] = {}
        #: The destinations a frame came back to us for: until when they go on from
        #: here by plain greedy routing (:data:`LOOP_PLAIN_MS`; at most :data:`MAX_WANTED`).
        self._looped: dict[crypto.NodeId, int] = {}
        #: Counters: frames passed on greedily; frames held for having come back to
        #: us greedily (a loop); lookups started for held destinations.
        self.greedy_forwarded = 0
        self.greedy_loops = 0
        self.route_lookups = 0
        if self.config.tree:
            if identity is None or identity.node_id != local:
                raise ValueError("a router that builds the tree needs this node's identity")
            self.tree = Tree(
                identity,
                eligible_root=self.config.tree_root,
                interval_ms=self.config.tree_interval_ms,
                lifetime_ms=self.config.tree_lifetime_ms,
                stale_grace_ms=min(DEFAULT_STALE_GRACE_MS, self.config.tree_interval_ms // 2),
                chains=self.chains,
            )
            self.dht = Dht(
                local,
                contacts=Contacts(local, rng=random.Random(rng.random())),
                records=Records(),
                rng=random.Random(rng.random()),
                chains=self.chains,
            )

    # -- neighbours -----------------------------------------------------------------

    def is_neighbour(self, node: crypto.NodeId) -> bool:
        return node in self.links

    def add_neighbour(self, node: crypto.NodeId, role: Role, now: int) -> list[Action]:
        """``node`` took ``role``; a new neighbour is greeted and frames for it rerouted."""
        if node == self.local:
            return []
        if not self.links.add(node, role):
            return self._tree_role_changed(node, now)
        return [
            Greet(node),
            *self._reroute({node}, now),
            *self._tree_role_changed(node, now),
            *self._unhold(now),
        ]

    def remove_neighbour(self, node: crypto.NodeId, role: Role, now: int) -> list[Action]:
        """``node`` lost ``role``; if it is no longer a neighbour, routes via it go."""
        if not self.links.remove(node, role):
            return self._tree_role_changed(node, now)
        self._greeted_back.pop(node, None)
        self._greet_later.discard(node)
        for held in (self._offer_ts, self._offer_sent, self._offer_later):
            held.pop(node, None)
        self._offer_allowance.forget(node)
        affected = self._via(node)
        self.table.forget_via(node)
        for dst in [d for d, hop in self._greedy_via.items() if hop == node]:
            del self._greedy_via[dst]
        actions: list[Action] = []
        if self.tree is not None:
            actions += self._paced(self.tree.remove_neighbour(node, now=now), now)
        return actions + self._reroute(affected, now)

    # -- the spanning tree ----------------------------------------------------------

    def tree_role(self, node: crypto.NodeId) -> Role | None:
        """What ``node`` is to the tree: our RELAY (a NATed node's parent), a PEER, or
        ATTACHED to us only (a leaf we may place below us); None: not a neighbour."""
        link = self.links.get(node)
        if link is None:
            return None
        for role in (Role.RELAY, Role.PEER, Role.ATTACHED):
            if role in link.roles:
                return role
        return None

    def _tree_role_changed(self, node: crypto.NodeId, now: int) -> list[Action]:
        role = self.tree_role(node)
        if self.tree is None or role is None:
            return []
        return self._paced(self.tree.add_neighbour(node, role, now=now), now)

    @property
    def offers_held(self) -> int:
        """Tree offers held back by pacing, to go at :attr:`release_due` (see :meth:`_paced`)."""
        return len(self._offer_later)

    def _paced(self, actions: Sequence[TreeAction], now: int) -> list[Action]:
        """Tree actions to perform now: an offer to a neighbour that had one within the
        flood interval is held back (the newest replaces an older one held) and sent
        once it is over (:meth:`release`), so a tree re-forming does not flood the links."""
        out: list[Action] = []
        if self.dht is not None and self.tree is not None:
            self.dht.set_coordinates(self.tree.chain, now)
        for action in actions:
            if not isinstance(action, Offer):
                out.append(action)
                continue
            node = action.neighbour
            last = self._offer_sent.get(node)
            if last is not None and now - last < self.config.flood_interval_ms:
                self._offer_later[node] = action
                self._hold_until(last + self.config.flood_interval_ms)
                continue
            self._offer_sent[node] = now
            self._offer_later.pop(node, None)
            out.append(action)
        return out

    def on_offer(
        self, admitted: Admitted, sender: crypto.NodeId, now: int
    ) -> tuple[Result, list[Action]]:
        """A ``crd`` frame ``sender`` handed us: its coordinates and perhaps a place
        below it for us. Only a neighbour's own offer, addressed to us, is taken."""
        frame = admitted.frame
        if self.tree is None:
            return Result.rejected(
                Reason.UNSUPPORTED, "this node does not build the spanning tree"
            ), []
        role = self.tree_role(sender)
        if frame.src != sender or frame.dst != self.local or role is None:
            return Result.rejected(
                Reason.POLICY,
                "a tree offer is taken only from the neighbour that made it, addressed to us",
            ), []
        last = self._offer_ts.get(sender)
        if last is not None and frame.ts <= last:
            return DUPLICATE, []  # overtaken by a newer offer from it: nothing to do
        if not self._offer_allowance.take(sender, now):
            return Result.rejected(
                Reason.POLICY,
                f"tree offers from {sender.short} come faster than one per "
                f"{OFFER_REFILL_MS} ms (bursts of {OFFER_BURST}): not checked",
            ), []
        try:
            chain, grant, around = _offer_body(frame.body)
            actions = self.tree.on_offer(sender, role, chain, grant, now=now, around=around)
        except crypto.CryptoError as exc:
            return Result.for_error(exc), []
        self._offer_ts[sender] = frame.ts
        paced = self._paced(actions, now)
        if self.dht is not None:
            paced += self.dht.introduce(chain, now)  # a contact to start lookups from
        if self._wanted:
            paced += self._unhold(now)  # a neighbour's new place may be a way on
        return ACCEPTED, paced

    # -- the DHT ----------------------------------------------------------------------

    def find_coordinates(self, key: crypto.NodeId, now: int) -> tuple[int, list[Action]]:
        """Start a lookup of ``key``'s coordinates in the DHT: its id, and the queries
        to send; it ends with :class:`mesh.LookupDone`. Raises :class:`NoRoute` (no
        tree, or no coordinates of ours yet) and :class:`mesh.StoreFull` (too many
        lookups running)."""
        if self.dht is None:
            raise NoRoute("this node does not build the tree: it has no DHT")
        lookup, actions = self.dht.find(key, value=True, now=now)
        return lookup, list(actions)

    def on_dht(
        self, admitted: Admitted, sender: crypto.NodeId, now: int
    ) -> tuple[Result, list[Action]]:
        """A ``dht`` frame ``sender`` handed us: for us, the DHT answers it; for another
        node, it goes on toward it (control traffic: never stored, dropped when no
        route is known, as a lookup gives up on a query that is not answered)."""
        frame = admitted.frame
        if self.dht is None:
            return Result.rejected(
                Reason.UNSUPPORTED, "this node does not take part in the DHT"
            ), []
        # Both required in dht frames (crypto.Frame checks).
        assert frame.dst is not None
        assert frame.body is not None
        if frame.dst == self.local:
            if not self._dht_allowance.take(frame.src, now):
                return Result.rejected(
                    Reason.POLICY,
                    f"DHT messages from {frame.src.short} come faster than one per "
                    f"{DHT_REFILL_MS} ms (bursts of {DHT_BURST}): not read",
                ), []
            if not self._dht_total.take(None, now):
                return Result.rejected(
                    Reason.POLICY,
                    f"this node reads at most one DHT message per {DHT_TOTAL_REFILL_MS} ms "
                    f"(bursts of {DHT_TOTAL_BURST}) from everyone together: try later",
                ), []
            try:
                return ACCEPTED, self._dht_actions(
                    self.dht.on_message(frame.src, frame.body, now), now
                )
            except crypto.CryptoError as exc:
                return Result.for_error(exc), []
        policy = self.config.forward_policy
        if policy is ForwardPolicy.OFF or (
            policy is ForwardPolicy.NEIGHBOURS and sender not in self.links
        ):
            return Result.rejected(
                Reason.POLICY, "this node does not pass on DHT messages for this sender"
            ), []
        if admitted.hops >= frame.hops:
            return Result.rejected(
                Reason.HOP_LIMIT,
                f"frame has made {admitted.hops} of the {frame.hops} hops its origin allows",
            ), []
        hop = self.next_hop(frame.dst, now, came_from=sender, coords=admitted.coords)
        if hop is None:
            return Result.rejected(Reason.NO_ROUTE, f"no route to {frame.dst.short} here"), []
        wire = WireFrame(
            admitted.hops,
            admitted.envelope,
            coords=admitted.coords,
            opened=None if admitted.unverified else admitted.frame,
        )
        return ACCEPTED, [Flood((hop,), wire)]

    # -- routing --------------------------------------------------------------------

    def next_hop(
        self,
        dst: crypto.NodeId,
        now: int,
        *,
        came_from: crypto.NodeId | None = None,
        coords: bytes | None = None,
    ) -> crypto.NodeId | None:
        """Where a frame for ``dst`` goes now; None: nowhere yet (hold it, and tell
        :meth:`held`).

        A usable direct neighbour first; then the best route through a usable neighbour;
        then, with the tree, the usable neighbour nearest ``dst``'s coordinates if
        nearer than we are (greedy: by those we hold, or ``coords``, a chain that came
        with the frame, checked first); then the direct neighbour even if DOWN; then
        any route. Never back to ``came_from``.
        """
        return self._route(dst, now, came_from, coords)[0]

    def _route(
        self,
        dst: crypto.NodeId,
        now: int,
        came_from: crypto.NodeId | None,
        coords: bytes | None,
    ) -> tuple[crypto.NodeId | None, bool]:
        """:meth:`next_hop`, and whether it was chosen greedily."""
        links = self.links
        direct = dst in links and dst != came_from
        if direct and links.usable(dst):
            return dst, False
        best = self.table.best(dst, now=now, usable=links.usable, avoid=came_from)
        if best is not None and links.usable(best.via):
            return best.via, False
        if self.tree is not None:
            hop = self._greedy(dst, now, came_from, coords)
            if hop is not None:
                return hop, True
        if direct:
            return dst, False
        return (best.via if best is not None else None), False

    # -- greedy routing ---------------------------------------------------------------

    @property
    def coordinates_held(self) -> int:
        """Destinations whose coordinates we hold for greedy routing."""
        return len(self._coordinates)

    def coordinates_of(self, dst: crypto.NodeId, now: int) -> bytes | None:
        """The chain of ``dst``'s coordinates we hold (unexpired), to send with frames
        for it (:attr:`WireFrame.coords`); None if none."""
        held = self._coordinates.get(dst)
        if held is None or held[0].exp <= now:
            return None
        self._used(dst, held, now)
        return held[1]

    def _used(
        self, dst: crypto.NodeId, held: _HeldCoordinates, now: int, *, ours: bool = False
    ) -> None:
        """A frame used ``dst``'s coordinates ``held`` (or we looked the same up for
        frames of ``ours``): they go last (least lately used first)."""
        ours = ours or held[3]
        if held[2] != now or ours != held[3]:
            del self._coordinates[dst]
            self._coordinates[dst] = (held[0], held[1], now, ours)

    def _forget_idle_coordinates(self, now: int) -> None:
        """Forget the coordinates that expired, and those not looked up for frames of
        ours that no frame used for ``config.coordinates_idle_ms``."""
        idle = now - self.config.coordinates_idle_ms
        forget = []
        for dst, held in self._coordinates.items():
            if held[2] > idle:
                break  # used since (and all after it)
            if not held[3] or held[0].exp <= now:
                forget.append(dst)
        for dst in forget:
            del self._coordinates[dst]
            self._greedy_via.pop(dst, None)

    def _greedy(
        self,
        dst: crypto.NodeId,
        now: int,
        came_from: crypto.NodeId | None,
        coords: bytes | None,
    ) -> crypto.NodeId | None:
        assert self.tree is not None
        if coords is not None:
            self._learn(dst, coords, now, checker=came_from)
        held = self._coordinates.get(dst)
        if held is None:
            return None
        if held[0].exp <= now:
            del self._coordinates[dst]
            return None
        self._used(dst, held, now)
        links = self.links
        neighbours = {
            node: place
            for node, place in self.tree.neighbour_coordinates(now).items()
            if links.usable(node)
        }
        looped = self._looped.get(dst)
        if looped is not None and looped <= now:
            del self._looped[dst]
            looped = None
        hop = self.tree.next_hop(held[0], neighbours, avoid=came_from, plain=looped is not None)
        if hop is not None:
            self._greedy_via[dst] = hop
        return hop

    def _learn(
        self,
        dst: crypto.NodeId,
        chain: bytes,
        now: int,
        *,
        checker: crypto.NodeId | None,
        ours: bool = False,
    ) -> bool:
        """Keep ``chain`` as ``dst``'s coordinates if it verifies, places ``dst`` and is
        no older than what we hold. A neighbour's (``checker``) are checked within its
        allowance (past it, ignored: the frame is held and its destination looked up);
        those from the DHT (None) always. Those looked up for frames of ``ours`` are
        kept until they expire."""
        held = self._coordinates.get(dst)
        if held is not None and held[1] == chain:
            self._used(dst, held, now, ours=ours)
            return True
        if checker is not None and not self._hint_allowance.take(checker, now):
            return False
        try:
            coordinates = self.chains.verify(chain, now)
        except crypto.CryptoError:
            return False
        if coordinates.node != dst or (held is not None and not self._better(coordinates, held[0])):
            return False
        self._coordinates.pop(dst, None)
        while len(self._coordinates) >= self.config.max_coordinates:
            oldest = next(iter(self._coordinates))
            del self._coordinates[oldest]
            self._greedy_via.pop(oldest, None)
        ours = ours or (held is not None and held[3])
        self._coordinates[dst] = (coordinates, self.chains.kept(chain), now, ours)
        return True

    def _learn_origin(self, admitted: Admitted, sender: crypto.NodeId | None, now: int) -> None:
        """Keep the coordinates of a message's origin that came with it (checked as a
        destination's are): its receipt, a reply, go back greedily without a lookup, and
        we pass them on with it."""
        if admitted.src_coords is not None and self.tree is not None and sender is not None:
            self._learn(admitted.frame.src, admitted.src_coords, now, checker=sender)

    def _better(self, new: crypto.Coordinates, held: crypto.Coordinates) -> bool:
        """Whether ``new`` coordinates of a node replace those ``held``: newer ones of
        the same tree; of another tree, those in ours (the only ones greedy routing can
        use: statements of different roots are not comparable by time), else newer."""
        if new.root != held.root:
            assert self.tree is not None  # coordinates are learned with the tree only
            ours = self.tree.coordinates
            if ours is not None and ours.root in (new.root, held.root):
                return new.root == ours.root
        return new.ts >= held.ts

    def held(self, dst: crypto.NodeId, now: int, *, ours: bool = False) -> list[Action]:
        """A frame for ``dst`` is held here with no way on (one of ``ours``, sent or
        published here, or one passing through): with the tree, look its coordinates
        up in the DHT (one lookup per destination at a time; again after
        :data:`LOOKUP_RETRY_MS` while it is still held; each ends at the first place
        found, but one after a place that led nowhere from here, which asks the k nodes
        nearest it: :meth:`mesh.Dht.find`).
        When found, frames for it are rerouted (:class:`Reroute`). Coordinates looked
        up for frames of ours are kept until they expire (this node is likely to send
        there again); the others as those that came with frames passing through."""
        if self.dht is None or dst == self.local:
            return []
        wanted = self._wanted.get(dst)
        ours = ours or (wanted is not None and wanted.ours)
        if dst in self._finding.values():
            # Being looked up: its end reroutes what is held then (wanted or not before).
            self._wanted[dst] = (
                _Wanted(now + LOOKUP_RETRY_MS, 1, ours)
                if wanted is None
                else dataclasses.replace(wanted, ours=ours)
            )
            return []
        if wanted is not None:
            del self._wanted[dst]  # (put back last, as the newest)
            if wanted.retry_at > now:
                self._wanted[dst] = dataclasses.replace(wanted, ours=ours)
                return []
        attempts = 1 if wanted is None else wanted.attempts + 1
        wait = min(LOOKUP_RETRY_MS * 2 ** min(attempts - 1, 16), LOOKUP_RETRY_MAX_MS)
        _put_newest(self._wanted, dst, _Wanted(now + wait, attempts, ours), MAX_WANTED)
        dead_end = dst in self._coordinates and self.next_hop(dst, now) is None
        if dead_end:
            # A dead end with these (it moved, or the tree is re-forming): ask anew.
            # (With a way on, the frames held are those that came from it.)
            del self._coordinates[dst]
        try:
            # A lookup takes the first place found in our tree (a few queries, not k
            # and more); after a place that led nowhere it asks the k nearest and takes
            # the newest (a holder may keep a former place).
            lookup, actions = self.dht.find(dst, value=True, now=now, first=not dead_end)
        except (NoRoute, StoreFull):
            return []  # no place of ours yet, or busy: tried again at a tick
        self.route_lookups += 1
        self._finding[lookup] = dst
        return self._dht_actions(actions, now)

    def _dht_actions(self, actions: Sequence[Action], now: int) -> list[Action]:
        """The DHT's actions, but the ends of our own lookups of held destinations:
        their coordinates are kept and frames for them rerouted."""
        out: list[Action] = []
        for action in actions:
            if not isinstance(action, LookupDone) or action.lookup_id not in self._finding:
                out.append(action)
                continue
            dst = self._finding.pop(action.lookup_id)
            wanted = self._wanted.get(dst)
            ours = wanted is not None and wanted.ours
            if action.value is not None and self._learn(
                dst, action.value, now, checker=None, ours=ours
            ):
                out += self._unhold(now, (dst,))
        return out

    def _unhold(
        self, now: int, only: Iterable[crypto.NodeId] | None = None, *, back: bool = False
    ) -> list[Action]:
        """Reroute the held destinations (or ``only`` those) that have a way on now.
        With ``back``, frames whose only way on is the neighbour they came from go back
        to it."""
        actions: list[Action] = []
        for dst in list(self._wanted if only is None else only):
            if dst not in self._wanted:
                continue
            reroute = self.reroute(dst, now)
            if reroute.next_hop is None:
                continue
            if reroute.instead is None and back:
                reroute = Reroute(dst, reroute.next_hop, reroute.next_hop)
            if reroute.instead is not None:
                del self._wanted[dst]  # else those from next_hop may stay: settled()
            actions.append(reroute)
        return actions

    def settled(self, dst: crypto.NodeId) -> None:
        """No frame for ``dst`` is held here any more (a :class:`Reroute` left none
        behind): stop looking it up."""
        self._wanted.pop(dst, None)

    def _retry_lookups(self, now: int) -> list[Action]:
        """Look up again the held destinations whose retry time has come (those with a
        way on now are rerouted instead; those looked up often enough, forgotten).

        A frame whose only way on is back where it came from goes back now: its sender
        steered by an older view of the destination's place than ours (greedily, by
        older coordinates, or by a route that has gone since), and never sends it
        straight back here; a frame held for that reason would otherwise wait until it
        expires (the way back is not taken at once, lest two views that disagree for a
        moment bounce frames between them).
        """
        due = [dst for dst, wanted in self._wanted.items() if wanted.retry_at <= now]
        actions = self._unhold(now, due, back=True)
        rerouted = {action.dst for action in actions if isinstance(action, Reroute)}
        for dst in due:
            wanted = self._wanted.get(dst)
            if wanted is None or dst in rerouted:
                continue  # rerouted (what stays held is looked up again: held())
            if wanted.attempts >= LOOKUP_ATTEMPTS:
                del self._wanted[dst]
            else:
                actions += self.held(dst, now)
        return actions

    def _via(self, node: crypto.NodeId) -> set[crypto.NodeId]:
        """Destinations whose frames go through neighbour ``node``: by routes, greedily,
        and ``node`` itself."""
        greedy = {dst for dst, hop in self._greedy_via.items() if hop == node}
        return self.table.destinations_via(node) | greedy | {node}

    def classify(
        self, admitted: Admitted, sender: crypto.NodeId | None, now: int
    ) -> Deliver | Forward | Fanout | Result:
        """Decide for a verified ``msg``, ``rcpt`` or ``pub`` frame that ``sender``
        handed us (None: our own), or a ``sub``/``unsub`` addressed to another node
        (one addressed to us is learned: :meth:`on_interest`)."""
        frame = admitted.frame
        if frame.kind is crypto.Kind.PUB:
            return self._publication(admitted, sender, now)
        if frame.kind not in _TRANSIT and (frame.kind not in _INTERESTS or frame.dst is None):
            return Result.rejected(
                Reason.UNSUPPORTED, f"this node does not take {frame.kind} frames yet"
            )
        assert frame.dst is not None  # msg and rcpt frames have one
        if frame.dst == self.local:
            assert frame.kind not in _INTERESTS, "an interest for us is learned: on_interest"
            if frame.kind is crypto.Kind.MSG:
                refusal = self.policy.inbox_refusal(frame.src)
                if refusal is not None:
                    return Result.rejected(Reason.BLOCKED, refusal)
                # Calls and their replies go to objects, which check their own
                # capabilities; the rest enters the inbox.
                if frame.ct not in CALL_CONTENT_TYPES:
                    refusal = self.authority.inbox_refusal(frame, now)
                    if refusal is not None:
                        return Result.rejected(Reason.FORBIDDEN, refusal)
            self._learn_origin(admitted, sender, now)
            return _DELIVER
        policy = self.config.forward_policy
        if policy is ForwardPolicy.OFF:
            return Result.rejected(Reason.POLICY, "this node does not forward frames for others")
        if policy is ForwardPolicy.NEIGHBOURS and sender is not None and sender not in self.links:
            return Result.rejected(
                Reason.POLICY,
                f"this node forwards only for its neighbours; {sender.short} is not one",
            )
        if admitted.hops >= frame.hops:
            return Result.rejected(
                Reason.HOP_LIMIT,
                f"frame has made {admitted.hops} of the {frame.hops} hops its origin allows",
            )
        if frame.kind is crypto.Kind.SUB:
            # A node that guards a pattern refuses interests reaching into it on their
            # way to their owner too, as it refuses them flooded (on_interest).
            denied = self.authority.subscription_refusal(frame, now)
            if denied is not None:
                return Result.rejected(Reason.FORBIDDEN, denied)
        self._learn_origin(admitted, sender, now)
        hop, greedy = self._route(frame.dst, now, sender, admitted.coords)
        if greedy and self._came_back(frame.id, now):
            # Passed on greedily from here a moment ago, it came round: views of the
            # tree disagree while it changes. Held, it waits for a lookup of its
            # destination instead of spending its hops in a loop.
            self.greedy_loops += 1
            _put_newest(self._looped, frame.dst, now + LOOP_PLAIN_MS, MAX_WANTED)
            return Forward(None)
        self.greedy_forwarded += greedy
        return Forward(hop)

    def _came_back(self, frame_id: bytes, now: int) -> bool:
        """Whether the frame ``frame_id`` (a publication's copy: its id and the
        subscriber's), about to go on greedily, went on greedily from here within
        :data:`LOOP_WINDOW_MS`; it is remembered as going now."""
        last = _put_newest(self._greedy_sent, frame_id, now, MAX_GREEDY_SENT)
        return last is not None and 0 <= now - last < LOOP_WINDOW_MS

    # -- publish/subscribe ----------------------------------------------------------

    def _publication(
        self, admitted: Admitted, sender: crypto.NodeId | None, now: int
    ) -> Fanout | Result:
        """A ``pub`` frame: delivered here if a local interest matches, and a copy for
        the next hop toward each other matching subscriber (never back to ``sender``)."""
        frame = admitted.frame
        assert frame.topic is not None  # pub frames have one
        refusal = self.authority.publication_refusal(frame, now)
        if refusal is not None:
            return Result.rejected(Reason.FORBIDDEN, refusal)
        subscribers = self.interests.subscribers(frame.topic, now=now)
        deliver = self.local in subscribers and self.policy.inbox_refusal(frame.src) is None
        subscribers.discard(self.local)
        if admitted.to:
            # The previous hop sent it here for these: the others it sent elsewhere, and
            # going toward them too would make copies meet at each subscriber. Its word
            # is taken for them even where this node has not heard of their interest (it
            # restarted with a table saved before they subscribed, or their sub frames
            # are still on the way): dropping them would end the copy's way here, and
            # each subscriber checks its own interests before delivering.
            # (A copy is held for one only where this node knows its interest: below.)
            unheard = set(admitted.to) - subscribers - {self.local}
            subscribers.intersection_update(admitted.to)
            subscribers |= unheard
        else:
            unheard = set()
        if not subscribers:
            return Fanout(deliver, ())
        if not self._may_forward(admitted, sender):
            return Fanout(deliver, (), hop_limited=admitted.hops >= frame.hops)
        by_hop: dict[crypto.NodeId, list[crypto.NodeId]] = {}
        held: list[crypto.NodeId] = []
        for node in sorted(subscribers, key=lambda n: n.raw):
            # Never straight back: the best way that does not go through the sender.
            # A copy for one subscriber may bring its coordinates.
            coords = admitted.coords if admitted.to == (node,) else None
            hop, greedy = self._route(node, now, sender, coords)
            if greedy and self._came_back(frame.id + node.raw, now):
                # Our copy for this subscriber, passed on greedily from here a moment
                # ago, came round (views of the tree disagree while it changes): held
                # here, as a message would be, not sent round until its hop limit.
                self.greedy_loops += 1
                _put_newest(self._looped, node, now + LOOP_PLAIN_MS, MAX_WANTED)
                hop = None
            if hop is not None:
                by_hop.setdefault(hop, []).append(node)
            elif (
                (admitted.to or sender is None)
                and node not in (sender, frame.src)
                and (node not in unheard or self.tree is not None)
            ):
                # The sender gave it to us for this subscriber (or it is our own), and
                # we have no way to it but back (routes still settling, e.g. its relay
                # restarted and it has not attached again; or its route lapsed while its
                # interest lives): hold a copy for it until a way appears, rather than
                # let its way end here (it would be lost). An unaddressed copy's sender
                # serves the subscribers behind it itself. With the tree, interests
                # under a secure name reach their owner only: the sender's word for
                # the subscribers is all a node on the way has.
                held.append(node)
        hops = sorted(by_hop, key=lambda n: n.raw)
        return Fanout(
            deliver,
            tuple(hops),
            # Past the most one copy can name, the next hop works them out itself.
            tuple(
                tuple(by_hop[h]) if len(by_hop[h]) <= MAX_SUBSCRIBERS_PER_COPY else () for h in hops
            ),
            tuple(held),
        )

    def _may_forward(self, admitted: Admitted, sender: crypto.NodeId | None) -> bool:
        if sender is None:
            return True  # our own
        policy = self.config.forward_policy
        if policy is ForwardPolicy.OFF:
            return False
        if policy is ForwardPolicy.NEIGHBOURS and sender not in self.links:
            return False
        return admitted.hops < admitted.frame.hops

    def refused(self, admitted: Admitted, result: Result, now: int) -> list[Action]:
        """A frame was refused here: a drop notice for its origin if the refusal is one
        it should hear of (a publication under another's secure name), rate-limited."""
        frame = admitted.frame
        if result.code is not Reason.FORBIDDEN or frame.src == self.local:
            return []
        return self._notify(frame.src, frame.id, f"{result.code}: {result.words}", now)

    def _notify(self, origin: crypto.NodeId, ref: bytes, why: str, now: int) -> list[Action]:
        last = self._notified.get(origin)
        if last is not None and now - last < self.config.flood_interval_ms:
            return []
        self._notified[origin] = now
        return [Notify(origin, ref, why)]

    def on_interest(
        self, admitted: Admitted, sender: crypto.NodeId, now: int
    ) -> tuple[Result, list[Action]]:
        """Take a ``sub`` or ``unsub`` frame from neighbour ``sender``: learn it, and
        flood it on to the other neighbours if it is news. One addressed to us (the
        owner of its pattern's secure name) came by the routes from any node: it is
        learned here and goes no further; one addressed to another node is routed
        (:meth:`classify`), not learned."""
        frame = admitted.frame
        addressed = frame.dst is not None
        assert frame.dst in (None, self.local), "routed on: classify()"
        if sender not in self.links and not addressed:
            return (
                Result.rejected(
                    Reason.POLICY,
                    f"interests are taken from neighbours only; {sender.short} is not one",
                ),
                [],
            )
        if frame.src == self.local:
            return DUPLICATE, []  # our own, come back around
        if frame.kind is crypto.Kind.SUB:
            denied = self.authority.subscription_refusal(frame, now)
            if denied is not None:
                # The subscriber hears why (a drop receipt for its sub frame); it does
                # not state the pattern again for that, unlike a lapsed lease.
                result = Result.rejected(Reason.FORBIDDEN, denied)
                return result, self._notify(frame.src, frame.id, f"{result.code}: {denied}", now)
        interest = Interest.of(frame, admitted.envelope, hops=admitted.hops)
        learned = self.interests.learn(interest, now=now)
        if learned is Learned.STALE:
            return DUPLICATE, []
        if addressed and learned is Learned.NEWS:
            # Our publications go to the subscriber without a lookup of its place.
            self._learn_origin(admitted, sender, now)
        if learned is Learned.FULL:
            refusal = Result.rejected(
                Reason.STORE_FULL,
                f"{frame.src.short} holds {self.config.max_patterns_per_origin} patterns "
                f"here or the node holds {self.config.max_interests} in all; withdraw "
                "some first",
            )
            # The subscriber hears of it if it is our neighbour (the relay it relies on);
            # of an addressed one, by the drop receipt of the node that handed it here.
            notice: list[Action] = []
            if frame.src == sender and not addressed:
                notice = self._notify(frame.src, frame.id, f"{refusal.code}: {refusal.words}", now)
            return refusal, notice
        if addressed or admitted.hops >= frame.hops:
            return ACCEPTED, []
        return ACCEPTED, self._flood_interest(interest, avoid=(sender, frame.src))

    def own_interest(self, frame: crypto.Frame, envelope: bytes, now: int) -> list[Action]:
        """Our own ``sub`` or ``unsub`` (signed by the runtime): learn it, and flood it
        unless it has an owner (:meth:`interest_owner`): one addressed to its owner the
        runtime sends there as it sends a message; one under our own name stays here."""
        interest = Interest.of(frame, envelope, hops=0)
        if self.interests.learn(interest, now=now) is not Learned.NEWS:
            return []
        if self.interest_owner(interest.pattern) is not None:
            return []
        return self._flood_interest(interest, avoid=())

    def interest_owner(self, pattern: str) -> crypto.NodeId | None:
        """With the tree, the node whose secure name ``~<id>`` is ``pattern``'s first
        word: it alone may publish what the pattern matches, so interests in it go to
        that node only, addressed to it (``dst``), instead of to every node. None: the
        pattern's interests are flooded (no tree, or no secure name: ``news.#``)."""
        if self.tree is None:
            return None
        return secure_owner(pattern)

    def _flood_interest(
        self, interest: Interest, *, avoid: tuple[crypto.NodeId, ...]
    ) -> list[Action]:
        # DOWN neighbours too: the forwarder keeps control frames until the link is back,
        # and a publication must not miss a subscriber because a link was out.
        to = tuple(link.node for link in self.links if link.node not in avoid)
        return [Flood(to, WireFrame(interest.hops, interest.envelope))] if to else []

    # -- revocations ----------------------------------------------------------------

    def on_revocation(
        self, admitted: Admitted, sender: crypto.NodeId, now: int
    ) -> tuple[Result, crypto.Revocation | None, list[Action]]:
        """Take a ``rev`` frame from ``sender``: a revocation not held before is
        returned (to keep) and flooded on to the other neighbours, within its hops.

        Anyone may hand one on (the revocation's own signature is its authority; a
        revocation by someone who may not revoke a capability revokes nothing), from
        any node that may hand us frames.
        """
        frame = admitted.frame
        assert frame.body is not None  # rev frames have one
        if sender not in self.links:
            words = f"revocations are taken from neighbours only; {sender.short} is not one"
            return Result.rejected(Reason.POLICY, words), None, []
        try:
            revocation = crypto.Revocation.open(frame.body)
        except crypto.CryptoError as exc:
            return Result.for_error(exc), None, []
        learned = self.authority.learn(revocation)
        if learned is Learned.STALE:
            return DUPLICATE, None, []
        if learned is Learned.FULL:
            words = (
                f"this node holds {len(self.authority.revoked)} revocations, or "
                f"{self.authority.max_per_signer} by {revocation.signer.short}: the limit"
            )
            return Result.rejected(Reason.STORE_FULL, words), None, []
        wire = WireFrame(admitted.hops, admitted.envelope)
        self.revocation_wires.append(wire)
        if admitted.hops >= frame.hops:
            return ACCEPTED, revocation, []
        to = tuple(link.node for link in self.links if link.node not in (sender, frame.src))
        return ACCEPTED, revocation, [Flood(to, wire)] if to else []

    def own_revocation(
        self, revocation: crypto.Revocation, envelope: bytes, *, flood: bool = True
    ) -> list[Action]:
        """A ``rev`` frame this node signed (``envelope``) for ``revocation``: learn it
        and flood it to every neighbour (``flood`` False: only keep it for greetings,
        as for the revocations loaded at start)."""
        self.authority.learn(revocation, own=True)
        wire = WireFrame(0, envelope)
        self.revocation_wires.append(wire)
        to = tuple(link.node for link in self.links)
        return [Flood(to, wire)] if flood and to else []

    # -- announces ------------------------------------------------------------------

    def on_announce(
        self, admitted: Admitted, sender: crypto.NodeId, now: int
    ) -> tuple[Result, crypto.SignedAddress | None, list[Action]]:
        """Take an ``ann`` frame from neighbour ``sender``.

        Returns its result (accepted if news, duplicate if not), the address record it
        carries (to keep), and the actions: greet ``sender`` back if it is the origin and
        says hello, reroute frames for its origin if the best next hop changed, flood it
        on if it is news.
        """
        frame = admitted.frame
        if sender not in self.links:
            return (
                Result.rejected(
                    Reason.POLICY,
                    f"announces are taken from neighbours only; {sender.short} is not one",
                ),
                None,
                [],
            )
        if frame.src == self.local:
            return DUPLICATE, None, []  # our own, come back around
        assert frame.body is not None  # ann frames have one
        try:
            address = crypto.SignedAddress.open(frame.body, now=now)
        except crypto.CryptoError as exc:
            return Result.for_error(exc), None, []
        if address.node != frame.src:
            return (
                Result.rejected(
                    Reason.MALFORMED,
                    f"announce from {frame.src.short} carries the address of {address.node.short}",
                ),
                None,
                [],
            )
        actions: list[Action] = []
        # Only once the announce checks out: a refused one neither gets an answer nor
        # uses up the interval.
        if frame.hello and frame.src == sender:
            # A neighbour that has just met us (it started, or peered with us) asks for
            # our routes: without them it could not route until the next announces.
            # At most once per flood interval; a hello within it (a node restarted at
            # once) is answered once the interval is over (release), not forgotten.
            if self.tree is not None:
                # It may know nothing of the tree now: our place, as for a new one.
                actions += self._paced(self.tree.offer(sender, now=now), now)
            last = self._greeted_back.get(sender)
            if last is None or now - last >= self.config.flood_interval_ms:
                self._greeted_back[sender] = now
                self._greet_later.discard(sender)
                actions.append(Greet(sender, hello=False))
            else:
                self._greet_later.add(sender)
                self._hold_until(last + self.config.flood_interval_ms)
        route = Route(
            dst=frame.src,
            via=sender,
            ts=frame.ts,
            hops=admitted.hops,
            learned=now,
            expires=min(now + self.config.route_ttl_ms, frame.exp),
            announce=admitted.envelope,
        )
        before = self.next_hop(frame.src, now)
        news = self.table.learn(route)
        after = self.next_hop(frame.src, now)
        if after != before:
            actions.append(self.reroute(frame.src, now))
        if news and admitted.hops < frame.hops:
            wire = WireFrame(admitted.hops, admitted.envelope)
            if self._may_flood(frame.src, frame.ts, now):
                self._flood_later.pop(frame.src, None)  # older, or this one
                actions += self._flood_announce(frame.src, sender, wire)
            else:
                # The freshest word (or its shortest copy) is flooded once the interval
                # is over: an origin signing in a loop still costs one flood per interval.
                self._flood_later[frame.src] = (sender, frame.ts, wire)
                self._hold_until(self._flooded[frame.src][1] + self.config.flood_interval_ms)
        return (ACCEPTED if news else DUPLICATE), address, actions

    def _flood_announce(
        self, origin: crypto.NodeId, sender: crypto.NodeId, wire: WireFrame
    ) -> list[Action]:
        to = tuple(
            link.node
            for link in self.links
            if link.node not in (sender, origin) and link.state is not LinkState.DOWN
        )
        return [Flood(to, wire)] if to else []

    def _may_flood(self, origin: crypto.NodeId, ts: int, now: int) -> bool:
        last = self._flooded.get(origin)
        if last is not None and ts != last[0] and now - last[1] < self.config.flood_interval_ms:
            return False
        if last is None or ts != last[0]:
            self._flooded[origin] = (ts, now)
        return True

    def greeting(self, node: crypto.NodeId, now: int) -> list[WireFrame]:
        """The announces of the best route to each destination, for new neighbour
        ``node`` (not those of ``node`` itself, nor routes learned through it)."""
        frames = []
        radius = self.config.announce_radius or crypto.MAX_HOPS + 1
        for dst in self.table:
            if dst == node:
                continue
            best = self.table.best(dst, now=now, usable=self.links.usable, avoid=node)
            if best is not None and best.announce and best.hops < radius:
                frames.append(WireFrame(best.hops, best.announce))
        # And the interests held (tombstones too: a neighbour back from a restart must
        # hear of an unsubscription it missed), but not those of ``node`` itself, nor
        # those that go to their owner only.
        for interest in self.interests.held(now=now):
            if interest.origin != node and self.interest_owner(interest.pattern) is None:
                frames.append(WireFrame(interest.hops, interest.envelope))
        # And the newest revocations: one revoked while ``node`` was away still counts.
        frames.extend(self.revocation_wires)
        return frames

    # -- link feedback and time -----------------------------------------------------

    def sent_ok(self, node: crypto.NodeId, now: int) -> list[Action]:
        """A batch to ``node`` was answered: the link is up."""
        if self.links.succeeded(node, now):
            return self._reroute(self._via(node), now) + self._unhold(now)
        return []

    def send_failed(
        self, node: crypto.NodeId, now: int, problem: str, *, retry_after_ms: int | None = None
    ) -> tuple[int, list[Action]]:
        """A batch to ``node`` failed; return (ms to wait, actions)."""
        wait, went_down = self.links.failed(node, now, problem, retry_after_ms=retry_after_ms)
        if not went_down:
            return wait, []
        return wait, self._reroute(self._via(node), now)

    def heard_from(self, node: crypto.NodeId, now: int) -> list[Action]:
        """``node`` sent us something: wake its forwarder if it was backing off."""
        link = self.links.get(node)
        was_down = link is not None and link.state is LinkState.DOWN
        if not self.links.heard_from(node, now):
            return []
        actions: list[Action] = [Wake(node)]
        if was_down:
            actions += self._reroute(self._via(node), now) + self._unhold(now)
        return actions

    def tick(self, now: int) -> list[Action]:
        """Expire lapsed routes and reroute what went through them; flood on the
        fresher announces that came too soon after the last flood of their origin; greet
        back the neighbours whose hello came too soon after the last greeting."""
        changed = self.table.expire(now)
        notices: list[Action] = []
        for interest in self.interests.expire(now):
            # A neighbour's interest lapsed (no refresh came): if it is still there, it
            # should state it again, or publications for it stop here.
            if interest.origin in self.links:
                frame = crypto.Frame.open(interest.envelope)
                notices += self._notify(
                    interest.origin,
                    frame.id,
                    f"lapsed: the lease of {interest.origin.short}'s interest in "
                    f"{interest.pattern!r} ended at {self.local.short} with no refresh",
                    now,
                )
        for origin in [
            o for o, t in self._notified.items() if now - t >= self.config.flood_interval_ms
        ]:
            del self._notified[origin]
        actions = self._release_floods(now)
        for origin in [o for o in self._flooded if o not in self.table]:
            del self._flooded[origin]
        actions += self._release_greetings(now)
        if self.tree is not None:
            actions += self._paced(self.tree.tick(now), now)
        if self.dht is not None:
            actions += self._dht_actions(self.dht.tick(now), now)
            actions += self._retry_lookups(now)
            self._dht_allowance.prune(now)
            self._hint_allowance.prune(now)
        if self._coordinates:
            self._forget_idle_coordinates(now)
        actions += self._release_offers(now)
        self._release_due = self._next_release()
        return actions + notices + self._reroute(changed, now)

    # -- what pacing held back ------------------------------------------------------

    @property
    def release_due(self) -> int | None:
        """When (ms) an announce, a greeting or a tree offer held back by pacing (one
        per neighbour or origin per flood interval) may go: call :meth:`release` then
        (:meth:`tick` releases them too). None: nothing is held."""
        return self._release_due

    def release(self, now: int) -> list[Action]:
        """Send what pacing held back and may go now: fresher announces to flood on,
        greetings back, tree offers (the newest to each neighbour)."""
        actions = self._release_floods(now)
        actions += self._release_greetings(now)
        actions += self._release_offers(now)
        self._release_due = self._next_release()
        return actions

    def _hold_until(self, due: int) -> None:
        if self._release_due is None or due < self._release_due:
            self._release_due = due

    def _next_release(self) -> int | None:
        interval = self.config.flood_interval_ms
        due = [
            self._flooded[origin][1] + interval if origin in self._flooded else 0
            for origin in self._flood_later
        ]
        due += [self._greeted_back.get(node, 0) + interval for node in self._greet_later]
        due += [self._offer_sent.get(node, 0) + interval for node in self._offer_later]
        return min(due, default=None)

    def _release_floods(self, now: int) -> list[Action]:
        actions: list[Action] = []
        for origin, (sender, ts, wire) in sorted(
            self._flood_later.items(), key=lambda item: item[0].raw
        ):
            last = self._flooded.get(origin)
            if last is not None and now - last[1] < self.config.flood_interval_ms:
                continue
            del self._flood_later[origin]
            if origin in self.table:  # not lapsed meanwhile
                self._flooded[origin] = (ts, now)
                actions += self._flood_announce(origin, sender, wire)
        return actions

    def _release_greetings(self, now: int) -> list[Action]:
        actions: list[Action] = []
        for node in sorted(self._greet_later, key=lambda n: n.raw):
            if now - self._greeted_back.get(node, 0) >= self.config.flood_interval_ms:
                self._greet_later.discard(node)
                self._greeted_back[node] = now
                actions.append(Greet(node, hello=False))
        return actions

    def _release_offers(self, now: int) -> list[Action]:
        actions: list[Action] = []
        if self.tree is not None:
            for node in sorted(self._offer_later, key=lambda n: n.raw):
                if now - self._offer_sent.get(node, 0) >= self.config.flood_interval_ms:
                    self._offer_sent[node] = now
                    actions.append(self._offer_later.pop(node))
        return actions

    def reroute(self, dst: crypto.NodeId, now: int) -> Reroute:
        """Where frames queued for ``dst`` go now: its best next hop, and for those
        that came from that hop, the best one that does not go straight back."""
        hop = self.next_hop(dst, now)
        instead = None if hop is None else self.next_hop(dst, now, came_from=hop)
        return Reroute(dst, hop, instead)

    def reroute_queued(
        self, node: crypto.NodeId, queued: Iterable[crypto.NodeId], now: int
    ) -> list[Action]:
        """Neighbour ``node`` went down or away, and frames for the ``queued``
        destinations still wait for it (the store knows them): where they go now.
        :meth:`send_failed` and :meth:`remove_neighbour` reroute the destinations we
        remember sending that way; this covers those we no longer do (their
        coordinates forgotten, idle or for room). Nothing while ``node`` is usable."""
        if self.links.usable(node):
            return []
        return self._reroute(set(queued), now)

    def _reroute(self, destinations: set[crypto.NodeId], now: int) -> list[Action]:
        reroutes = [self.reroute(dst, now) for dst in sorted(destinations, key=lambda n: n.raw)]
        for reroute in reroutes:
            if reroute.next_hop is not None and reroute.instead is not None:
                self._wanted.pop(reroute.dst, None)
        return list(reroutes)

    # -- views ----------------------------------------------------------------------

    def routes(self, now: int) -> list[Route]:
        """The route in use for each destination (direct neighbours first)."""
        chosen: dict[crypto.NodeId, Route] = {}
        for dst in self.table:
            hop = self.next_hop(dst, now)
            for route in self.table.candidates(dst):
                if route.via == hop and route.expires > now:
                    chosen[dst] = route
                    break
        for link in self.links:
            if link.node not in chosen and self.next_hop(link.node, now) == link.node:
                chosen[link.node] = Route(
                    dst=link.node, via=link.node, ts=0, hops=1, learned=0, expires=0
                )
        return sorted(chosen.values(), key=lambda r: (r.hops, r.dst.raw))


def _put_newest(table: dict[_K, _V], key: _K, value: _V, limit: int) -> _V | None:
    """Put ``key`` last in ``table`` (kept oldest first), forgetting the oldest entries
    to keep fewer than ``limit`` before it; return what ``key`` held before, if any."""
    old = table.pop(key, None)
    while len(table) >= limit:
        del table[next(iter(table))]
    table[key] = value
    return old


def offer_body(chain: bytes, grant: bytes | None, around: Sequence[Path] = ()) -> bytes:
    """The body of a ``crd`` frame: a CBOR array of our chain and, if we give one, the
    grant placing the neighbour below us; with ``around`` (our other neighbours' paths
    from the root), ``[chain, grant or null, [path, ...]]``, each path its node ids
    concatenated."""
    if around:
        paths = [b"".join(node.raw for node in path) for path in around]
        return _cbor.encode([chain, grant, paths])
    return _cbor.encode([chain] if grant is None else [chain, grant])


_NODE_ID_SIZE: Final = 32
_MAX_PATH_SIZE: Final = (crypto.MAX_TREE_DEPTH + 1) * _NODE_ID_SIZE


def _offer_body(body: bytes | None) -> tuple[bytes, bytes | None, tuple[Path, ...]]:
    """Read a ``crd`` frame's body; raise :class:`crypto.Malformed`."""
    if body is None:
        raise crypto.Malformed("a tree offer needs a body")
    items = _cbor.decode(body, what="tree offer")
    shape = "a tree offer's body is [chain], [chain, grant] or [chain, grant or null, paths]"
    if not isinstance(items, list) or not 1 <= len(items) <= 3 or not isinstance(items[0], bytes):
        raise crypto.Malformed(shape)
    grant = items[1] if len(items) >= 2 else None
    if len(items) >= 2 and not (isinstance(grant, bytes) or (grant is None and len(items) == 3)):
        raise crypto.Malformed(shape)
    around: tuple[Path, ...] = ()
    if len(items) == 3:
        paths = items[2]
        if not isinstance(paths, list) or not 0 < len(paths) <= MAX_AROUND:
            raise crypto.Malformed(f"a tree offer names 1..{MAX_AROUND} neighbours' paths")
        around = tuple(_path(raw) for raw in paths)
    return items[0], grant, around


def _path(raw: Any) -> Path:
    if (
        not isinstance(raw, bytes)
        or not raw
        or len(raw) % _NODE_ID_SIZE
        or len(raw) > _MAX_PATH_SIZE
    ):
        raise crypto.Malformed(
            f"a path in a tree offer is 1..{crypto.MAX_TREE_DEPTH + 1} node ids of "
            f"{_NODE_ID_SIZE} bytes, concatenated"
        )
    return tuple(
        crypto.NodeId(raw[i : i + _NODE_ID_SIZE]) for i in range(0, len(raw), _NODE_ID_SIZE)
    )
