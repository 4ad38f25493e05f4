"""The routing table (mesh.RoutingTable): which candidate wins, which are feasible, what
is news, expiry.

Plain calls with ``now`` in ms. The property test runs random learn / expire /
forget_via sequences against a model of the candidates (and of the freshest announce
and its shortest copy per destination) and checks ``best`` against a brute-force pick
over them. The loop-freedom this buys across many nodes is tested in test_engine.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import crypto
from mesh import Route, RoutingTable
from mesh._routes import DEFAULT_MAX_DESTINATIONS

A = crypto.NodeId(bytes([1]) * 32)
B = crypto.NodeId(bytes([2]) * 32)
C = crypto.NodeId(bytes([3]) * 32)
X = crypto.NodeId(bytes([10]) * 32)
Y = crypto.NodeId(bytes([11]) * 32)
Z = crypto.NodeId(bytes([12]) * 32)
T0 = 1_700_000_000_000
TTL = 60_000


def route(
    via: crypto.NodeId,
    *,
    dst: crypto.NodeId = X,
    ts: int = T0,
    hops: int = 2,
    learned: int = T0,
    expires: int | None = None,
) -> Route:
    return Route(
        dst=dst,
        via=via,
        ts=ts,
        hops=hops,
        learned=learned,
        expires=learned + TTL if expires is None else expires,
        announce=b"ann:" + via.raw[:1] + bytes([hops]),
    )


def table_with(*routes: Route, **kw: int) -> RoutingTable:
    table = RoutingTable(**kw)
    for each in routes:
        table.learn(each)
    return table


def only(*usable: crypto.NodeId) -> Callable[[crypto.NodeId], bool]:
    return lambda node: node in usable


NOW = T0 + 1


# -- choice -----------------------------------------------------------------------------


def test_an_empty_table() -> None:
    table = RoutingTable()
    assert table.max_destinations == DEFAULT_MAX_DESTINATIONS
    assert len(table) == 0
    assert X not in table
    assert table.best(X, now=NOW) is None
    assert table.candidates(X) == []
    assert table.all_routes() == []
    assert list(table) == []
    assert table.expire(NOW) == set()
    assert table.forget_via(A) == set()
    assert table.destinations_via(A) == set()


def test_freshest_wins_over_fewer_hops() -> None:
    fresh = route(B, ts=T0 + 1, hops=9)
    table = table_with(route(A, ts=T0, hops=1), fresh)
    assert table.best(X, now=NOW) == fresh


def test_then_fewest_hops() -> None:
    short = route(C, hops=2)
    table = table_with(route(A, hops=3), short, route(B, hops=4))
    assert table.best(X, now=NOW) == short


def test_then_lowest_neighbour_id() -> None:
    table = table_with(route(C), route(B), route(A))
    best = table.best(X, now=NOW)
    assert best is not None
    assert best.via == A
    assert [r.via for r in table.candidates(X)] == [A, B, C]
    assert route(A).key() == (-T0, 2, A.raw)


def test_expired_candidates_are_not_chosen() -> None:
    early = route(A, hops=2, expires=T0 + 100)
    late = route(B, hops=2, expires=T0 + 200)
    table = table_with(early, late)
    assert table.best(X, now=T0 + 99) == early
    assert table.best(X, now=T0 + 100) == late  # expires is the first moment it is gone
    assert table.best(X, now=T0 + 200) is None
    assert X in table  # still held until expire() runs


def test_a_lapsed_shortest_copy_still_bounds_the_longer_ones() -> None:
    # The shortest copy of the freshest announce lapses while a longer copy of the same
    # announce lives on: the longer one stays infeasible (it may have gone through this
    # node), so there is no route until a fresher announce comes.
    early = route(A, hops=1, expires=T0 + 100)
    late = route(B, hops=5, expires=T0 + 200)
    table = table_with(early, late)
    assert table.best(X, now=T0 + 99) == early
    assert table.best(X, now=T0 + 100) is None
    assert table.expire(T0 + 100) == {X}
    assert table.best(X, now=T0 + 100) is None
    fresher = route(B, ts=T0 + 1, hops=5, learned=T0 + 150)
    assert table.learn(fresher) is True
    assert table.best(X, now=T0 + 150) == fresher


def test_expire_drops_lapsed_candidates_and_empty_destinations() -> None:
    table = table_with(
        route(A, expires=T0 + 100),
        route(B, expires=T0 + 300),
        route(A, dst=Y, expires=T0 + 100),
        route(A, dst=Z, expires=T0 + 500),
    )
    assert table.expire(T0 + 99) == set()
    assert table.expire(T0 + 100) == {X, Y}
    assert [r.via for r in table.candidates(X)] == [B]
    assert Y not in table
    assert len(table) == 2
    assert table.expire(T0 + 300) == {X}
    assert list(table) == [Z]


def test_a_down_neighbours_route_is_the_fall_back() -> None:
    down_best = route(A, hops=2)
    equal = route(B, hops=2)
    longer = route(C, hops=3)  # not feasible: a copy of the same announce, longer
    table = table_with(down_best, equal, longer)
    assert table.best(X, now=NOW) == down_best
    assert table.best(X, now=NOW, usable=only(B, C)) == equal
    # Only the infeasible one is usable: the feasible DOWN ones are the fall-back (the
    # lowest id of them), never the longer copy.
    assert table.best(X, now=NOW, usable=only(C)) == down_best
    assert table.best(X, now=NOW, usable=only(A, C)) == down_best
    assert table.best(X, now=NOW, usable=only()) == down_best


def test_an_older_announce_is_not_feasible_while_a_fresher_one_is_held() -> None:
    fresh = route(A, ts=T0 + 5, hops=1)  # fresher and shorter, but DOWN
    stale = route(B, ts=T0, hops=1)  # usable, as short, but of an older announce
    table = table_with(fresh, stale)
    assert table.best(X, now=NOW, usable=only(B, C)) == fresh
    assert table.best(X, now=NOW, usable=only(B), avoid=A) is None


def test_an_expired_usable_route_does_not_beat_a_live_fall_back() -> None:
    table = table_with(route(A, expires=T0 + 10), route(B, hops=2, expires=T0 + 1000))
    best = table.best(X, now=T0 + 10, usable=only(A))
    assert best is not None
    assert best.via == B


def test_avoid_is_passed_over() -> None:
    table = table_with(route(A, hops=1), route(B, hops=1), route(C, hops=3))
    best = table.best(X, now=NOW, avoid=A)
    assert best is not None
    assert best.via == B
    # Even as the fall-back: a frame never goes straight back where it came from.
    best = table.best(X, now=NOW, usable=only(A, C), avoid=A)
    assert best is not None
    assert best.via == B
    assert table_with(route(A)).best(X, now=NOW, avoid=A) is None
    # With only the avoided one feasible, there is no route: the longer copy is not
    # taken instead.
    assert table_with(route(A, hops=1), route(C, hops=3)).best(X, now=NOW, avoid=A) is None


# -- learning and news ------------------------------------------------------------------


def test_news_is_a_fresher_announce_or_a_shorter_copy_of_the_same() -> None:
    table = RoutingTable()
    assert table.learn(route(A, hops=3)) is True  # the first copy
    assert table.learn(route(B, hops=3)) is False  # same announce, same length
    assert table.learn(route(C, hops=4)) is False  # same announce, longer
    assert table.learn(route(C, hops=2)) is True  # same announce, shorter
    assert table.learn(route(A, hops=2)) is False  # as short as the shortest: no news
    assert table.learn(route(B, ts=T0 - 1, hops=1)) is False  # older, however short
    assert table.learn(route(B, ts=T0 + 1, hops=9)) is True  # fresher, however long
    assert table.learn(route(A, ts=T0 + 1, hops=9)) is False
    assert table.learn(route(A, dst=Y)) is True  # another destination


def test_a_copy_not_news_is_still_a_candidate() -> None:
    table = table_with(route(A, hops=1))
    assert table.learn(route(B, ts=T0 - 1, hops=5)) is False
    assert [r.via for r in table.candidates(X)] == [A, B]
    # Held, but not feasible while a copy of the fresher announce is: A (DOWN) it is.
    best = table.best(X, now=NOW, usable=only(B))
    assert best is not None
    assert (best.via, best.ts) == (A, T0)
    # Once A's copy is gone, feasibility starts again from what is left: B's.
    table.forget_via(A)
    best = table.best(X, now=NOW, usable=only(B))
    assert best is not None
    assert (best.via, best.ts) == (B, T0 - 1)


def test_one_candidate_per_neighbour_the_freshest_copy() -> None:
    table = table_with(route(A, ts=T0 + 1, hops=4))
    table.learn(route(A, ts=T0, hops=1))  # older through the same neighbour: ignored
    table.learn(route(A, ts=T0 + 1, hops=5))  # same announce, longer: ignored
    assert table.candidates(X) == [route(A, ts=T0 + 1, hops=4)]
    shorter = route(A, ts=T0 + 1, hops=3)
    table.learn(shorter)
    assert table.candidates(X) == [shorter]
    fresher = route(A, ts=T0 + 2, hops=6)
    table.learn(fresher)
    assert table.candidates(X) == [fresher]


def test_the_same_copy_again_refreshes_the_candidate() -> None:
    table = table_with(route(A, learned=T0))
    again = route(A, learned=T0 + 5000)
    assert table.learn(again) is False
    (held,) = table.candidates(X)
    assert (held.learned, held.expires) == (T0 + 5000, T0 + 5000 + TTL)


def test_after_every_candidate_lapsed_an_announce_is_news_again() -> None:
    table = table_with(route(A, expires=T0 + 10))
    table.expire(T0 + 10)
    assert table.learn(route(B, learned=T0 + 20)) is True


def test_max_destinations_bounds_growth() -> None:
    table = table_with(route(A, dst=X), route(A, dst=Y), max_destinations=2)
    assert table.learn(route(A, dst=Z)) is False
    assert Z not in table
    assert len(table) == 2
    # Known destinations still learn.
    assert table.learn(route(B, dst=X, ts=T0 + 1)) is True
    assert [r.via for r in table.candidates(X)] == [B, A]
    # A slot freed by forgetting is taken again.
    table.forget_via(A)
    assert list(table) == [X]
    assert table.learn(route(A, dst=Z)) is True
    assert Z in table


def test_forget_via() -> None:
    table = table_with(route(A), route(B), route(A, dst=Y), route(C, dst=Z))
    assert table.destinations_via(A) == {X, Y}
    assert table.forget_via(A) == {X, Y}
    assert table.destinations_via(A) == set()
    assert [r.via for r in table.candidates(X)] == [B]
    assert Y not in table
    assert table.forget_via(A) == set()
    assert sorted((r.dst.raw, r.via.raw) for r in table.all_routes()) == [
        (X.raw, B.raw),
        (Z.raw, C.raw),
    ]
    # With no candidate left, its news record went too.
    assert table.learn(route(B, dst=Y, ts=T0 - 100)) is True


# -- feasibility ----------------------------------------------------------------------------
#
# This node is L; its neighbours are A, B and C; X is the destination.


def test_equal_hop_alternatives_are_used_when_the_best_goes_down() -> None:
    # A diamond: L - A - X and L - B - X, both 2 hops.
    via_a, via_b = route(A, hops=2), route(B, hops=2)
    table = table_with(via_a, via_b)
    assert table.best(X, now=NOW) == via_a  # the lower id
    assert table.best(X, now=NOW, usable=only(B)) == via_b  # A DOWN: B at once
    assert table.best(X, now=NOW, avoid=A) == via_b  # came from A: B
    assert table.best(X, now=NOW, usable=only()) == via_a  # both DOWN: wait for A
    assert table.best(X, now=NOW, usable=only(A), avoid=A) == via_b


def test_a_longer_alternative_waits_for_a_fresher_announce_along_it() -> None:
    short, long = route(A, hops=2), route(C, hops=4)
    table = table_with(short, long)
    assert table.best(X, now=NOW, usable=only(C)) == short  # held for A, not sent to C
    assert table.best(X, now=NOW, usable=only(C), avoid=A) is None
    # A fresher announce comes along the longer path: it is the one to use now, even
    # when A is back (A's copy is of the older announce).
    fresher = route(C, ts=T0 + 1, hops=4, learned=T0 + 10)
    assert table.learn(fresher) is True
    assert table.best(X, now=NOW + 10, usable=only(C)) == fresher
    assert table.best(X, now=NOW + 10) == fresher
    # Its copy through A, shorter, follows: A again, and C's longer copy is out.
    again = route(A, ts=T0 + 1, hops=2, learned=T0 + 20)
    assert table.learn(again) is True
    assert table.best(X, now=NOW + 20) == again
    assert table.best(X, now=NOW + 20, usable=only(C)) == again
    assert table.best(X, now=NOW + 20, avoid=A) is None


def test_a_copy_that_went_through_this_node_is_never_used() -> None:
    # X's announce reaches L through A at 2 hops; L floods it on to B, and it comes back
    # round through B at 4 hops (X, A, L, B, L): a route through L itself.
    table = table_with(route(A, hops=2, expires=T0 + 100))
    looped = route(B, hops=4, learned=T0 + 1, expires=T0 + 300)
    assert table.learn(looped) is False  # the same announce, longer: not news
    assert table.candidates(X)[-1] == looped
    assert table.best(X, now=NOW, usable=only(B)) == route(A, hops=2, expires=T0 + 100)
    assert table.best(X, now=NOW, avoid=A) is None
    # Nor once A's copy lapses, is expired, or A stops being a neighbour: a copy of the
    # freshest announce is still held (the looped one), so the distance stands.
    assert table.best(X, now=T0 + 100) is None
    assert table.best(X, now=T0 + 100, usable=only(B)) is None
    forgotten = table_with(route(A, hops=2), looped)
    assert forgotten.forget_via(A) == {X}
    assert forgotten.best(X, now=NOW) is None
    assert table.expire(T0 + 100) == {X}
    assert table.candidates(X) == [looped]
    assert table.best(X, now=T0 + 100) is None
    # Refreshed (the same copy again): still not used.
    table.learn(route(B, hops=4, learned=T0 + 200, expires=T0 + 400))
    assert table.best(X, now=T0 + 300) is None


def test_the_feasibility_distance_is_the_shortest_copy_ever_held() -> None:
    first = route(A, hops=3)
    table = table_with(first)
    assert table.best(X, now=NOW) == first
    shorter = route(B, hops=2, learned=T0 + 1)
    assert table.learn(shorter) is True
    assert table.best(X, now=NOW, usable=only(A)) == shorter  # A's 3 hops: not any more
    # B's copy goes; the distance stays what it was: A's copy is still too long.
    table.forget_via(B)
    assert table.candidates(X) == [first]
    assert table.best(X, now=NOW) is None
    # A shorter copy through the same neighbour replaces its longer one, and lowers it.
    table.learn(route(A, hops=1))
    table.learn(route(C, hops=2))
    assert table.best(X, now=NOW, usable=only(C)) == route(A, hops=1)


def test_when_every_copy_of_the_freshest_lapsed_feasibility_restarts() -> None:
    table = table_with(
        route(A, ts=T0 + 1, hops=2, expires=T0 + 100),
        route(B, ts=T0 + 1, hops=3, expires=T0 + 100),
        route(C, ts=T0, hops=5, expires=T0 + 500),
    )
    best = table.best(X, now=T0 + 99, usable=only(C))
    assert best is not None
    assert best.via == A  # DOWN, but the older announce through C is not feasible
    # Every copy of the freshest announce has lapsed: start again from what is left.
    older = route(C, ts=T0, hops=5, expires=T0 + 500)
    assert table.best(X, now=T0 + 100) == older
    assert table.best(X, now=T0 + 100, usable=only()) == older
    assert table.expire(T0 + 100) == {X}
    assert table.best(X, now=T0 + 100) == older
    # ... and within what is left, the same rule: a longer copy of it is not feasible.
    longer = route(A, ts=T0, hops=7, learned=T0 + 100, expires=T0 + 500)
    assert table.learn(longer) is False
    assert table.best(X, now=T0 + 100, usable=only(A)) == older
    assert table.best(X, now=T0 + 100, avoid=C) is None
    shorter = route(B, ts=T0, hops=4, learned=T0 + 100, expires=T0 + 500)
    assert table.learn(shorter) is False  # older than the freshest ever seen: not news
    assert table.best(X, now=T0 + 100) == shorter


# -- against a model ----------------------------------------------------------------------

VIAS = [A, B, C]
DSTS = [X, Y]


def better(r: Route, than: Route) -> bool:
    """The docstring's order, spelled out: fresher, then shorter, then lower id."""
    if r.ts != than.ts:
        return r.ts > than.ts
    if r.hops != than.hops:
        return r.hops < than.hops
    return r.via.raw < than.via.raw


def brute_best(
    candidates: list[Route],
    newest: tuple[int, int] | None,
    now: int,
    usable: set[crypto.NodeId],
    avoid: crypto.NodeId | None,
) -> Route | None:
    """The module docstring's rule, spelled out. ``newest``: the freshest announce ever
    learned for the destination and the fewest hops it came by (while it has
    candidates)."""
    live = [r for r in candidates if r.expires > now]
    if newest is not None and any(r.ts == newest[0] for r in live):
        ts, distance = newest
    elif live:  # every copy of the freshest lapsed: start again from what is left
        ts = max(r.ts for r in live)
        distance = min(r.hops for r in live if r.ts == ts)
    else:
        return None
    feasible = [r for r in live if r.ts == ts and r.hops <= distance and r.via != avoid]
    pool = [r for r in feasible if r.via in usable] or feasible
    winners = [r for r in pool if not any(better(o, r) for o in pool if o is not r)]
    assert len(winners) <= 1
    return winners[0] if winners else None


LEARN = st.tuples(
    st.just("learn"),
    st.sampled_from(DSTS),
    st.sampled_from(VIAS),
    st.integers(min_value=0, max_value=3),  # ts offset
    st.integers(min_value=1, max_value=4),  # hops
    st.integers(min_value=1, max_value=300),  # lifetime
)
EXPIRE = st.tuples(st.just("expire"))
FORGET = st.tuples(st.just("forget"), st.sampled_from(VIAS))
OPS = st.lists(
    st.tuples(st.one_of(LEARN, LEARN, EXPIRE, FORGET), st.integers(min_value=0, max_value=100)),
    max_size=40,
)
QUERIES = st.lists(
    st.tuples(
        st.frozensets(st.sampled_from(VIAS)),
        st.one_of(st.none(), st.sampled_from(VIAS)),
        st.integers(min_value=0, max_value=300),
    ),
    min_size=1,
    max_size=4,
)


@given(OPS, QUERIES, st.integers(min_value=1, max_value=3))
def test_learn_expire_and_best_match_a_model(
    ops: list[tuple[tuple[Any, ...], int]],
    queries: list[tuple[frozenset[crypto.NodeId], crypto.NodeId | None, int]],
    max_destinations: int,
) -> None:
    table = RoutingTable(max_destinations=max_destinations)
    model: dict[crypto.NodeId, dict[crypto.NodeId, Route]] = {}
    newest: dict[crypto.NodeId, tuple[int, int]] = {}
    now = T0
    for op, gap in ops:
        now += gap
        if op[0] == "learn":
            _, dst, via, dts, hops, life = op
            new = route(via, dst=dst, ts=T0 + dts, hops=hops, learned=now, expires=now + life)
            if dst not in model and len(model) >= max_destinations:
                expected_news = False
            else:
                held = model.setdefault(dst, {}).get(via)
                if (
                    held is None
                    or new.ts > held.ts
                    or (new.ts == held.ts and new.hops <= held.hops)
                ):
                    model[dst][via] = new
                seen = newest.get(dst)
                expected_news = (
                    seen is None or new.ts > seen[0] or (new.ts == seen[0] and new.hops < seen[1])
                )
                if expected_news:
                    newest[dst] = (new.ts, new.hops)
            assert table.learn(new) is expected_news
        elif op[0] == "expire":
            lost = set()
            for dst in list(model):
                for via in list(model[dst]):
                    if model[dst][via].expires <= now:
                        del model[dst][via]
                        lost.add(dst)
                if not model[dst]:
                    del model[dst]
                    newest.pop(dst, None)
            assert table.expire(now) == lost
        else:
            via = op[1]
            lost = {dst for dst in model if via in model[dst]}
            for dst in lost:
                del model[dst][via]
                if not model[dst]:
                    del model[dst]
                    newest.pop(dst, None)
            assert table.forget_via(via) == lost
        assert set(table) == set(model)
        for dst in DSTS:
            kept = list(model.get(dst, {}).values())
            assert table.candidates(dst) == sorted(kept, key=Route.key)
            assert table.destinations_via(A) == {d for d in model if A in model[d]}
            for usable, avoid, later in queries:
                at = now + later
                assert table.best(
                    dst, now=at, usable=usable.__contains__, avoid=avoid
                ) == brute_best(kept, newest.get(dst), at, set(usable), avoid)
