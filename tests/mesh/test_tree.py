"""The spanning tree (mesh._tree): meshes of Tree objects passing offers in a loop.

No network: a test holds every node's :class:`mesh.Tree` and delivers each
:class:`mesh.Offer` to its neighbour's ``on_offer``, in order, at virtual times. Checked:
convergence to one root (the least public id), parents one hop nearer (the least id of
those), NATed nodes under their relay, re-election once a departed root's chains
expire, greedy routing that reaches every destination without revisiting a node, and
refusals of forged offers.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import crypto
from crypto import CoordChain, Coordinates, Identity, NodeId
from mesh import CoordinatesChanged, Offer, Role, Tree, TreeAction
from mesh._tree import _Neighbour

NOW = 1_700_000_000_000
INTERVAL = 60_000
LIFETIME = 3 * INTERVAL
GRACE = 5_000
IDENTITIES = sorted(
    (Identity(hashlib.sha256(b"tree %d" % i).digest()) for i in range(48)),
    key=lambda identity: identity.node_id,
)  # IDENTITIES[0] has the least id


def make_tree(identity: Identity, *, eligible_root: bool = True) -> Tree:
    return Tree(
        identity,
        eligible_root=eligible_root,
        interval_ms=INTERVAL,
        lifetime_ms=LIFETIME,
        stale_grace_ms=GRACE,
    )


@dataclasses.dataclass
class Mesh:
    """Trees and their links; ``roles[a][b]`` is ``b``'s role as ``a`` sees it."""

    trees: dict[NodeId, Tree] = dataclasses.field(default_factory=dict)
    roles: dict[NodeId, dict[NodeId, Role]] = dataclasses.field(default_factory=dict)
    relay_of: dict[NodeId, NodeId] = dataclasses.field(default_factory=dict)
    now: int = NOW
    pending: collections.deque[tuple[NodeId, Offer]] = dataclasses.field(
        default_factory=collections.deque
    )
    changes: list[tuple[NodeId, CoordinatesChanged]] = dataclasses.field(default_factory=list)
    delivered: int = 0
    #: If set, delivers pending offers in a random order, but each link's in the order
    #: they were sent, as a link does (if not, first come, first served).
    shuffle: random.Random | None = None

    def add(self, identity: Identity, *, public: bool = True) -> NodeId:
        self.trees[identity.node_id] = make_tree(identity, eligible_root=public)
        self.roles[identity.node_id] = {}
        return identity.node_id

    def link(
        self, a: NodeId, b: NodeId, a_sees: Role = Role.PEER, b_sees: Role = Role.PEER
    ) -> None:
        self.roles[a][b] = a_sees
        self.roles[b][a] = b_sees
        self.take(a, self.trees[a].add_neighbour(b, a_sees, now=self.now))
        self.take(b, self.trees[b].add_neighbour(a, b_sees, now=self.now))

    def attach(self, nat: NodeId, relay: NodeId) -> None:
        self.relay_of[nat] = relay
        self.link(nat, relay, Role.RELAY, Role.ATTACHED)

    def take(self, sender: NodeId, actions: list[TreeAction]) -> None:
        for action in actions:
            if isinstance(action, Offer):
                self.pending.append((sender, action))
            else:
                self.changes.append((sender, action))

    def settle(self, max_deliveries: int = 200_000) -> None:
        while self.pending:
            if self.shuffle is None:
                sender, offer = self.pending.popleft()
            else:
                sender, offer = self.pending[self.shuffle.randrange(len(self.pending))]
                first = next(
                    (s, o) for s, o in self.pending if (s, o.neighbour) == (sender, offer.neighbour)
                )
                self.pending.remove(first)
                sender, offer = first
            target = offer.neighbour
            if target not in self.trees or sender not in self.roles[target]:
                continue  # the link is gone: the offer is lost
            actions = self.trees[target].on_offer(
                sender,
                self.roles[target][sender],
                offer.chain,
                offer.grant,
                now=self.now,
                around=offer.around,
            )
            self.take(target, actions)
            self.delivered += 1
            assert self.delivered < max_deliveries, "offers never stop"

    def tick(self, now: int) -> None:
        self.now = now
        for node, tree in self.trees.items():
            self.take(node, tree.tick(now))
        self.settle()

    def run_until(self, end: int) -> None:
        """Tick every node at every time one of them asked for (wake_at), until ``end``."""
        while True:
            wakes = [w for t in self.trees.values() if (w := t.wake_at(self.now)) is not None]
            if not wakes or min(wakes) > end:
                break
            self.tick(min(wakes))
        self.tick(end)

    def remove(self, gone: NodeId) -> None:
        for other in self.roles.pop(gone):
            del self.roles[other][gone]
            self.take(other, self.trees[other].remove_neighbour(gone, now=self.now))
        del self.trees[gone]
        self.relay_of = {n: r for n, r in self.relay_of.items() if n != gone}
        self.settle()

    def coordinates(self, node: NodeId) -> Coordinates:
        coordinates = self.trees[node].coordinates
        assert coordinates is not None, f"{node.short} has no coordinates"
        return coordinates

    def ahead(self, node: NodeId, target: Coordinates) -> int:
        """``node``'s way to ``target`` seen two hops ahead, by the real links."""
        return min(
            self.coordinates(node).distance(target),
            *(
                1 + self.coordinates(n).distance(target)
                for n in self.roles[node]
                if n in self.trees  # (not one gone silent)
            ),
        )

    def route(self, source: NodeId, dest: NodeId) -> list[NodeId]:
        """The nodes a frame for ``dest`` visits from ``source``, routed greedily. With
        every neighbour's word on its neighbours current, the way on seen two hops
        ahead shortens at every hop."""
        target = self.coordinates(dest)
        here, visited = source, [source]
        while here != dest:
            tree = self.trees[here]
            known = tree.neighbour_coordinates(self.now)
            assert set(known) <= set(self.roles[here])
            after = tree.next_hop(target, known, avoid=visited[-2] if len(visited) > 1 else None)
            assert after is not None, f"stuck at {here.short} on the way to {dest.short}"
            assert after not in visited, "a frame came back to a node it had visited"
            assert self.ahead(after, target) < self.ahead(here, target)
            visited.append(after)
            here = after
        assert (
            self.trees[dest].next_hop(target, self.trees[dest].neighbour_coordinates(self.now))
            is None
        )
        return visited

    def check_settled(self) -> None:
        """One root (the least public id), public parents one hop nearer (the least id
        of those), NATed nodes below their relay, every path its parent's and itself."""
        public = {n for n, tree in self.trees.items() if tree.eligible_root}
        root = min(public)
        hops = {root: 0}
        frontier = [root]
        while frontier:
            following = []
            for u in frontier:
                for v in self.roles[u]:
                    if v in public and v not in hops:
                        hops[v] = hops[u] + 1
                        following.append(v)
            frontier = following
        assert set(hops) == public, "the public graph is connected"
        for node, tree in self.trees.items():
            coordinates = self.coordinates(node)
            assert coordinates.root == root
            assert coordinates.node == node
            if node == root:
                assert tree.parent is None
                assert coordinates.depth == 0
                continue
            parent = tree.parent
            assert parent is not None
            if node in public:
                nearer = [v for v in self.roles[node] if hops.get(v) == hops[node] - 1]
                assert parent == min(nearer)
                assert coordinates.depth == hops[node]
            else:
                assert parent == self.relay_of[node]
            assert coordinates.path == (*self.coordinates(parent).path, node)


def random_mesh(rng: random.Random, public: int, nat: int, extra: int) -> Mesh:
    """``public`` public nodes in a random connected graph with ``extra`` more links,
    and ``nat`` NATed nodes, each attached to a public relay and maybe peered with one
    more public node; ids drawn at random (so the root is anywhere)."""
    identities = rng.sample(IDENTITIES, public + nat)
    net = Mesh()
    publics = [net.add(identity) for identity in identities[:public]]
    for index in range(1, public):
        net.link(publics[index], publics[rng.randrange(index)])
    for _ in range(extra):
        a, b = rng.sample(publics, 2) if public > 1 else (publics[0], publics[0])
        if a != b and b not in net.roles[a]:
            net.link(a, b)
    for identity in identities[public:]:
        node = net.add(identity, public=False)
        relay = rng.choice(publics)
        net.attach(node, relay)
        others = [p for p in publics if p != relay]
        if others and rng.random() < 0.7:
            net.link(node, rng.choice(others))
    return net


# -- convergence ---------------------------------------------------------------------------


def test_a_lone_public_node_is_its_own_root() -> None:
    tree = make_tree(IDENTITIES[5])
    actions = tree.tick(NOW)
    assert actions == [CoordinatesChanged(None, tree.coordinates)]
    assert tree.coordinates is not None
    assert tree.coordinates.path == (IDENTITIES[5].node_id,)
    assert tree.parent is None


def test_a_lone_nated_node_has_no_place() -> None:
    tree = make_tree(IDENTITIES[0], eligible_root=False)
    assert tree.tick(NOW) == []
    assert tree.coordinates is None
    assert tree.wake_at(NOW) is None


def test_a_line_settles_under_its_least_id() -> None:
    net = Mesh()
    nodes = [net.add(IDENTITIES[i]) for i in (3, 1, 4, 0, 2)]
    for a, b in itertools.pairwise(nodes):
        net.link(a, b)
    net.settle()
    net.check_settled()
    assert net.coordinates(nodes[0]).path == tuple(reversed(nodes[:4]))


@given(
    seed=st.integers(0, 2**32 - 1),
    public=st.integers(1, 30),
    nat=st.integers(0, 10),
    shuffled=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_random_meshes_settle_and_route_greedily_to_every_node(
    seed: int, public: int, nat: int, shuffled: bool
) -> None:
    rng = random.Random(seed)
    with crypto.verifying_once():
        net = random_mesh(rng, public, nat, extra=rng.randrange(public + 1))
        net.shuffle = rng if shuffled else None
        net.tick(NOW)  # a lone node has had no event yet
        net.check_settled()
        net.tick(NOW + INTERVAL)  # offers made once all are placed: their words current
        for source in net.trees:
            for dest in net.trees:
                path = net.route(source, dest)
                assert len(path) - 1 <= net.coordinates(source).distance(net.coordinates(dest))


def test_a_neighbour_that_restarted_is_offered_our_place_at_once() -> None:
    net = Mesh()
    nodes = [net.add(IDENTITIES[i]) for i in (0, 1, 2)]
    for a, b in itertools.pairwise(nodes):
        net.link(a, b)
    net.settle()
    net.check_settled()
    # The end of the line restarts: knowing nothing, it roots a tree of its own and
    # offers it; its neighbour answers with its own place at once (not at its next
    # interval), and it joins the tree again.
    leaf = nodes[2]
    net.trees[leaf] = make_tree(IDENTITIES[2])
    net.take(leaf, net.trees[leaf].add_neighbour(nodes[1], Role.PEER, now=net.now))
    net.settle()
    net.check_settled()
    assert net.coordinates(leaf).path == tuple(nodes)


def test_a_settled_tree_stays_put_while_the_root_refreshes() -> None:
    rng = random.Random(7)
    with crypto.verifying_once():
        net = random_mesh(rng, 12, 4, extra=6)
        net.settle()
        net.check_settled()
        net.changes.clear()
        root = min(n for n, t in net.trees.items() if t.eligible_root)
        net.run_until(NOW + 5 * INTERVAL)
        net.check_settled()
        assert net.changes == [], "a refresh moved nodes"
        latest = net.coordinates(root).ts
        assert latest >= NOW + 5 * INTERVAL - INTERVAL
        assert {net.coordinates(n).ts for n in net.trees} == {latest}


def test_nated_nodes_sit_under_their_relay_and_place_nobody() -> None:
    net = Mesh()
    relay, peer, far = (net.add(IDENTITIES[i]) for i in (3, 2, 1))
    nat = net.add(IDENTITIES[0], public=False)  # the least id, but it may not be root
    net.link(relay, peer)
    net.link(peer, far)
    net.attach(nat, relay)
    net.link(nat, peer)  # one hop nearer the root than its relay, yet not its parent
    net.settle()
    net.check_settled()
    assert net.trees[nat].parent == relay
    assert net.coordinates(nat).depth == 3
    assert net.coordinates(far).depth == 0
    # Its offers carry its chain (for routing) but grant nobody a place.
    offers = net.trees[nat].tick(NOW + INTERVAL)
    assert {o.neighbour for o in offers if isinstance(o, Offer)} == {relay, peer}
    assert all(o.grant is None for o in offers if isinstance(o, Offer))


def test_a_nated_node_without_a_relay_takes_a_peer() -> None:
    net = Mesh()
    a = net.add(IDENTITIES[1])
    nat = net.add(IDENTITIES[0], public=False)
    net.link(nat, a)
    net.settle()
    assert net.trees[nat].parent == a
    assert net.coordinates(nat).path == (a, nat)


def test_a_neighbour_whose_role_changes_is_offered_again_and_one_gone_is_forgotten() -> None:
    net = Mesh()
    a, b = net.add(IDENTITIES[0]), net.add(IDENTITIES[1])
    net.link(a, b)
    net.settle()
    again = net.trees[a].add_neighbour(b, Role.PEER, now=net.now)
    assert again == []  # nothing new
    attached = net.trees[a].add_neighbour(b, Role.ATTACHED, now=net.now)
    assert [o.neighbour for o in attached if isinstance(o, Offer)] == [b]
    assert net.trees[a].remove_neighbour(IDENTITIES[2].node_id, now=net.now) == []
    under_a = net.coordinates(b)
    assert net.trees[b].remove_neighbour(a, now=net.now) == [
        CoordinatesChanged(under_a, net.trees[b].coordinates)
    ]
    assert net.coordinates(b).path == (b,)


# -- churn ---------------------------------------------------------------------------------


def ring_mesh() -> tuple[Mesh, list[NodeId]]:
    """Public nodes in a ring with two chords (connected without any one of them), the
    least id first; two NATed nodes attached to others."""
    net = Mesh()
    ring = [net.add(IDENTITIES[i]) for i in (0, 5, 2, 7, 3, 8, 4, 9)]
    for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
        net.link(a, b)
    net.link(ring[1], ring[5])
    net.link(ring[3], ring[7])
    for i, relay in ((10, ring[2]), (11, ring[6])):
        net.attach(net.add(IDENTITIES[i], public=False), relay)
    net.settle()
    net.check_settled()
    net.run_until(NOW + INTERVAL + 1)  # a refresh, so the last statement is recent
    return net, ring


def test_a_silent_root_rules_until_its_statement_expires_then_the_next_least_id() -> None:
    with crypto.verifying_once():
        net, ring = ring_mesh()
        old_root = ring[0]
        last = net.coordinates(old_root)
        # It crashes: its links stay (nobody removes them), but it says nothing more.
        del net.trees[old_root]
        net.run_until(last.exp - 1)
        assert {net.coordinates(n).root for n in net.trees} == {old_root}
        net.run_until(last.exp + INTERVAL)
        net.check_settled()
        assert net.coordinates(ring[2]).path == (IDENTITIES[2].node_id,)


def test_a_root_whose_links_are_removed_is_replaced_without_waiting() -> None:
    # Chains are paths: once no neighbour offers one that avoids a node, that node
    # stops counting on the old root (as a path-vector protocol converges), well
    # before the old statement expires.
    with crypto.verifying_once():
        net, ring = ring_mesh()
        last = net.coordinates(ring[0])
        net.remove(ring[0])
        assert net.now < last.exp
        net.check_settled()
        assert net.coordinates(ring[2]).path == (IDENTITIES[2].node_id,)


@given(seed=st.integers(0, 2**32 - 1), public=st.integers(2, 20), nat=st.integers(0, 6))
@settings(max_examples=15, deadline=None)
def test_random_meshes_elect_a_new_root_when_theirs_goes_silent(
    seed: int, public: int, nat: int
) -> None:
    rng = random.Random(seed)
    with crypto.verifying_once():
        net = random_mesh(rng, public, nat, extra=public)
        net.tick(NOW)
        old_root = min(n for n, t in net.trees.items() if t.eligible_root)
        last = net.coordinates(old_root)
        assume(old_root not in net.relay_of.values())
        del net.trees[old_root]
        rest = {n for n, t in net.trees.items() if t.eligible_root}
        seen, frontier = {min(rest)}, [min(rest)]
        while frontier:  # is the public graph connected without it?
            frontier = [v for u in frontier for v in net.roles[u] if v in rest - seen]
            seen.update(frontier)
        assume(seen == rest)
        net.run_until(last.exp + INTERVAL)
        net.check_settled()
        for source in net.trees:
            for dest in net.trees:
                net.route(source, dest)


def test_a_lost_parent_is_replaced_at_once_by_another_in_the_same_tree() -> None:
    net = Mesh()
    root, left, right, below = (net.add(IDENTITIES[i]) for i in (0, 1, 2, 3))
    for a, b in ((root, left), (root, right), (left, below), (right, below)):
        net.link(a, b)
    net.settle()
    assert net.trees[below].parent == left
    net.changes.clear()
    net.roles[below].pop(left)
    net.roles[left].pop(below)
    net.take(below, net.trees[below].remove_neighbour(left, now=net.now))
    net.take(left, net.trees[left].remove_neighbour(below, now=net.now))
    net.settle()
    assert net.trees[below].parent == right
    assert net.coordinates(below).path == (root, right, below)
    assert [node for node, _ in net.changes] == [below]


def test_a_parent_lagging_behind_a_fresher_statement_is_left_after_the_grace() -> None:
    # below's parent (left) stops passing refreshes on; right passes them. below keeps
    # left for the grace, then moves under right.
    net = Mesh()
    root, left, right, below = (net.add(IDENTITIES[i]) for i in (0, 1, 2, 3))
    for a, b in ((root, left), (root, right), (left, below), (right, below)):
        net.link(a, b)
    net.settle()
    assert net.trees[below].parent == left
    refresh = NOW + INTERVAL
    net.now = refresh
    net.take(root, net.trees[root].tick(refresh))
    kept = [(s, o) for s, o in net.pending if o.neighbour != left]
    net.pending = collections.deque(kept)  # left never hears the fresh statement
    net.settle()
    assert net.trees[below].parent == left
    assert net.coordinates(below).ts == NOW
    net.tick(refresh + GRACE - 1)
    assert net.trees[below].parent == left
    assert net.trees[below].wake_at(refresh + GRACE - 1) == refresh + GRACE
    net.tick(refresh + GRACE)
    assert net.trees[below].parent == right
    assert net.coordinates(below).ts == refresh


# -- greedy next hop -----------------------------------------------------------------------


def at(*indices: int) -> Coordinates:
    return Coordinates(tuple(IDENTITIES[i].node_id for i in indices), NOW, NOW + LIFETIME)


def settled_pair() -> tuple[Tree, Tree]:
    """Node 1 under root 0, each having heard the other."""
    root, child = make_tree(IDENTITIES[0]), make_tree(IDENTITIES[1])
    offers = root.add_neighbour(IDENTITIES[1].node_id, Role.PEER, now=NOW)
    offer = next(o for o in offers if isinstance(o, Offer))
    child.on_offer(IDENTITIES[0].node_id, Role.PEER, offer.chain, offer.grant, now=NOW)
    return root, child


def test_next_hop_takes_the_nearest_strictly_nearer_neighbour_ties_to_the_least_id() -> None:
    _, child = settled_pair()  # child is at (0, 1)
    n = IDENTITIES
    neighbours = {n[0].node_id: at(0), n[2].node_id: at(0, 2), n[3].node_id: at(0, 3)}
    assert child.next_hop(at(0, 2, 4), neighbours) == n[2].node_id
    assert child.next_hop(at(0, 3, 4), neighbours) == n[3].node_id
    assert child.next_hop(at(0, 3, 4), neighbours, avoid=n[3].node_id) == n[0].node_id
    # (0, 2) and (0, 3) are 2 from (0, 5), as we are: not nearer; the root is.
    assert (
        child.next_hop(at(0, 5), {k: v for k, v in neighbours.items() if k != n[0].node_id}) is None
    )
    assert child.next_hop(at(0, 5), neighbours) == n[0].node_id
    assert child.next_hop(at(0, 1, 6), neighbours) is None  # below us: none is nearer
    ties = {n[7].node_id: at(0, 4, 7), n[6].node_id: at(0, 4, 6)}
    assert child.next_hop(at(0, 4, 5), ties) == n[6].node_id  # both 2 away, we are 3
    assert child.next_hop(at(0, 1), neighbours) is None  # it is us
    assert child.next_hop(at(9), neighbours) is None  # another tree: unreachable


def test_next_hop_follows_a_path_through_us_down_when_we_moved_since_it_was_taken() -> None:
    _, child = settled_pair()  # child (1) is at (0, 1) now
    n = IDENTITIES
    # 4's place was taken while 1 was under 2: (0, 2, 1, 4). By 1's new place, 2 is
    # nearer (greedy would go back up to where 1 was, and 2 would send it back), but 4
    # is below 1 still: down the path.
    stale = at(0, 2, 1, 4)
    neighbours = {n[0].node_id: at(0), n[2].node_id: at(0, 2), n[4].node_id: at(0, 1, 4)}
    assert child.next_hop(stale, neighbours) == n[4].node_id
    # Not when the one below is not a neighbour we may use now, or is to be avoided.
    without = {k: v for k, v in neighbours.items() if k != n[4].node_id}
    assert child.next_hop(stale, without) == n[2].node_id
    assert child.next_hop(stale, neighbours, avoid=n[4].node_id) == n[2].node_id
    # A path that agrees with our place is routed greedily, shortcuts and all.
    shortcut = {**neighbours, n[5].node_id: at(0, 1, 4, 5)}
    assert child.next_hop(at(0, 1, 4, 5), shortcut) == n[5].node_id


def test_offers_tell_where_our_other_neighbours_are() -> None:
    net = Mesh()
    hub, *spokes = (net.add(IDENTITIES[i]) for i in range(5))
    for spoke in spokes:
        net.link(hub, spoke)
    net.settle()
    offers = net.trees[hub].tick(NOW + INTERVAL)
    for offer in offers:
        assert isinstance(offer, Offer)
        others = [spoke for spoke in spokes if spoke != offer.neighbour]
        assert sorted(offer.around) == sorted(net.coordinates(s).path for s in others)


def test_next_hop_ranks_neighbours_by_what_lies_beyond_them() -> None:
    tree = make_tree(IDENTITIES[1], eligible_root=False)  # no place: all are nearer
    near, far = IDENTITIES[3].node_id, IDENTITIES[2].node_id
    neighbours = {near: at(0, 3), far: at(0, 2, 4)}
    dest = at(0, 5, 8)
    assert tree.next_hop(dest, neighbours) == near  # 3 from it, 4 from far
    # far says it has a neighbour at (0, 5): one hop beyond it, one from there.
    tree._neighbours[far] = _Neighbour(Role.PEER, at(0, 2, 4), None, (at(0, 5),))
    assert tree.next_hop(dest, neighbours) == far
    # A path in another tree says nothing.
    tree._neighbours[far] = _Neighbour(Role.PEER, at(0, 2, 4), None, (at(9, 5),))
    assert tree.next_hop(dest, neighbours) == near
    # A neighbour that is no nearer is taken only for a way shorter than any through
    # the nearer ones: then the way seen two hops ahead still shortens at every hop.
    _, child = settled_pair()  # at (0, 1): 3 from (0, 5, 8), as (0, 2) is; the root 2
    root, side = IDENTITIES[0].node_id, IDENTITIES[2].node_id
    around = {root: at(0), side: at(0, 2)}

    def says(*paths: Coordinates) -> None:
        child._neighbours[side] = _Neighbour(Role.PEER, at(0, 2), None, paths)

    says(at(0, 5, 8))  # the destination itself: 1 on from there
    assert child.next_hop(at(0, 5, 8), around) == side
    says(at(0, 5))  # 2 on, as through the root: the nearer one
    assert child.next_hop(at(0, 5, 8), around) == root
    alone = {side: at(0, 2)}  # the root's link down: a side way only if it is shorter
    assert child.next_hop(at(0, 5, 8), alone) == side
    says(at(0, 6, 7))  # 1 + 4 on: no shorter than our own 3
    assert child.next_hop(at(0, 5, 8), alone) is None


def test_plain_next_hop_takes_only_a_strictly_nearer_neighbour() -> None:
    # For a destination a frame came back for, the neighbours' words are not heard:
    # plain greedy routing, the nearest strictly nearer neighbour or none (hold).
    _, child = settled_pair()  # at (0, 1): 3 from (0, 5, 8), as (0, 2) is
    root, side = IDENTITIES[0].node_id, IDENTITIES[2].node_id
    child._neighbours[side] = _Neighbour(Role.PEER, at(0, 2), None, (at(0, 5, 8),))
    around = {root: at(0), side: at(0, 2)}
    assert child.next_hop(at(0, 5, 8), around) == side
    assert child.next_hop(at(0, 5, 8), around, plain=True) == root
    alone = {side: at(0, 2)}
    assert child.next_hop(at(0, 5, 8), alone) == side
    assert child.next_hop(at(0, 5, 8), alone, plain=True) is None


def test_two_hop_lookahead_shortens_greedy_routes_on_random_meshes() -> None:
    rng = random.Random(11)
    with crypto.verifying_once():
        net = random_mesh(rng, 34, 14, extra=12)
        net.tick(NOW)
        net.tick(NOW + INTERVAL)  # every node's periodic offers, each neighbour placed
        net.check_settled()
        nodes = sorted(net.trees)
        pairs = [tuple(rng.sample(nodes, 2)) for _ in range(400)]
        ahead = sum(len(net.route(a, b)) - 1 for a, b in pairs)
        for tree in net.trees.values():
            for entry in tree._neighbours.values():
                entry.around = ()
        plain = sum(len(net.route(a, b)) - 1 for a, b in pairs)
    assert ahead < plain


def test_next_hop_without_coordinates_takes_any_neighbour_in_the_tree() -> None:
    tree = make_tree(IDENTITIES[1], eligible_root=False)
    neighbours = {IDENTITIES[3].node_id: at(0, 3), IDENTITIES[4].node_id: at(9)}
    assert tree.next_hop(at(0, 2), neighbours) == IDENTITIES[3].node_id
    assert tree.next_hop(at(5), neighbours) is None


# -- refusals ------------------------------------------------------------------------------


def offer_between(net: Mesh, sender: NodeId, target: NodeId) -> Offer:
    offers = net.trees[sender].tick(net.now + INTERVAL)
    return next(o for o in offers if isinstance(o, Offer) and o.neighbour == target)


def forged_setup() -> tuple[Mesh, NodeId, NodeId, NodeId, NodeId]:
    net = Mesh()
    root, x, mallory, victim, other = (net.add(IDENTITIES[i]) for i in (0, 1, 6, 7, 8))
    net.link(root, x)
    net.link(x, mallory)
    net.link(mallory, victim)
    net.link(victim, x)
    net.link(mallory, other)
    net.settle()
    return net, root, x, mallory, victim


def assert_refused_and_unchanged(
    net: Mesh, target: NodeId, sender: NodeId, chain: bytes, grant: bytes | None, words: str
) -> None:
    tree = net.trees[target]
    before = (tree.coordinates, tree.parent, tree.neighbour_coordinates(net.now))
    with pytest.raises(crypto.CryptoError, match=words):
        tree.on_offer(sender, Role.PEER, chain, grant, now=net.now)
    assert (tree.coordinates, tree.parent, tree.neighbour_coordinates(net.now)) == before


def test_a_neighbour_cannot_offer_another_nodes_coordinates() -> None:
    net, _, x, mallory, victim = forged_setup()
    overheard = offer_between(net, x, mallory)  # x's chain, and x's grant for mallory
    assert_refused_and_unchanged(
        net, victim, mallory, overheard.chain, None, "carries the coordinates of"
    )


def test_a_neighbour_cannot_pass_on_a_grant_meant_for_another() -> None:
    net, _, _, mallory, victim = forged_setup()
    other = IDENTITIES[8].node_id
    mine = offer_between(net, mallory, other)  # mallory's grant for another neighbour
    assert mine.grant is not None
    assert_refused_and_unchanged(
        net, victim, mallory, mine.chain, mine.grant, "grants a place to .*, not to us"
    )


def test_a_neighbour_cannot_claim_a_depth_it_was_not_granted() -> None:
    net, root, _, mallory, victim = forged_setup()
    assert net.coordinates(mallory).depth == 2
    # mallory signs itself a place right below the root (depth 1).
    statement = net.coordinates(root)
    assert statement.chain is not None
    fields = {
        "root": root.raw,
        "ts": statement.ts,
        "child": mallory.raw,
        "depth": 1,
        "exp": net.now + LIFETIME,
        "up": hashlib.sha256(statement.chain.grants[0]).digest(),
    }
    self_granted = crypto.seal(IDENTITIES[6], crypto.Purpose.COORD, fields)
    chain = CoordChain((statement.chain.grants[0], self_granted)).encode()
    assert_refused_and_unchanged(
        net, victim, mallory, chain, None, "is signed by .*, but the node above it is"
    )


def test_a_neighbour_cannot_claim_another_root() -> None:
    net, root, _, mallory, victim = forged_setup()
    # mallory rewrites the root statement to a lesser id: the signature no longer holds.
    honest = offer_between(net, mallory, victim)
    grants = CoordChain.decode(honest.chain).grants
    tampered = grants[0].replace(root.raw, IDENTITIES[0].node_id.raw[:-1] + b"\x00")
    assert tampered != grants[0]
    chain = CoordChain((tampered, *grants[1:])).encode()
    assert_refused_and_unchanged(net, victim, mallory, chain, honest.grant, "grant 0")


@pytest.mark.parametrize("chain", [b"", b"\xff", b"garbage" * 10])
def test_garbage_offers_are_refused(chain: bytes) -> None:
    net, _, _, mallory, victim = forged_setup()
    assert_refused_and_unchanged(net, victim, mallory, chain, None, "coordinate chain")


def test_an_expired_offer_is_refused() -> None:
    net, _, _, mallory, victim = forged_setup()
    honest = offer_between(net, mallory, victim)
    net.now += 10 * LIFETIME
    with pytest.raises(crypto.Expired):
        net.trees[victim].on_offer(mallory, Role.PEER, honest.chain, honest.grant, now=net.now)


def test_an_offer_claiming_to_come_from_ourselves_is_refused() -> None:
    net, _, _, _, victim = forged_setup()
    with pytest.raises(crypto.Malformed, match="this node itself"):
        net.trees[victim].on_offer(victim, Role.PEER, b"", None, now=net.now)
    with pytest.raises(ValueError, match="its own neighbour"):
        net.trees[victim].add_neighbour(victim, Role.PEER, now=net.now)


@pytest.mark.parametrize(
    ("grace", "interval", "lifetime"),
    [
        (0, INTERVAL, LIFETIME),
        (INTERVAL, INTERVAL, LIFETIME),
        (GRACE, LIFETIME, LIFETIME),
        (GRACE, INTERVAL, crypto.MAX_GRANT_LIFETIME_MS + 1),
    ],
)
def test_impossible_timings_are_refused(grace: int, interval: int, lifetime: int) -> None:
    with pytest.raises(ValueError, match="a tree needs"):
        Tree(
            IDENTITIES[0],
            eligible_root=True,
            interval_ms=interval,
            lifetime_ms=lifetime,
            stale_grace_ms=grace,
        )
