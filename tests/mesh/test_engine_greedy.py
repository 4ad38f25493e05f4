"""Greedy routing inside the router (RouterConfig.tree): a frame for a node no route is
known to goes to the neighbour nearest its coordinates; coordinates come with frames
(checked first, within an allowance) or from a DHT lookup started for a held
destination.

Routers are built into a tree with the offer-passing mesh of test_engine_tree.py; no
announces flow, so no router holds a route beyond its neighbours.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import crypto
from mesh import (
    Deliver,
    DhtSend,
    Forward,
    LookupDone,
    Reroute,
    Result,
    Role,
    Router,
    RouterConfig,
    WireFrame,
    admit,
)
from mesh._engine import (
    HINT_BURST,
    HINT_REFILL_MS,
    LOOKUP_ATTEMPTS,
    LOOKUP_RETRY_MAX_MS,
    LOOKUP_RETRY_MS,
    LOOP_PLAIN_MS,
    LOOP_WINDOW_MS,
    MAX_GREEDY_SENT,
    MAX_WANTED,
)
from mesh._lookups import DEFAULT_QUERY_TIMEOUT_MS
from mesh._routes import Route
from tests.mesh.test_engine_tree import NOW, Mesh, identity, router

_ids = itertools.count(1)


def line(names: str) -> tuple[dict[str, crypto.Identity], dict[str, Router], Mesh, int]:
    """Routers linked in a line in the order of ``names``, the tree settled."""
    ids = {name: identity(n) for n, name in enumerate(names, start=1)}
    routers = {name: router(i) for name, i in ids.items()}
    mesh = Mesh(ids, routers)
    for a, b in itertools.pairwise(names):
        mesh.link(a, b)
    return ids, routers, mesh, mesh.settle() + 1


def refreshed(mesh: Mesh, now: int) -> int:
    """Tick every router at ``now`` (the root signs a new statement) and settle: the
    tree's chains, which last minutes in these tests, fresh again. The time reached."""
    for name, r in sorted(mesh.routers.items()):
        mesh.take(name, r.tick(now))
    return mesh.settle(now)


def sealed(
    origin: crypto.Identity,
    dst: crypto.NodeId,
    now: int,
    kind: crypto.Kind,
    *,
    life: int = 600_000,
    **fields: Any,
) -> bytes:
    frame = crypto.Frame(
        kind=kind,
        src=origin.node_id,
        id=next(_ids).to_bytes(16, "big"),
        ts=now,
        exp=now + life,
        hops=16,
        dst=dst,
        **fields,
    )
    return frame.seal(origin)


def msg(origin: crypto.Identity, dst: crypto.NodeId, now: int) -> bytes:
    return sealed(origin, dst, now, crypto.Kind.MSG, body=b"hi")


def receipt(origin: crypto.Identity, dst: crypto.NodeId, now: int) -> bytes:
    return sealed(origin, dst, now, crypto.Kind.RCPT, ref=b"r" * 16, st="delivered")


def classify(
    r: Router,
    envelope: bytes,
    sender: crypto.NodeId,
    now: int,
    coords: bytes | None = None,
    src_coords: bytes | None = None,
) -> crypto.NodeId | None:
    decision = decide(r, envelope, sender, now, coords, src_coords)
    assert isinstance(decision, Forward), decision
    return decision.next_hop


def decide(
    r: Router,
    envelope: bytes,
    sender: crypto.NodeId,
    now: int,
    coords: bytes | None = None,
    src_coords: bytes | None = None,
) -> object:
    admitted = admit(WireFrame(1, envelope, coords=coords, src_coords=src_coords), now=now)
    assert not isinstance(admitted, Result)
    return r.classify(admitted, sender, now)


def chain_of(r: Router) -> bytes:
    assert r.tree is not None
    chain = r.tree.chain
    assert chain is not None
    return chain


def test_a_frame_with_its_destinations_coordinates_goes_greedily_hop_by_hop() -> None:
    ids, routers, _, now = line("abcde")
    e = ids["e"].node_id
    envelope = msg(ids["a"], e, now)
    coords = chain_of(routers["e"])
    # Each node on the way passes it one step nearer, by the coordinates it came with.
    sender = ids["a"].node_id
    for here, there in itertools.pairwise("bcde"):
        hop = classify(routers[here], envelope, sender, now, coords)
        assert hop == ids[there].node_id
        sender = ids[here].node_id
    assert routers["c"].greedy_forwarded == 1
    # The coordinates are kept: the next frame needs none, and goes with them on.
    assert classify(routers["b"], msg(ids["a"], e, now), ids["a"].node_id, now) == ids["c"].node_id
    assert routers["b"].coordinates_of(e, now) == coords
    assert routers["c"].coordinates_of(e, now) == coords
    # Without coordinates (nor a route), a node holds it: a is two hops from c.
    assert (
        classify(routers["c"], msg(ids["e"], ids["a"].node_id, now), ids["d"].node_id, now) is None
    )


def test_a_message_brings_its_origins_coordinates_so_its_receipt_needs_no_lookup() -> None:
    ids, routers, _, now = line("abcde")
    a, e = ids["a"].node_id, ids["e"].node_id
    envelope = msg(ids["a"], e, now)
    origin = chain_of(routers["a"])
    # Each hop keeps the origin's coordinates that came with the message (to pass on).
    sender = a
    for here in "bcd":
        classify(routers[here], envelope, sender, now, chain_of(routers["e"]), origin)
        assert routers[here].coordinates_of(a, now) == origin
        sender = ids[here].node_id
    assert decide(routers["e"], envelope, sender, now, src_coords=origin) == Deliver()
    assert routers["e"].coordinates_of(a, now) == origin
    # e's receipt goes back greedily, hop by hop, with no lookup anywhere.
    sender = e
    for here, there in itertools.pairwise("edcba"):
        if here == "e":
            hop = routers["e"].next_hop(a, now)
        else:
            hop = classify(routers[here], receipt(ids["e"], a, now), sender, now)
        assert hop == ids[there].node_id
        sender = ids[here].node_id
    assert all(r.route_lookups == 0 for r in routers.values())


def test_an_origins_coordinates_that_place_another_node_are_ignored() -> None:
    ids, routers, _, now = line("abcde")
    a, e = ids["a"].node_id, ids["e"].node_id
    d = routers["d"]
    # b's coordinates sent as a's, and a chain altered on the way: neither is kept.
    assert (
        decide(
            routers["e"],
            msg(ids["a"], e, now),
            ids["d"].node_id,
            now,
            src_coords=chain_of(routers["b"]),
        )
        == Deliver()
    )
    altered = bytearray(chain_of(routers["a"]))
    altered[-5] ^= 1
    classify(d, msg(ids["a"], e, now), ids["c"].node_id, now, src_coords=bytes(altered))
    assert routers["e"].coordinates_of(a, now) is None
    assert d.coordinates_of(a, now) is None
    assert routers["e"].next_hop(a, now) is None  # a receipt would be held, a looked up


def test_forged_or_misplaced_coordinates_are_ignored_and_the_frame_held() -> None:
    ids, routers, _, now = line("abcde")
    e = ids["e"].node_id
    b = routers["b"]
    sender = ids["a"].node_id
    # d's coordinates sent for e: they place another node.
    assert classify(b, msg(ids["a"], e, now), sender, now, chain_of(routers["d"])) is None
    # Bytes that are no chain at all, and a chain altered on the way.
    assert classify(b, msg(ids["a"], e, now), sender, now, b"\xa0") is None
    altered = bytearray(chain_of(routers["e"]))
    altered[-5] ^= 1
    assert classify(b, msg(ids["a"], e, now), sender, now, bytes(altered)) is None
    assert b.coordinates_of(e, now) is None
    assert b.greedy_forwarded == 0
    # Expired ones count for nothing either.
    assert routers["e"].tree is not None
    assert routers["e"].tree.coordinates is not None
    late = routers["e"].tree.coordinates.exp
    assert classify(b, msg(ids["a"], e, late - 1), sender, late, chain_of(routers["e"])) is None


def test_a_neighbour_sending_new_chains_in_a_loop_is_checked_within_an_allowance() -> None:
    ids, routers, _, now = line("abc")
    b = routers["b"]
    sender = ids["a"].node_id
    stranger = crypto.Identity(bytes([77]) * 32)
    junk = b"\x81\x41\x00"  # a CBOR array of one byte string: parsed, then refused
    for _ in range(HINT_BURST):
        classify(b, msg(ids["a"], stranger.node_id, now), sender, now, junk)
    # Past the burst, even good coordinates from that neighbour are not checked ...
    good = chain_of(routers["c"])
    assert b._learn(ids["c"].node_id, good, now, checker=sender) is False
    # ... until its allowance refills; another neighbour's are checked meanwhile.
    assert b._learn(ids["c"].node_id, good, now, checker=ids["c"].node_id) is True
    assert b._learn(ids["a"].node_id, chain_of(routers["a"]), now, checker=sender) is False
    later = now + HINT_REFILL_MS
    assert b._learn(ids["a"].node_id, chain_of(routers["a"]), later, checker=sender) is True


def test_a_held_destination_is_looked_up_once_and_rerouted_when_found() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    assert classify(b, msg(ids["a"], e, now), ids["a"].node_id, now) is None
    first = b.held(e, now)
    assert any(isinstance(action, DhtSend) for action in first)
    assert b.route_lookups == 1
    assert b.held(e, now + 1) == []  # one lookup at a time per destination
    (lookup,) = b._finding
    # The lookup ends with e's chain: kept, and frames for e rerouted toward it.
    done = LookupDone(lookup, e, (), chain_of(routers["e"]), 3)
    (reroute,) = b._dht_actions([done], now + 2)
    assert isinstance(reroute, Reroute)
    assert (reroute.dst, reroute.next_hop) == (e, ids["c"].node_id)
    assert b.coordinates_of(e, now + 2) == chain_of(routers["e"])
    # Nothing came from c, so the runtime finds nothing left held for e.
    assert reroute.instead is None
    b.settled(e)
    # A lookup that found nothing is tried again, but not before the retry time.
    d = ids["d"].node_id
    b.held(d, now)
    (lookup,) = b._finding
    assert b._dht_actions([LookupDone(lookup, d, (), None, 3)], now + 3) == []
    assert b.held(d, now + 4) == []
    assert b.route_lookups == 2
    b.tick(now + LOOKUP_RETRY_MS)
    assert b.route_lookups == 3
    # Each one that finds nothing waits longer for the next; after LOOKUP_ATTEMPTS
    # the destination is forgotten, until a new frame for it is held.
    later = now + LOOKUP_RETRY_MS
    for _ in range(2 * LOOKUP_ATTEMPTS):
        later += LOOKUP_RETRY_MAX_MS + DEFAULT_QUERY_TIMEOUT_MS
        b.tick(later)
    assert b.route_lookups == 1 + LOOKUP_ATTEMPTS
    b.held(d, later + 1)
    assert b.route_lookups == 2 + LOOKUP_ATTEMPTS


def test_a_lookup_takes_the_first_place_found_but_after_a_place_that_led_nowhere() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    assert b.dht is not None
    find = b.dht.find
    firsts: list[bool] = []

    def spy(key: crypto.NodeId, *, value: bool, now: int, first: bool = False) -> Any:
        firsts.append(first)
        return find(key, value=value, now=now, first=first)

    b.dht.find = spy  # type: ignore[method-assign]
    b.held(e, now)
    (lookup,) = b._finding
    b._dht_actions([LookupDone(lookup, e, (), None, 3)], now + 1)  # found nothing
    b.tick(now + LOOKUP_RETRY_MS)
    assert firsts == [True, True]  # nothing found is no former place: first again
    (lookup,) = b._finding
    b._dht_actions([LookupDone(lookup, e, (), None, 3)], now + LOOKUP_RETRY_MS + 1)
    # A place that leads nowhere from here (c down): it is asked for anew, thoroughly.
    b._learn(e, chain_of(routers["e"]), now, checker=None)
    c = ids["c"].node_id
    b.send_failed(c, now, "refused")
    b.send_failed(c, now + b.links.down_after_ms, "refused")
    assert b.next_hop(e, now) is None
    b.settled(e)
    b.held(e, now + 2 * LOOKUP_RETRY_MS)
    assert firsts == [True, True, False]


def test_frames_sent_greedily_through_a_neighbour_that_goes_are_rerouted() -> None:
    ids, routers, mesh, now = line("abc")
    # A square: a-b-c-d-a, so c stays reachable from a either way.
    ids["d"] = identity(4)
    routers["d"] = router(ids["d"])
    mesh.identities["d"] = ids["d"]
    mesh.names[ids["d"].node_id] = "d"
    mesh.link("c", "d")
    mesh.link("d", "a")
    now = mesh.settle(now) + 1
    a, c = routers["a"], ids["c"].node_id
    assert a.next_hop(c, now, coords=chain_of(routers["c"])) is not None
    via = a.next_hop(c, now)
    assert via in (ids["b"].node_id, ids["d"].node_id)
    actions = a.remove_neighbour(via, Role.PEER, now)
    (moved,) = [x for x in actions if isinstance(x, Reroute) and x.dst == c]
    assert moved.next_hop is not None
    assert moved.next_hop != via


def test_a_greeting_carries_only_routes_within_the_announce_radius() -> None:
    who = identity(1)
    config = RouterConfig(tree=True, announce_radius=2)
    r = Router(who.node_id, rng=random.Random(0), config=config, identity=who)
    near, far, new = identity(2), identity(3), identity(4)
    r.add_neighbour(near.node_id, Role.PEER, NOW)
    for dst, hops in ((near.node_id, 1), (far.node_id, 2)):
        r.table.learn(
            Route(dst, near.node_id, NOW, hops, NOW, NOW + 60_000, announce=b"ann" + dst.raw)
        )
    greeting = r.greeting(new.node_id, NOW)
    assert [w.envelope for w in greeting] == [b"ann" + near.node_id.raw]


def test_frames_whose_only_way_on_is_back_go_back_at_their_retry_time() -> None:
    ids, routers, _, now = line("abcde")
    b, c, e = routers["b"], ids["c"].node_id, ids["e"].node_id
    b.held(e, now)
    (lookup,) = b._finding
    done = LookupDone(lookup, e, (), chain_of(routers["e"]), 3)
    (reroute,) = b._dht_actions([done], now + 2)
    assert isinstance(reroute, Reroute)
    # Frames for e that came from c would stay held (c is the only way on): e stays
    # wanted, and is not looked up again before its time.
    assert (reroute.next_hop, reroute.instead) == (c, None)
    assert e in b._wanted
    assert b.held(e, now + 3) == []
    retry = b._wanted[e].retry_at
    assert not [x for x in b.tick(retry - 1) if isinstance(x, Reroute) and x.dst == e]
    # At the retry time they go back to c, who never sends them straight back here.
    back = [x for x in b.tick(retry) if isinstance(x, Reroute) and x.dst == e]
    assert [(x.next_hop, x.instead) for x in back] == [(c, c)]
    assert e not in b._wanted
    assert b.route_lookups == 1


def test_a_destination_with_nothing_left_held_is_no_longer_looked_up() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    b.held(e, now)
    (lookup,) = b._finding
    b._dht_actions([LookupDone(lookup, e, (), chain_of(routers["e"]), 3)], now + 2)
    b.settled(e)  # the runtime found nothing held for e after the reroute
    assert e not in b._wanted
    for later in range(now, now + 3 * LOOKUP_RETRY_MAX_MS, 15_000):  # the runtime ticks
        assert not [x for x in b.tick(later) if isinstance(x, Reroute) and x.dst == e]
    assert b.route_lookups == 1


def test_coordinates_in_our_tree_replace_newer_ones_of_another_tree() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    # e's place in a tree of a stranger's, stated after ours: newer by time, but of no
    # use to greedy routing here.
    stranger = crypto.Identity(bytes([99]) * 32)
    statement = crypto.root_statement(stranger, now=now, lifetime_ms=180_000)
    above = crypto.CoordChain((statement,)).verify(now=now)
    grant = crypto.grant_coordinates(stranger, e, above, now=now, lifetime_ms=180_000)
    placed = above.below(grant, now=now).chain
    assert placed is not None
    elsewhere, ours = placed.encode(), chain_of(routers["e"])
    assert crypto.CoordChain.parse(ours, now=now).ts < now
    assert b._learn(e, elsewhere, now, checker=None) is True
    assert b.next_hop(e, now) is None  # another tree: no neighbour is nearer
    assert b._learn(e, ours, now, checker=None) is True
    assert b.next_hop(e, now) == ids["c"].node_id
    assert b._learn(e, elsewhere, now, checker=None) is False
    assert b.coordinates_of(e, now) == ours


def test_coordinates_no_frame_used_for_the_idle_time_are_forgotten() -> None:
    ids, routers, _, now = line("abcde")
    b, a, d, e = routers["b"], ids["a"].node_id, ids["d"].node_id, ids["e"].node_id
    b.config = dataclasses.replace(b.config, coordinates_idle_ms=30_000)
    # d's, looked up for frames of ours: kept while they last, used or not.
    assert b._learn(d, chain_of(routers["d"]), now, checker=None, ours=True) is True
    assert b.coordinates_of(d, now + 1) == chain_of(routers["d"])
    # e's, brought by a frame passing through.
    assert classify(b, msg(ids["a"], e, now), a, now, chain_of(routers["e"])) == ids["c"].node_id
    assert b.coordinates_held == 2
    # A frame sent on with them 20 s later keeps them 30 s from then ...
    assert b.coordinates_of(e, now + 20_000) == chain_of(routers["e"])
    b.tick(now + 45_000)
    assert b.coordinates_held == 2
    # ... and a frame routed by them, 30 s later still.
    assert classify(b, msg(ids["a"], e, now), a, now + 50_000) == ids["c"].node_id
    b.tick(now + 75_000)
    assert b.coordinates_held == 2
    # Then none for 30 s: forgotten, and the next frame for e is held (looked up).
    b.tick(now + 80_000)
    assert b.coordinates_held == 1
    assert b.coordinates_of(e, now + 80_000) is None
    assert classify(b, msg(ids["a"], e, now), a, now + 80_000) is None
    # Looked up for frames of ours, the same chain a frame brought is kept as ours.
    assert classify(b, msg(ids["a"], e, now), a, now + 80_000, chain_of(routers["e"])) is not None
    assert b._learn(e, chain_of(routers["e"]), now + 80_001, checker=None, ours=True) is True
    b.tick(now + 120_000)
    assert b.coordinates_held == 2
    del b._coordinates[e]  # out of the way: d's expiry next
    # d's go when their chain expires.
    expires = crypto.CoordChain.parse(chain_of(routers["d"]), now=now).exp
    b.tick(expires - 1)
    assert b.coordinates_held == 1
    b.tick(expires)
    assert b.coordinates_held == 0


def test_coordinates_looked_up_for_frames_passing_through_are_forgotten_when_idle() -> None:
    ids, routers, _, now = line("abcde")
    b, d, e = routers["b"], ids["d"].node_id, ids["e"].node_id
    b.config = dataclasses.replace(b.config, coordinates_idle_ms=30_000)

    def found(dst: crypto.NodeId, at: int) -> None:
        (lookup,) = b._finding
        done = LookupDone(lookup, dst, (), chain_of(routers[dst_name[dst]]), 3)
        (reroute,) = b._dht_actions([done], at)
        assert isinstance(reroute, Reroute)
        b.settled(dst)

    dst_name = {d: "d", e: "e"}
    # A frame passing through is held for e: what the lookup finds goes when idle ...
    b.held(e, now)
    found(e, now + 1)
    # ... but one of ours for d, held while a frame passing through waited for the
    # same lookup, keeps d's until they expire.
    b.held(d, now + 2)
    b.held(d, now + 3, ours=True)
    found(d, now + 4)
    assert b.coordinates_held == 2
    b.tick(now + 40_000)
    assert b.coordinates_of(e, now + 40_000) is None
    assert b.coordinates_of(d, now + 40_000) == chain_of(routers["d"])


def test_a_lookup_tried_again_remembers_that_frames_of_ours_wait() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    b.held(e, now, ours=True)
    (lookup,) = b._finding
    assert b._dht_actions([LookupDone(lookup, e, (), None, 3)], now + 1) == []
    b.held(e, now + 2)  # one passing through, held meanwhile
    b.tick(now + LOOKUP_RETRY_MS)  # looked up again
    (lookup,) = b._finding
    done = LookupDone(lookup, e, (), chain_of(routers["e"]), 3)
    (reroute,) = b._dht_actions([done], now + LOOKUP_RETRY_MS + 1)
    assert isinstance(reroute, Reroute)
    later = now + LOOKUP_RETRY_MS + b.config.coordinates_idle_ms + 1
    b._forget_idle_coordinates(later)
    assert b.coordinates_of(e, later) == chain_of(routers["e"])


def test_the_coordinates_forgotten_for_room_are_the_least_lately_used() -> None:
    ids, routers, _, now = line("abcde")
    b, a, d, e = routers["b"], ids["a"].node_id, ids["d"].node_id, ids["e"].node_id
    b.config = dataclasses.replace(b.config, max_coordinates=2)
    assert b._learn(d, chain_of(routers["d"]), now, checker=None) is True
    assert b._learn(e, chain_of(routers["e"]), now + 1, checker=None) is True
    # d, learned first, was used since: e goes to make room for a's.
    assert b.coordinates_of(d, now + 2) is not None
    assert b._learn(a, chain_of(routers["a"]), now + 3, checker=None) is True
    assert b.coordinates_held == 2
    assert b.coordinates_of(e, now + 3) is None
    assert b.coordinates_of(d, now + 3) == chain_of(routers["d"])


def test_a_frame_held_while_its_destination_is_looked_up_goes_when_the_lookup_ends() -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    b.held(e, now)
    (lookup,) = b._finding
    b.settled(e)  # what was held went another way meanwhile ...
    assert b.held(e, now + 1) == []  # ... and a new frame is held: one lookup at a time
    done = LookupDone(lookup, e, (), chain_of(routers["e"]), 3)
    (reroute,) = b._dht_actions([done], now + 2)
    assert isinstance(reroute, Reroute)
    assert (reroute.dst, reroute.next_hop) == (e, ids["c"].node_id)
    assert b.route_lookups == 1


def test_a_frame_that_comes_back_within_the_window_is_held_instead_of_going_round() -> None:
    # While the tree changes, views of it disagree and a frame can come back to a node
    # that passed it on greedily: the second time it is held (looked up), not sent again.
    ids, routers, mesh, now = line("abcde")
    b, c, e = routers["b"], ids["c"].node_id, ids["e"].node_id
    sender = ids["a"].node_id
    envelope = sealed(ids["a"], e, now, crypto.Kind.MSG, body=b"hi", life=3 * LOOP_WINDOW_MS)
    coords = chain_of(routers["e"])
    assert classify(b, envelope, sender, now, coords) == c
    assert classify(b, envelope, sender, now + 1_000) is None
    assert (b.greedy_forwarded, b.greedy_loops) == (1, 1)
    # Other frames for the same destination go on as before.
    assert classify(b, msg(ids["a"], e, now), sender, now + 1_000) == c
    # Held, it is remembered as of then: a window after that, it may go on again.
    later = now + 1_000 + LOOP_WINDOW_MS
    # (The tree's chains last minutes here: refreshed, and e's brought again.)
    within = refreshed(mesh, later - 60_000)
    assert within < later
    assert classify(b, envelope, sender, within, chain_of(routers["e"])) is None
    assert b.greedy_loops == 2
    after = refreshed(mesh, within + LOOP_WINDOW_MS)
    assert classify(b, envelope, sender, after, chain_of(routers["e"])) == c
    assert b.greedy_loops == 2


def test_the_frames_remembered_for_loops_are_bounded() -> None:
    ids, routers, _, now = line("abcde")
    b, c, e = routers["b"], ids["c"].node_id, ids["e"].node_id
    sender = ids["a"].node_id
    first = msg(ids["a"], e, now)
    assert classify(b, first, sender, now, chain_of(routers["e"])) == c
    for _ in range(MAX_GREEDY_SENT):
        assert classify(b, msg(ids["a"], e, now), sender, now) == c
    # The oldest was forgotten to make room: it goes on (it may loop until its hop
    # limit, as without the guard).
    assert classify(b, first, sender, now + 1) == c
    assert b.greedy_loops == 0


def test_after_a_frame_came_back_its_destination_goes_by_plain_greedy_routing() -> None:
    # Neighbours' words about their neighbours can be stale (a region cut off, a node
    # moved): frames went round four nodes, held and let go at each, until their hop
    # limit. Once a frame came back, frames for its destination go on from here only to
    # a neighbour nearer it by coordinates verified here, for a while.
    ids, routers, mesh, now = line("abcde")
    b, c, e = routers["b"], ids["c"].node_id, ids["e"].node_id
    sender = ids["a"].node_id
    tree = b.tree
    assert tree is not None
    plain: list[bool] = []
    next_hop = tree.next_hop

    def watched(*args: Any, **kwargs: Any) -> crypto.NodeId | None:
        plain.append(kwargs.get("plain", False))
        return next_hop(*args, **kwargs)

    tree.next_hop = watched  # type: ignore[method-assign]
    envelope = msg(ids["a"], e, now)
    assert classify(b, envelope, sender, now, chain_of(routers["e"])) == c
    # It comes back after a lookup's retry: still within the window.
    back = now + LOOKUP_RETRY_MS + 1_000
    assert classify(b, envelope, sender, back) is None
    assert b.greedy_loops == 1
    assert classify(b, msg(ids["a"], e, now), sender, back + 1) == c
    assert b.reroute(e, back + 2).next_hop == c
    assert plain == [False, False, True, True, True]
    # A while later the neighbours' words count again. (The tree's chains last
    # minutes here: refreshed, and e's brought again.)
    later = refreshed(mesh, back + LOOP_PLAIN_MS)
    assert classify(b, msg(ids["a"], e, later), sender, later, chain_of(routers["e"])) == c
    assert plain[-1] is False
    assert e not in b._looped


def test_the_destinations_routed_plainly_are_bounded() -> None:
    ids, routers, _, now = line("abcde")
    b = routers["b"]
    for n in range(MAX_WANTED + 5):
        b._looped[crypto.Identity(n.to_bytes(32, "big")).node_id] = now + LOOP_PLAIN_MS
    sender, e = ids["a"].node_id, ids["e"].node_id
    envelope = msg(ids["a"], e, now)
    classify(b, envelope, sender, now, chain_of(routers["e"]))
    assert classify(b, envelope, sender, now + 1) is None
    assert len(b._looped) <= MAX_WANTED
    assert e in b._looped
