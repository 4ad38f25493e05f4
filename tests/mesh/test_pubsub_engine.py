"""Publish/subscribe in the sans-IO core: interests learned from sub/unsub frames, the
fan-out of publications along routes, secure names, leases and quotas.

Plain calls with ``now`` in ms and real signed frames; the last test floods
subscriptions and publications through a random mesh of Routers (with cycles) and
checks that each subscriber gets each matching publication once and no publication
crosses a link toward nobody.
"""

from __future__ import annotations

import collections
import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crypto
from mesh import (
    Admitted,
    Fanout,
    Flood,
    ForwardPolicy,
    Interest,
    Interests,
    Learned,
    Notify,
    Outcome,
    Reason,
    Result,
    Role,
    Route,
    Router,
    RouterConfig,
    WireFrame,
    admit,
    matches,
    secure_owner,
)

T0 = 1_700_000_000_000
NOW = T0 + 1000
LEASE = 600_000


def identity(n: int) -> crypto.Identity:
    return crypto.Identity(bytes([n]) * 32)


LOCAL_ID = identity(1)
LOCAL = LOCAL_ID.node_id
_OTHERS = sorted((identity(n) for n in range(2, 9)), key=lambda i: i.node_id.raw)
A_ID, B_ID, C_ID, D_ID, X_ID, Y_ID, Z_ID = _OTHERS
A, B, C, D, X, Y, Z = (i.node_id for i in _OTHERS)
_ids = itertools.count(1)


def frame_id() -> bytes:
    return next(_ids).to_bytes(16, "big")


def interest(
    origin: crypto.Identity,
    pattern: str,
    *,
    ts: int = T0,
    lease: int = LEASE,
    withdraw: bool = False,
    hops: int = 8,
) -> bytes:
    frame = crypto.Frame(
        kind=crypto.Kind.UNSUB if withdraw else crypto.Kind.SUB,
        src=origin.node_id,
        id=frame_id(),
        ts=ts,
        exp=ts + lease,
        hops=hops,
        pat=pattern,
    )
    return frame.seal(origin)


def publication(
    origin: crypto.Identity, topic: str, *, ts: int = T0, hops: int = 16, body: bytes = b"x"
) -> bytes:
    frame = crypto.Frame(
        kind=crypto.Kind.PUB,
        src=origin.node_id,
        id=frame_id(),
        ts=ts,
        exp=ts + LEASE,
        hops=hops,
        topic=topic,
        body=body,
    )
    return frame.seal(origin)


def admitted(
    envelope: bytes, hops: int = 0, now: int = NOW, to: tuple[crypto.NodeId, ...] = ()
) -> Admitted:
    checked = admit(WireFrame(hops, envelope, to), now=now)
    assert isinstance(checked, Admitted), checked
    return checked


def router(
    *neighbours: crypto.NodeId,
    policy: ForwardPolicy = ForwardPolicy.NEIGHBOURS,
    local: crypto.NodeId = LOCAL,
    max_per_origin: int = 1024,
    max_total: int = 200_000,
) -> Router:
    r = Router(
        local,
        rng=random.Random(0),
        config=RouterConfig(
            forward_policy=policy,
            max_patterns_per_origin=max_per_origin,
            max_interests=max_total,
        ),
    )
    for node in neighbours:
        r.add_neighbour(node, Role.PEER, T0)
    return r


def route(r: Router, dst: crypto.NodeId, via: crypto.NodeId, hops: int = 2) -> None:
    r.table.learn(Route(dst=dst, via=via, ts=T0, hops=hops, learned=T0, expires=T0 + 100 * LEASE))


def subscribe(r: Router, origin: crypto.Identity, pattern: str, sender: crypto.NodeId) -> None:
    result, _ = r.on_interest(admitted(interest(origin, pattern)), sender, NOW)
    assert result.outcome is Outcome.ACCEPTED, result


# -- the table -----------------------------------------------------------------------


def test_the_fresher_word_wins_and_a_tombstone_stops_a_late_copy() -> None:
    table = Interests()
    sub = Interest(X, "news.#", T0, T0 + LEASE, b"sub")
    assert table.learn(sub, now=NOW) is Learned.NEWS
    assert table.learn(sub, now=NOW) is Learned.STALE  # the same again
    assert table.subscribers("news.tech", now=NOW) == {X}
    unsub = Interest(X, "news.#", T0 + 10, T0 + 10 + LEASE, b"unsub", withdrawn=True)
    assert table.learn(unsub, now=NOW) is Learned.NEWS
    assert table.subscribers("news.tech", now=NOW) == set()
    # The sub, arriving late by another path, is older than the tombstone.
    assert table.learn(sub, now=NOW) is Learned.STALE
    assert table.subscribers("news.tech", now=NOW) == set()
    # A fresher sub (the subscriber came back) wins over the tombstone.
    again = Interest(X, "news.#", T0 + 20, T0 + 20 + LEASE, b"sub2")
    assert table.learn(again, now=NOW) is Learned.NEWS
    assert table.subscribers("news", now=NOW) == {X}


def test_leases_lapse_and_clean_up() -> None:
    table = Interests()
    table.learn(Interest(X, "a.*", T0, T0 + 100, b"1"), now=T0)
    table.learn(Interest(Y, "a.b", T0, T0 + 200, b"2"), now=T0)
    table.learn(Interest(Z, "a.b", T0, T0 + 150, b"3", withdrawn=True), now=T0)
    assert table.subscribers("a.b", now=T0 + 50) == {X, Y}
    # Lapsed but not yet expired by a tick: already not a subscriber.
    assert table.subscribers("a.b", now=T0 + 100) == {Y}
    assert [i.origin for i in table.expire(T0 + 100)] == [X]
    assert len(table) == 2
    assert table.expire(T0 + 150) == []  # the tombstone goes quietly
    assert [i.origin for i in table.expire(T0 + 200)] == [Y]
    assert len(table) == 0
    assert table.subscribers("a.b", now=T0) == set()
    # An already lapsed frame is not taken at all.
    assert table.learn(Interest(X, "a", T0, T0 + 10, b"4"), now=T0 + 10) is Learned.STALE


def test_quotas_per_origin_and_in_all() -> None:
    table = Interests(max_per_origin=2, max_total=3)
    assert table.learn(Interest(X, "a", T0, T0 + LEASE, b""), now=NOW) is Learned.NEWS
    assert table.learn(Interest(X, "b", T0, T0 + LEASE, b""), now=NOW) is Learned.NEWS
    assert table.learn(Interest(X, "c", T0, T0 + LEASE, b""), now=NOW) is Learned.FULL
    # A refresh of a pattern held is not a new entry.
    assert table.learn(Interest(X, "a", T0 + 1, T0 + LEASE, b""), now=NOW) is Learned.NEWS
    assert table.learn(Interest(Y, "a", T0, T0 + LEASE, b""), now=NOW) is Learned.NEWS
    assert table.learn(Interest(Z, "a", T0, T0 + LEASE, b""), now=NOW) is Learned.FULL
    assert table.subscribers("c", now=NOW) == set()
    assert table.forget_origin(X) == 2
    assert table.learn(Interest(Z, "a", T0, T0 + LEASE, b""), now=NOW) is Learned.NEWS


def test_secure_owner() -> None:
    assert secure_owner(f"~{X.text}.chirp") == X
    assert secure_owner("news.tech") is None
    assert secure_owner(f"news.~{X.text}") is None  # only the first word names an owner


# -- interests through the router ----------------------------------------------------


def test_a_sub_from_a_neighbour_is_learned_and_flooded_to_the_others() -> None:
    r = router(A, B, C)
    result, actions = r.on_interest(admitted(interest(X_ID, "news.#"), hops=2), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    [flood] = actions
    assert isinstance(flood, Flood)
    assert set(flood.to) == {B, C}
    assert flood.wire.hops == 3
    assert r.interests.subscribers("news.tech", now=NOW) == {X}
    # The same frame again (another path): a duplicate, not flooded.
    result, actions = r.on_interest(admitted(flood.wire.envelope, hops=3), B, NOW)
    assert (result.outcome, actions) == (Outcome.DUPLICATE, [])


def test_interests_from_strangers_and_our_own_echo() -> None:
    r = router(A)
    result, actions = r.on_interest(admitted(interest(X_ID, "a")), B, NOW)
    assert (result.outcome, result.code, actions) == (Outcome.REJECTED, Reason.POLICY, [])
    result, actions = r.on_interest(admitted(interest(LOCAL_ID, "a")), A, NOW)
    assert (result.outcome, actions) == (Outcome.DUPLICATE, [])
    assert r.interests.subscribers("a", now=NOW) == set()


def test_a_sub_at_its_hop_limit_is_learned_but_not_passed_on() -> None:
    r = router(A, B)
    result, actions = r.on_interest(admitted(interest(X_ID, "a", hops=3), hops=2), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == []
    assert r.interests.subscribers("a", now=NOW) == {X}


def test_a_full_table_refuses_with_a_reason() -> None:
    r = router(A, max_per_origin=1)
    subscribe(r, X_ID, "a", A)
    result, actions = r.on_interest(admitted(interest(X_ID, "b")), A, NOW)
    assert (result.outcome, result.code, actions) == (Outcome.REJECTED, Reason.STORE_FULL, [])
    assert "withdraw" in result.words


def test_an_unsub_withdraws_and_is_flooded() -> None:
    r = router(A, B)
    subscribe(r, X_ID, "a.*", A)
    unsub = interest(X_ID, "a.*", ts=T0 + 1, withdraw=True)
    result, actions = r.on_interest(admitted(unsub), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == [Flood((B,), WireFrame(1, unsub))]
    assert r.interests.subscribers("a.b", now=NOW) == set()


def test_our_own_interest_is_flooded_to_every_neighbour_even_down() -> None:
    r = router(A, B)
    for _ in range(5):
        r.send_failed(B, NOW + 30_000, "refused")
    frame = crypto.Frame(
        kind=crypto.Kind.SUB, src=LOCAL, id=frame_id(), ts=NOW, exp=NOW + LEASE, hops=8, pat="a"
    )
    envelope = frame.seal(LOCAL_ID)
    [flood] = r.own_interest(frame, envelope, NOW)
    assert isinstance(flood, Flood)
    assert set(flood.to) == {A, B}
    assert r.own_interest(frame, envelope, NOW) == []  # the same word twice


def test_a_greeting_carries_the_interests_held_but_not_the_neighbours_own() -> None:
    r = router(A, B)
    subscribe(r, X_ID, "a", A)
    subscribe(r, A_ID, "b", A)
    withdrawn = interest(Y_ID, "c", withdraw=True)
    r.on_interest(admitted(withdrawn), B, NOW)
    envelopes = {w.envelope for w in r.greeting(A, NOW)}
    assert withdrawn in envelopes  # tombstones too
    assert {Interest.of(admit_frame(e), e, hops=0).pattern for e in envelopes} == {"a", "c"}


def admit_frame(envelope: bytes) -> crypto.Frame:
    return crypto.Frame.open(envelope)


# -- publications ----------------------------------------------------------------------


def test_a_publication_goes_once_to_each_next_hop_toward_a_matching_subscriber() -> None:
    r = router(A, B, C)
    route(r, X, A)
    route(r, Y, A)  # X and Y both behind A: one copy
    route(r, Z, B)
    subscribe(r, X_ID, "news.#", A)
    subscribe(r, Y_ID, "news.tech", A)
    subscribe(r, Z_ID, "news.*", B)
    decision = r.classify(admitted(publication(D_ID, "news.tech")), C, NOW)
    # Each copy names the subscribers it is for.
    assert decision == Fanout(False, *by_hop({A: [X, Y], B: [Z]}))
    # Never back where it came from.
    decision = r.classify(admitted(publication(D_ID, "news.tech")), A, NOW)
    assert decision == Fanout(False, (B,), ((Z,),))
    # Only what matches: news.tech.deep matches news.# (X) alone.
    decision = r.classify(admitted(publication(D_ID, "news.tech.deep")), C, NOW)
    assert decision == Fanout(False, (A,), ((X,),))
    decision = r.classify(admitted(publication(D_ID, "sport")), C, NOW)
    assert decision == Fanout(False, ())


def by_hop(
    copies: dict[crypto.NodeId, list[crypto.NodeId]],
) -> tuple[tuple[crypto.NodeId, ...], tuple[tuple[crypto.NodeId, ...], ...]]:
    """(next hops, subscribers of each copy) as the router orders them: by id."""
    hops = sorted(copies, key=lambda n: n.raw)
    return tuple(hops), tuple(tuple(sorted(copies[h], key=lambda n: n.raw)) for h in hops)


def test_a_copy_goes_on_toward_the_subscribers_it_was_sent_for_only() -> None:
    r = router(A, B, C)
    route(r, X, A)
    route(r, Y, B)
    subscribe(r, X_ID, "t", A)
    subscribe(r, Y_ID, "t", B)
    # C sent this copy for X only (its copy for Y went another way): not toward Y.
    decision = r.classify(admitted(publication(D_ID, "t"), to=(X,)), C, NOW)
    assert decision == Fanout(False, (A,), ((X,),))
    # Listed, not known to be interested here, and no way toward it: nothing goes
    # toward it, and nothing is held for it (a neighbour cannot make this node hold
    # copies for made-up subscribers).
    decision = r.classify(admitted(publication(D_ID, "t"), to=(Z,)), C, NOW)
    assert decision == Fanout(False, ())
    # A local subscription is delivered to whatever the list says.
    frame = crypto.Frame(
        kind=crypto.Kind.SUB, src=LOCAL, id=frame_id(), ts=NOW, exp=NOW + LEASE, hops=8, pat="t"
    )
    r.own_interest(frame, frame.seal(LOCAL_ID), NOW)
    assert r.classify(admitted(publication(D_ID, "t"), to=(Y,)), C, NOW) == Fanout(
        True, (B,), ((Y,),)
    )


def test_a_copy_for_a_subscriber_reachable_only_back_is_held_here() -> None:
    # Found by the chirp scenario: X's relay A restarted and, its routes still
    # settling, sent us the copy for X (X had not attached again); our only way to X is
    # back through A. Dropping X from the copy lost the post for X: hold it for X.
    r = router(A, B, C)
    route(r, X, A)
    subscribe(r, X_ID, "t", A)
    decision = r.classify(admitted(publication(D_ID, "t"), to=(X,)), A, NOW)
    assert decision == Fanout(False, (), (), held=(X,))
    # Another way to X, not through the sender: it goes that way, nothing held.
    route(r, X, B)
    decision = r.classify(admitted(publication(D_ID, "t"), to=(X,)), A, NOW)
    assert decision == Fanout(False, (B,), ((X,),))
    # An unaddressed copy from A: A serves the subscribers behind it itself.
    r = router(A, B, C)
    route(r, X, A)
    subscribe(r, X_ID, "t", A)
    assert r.classify(admitted(publication(D_ID, "t")), A, NOW) == Fanout(False, ())
    # Nor is a copy held for the subscriber that sent it, or for the origin.
    decision = r.classify(admitted(publication(X_ID, "t"), to=(X,)), A, NOW)
    assert decision == Fanout(False, ())


def test_our_own_publication_is_held_for_a_subscriber_we_have_no_way_to() -> None:
    # X's interest came through A and lives, but no route to X is known (it lapsed, or
    # X's relay restarted): our post is held for X until a way appears, not lost for it.
    r = router(A, B)
    route(r, Y, B)
    subscribe(r, X_ID, "t", A)
    subscribe(r, Y_ID, "t", B)
    decision = r.classify(admitted(publication(LOCAL_ID, "t")), None, NOW)
    assert decision == Fanout(False, (B,), ((Y,),), held=(X,))


def test_an_addressed_copy_goes_on_for_a_subscriber_this_node_has_not_heard_of() -> None:
    # A relay that crashed and restarted with an interest table saved before X
    # subscribed does not know X wants "t" (until X's refresh, half a lease later); the
    # previous hop, which knows, addressed the copy to X: it must go on toward X, not
    # end here (the post was lost in a 200-node chirp run).
    r = router(A, B, C)
    route(r, X, B)
    decision = r.classify(admitted(publication(D_ID, "t"), to=(X,)), A, NOW)
    assert decision == Fanout(False, (B,), ((X,),))
    # Unaddressed, this node goes by what it knows: nobody wants "t".
    assert r.classify(admitted(publication(D_ID, "t")), A, NOW) == Fanout(False, ())
    # Addressed to this node: delivered only if it subscribed itself.
    r = router(A, B)
    assert r.classify(admitted(publication(D_ID, "t"), to=(LOCAL,)), A, NOW) == Fanout(False, ())


def test_a_local_subscription_delivers_here_and_ours_go_out() -> None:
    r = router(A)
    route(r, X, A)
    subscribe(r, X_ID, "a.#", A)
    frame = crypto.Frame(
        kind=crypto.Kind.SUB, src=LOCAL, id=frame_id(), ts=NOW, exp=NOW + LEASE, hops=8, pat="a.b"
    )
    r.own_interest(frame, frame.seal(LOCAL_ID), NOW)
    assert r.classify(admitted(publication(B_ID, "a.b")), A, NOW) == Fanout(True, ())
    # Our own publication: sender None, delivered here too and sent toward X.
    assert r.classify(admitted(publication(LOCAL_ID, "a.b")), None, NOW) == Fanout(
        True, (A,), ((X,),)
    )


def test_no_forwarding_past_the_hop_limit_or_against_the_policy() -> None:
    r = router(A, B)
    route(r, X, B)
    subscribe(r, X_ID, "a", B)
    # Its third hop (of 3) was to here: subscribers beyond, it goes no further, flagged.
    at_limit = r.classify(admitted(publication(C_ID, "a", hops=3), hops=2), A, NOW)
    assert at_limit == Fanout(False, (), hop_limited=True)
    assert r.classify(admitted(publication(C_ID, "a", hops=4), hops=2), A, NOW) == Fanout(
        False, (B,), ((X,),)
    )
    # Nobody beyond: nothing held back, no flag.
    nobody = r.classify(admitted(publication(C_ID, "b", hops=3), hops=2), A, NOW)
    assert nobody == Fanout(False, ())
    assert r.classify(admitted(publication(C_ID, "a")), C, NOW) == Fanout(False, ())  # stranger
    open_ = router(A, B, policy=ForwardPolicy.OPEN)
    route(open_, X, B)
    subscribe(open_, X_ID, "a", B)
    assert open_.classify(admitted(publication(C_ID, "a")), C, NOW) == Fanout(False, (B,), ((X,),))


def test_secure_names_are_published_by_their_owner_only() -> None:
    r = router(A, B)
    route(r, X, B)
    topic = f"~{Y.text}.chirp"
    subscribe(r, X_ID, topic, B)
    forged = r.classify(admitted(publication(Z_ID, topic)), A, NOW)
    assert isinstance(forged, Result)
    assert (forged.outcome, forged.code) == (Outcome.REJECTED, Reason.FORBIDDEN)
    assert Y.short in forged.words
    assert Z.short in forged.words
    assert r.classify(admitted(publication(Y_ID, topic)), A, NOW) == Fanout(False, (B,), ((X,),))


# -- a mesh of routers -----------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_in_a_mesh_with_cycles_each_subscriber_gets_each_match_once(seed: int) -> None:
    rng = random.Random(seed)
    ids = [identity(n) for n in range(20, 32)]
    nodes = [i.node_id for i in ids]
    edges = {tuple(sorted((nodes[i], nodes[i + 1]), key=lambda n: n.raw)) for i in range(11)}
    while len(edges) < 18:  # a chain plus random chords: cycles
        a, b = rng.sample(nodes, 2)
        edges.add(tuple(sorted((a, b), key=lambda n: n.raw)))
    routers = {n: router(local=n) for n in nodes}
    for a, b in edges:
        routers[a].add_neighbour(b, Role.PEER, T0)
        routers[b].add_neighbour(a, Role.PEER, T0)
    # Shortest-path routes (what converged announces give).
    dist_from: dict[crypto.NodeId, dict[crypto.NodeId, int]] = {}
    for src in nodes:
        dist = {src: 0}
        first: dict[crypto.NodeId, crypto.NodeId] = {}
        queue = collections.deque([src])
        while queue:
            here = queue.popleft()
            for a, b in edges:
                if here in (a, b):
                    there = b if here == a else a
                    if there not in dist:
                        dist[there] = dist[here] + 1
                        first[there] = there if here == src else first[here]
                        queue.append(there)
        dist_from[src] = dist
        for dst, hop in first.items():
            routers[src].table.learn(
                Route(dst=dst, via=hop, ts=T0, hops=dist[dst], learned=T0, expires=T0 + LEASE)
            )
    # Subscriptions flood through the mesh.
    patterns = ["a.#", "a.*", "a.b", "b.#", "#.c", "*.b"]
    wanted = {n: rng.sample(patterns, 2) for n in rng.sample(nodes, 5)}
    pending: collections.deque[tuple[crypto.NodeId, crypto.NodeId | None, WireFrame]]
    pending = collections.deque()
    for subscriber, pats in wanted.items():
        identity_ = ids[nodes.index(subscriber)]
        for pattern in pats:
            envelope = interest(identity_, pattern)
            frame = crypto.Frame.open(envelope)
            for action in routers[subscriber].own_interest(frame, envelope, NOW):
                assert isinstance(action, Flood)
                pending.extend((to, subscriber, action.wire) for to in action.to)
    while pending:
        to, sender, wire = pending.popleft()
        assert sender is not None
        _, actions = routers[to].on_interest(admitted(wire.envelope, wire.hops), sender, NOW)
        for action in actions:
            assert isinstance(action, Flood)
            pending.extend((nxt, to, action.wire) for nxt in action.to)
    # Publications from random nodes: delivered once to each matching subscriber, and
    # every copy handed on goes toward someone who wants it.
    for topic in ["a", "a.b", "a.b.c", "x.b", "b", "c"]:
        origin = rng.choice(ids)
        envelope = publication(origin, topic)
        delivered: collections.Counter[crypto.NodeId] = collections.Counter()
        duplicates = 0
        seen: set[crypto.NodeId] = set()
        copies = 0
        hops: collections.deque[
            tuple[crypto.NodeId, crypto.NodeId | None, int, tuple[crypto.NodeId, ...]]
        ]
        hops = collections.deque([(origin.node_id, None, 0, ())])
        while hops:
            here, sender, made, wanted_by = hops.popleft()
            decision = routers[here].classify(admitted(envelope, made, to=wanted_by), sender, NOW)
            assert isinstance(decision, Fanout)
            if here in seen:
                # The store's seen-set: a duplicate, passed on only toward the
                # subscribers its copy names (two copies can meet on paths of equal
                # length).
                duplicates += 1
                if not any(decision.to):
                    continue
            else:
                seen.add(here)
                if decision.deliver:
                    delivered[here] += 1
            copies += len(decision.next_hops)
            hops.extend(
                (nxt, here, made + (sender is not None), decision.subscribers_for(i))
                for i, nxt in enumerate(decision.next_hops)
            )
        expected = {n for n, pats in wanted.items() if any(matches(p, topic) for p in pats)}
        assert set(delivered) == expected, topic
        assert all(count == 1 for count in delivered.values())
        # Each copy goes toward subscribers that want it, by one path each: at most
        # (their distances from the origin) copies, far below a flood.
        bound = sum(dist_from[origin.node_id].get(node, 0) for node in expected)
        assert copies <= bound, (topic, copies, bound)


# -- drop notices -------------------------------------------------------------------------


def test_a_forged_secure_name_earns_its_origin_one_notice_per_interval() -> None:
    r = router(A)
    topic = f"~{Y.text}.chirp"
    forged = admitted(publication(Z_ID, topic))
    result = r.classify(forged, A, NOW)
    assert isinstance(result, Result)
    [notice] = r.refused(forged, result, NOW)
    assert isinstance(notice, Notify)
    assert (notice.origin, notice.ref) == (Z, forged.frame.id)
    assert notice.why.startswith("forbidden: ")
    again = admitted(publication(Z_ID, topic))
    assert r.refused(again, result, NOW + 1) == []  # within the interval: quiet
    assert len(r.refused(again, result, NOW + 5_000)) == 1
    # Other refusals are answered to the sender only.
    assert r.refused(forged, Result.rejected(Reason.POLICY, "no"), NOW + 10_000) == []


def test_a_neighbour_hears_when_its_interest_is_refused_or_lapses() -> None:
    r = router(A, B, max_per_origin=1)
    subscribe(r, A_ID, "a", A)
    envelope = interest(A_ID, "b")
    result, actions = r.on_interest(admitted(envelope), A, NOW)
    assert result.code is Reason.STORE_FULL
    assert [type(a) for a in actions] == [Notify]
    # From a subscriber further away: refused, but no notice (not our neighbour).
    subscribe(r, X_ID, "x", B)
    result, actions = r.on_interest(admitted(interest(X_ID, "y")), B, NOW)
    assert (result.code, actions) == (Reason.STORE_FULL, [])
    # Leases lapse: the neighbour's earns it a notice, the far subscriber's does not.
    actions = r.tick(T0 + LEASE)
    notices = [a for a in actions if isinstance(a, Notify)]
    assert [(n.origin, n.why.split(":")[0]) for n in notices] == [(A, "lapsed")]
    assert r.interests.subscribers("a", now=T0 + LEASE) == set()
