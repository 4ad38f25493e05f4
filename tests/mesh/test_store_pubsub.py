"""The durable store for publish/subscribe (schema 3): fan-out of publications, a queue
row per next hop, the inbox's topic, interests and subscriptions kept across restarts,
and the migration from schema 2.

Every test uses a real SQLite file under ``tmp_path``. Cast as in test_store.py: BOB is
this node, ALICE a publisher far away, CAROL, DAVE and FRANK neighbours, EVE an origin
that plays tricks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
import mesh
from mesh import (
    Admitted,
    Deliver,
    Fanout,
    Forward,
    Intake,
    Interest,
    MeshError,
    Outgoing,
    Queued,
    QueueStatistics,
    Quotas,
    Result,
    Store,
    StoreFull,
    StoreStatistics,
    stored_charge,
)
from mesh import _store as store_module
from mesh._store import SCHEMA_VERSION, SEEN_GRACE_MS, SavedSubscription

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
DAVE = crypto.Identity(bytes(range(3, 35)))
EVE = crypto.Identity(bytes(range(4, 36)))
FRANK = crypto.Identity(bytes(range(5, 37)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5
HOPS = {"carol": CAROL, "dave": DAVE, "frank": FRANK}


def frame_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def publication(
    n: int,
    body: bytes = b"goal",
    *,
    src: crypto.Identity = ALICE,
    topic: str = "news.sport",
    exp: int = EXP,
) -> tuple[crypto.Frame, bytes]:
    frame = crypto.Frame(
        kind=crypto.Kind.PUB,
        src=src.node_id,
        id=frame_id(n),
        ts=TS,
        exp=exp,
        hops=8,
        topic=topic,
        body=body,
        ct="text/plain",
    )
    return frame, frame.seal(src)


def pub(n: int, body: bytes = b"goal", *, hops: int = 2, **changes: object) -> Admitted:
    frame, envelope = publication(n, body, **changes)  # type: ignore[arg-type]
    return Admitted(frame, envelope, hops)


def fanout(
    item: Admitted,
    next_hops: Sequence[crypto.Identity] = (),
    *,
    deliver: bool = False,
    came_from: crypto.Identity = CAROL,
) -> Intake:
    decision = Fanout(deliver, tuple(hop.node_id for hop in next_hops))
    return Intake(item, decision, came_from.node_id)


def message(n: int, *, src: crypto.Identity = ALICE, dst: crypto.Identity = BOB) -> Admitted:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=src.node_id,
        id=frame_id(n),
        ts=TS,
        exp=EXP,
        hops=8,
        dst=dst.node_id,
        body=b"body",
    )
    return Admitted(frame, frame.seal(src), 1)


def own_message(n: int, *, dst: crypto.Identity, next_hop: crypto.Identity | None) -> Outgoing:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=BOB.node_id,
        id=frame_id(n),
        ts=TS,
        exp=EXP,
        hops=8,
        dst=dst.node_id,
        body=b"body",
    )
    hop = None if next_hop is None else next_hop.node_id
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=hop)


def outcomes(results: list[Result]) -> list[str]:
    return [str(r.outcome) for r in results]


def sql(store: Store, query: str, *args: object) -> list[tuple[object, ...]]:
    return store._db.execute(query, args).fetchall()


def copies(store: Store) -> list[tuple[bytes, bytes, bytes, bytes | None]]:
    """(origin, id, next hop, came from) of each pub row, in queue order."""
    rows = sql(store, "SELECT src, id, next_hop, came_from FROM queue WHERE kind = 'pub'")
    return [(r[0], r[1], r[2], r[3]) for r in rows]  # type: ignore[misc]


#: What one ``pub(n)`` with the default body and topic is charged in the queue (the
#: quotas and byte counts are charges: mesh.stored_charge).
P = stored_charge(len(pub(1).envelope))
#: What one is charged in the inbox (the row holds the envelope and the body again).
B = stored_charge(len(pub(1).envelope) + len(b"goal"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path) as store:
        yield store


# -- fan-out ---------------------------------------------------------------------------


@pytest.mark.parametrize("deliver", [False, True])
@pytest.mark.parametrize("names", [(), ("dave",), ("dave", "frank", "eve")])
def test_fan_out(store: Store, deliver: bool, names: tuple[str, ...]) -> None:
    hops = [{**HOPS, "eve": EVE}[name] for name in names]
    item = pub(1, topic="news.sport.football")
    results = store.accept([fanout(item, hops, deliver=deliver)], now=NOW)
    # Taken even with nowhere to go: that is pub/sub.
    assert outcomes(results) == ["accepted"]
    assert store.statistics() == StoreStatistics(
        inbox_frames=int(deliver),
        inbox_bytes=stored_charge(len(item.envelope) + len(b"goal")) * deliver,
        seen_ids=1,
        queued_frames=len(hops),
        queued_bytes=stored_charge(len(item.envelope)) * len(hops),
    )
    pending = store.pending(publications=True)
    if deliver:
        (entry,) = pending
        assert (entry.src, entry.id, entry.kind, entry.topic, entry.body, entry.hops) == (
            ALICE.node_id,
            frame_id(1),
            crypto.Kind.PUB,
            "news.sport.football",
            b"goal",
            2,
        )
        assert (entry.ct, entry.ref, entry.received) == ("text/plain", None, NOW)
    else:
        assert pending == []
    # One copy per next hop, each for that hop only, the frame passed on as it came.
    for hop in hops:
        (queued,) = store.batch(hop.node_id, now=NOW)
        assert queued == Queued(
            seq=queued.seq,
            src=ALICE.node_id,
            id=frame_id(1),
            kind=crypto.Kind.PUB,
            dst=hop.node_id,
            exp=EXP,
            hops=2,
            next_hop=hop.node_id,
            came_from=CAROL.node_id,
            queued=NOW,
            size=len(item.envelope),
            envelope=item.envelope,
        )
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [hop.node_id for hop in hops]
    assert sorted(store.queues(), key=lambda q: q.next_hop.raw if q.next_hop else b"") == sorted(
        (QueueStatistics(hop.node_id, 1, stored_charge(len(item.envelope)), NOW) for hop in hops),
        key=lambda q: q.next_hop.raw if q.next_hop else b"",
    )
    assert store._usage.next_hop == {
        hop.node_id.raw: stored_charge(len(item.envelope)) for hop in hops
    }
    # Pub copies have no destination: nothing to reroute or wait for a route for.
    assert store.held_destinations() == []
    assert store.queued_destinations() == []


def test_a_next_hop_named_twice_gets_one_copy(store: Store) -> None:
    store.accept([fanout(pub(1), [DAVE, FRANK, DAVE])], now=NOW)
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id, FRANK.node_id]
    assert store.statistics().queued_bytes == 2 * P


def test_a_publication_delivered_here_is_acknowledged_like_a_message(store: Store) -> None:
    store.accept([fanout(pub(1), deliver=True), fanout(pub(2), deliver=True)], now=NOW)
    assert store.ack([(ALICE.node_id, frame_id(1))]) == 1
    assert [e.id for e in store.pending(publications=True)] == [frame_id(2)]
    assert store.statistics().inbox_bytes == B
    # Still seen: it comes again, it is a duplicate.
    assert outcomes(store.accept([fanout(pub(1), deliver=True)], now=NOW)) == ["duplicate"]


def test_messages_in_the_inbox_have_no_topic(store: Store) -> None:
    store.accept([Intake(message(1), Deliver(), CAROL.node_id)], now=NOW)
    store.accept([fanout(pub(2), deliver=True)], now=NOW)
    assert [(e.kind, e.topic) for e in store.pending(publications=True)] == [
        (crypto.Kind.MSG, None),
        (crypto.Kind.PUB, "news.sport"),
    ]


# -- dedup -----------------------------------------------------------------------------


def test_a_publication_taken_before_is_a_duplicate_and_adds_nothing(store: Store) -> None:
    store.accept([fanout(pub(1), [DAVE], deliver=True)], now=NOW)
    before = store.statistics()
    # Again, from another neighbour, with other next hops, delivered or not.
    again = [
        fanout(pub(1), [DAVE], deliver=True),
        fanout(pub(1), [FRANK, CAROL], came_from=DAVE),
        fanout(pub(1, hops=5), [EVE], deliver=True, came_from=FRANK),
    ]
    assert outcomes(store.accept(again, now=NOW + 1)) == ["duplicate"] * 3
    assert store.statistics() == before
    assert copies(store) == [(ALICE.node_id.raw, frame_id(1), DAVE.node_id.raw, CAROL.node_id.raw)]
    assert len(store.pending(publications=True)) == 1


def test_a_duplicate_within_one_batch(store: Store) -> None:
    results = store.accept([fanout(pub(1), [DAVE]), fanout(pub(1), [FRANK])], now=NOW)
    assert outcomes(results) == ["accepted", "duplicate"]
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id]


def test_a_publication_stays_a_duplicate_after_its_copies_are_gone(store: Store) -> None:
    store.accept([fanout(pub(1), [DAVE])], now=NOW)
    (queued,) = store.batch(DAVE.node_id, now=NOW)
    store.forwarded([queued.seq], first_hop=DAVE.node_id, now=NOW)
    assert outcomes(store.accept([fanout(pub(1), [DAVE])], now=NOW)) == ["duplicate"]
    assert store.statistics().queued_frames == 0


def test_another_origin_reusing_the_id_is_not_a_duplicate(store: Store) -> None:
    store.accept([fanout(pub(1), [DAVE], deliver=True)], now=NOW)
    results = store.accept([fanout(pub(1, src=EVE), [DAVE], deliver=True)], now=NOW)
    assert outcomes(results) == ["accepted"]
    # Both copies for DAVE are queued: one per (origin, id, next hop).
    assert [(q.src, q.id) for q in store.batch(DAVE.node_id, now=NOW)] == [
        (ALICE.node_id, frame_id(1)),
        (EVE.node_id, frame_id(1)),
    ]
    assert [e.src for e in store.pending(publications=True)] == [ALICE.node_id, EVE.node_id]


def test_a_message_and_a_publication_share_the_seen_set(store: Store) -> None:
    # An origin that reuses an id across kinds only hurts itself: the second is a
    # duplicate (the seen-set is by origin and id).
    store.accept([Intake(message(1), Deliver(), CAROL.node_id)], now=NOW)
    assert outcomes(store.accept([fanout(pub(1), [DAVE], deliver=True)], now=NOW)) == ["duplicate"]


def test_a_relayed_message_and_a_publication_with_the_same_id_are_both_queued(
    store: Store,
) -> None:
    # The queue's (origin, id) uniqueness is for msg and rcpt rows; a pub copy is
    # unique by next hop. EVE sends a message (to ALICE, through DAVE) with the id of
    # her publication. (Had the message been for DAVE, its row and DAVE's pub copy would
    # have the same (origin, id, dst): one row, EVE's loss alone.)
    relayed = Intake(message(1, src=EVE, dst=ALICE), Forward(DAVE.node_id), CAROL.node_id)
    assert outcomes(store.accept([relayed, fanout(pub(1, src=EVE), [DAVE])], now=NOW)) == [
        "accepted",
        "accepted",
    ]
    assert [q.kind for q in store.batch(DAVE.node_id, now=NOW)] == [
        crypto.Kind.MSG,
        crypto.Kind.PUB,
    ]
    # The message is still held once.
    assert outcomes(store.accept([relayed], now=NOW)) == ["duplicate"]


def test_only_pub_frames_fan_out(store: Store) -> None:
    bad = Intake(message(1), Fanout(True, (DAVE.node_id,)), CAROL.node_id)
    with pytest.raises(MeshError, match=f"frame {frame_id(1).hex()} is a msg frame: only pub"):
        store.accept([fanout(pub(2), [DAVE]), bad], now=NOW)
    assert store.statistics() == StoreStatistics(0, 0, 0, 0, 0)


# -- one copy per next hop: acks, removal, reroute ---------------------------------------


def test_a_next_hop_taking_its_copy_deletes_only_that_copy(store: Store) -> None:
    store.accept([fanout(pub(1), [DAVE, FRANK, EVE])], now=NOW)
    (for_frank,) = store.batch(FRANK.node_id, now=NOW)
    assert store.forwarded([for_frank.seq], first_hop=FRANK.node_id, now=NOW) == 1
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id, EVE.node_id]
    assert store.batch(FRANK.node_id, now=NOW) == []
    # A refused copy is removed on its own too.
    (for_eve,) = store.batch(EVE.node_id, now=NOW)
    assert store.remove([for_eve.seq]) == 1
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id]
    assert store.statistics().queued_bytes == P
    assert store._usage.next_hop == {DAVE.node_id.raw: P}
    assert store._usage.neighbour == {CAROL.node_id.raw: P}
    assert store._usage.origin == {ALICE.node_id.raw: P}


def test_reroute_leaves_publication_copies_alone(store: Store) -> None:
    # A copy for DAVE (its "dst" is DAVE), and a message for DAVE via FRANK.
    store.accept(
        [
            fanout(pub(1), [DAVE, FRANK]),
            Intake(message(2, dst=DAVE), Forward(FRANK.node_id), CAROL.node_id),
        ],
        now=NOW,
    )
    # The route to DAVE changes (now direct): the message moves, the copies stay.
    assert store.reroute(DAVE.node_id, DAVE.node_id) == 1
    assert store.reroute(FRANK.node_id, None) == 0
    assert store.reroute(DAVE.node_id, None) == 1  # the message: held
    assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id, FRANK.node_id]
    assert store.held_destinations() == [DAVE.node_id]
    assert store.queued_destinations() == [(DAVE.node_id, None)]
    assert {q.next_hop: q.frames for q in store.queues()} == {
        DAVE.node_id: 1,
        FRANK.node_id: 1,
        None: 1,
    }
    assert store._usage.next_hop == {
        DAVE.node_id.raw: P,
        FRANK.node_id.raw: P,
        None: stored_charge(len(message(2).envelope)),
    }


# -- our own publications --------------------------------------------------------------


def own_pub(n: int, **changes: object) -> tuple[crypto.Frame, bytes]:
    return publication(n, src=BOB, **changes)  # type: ignore[arg-type]


def test_publish_takes_custody_of_our_own_publication(store: Store) -> None:
    frame, envelope = own_pub(1, topic="weather.paris")
    store.publish(frame, envelope, deliver=True, next_hops=[CAROL.node_id, DAVE.node_id], now=NOW)
    (entry,) = store.pending(publications=True)
    assert (entry.src, entry.topic, entry.hops, entry.received) == (
        BOB.node_id,
        "weather.paris",
        0,
        NOW,
    )
    (queued,) = store.batch(CAROL.node_id, now=NOW)
    assert (queued.kind, queued.dst, queued.hops, queued.came_from, queued.envelope) == (
        crypto.Kind.PUB,
        CAROL.node_id,
        0,
        None,
        envelope,
    )
    assert store.copies_of(BOB.node_id, frame_id(1)) == [CAROL.node_id, DAVE.node_id]
    # No trace: a publication has no one destination.
    assert store.trace(frame_id(1)) is None
    assert store.next_hop_of(frame_id(1)) == (False, None)
    store.forwarded([queued.seq], first_hop=CAROL.node_id, now=NOW)
    assert store.trace(frame_id(1)) is None
    assert sql(store, "SELECT COUNT(*) FROM sent") == [(0,)]
    # A copy coming back through the mesh is a duplicate.
    came_back = Admitted(frame, envelope, 3)
    results = store.accept([fanout(came_back, [FRANK], deliver=True, came_from=DAVE)], now=NOW)
    assert outcomes(results) == ["duplicate"]


def test_publish_with_nowhere_to_go_only_marks_it_seen(store: Store) -> None:
    frame, envelope = own_pub(1)
    store.publish(frame, envelope, deliver=False, next_hops=(), now=NOW)
    assert store.statistics() == StoreStatistics(0, 0, 1, 0, 0)


def test_publish_refuses_a_publication_taken_already_and_takes_nothing(store: Store) -> None:
    frame, envelope = own_pub(1)
    store.publish(frame, envelope, deliver=False, next_hops=[CAROL.node_id], now=NOW)
    with pytest.raises(MeshError, match=f"publication {frame.id.hex()} from .* taken already"):
        store.publish(frame, envelope, deliver=True, next_hops=[DAVE.node_id], now=NOW)
    assert store.statistics() == StoreStatistics(0, 0, 1, 1, P)


def test_publish_refuses_other_kinds(store: Store) -> None:
    outgoing = own_message(1, dst=ALICE, next_hop=CAROL)
    frame = crypto.Frame.open(outgoing.envelope, now=NOW)
    with pytest.raises(MeshError, match="is a msg frame: only pub frames fan out"):
        store.publish(frame, outgoing.envelope, deliver=True, next_hops=[], now=NOW)
    assert store.statistics() == StoreStatistics(0, 0, 0, 0, 0)


def test_a_message_of_ours_and_a_publication_copy_for_its_destination(store: Store) -> None:
    # Our message for DAVE via CAROL, and a pub copy for DAVE: the trace is the
    # message's, and only the message follows DAVE's route.
    store.enqueue([own_message(1, dst=DAVE, next_hop=CAROL)], now=NOW, receipts=[True])
    frame, envelope = own_pub(2)
    store.publish(frame, envelope, deliver=False, next_hops=[DAVE.node_id], now=NOW)
    assert store.reroute(DAVE.node_id, FRANK.node_id) == 1
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.next_hop) == ("queued", FRANK.node_id)
    assert store.copies_of(BOB.node_id, frame_id(2)) == [DAVE.node_id]


# -- quotas ----------------------------------------------------------------------------


def test_each_copy_counts_against_the_queue_quotas(path: Path) -> None:
    with Store(path, quotas=Quotas(per_origin=3 * P)) as store:
        # 2 + 2 copies of ALICE's publications: the second pub would pass her quota, so
        # it is refused (per frame: the neighbour drops it and tells her).
        batch = [fanout(pub(1), [DAVE, FRANK], deliver=True), fanout(pub(2), [DAVE, FRANK])]
        results = store.accept(batch, now=NOW)
        assert outcomes(results) == ["accepted", "rejected"]
        assert results[1].code is mesh.Reason.STORE_FULL
        assert results[1].words == (
            f"queue holds {2 * P} bytes from {ALICE.node_id.short}, its quota per origin "
            f"is {3 * P}: no more until some are passed on"
        )
        assert outcomes(store.accept([fanout(pub(3), [DAVE, FRANK])], now=NOW)) == ["rejected"]
        assert outcomes(store.accept([fanout(pub(3), [DAVE])], now=NOW)) == ["accepted"]
        assert store.statistics() == StoreStatistics(1, B, 2, 3, 3 * P)


def test_copies_count_per_next_hop_and_per_neighbour(path: Path) -> None:
    with Store(path, quotas=Quotas(per_next_hop=2 * P, per_neighbour=3 * P)) as store:
        store.accept([fanout(pub(1), [DAVE, FRANK])], now=NOW)
        store.accept([fanout(pub(2), [DAVE])], now=NOW)
        with pytest.raises(StoreFull, match=f"for {DAVE.node_id.short}; {P} more would pass"):
            store.accept([fanout(pub(3), [FRANK, DAVE])], now=NOW)
        with pytest.raises(StoreFull, match=f"taken from {CAROL.node_id.short}; {P} more"):
            store.accept([fanout(pub(3), [FRANK])], now=NOW)
        # From another neighbour, FRANK's copy fits.
        assert outcomes(store.accept([fanout(pub(3), [FRANK], came_from=EVE)], now=NOW)) == [
            "accepted"
        ]
        assert store.statistics().queued_bytes == 4 * P


def test_publications_delivered_here_count_against_the_inbox_quota(path: Path) -> None:
    with Store(path, max_inbox_bytes=2 * B, max_inbox_bytes_per_origin=10 * B) as store:
        store.accept([fanout(pub(1), deliver=True)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.accept([fanout(pub(2), deliver=True), fanout(pub(3), deliver=True)], now=NOW)
        assert str(caught.value) == (
            f"inbox holds {B} bytes; {2 * B} more would pass its quota of {2 * B}; retry later"
        )
        # Passed on without a local delivery, it takes no inbox room.
        assert outcomes(store.accept([fanout(pub(2), [DAVE])], now=NOW)) == ["accepted"]
        frame, envelope = own_pub(4)
        store.publish(frame, envelope, deliver=True, next_hops=[], now=NOW)
        frame, envelope = own_pub(5)
        with pytest.raises(StoreFull, match=f"inbox holds {2 * B} bytes"):
            store.publish(frame, envelope, deliver=True, next_hops=[DAVE.node_id], now=NOW)
        assert store.statistics() == StoreStatistics(2, 2 * B, 3, 1, P)


def test_publish_counts_each_copy_against_the_queue_quota(path: Path) -> None:
    with Store(path, quotas=Quotas(total=2 * P)) as store:
        frame, envelope = own_pub(1)
        hops = [CAROL.node_id, DAVE.node_id, FRANK.node_id]
        with pytest.raises(StoreFull, match=f"{3 * P} more would pass its quota of {2 * P}"):
            store.publish(frame, envelope, deliver=True, next_hops=hops, now=NOW)
        assert store.statistics() == StoreStatistics(0, 0, 0, 0, 0)
        # Nothing taken: it can be published again.
        store.publish(frame, envelope, deliver=True, next_hops=hops[:2], now=NOW)
        assert store.statistics() == StoreStatistics(1, B, 1, 2, 2 * P)


# -- expiry ----------------------------------------------------------------------------


def test_expired_copies_are_swept(store: Store) -> None:
    store.accept(
        [fanout(pub(1, exp=NOW + 100), [DAVE, FRANK]), fanout(pub(2, exp=NOW + 200), [DAVE])],
        now=NOW,
    )
    assert [q.id for q in store.batch(DAVE.node_id, now=NOW + 100)] == [frame_id(2)]
    expired = store.take_expired(now=NOW + 100)
    assert sorted((q.id, q.next_hop) for q in expired) == sorted(
        [(frame_id(1), DAVE.node_id), (frame_id(1), FRANK.node_id)]
    )
    assert all(q.came_from == CAROL.node_id for q in expired)
    assert store.statistics().queued_bytes == P
    assert store._usage.next_hop == {DAVE.node_id.raw: P}
    # Still seen until expiry and grace: a replay is refused upstream as expired.
    assert outcomes(store.accept([fanout(pub(1, exp=NOW + 100), [DAVE])], now=NOW + 50)) == [
        "duplicate"
    ]
    assert store.sweep(now=NOW + 100 + SEEN_GRACE_MS + 1) == 1
    assert sql(store, "SELECT id FROM seen") == [(frame_id(2),)]


# -- interests and subscriptions --------------------------------------------------------


def interest(
    origin: crypto.Identity, pattern: str, *, exp: int = EXP, withdrawn: bool = False
) -> Interest:
    frame = crypto.Frame(
        kind=crypto.Kind.UNSUB if withdrawn else crypto.Kind.SUB,
        src=origin.node_id,
        id=frame_id(len(pattern)),
        ts=TS,
        exp=exp,
        hops=8,
        pat=pattern,
    )
    return Interest(origin.node_id, pattern, TS, exp, frame.seal(origin), withdrawn, 3)


def test_interests_round_trip_and_expire(path: Path) -> None:
    kept = [
        interest(ALICE, "news.#"),
        interest(ALICE, "weather.*.rain", exp=NOW + 100),
        interest(DAVE, "news.sport", withdrawn=True),  # a tombstone: kept too
    ]
    with Store(path) as store:
        assert store.interests(now=NOW) == []
        store.save_interests(kept)
        key = lambda i: (i.origin.raw, i.pattern)  # noqa: E731
        assert store.interests(now=NOW) == sorted(kept, key=key)
    with Store(path) as store:
        assert sorted(store.interests(now=NOW), key=key) == sorted(kept, key=key)
        # Expired ones are not returned; a sweep forgets them.
        assert sorted(store.interests(now=NOW + 100), key=key) == sorted(
            [kept[0], kept[2]], key=key
        )
        store.sweep(now=NOW + 100)
        assert sql(store, "SELECT COUNT(*) FROM interests") == [(2,)]
        # Saving replaces the whole table.
        store.save_interests([interest(EVE, "#")])
        assert store.interests(now=NOW) == [interest(EVE, "#")]
        store.save_interests([])
        assert store.interests(now=NOW) == []


def test_subscriptions_round_trip(path: Path) -> None:
    with Store(path) as store:
        assert store.subscriptions() == []
        store.save_subscription("sport", ["news.sport.#", "scores.*"], 60_000, now=NOW)
        store.save_subscription("alerts", ["alerts.#"], 5_000, now=NOW + 1)
    with Store(path) as store:
        assert store.subscriptions() == [
            SavedSubscription("alerts", ("alerts.#",), 5_000, NOW + 1),
            SavedSubscription("sport", ("news.sport.#", "scores.*"), 60_000, NOW),
        ]
        # Saving again replaces the patterns and lease; it was created when it was.
        store.save_subscription("sport", ["news.#"], 120_000, now=NOW + 9)
        assert store.subscriptions()[1] == SavedSubscription("sport", ("news.#",), 120_000, NOW)
        assert store.delete_subscription("alerts")
        assert not store.delete_subscription("alerts")
        assert [s.name for s in store.subscriptions()] == ["sport"]


def test_a_closed_store_raises_mesh_errors_from_the_pubsub_calls(path: Path) -> None:
    store = Store(path)
    store.close()
    frame, envelope = own_pub(1)
    calls: list[Callable[[], object]] = [
        lambda: store.accept([fanout(pub(1), [DAVE])], now=NOW),
        lambda: store.publish(frame, envelope, deliver=True, next_hops=[], now=NOW),
        lambda: store.copies_of(ALICE.node_id, frame_id(1)),
        lambda: store.save_interests([]),
        lambda: store.interests(now=NOW),
        lambda: store.save_subscription("a", ["a"], 1, now=NOW),
        lambda: store.delete_subscription("a"),
        lambda: store.subscriptions(),
    ]
    for call in calls:
        with pytest.raises(MeshError, match="closed database"):
            call()


# -- durability --------------------------------------------------------------------------


def test_a_reopened_store_keeps_everything(path: Path) -> None:
    with Store(path) as store:
        store.accept([fanout(pub(1), [DAVE, FRANK], deliver=True)], now=NOW)
        frame, envelope = own_pub(2, topic="weather.paris")
        store.publish(frame, envelope, deliver=True, next_hops=[CAROL.node_id], now=NOW)
        store.save_interests([interest(ALICE, "news.#")])
        store.save_subscription("weather", ["weather.#"], 60_000, now=NOW)
        before = (
            store.statistics(),
            store.pending(publications=True),
            store.queues(),
            dict(store._usage.origin),
        )
        schema = sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with Store(path) as store:
        assert sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
        after = (
            store.statistics(),
            store.pending(publications=True),
            store.queues(),
            dict(store._usage.origin),
        )
        assert after == before
        assert [e.topic for e in store.pending(publications=True)] == [
            "news.sport",
            "weather.paris",
        ]
        assert store.copies_of(ALICE.node_id, frame_id(1)) == [DAVE.node_id, FRANK.node_id]
        assert outcomes(store.accept([fanout(pub(1), [EVE], deliver=True)], now=NOW)) == [
            "duplicate"
        ]
        assert store.interests(now=NOW) == [interest(ALICE, "news.#")]
        assert [s.name for s in store.subscriptions()] == ["weather"]


# -- the byte counts stay true -----------------------------------------------------------

_step = st.one_of(
    st.tuples(
        st.just("fanout"),
        st.integers(0, 5),
        st.lists(st.sampled_from(sorted(HOPS)), max_size=3),
        st.booleans(),
    ),
    st.tuples(st.just("take"), st.sampled_from(sorted(HOPS)), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("reroute"), st.sampled_from(sorted(HOPS)), st.sampled_from(sorted(HOPS))),
    st.tuples(st.just("expire"), st.integers(0, 5)),
)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(_step, max_size=20))
def test_byte_counts_match_the_queue_whatever_happens(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[object, ...]]
) -> None:
    path = tmp_path_factory.mktemp("store") / "store.sqlite3"
    taken: set[int] = set()
    with Store(path) as store:
        for step in steps:
            match step:
                case ("fanout", int(n), list(names), bool(deliver)):
                    hops = [HOPS[str(name)] for name in names]
                    item = pub(n, exp=NOW + 100 + n)
                    result = store.accept([fanout(item, hops, deliver=deliver)], now=NOW)
                    assert outcomes(result) == (["duplicate"] if n in taken else ["accepted"])
                    taken.add(n)
                case ("take", str(name), int(limit), bool(ok)):
                    batch = store.batch(HOPS[name].node_id, now=NOW, limit=limit)
                    seqs = [q.seq for q in batch]
                    if ok:
                        store.forwarded(seqs, first_hop=HOPS[name].node_id, now=NOW)
                    else:
                        store.remove(seqs)
                    for q in batch:
                        assert HOPS[name].node_id not in store.copies_of(q.src, q.id)
                case ("reroute", str(dst), str(hop)):
                    assert store.reroute(HOPS[dst].node_id, HOPS[hop].node_id) == 0
                case ("expire", int(n)):
                    store.take_expired(now=NOW + 100 + n)
            assert store._usage.__dict__ == store._count().__dict__
            sizes = [size for (size,) in store._db.execute("SELECT size FROM queue")]
            charged = sum(stored_charge(size) for size in sizes)
            statistics = store.statistics()
            assert (statistics.queued_frames, statistics.queued_bytes) == (len(sizes), charged)


# -- migration from schema 2 -------------------------------------------------------------

#: Schema 2, as the previous ptth wrote it (``git show HEAD:mesh/_store.py``).
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    src BLOB NOT NULL, id BLOB NOT NULL, exp INTEGER NOT NULL, PRIMARY KEY (src, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_exp ON seen (exp);
CREATE TABLE IF NOT EXISTS seen_v1 (id BLOB PRIMARY KEY, exp INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    src BLOB NOT NULL,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    received INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    ct TEXT,
    ref BLOB,
    body BLOB NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (src, id)
);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    src BLOB NOT NULL,
    id BLOB NOT NULL,
    kind TEXT NOT NULL,
    dst BLOB NOT NULL,
    exp INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    next_hop BLOB,
    came_from BLOB,
    queued INTEGER NOT NULL,
    size INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (src, id)
);
CREATE INDEX IF NOT EXISTS queue_by_hop ON queue (next_hop, seq);
CREATE INDEX IF NOT EXISTS queue_by_dst ON queue (dst);
CREATE INDEX IF NOT EXISTS queue_by_exp ON queue (exp);
CREATE TABLE IF NOT EXISTS sent (
    id BLOB PRIMARY KEY,
    dst BLOB NOT NULL,
    kind TEXT NOT NULL,
    created INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    receipt INTEGER NOT NULL,
    first_hop BLOB,
    first_accepted INTEGER,
    state TEXT NOT NULL,
    done_at INTEGER,
    hops INTEGER,
    by BLOB,
    why TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    ref BLOB NOT NULL,
    src BLOB NOT NULL,
    st TEXT NOT NULL,
    why TEXT,
    hops INTEGER,
    ts INTEGER NOT NULL,
    received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_ref ON receipts (ref);
CREATE TABLE IF NOT EXISTS routes (
    dst BLOB NOT NULL,
    via BLOB NOT NULL,
    ts INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    learned INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    announce BLOB NOT NULL,
    PRIMARY KEY (dst, via)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS addresses (
    node BLOB PRIMARY KEY, seq INTEGER NOT NULL, exp INTEGER NOT NULL, envelope BLOB NOT NULL
) WITHOUT ROWID;
"""


def queue_row(db: sqlite3.Connection, seq: int, item: Outgoing, queued: int = NOW) -> None:
    db.execute(
        "INSERT INTO queue (seq, src, id, kind, dst, exp, hops, next_hop, came_from, queued,"
        " size, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, item.src.raw, item.id, str(item.kind), item.dst.raw, item.exp, item.hops,
         None if item.next_hop is None else item.next_hop.raw,
         None if item.came_from is None else item.came_from.raw, queued,
         len(item.envelope), item.envelope),
    )  # fmt: skip


def schema_2_store(path: Path) -> None:
    """A schema-2 store: ALICE's message unread; our message to ALICE queued for CAROL
    (with its trace) and one to EVE held; ALICE's message for DAVE relayed; the queue's
    counter past its rows (seq 7 was queued and is gone)."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_2)
    unread = message(1)
    relayed = message(2, dst=DAVE)
    with db:
        db.execute("INSERT INTO meta VALUES ('schema', 2)")
        frame = unread.frame
        db.execute("INSERT INTO seen VALUES (?, ?, ?)", (frame.src.raw, frame.id, frame.exp))
        db.execute(
            "INSERT INTO inbox (id, src, kind, ts, exp, received, hops, ct, ref, body,"
            " envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (frame.id, frame.src.raw, str(frame.kind), frame.ts, frame.exp, NOW,
             unread.hops, frame.ct, frame.ref, frame.body, unread.envelope),
        )  # fmt: skip
        queue_row(db, 3, own_message(3, dst=ALICE, next_hop=CAROL))
        queue_row(db, 4, own_message(4, dst=EVE, next_hop=None))
        queue_row(
            db,
            5,
            Outgoing.of(
                relayed.frame, relayed.envelope, hops=1, next_hop=DAVE.node_id,
                came_from=CAROL.node_id,
            ),
        )  # fmt: skip
        queue_row(db, 7, own_message(7, dst=ALICE, next_hop=CAROL))
        db.execute("DELETE FROM queue WHERE seq = 7")
        db.execute(
            "INSERT INTO sent (id, dst, kind, created, exp, receipt, state)"
            " VALUES (?, ?, 'msg', ?, ?, 1, 'queued')",
            (frame_id(3), ALICE.node_id.raw, NOW, EXP),
        )
    db.close()


def test_a_schema_2_store_is_migrated(path: Path) -> None:
    schema_2_store(path)
    with Store(path) as store:
        assert sql(store, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        # Every row kept, seqs too.
        (entry,) = store.pending(publications=True)
        assert (entry.src, entry.id, entry.topic, entry.received) == (
            ALICE.node_id,
            frame_id(1),
            None,
            NOW,
        )
        assert [(q.seq, q.id) for q in store.batch(CAROL.node_id, now=NOW)] == [(3, frame_id(3))]
        assert [(q.seq, q.came_from) for q in store.batch(DAVE.node_id, now=NOW)] == [
            (5, CAROL.node_id)
        ]
        assert store.held_destinations() == [EVE.node_id]
        trace = store.trace(frame_id(3))
        assert trace is not None
        assert (trace.state, trace.next_hop, trace.receipt) == ("queued", CAROL.node_id, True)
        size = len(message(1).envelope)
        inbox = stored_charge(size + len(message(1).frame.body or b""))
        assert store.statistics() == StoreStatistics(1, inbox, 1, 3, 3 * stored_charge(size))
        # The queue has its new keys and indexes.
        indexes = {row[0] for row in sql(store, "SELECT name FROM pragma_index_list('queue')")}
        assert {"queue_by_hop", "queue_by_dst", "queue_by_exp", "queue_one_copy"} <= indexes
        # Usable: a message is still queued once; publications fan out.
        relayed = Intake(message(2, dst=DAVE), Forward(DAVE.node_id), CAROL.node_id)
        assert outcomes(store.accept([relayed], now=NOW)) == ["duplicate"]
        results = store.accept(
            [fanout(pub(9), [DAVE, CAROL], deliver=True, came_from=EVE)], now=NOW
        )
        assert outcomes(results) == ["accepted"]
        # New rows continue past the old counter (7): no seq is reused.
        seqs = [q.seq for q in store.batch(DAVE.node_id, now=NOW)]
        assert seqs[0] == 5
        assert seqs[1] > 7
        assert [e.topic for e in store.pending(publications=True)] == [None, "news.sport"]
        schema = sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with Store(path) as store:  # reopening a migrated store changes nothing
        assert sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
        assert store.copies_of(ALICE.node_id, frame_id(9)) == [DAVE.node_id, CAROL.node_id]
        assert store.statistics().queued_frames == 5


def test_a_migrated_queue_is_the_same_table_as_a_new_one(path: Path, tmp_path: Path) -> None:
    schema_2_store(path)
    fresh = tmp_path / "fresh.sqlite3"

    def columns(store: Store, table: str) -> list[tuple[object, ...]]:
        return sql(store, f"SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')")

    def uniques(store: Store) -> set[tuple[object, ...]]:
        return {
            (row[2], row[4], tuple(c[2] for c in sql(store, f"PRAGMA index_info('{row[1]}')")))
            for row in sql(store, "PRAGMA index_list('queue')")
        }

    with Store(path) as migrated, Store(fresh) as new:
        for table in ("queue", "inbox", "interests", "subscriptions"):
            assert columns(migrated, table) == columns(new, table)
        assert uniques(migrated) == uniques(new)


def test_a_migration_that_fails_leaves_schema_2_as_it_was(path: Path) -> None:
    schema_2_store(path)
    db = sqlite3.connect(path)
    with db:
        db.execute("ALTER TABLE inbox RENAME TO mailbox")  # the migration needs inbox
    (queue_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'queue'").fetchone()
    db.close()
    with pytest.raises(MeshError, match=f"store {path} failed: no such table: inbox"):
        Store(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchall() == [(2,)]
    assert db.execute("SELECT sql FROM sqlite_master WHERE name = 'queue'").fetchone() == (
        queue_sql,
    )
    assert db.execute("SELECT seq FROM queue ORDER BY seq").fetchall() == [(3,), (4,), (5,)]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'queue_new'").fetchall() == []
    db.close()


def test_an_empty_schema_2_store_is_migrated(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_2)
    with db:
        db.execute("INSERT INTO meta VALUES ('schema', 2)")
    db.close()
    with Store(path) as store:
        assert store.statistics() == StoreStatistics(0, 0, 0, 0, 0)
        assert outcomes(store.accept([fanout(pub(1), [DAVE], deliver=True)], now=NOW)) == [
            "accepted"
        ]
        assert [q.seq for q in store.batch(DAVE.node_id, now=NOW)] == [1]


# -- named (durable) subscriptions -----------------------------------------------------


def named(item: Admitted, *names: str) -> Intake:
    return Intake(item, Fanout(True, ()), CAROL.node_id, named=names)


def test_a_publication_is_pending_for_each_named_subscription_until_each_acks(
    store: Store,
) -> None:
    store.accept([named(pub(1), "timeline", "archive"), named(pub(2), "timeline")], now=NOW)
    assert store.pending() == []  # publications are not messages
    timeline = store.subscription_pending("timeline")
    assert [e.id for e in timeline] == [frame_id(1), frame_id(2)]
    assert [e.topic for e in timeline] == ["news.sport", "news.sport"]
    assert [e.id for e in store.subscription_pending("archive")] == [frame_id(1)]
    assert [e.id for e in store.subscription_pending("timeline", after=timeline[0].seq)] == [
        frame_id(2)
    ]
    # The first is acked by the timeline: still there for the archive.
    assert store.ack_subscription("timeline", [timeline[0].seq]) == 1
    assert store.ack_subscription("timeline", [timeline[0].seq]) == 0  # once
    assert store.statistics().inbox_frames == 2
    assert store.ack_subscription("archive", [timeline[0].seq]) == 1
    assert store.statistics().inbox_frames == 1
    assert store.statistics().inbox_bytes == B
    # Taken again (another path): a duplicate, pending nowhere twice.
    assert outcomes(store.accept([named(pub(2), "timeline")], now=NOW)) == ["duplicate"]
    assert len(store.subscription_pending("timeline")) == 1


def test_forgetting_a_subscription_drops_what_only_it_waited_for(store: Store) -> None:
    store.accept([named(pub(1), "a", "b"), named(pub(2), "a")], now=NOW)
    store.save_subscription("a", ["news.#"], 1000, now=NOW)
    assert store.delete_subscription("a")
    assert store.subscription_pending("a") == []
    assert [e.id for e in store.subscription_pending("b")] == [frame_id(1)]
    assert store.statistics().inbox_frames == 1


def test_pending_publications_are_kept_until_they_expire(store: Store) -> None:
    store.accept([named(pub(1, exp=NOW + 10), "a"), named(pub(2), "a")], now=NOW)
    store.sweep(now=NOW + 10)
    assert [e.id for e in store.subscription_pending("a")] == [frame_id(2)]
    assert store.statistics().inbox_frames == 1


def test_our_own_publication_is_pending_for_our_named_subscriptions(store: Store) -> None:
    frame, envelope = publication(1, src=BOB)
    store.publish(frame, envelope, deliver=True, next_hops=[], now=NOW, named=["mine"])
    assert [e.src for e in store.subscription_pending("mine")] == [BOB.node_id]


def test_pending_publications_survive_a_restart(path: Path) -> None:
    with Store(path) as store:
        store.accept([named(pub(1), "timeline")], now=NOW)
    with Store(path) as store:
        [entry] = store.subscription_pending("timeline")
        assert entry.body == b"goal"
        assert store.statistics().inbox_bytes == B


# -- copies that name their subscribers ---------------------------------------------------


def addressed(item: Admitted, copies: dict[crypto.Identity, list[crypto.Identity]]) -> Intake:
    hops = tuple(hop.node_id for hop in copies)
    to = tuple(tuple(s.node_id for s in subs) for subs in copies.values())
    return Intake(item, Fanout(False, hops, to), CAROL.node_id)


def test_a_copy_keeps_the_subscribers_it_is_for(store: Store) -> None:
    store.accept([addressed(pub(1), {DAVE: [ALICE, BOB], EVE: [EVE]})], now=NOW)
    [dave] = store.batch(DAVE.node_id, now=NOW)
    assert dave.wire.to == (ALICE.node_id, BOB.node_id)
    [eve] = store.batch(EVE.node_id, now=NOW)
    assert eve.wire.to == (EVE.node_id,)


def test_a_duplicate_naming_other_subscribers_is_passed_on_toward_them(store: Store) -> None:
    # Two copies sent for different subscribers meet here (paths of equal length).
    assert outcomes(store.accept([addressed(pub(1), {DAVE: [ALICE]})], now=NOW)) == ["accepted"]
    results = store.accept([addressed(pub(1), {DAVE: [BOB], EVE: [EVE]})], now=NOW)
    assert outcomes(results) == ["duplicate"]
    # A copy of its own for DAVE (the first may be on its way: a row being sent never
    # changes under the forwarder); EVE gets one too.
    first, second = store.batch(DAVE.node_id, now=NOW)
    assert (first.wire.to, second.wire.to) == ((ALICE.node_id,), (BOB.node_id,))
    [eve] = store.batch(EVE.node_id, now=NOW)
    assert eve.wire.to == (EVE.node_id,)
    # The same copy again adds nothing.
    store.accept([addressed(pub(1), {DAVE: [BOB]})], now=NOW)
    assert len(store.batch(DAVE.node_id, now=NOW)) == 2
    # The first was taken by DAVE: only it goes.
    store.forwarded([first.seq], first_hop=DAVE.node_id, now=NOW)
    assert [q.wire.to for q in store.batch(DAVE.node_id, now=NOW)] == [(BOB.node_id,)]
    # A duplicate that names nobody (every matching subscriber) adds nothing.
    store.accept([fanout(pub(1), [BOB])], now=NOW)
    assert store.batch(BOB.node_id, now=NOW) == []


def held_for(item: Admitted, *subscribers: crypto.Identity, came_from: crypto.Identity) -> Intake:
    """A copy addressed to ``subscribers`` that this node can send on only back to
    ``came_from``: held here for each."""
    to = tuple(s.node_id for s in subscribers)
    decision = Fanout(False, (), (), held=to)
    return Intake(Admitted(item.frame, item.envelope, item.hops, to), decision, came_from.node_id)


def test_a_copy_held_for_a_subscriber_goes_on_once_a_route_appears(store: Store) -> None:
    # DAVE sent us the copy for FRANK; our only way to FRANK was back through DAVE.
    assert outcomes(store.accept([held_for(pub(1), FRANK, came_from=DAVE)], now=NOW)) == [
        "accepted"
    ]
    assert store.held_destinations() == [FRANK.node_id]
    assert (FRANK.node_id, None) in store.queued_destinations()
    assert len(copies(store)) == 1
    # A second copy for FRANK meets it here (a duplicate): one held copy is enough.
    results = store.accept([held_for(pub(1), FRANK, came_from=EVE)], now=NOW)
    assert outcomes(results) == ["duplicate"]
    assert len(sql(store, "SELECT 1 FROM queue WHERE next_hop IS NULL")) == 1
    # Routes settle: FRANK is reached through DAVE, where the first came from. It goes
    # there (DAVE takes it as an addressed duplicate and, never sending it straight
    # back, on toward FRANK).
    assert store.reroute(FRANK.node_id, DAVE.node_id) == 1
    copies_for_dave = store.batch(DAVE.node_id, now=NOW)
    assert [q.wire.to for q in copies_for_dave] == [(FRANK.node_id,)]
    assert store.held_destinations() == []
    # Copies queued for a next hop are not moved by a reroute of that next hop.
    store.accept([addressed(pub(2), {EVE: [FRANK]})], now=NOW)
    store.reroute(EVE.node_id, None)
    assert len(store.batch(EVE.node_id, now=NOW)) == 1


def test_accept_hands_back_the_copies_it_queued(store: Store) -> None:
    queued: list[mesh.Queued] = []
    store.accept([fanout(pub(1), [DAVE, EVE])], now=NOW, queued=queued)
    read = [*store.batch(DAVE.node_id, now=NOW), *store.batch(EVE.node_id, now=NOW)]
    assert queued == sorted(read, key=lambda row: row.seq)
    assert [row.next_hop for row in queued] == [DAVE.node_id, EVE.node_id]


# -- schema 6 -> 7 ---------------------------------------------------------------------------


def schema_6_store(path: Path) -> None:
    """A store as schema 6 left it: the queue unique by (origin, id, dst, subscribers)
    for every kind, as the table's own constraint (schema 7 keeps that key for
    publications only, a partial index); a message and a publication's two copies
    queued, the counter past its rows."""
    with Store(path) as store:
        store.enqueue([own_message(3, dst=ALICE, next_hop=CAROL)], now=NOW)
        store.accept([fanout(pub(9), [DAVE, CAROL], deliver=False, came_from=EVE)], now=NOW)
        store.enqueue([own_message(4, dst=ALICE, next_hop=CAROL)], now=NOW)
        store.remove([4])
    old_table = store_module._QUEUE_TABLE.replace(
        "DEFAULT x''\n)", "DEFAULT x'',\n    UNIQUE (src, id, dst, subscribers)\n)"
    )
    assert old_table != store_module._QUEUE_TABLE
    db = sqlite3.connect(path)
    with db:
        db.execute(f"CREATE TABLE queue_old {old_table}")
        db.execute("INSERT INTO queue_old SELECT * FROM queue")
        db.execute("DROP TABLE queue")
        db.execute("ALTER TABLE queue_old RENAME TO queue")
        db.execute("UPDATE sqlite_sequence SET name = 'queue' WHERE name = 'queue_old'")
        db.execute("UPDATE meta SET value = 6 WHERE key = 'schema'")
    db.close()


def queue_keys(db: sqlite3.Connection) -> set[tuple[object, ...]]:
    """The queue's unique keys and indexes: (unique, partial, columns) of each."""
    return {
        (row[2], row[4], tuple(c[2] for c in db.execute(f"PRAGMA index_info('{row[1]}')")))
        for row in db.execute("PRAGMA index_list('queue')")
    }


def test_a_schema_6_store_is_migrated_keeping_every_row(path: Path, tmp_path: Path) -> None:
    schema_6_store(path)
    db = sqlite3.connect(path)
    rows = db.execute("SELECT * FROM queue ORDER BY seq").fetchall()
    counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchall()
    assert (1, 0, ("src", "id", "dst", "subscribers")) in queue_keys(db)  # for every kind
    db.close()
    with Store(path) as store, Store(tmp_path / "fresh.sqlite3") as fresh:
        assert sql(store, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        assert sql(store, "SELECT * FROM queue ORDER BY seq") == rows
        assert sql(store, "SELECT seq FROM sqlite_sequence WHERE name = 'queue'") == counter
        assert queue_keys(store._db) == queue_keys(fresh._db)
        assert (1, 1, ("src", "id", "dst", "subscribers")) in queue_keys(store._db)
        # Still one copy of a message, one of a publication per next hop.
        (failed,) = store.write_group(
            [store.enqueue_write([own_message(3, dst=ALICE, next_hop=CAROL)], now=NOW)]
        )
        assert isinstance(failed, MeshError)
        again = store.accept([fanout(pub(9), [DAVE, CAROL], deliver=False, came_from=EVE)], now=NOW)
        assert outcomes(again) == ["duplicate"]
        assert store.copies_of(ALICE.node_id, frame_id(9)) == [DAVE.node_id, CAROL.node_id]
        assert store._held(pub(9).frame)
    with Store(path) as store:  # reopening a migrated store changes nothing
        assert sql(store, "SELECT * FROM queue ORDER BY seq") == rows


def test_looking_for_a_frame_in_the_queue_reads_an_index(path: Path) -> None:
    """The queue's keys on (origin, id) are partial, by kind: a lookup that does not
    say the kind would read the whole queue."""
    with Store(path) as store:
        plans: list[str] = []
        store._db.set_trace_callback(plans.append)
        assert not store._held(message(1).frame)
        store._db.set_trace_callback(None)
        (query,) = [q for q in plans if "FROM queue" in q]
        blobs = (b"x",) * query.count("?")
        plan = [row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {query}", blobs)]
        assert not any(step.startswith("SCAN queue") for step in plan), plan
