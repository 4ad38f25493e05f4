"""A fresher announce that came within the flood interval of its origin's last flood is
flooded on once the interval is over (at a tick), not dropped: otherwise it reaches
only the nodes that had not flooded the one before, and nodes far from them hold the
freshest announce only by a long way round (fresher beats shorter) until the next one.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import crypto
from mesh import Admitted, Flood, Role, Router, RouterConfig, WireFrame, admit

T0 = 1_700_000_000_000
NOW = T0 + 1000
TTL = 600_000
FLOOD_INTERVAL = 5_000
_OTHERS = sorted(
    (crypto.Identity(bytes([n]) * 32) for n in range(2, 6)), key=lambda i: i.node_id.raw
)
A_ID, B_ID, C_ID, X_ID = _OTHERS
A, B, C, X = (i.node_id for i in _OTHERS)
_ids = itertools.count(1)


def announce(origin: crypto.Identity, *, ts: int) -> bytes:
    address = crypto.sign_address(
        origin, seq=1, endpoints=(f"http://{origin.node_id.short}.example/",), exp=T0 + 10**9
    )
    frame = crypto.Frame(
        kind=crypto.Kind.ANN,
        src=origin.node_id,
        id=next(_ids).to_bytes(16, "big"),
        ts=ts,
        exp=ts + TTL,
        hops=8,
        body=address.envelope,
    )
    return frame.seal(origin)


def admitted(envelope: bytes, hops: int) -> Admitted:
    checked = admit(WireFrame(hops, envelope), now=NOW)
    assert isinstance(checked, Admitted), checked
    return checked


def router() -> Router:
    r = Router(
        crypto.Identity(bytes([1]) * 32).node_id,
        rng=random.Random(0),
        config=RouterConfig(route_ttl_ms=TTL, flood_interval_ms=FLOOD_INTERVAL),
    )
    for node in (A, B, C):
        r.add_neighbour(node, Role.PEER, T0)
    return r


def floods(actions: Sequence[object]) -> list[object]:
    return [a for a in actions if isinstance(a, Flood)]


def test_a_fresher_announce_within_the_interval_is_flooded_after_it() -> None:
    r = router()
    first, second = announce(X_ID, ts=T0), announce(X_ID, ts=T0 + 1)
    _, _, actions = r.on_announce(admitted(first, hops=3), A, NOW)
    assert floods(actions) == [Flood((B, C), WireFrame(4, first))]
    _, _, actions = r.on_announce(admitted(second, hops=5), B, NOW + 100)
    assert floods(actions) == []  # within the interval: not now
    assert floods(r.tick(NOW + FLOOD_INTERVAL - 1)) == []
    # Before then a shorter copy of it came: that one goes.
    _, _, actions = r.on_announce(admitted(second, hops=2), C, NOW + 200)
    assert floods(actions) == []
    assert floods(r.tick(NOW + FLOOD_INTERVAL)) == [Flood((A, B), WireFrame(3, second))]
    # Once.
    assert floods(r.tick(NOW + 3 * FLOOD_INTERVAL)) == []
    # And the interval counts from that flood.
    third = announce(X_ID, ts=T0 + 2)
    _, _, actions = r.on_announce(admitted(third, hops=2), A, NOW + FLOOD_INTERVAL + 1)
    assert floods(actions) == []
    assert floods(r.tick(NOW + 2 * FLOOD_INTERVAL - 1)) == []
    assert floods(r.tick(NOW + 2 * FLOOD_INTERVAL)) == [Flood((B, C), WireFrame(3, third))]


def test_an_announce_flooded_in_time_leaves_nothing_for_later() -> None:
    r = router()
    first, second = announce(X_ID, ts=T0), announce(X_ID, ts=T0 + 1)
    r.on_announce(admitted(first, hops=3), A, NOW)
    r.on_announce(admitted(second, hops=3), A, NOW + 100)
    third = announce(X_ID, ts=T0 + 2)
    _, _, actions = r.on_announce(admitted(third, hops=3), A, NOW + FLOOD_INTERVAL)
    assert floods(actions) == [Flood((B, C), WireFrame(4, third))]
    assert floods(r.tick(NOW + 3 * FLOOD_INTERVAL)) == []


def test_nothing_is_flooded_for_an_origin_whose_routes_lapsed() -> None:
    r = router()
    r.on_announce(admitted(announce(X_ID, ts=T0), hops=3), A, NOW)
    r.on_announce(admitted(announce(X_ID, ts=T0 + 1), hops=3), A, NOW + 100)
    assert floods(r.tick(NOW + TTL + 1)) == []
