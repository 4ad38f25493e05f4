"""``Store.purge``: every frame queued for one next hop (or held with none) goes in one
transaction; the counts stay exact and the quotas are released; this node's own
messages are traced as dropped; a forwarder's batch read before the purge and answered
after it changes nothing.

Cast: BOB is this node, CAROL and DAVE its neighbours, ALICE an origin elsewhere, EVE a
destination nobody has a route to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
from mesh import (
    Admitted,
    Forward,
    Intake,
    Outgoing,
    Quotas,
    Store,
    StoreFull,
    stored_charge,
)
from mesh._store import PURGED

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
DAVE = crypto.Identity(bytes(range(3, 35)))
EVE = crypto.Identity(bytes(range(4, 36)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5
HOPS = {"carol": CAROL.node_id, "dave": DAVE.node_id, "held": None}


def frame_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def own(n: int, next_hop: crypto.NodeId | None, body: bytes = b"body") -> Outgoing:
    """A message BOB sends to ALICE, queued for ``next_hop`` (None: held)."""
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=BOB.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        dst=ALICE.node_id, body=body,
    )  # fmt: skip
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=next_hop)


def own_pub(n: int, next_hop: crypto.NodeId | None) -> Outgoing:
    """A copy of BOB's publication for ``next_hop`` (None: held for subscriber EVE)."""
    frame = crypto.Frame(
        kind=crypto.Kind.PUB, src=BOB.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        topic="news", body=b"goal",
    )  # fmt: skip
    envelope = frame.seal(BOB)
    if next_hop is None:
        return Outgoing.held_for(frame, envelope, hops=0, subscriber=EVE.node_id)
    return Outgoing.copy_for(frame, envelope, hops=0, next_hop=next_hop)


def passing(n: int, next_hop: crypto.NodeId | None, body: bytes = b"x") -> Intake:
    """ALICE's message to EVE, taken from DAVE, to forward to ``next_hop``."""
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=ALICE.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        dst=EVE.node_id, body=body,
    )  # fmt: skip
    return Intake(Admitted(frame, frame.seal(ALICE), 1), Forward(next_hop), DAVE.node_id)


def open_store(path: Path, quotas: Quotas | None = None) -> Store:
    return Store(path / "store.sqlite3", quotas=quotas)


def queued(store: Store) -> dict[crypto.NodeId | None, tuple[int, int]]:
    """Frames and bytes per next hop, as ``ptth queues`` shows them."""
    return {q.next_hop: (q.frames, q.bytes) for q in store.queues()}


def assert_counts_exact(store: Store) -> None:
    """The in-memory quota counts are what counting the table again finds."""
    recounted = store._count()
    usage = store._usage
    assert usage.total == recounted.total
    assert usage.origin == recounted.origin
    assert usage.next_hop == recounted.next_hop
    assert usage.neighbour == recounted.neighbour
    assert store.statistics().queued_bytes == recounted.total


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path) as store:
        yield store


def fill(store: Store) -> None:
    """Own messages and publication copies and passing messages for CAROL, DAVE and
    held, of various sizes."""
    store.enqueue([own(n, CAROL.node_id, b"c" * n) for n in range(1, 6)], now=NOW)
    store.enqueue([own(n, DAVE.node_id) for n in range(10, 13)], now=NOW)
    store.enqueue([own(n, None, b"h" * 900) for n in range(20, 22)], now=NOW)
    store.enqueue([own_pub(30, CAROL.node_id), own_pub(31, None)], now=NOW)
    store.accept([passing(n, CAROL.node_id, b"p" * 3000) for n in range(40, 44)], now=NOW)
    store.accept([passing(n, None) for n in range(50, 52)], now=NOW)


def test_purge_takes_exactly_what_queues_counted(store: Store) -> None:
    fill(store)
    before = queued(store)
    total = store.statistics().queued_bytes
    assert before[CAROL.node_id][0] == 5 + 1 + 4

    assert store.purge(CAROL.node_id, by=BOB.node_id, now=NOW) == before[CAROL.node_id]

    after = queued(store)
    assert CAROL.node_id not in after
    assert after == {hop: count for hop, count in before.items() if hop != CAROL.node_id}
    assert store.statistics().queued_bytes == total - before[CAROL.node_id][1]
    assert_counts_exact(store)
    assert store.batch(CAROL.node_id, now=NOW) == []
    # Nothing left to purge: nothing changes.
    assert store.purge(CAROL.node_id, by=BOB.node_id, now=NOW) == (0, 0)
    assert queued(store) == after


def test_purge_none_takes_what_is_held_and_nothing_else(store: Store) -> None:
    fill(store)
    before = queued(store)
    frames, size = store.purge(None, by=BOB.node_id, now=NOW)
    # Two own messages, one publication copy held for a subscriber, two passing.
    assert (frames, size) == before[None]
    assert frames == 5
    assert None not in queued(store)
    assert store.held_destinations() == []
    assert_counts_exact(store)


def test_own_messages_are_traced_as_dropped_by_this_node(store: Store) -> None:
    fill(store)
    store.purge(CAROL.node_id, by=BOB.node_id, now=NOW + 7)
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.by, trace.why, trace.done_at) == (
        "dropped",
        BOB.node_id,
        PURGED,
        NOW + 7,
    )
    assert [(r.by, r.state, r.why) for r in trace.receipts] == [(BOB.node_id, "dropped", PURGED)]
    # Those queued for another hop, or held, are untouched.
    untouched = store.trace(frame_id(10))
    assert untouched is not None
    assert (untouched.state, untouched.next_hop, untouched.receipts) == (
        "queued",
        DAVE.node_id,
        (),
    )
    held = store.trace(frame_id(20))
    assert held is not None
    assert held.state == "held"


def test_purge_releases_the_quota_per_next_hop(tmp_path: Path) -> None:
    one = stored_charge(len(own(1, CAROL.node_id).envelope))
    with open_store(tmp_path, Quotas(per_next_hop=3 * one)) as store:
        store.enqueue([own(n, CAROL.node_id) for n in range(1, 4)], now=NOW)
        with pytest.raises(StoreFull, match="quota per next hop"):
            store.enqueue([own(4, CAROL.node_id)], now=NOW)
        assert store.purge(CAROL.node_id, by=BOB.node_id, now=NOW) == (3, 3 * one)
        store.enqueue([own(n, CAROL.node_id) for n in range(4, 7)], now=NOW)
        assert queued(store) == {CAROL.node_id: (3, 3 * one)}
        assert_counts_exact(store)


def test_purge_releases_the_quota_per_neighbour(tmp_path: Path) -> None:
    one = stored_charge(len(passing(1, CAROL.node_id).admitted.envelope))
    with open_store(tmp_path, Quotas(per_neighbour=2 * one)) as store:
        store.accept([passing(n, CAROL.node_id) for n in (1, 2)], now=NOW)
        with pytest.raises(StoreFull, match="quota per neighbour"):
            store.accept([passing(3, CAROL.node_id)], now=NOW)
        store.purge(CAROL.node_id, by=BOB.node_id, now=NOW)
        store.accept([passing(n, CAROL.node_id) for n in (3, 4)], now=NOW)
        assert_counts_exact(store)


def test_a_batch_read_before_the_purge_and_answered_after_changes_nothing(
    store: Store,
) -> None:
    # The forwarder read a batch for CAROL; the operator purged CAROL's queue; then
    # CAROL's answer came: some frames taken, one refused.
    fill(store)
    batch = store.batch(CAROL.node_id, now=NOW, limit=100)
    assert len(batch) == 10
    store.purge(CAROL.node_id, by=BOB.node_id, now=NOW)
    after = queued(store)
    assert store.forwarded([item.seq for item in batch[:-1]], first_hop=CAROL.node_id, now=NOW) == 0
    assert store.remove([batch[-1].seq]) == 0
    assert queued(store) == after
    assert_counts_exact(store)
    # The trace of an own frame stays "dropped", not "forwarded".
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.first_hop) == ("dropped", None)


def test_purged_frames_may_come_again(store: Store) -> None:
    # A purge drops frames; it does not mark them seen: the previous hop may send one
    # again (it is then queued anew).
    store.accept([passing(1, CAROL.node_id)], now=NOW)
    store.purge(CAROL.node_id, by=BOB.node_id, now=NOW)
    assert [r.outcome.name for r in store.accept([passing(1, CAROL.node_id)], now=NOW)] == [
        "ACCEPTED"
    ]
    assert queued(store)[CAROL.node_id][0] == 1
    assert_counts_exact(store)


def test_counts_survive_reopening(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        fill(store)
        store.purge(DAVE.node_id, by=BOB.node_id, now=NOW)
        kept = queued(store)
    with open_store(tmp_path) as store:
        assert queued(store) == kept
        assert_counts_exact(store)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["own", "pub", "passing"]),
            st.sampled_from(sorted(HOPS)),
            st.integers(0, 2000),
        ),
        max_size=30,
    ),
    purged=st.lists(st.sampled_from(sorted(HOPS)), min_size=1, max_size=3),
)
def test_any_purges_keep_the_counts_exact(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, int]],
    purged: list[str],
) -> None:
    with open_store(tmp_path_factory.mktemp("purge")) as store:
        for n, (kind, hop_name, size) in enumerate(rows, 1):
            hop = HOPS[hop_name]
            if kind == "own":
                store.enqueue([own(n, hop, b"o" * size)], now=NOW)
            elif kind == "pub":
                store.enqueue([own_pub(n, hop)], now=NOW)
            else:
                store.accept([passing(n, hop, b"p" * size)], now=NOW)
        expected = queued(store)
        for hop_name in purged:
            hop = HOPS[hop_name]
            assert store.purge(hop, by=BOB.node_id, now=NOW) == expected.pop(hop, (0, 0))
            assert queued(store) == expected
            assert_counts_exact(store)
