"""Neighbour links (mesh.Links): roles, and the UP / BACKING_OFF / DOWN state machine.

Plain calls with ``now`` in ms; jitter comes from a seeded RNG or from a fake one that
always draws the same factor, so the bounds of the back-off can be hit exactly.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from mesh import Link, Links, LinkState, Role
from mesh._links import DEFAULT_BACKOFF_INITIAL_MS, DEFAULT_BACKOFF_MAX_MS, DEFAULT_DOWN_AFTER_MS

A = crypto.NodeId(bytes([1]) * 32)
B = crypto.NodeId(bytes([2]) * 32)
C = crypto.NodeId(bytes([3]) * 32)
T0 = 1_700_000_000_000


class FixedRandom(random.Random):
    """An RNG whose ``uniform`` always returns the same point of the range (0..1)."""

    def __init__(self, point: float) -> None:
        super().__init__(0)
        self.point = point
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.point


def links_with(*nodes: crypto.NodeId, rng: random.Random | None = None, **kw: int) -> Links:
    links = Links(rng=rng or random.Random(7), **kw)
    for node in nodes:
        links.add(node, Role.PEER)
    return links


def state(links: Links, node: crypto.NodeId) -> LinkState:
    link = links.get(node)
    assert link is not None
    return link.state


# -- roles ----------------------------------------------------------------------------


def test_defaults() -> None:
    links = Links(rng=random.Random(0))
    assert links.backoff_initial_ms == DEFAULT_BACKOFF_INITIAL_MS == 200
    assert links.backoff_max_ms == DEFAULT_BACKOFF_MAX_MS == 30_000
    assert links.down_after_ms == DEFAULT_DOWN_AFTER_MS == 20_000
    assert len(links) == 0
    assert list(links) == []


def test_add_says_whether_the_node_is_a_new_neighbour() -> None:
    links = Links(rng=random.Random(0))
    assert links.add(A, Role.PEER) is True
    assert links.add(A, Role.PEER) is False
    assert links.add(A, Role.RELAY) is False
    link = links.get(A)
    assert link is not None
    assert link.roles == {Role.PEER, Role.RELAY}
    assert link.state is LinkState.UP
    assert A in links
    assert B not in links
    assert "not a node" not in links
    assert len(links) == 1
    assert links.get(B) is None


def test_a_neighbour_stays_while_any_role_remains() -> None:
    links = Links(rng=random.Random(0))
    links.add(A, Role.PEER)
    links.add(A, Role.ATTACHED)
    links.failed(A, T0, "refused")
    assert links.remove(A, Role.PEER) is False
    assert A in links
    link = links.get(A)
    assert link is not None
    assert link.roles == {Role.ATTACHED}
    assert link.state is LinkState.BACKING_OFF  # losing a role does not reset the link
    assert links.remove(A, Role.RELAY) is False  # a role it never had
    assert A in links
    assert links.remove(A, Role.ATTACHED) is True
    assert A not in links
    assert links.remove(A, Role.ATTACHED) is False  # not a neighbour any more
    assert links.get(A) is None


def test_a_neighbour_added_again_starts_afresh() -> None:
    links = links_with(A, down_after_ms=0)
    links.failed(A, T0, "refused")
    assert state(links, A) is LinkState.DOWN
    assert links.remove(A, Role.PEER) is True
    assert links.add(A, Role.RELAY) is True
    link = links.get(A)
    assert link is not None
    assert (link.state, link.failures, link.roles) == (LinkState.UP, 0, {Role.RELAY})


def test_iteration_is_a_snapshot() -> None:
    links = links_with(A, B, C)
    seen = []
    for link in links:
        seen.append(link.node)
        links.remove(link.node, Role.PEER)
    assert seen == [A, B, C]
    assert len(links) == 0


ROLE_OPS = st.lists(
    st.tuples(st.booleans(), st.sampled_from([A, B]), st.sampled_from(list(Role))), max_size=40
)


@given(ROLE_OPS)
def test_roles_match_a_model(ops: list[tuple[bool, crypto.NodeId, Role]]) -> None:
    links = Links(rng=random.Random(0))
    model: dict[crypto.NodeId, set[Role]] = {A: set(), B: set()}
    for adding, node, role in ops:
        before = set(model[node])
        if adding:
            model[node].add(role)
            assert links.add(node, role) is (not before)
        else:
            model[node].discard(role)
            assert links.remove(node, role) is (bool(before) and not model[node])
        for each, roles in model.items():
            assert (each in links) is bool(roles)
            link = links.get(each)
            assert (link.roles if link else set()) == roles
    assert len(links) == sum(1 for roles in model.values() if roles)


# -- the state machine ----------------------------------------------------------------


def test_usable_means_a_neighbour_that_is_not_down() -> None:
    links = links_with(A, down_after_ms=1000)
    assert not links.usable(B)  # not a neighbour
    assert links.usable(A)
    links.failed(A, T0, "refused")
    assert state(links, A) is LinkState.BACKING_OFF
    assert links.usable(A)
    links.failed(A, T0 + 1000, "refused")
    assert state(links, A) is LinkState.DOWN
    assert not links.usable(A)


def test_first_failure_backs_off_by_the_initial_delay() -> None:
    rng = FixedRandom(0.5)  # jitter factor 1.0
    links = links_with(A, rng=rng)
    wait, went_down = links.failed(A, T0, "connection refused")
    assert (wait, went_down) == (DEFAULT_BACKOFF_INITIAL_MS, False)
    assert rng.calls == [(0.5, 1.5)]
    link = links.get(A)
    assert link is not None
    assert link.state is LinkState.BACKING_OFF
    assert link.delay == DEFAULT_BACKOFF_INITIAL_MS
    assert link.next_attempt == T0 + wait
    assert link.failing_since == T0
    assert link.down_since is None
    assert link.failures == 1
    assert link.last_error == "connection refused"


@pytest.mark.parametrize(("point", "factor"), [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)])
def test_delay_doubles_with_jitter_up_to_the_cap(point: float, factor: float) -> None:
    links = links_with(A, rng=FixedRandom(point), down_after_ms=10**9)
    delays, waits = [], []
    for n in range(12):
        wait, _ = links.failed(A, T0 + n, "refused")
        link = links.get(A)
        assert link is not None
        delays.append(link.delay)
        waits.append(wait)
    expected = [min(200 * 2**n, 30_000) for n in range(12)]
    assert delays == expected
    assert waits == [min(int(d * factor), 30_000) for d in expected]
    assert max(waits) <= 30_000


@given(
    initial=st.integers(min_value=1, max_value=10_000),
    cap=st.integers(min_value=1, max_value=100_000),
    seed=st.integers(min_value=0, max_value=2**32),
    failures=st.integers(min_value=1, max_value=30),
)
def test_waits_stay_within_jitter_and_never_pass_the_cap(
    initial: int, cap: int, seed: int, failures: int
) -> None:
    links = links_with(
        A,
        rng=random.Random(seed),
        backoff_initial_ms=initial,
        backoff_max_ms=cap,
        down_after_ms=10**9,
    )
    delay = 0
    for n in range(failures):
        wait, went_down = links.failed(A, T0 + n, "refused")
        delay = initial if delay == 0 else min(delay * 2, cap)
        link = links.get(A)
        assert link is not None
        assert link.delay == delay
        assert not went_down
        assert 0 <= wait <= cap
        # Jitter x0.5..1.5 of the delay, cut at the cap (an initial delay above the cap
        # is a misconfiguration: the cap still wins).
        assert min(int(delay * 0.5), cap) <= wait <= min(int(delay * 1.5), cap)
        assert link.next_attempt == T0 + n + wait


def test_down_after_down_after_ms_of_continuous_failure() -> None:
    links = links_with(A, down_after_ms=20_000)
    assert links.failed(A, T0, "refused")[1] is False
    assert links.failed(A, T0 + 19_999, "refused")[1] is False
    assert state(links, A) is LinkState.BACKING_OFF
    wait, went_down = links.failed(A, T0 + 20_000, "refused")
    assert went_down is True
    link = links.get(A)
    assert link is not None
    assert link.state is LinkState.DOWN
    assert link.down_since == T0 + 20_000
    assert link.failing_since == T0
    assert link.failures == 3
    # Further failures keep it DOWN and say nothing new.
    wait, went_down = links.failed(A, T0 + 60_000, "timeout")
    assert went_down is False
    assert link.state is LinkState.DOWN
    assert link.down_since == T0 + 20_000
    assert link.last_error == "timeout"
    assert 0 < wait <= links.backoff_max_ms


def test_down_after_zero_goes_down_at_the_first_failure() -> None:
    links = links_with(A, down_after_ms=0)
    assert links.failed(A, T0, "refused")[1] is True
    assert state(links, A) is LinkState.DOWN


@pytest.mark.parametrize("start", [LinkState.BACKING_OFF, LinkState.DOWN])
def test_success_resets_the_link(start: LinkState) -> None:
    links = links_with(A, down_after_ms=1000)
    links.failed(A, T0, "refused")
    if start is LinkState.DOWN:
        links.failed(A, T0 + 1000, "refused")
    assert state(links, A) is start
    assert links.succeeded(A, T0 + 2000) is (start is LinkState.DOWN)
    link = links.get(A)
    assert link is not None
    assert link.state is LinkState.UP
    assert (link.delay, link.next_attempt, link.failing_since, link.down_since) == (
        0,
        None,
        None,
        None,
    )
    assert link.last_ok == T0 + 2000
    assert link.failures == (2 if start is LinkState.DOWN else 1)  # a count, not a state
    # A new run of failures starts from the initial delay and needs the full time again.
    links.failed(A, T0 + 3000, "refused")
    assert link.delay == links.backoff_initial_ms
    assert link.failing_since == T0 + 3000
    assert links.failed(A, T0 + 3999, "refused")[1] is False
    assert links.failed(A, T0 + 4000, "refused")[1] is True


def test_success_on_an_up_link_only_records_it() -> None:
    links = links_with(A)
    assert links.succeeded(A, T0) is False
    link = links.get(A)
    assert link is not None
    assert (link.state, link.last_ok) == (LinkState.UP, T0)
    assert links.succeeded(B, T0) is False  # not a neighbour


@pytest.mark.parametrize("start", [LinkState.BACKING_OFF, LinkState.DOWN])
def test_hearing_from_a_failing_neighbour_resets_it(start: LinkState) -> None:
    links = links_with(A, down_after_ms=1000)
    links.failed(A, T0, "refused")
    if start is LinkState.DOWN:
        links.failed(A, T0 + 1000, "refused")
    assert links.heard_from(A, T0 + 1500) is True  # try it now
    link = links.get(A)
    assert link is not None
    assert link.state is LinkState.UP
    assert (link.delay, link.next_attempt, link.failing_since, link.down_since) == (
        0,
        None,
        None,
        None,
    )
    assert link.last_heard == T0 + 1500
    assert link.last_ok is None  # heard from, not sent to


def test_hearing_from_an_up_neighbour_only_records_it() -> None:
    links = links_with(A)
    assert links.heard_from(A, T0) is False
    link = links.get(A)
    assert link is not None
    assert (link.state, link.last_heard) == (LinkState.UP, T0)
    assert links.heard_from(B, T0) is False  # not a neighbour


def test_retry_after_replaces_the_computed_delay() -> None:
    rng = FixedRandom(1.0)
    links = links_with(A, rng=rng, down_after_ms=5000)
    wait, went_down = links.failed(A, T0, "429", retry_after_ms=12_345)
    assert (wait, went_down) == (12_345, False)
    assert rng.calls == []  # no jitter on the neighbour's own word
    link = links.get(A)
    assert link is not None
    assert link.next_attempt == T0 + 12_345
    assert link.state is LinkState.BACKING_OFF
    assert link.delay == 0  # the computed back-off is untouched
    # Retry-After still counts toward DOWN: the neighbour is failing all the same.
    assert links.failed(A, T0 + 5000, "429", retry_after_ms=1)[1] is True


@pytest.mark.parametrize(
    ("retry_after", "wait"), [(-5, 0), (0, 0), (299_999, 299_999), (300_000, 300_000)]
)
def test_retry_after_is_bounded(retry_after: int, wait: int) -> None:
    links = links_with(A, backoff_max_ms=30_000)
    assert links.failed(A, T0, "503", retry_after_ms=retry_after)[0] == wait


def test_retry_after_beyond_ten_times_the_cap_is_cut() -> None:
    links = links_with(A, backoff_max_ms=30_000)
    assert links.failed(A, T0, "503", retry_after_ms=10**12)[0] == 300_000


def test_a_failure_for_a_stranger_waits_the_cap() -> None:
    links = links_with(A)
    assert links.failed(B, T0, "refused") == (DEFAULT_BACKOFF_MAX_MS, False)
    assert B not in links


def test_to_json() -> None:
    links = Links(rng=FixedRandom(0.5), down_after_ms=0)
    links.add(A, Role.RELAY)
    links.add(A, Role.PEER)
    links.heard_from(A, T0 - 5)
    links.failed(A, T0, "refused")
    link = links.get(A)
    assert link is not None
    assert link.to_json() == {
        "node": A.text,
        "roles": ["peer", "relay"],
        "state": "down",
        "next_attempt": T0 + 200,
        "down_since": T0,
        "last_ok": None,
        "last_heard": T0 - 5,
        "last_error": "refused",
        "failures": 1,
    }
    assert Link(B, {Role.PEER}).to_json()["state"] == "up"


# -- the state table as a property ----------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["failed", "retry-after", "succeeded", "heard"]),
        st.integers(min_value=0, max_value=8_000),  # ms since the previous event
    ),
    max_size=60,
)


@given(EVENTS, st.integers(min_value=0, max_value=2**32))
def test_state_table(events: list[tuple[str, int]], seed: int) -> None:
    """Every transition of the docstring's table, against a model of it."""
    down_after = 20_000
    links = links_with(A, rng=random.Random(seed), down_after_ms=down_after)
    model = LinkState.UP
    failing_since: int | None = None
    delay = 0
    now = T0
    for event, gap in events:
        now += gap
        before = model
        if event in ("failed", "retry-after"):
            retry_after = gap if event == "retry-after" else None
            wait, went_down = links.failed(A, now, "x", retry_after_ms=retry_after)
            if failing_since is None:
                failing_since = now
            if retry_after is None:
                delay = links.backoff_initial_ms if delay == 0 else min(delay * 2, 30_000)
                assert int(delay * 0.5) <= wait <= min(int(delay * 1.5), 30_000)
            else:
                assert wait == retry_after
            if model is not LinkState.DOWN and now - failing_since >= down_after:
                model = LinkState.DOWN
            elif model is LinkState.UP:
                model = LinkState.BACKING_OFF
            assert went_down is (before is not LinkState.DOWN and model is LinkState.DOWN)
        elif event == "succeeded":
            assert links.succeeded(A, now) is (before is LinkState.DOWN)
            model, failing_since, delay = LinkState.UP, None, 0
        else:
            assert links.heard_from(A, now) is (before is not LinkState.UP)
            model, failing_since, delay = LinkState.UP, None, 0
        link = links.get(A)
        assert link is not None
        assert link.state is model
        assert link.failing_since == failing_since
        assert link.delay == delay
        assert links.usable(A) is (model is not LinkState.DOWN)
        assert (link.down_since is not None) is (model is LinkState.DOWN)
