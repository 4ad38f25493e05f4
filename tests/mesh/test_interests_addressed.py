"""Interests addressed to their owner (with the tree): a ``sub`` or ``unsub`` for a
pattern under another node's secure name goes to that node alone, routed as a message
is, instead of being flooded to every node; the owner's publications go back to each
subscriber it named.

Routers in a line a-b-c-d-e with the tree settled (test_engine_greedy.line); no
announces flow, so no router holds a route beyond its neighbours.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import crypto
from mesh import (
    Admitted,
    Authority,
    Fanout,
    Flood,
    Forward,
    Notify,
    Outcome,
    Reason,
    Requirements,
    Result,
    Router,
    RouterConfig,
    WireFrame,
    admit,
)
from tests.mesh.test_engine_greedy import chain_of, line, sealed
from tests.mesh.test_engine_tree import identity

_ids = itertools.count(1)


def sub(
    origin: crypto.Identity, owner: crypto.NodeId, now: int, *, withdraw: bool = False
) -> bytes:
    kind = crypto.Kind.UNSUB if withdraw else crypto.Kind.SUB
    return sealed(origin, owner, now, kind, life=3_600_000, pat=f"~{owner.text}.chirp")


def undirected(origin: crypto.Identity, now: int, kind: crypto.Kind, **fields: Any) -> bytes:
    """A frame with no ``dst``: a publication, or an interest that is flooded."""
    frame = crypto.Frame(
        kind=kind,
        src=origin.node_id,
        id=next(_ids).to_bytes(16, "big"),
        ts=now,
        exp=now + 600_000,
        hops=16,
        **fields,
    )
    return frame.seal(origin)


def pub(origin: crypto.Identity, now: int) -> bytes:
    topic = f"~{origin.node_id.text}.chirp"
    return undirected(origin, now, crypto.Kind.PUB, topic=topic, body=b"hello")


def flooded(origin: crypto.Identity, pattern: str, now: int) -> bytes:
    return undirected(origin, now, crypto.Kind.SUB, pat=pattern)


def wire(
    envelope: bytes,
    now: int,
    *,
    hops: int = 1,
    to: tuple[crypto.NodeId, ...] = (),
    coords: bytes | None = None,
    src_coords: bytes | None = None,
) -> Admitted:
    checked = admit(WireFrame(hops, envelope, to, coords, src_coords), now=now)
    assert isinstance(checked, Admitted), checked
    return checked


def test_only_a_pattern_under_another_nodes_secure_name_has_an_owner_and_only_with_the_tree() -> (
    None
):
    ids, routers, _, _ = line("ab")
    a, b = routers["a"], ids["b"].node_id
    assert a.interest_owner(f"~{b.text}.chirp") == b
    assert a.interest_owner(f"~{b.text}.#") == b
    assert a.interest_owner(f"~{ids['a'].node_id.text}.chirp") == ids["a"].node_id
    assert a.interest_owner("news.#") is None
    assert a.interest_owner("*.chirp") is None
    flooding = Router(ids["a"].node_id, rng=random.Random(0), config=RouterConfig())
    assert flooding.interest_owner(f"~{b.text}.chirp") is None


def test_an_addressed_interest_goes_hop_by_hop_to_its_owner_alone() -> None:
    ids, routers, _, now = line("abcde")
    a, e = ids["a"], ids["e"].node_id
    envelope = sub(a, e, now)
    coords, src_coords = chain_of(routers["e"]), chain_of(routers["a"])
    sender = a.node_id
    # Each node on the way routes it one step nearer, as a message; none learns it.
    for here, there in zip("bcd", "cde", strict=True):
        admitted = wire(envelope, now, coords=coords, src_coords=src_coords)
        decision = routers[here].classify(admitted, sender, now)
        assert decision == Forward(ids[there].node_id)
        assert len(routers[here].interests) == 0
        sender = ids[here].node_id
    # The owner learns it, passes it to nobody, and knows the subscriber's place.
    owner = routers["e"]
    assert owner.next_hop(a.node_id, now) is None  # no route, no coordinates yet
    admitted = wire(envelope, now, hops=4, src_coords=src_coords)
    result, actions = owner.on_interest(admitted, sender, now)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == []
    assert owner.interests.subscribers(f"~{e.text}.chirp", now=now) == {a.node_id}
    assert owner.next_hop(a.node_id, now) == ids["d"].node_id
    # A copy again is stale; a withdrawal, fresher, ends it.
    result, _ = owner.on_interest(admitted, sender, now)
    assert result.outcome is Outcome.DUPLICATE
    withdrawn = wire(sub(a, e, now + 1, withdraw=True), now + 1, hops=4)
    result, actions = owner.on_interest(withdrawn, sender, now + 1)
    assert (result.outcome, actions) == (Outcome.ACCEPTED, [])
    assert owner.interests.subscribers(f"~{e.text}.chirp", now=now + 1) == set()


def test_an_addressed_interest_is_taken_from_any_node_that_hands_it_on() -> None:
    ids, routers, _, now = line("ab")
    stranger = identity(9)
    owner, b = routers["b"], ids["b"].node_id
    admitted = wire(sub(stranger, b, now), now, hops=3)
    result, _ = owner.on_interest(admitted, stranger.node_id, now)
    assert result.outcome is Outcome.ACCEPTED
    # Flooded ones still come from neighbours only.
    news = wire(flooded(stranger, "news.#", now), now)
    result, _ = owner.on_interest(news, stranger.node_id, now)
    assert result.outcome is Outcome.REJECTED


def test_our_own_interest_is_flooded_only_without_an_owner() -> None:
    ids, routers, _, now = line("abc")
    b = routers["b"]
    me, c = ids["b"], ids["c"].node_id
    addressed = crypto.Frame.open(sub(me, c, now))
    assert b.own_interest(addressed, sub(me, c, now), now) == []
    mine = flooded(me, f"~{me.node_id.text}.chirp", now)
    assert b.own_interest(crypto.Frame.open(mine), mine, now) == []
    news = flooded(me, "news.#", now + 1)
    (flood,) = b.own_interest(crypto.Frame.open(news), news, now + 1)
    assert isinstance(flood, Flood)
    # All three are ours here (a publication matching any is delivered here) ...
    assert len(b.interests) == 3
    # ... and a new neighbour hears of the flooded one only.
    greeting = b.greeting(ids["a"].node_id, now + 1)
    interests = [w for w in greeting if crypto.Frame.open(w.envelope).kind is crypto.Kind.SUB]
    assert [w.envelope for w in interests] == [news]


def test_the_owners_publication_goes_back_to_each_subscriber_it_names() -> None:
    ids, routers, _, now = line("abcde")
    a, e_id = ids["a"], ids["e"]
    owner = routers["e"]
    admitted = wire(sub(a, e_id.node_id, now), now, hops=4, src_coords=chain_of(routers["a"]))
    owner.on_interest(admitted, ids["d"].node_id, now)
    envelope = pub(e_id, now)
    fanout = owner.classify(wire(envelope, now, hops=0), None, now)
    assert isinstance(fanout, Fanout)
    assert fanout.next_hops == (ids["d"].node_id,)
    assert fanout.to == ((a.node_id,),)
    # Nodes on the way hold no interest: they go by the owner's word, and the copy
    # for one subscriber brings its coordinates.
    sender = e_id.node_id
    for here, there in zip("dcb", "cba", strict=True):
        copy = wire(envelope, now, to=(a.node_id,), coords=chain_of(routers["a"]))
        fanout = routers[here].classify(copy, sender, now)
        assert isinstance(fanout, Fanout)
        assert (fanout.next_hops, fanout.to) == ((ids[there].node_id,), ((a.node_id,),))
        sender = ids[here].node_id


def test_a_copy_for_a_subscriber_a_node_has_no_way_to_yet_is_held_there() -> None:
    ids, routers, _, now = line("abcde")
    a, b = ids["a"].node_id, ids["b"].node_id
    # A copy for two subscribers brings no coordinates: c has a way to its neighbour b,
    # none yet to a (no route, no coordinates). It holds a copy for a (and looks a up)
    # rather than let its way end here, though c never heard of a's interest.
    copy = wire(pub(ids["e"], now), now, to=(a, b))
    fanout = routers["c"].classify(copy, ids["d"].node_id, now)
    assert isinstance(fanout, Fanout)
    assert (fanout.next_hops, fanout.to, fanout.held) == ((b,), ((b,),), (a,))


def test_a_node_guarding_a_pattern_refuses_an_addressed_interest_reaching_into_it() -> None:
    ids, routers, _, now = line("abc")
    b = routers["b"]
    b.authority = Authority(ids["b"].node_id, requirements=Requirements(subscribe=("#",)))
    c = ids["c"].node_id
    decision = b.classify(wire(sub(ids["a"], c, now), now), ids["a"].node_id, now)
    assert isinstance(decision, Result)
    assert decision.code is Reason.FORBIDDEN
    assert decision.words is not None
    assert f"{c.short}'s secure names are not its to give" in decision.words
    # It tells the subscriber why (rate-limited), which does not state it again for that.
    (notice,) = b.refused(wire(sub(ids["a"], c, now), now), decision, now)
    assert isinstance(notice, Notify)
    assert notice.origin == ids["a"].node_id
    # Messages pass as ever.
    message = sealed(ids["a"], c, now, crypto.Kind.MSG, body=b"hi")
    assert b.classify(wire(message, now), ids["a"].node_id, now) == Forward(c)


def test_a_copy_that_comes_round_to_a_node_is_held_there_not_sent_round_again() -> None:
    ids, routers, _, now = line("abcde")
    a, b, d = ids["a"].node_id, ids["b"].node_id, ids["d"].node_id
    c = routers["c"]
    envelope, coords = pub(ids["e"], now), chain_of(routers["a"])
    first = c.classify(wire(envelope, now, to=(a,), coords=coords), d, now)
    assert isinstance(first, Fanout)
    assert (first.next_hops, first.held) == ((b,), ())
    # The same copy for a, back a moment later (stale views of the tree sent it round):
    # held here for a, which goes by plain greedy routing from here for a while.
    again = c.classify(wire(envelope, now + 1000, to=(a,), coords=coords), d, now + 1000)
    assert isinstance(again, Fanout)
    assert (again.next_hops, again.held) == ((), (a,))
    assert c.greedy_loops == 1
    assert a in c._looped
    # Another publication for a still goes on, and so does this one for another subscriber.
    other = c.classify(wire(pub(ids["e"], now), now + 1000, to=(a,), coords=coords), d, now + 1000)
    assert isinstance(other, Fanout)
    assert other.next_hops == (b,)
    for_b = c.classify(wire(envelope, now + 1000, to=(b,)), d, now + 1000)
    assert isinstance(for_b, Fanout)
    assert for_b.next_hops == (b,)
