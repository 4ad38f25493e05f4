"""The sans-IO routing core (mesh.Router): classify, next_hop, announces, link feedback.

Plain calls with ``now`` in ms and real signed frames (crypto.Identity from fixed seeds).
The last section floods announces through random meshes of Routers, synchronously, and
checks that the routes they converge on reach every node without a loop.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crypto
from mesh import (
    Admitted,
    Deliver,
    Flood,
    Forward,
    ForwardPolicy,
    Greet,
    LinkState,
    Outcome,
    Reason,
    Reroute,
    Result,
    Role,
    Route,
    Router,
    RouterConfig,
    Wake,
    WireFrame,
    admit,
)
from mesh._engine import (
    DEFAULT_ANNOUNCE_INTERVAL_MS,
    DEFAULT_FLOOD_INTERVAL_MS,
    DEFAULT_ROUTE_TTL_MS,
)

T0 = 1_700_000_000_000
NOW = T0 + 1000
TTL = 60_000
FLOOD_INTERVAL = 5_000
DOWN_AFTER = 20_000


def identity(n: int) -> crypto.Identity:
    return crypto.Identity(bytes([n]) * 32)


LOCAL_ID = identity(1)
LOCAL = LOCAL_ID.node_id
# Neighbours and destinations, named in the order of their ids (ties go to the lowest).
_OTHERS = sorted((identity(n) for n in range(2, 9)), key=lambda i: i.node_id.raw)
A_ID, B_ID, C_ID, D_ID, X_ID, Y_ID, Z_ID = _OTHERS
A, B, C, D, X, Y, Z = (i.node_id for i in _OTHERS)
_ids = itertools.count(1)


def frame_id() -> bytes:
    return next(_ids).to_bytes(16, "big")


def announce(
    origin: crypto.Identity,
    *,
    ts: int = T0,
    hops: int = 8,
    exp: int | None = None,
    body: bytes | None = None,
    hello: bool = False,
) -> bytes:
    """An ``ann`` frame envelope of ``origin``, carrying its own address by default."""
    if body is None:
        body = address(origin).envelope
    frame = crypto.Frame(
        kind=crypto.Kind.ANN,
        src=origin.node_id,
        id=frame_id(),
        ts=ts,
        exp=ts + TTL * 10 if exp is None else exp,
        hops=hops,
        body=body,
        hello=True if hello else None,
    )
    return frame.seal(origin)


def address(origin: crypto.Identity, *, exp: int = T0 + 10**9) -> crypto.SignedAddress:
    return crypto.sign_address(
        origin, seq=1, endpoints=(f"http://{origin.node_id.short}.example/",), exp=exp
    )


def message(
    dst: crypto.NodeId,
    *,
    src: crypto.Identity = X_ID,
    kind: crypto.Kind = crypto.Kind.MSG,
    hops: int = 8,
) -> bytes:
    extras: dict[crypto.Kind, dict[str, object]] = {
        crypto.Kind.MSG: {"dst": dst, "body": b"hi"},
        crypto.Kind.RCPT: {"dst": dst, "ref": bytes(16), "st": "delivered"},
        crypto.Kind.PUB: {"topic": "news", "body": b"hi"},
        crypto.Kind.SUB: {"pat": "news.#"},
        crypto.Kind.UNSUB: {"pat": "news.#"},
    }
    frame = crypto.Frame(
        kind=kind,
        src=src.node_id,
        id=frame_id(),
        ts=T0,
        exp=T0 + TTL * 10,
        hops=hops,
        **extras[kind],  # type: ignore[arg-type]
    )
    return frame.seal(src)


def admitted(envelope: bytes, hops: int = 0, now: int = NOW) -> Admitted:
    """The envelope as it arrives having made ``hops`` hops before this one."""
    checked = admit(WireFrame(hops, envelope), now=now)
    assert isinstance(checked, Admitted), checked
    return checked


def router(
    *neighbours: crypto.NodeId,
    policy: ForwardPolicy = ForwardPolicy.NEIGHBOURS,
    ttl: int = TTL,
    flood_interval: int = FLOOD_INTERVAL,
    local: crypto.NodeId = LOCAL,
) -> Router:
    r = Router(
        local,
        rng=random.Random(0),
        config=RouterConfig(
            route_ttl_ms=ttl, flood_interval_ms=flood_interval, forward_policy=policy
        ),
    )
    r.links.down_after_ms = DOWN_AFTER
    for node in neighbours:
        r.add_neighbour(node, Role.PEER, T0)
    return r


def learn(
    r: Router,
    dst: crypto.NodeId,
    via: crypto.NodeId,
    *,
    hops: int = 2,
    ts: int = T0,
    expires: int = T0 + 10 * TTL,
    announce: bytes = b"announce",
) -> None:
    r.table.learn(
        Route(dst=dst, via=via, ts=ts, hops=hops, learned=T0, expires=expires, announce=announce)
    )


def take_down(r: Router, node: crypto.NodeId, start: int = T0) -> list[object]:
    """Fail sends to ``node`` until its link is DOWN; return the actions of that moment."""
    wait, actions = r.send_failed(node, start, "refused")
    assert actions == []
    wait, actions = r.send_failed(node, start + DOWN_AFTER, "refused")
    link = r.links.get(node)
    assert link is not None
    assert link.state is LinkState.DOWN
    assert wait > 0
    return list(actions)


def rejection(outcome: object) -> Result:
    assert isinstance(outcome, Result), outcome
    assert outcome.outcome is Outcome.REJECTED
    return outcome


def test_defaults() -> None:
    config = RouterConfig()
    assert config.announce_interval_ms == DEFAULT_ANNOUNCE_INTERVAL_MS == 600_000
    assert config.route_ttl_ms == DEFAULT_ROUTE_TTL_MS == 3 * 600_000
    assert config.flood_interval_ms == DEFAULT_FLOOD_INTERVAL_MS == 5_000
    assert config.forward_policy is ForwardPolicy.NEIGHBOURS
    r = Router(LOCAL, rng=random.Random(0))
    assert r.config == config
    assert r.table.max_destinations == config.max_destinations
    assert len(r.links) == 0


# -- classify ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(ForwardPolicy))
@pytest.mark.parametrize("kind", [crypto.Kind.MSG, crypto.Kind.RCPT])
def test_frames_for_us_are_delivered_under_any_policy(
    policy: ForwardPolicy, kind: crypto.Kind
) -> None:
    r = router(policy=policy)  # no neighbours: even a stranger's frame for us is taken
    item = admitted(message(LOCAL, kind=kind, hops=1))
    assert item.hops == item.frame.hops  # at the hop limit, yet for us
    assert r.classify(item, A, NOW) == Deliver()
    assert r.classify(item, None, NOW) == Deliver()


def test_forward_to_the_next_hop() -> None:
    r = router(A, B)
    learn(r, Z, B)
    assert r.classify(admitted(message(Z)), A, NOW) == Forward(B)
    assert r.classify(admitted(message(B)), A, NOW) == Forward(B)  # a neighbour: direct


def test_hold_when_there_is_no_route() -> None:
    r = router(A)
    assert r.classify(admitted(message(Z)), A, NOW) == Forward(None)


def test_never_straight_back_to_the_sender() -> None:
    r = router(A, B, C)
    learn(r, Z, A, hops=2)
    assert r.classify(admitted(message(Z)), A, NOW) == Forward(None)
    # A longer copy of the same announce is not feasible: held rather than sent there.
    learn(r, Z, C, hops=5)
    assert r.classify(admitted(message(Z)), A, NOW) == Forward(None)
    learn(r, Z, B, hops=2)
    assert r.classify(admitted(message(Z)), A, NOW) == Forward(B)
    assert r.classify(admitted(message(Z)), None, NOW) == Forward(A)


def test_hop_limit() -> None:
    r = router(A, B)
    learn(r, Z, B)
    assert r.classify(admitted(message(Z, hops=3), hops=1), A, NOW) == Forward(B)
    result = rejection(r.classify(admitted(message(Z, hops=3), hops=2), A, NOW))
    assert result.code is Reason.HOP_LIMIT
    assert result.words == "frame has made 3 of the 3 hops its origin allows"


def test_policy_neighbours_refuses_strangers() -> None:
    r = router(A, B)
    learn(r, Z, B)
    result = rejection(r.classify(admitted(message(Z)), C, NOW))
    assert result.code is Reason.POLICY
    assert C.short in result.words
    assert "only for its neighbours" in result.words
    # Our own frames (no sender) are always forwarded.
    assert r.classify(admitted(message(Z, src=LOCAL_ID)), None, NOW) == Forward(B)


def test_policy_open_forwards_for_anyone() -> None:
    r = router(A, B, policy=ForwardPolicy.OPEN)
    learn(r, Z, B)
    assert r.classify(admitted(message(Z)), C, NOW) == Forward(B)


def test_policy_off_forwards_for_nobody() -> None:
    r = router(A, B, policy=ForwardPolicy.OFF)
    learn(r, Z, B)
    for sender in (A, C, None):
        result = rejection(r.classify(admitted(message(Z)), sender, NOW))
        assert result.code is Reason.POLICY
        assert result.words == "this node does not forward frames for others"


@pytest.mark.parametrize("kind", [crypto.Kind.SUB, crypto.Kind.UNSUB])
def test_interests_are_not_classified_as_traffic(kind: crypto.Kind) -> None:
    r = router(A, policy=ForwardPolicy.OPEN)
    result = rejection(r.classify(admitted(message(LOCAL, kind=kind)), A, NOW))
    assert result.code is Reason.UNSUPPORTED
    assert str(kind) in result.words


# -- next_hop ---------------------------------------------------------------------------


def test_a_usable_direct_neighbour_comes_first() -> None:
    r = router(A, B)
    learn(r, B, A, ts=T0 + 50, hops=2)  # fresher, but B is right there
    assert r.next_hop(B, NOW) == B


def test_then_the_best_route_through_a_usable_neighbour() -> None:
    r = router(A, B, C)
    learn(r, Z, A, hops=1)  # an older announce: not feasible
    learn(r, Z, B, hops=2, ts=T0 + 1)
    learn(r, Z, C, hops=2, ts=T0 + 1)
    assert r.next_hop(Z, NOW) == B
    take_down(r, B)
    assert r.next_hop(Z, NOW) == C


def test_a_usable_route_beats_a_down_direct_neighbour() -> None:
    r = router(A, B)
    learn(r, B, A, hops=3)
    take_down(r, B)
    assert r.next_hop(B, NOW) == A


def test_a_down_direct_neighbour_beats_a_down_route() -> None:
    r = router(A, B)
    learn(r, B, A, hops=2)
    take_down(r, A)
    take_down(r, B)
    assert r.next_hop(B, NOW) == B


def test_then_any_route() -> None:
    r = router(A, B, C)
    learn(r, Z, A, hops=4)
    learn(r, Z, B, hops=3)
    learn(r, Z, C, hops=5)
    take_down(r, A)
    take_down(r, B)
    assert r.next_hop(Z, NOW) == B  # the best of the fall-backs
    take_down(r, C)
    assert r.next_hop(Z, NOW) == B
    # A usable neighbour holding only a longer copy is not taken instead.
    r.sent_ok(A, NOW)
    assert r.next_hop(Z, NOW) == B


def test_never_back_to_came_from() -> None:
    r = router(A, B)
    # The destination is the neighbour the frame came from: not straight back.
    assert r.next_hop(A, NOW, came_from=A) is None
    learn(r, A, B, hops=3)
    assert r.next_hop(A, NOW, came_from=A) == B
    # Nor through it, even when it is the best route.
    learn(r, Z, A, hops=1)
    learn(r, Z, B, hops=6)
    assert r.next_hop(Z, NOW, came_from=A) is None  # B's copy is not feasible
    learn(r, Z, B, hops=1)
    assert r.next_hop(Z, NOW) == A
    assert r.next_hop(Z, NOW, came_from=A) == B
    # Nor as a fall-back.
    take_down(r, B)
    assert r.next_hop(Z, NOW, came_from=A) == B
    assert r.next_hop(Z, NOW, came_from=B) == A


def test_expired_routes_are_not_used() -> None:
    r = router(A)
    learn(r, Z, A, expires=NOW)
    assert r.next_hop(Z, NOW) is None
    assert r.next_hop(Z, NOW - 1) == A


# -- announces --------------------------------------------------------------------------


def test_announces_are_taken_from_neighbours_only() -> None:
    r = router(A)
    result, address_, actions = r.on_announce(admitted(announce(X_ID)), C, NOW)
    assert rejection(result).code is Reason.POLICY
    assert C.short in result.words
    assert (address_, actions) == (None, [])
    assert X not in r.table


def test_our_own_announce_come_back_is_a_duplicate() -> None:
    r = router(A, B)
    result, address_, actions = r.on_announce(admitted(announce(LOCAL_ID), hops=2), A, NOW)
    assert (result.outcome, address_, actions) == (Outcome.DUPLICATE, None, [])
    assert LOCAL not in r.table


def test_the_first_copy_is_news_rerouted_and_flooded_on() -> None:
    r = router(A, B, C, X)
    envelope = announce(Y_ID)
    item = admitted(envelope, hops=2)
    result, address_, actions = r.on_announce(item, A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    assert address_ == address(Y_ID)
    assert actions == [Reroute(Y, A), Flood((B, C, X), WireFrame(3, envelope))]
    (route,) = r.table.candidates(Y)
    assert route == Route(dst=Y, via=A, ts=T0, hops=3, learned=NOW, expires=NOW + TTL)
    assert route.announce == envelope


def test_a_neighbours_own_announce_is_a_one_hop_route() -> None:
    r = router(A, B)
    envelope = announce(A_ID)
    result, _, actions = r.on_announce(admitted(envelope), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    # A is a direct neighbour already: its next hop does not change.
    assert actions == [Flood((B,), WireFrame(1, envelope))]
    assert [(r.via, r.hops) for r in r.table.candidates(A)] == [(A, 1)]


def test_the_flood_skips_the_sender_the_origin_and_down_neighbours() -> None:
    r = router(A, B, C, X)
    take_down(r, C)
    envelope = announce(X_ID)
    _, _, actions = r.on_announce(admitted(envelope, hops=1), A, NOW)
    assert Flood((B,), WireFrame(2, envelope)) in actions


def test_no_flood_when_nobody_else_is_up() -> None:
    r = router(A)
    result, _, actions = r.on_announce(admitted(announce(X_ID), hops=1), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == [Reroute(X, A)]


def test_the_route_lapses_with_the_announce() -> None:
    r = router(A)
    r.on_announce(admitted(announce(X_ID, exp=NOW + 500)), A, NOW)
    (route,) = r.table.candidates(X)
    assert route.expires == NOW + 500


def test_a_copy_that_is_not_news_is_a_duplicate_and_not_flooded() -> None:
    r = router(A, B, C)
    envelope = announce(X_ID)
    r.on_announce(admitted(envelope, hops=2), C, NOW)
    result, address_, actions = r.on_announce(admitted(envelope, hops=2), B, NOW + 1)
    assert result.outcome is Outcome.DUPLICATE
    assert address_ == address(X_ID)  # still worth keeping
    # Not news, but a tie now won by the lower id: frames for X move to B, and
    # those that came from B go the other way, through C.
    assert actions == [Reroute(X, B, instead=C)]
    result, _, actions = r.on_announce(admitted(envelope, hops=3), A, NOW + 2)
    assert (result.outcome, actions) == (Outcome.DUPLICATE, [])
    older = announce(X_ID, ts=T0 - 1)
    result, _, actions = r.on_announce(admitted(older, hops=0), A, NOW + 3)
    assert (result.outcome, actions) == (Outcome.DUPLICATE, [])


def test_a_shorter_copy_is_news_and_flooded() -> None:
    r = router(A, B, C)
    envelope = announce(X_ID)
    r.on_announce(admitted(envelope, hops=4), C, NOW)
    result, _, actions = r.on_announce(admitted(envelope, hops=1), A, NOW + 1)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == [Reroute(X, A), Flood((B, C), WireFrame(2, envelope))]


def test_the_hop_limit_stops_the_flood() -> None:
    r = router(A, B)
    envelope = announce(X_ID, hops=3)
    result, _, actions = r.on_announce(admitted(envelope, hops=2), A, NOW)
    assert result.outcome is Outcome.ACCEPTED  # a route all the same
    assert actions == [Reroute(X, A)]
    r2 = router(A, B)
    _, _, actions = r2.on_announce(admitted(envelope, hops=1), A, NOW)
    assert Flood((B,), WireFrame(2, envelope)) in actions


def test_fresher_announces_of_one_origin_are_flooded_at_most_once_per_interval() -> None:
    r = router(A, B, C)
    first = announce(X_ID, ts=T0)
    _, _, actions = r.on_announce(admitted(first, hops=3), A, NOW)
    assert any(isinstance(a, Flood) for a in actions)
    # A fresher one within the interval: taken, not flooded.
    second = announce(X_ID, ts=T0 + 1)
    result, _, actions = r.on_announce(admitted(second, hops=3), A, NOW + FLOOD_INTERVAL - 1)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == []
    assert r.table.candidates(X)[0].ts == T0 + 1
    # A shorter copy of the one flooded is still flooded (same ts as the last flooded);
    # it arrives at another node that had not yet seen the second.
    r2 = router(A, B, C)
    r2.on_announce(admitted(first, hops=3), A, NOW)
    r2.on_announce(admitted(second, hops=3), A, NOW + 100)
    # ... while at this node the first's shorter copy is no news any more (second is
    # fresher), so it is not flooded either:
    result, _, actions = r2.on_announce(admitted(first, hops=1), B, NOW + 200)
    assert result.outcome is Outcome.DUPLICATE
    r3 = router(A, B, C)
    r3.on_announce(admitted(first, hops=3), A, NOW)
    result, _, actions = r3.on_announce(admitted(first, hops=1), B, NOW + 100)
    assert result.outcome is Outcome.ACCEPTED
    assert Flood((A, C), WireFrame(2, first)) in actions
    # Once the interval has passed, a fresher one is flooded again.
    third = announce(X_ID, ts=T0 + 2)
    _, _, actions = r.on_announce(admitted(third, hops=3), A, NOW + FLOOD_INTERVAL)
    assert Flood((B, C), WireFrame(4, third)) in actions
    # ... and the interval counts from that flood.
    fourth = announce(X_ID, ts=T0 + 3)
    _, _, actions = r.on_announce(admitted(fourth, hops=3), A, NOW + 2 * FLOOD_INTERVAL - 1)
    assert actions == []


def test_the_flood_limit_is_per_origin() -> None:
    r = router(A, B)
    _, _, actions = r.on_announce(admitted(announce(X_ID), hops=1), A, NOW)
    assert any(isinstance(a, Flood) for a in actions)
    _, _, actions = r.on_announce(admitted(announce(Y_ID), hops=1), A, NOW + 1)
    assert any(isinstance(a, Flood) for a in actions)


def test_the_flood_limit_is_forgotten_with_the_origins_routes() -> None:
    r = router(A, B, ttl=1000, flood_interval=10_000)
    r.on_announce(admitted(announce(X_ID, ts=T0)), A, NOW)
    assert r.tick(NOW + 1000) == [Reroute(X, None)]
    _, _, actions = r.on_announce(admitted(announce(X_ID, ts=T0 + 1)), A, NOW + 2000)
    assert any(isinstance(a, Flood) for a in actions)


def test_an_unreadable_address_is_rejected() -> None:
    r = router(A, B)
    result, address_, actions = r.on_announce(
        admitted(announce(X_ID, body=b"not an envelope")), A, NOW
    )
    assert rejection(result).code is Reason.MALFORMED
    assert (address_, actions) == (None, [])
    assert X not in r.table


def test_an_announce_carrying_a_frame_instead_of_an_address_is_rejected() -> None:
    r = router(A, B)
    item = admitted(announce(X_ID, body=message(B)))
    result, address_, _ = r.on_announce(item, A, NOW)
    assert rejection(result).code is Reason.WRONG_PURPOSE
    assert address_ is None


def test_an_expired_address_is_rejected() -> None:
    r = router(A, B)
    item = admitted(announce(X_ID, body=address(X_ID, exp=NOW).envelope))
    result, address_, _ = r.on_announce(item, A, NOW)
    assert rejection(result).code is Reason.EXPIRED
    assert address_ is None
    assert X not in r.table


def test_the_address_must_be_the_origins() -> None:
    r = router(A, B)
    item = admitted(announce(X_ID, body=address(Y_ID).envelope))
    result, address_, actions = r.on_announce(item, A, NOW)
    assert rejection(result).code is Reason.MALFORMED
    assert result.words == f"announce from {X.short} carries the address of {Y.short}"
    assert (address_, actions) == (None, [])
    assert X not in r.table
    assert Y not in r.table


def test_a_hello_from_its_origin_is_greeted_back_at_most_once_per_interval() -> None:
    r = router(A, B)
    hello = announce(A_ID, hello=True)
    result, _, actions = r.on_announce(admitted(hello), A, NOW)
    assert result.outcome is Outcome.ACCEPTED
    assert actions == [Greet(A, hello=False), Flood((B,), WireFrame(1, hello))]
    again = announce(A_ID, ts=T0 + 1, hello=True)
    _, _, actions = r.on_announce(admitted(again), A, NOW + FLOOD_INTERVAL - 1)
    assert Greet(A, hello=False) not in actions
    later = announce(A_ID, ts=T0 + 2, hello=True)
    _, _, actions = r.on_announce(admitted(later), A, NOW + FLOOD_INTERVAL - 1 + FLOOD_INTERVAL)
    assert actions[0] == Greet(A, hello=False)
    # A neighbour met again (removed, then added) is greeted back at once.
    r.remove_neighbour(A, Role.PEER, NOW + 3 * FLOOD_INTERVAL)
    r.add_neighbour(A, Role.PEER, NOW + 3 * FLOOD_INTERVAL)
    newest = announce(A_ID, ts=T0 + 3, hello=True)
    _, _, actions = r.on_announce(admitted(newest), A, NOW + 3 * FLOOD_INTERVAL)
    assert actions[0] == Greet(A, hello=False)


def test_a_hello_too_soon_is_greeted_back_at_the_first_tick_after_the_interval() -> None:
    r = router(A, B)
    r.on_announce(admitted(announce(A_ID, hello=True)), A, NOW)
    fresher = announce(A_ID, ts=T0 + 1, hello=True)
    _, _, actions = r.on_announce(admitted(fresher), A, NOW + 1)
    assert not any(isinstance(a, Greet) for a in actions)
    assert r.tick(NOW + FLOOD_INTERVAL - 1) == []
    # The fresher announce, too soon to flood on at once, goes with the greeting.
    assert r.tick(NOW + FLOOD_INTERVAL) == [
        Flood((B,), WireFrame(1, fresher)),
        Greet(A, hello=False),
    ]
    assert r.tick(NOW + 2 * FLOOD_INTERVAL) == []  # answered once
    # That greeting counts: another hello right after it waits again.
    _, _, actions = r.on_announce(
        admitted(announce(A_ID, ts=T0 + 2, hello=True)), A, NOW + FLOOD_INTERVAL + 1
    )
    assert not any(isinstance(a, Greet) for a in actions)
    # A hello answered in time cancels the one pending.
    _, _, actions = r.on_announce(
        admitted(announce(A_ID, ts=T0 + 3, hello=True)), A, NOW + 2 * FLOOD_INTERVAL
    )
    assert actions[0] == Greet(A, hello=False)
    assert r.tick(NOW + 4 * FLOOD_INTERVAL) == []


def test_what_pacing_holds_back_says_when_it_may_go_and_goes_then() -> None:
    """:meth:`Router.release` sends the fresher announce and the greeting held back as
    soon as the flood interval is over (the runtime calls it at ``release_due``), not
    at the next tick; after them nothing is due."""
    r = router(A, B)
    assert r.release_due is None
    r.on_announce(admitted(announce(A_ID, hello=True)), A, NOW)
    assert r.release_due is None  # greeted back and flooded on at once
    fresher = announce(A_ID, ts=T0 + 1, hello=True)
    r.on_announce(admitted(fresher), A, NOW + 1)
    assert r.release_due == NOW + FLOOD_INTERVAL
    assert r.release(NOW + FLOOD_INTERVAL - 1) == []
    assert r.release_due == NOW + FLOOD_INTERVAL
    assert r.release(NOW + FLOOD_INTERVAL) == [
        Flood((B,), WireFrame(1, fresher)),
        Greet(A, hello=False),
    ]
    assert r.release_due is None
    assert r.tick(NOW + 2 * FLOOD_INTERVAL) == []  # sent once


def test_a_pending_greeting_back_goes_with_the_neighbour() -> None:
    r = router(A, B)
    r.on_announce(admitted(announce(A_ID, hello=True)), A, NOW)
    r.on_announce(admitted(announce(A_ID, ts=T0 + 1, hello=True)), A, NOW + 1)
    r.remove_neighbour(A, Role.PEER, NOW + 2)
    assert r.tick(NOW + FLOOD_INTERVAL) == []


def test_a_hello_passed_on_is_not_greeted_back() -> None:
    r = router(A, B)
    _, _, actions = r.on_announce(admitted(announce(X_ID, hello=True), hops=1), A, NOW)
    assert not any(isinstance(a, Greet) for a in actions)
    # ... nor one without hello from the origin itself.
    _, _, actions = r.on_announce(admitted(announce(B_ID)), B, NOW)
    assert not any(isinstance(a, Greet) for a in actions)


def test_a_refused_hello_is_not_greeted_back_and_does_not_count() -> None:
    r = router(A, B)
    bad = announce(A_ID, body=address(Y_ID).envelope, hello=True)
    result, _, actions = r.on_announce(admitted(bad), A, NOW)
    assert rejection(result).code is Reason.MALFORMED
    assert actions == []
    # The next, good hello is answered: the refused one did not use up the interval.
    _, _, actions = r.on_announce(admitted(announce(A_ID, hello=True)), A, NOW + 1)
    assert Greet(A, hello=False) in actions


# -- neighbours, greeting ---------------------------------------------------------------


def test_a_new_neighbour_is_greeted_and_frames_for_it_rerouted() -> None:
    r = router()
    assert r.add_neighbour(A, Role.PEER, T0) == [Greet(A), Reroute(A, A)]
    assert r.is_neighbour(A)
    assert r.add_neighbour(A, Role.RELAY, T0) == []  # a new role, not a new neighbour
    assert r.add_neighbour(LOCAL, Role.PEER, T0) == []  # never our own neighbour
    assert not r.is_neighbour(LOCAL)


def test_a_new_neighbour_that_was_reachable_through_another() -> None:
    r = router(A)
    learn(r, B, A, hops=2)
    # Frames for B go to B; any that came from B go on the old way, through A.
    assert r.add_neighbour(B, Role.ATTACHED, NOW) == [Greet(B), Reroute(B, B, instead=A)]


def test_removing_a_neighbour_forgets_its_routes() -> None:
    r = router(A, B)
    learn(r, X, A, hops=2)
    learn(r, X, B, hops=2)
    learn(r, Y, A, hops=2)
    learn(r, Z, A, hops=2)
    learn(r, Z, B, hops=3)  # the same announce, longer: it may come back through us
    learn(r, A, B, hops=4)
    r.add_neighbour(A, Role.RELAY, T0)
    assert r.remove_neighbour(A, Role.PEER, NOW) == []  # still a relay
    assert r.next_hop(X, NOW) == A
    expected = sorted(
        [Reroute(X, B), Reroute(Y, None), Reroute(Z, None), Reroute(A, B)],
        key=lambda a: a.dst.raw,
    )
    assert r.remove_neighbour(A, Role.RELAY, NOW) == expected
    assert not r.is_neighbour(A)
    assert r.table.destinations_via(A) == set()
    assert r.remove_neighbour(A, Role.RELAY, NOW) == []


def test_greeting_passes_on_the_best_routes_but_not_the_neighbours_own() -> None:
    r = router(A, B, C)
    via_a = announce(X_ID)
    r.on_announce(admitted(via_a, hops=1), A, NOW)
    via_b = announce(Y_ID)
    r.on_announce(admitted(via_b, hops=0), B, NOW)
    # B's own announce and routes through B are not sent back to B.
    b_own = announce(B_ID)
    r.on_announce(admitted(b_own), B, NOW)
    assert r.greeting(B, NOW) == [WireFrame(2, via_a)]
    assert sorted(r.greeting(C, NOW), key=lambda w: w.envelope) == sorted(
        [WireFrame(2, via_a), WireFrame(1, via_b), WireFrame(1, b_own)],
        key=lambda w: w.envelope,
    )
    # A second way to Y, of an older announce: not feasible, not passed on to B.
    older = announce(Y_ID, ts=T0 - 1)
    r.on_announce(admitted(older, hops=3), C, NOW)
    assert r.greeting(B, NOW) == [WireFrame(2, via_a)]
    # The same announce through C, as short: passed on to B; B's to everyone else.
    r.on_announce(admitted(via_b, hops=0), C, NOW)
    assert WireFrame(1, via_b) in r.greeting(B, NOW)
    assert WireFrame(1, via_b) in r.greeting(A, NOW)
    assert r.table.best(Y, now=NOW, avoid=A) == r.table.best(Y, now=NOW)
    best = r.table.best(Y, now=NOW)
    assert best is not None
    assert best.via == B
    # Lapsed routes and routes without an announce are not passed on.
    assert r.greeting(A, NOW + TTL) == []
    learn(r, Z, C, announce=b"")
    assert all(w.envelope != b"" for w in r.greeting(A, NOW))


# -- link feedback and time -------------------------------------------------------------


def by_dst(*actions: Reroute) -> list[Reroute]:
    return sorted(actions, key=lambda a: a.dst.raw)


def test_a_link_going_down_reroutes_around_it_and_back() -> None:
    r = router(A, B)
    learn(r, X, A, hops=2)
    learn(r, X, B, hops=2)  # a diamond: as short through B
    learn(r, Y, A, hops=2)
    learn(r, Z, A, hops=2)
    learn(r, Z, B, hops=4)  # longer through B: not feasible
    assert r.next_hop(X, NOW) == A
    actions = take_down(r, A, NOW)
    # Y has nowhere else, Z nowhere feasible: they stay with A (held there); A too.
    # X's go to B, except those that came from B: they wait for A.
    assert actions == by_dst(Reroute(X, B, instead=A), Reroute(Y, A), Reroute(Z, A), Reroute(A, A))
    # Further failures while DOWN change nothing.
    assert r.send_failed(A, NOW + 2 * DOWN_AFTER, "refused")[1] == []
    # A send that works brings it back.
    back = r.sent_ok(A, NOW + 3 * DOWN_AFTER)
    assert back == by_dst(Reroute(X, A, instead=B), Reroute(Y, A), Reroute(Z, A), Reroute(A, A))
    assert r.sent_ok(A, NOW + 3 * DOWN_AFTER) == []  # already up


def test_hearing_from_a_down_neighbour_wakes_it_and_reroutes_back() -> None:
    r = router(A, B)
    learn(r, X, A, hops=2)
    learn(r, X, B, hops=2)
    take_down(r, A, NOW)
    assert r.heard_from(A, NOW + DOWN_AFTER + 1) == [
        Wake(A),
        *sorted([Reroute(X, A, instead=B), Reroute(A, A)], key=lambda a: a.dst.raw),
    ]
    assert r.heard_from(A, NOW + DOWN_AFTER + 2) == []  # up already: nothing to do


def test_hearing_from_a_backing_off_neighbour_only_wakes_it() -> None:
    r = router(A)
    wait, actions = r.send_failed(A, NOW, "refused")
    assert actions == []
    assert wait > 0
    assert r.heard_from(A, NOW + 1) == [Wake(A)]
    assert r.heard_from(C, NOW + 1) == []  # a stranger


def test_retry_after_is_passed_to_the_link() -> None:
    r = router(A)
    assert r.send_failed(A, NOW, "429", retry_after_ms=7_000) == (7_000, [])


def test_expiry_reroutes() -> None:
    r = router(A, B)
    learn(r, X, A, hops=2, expires=NOW + 100)
    learn(r, X, B, hops=2, expires=NOW + 200)
    learn(r, Y, B, hops=3, expires=NOW + 300)
    assert r.tick(NOW + 99) == []
    assert r.tick(NOW + 100) == [Reroute(X, B)]
    assert r.tick(NOW + 200) == [Reroute(X, None)]
    assert r.tick(NOW + 300) == [Reroute(Y, None)]
    assert len(r.table) == 0


def test_expiry_of_the_shortest_copy_holds_frames_until_a_fresher_announce() -> None:
    r = router(A, B)
    learn(r, X, A, hops=2, expires=NOW + 100)
    learn(r, X, B, hops=3, expires=NOW + 200)  # the same announce, longer
    assert r.tick(NOW + 100) == [Reroute(X, None)]
    fresher = announce(X_ID, ts=T0 + 1)
    result, _, actions = r.on_announce(admitted(fresher, hops=2), B, NOW + 150)
    assert result.outcome is Outcome.ACCEPTED
    assert Reroute(X, B) in actions


def test_expiry_of_every_copy_of_the_freshest_falls_back_to_an_older_one() -> None:
    r = router(A, B, C)
    learn(r, X, A, ts=T0 + 1, hops=2, expires=NOW + 100)
    learn(r, X, B, ts=T0, hops=4, expires=NOW + 300)
    learn(r, X, C, ts=T0, hops=5, expires=NOW + 300)
    take_down(r, B)
    assert r.next_hop(X, NOW + 99) == A
    # A's copy lapses: feasibility starts again from B's and C's, the older announce;
    # B is DOWN, and C's copy is longer than B's: held for B.
    assert r.tick(NOW + 100) == [Reroute(X, B)]
    assert r.next_hop(X, NOW + 100, came_from=B) is None
    r.sent_ok(B, NOW + 101)
    assert r.next_hop(X, NOW + 101) == B


def test_routes_view() -> None:
    r = router(A, B, C)
    learn(r, X, A, hops=3)
    learn(r, X, B, hops=2)
    learn(r, Y, C, hops=2, expires=NOW)  # lapsed, not yet expired by a tick
    learn(r, A, A, hops=1)  # A's own announce
    learn(r, B, A, hops=2)  # a second way to B
    take_down(r, C)
    routes = r.routes(NOW)
    by_dst = {route.dst: route for route in routes}
    assert set(by_dst) == {X, A, B, C}
    assert (by_dst[X].via, by_dst[X].hops) == (B, 2)
    assert (by_dst[A].via, by_dst[A].hops, by_dst[A].ts) == (A, 1, T0)
    assert (by_dst[B].via, by_dst[B].hops, by_dst[B].ts) == (B, 1, 0)  # direct, no announce
    assert (by_dst[C].via, by_dst[C].hops) == (C, 1)  # DOWN, but nothing else is left
    assert [route.hops for route in routes] == sorted(route.hops for route in routes)
    # A DOWN neighbour reachable another way is listed by that way.
    learn(r, C, A, hops=3)
    by_dst = {route.dst: route for route in r.routes(NOW)}
    assert (by_dst[C].via, by_dst[C].hops) == (A, 3)


# -- many routers -------------------------------------------------------------------------

IDENTITIES = [crypto.Identity(bytes([100 + n]) * 32) for n in range(12)]
_FRAME_CACHE: dict[bytes, crypto.Frame] = {}


@dataclasses.dataclass(frozen=True)
class Walk:
    """Where a frame starting at ``path[0]`` went, following next hops alone: it
    ``reached`` its destination, is ``held`` at ``path[-1]`` (no next hop), ``waits``
    there for ``blocked`` (a DOWN neighbour: it goes once the link is back), or went
    round a ``loop`` (``path[-1]`` was visited before)."""

    path: list[int]
    end: Literal["reached", "held", "waits", "loop"]
    blocked: int | None = None


@dataclasses.dataclass
class Mesh:
    """N routers on a graph, with a synchronous announce flood between them."""

    edges: set[frozenset[int]]
    routers: list[Router]
    order: random.Random
    now: int = T0

    @classmethod
    def build(cls, n: int, edges: set[frozenset[int]], order: random.Random) -> Mesh:
        routers = [
            Router(
                IDENTITIES[i].node_id,
                rng=random.Random(i),
                config=RouterConfig(route_ttl_ms=TTL, flood_interval_ms=FLOOD_INTERVAL),
            )
            for i in range(n)
        ]
        for r in routers:
            r.links.down_after_ms = DOWN_AFTER
        mesh = cls(edges, routers, order)
        for edge in edges:
            i, j = sorted(edge)
            routers[i].add_neighbour(routers[j].local, Role.PEER, T0)
            routers[j].add_neighbour(routers[i].local, Role.PEER, T0)
        return mesh

    def index(self, node: crypto.NodeId) -> int:
        return next(i for i, r in enumerate(self.routers) if r.local == node)

    def neighbours(self, i: int) -> set[int]:
        return {j for edge in self.edges if i in edge for j in edge if j != i}

    def flood(self, ts: int) -> None:
        """Every node announces itself to its usable neighbours; deliver until quiet, in
        a random order (copies overtake each other as they would on real links)."""
        pending: list[tuple[int, int, WireFrame]] = []
        for i, r in enumerate(self.routers):
            origin = IDENTITIES[i]
            envelope = announce(origin, ts=ts, hops=crypto.MAX_HOPS, exp=ts + TTL)
            for link in r.links:
                if link.state is not LinkState.DOWN:
                    pending.append((self.index(link.node), i, WireFrame(0, envelope)))
        while pending:
            to, sender, wire = pending.pop(self.order.randrange(len(pending)))
            frame = _FRAME_CACHE.get(wire.envelope)
            if frame is None:
                frame = _FRAME_CACHE[wire.envelope] = crypto.Frame.open(wire.envelope)
            item = Admitted(frame, wire.envelope, wire.hops + 1)
            result, _, actions = self.routers[to].on_announce(
                item, self.routers[sender].local, self.now
            )
            assert result.ok, result
            for action in actions:
                if isinstance(action, Flood):
                    pending.extend((self.index(node), to, action.wire) for node in action.to)

    def walk(self, src: int, dst: int, *, came_from: bool) -> Walk:
        """Follow next_hop from ``src`` towards ``dst`` as a frame would (passing
        ``came_from`` on if asked), until it arrives, stops, or repeats a node."""
        target = self.routers[dst].local
        path = [src]
        previous: crypto.NodeId | None = None
        while path[-1] != dst:
            here = self.routers[path[-1]]
            hop = here.next_hop(target, self.now, came_from=previous if came_from else None)
            if hop is None:
                return Walk(path, "held")
            nxt = self.index(hop)
            assert nxt in self.neighbours(path[-1]), "a next hop that is not a neighbour"
            if not here.links.usable(hop):
                return Walk(path, "waits", nxt)
            previous = here.local
            path.append(nxt)
            if path.count(nxt) > 1:
                return Walk(path, "loop")
        return Walk(path, "reached")

    def take_down(self, i: int, j: int) -> None:
        """Sends over the link i-j fail, on both sides, until both hold it DOWN."""
        a, b = self.routers[i], self.routers[j]
        for r, other in ((a, b.local), (b, a.local)):
            r.send_failed(other, self.now, "refused")
            r.send_failed(other, self.now + DOWN_AFTER, "refused")
            assert not r.links.usable(other)
        self.now += DOWN_AFTER


class Fifo(random.Random):
    """Copies delivered in the order they were sent (breadth first)."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 0


class Lifo(random.Random):
    """The copy sent last delivered first (depth first: the long way round first)."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return start - 1


def distances(n: int, edges: set[frozenset[int]], src: int) -> dict[int, int]:
    dist = {src: 0}
    queue = collections.deque([src])
    while queue:
        i = queue.popleft()
        for edge in edges:
            if i in edge:
                (j,) = edge - {i}
                if j not in dist:
                    dist[j] = dist[i] + 1
                    queue.append(j)
    return dist


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, set[frozenset[int]]]:
    """A random connected graph: a random spanning tree plus random extra edges."""
    n = draw(st.integers(min_value=2, max_value=12))
    edges = {frozenset({i, draw(st.integers(min_value=0, max_value=i - 1))}) for i in range(1, n)}
    pairs = [frozenset({i, j}) for i in range(n) for j in range(i)]
    edges |= set(draw(st.lists(st.sampled_from(pairs), max_size=2 * n)))
    return n, edges


def ring(n: int) -> set[frozenset[int]]:
    return {frozenset({i, (i + 1) % n}) for i in range(n)}


def check_converged(mesh: Mesh, edges: set[frozenset[int]]) -> None:
    """Every node reaches every node ``edges`` connect it to by a shortest path over
    them, following next hops alone, whether or not frames say where they came from.
    Nodes it is cut off from are not reached, and not by a loop: frames are held, or
    wait at a DOWN link."""
    n = len(mesh.routers)
    for src in range(n):
        dist = distances(n, edges, src)
        for dst in range(n):
            if dst == src:
                continue
            for came_from in (False, True):
                walk = mesh.walk(src, dst, came_from=came_from)
                if dst in dist:
                    assert walk.end == "reached", f"{src} -> {dst}: {walk}"
                    assert len(walk.path) - 1 == dist[dst], f"{src} -> {dst}: {walk}, not shortest"
                else:
                    assert walk.end in ("held", "waits"), f"{src} -> {dst}: {walk}"


def check_loop_free(mesh: Mesh, down: set[frozenset[int]]) -> None:
    """No frame goes round a loop: from any node to any other it reaches its destination,
    is held, or waits at one end of a ``down`` link, whether or not frames say where
    they came from."""
    n = len(mesh.routers)
    for src, dst in itertools.permutations(range(n), 2):
        for came_from in (False, True):
            walk = mesh.walk(src, dst, came_from=came_from)
            assert walk.end != "loop", f"{src} -> {dst}: {walk}"
            assert len(set(walk.path)) == len(walk.path), f"{src} -> {dst}: {walk}"
            if walk.end == "waits":
                assert walk.blocked is not None
                assert frozenset({walk.path[-1], walk.blocked}) in down, f"{walk}"


def feasible(r: Router, dst: crypto.NodeId) -> list[Route]:
    """The feasible candidates for ``dst``, worked out from the candidates alone: the
    copies of the freshest announce held that are as short as its shortest. (Each
    neighbour's candidate keeps its shortest copy of an announce, so this holds as long
    as no candidate lapsed or was forgotten: true in these meshes.)"""
    held = r.table.candidates(dst)
    if not held:
        return []
    ts = max(c.ts for c in held)
    distance = min(c.hops for c in held if c.ts == ts)
    return [c for c in held if c.ts == ts and c.hops <= distance]


MESH_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@MESH_SETTINGS
@given(graphs(), st.randoms(use_true_random=False))
def test_converged_routes_are_shortest_and_loop_free(
    graph: tuple[int, set[frozenset[int]]], order: random.Random
) -> None:
    n, edges = graph
    mesh = Mesh.build(n, edges, order)
    mesh.flood(T0)
    check_converged(mesh, edges)


@pytest.mark.parametrize("order", [Fifo, Lifo, random.Random])
@pytest.mark.parametrize("n", [3, 4, 7, 12])
def test_converged_routes_on_a_ring(n: int, order: type[random.Random]) -> None:
    mesh = Mesh.build(n, ring(n), order(n))
    mesh.flood(T0)
    check_converged(mesh, ring(n))


@MESH_SETTINGS
@given(graphs(), st.randoms(use_true_random=False))
def test_routes_stay_loop_free_when_fresher_announces_are_not_flooded(
    graph: tuple[int, set[frozenset[int]]], order: random.Random
) -> None:
    """A second round within the flood interval reaches only the origins' neighbours:
    nodes then disagree on the freshest announce, and must still not loop."""
    n, edges = graph
    mesh = Mesh.build(n, edges, order)
    mesh.flood(T0)
    mesh.now += FLOOD_INTERVAL - 1
    mesh.flood(T0 + 1)
    check_converged(mesh, edges)


def unchanged_paths(mesh: Mesh, down: frozenset[int]) -> dict[tuple[int, int], list[int]]:
    """The converged paths that do not cross the ``down`` edge."""
    n = len(mesh.routers)
    paths = {}
    for src, dst in itertools.permutations(range(n), 2):
        walk = mesh.walk(src, dst, came_from=False)
        assert walk.end == "reached", walk
        if not any(frozenset(hop) == down for hop in itertools.pairwise(walk.path)):
            paths[src, dst] = walk.path
    return paths


@MESH_SETTINGS
@given(graphs(), st.randoms(use_true_random=False), st.data())
def test_a_link_down_never_loops_and_is_routed_around(
    graph: tuple[int, set[frozenset[int]]], order: random.Random, data: st.DataObject
) -> None:
    n, edges = graph
    mesh = Mesh.build(n, edges, order)
    mesh.flood(T0)
    edge = data.draw(st.sampled_from(sorted(edges, key=sorted)))
    i, j = sorted(edge)
    before = unchanged_paths(mesh, edge)
    mesh.take_down(i, j)
    # Right away, before any new announce: no frame goes round a loop.
    check_loop_free(mesh, {edge})
    # Paths that did not cross the link are as they were.
    for (src, dst), path in before.items():
        assert mesh.walk(src, dst, came_from=True) == Walk(path, "reached")
    # Its two ends send nothing over it while they hold a usable feasible route (an
    # equal-hop alternative), and use one then.
    for here, there in ((i, j), (j, i)):
        r = mesh.routers[here]
        for dst in range(n):
            target = mesh.routers[dst].local
            alternatives = [c.via for c in feasible(r, target) if r.links.usable(c.via)]
            if dst != here and alternatives:
                hop = r.next_hop(target, mesh.now)
                assert hop != mesh.routers[there].local
                assert hop in alternatives or hop == target
    # After the next announces (which do not cross the DOWN link), routes avoid it:
    # shortest over the links left to every node they still connect.
    mesh.now += FLOOD_INTERVAL
    mesh.flood(mesh.now)
    check_converged(mesh, edges - {edge})
    check_loop_free(mesh, {edge})


@pytest.mark.parametrize("order", [Fifo, Lifo, random.Random])
@pytest.mark.parametrize("n", [4, 7, 12])
def test_a_link_down_on_a_ring(n: int, order: type[random.Random]) -> None:
    mesh = Mesh.build(n, ring(n), order(n))
    mesh.flood(T0)
    down = frozenset({0, n - 1})
    before = unchanged_paths(mesh, down)
    mesh.take_down(0, n - 1)
    for (src, dst), path in before.items():
        assert mesh.walk(src, dst, came_from=True) == Walk(path, "reached")
    check_loop_free(mesh, {down})
    # Each end's copy of the other's announce that came the long way round is longer
    # than the one that came over the link, so not feasible: each end holds frames for
    # the other at the DOWN link, until a fresher announce comes the long way.
    for src, dst in ((0, n - 1), (n - 1, 0)):
        assert mesh.walk(src, dst, came_from=True) == Walk([src], "waits", dst)
    mesh.now += FLOOD_INTERVAL
    mesh.flood(mesh.now)
    check_converged(mesh, ring(n) - {down})
    assert mesh.walk(0, n - 1, came_from=True) == Walk(list(range(n)), "reached")


def test_a_copy_that_came_back_round_is_not_taken_when_the_link_goes_down() -> None:
    # 3 hangs off 2 alone; 0, 1 and 2 are a triangle. Delivered depth first, 3's
    # announce comes back to 2 round the triangle (3, 2, 1, 0, 2): a route to 3 through 2
    # itself. Taking it when 2-3 goes DOWN would send frames for 3 round the triangle.
    edges = {frozenset(e) for e in ((0, 1), (1, 2), (0, 2), (2, 3))}
    mesh = Mesh.build(4, edges, Lifo())
    mesh.flood(T0)
    two, three = mesh.routers[2], mesh.routers[3].local
    looped = [c for c in two.table.candidates(three) if c.via != three]
    assert [c.hops for c in looped] == [4]
    mesh.take_down(2, 3)
    assert two.next_hop(three, mesh.now) == three  # held there, for the link to come back
    for came_from in (False, True):
        assert mesh.walk(2, 3, came_from=came_from) == Walk([2], "waits", 3)
        assert mesh.walk(0, 3, came_from=came_from) == Walk([0, 2], "waits", 3)
        assert mesh.walk(1, 3, came_from=came_from) == Walk([1, 2], "waits", 3)
    check_loop_free(mesh, {frozenset({2, 3})})
