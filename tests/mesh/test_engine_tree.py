"""The spanning tree inside the router (RouterConfig.tree): ``crd`` offers between
neighbours, and what a bad, stray or overtaken offer gets.

Routers are driven synchronously: each Offer action one returns becomes a signed ``crd``
frame, admitted and handed to the neighbour's router, in order per link, as the runtime
(node/_mesh.py) does.
"""

from __future__ import annotations

import collections
import itertools
import random

import pytest

import crypto
from mesh import (
    Action,
    CoordinatesChanged,
    Flood,
    NoRoute,
    Offer,
    Outcome,
    Reason,
    Result,
    Role,
    Router,
    RouterConfig,
    WireFrame,
    admit,
    offer_body,
)
from mesh._engine import (
    DHT_BURST,
    DHT_REFILL_MS,
    DHT_TOTAL_BURST,
    OFFER_BURST,
    OFFER_REFILL_MS,
    _offer_body,
)
from mesh._tree import MAX_AROUND
from mesh._wire import ACCEPTED, DUPLICATE, encode_frames

NOW = 1_700_000_000_000
INTERVAL = 60_000
FLOOD_INTERVAL = RouterConfig().flood_interval_ms
_ids = itertools.count(1)


def identity(n: int) -> crypto.Identity:
    return crypto.Identity(bytes([n]) * 32)


def router(who: crypto.Identity, *, tree: bool = True, root: bool = True) -> Router:
    config = RouterConfig(
        tree=tree, tree_root=root, tree_interval_ms=INTERVAL, tree_lifetime_ms=3 * INTERVAL
    )
    return Router(who.node_id, rng=random.Random(0), config=config, identity=who)


def crd(
    sender: crypto.Identity,
    dst: crypto.NodeId,
    body: bytes,
    *,
    ts: int,
) -> WireFrame:
    frame = crypto.Frame(
        kind=crypto.Kind.CRD,
        src=sender.node_id,
        id=next(_ids).to_bytes(16, "big"),
        ts=ts,
        exp=ts + 3 * INTERVAL,
        hops=1,
        dst=dst,
        body=body,
    )
    return WireFrame(0, frame.seal(sender))


class Mesh:
    """Routers linked as given, passing offers in order per link."""

    def __init__(self, identities: dict[str, crypto.Identity], routers: dict[str, Router]):
        self.identities = identities
        self.routers = routers
        self.names = {i.node_id: name for name, i in identities.items()}
        self.queues: dict[tuple[str, str], collections.deque[Offer]] = collections.defaultdict(
            collections.deque
        )
        self.ts: collections.Counter[str] = collections.Counter()
        self.results: list[Outcome] = []
        self.changes = 0

    def take(self, name: str, actions: object) -> None:
        assert isinstance(actions, list)
        for action in actions:
            if isinstance(action, Offer):
                self.queues[(name, self.names[action.neighbour])].append(action)
            elif isinstance(action, CoordinatesChanged):
                self.changes += 1

    def link(self, a: str, b: str, *, a_is: Role = Role.PEER, b_is: Role = Role.PEER) -> None:
        """``a`` sees ``b`` as ``b_is``; ``b`` sees ``a`` as ``a_is``."""
        self.take(a, self.routers[a].add_neighbour(self.identities[b].node_id, b_is, NOW))
        self.take(b, self.routers[b].add_neighbour(self.identities[a].node_id, a_is, NOW))

    def settle(self, now: int = NOW) -> int:
        """Deliver every offer; tick all routers a flood interval on while offers are
        held back by pacing; return the time reached."""
        while True:
            self.deliver(now)
            if not any(r.offers_held for r in self.routers.values()):
                return now
            now += FLOOD_INTERVAL
            for name, r in sorted(self.routers.items()):
                self.take(name, r.tick(now))

    def deliver(self, now: int) -> None:
        while any(self.queues.values()):
            for (src, dst), queue in sorted(self.queues.items()):
                if not queue:
                    continue
                offer = queue.popleft()
                self.ts[src] = max(now, self.ts[src] + 1)
                wire = crd(
                    self.identities[src],
                    offer.neighbour,
                    offer_body(offer.chain, offer.grant),
                    ts=self.ts[src],
                )
                admitted = admit(wire, now=now)
                assert not isinstance(admitted, Result)
                result, actions = self.routers[dst].on_offer(
                    admitted, self.identities[src].node_id, now
                )
                self.results.append(result.outcome)
                self.take(dst, actions)


def test_neighbours_agree_on_one_root_and_a_nated_node_sits_under_its_relay() -> None:
    ids = {name: identity(n) for n, name in enumerate("abcdn", start=1)}
    routers = {name: router(i, root=name != "n") for name, i in ids.items()}
    mesh = Mesh(ids, routers)
    mesh.link("a", "b")
    mesh.link("b", "c")
    mesh.link("c", "d")
    mesh.link("d", "a")
    # n is NATed: attached to c (its relay), and a peer of a.
    mesh.link("n", "c", a_is=Role.ATTACHED, b_is=Role.RELAY)
    mesh.link("n", "a")
    mesh.settle()

    least = min(i.node_id for name, i in ids.items() if name != "n")
    places = {name: r.tree.coordinates for name, r in routers.items() if r.tree is not None}
    assert all(place is not None and place.root == least for place in places.values())
    assert routers["n"].tree is not None
    assert routers["n"].tree.parent == ids["c"].node_id
    for _name, r in routers.items():
        assert r.tree is not None
        place = r.tree.coordinates
        assert place is not None
        if r.tree.parent is not None:  # parents are neighbours one level up
            parent = routers[mesh.names[r.tree.parent]].tree
            assert parent is not None
            assert parent.coordinates is not None
            assert parent.coordinates.depth == place.depth - 1
    assert set(mesh.results) == {Outcome.ACCEPTED}
    assert mesh.changes >= len(ids)  # each node found its place


def test_a_removed_neighbour_is_forgotten_and_a_new_root_chosen() -> None:
    ids = {name: identity(n) for n, name in enumerate("abc", start=1)}
    routers = {name: router(i) for name, i in ids.items()}
    mesh = Mesh(ids, routers)
    mesh.link("a", "b")
    mesh.link("b", "c")
    mesh.link("c", "a")  # a triangle: the two left stay linked
    later = mesh.settle() + 1
    root = min(i.node_id for i in ids.values())
    root_name = mesh.names[root]
    # Cut every link of the root: the others agree on the least of themselves.
    for name in ids:
        if name != root_name and routers[name].is_neighbour(root):
            mesh.take(name, routers[name].remove_neighbour(root, Role.PEER, later))
            mesh.take(
                root_name,
                routers[root_name].remove_neighbour(ids[name].node_id, Role.PEER, later),
            )
    mesh.settle(later)
    rest = [name for name in ids if name != root_name]
    new_root = min(ids[name].node_id for name in rest)
    for name in rest:
        tree = routers[name].tree
        assert tree is not None
        assert tree.coordinates is not None
        assert tree.coordinates.root == new_root


def test_an_offer_overtaken_on_the_way_is_ignored() -> None:
    a_id, b_id = identity(1), identity(2)
    a, b = router(a_id), router(b_id)
    offers = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)
    (offer,) = offers
    body = offer_body(offer.chain, offer.grant)
    newer = admit(crd(a_id, b_id.node_id, body, ts=NOW + 2), now=NOW)
    older = admit(crd(a_id, b_id.node_id, body, ts=NOW + 1), now=NOW)
    assert not isinstance(newer, Result)
    assert not isinstance(older, Result)
    result, _ = b.on_offer(newer, a_id.node_id, NOW)
    assert result == ACCEPTED
    result, actions = b.on_offer(older, a_id.node_id, NOW)
    assert result == DUPLICATE
    assert actions == []


def test_offers_from_strangers_forwarded_ones_and_bad_bodies_are_refused() -> None:
    a_id, b_id, c_id = identity(1), identity(2), identity(3)
    a, b = router(a_id), router(b_id)
    (offer,) = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)
    body = offer_body(offer.chain, offer.grant)

    clock = NOW

    def outcome(wire: WireFrame, sender: crypto.NodeId) -> tuple[Reason | None, str]:
        nonlocal clock
        clock += OFFER_REFILL_MS  # within the sender's allowance
        admitted = admit(wire, now=clock)
        assert not isinstance(admitted, Result)
        result, actions = b.on_offer(admitted, sender, clock)
        assert actions == []
        return result.code, result.words

    # A stranger (not a neighbour) offering its own coordinates.
    code, words = outcome(crd(c_id, b_id.node_id, body, ts=NOW), c_id.node_id)
    assert code is Reason.POLICY
    assert "neighbour" in words
    # A's offer passed on by someone else, or addressed to another node.
    code, _ = outcome(crd(a_id, b_id.node_id, body, ts=NOW), c_id.node_id)
    assert code is Reason.POLICY
    code, _ = outcome(crd(a_id, c_id.node_id, body, ts=NOW), a_id.node_id)
    assert code is Reason.POLICY
    # Bodies that are not [chain] / [chain, grant] / [chain, grant or null, paths], or a
    # chain that is not a chain.
    path = b"\x01" * 32
    for bad in (
        b"\x00",
        crypto._cbor.encode([1, 2]),
        crypto._cbor.encode([]),
        b"\xff",
        crypto._cbor.encode([offer.chain, None]),  # null grant only beside paths
        crypto._cbor.encode([offer.chain, None, []]),
        crypto._cbor.encode([offer.chain, None, [path[:31]]]),
        crypto._cbor.encode([offer.chain, None, [path * (crypto.MAX_TREE_DEPTH + 2)]]),
        crypto._cbor.encode([offer.chain, None, [path] * (MAX_AROUND + 1)]),
        crypto._cbor.encode([offer.chain, None, ["text"]]),
        crypto._cbor.encode([offer.chain, None, [path + path]]),  # a node twice: no path
    ):
        code, words = outcome(crd(a_id, b_id.node_id, bad, ts=NOW + 1), a_id.node_id)
        assert code is Reason.MALFORMED, words
    # A's real chain, but the grant of another node (C's place, not ours).
    c_grant = crypto.grant_coordinates(
        a_id,
        c_id.node_id,
        crypto.CoordChain.parse(offer.chain, now=NOW),
        now=NOW,
        lifetime_ms=INTERVAL,
    )
    code, words = outcome(
        crd(a_id, b_id.node_id, offer_body(offer.chain, c_grant), ts=NOW + 2), a_id.node_id
    )
    assert code is Reason.MALFORMED
    assert "not to us" in words
    # B's own coordinates presented by A: a chain placing another node than its sender.
    (back,) = [x for x in b.tick(NOW + INTERVAL) if isinstance(x, Offer)]
    code, words = outcome(
        crd(a_id, b_id.node_id, offer_body(back.chain, None), ts=NOW + 3), a_id.node_id
    )
    assert code is Reason.MALFORMED
    # Honest offers still go through after all that.
    ok = admit(crd(a_id, b_id.node_id, body, ts=NOW + 4), now=clock)
    assert not isinstance(ok, Result)
    assert b.on_offer(ok, a_id.node_id, clock + OFFER_REFILL_MS)[0] == ACCEPTED


def test_an_offer_body_carries_the_other_neighbours_paths() -> None:
    far = tuple(identity(n).node_id for n in (4, 5, 6))
    for grant in (b"grant", None):
        body = offer_body(b"chain", grant, (far, far[:1]))
        assert crypto._cbor.decode(body) == [
            b"chain",
            grant,
            [b"".join(n.raw for n in far), far[0].raw],
        ]
        assert _offer_body(body) == (b"chain", grant, (far, far[:1]))
    assert _offer_body(offer_body(b"chain", None)) == (b"chain", None, ())


def test_a_neighbour_flooding_offers_is_refused_past_its_allowance_unverified() -> None:
    a_id, b_id = identity(1), identity(2)
    a, b = router(a_id), router(b_id)
    (offer,) = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)
    honest = offer_body(offer.chain, offer.grant)
    forged = offer_body(offer.chain, b"\x00" * 64)  # would cost a check, and fail it
    outcomes = []
    for i in range(OFFER_BURST + 3):
        wire = admit(crd(a_id, b_id.node_id, forged, ts=NOW + 1 + i), now=NOW)
        assert not isinstance(wire, Result)
        result, _ = b.on_offer(wire, a_id.node_id, NOW)
        outcomes.append(result.code)
    assert outcomes[:OFFER_BURST] == [Reason.MALFORMED] * OFFER_BURST
    assert outcomes[OFFER_BURST:] == [Reason.POLICY] * 3
    # The allowance refills with time: an honest offer a second later is taken.
    wire = admit(crd(a_id, b_id.node_id, honest, ts=NOW + 100), now=NOW)
    assert not isinstance(wire, Result)
    result, _ = b.on_offer(wire, a_id.node_id, NOW + OFFER_REFILL_MS)
    assert result == ACCEPTED
    tree = b.tree
    assert tree is not None
    # B's place is under A if A has the lesser id; else B is the root itself.
    assert tree.parent == (a_id.node_id if a_id.node_id < b_id.node_id else None)


def test_offers_to_a_neighbour_are_paced_and_the_newest_goes_at_a_tick() -> None:
    # B meets A (the least id) and C: its place changes when A's offer comes, and the
    # new chain for C and A waits out the flood interval.
    a_id, b_id, c_id = sorted((identity(n) for n in (1, 2, 3)), key=lambda i: i.node_id.raw)
    a, b = router(a_id), router(b_id)
    to_a = [x for x in b.add_neighbour(a_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    assert [x.neighbour for x in to_a] == [a_id.node_id]
    to_c = [x for x in b.add_neighbour(c_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    assert [x.neighbour for x in to_c] == [c_id.node_id]
    (from_a,) = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    wire = admit(crd(a_id, b_id.node_id, offer_body(from_a.chain, from_a.grant), ts=NOW), now=NOW)
    assert not isinstance(wire, Result)
    result, actions = b.on_offer(wire, a_id.node_id, NOW + 10)
    assert result == ACCEPTED
    assert any(isinstance(x, CoordinatesChanged) for x in actions)
    assert not [x for x in actions if isinstance(x, Offer)]  # both sent within 5 s
    assert b.offers_held == 2
    assert b.release_due == NOW + FLOOD_INTERVAL  # (the runtime releases them then)
    assert not [x for x in b.release(NOW + FLOOD_INTERVAL - 1) if isinstance(x, Offer)]
    assert not [x for x in b.tick(NOW + FLOOD_INTERVAL - 1) if isinstance(x, Offer)]
    due = [x for x in b.tick(NOW + FLOOD_INTERVAL) if isinstance(x, Offer)]
    assert sorted(x.neighbour for x in due) == sorted([a_id.node_id, c_id.node_id])
    tree = b.tree
    assert tree is not None
    assert tree.coordinates is not None
    assert all(x.chain == tree.coordinates.chain.encode() for x in due if tree.coordinates.chain)
    assert b.offers_held == 0
    assert b.release_due is None


def test_held_offers_go_at_release_due_without_a_tick() -> None:
    a_id, b_id, c_id = sorted((identity(n) for n in (1, 2, 3)), key=lambda i: i.node_id.raw)
    a, b = router(a_id), router(b_id)
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)
    b.add_neighbour(c_id.node_id, Role.PEER, NOW)
    (from_a,) = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    wire = admit(crd(a_id, b_id.node_id, offer_body(from_a.chain, from_a.grant), ts=NOW), now=NOW)
    assert not isinstance(wire, Result)
    b.on_offer(wire, a_id.node_id, NOW + 10)
    due = b.release_due
    assert due == NOW + FLOOD_INTERVAL
    offers = [x for x in b.release(due) if isinstance(x, Offer)]
    assert sorted(x.neighbour for x in offers) == sorted([a_id.node_id, c_id.node_id])
    assert (b.offers_held, b.release_due) == (0, None)


def test_a_node_without_the_tree_refuses_offers_and_sends_none() -> None:
    a_id, b_id = identity(1), identity(2)
    a, b = router(a_id), router(b_id, tree=False)
    (offer,) = [x for x in a.add_neighbour(b_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    assert not [x for x in b.add_neighbour(a_id.node_id, Role.PEER, NOW) if isinstance(x, Offer)]
    admitted = admit(crd(a_id, b_id.node_id, offer_body(offer.chain, offer.grant), ts=NOW), now=NOW)
    assert not isinstance(admitted, Result)
    result, _ = b.on_offer(admitted, a_id.node_id, NOW)
    assert result.code is Reason.UNSUPPORTED
    assert b.tree is None


def test_a_router_building_the_tree_needs_its_identity() -> None:
    with pytest.raises(ValueError, match="identity"):
        Router(identity(1).node_id, rng=random.Random(0), config=RouterConfig(tree=True))
    with pytest.raises(ValueError, match="identity"):
        Router(
            identity(1).node_id,
            rng=random.Random(0),
            config=RouterConfig(tree=True),
            identity=identity(2),
        )


def dht_frame(sender: crypto.Identity, dst: crypto.NodeId, body: bytes, *, hops: int = 8) -> bytes:
    frame = crypto.Frame(
        kind=crypto.Kind.DHT,
        src=sender.node_id,
        id=next(_ids).to_bytes(16, "big"),
        ts=NOW,
        exp=NOW + 60_000,
        hops=hops,
        dst=dst,
        body=body,
    )
    return frame.seal(sender)


def test_dht_frames_are_answered_passed_on_or_refused_with_reasons() -> None:
    a_id, b_id, c_id, far_id = identity(1), identity(2), identity(3), identity(9)
    b = router(b_id)
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)
    b.add_neighbour(c_id.node_id, Role.PEER, NOW)

    def handle(
        envelope: bytes, sender: crypto.NodeId, hops: int = 0
    ) -> tuple[Result, list[Action]]:
        admitted = admit(WireFrame(hops, envelope), now=NOW)
        assert not isinstance(admitted, Result)
        result, actions = b.on_dht(admitted, sender, NOW)
        return result, list(actions)

    # For another node: passed on toward it, one more hop made, never stored.
    result, actions = handle(dht_frame(a_id, c_id.node_id, b"\xa0"), a_id.node_id)
    assert result == ACCEPTED
    (passed,) = actions
    assert isinstance(passed, Flood)
    assert passed.to == (c_id.node_id,)
    assert passed.wire.hops == 1
    # The frame as it opened here goes beside it (taken by the next hop in a
    # simulation only: crypto.Frame.open), never on the wire.
    assert passed.wire.opened is not None
    assert passed.wire.opened.id == crypto.Frame.open(passed.wire.envelope).id
    assert encode_frames([passed.wire]) == encode_frames([WireFrame(1, passed.wire.envelope)])
    # No route to it: refused, so the asker's lookup moves on.
    result, _ = handle(dht_frame(a_id, far_id.node_id, b"\xa0"), a_id.node_id)
    assert result.code is Reason.NO_ROUTE
    # From a stranger (the default policy passes on for neighbours only).
    result, _ = handle(dht_frame(far_id, c_id.node_id, b"\xa0"), far_id.node_id)
    assert result.code is Reason.POLICY
    # Out of hops.
    result, _ = handle(dht_frame(a_id, c_id.node_id, b"\xa0", hops=2), a_id.node_id, hops=1)
    assert result.code is Reason.HOP_LIMIT
    # For us, but not a DHT message.
    result, _ = handle(dht_frame(a_id, b_id.node_id, b"\xa0"), a_id.node_id)
    assert result.code is Reason.MALFORMED
    result, _ = handle(dht_frame(a_id, b_id.node_id, b"not cbor \xff"), a_id.node_id)
    assert result.code is Reason.MALFORMED
    # A node without the tree takes no part.
    plain = router(b_id, tree=False)
    admitted = admit(WireFrame(0, dht_frame(a_id, b_id.node_id, b"\xa0")), now=NOW)
    assert not isinstance(admitted, Result)
    result, _ = plain.on_dht(admitted, a_id.node_id, NOW)
    assert result.code is Reason.UNSUPPORTED
    with pytest.raises(NoRoute):
        plain.find_coordinates(c_id.node_id, NOW)


def test_dht_messages_past_an_origins_allowance_are_refused_unread() -> None:
    a_id, b_id, c_id = identity(1), identity(2), identity(3)
    b = router(b_id)
    b.add_neighbour(a_id.node_id, Role.PEER, NOW)

    def to_b(origin: crypto.Identity, now: int) -> Result:
        admitted = admit(WireFrame(0, dht_frame(origin, b_id.node_id, b"\xa0")), now=NOW)
        assert not isinstance(admitted, Result)
        return b.on_dht(admitted, a_id.node_id, now)[0]

    codes = [to_b(c_id, NOW).code for _ in range(DHT_BURST + 3)]
    # Read (and refused as not a DHT message) up to the burst; past it, not read.
    assert codes[:DHT_BURST] == [Reason.MALFORMED] * DHT_BURST
    assert codes[DHT_BURST:] == [Reason.POLICY] * 3
    assert to_b(a_id, NOW).code is Reason.MALFORMED  # other origins are read meanwhile
    assert to_b(c_id, NOW + DHT_REFILL_MS).code is Reason.MALFORMED  # refilled


def test_dht_messages_from_many_origins_together_are_bounded() -> None:
    b_id = identity(2)
    b = router(b_id)
    sybils = [crypto.Identity(bytes([7, n % 256, n // 256]) + bytes(29)) for n in range(300)]
    neighbour = sybils[0]
    b.add_neighbour(neighbour.node_id, Role.PEER, NOW)
    codes = []
    for origin in sybils:
        admitted = admit(WireFrame(0, dht_frame(origin, b_id.node_id, b"\xa0")), now=NOW)
        assert not isinstance(admitted, Result)
        codes.append(b.on_dht(admitted, neighbour.node_id, NOW)[0].code)
    assert codes.count(Reason.MALFORMED) == DHT_TOTAL_BURST
    assert codes.count(Reason.POLICY) == len(sybils) - DHT_TOTAL_BURST


def test_a_neighbour_saying_hello_is_offered_our_place_again() -> None:
    from tests.mesh.test_engine import announce

    # a has the lesser id: it is the root, which b, restarted, does not know.
    first, second = sorted((identity(1), identity(2)), key=lambda i: i.node_id.raw)
    ids = {"a": first, "b": second}
    routers = {name: router(i) for name, i in ids.items()}
    mesh = Mesh(ids, routers)
    mesh.link("a", "b")
    now = mesh.settle() + FLOOD_INTERVAL
    a_tree = routers["a"].tree
    assert a_tree is not None
    assert a_tree.coordinates is not None
    root = a_tree.coordinates.root
    assert root == first.node_id
    # b restarts knowing nothing (a still counts it a neighbour) and says hello: a
    # offers its place again with its greeting, not at its next interval.
    routers["b"] = router(ids["b"])
    b = routers["b"]
    b.add_neighbour(ids["a"].node_id, Role.PEER, now)
    hello = announce(ids["b"], ts=now, hello=True)
    admitted = admit(WireFrame(0, hello), now=now)
    assert not isinstance(admitted, Result)
    _, _, actions = routers["a"].on_announce(admitted, ids["b"].node_id, now)
    offers = [x for x in actions if isinstance(x, Offer)]
    assert [x.neighbour for x in offers] == [ids["b"].node_id]
    mesh.take("a", offers)
    mesh.deliver(now)
    assert b.tree is not None
    assert b.tree.coordinates is not None
    assert b.tree.coordinates.path == (root, second.node_id)
