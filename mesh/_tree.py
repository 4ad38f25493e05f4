"""The spanning tree, sans-IO: this node's parent, its signed coordinates, greedy next hops.

After docs/routing-at-scale.md ("Tree coordinates", "Greedy routing"); the coordinates
themselves are :class:`crypto.Coordinates`, proven by a chain of grants.

Messages, with no round trips: a node *offers* each neighbour its chain and a grant
placing that neighbour one level below it, every announce interval and whenever its
chain changes. A node that takes neighbour P as its parent has P's chain and P's grant
for it as its own chain. The root signs a fresh root statement (a newer ``ts``) every
interval, so chains refresh down the tree at the speed of messages. A tree whose root
has gone silent dies when its last statement expires (``lifetime_ms``), and the next
least id takes over; sooner if the links to it are removed, since chains are paths: once
every chain a node is offered to the old root passes through the node itself, it stops
counting on that root (as a path-vector protocol converges).

Offers from one neighbour must reach :meth:`Tree.on_offer` in the order it made them,
as one link delivers them: the latest replaces what was held of that neighbour.

The choice, remade after every event:

1. *candidates*: neighbours heard as PEER or RELAY (public: reachable, so fit to be a
   parent) whose chain and grant for us are unexpired and not stale (below). A grant
   from a neighbour whose path holds us is never usable (it would be a loop). A node
   that may not be root (NATed: ``eligible_root`` false) takes only its RELAYs when any
   of them is a candidate: nobody else can reach it;
2. *root*: the least root id among the candidates', and ours if ``eligible_root``;
3. *parent*: the candidate offering that root at the least depth, ties to the least
   id; none if the root is us (we sign our own statement).

Freshness: a chain whose ``ts`` is older than the freshest ``ts`` heard for its root is
stale once that fresher ``ts`` has been known for ``stale_grace_ms``. The parent gets
that long to pass a refresh on, so a refresh that arrives first by a longer path does
not make a node switch parents and back.

Grants: a public node grants every neighbour not on its path a place below it; a NATed
node only the nodes attached to it (none, usually): it is a leaf, since nobody else can
reach it. A node at :data:`crypto.MAX_TREE_DEPTH` grants nothing.

Events (all take ``now``, ms; none reads a clock) and the actions they return:

==========================================  ============================================
``add_neighbour(n, role, now=)``            :class:`Offer` to ``n``; what a new choice
                                            brings
``on_offer(n, role, chain, grant, now=)``   what a new choice brings: on a new chain,
                                            :class:`Offer` to every neighbour; on a new
                                            path, :class:`CoordinatesChanged`. Raises a
                                            :class:`crypto.CryptoError` for a bad offer
``remove_neighbour(n, now=)``               what a new choice brings
``tick(now)``                               expiry, the root's new statement, the
                                            periodic offers
==========================================  ============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Final

import crypto
from mesh._chains import VerifiedChains
from mesh._links import Role

__all__ = [
    "DEFAULT_STALE_GRACE_MS",
    "DEFAULT_TREE_INTERVAL_MS",
    "DEFAULT_TREE_LIFETIME_MS",
    "MAX_AROUND",
    "CoordinatesChanged",
    "Offer",
    "Tree",
    "TreeAction",
]

#: How often the root signs a new statement and a node re-offers its chain unasked:
#: the announce interval of today's flooding (6 rounds an hour, as benchmarks/routing.py
#: counts them).
DEFAULT_TREE_INTERVAL_MS: Final = 10 * 60 * 1000
#: How long a grant lives: three intervals, so one lost refresh loses nothing; also the
#: longest a tree outlives a root gone silent.
DEFAULT_TREE_LIFETIME_MS: Final = 3 * DEFAULT_TREE_INTERVAL_MS
#: How long a parent may lag behind a fresher root statement heard from another
#: neighbour before its chain counts as stale: a refresh crosses the tree in seconds.
DEFAULT_STALE_GRACE_MS: Final = 30_000


#: Most of its other neighbours' places a node tells a neighbour in an offer (for the
#: receiver's 2-hop lookahead, :meth:`Tree.next_hop`).
MAX_AROUND: Final = 32

Path = tuple[crypto.NodeId, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    """Send ``neighbour`` our ``chain`` (a :class:`crypto.CoordChain`'s wire form) and
    ``grant``, a place one level below us (None: we give it none); and ``around``, the
    paths from the root of our other neighbours (at most :data:`MAX_AROUND`)."""

    neighbour: crypto.NodeId
    chain: bytes = dataclasses.field(repr=False)
    grant: bytes | None = dataclasses.field(repr=False)
    around: tuple[Path, ...] = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class CoordinatesChanged:
    """Our place in the tree moved (None: we have none). A refresh of the same path
    with a newer ``ts`` is not a change: it is offered to the neighbours, not reported."""

    old: crypto.Coordinates | None
    new: crypto.Coordinates | None


TreeAction = Offer | CoordinatesChanged


@dataclasses.dataclass(slots=True)
class _Neighbour:
    role: Role
    #: Its coordinates, as it last offered them (verified), while unexpired.
    coordinates: crypto.Coordinates | None = None
    #: Ours, were we to take it as parent: its chain and its grant for us (verified).
    placement: crypto.Coordinates | None = None
    #: Its other neighbours' places, as it said in its last offer (paths only, not
    #: verified: nobody can prove a link), for :meth:`Tree.next_hop`'s lookahead.
    around: tuple[crypto.Coordinates, ...] = ()


class Tree:
    """This node's view of the spanning tree; see the module docstring.

    ``identity`` signs our root statements and the grants we give. ``eligible_root``:
    a public node (it may be the root, and a parent of any neighbour); false for a
    NATed node (a leaf under its relay). Times are ms. ``chains``: where the chains
    offered are remembered as verified (its router's, shared with the DHT; one of its
    own by default).

    Raises :class:`ValueError` unless 0 < ``stale_grace_ms`` < ``interval_ms`` <
    ``lifetime_ms`` <= :data:`crypto.MAX_GRANT_LIFETIME_MS`.
    """

    def __init__(
        self,
        identity: crypto.Identity,
        *,
        eligible_root: bool,
        interval_ms: int = DEFAULT_TREE_INTERVAL_MS,
        lifetime_ms: int = DEFAULT_TREE_LIFETIME_MS,
        stale_grace_ms: int = DEFAULT_STALE_GRACE_MS,
        chains: VerifiedChains | None = None,
    ) -> None:
        if not 0 < stale_grace_ms < interval_ms < lifetime_ms <= crypto.MAX_GRANT_LIFETIME_MS:
            raise ValueError(
                "a tree needs 0 < stale_grace_ms < interval_ms < lifetime_ms <= "
                f"{crypto.MAX_GRANT_LIFETIME_MS}; got {stale_grace_ms}, {interval_ms}, "
                f"{lifetime_ms}"
            )
        self.identity = identity
        self.node_id = identity.node_id
        self.eligible_root = eligible_root
        self.interval_ms = interval_ms
        self.lifetime_ms = lifetime_ms
        self.stale_grace_ms = stale_grace_ms
        self._neighbours: dict[crypto.NodeId, _Neighbour] = {}
        #: Per root, the freshest ``ts`` heard from it and when it was first heard.
        self._freshest: dict[crypto.NodeId, tuple[int, int]] = {}
        self._coordinates: crypto.Coordinates | None = None
        self._chain = b""  # the wire form of our coordinates' chain
        self._parent: crypto.NodeId | None = None
        self._offered_at: int | None = None  # when we last offered to every neighbour
        #: Where the chains offered are remembered as verified (the node's router's).
        self._chains = chains if chains is not None else VerifiedChains()

    # -- what it knows ---------------------------------------------------------------------

    @property
    def coordinates(self) -> crypto.Coordinates | None:
        """Our verified coordinates (with their chain), or None before we have any."""
        return self._coordinates

    @property
    def chain(self) -> bytes | None:
        """Our coordinates' chain in its wire form (what we offer), or None."""
        return self._chain or None

    @property
    def parent(self) -> crypto.NodeId | None:
        """The neighbour above us; None if we are the root or have no place."""
        return self._parent

    def neighbour_coordinates(self, now: int) -> dict[crypto.NodeId, crypto.Coordinates]:
        """Each neighbour's coordinates as it last offered them, if unexpired at ``now``."""
        return {
            node: neighbour.coordinates
            for node, neighbour in self._neighbours.items()
            if neighbour.coordinates is not None and neighbour.coordinates.exp > now
        }

    def wake_at(self, now: int) -> int | None:
        """After :meth:`tick` at ``now``, the next time it has work (an expiry, a chain
        turning stale, the next statement or offers); None if there is none."""
        times: list[int] = []
        if self._coordinates is not None:
            times.append(self._coordinates.exp)
            if self._offered_at is not None:
                times.append(self._offered_at + self.interval_ms)
            if self._parent is None:  # the root: its next statement
                times.append(self._coordinates.ts + self.interval_ms)
        for neighbour in self._neighbours.values():
            for coordinates in (neighbour.coordinates, neighbour.placement):
                if coordinates is None:
                    continue
                times.append(coordinates.exp)
                freshest = self._freshest.get(coordinates.root)
                if freshest is not None and coordinates.ts < freshest[0]:
                    times.append(freshest[1] + self.stale_grace_ms)
        later = [time for time in times if time > now]
        return min(later) if later else None

    # -- events ----------------------------------------------------------------------------

    def add_neighbour(self, neighbour: crypto.NodeId, role: Role, *, now: int) -> list[TreeAction]:
        """``neighbour`` is linked to us as ``role`` (or now has that role): offer it
        our chain. Raises :class:`ValueError` for ourselves (a caller's bug)."""
        if neighbour == self.node_id:
            raise ValueError("a node is not its own neighbour")
        entry = self._neighbours.get(neighbour)
        news = entry is None or entry.role is not role
        if entry is None:
            self._neighbours[neighbour] = _Neighbour(role)
        else:
            entry.role = role
        actions = self._choose(now)
        if news:
            actions.extend(self._offer_unless_done(neighbour, actions, now))
        return actions

    def on_offer(
        self,
        neighbour: crypto.NodeId,
        role: Role,
        chain: bytes,
        grant: bytes | None,
        *,
        now: int,
        around: tuple[Path, ...] = (),
    ) -> list[TreeAction]:
        """``neighbour`` (linked to us as ``role``) offers its ``chain`` and a ``grant``
        placing us below it (None: it gives none), and says where its other neighbours
        are (``around``: their paths from the root).

        Raises, the neighbour's fault, leaving what we held of it as it was: what
        :meth:`crypto.CoordChain.parse` and :meth:`crypto.Coordinates.below` raise for
        a bad chain or grant (:class:`crypto.Malformed`, :class:`crypto.TooLarge`,
        :class:`crypto.BadSignature`, :class:`crypto.WrongPurpose`,
        :class:`crypto.Expired`); :class:`crypto.Malformed` for a chain that places
        another node than ``neighbour`` or a grant that places another node than us,
        and what :class:`crypto.Coordinates` raises for a path in ``around`` that is no
        path (a node named twice, too deep).
        """
        if neighbour == self.node_id:
            raise crypto.Malformed("an offer that claims to come from this node itself")
        # Parsed whole (they must carry their chain), remembered for the DHT.
        coordinates = self._chains.parse(chain, now)
        if coordinates.node != neighbour:
            raise crypto.Malformed(
                f"offer from {neighbour.short} carries the coordinates of {coordinates.node.short}"
            )
        placement = None
        if grant is not None and self.node_id not in coordinates.path:
            placement = coordinates.below(grant, now=now)
            if placement.node != self.node_id:
                raise crypto.Malformed(
                    f"offer from {neighbour.short} grants a place to {placement.node.short}, "
                    "not to us"
                )
        # A path's own checks (not empty, not too deep, no node twice); no proof.
        places = tuple(crypto.Coordinates(path, coordinates.ts, coordinates.exp) for path in around)
        entry = self._neighbours.get(neighbour)
        news = entry is None or entry.role is not role
        self._neighbours[neighbour] = _Neighbour(role, coordinates, placement, places)
        self._heard(coordinates, now)
        actions = self._choose(now)
        ours = self._coordinates
        if news or (ours is not None and ours.root != coordinates.root):
            # A neighbour we had not offered to yet; or one in another tree than ours
            # after our choice (it restarted, or was cut off, and roots a tree of its
            # own): our offer now, not at our next interval, lets it join ours.
            actions.extend(self._offer_unless_done(neighbour, actions, now))
        return actions

    def offer(self, neighbour: crypto.NodeId, *, now: int) -> list[TreeAction]:
        """Our chain, and a grant if we may place it, for ``neighbour`` now (it met us
        anew: it restarted, or came back); nothing if we have no place yet or it is
        not our neighbour."""
        if neighbour not in self._neighbours:
            return []
        return list(self._offers((neighbour,), now))

    def remove_neighbour(self, neighbour: crypto.NodeId, *, now: int) -> list[TreeAction]:
        """``neighbour`` is no longer linked to us: forget what it offered."""
        if self._neighbours.pop(neighbour, None) is None:
            return []
        return self._choose(now)

    def tick(self, now: int) -> list[TreeAction]:
        """Drop what expired, choose again (the root signs its next statement when one
        is due), and offer every neighbour our chain if we have not for an interval."""
        for neighbour in self._neighbours.values():
            if neighbour.coordinates is not None and neighbour.coordinates.exp <= now:
                neighbour.coordinates = None
            if neighbour.placement is not None and neighbour.placement.exp <= now:
                neighbour.placement = None
        held = {n.coordinates.root for n in self._neighbours.values() if n.coordinates}
        if self._coordinates is not None:
            held.add(self._coordinates.root)
        for root in set(self._freshest) - held:
            del self._freshest[root]
        actions = self._choose(now)
        offered = any(isinstance(action, Offer) for action in actions)
        due = self._offered_at is None or now >= self._offered_at + self.interval_ms
        if not offered and due:
            actions.extend(self._offer_all(now))
        return actions

    # -- greedy routing --------------------------------------------------------------------

    def next_hop(
        self,
        dest: crypto.Coordinates,
        neighbours: Mapping[crypto.NodeId, crypto.Coordinates],
        *,
        avoid: crypto.NodeId | None = None,
        plain: bool = False,
    ) -> crypto.NodeId | None:
        """The neighbour to pass a frame for ``dest`` to, of ``neighbours`` (those we may
        send to now, with their coordinates) but ``avoid``; None when there is none:
        ``dest`` is us, or it cannot be reached from here now (hold).

        Each neighbour's way on is seen two hops ahead: its own distance from ``dest``
        in the tree, or one more than that of the nearest of its neighbours (their
        paths, as it told us in its last offer). The shortest wins, then the nearer
        neighbour, ties to the least id. A neighbour nearer ``dest`` than we are may
        always be taken; one that is not, only if its way on is shorter than any we
        see through the nearer ones (so with the neighbours' word true, that bound
        drops at every hop: a frame never visits a node twice, and makes at most as
        many hops as the tree distance). With no neighbour's word, this is plain
        greedy routing: the nearest strictly nearer neighbour, and a tree link always
        is one, so in a settled tree a frame always arrives.

        What a neighbour says of its neighbours is not verified (nobody can prove a
        link): a neighbour that lies draws frames it is then trusted to carry on, as
        every neighbour a frame is handed to is. Stale words (a neighbour's neighbour
        moved since its offer) can send a frame round; the router holds one that comes
        back within its loop window, and with ``plain`` (for a destination a frame came
        back for) takes only the nearest strictly nearer neighbour: plain greedy routing.
        """
        if dest.node == self.node_id:
            return None
        here = (
            crypto.DIFFERENT_TREES
            if self._coordinates is None
            else self._coordinates.distance(dest)
        )
        left = dest.hops_below(self.node_id)
        if left and left < here:
            # dest's place was taken before we moved, under the same root statement (a
            # parent changed), so its path runs through us by a way we no longer have
            # (fewer hops left on it than our own place says). Below us it is still the
            # subtree we granted: down it, where greedy steps by our new place would
            # lead back up to where we were, and the frame back to us.
            below = dest.path[-left]
            if below != avoid and below in neighbours:
                return below
        seen: list[tuple[int, int, crypto.NodeId]] = []
        bound = here  # our own way on, two hops ahead by our neighbours' verified places
        for node, coordinates in neighbours.items():
            if node == avoid or node == self.node_id:
                continue
            distance = coordinates.distance(dest)
            bound = min(bound, distance + 1)
            ahead = distance
            entry = None if plain else self._neighbours.get(node)
            if entry is not None:
                for place in entry.around:  # (another tree's: DIFFERENT_TREES away)
                    ahead = min(ahead, 1 + place.distance(dest))
            seen.append((ahead, distance, node))
        best = min(
            (key for key in seen if key[1] < here or key[0] < bound),
            default=None,
        )
        return None if best is None else best[2]

    # -- the choice ------------------------------------------------------------------------

    def _heard(self, coordinates: crypto.Coordinates, now: int) -> None:
        freshest = self._freshest.get(coordinates.root)
        if freshest is None or coordinates.ts > freshest[0]:
            self._freshest[coordinates.root] = (coordinates.ts, now)

    def _stale(self, coordinates: crypto.Coordinates, now: int) -> bool:
        freshest = self._freshest.get(coordinates.root)
        return (
            freshest is not None
            and coordinates.ts < freshest[0]
            and now >= freshest[1] + self.stale_grace_ms
        )

    def _select(self, now: int) -> tuple[crypto.Coordinates | None, crypto.NodeId | None]:
        """Our coordinates and parent as the rules say now (the module docstring)."""
        candidates = {
            node: neighbour
            for node, neighbour in self._neighbours.items()
            if neighbour.role is not Role.ATTACHED
            and neighbour.placement is not None
            and neighbour.placement.exp > now
            and not self._stale(neighbour.placement, now)
        }
        if not self.eligible_root:
            relays = {n: c for n, c in candidates.items() if c.role is Role.RELAY}
            candidates = relays or candidates
        offers = {node: c.placement for node, c in candidates.items() if c.placement is not None}
        roots = {placement.root for placement in offers.values()}
        if self.eligible_root:
            roots.add(self.node_id)
        if not roots:
            return None, None
        root = min(roots)
        if root == self.node_id:
            return self._as_root(now), None
        _, parent = min(
            (placement.depth, node) for node, placement in offers.items() if placement.root == root
        )
        return offers[parent], parent

    def _as_root(self, now: int) -> crypto.Coordinates:
        """Our statement as root: the one we hold until the next is due."""
        held = self._coordinates
        if (
            held is not None
            and held.depth == 0
            and held.exp > now
            and held.ts <= now < held.ts + self.interval_ms
        ):
            return held
        statement = crypto.root_statement(self.identity, now=now, lifetime_ms=self.lifetime_ms)
        coordinates = crypto.CoordChain((statement,)).verify(now=now)
        self._heard(coordinates, now)
        return coordinates

    def _choose(self, now: int) -> list[TreeAction]:
        """Choose again; on a new chain, offer it to every neighbour."""
        new, self._parent = self._select(now)
        old = self._coordinates
        if new is old:
            return []
        self._coordinates = new
        actions: list[TreeAction] = []
        if (None if old is None else old.path) != (None if new is None else new.path):
            actions.append(CoordinatesChanged(old, new))
        if new is None:
            self._chain = b""
            return actions
        assert new.chain is not None  # verified coordinates carry their chain
        self._chain = new.chain.encode()
        if old is not None and old.path == new.path and old.ts == new.ts:
            # Our parent granted the same place again (its periodic offer): nothing
            # below us changes, and our own periodic offer carries the new chain
            # within an interval, well inside its lifetime. Offering it now would
            # make every node of our subtree offer again, down to the leaves.
            return actions
        actions.extend(self._offer_all(now))
        return actions

    def _offer_unless_done(
        self, neighbour: crypto.NodeId, actions: list[TreeAction], now: int
    ) -> list[Offer]:
        if any(isinstance(a, Offer) and a.neighbour == neighbour for a in actions):
            return []
        return self._offers((neighbour,), now)

    def _offer_all(self, now: int) -> list[Offer]:
        if self._coordinates is None:
            return []
        self._offered_at = now
        return self._offers(self._neighbours, now)

    def _offers(self, neighbours: Iterable[crypto.NodeId], now: int) -> list[Offer]:
        """Our chain, with a grant for each neighbour we may place below us, and the
        places of our other neighbours."""
        coordinates = self._coordinates
        if coordinates is None:
            return []
        places = [
            (node, placed.path)
            for node, placed in self.neighbour_coordinates(now).items()
            if placed.root == coordinates.root
        ]
        offers = []
        for node in neighbours:
            around = tuple(path for other, path in places if other != node)[:MAX_AROUND]
            grant = None
            role = self._neighbours[node].role
            if (
                (self.eligible_root or role is Role.ATTACHED)
                and node not in coordinates.path
                and coordinates.depth < crypto.MAX_TREE_DEPTH
            ):
                grant = crypto.grant_coordinates(
                    self.identity, node, coordinates, now=now, lifetime_ms=self.lifetime_ms
                )
            offers.append(Offer(node, self._chain, grant, around))
        return offers
