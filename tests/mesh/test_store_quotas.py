"""The store's quotas count what is stored, and the local API's idempotency records.

The attack these tests replay: a throw-away identity floods a node with frames whose
bodies are empty. The inbox quota once counted body bytes only, so such frames cost
nothing and kept coming while the file grew far past the quota. Every row is charged
``stored_charge`` of what it holds now, the inbox has a quota per origin, and the file
stays within a small factor of the quotas; other origins keep delivering meanwhile.

Cast: BOB is this node, ALICE an honest origin, CAROL and DAVE neighbours, EVE the
flooder (and her throw-away identities).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
import mesh
from mesh import (
    IDEMPOTENCY_WINDOW_MS,
    MIN_CHARGE,
    ROW_OVERHEAD,
    Admitted,
    Deliver,
    Forward,
    Idempotent,
    Intake,
    Outgoing,
    Quotas,
    Store,
    StoreFull,
    StoreStatistics,
    stored_charge,
)
from mesh import _store as store_module
from mesh._store import MAX_RECEIPTS_PER_FRAME, SCHEMA_VERSION, _key_text

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
DAVE = crypto.Identity(bytes(range(3, 35)))
EVE = crypto.Identity(bytes(range(4, 36)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5
MiB = 1024 * 1024
#: Frames in one request at most (mesh.MAX_FRAMES_PER_REQUEST is 1000; smaller batches
#: find the quota more closely).
BATCH = 100


def frame_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def message(
    n: int,
    body: bytes = b"",
    *,
    src: crypto.Identity = EVE,
    dst: crypto.Identity = BOB,
    kind: crypto.Kind = crypto.Kind.MSG,
) -> Admitted:
    frame = crypto.Frame(
        kind=kind, src=src.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8, dst=dst.node_id,
        body=body,
    )  # fmt: skip
    return Admitted(frame, frame.seal(src), 1)


def here(item: Admitted, came_from: crypto.Identity = CAROL) -> Intake:
    return Intake(item, Deliver(), came_from.node_id)


def onward(item: Admitted, came_from: crypto.Identity = CAROL) -> Intake:
    return Intake(item, Forward(DAVE.node_id), came_from.node_id)


def own(n: int, body: bytes = b"body") -> Outgoing:
    """A message this node (BOB) sends to ALICE, through CAROL."""
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=BOB.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        dst=ALICE.node_id, body=body,
    )  # fmt: skip
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=CAROL.node_id)


def own_pub(n: int) -> tuple[crypto.Frame, bytes]:
    frame = crypto.Frame(
        kind=crypto.Kind.PUB, src=BOB.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        topic="news", body=b"goal",
    )  # fmt: skip
    return frame, frame.seal(BOB)


def inbox_charge(item: Admitted) -> int:
    return stored_charge(len(item.envelope) + len(item.frame.body or b""))


def sql(store: Store, query: str, *args: object) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = store._db.execute(query, args).fetchall()
    return rows


def file_size(store: Store) -> int:
    """Bytes of the database file once the WAL is checkpointed into it."""
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ((pages,),) = sql(store, "PRAGMA page_count")
    ((page_size,),) = sql(store, "PRAGMA page_size")
    size: int = pages * page_size
    return size


def flood(store: Store, items: Sequence[Intake]) -> int:
    """Offer ``items`` in batches, as a neighbour would; return how many were taken.
    The first batch refused is offered again frame by frame, to fill the quota."""
    taken = 0
    refused = False
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        try:
            results = store.accept(batch, now=NOW)
        except StoreFull:
            if not refused:
                refused = True
                taken += flood_singly(store, batch)
            continue
        taken += sum(result.outcome is mesh.Outcome.ACCEPTED for result in results)
    return taken


def flood_singly(store: Store, items: Sequence[Intake]) -> int:
    taken = 0
    for item in items:
        with contextlib.suppress(StoreFull):
            (result,) = store.accept([item], now=NOW)
            taken += result.outcome is mesh.Outcome.ACCEPTED
    return taken


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


# -- what a row is charged ----------------------------------------------------------------


def test_stored_charge() -> None:
    assert stored_charge(0) == MIN_CHARGE
    assert stored_charge(MIN_CHARGE - ROW_OVERHEAD) == MIN_CHARGE
    assert stored_charge(10_000) == 10_000 + ROW_OVERHEAD


# -- the flood ----------------------------------------------------------------------------


def test_a_flood_of_empty_frames_from_one_origin_stops_at_its_share(path: Path) -> None:
    quota = 2 * MiB
    share = quota // mesh.INBOX_ORIGIN_SHARE
    with Store(path, max_inbox_bytes=quota) as store:
        assert store.max_inbox_bytes_per_origin == share  # the default share
        baseline = file_size(store)
        items = [here(message(n)) for n in range(20_000)]
        each = inbox_charge(items[0].admitted)
        taken = flood(store, items)
        # Refused once EVE's share is reached: the next frame would pass it.
        assert share - each < taken * each <= share
        assert store._inbox_origin[EVE.node_id.raw] == taken * each
        (refused,) = store.accept([here(message(30_000))], now=NOW)
        assert (refused.outcome, refused.code) == (mesh.Outcome.REJECTED, mesh.Reason.STORE_FULL)
        assert refused.words == (
            f"inbox holds {taken * each} bytes from {EVE.node_id.short}, its quota per "
            f"origin is {share}: no more until some are read"
        )
        # Nothing of the refused frames was kept, not even their seen-set entries.
        assert store.statistics().seen_ids == taken
        assert file_size(store) - baseline <= 1.5 * share
        # ALICE, and the flooder's own neighbour relaying for others, still deliver.
        honest = [here(message(n, b"hello", src=ALICE), came_from=DAVE) for n in range(50)]
        assert flood(store, honest) == 50
        assert flood(store, [here(message(n, b"hi", src=DAVE)) for n in range(10)]) == 10
        # Once the application reads EVE's frames, she has room again.
        assert store.ack([(EVE.node_id, frame_id(n)) for n in range(10)]) == 10
        assert flood(store, [here(message(30_000))]) == 1


def test_a_flood_from_many_throw_away_identities_stops_at_the_inbox_quota(path: Path) -> None:
    quota = 2 * MiB
    flooders = [crypto.Identity(bytes([200, n]) * 16) for n in range(40)]
    with Store(path, max_inbox_bytes=quota) as store:
        baseline = file_size(store)
        items = [here(message(n, src=flooders[n % 40])) for n in range(20_000)]
        each = inbox_charge(items[0].admitted)
        taken = flood(store, items)
        assert quota - each < taken * each <= quota
        assert store.statistics().inbox_bytes == taken * each
        with pytest.raises(StoreFull, match=f"quota of {quota}; retry later"):
            store.accept([here(message(1, src=ALICE))], now=NOW)
        # The file holds what the quota says, within a small factor (before: 20,000
        # frames taken, 12 MiB for a "2 MiB" inbox).
        grown = file_size(store) - baseline
        assert taken * each * 0.5 <= grown <= 1.5 * quota
        # Honest traffic flows again as soon as the application reads what it holds.
        entries = store.pending(limit=5)
        assert store.ack((entry.src, entry.id) for entry in entries) == 5
        assert flood(store, [here(message(1, b"hello", src=ALICE))]) == 1


def test_a_flood_of_empty_frames_to_relay_stops_at_the_queue_quotas(path: Path) -> None:
    quotas = Quotas(total=4 * MiB, per_origin=MiB, per_next_hop=4 * MiB, per_neighbour=2 * MiB)
    with Store(path, quotas=quotas) as store:
        baseline = file_size(store)
        items = [onward(message(n, dst=ALICE)) for n in range(10_000)]
        each = stored_charge(len(items[0].admitted.envelope))
        taken = flood(store, items)
        assert MiB - each < taken * each <= MiB
        assert store.statistics().queued_bytes == taken * each
        assert sum(q.bytes for q in store.queues()) == taken * each
        (refused,) = store.accept([onward(message(30_000, dst=ALICE))], now=NOW)
        assert refused.code is mesh.Reason.STORE_FULL
        assert refused.words.endswith(
            f"its quota per origin is {MiB}: no more until some are passed on"
        )
        assert file_size(store) - baseline <= 1.5 * MiB
        # Another origin's frames, through the same neighbour, are still taken.
        honest = [onward(message(n, b"hello", src=ALICE, dst=DAVE)) for n in range(50)]
        assert flood(store, honest) == 50


def test_the_per_origin_inbox_quota(path: Path) -> None:
    items = [message(n, b"x" * 100) for n in range(4)]
    each = inbox_charge(items[0])
    with Store(path, max_inbox_bytes=10 * each, max_inbox_bytes_per_origin=2 * each) as store:
        store.accept([here(items[0])], now=NOW)
        # Per frame: what fits in the origin's share is taken, the rest refused, and
        # another origin's frames in the same batch are taken.
        results = store.accept(
            [here(message(1, src=ALICE)), here(items[1]), here(items[2])], now=NOW
        )
        assert [r.outcome.value for r in results] == ["accepted", "accepted", "rejected"]
        assert results[2].words.startswith(f"inbox holds {2 * each} bytes from {EVE.node_id.short}")
        assert store.statistics().inbox_frames == 3
        # This node's own publications, delivered here, are its share.
        frame, envelope = own_pub(1)
        store.publish(frame, envelope, deliver=True, next_hops=[], now=NOW)
        assert store._inbox_origin[BOB.node_id.raw] == stored_charge(len(envelope) + 4)
    # Reopened: each origin's share is counted from the table.
    with Store(path, max_inbox_bytes=10 * each, max_inbox_bytes_per_origin=2 * each) as store:
        (refused,) = store.accept([here(items[2])], now=NOW)
        assert refused.words.startswith(f"inbox holds {2 * each} bytes from {EVE.node_id.short}")
        store.accept([here(message(2, src=ALICE))], now=NOW)
        assert store.ack([(EVE.node_id, frame_id(0))]) == 1
        store.accept([here(items[2])], now=NOW)


# -- receipts ------------------------------------------------------------------------------


def receipt(n: int, ref: bytes, *, by: crypto.Identity, st: str = "dropped") -> Admitted:
    frame = crypto.Frame(
        kind=crypto.Kind.RCPT, src=by.node_id, id=frame_id(n), ts=TS, exp=EXP, hops=8,
        dst=BOB.node_id, ref=ref, st=st, why="policy" if st == "dropped" else None,
        n=None if st == "dropped" else 1,
    )  # fmt: skip
    return Admitted(frame, frame.seal(by), 1)


def test_receipts_no_one_waits_for_take_no_room(path: Path) -> None:
    # Receipts take no inbox room, so no quota counts them: those about frames we never
    # sent are not kept, not even in the seen-set.
    with Store(path, max_inbox_bytes=MIN_CHARGE) as store:
        baseline = file_size(store)
        forged = [here(receipt(n, frame_id(n), by=EVE)) for n in range(5000)]
        assert flood(store, forged) == 5000
        assert store.statistics().seen_ids == 0
        assert sql(store, "SELECT COUNT(*) FROM receipts") == [(0,)]
        assert file_size(store) - baseline < 64 * 1024


def test_receipts_about_one_frame_are_kept_up_to_a_limit(path: Path) -> None:
    with Store(path) as store:
        store.enqueue([own(1)], now=NOW, receipts=[True])
        # Relays that saw the id forge drops: only so many are kept...
        forged = [here(receipt(100 + n, frame_id(1), by=EVE)) for n in range(200)]
        assert flood(store, forged) == 200
        count = sql(store, "SELECT COUNT(*) FROM receipts WHERE ref = ?", frame_id(1))
        assert count == [(MAX_RECEIPTS_PER_FRAME,)]
        assert store.statistics().seen_ids == MAX_RECEIPTS_PER_FRAME
        # ... and the destination's delivery still settles the trace.
        delivered = receipt(1000, frame_id(1), by=ALICE, st="delivered")
        assert flood(store, [here(delivered)]) == 1
        trace = store.trace(frame_id(1))
        assert trace is not None
        assert (trace.state, trace.by) == ("delivered", ALICE.node_id)


# -- idempotency ---------------------------------------------------------------------------


def key(name: str, fingerprint: bytes = b"request 1", response: bytes = b"first") -> Idempotent:
    return Idempotent(name, fingerprint, response)


def queued_ids(store: Store) -> list[bytes]:
    return [row[0] for row in sql(store, "SELECT id FROM queue ORDER BY seq")]


def test_the_same_key_takes_nothing_and_returns_the_first_record(path: Path) -> None:
    first = key("k1", b"request 1", b'{"id": "01"}')
    with Store(path) as store:
        assert store.enqueue([own(1)], now=NOW, receipts=[True], idempotent=first) is None
        assert queued_ids(store) == [frame_id(1)]
        # A retry (a new frame: the client did not hear the answer) takes nothing.
        again = key("k1", b"request 1", b"would be the second answer")
        assert store.enqueue([own(2)], now=NOW + 1, idempotent=again) == first
        assert queued_ids(store) == [frame_id(1)]
        assert store.trace(frame_id(2)) is None
        # Another request under the same key gets the record too: the caller compares
        # fingerprints (the store does not).
        other = key("k1", b"another request")
        assert store.enqueue([own(3)], now=NOW, idempotent=other) == first
        # Other keys, and no key, take frames.
        assert store.enqueue([own(4)], now=NOW, idempotent=key("k2")) is None
        assert store.enqueue([own(5)], now=NOW) is None
        # Even a frame queued already: a recorded key is answered before anything else.
        assert store.enqueue([own(1)], now=NOW, idempotent=first) == first
        assert queued_ids(store) == [frame_id(1), frame_id(4), frame_id(5)]
    # A node restart: the record is on disk.
    with Store(path) as store:
        assert store.enqueue([own(6)], now=NOW + 2, idempotent=again) == first
        assert queued_ids(store) == [frame_id(1), frame_id(4), frame_id(5)]


def test_publish_with_a_key(path: Path) -> None:
    first = key("p1", b"pub", b"published")
    with Store(path) as store:
        frame, envelope = own_pub(1)
        hops = [CAROL.node_id, DAVE.node_id]
        assert store.publish(frame, envelope, deliver=True, next_hops=hops, now=NOW,
                             idempotent=first) is None  # fmt: skip
        before = store.statistics()
        # The same publication again would be refused as taken already; with its key,
        # it is answered with the record.
        assert store.publish(frame, envelope, deliver=True, next_hops=hops, now=NOW,
                             idempotent=key("p1")) == first  # fmt: skip
        frame, envelope = own_pub(2)
        assert store.publish(frame, envelope, deliver=True, next_hops=hops, now=NOW,
                             idempotent=key("p1")) == first  # fmt: skip
        assert store.statistics() == before
        # Keys are one namespace for sends and publications.
        assert store.enqueue([own(1)], now=NOW, idempotent=key("p1")) == first


def test_a_refused_request_records_no_key(path: Path) -> None:
    with Store(path, quotas=Quotas(total=stored_charge(len(own(1).envelope)))) as store:
        with pytest.raises(StoreFull):
            store.enqueue([own(1), own(2)], now=NOW, idempotent=key("k"))
        assert sql(store, "SELECT COUNT(*) FROM idempotency") == [(0,)]
        # Retried once there is room: taken, and recorded then.
        assert store.enqueue([own(1)], now=NOW, idempotent=key("k")) is None
        assert store.enqueue([own(2)], now=NOW, idempotent=key("k")) == key("k")


def test_a_key_is_new_again_after_the_window(path: Path) -> None:
    first, second = key("k", b"one", b"first"), key("k", b"two", b"second")
    with Store(path) as store:
        assert store.enqueue([own(1)], now=NOW, idempotent=first) is None
        last = NOW + IDEMPOTENCY_WINDOW_MS - 1
        assert store.enqueue([own(2)], now=last, idempotent=second) == first
        # Past the window it is not matched, swept or not; the new request is recorded.
        assert store.enqueue([own(2)], now=last + 1, idempotent=second) is None
        assert queued_ids(store) == [frame_id(1), frame_id(2)]
        assert store.enqueue([own(3)], now=last + 2, idempotent=first) == second
        assert sql(store, "SELECT key, created FROM idempotency") == [("k", last + 1)]


def test_sweep_forgets_keys_past_the_window(path: Path) -> None:
    with Store(path) as store:
        store.enqueue([own(1)], now=NOW, idempotent=key("old"))
        store.enqueue([own(2)], now=NOW + 1000, idempotent=key("newer"))
        store.sweep(now=NOW + IDEMPOTENCY_WINDOW_MS - 1)
        assert sql(store, "SELECT COUNT(*) FROM idempotency") == [(2,)]
        store.sweep(now=NOW + IDEMPOTENCY_WINDOW_MS)
        assert sql(store, "SELECT key FROM idempotency") == [("newer",)]
        assert store._idempotency_keys == 1


def test_at_most_so_many_keys_are_kept_oldest_go_first(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_IDEMPOTENCY_KEYS", 3)
    with Store(path) as store:
        for n in range(5):
            store.enqueue([own(n)], now=NOW + n, idempotent=key(f"k{n}"))
        assert sql(store, "SELECT key FROM idempotency ORDER BY created") == [
            ("k2",),
            ("k3",),
            ("k4",),
        ]
    with Store(path) as store:
        assert store._idempotency_keys == 3
        assert store.enqueue([own(10)], now=NOW + 10, idempotent=key("k0")) is None  # new
        assert store.enqueue([own(11)], now=NOW + 11, idempotent=key("k3")) == key("k3")
        assert sql(store, "SELECT key FROM idempotency ORDER BY created") == [
            ("k3",),
            ("k4",),
            ("k0",),
        ]


ODD_KEYS = [
    "",
    "\x00",
    "\x00abc",
    "a",
    "a\x00b",  # not cut at the NUL
    "\ud800",  # a lone surrogate: UTF-8 cannot encode it
    "\udc00",
    "\ud83d\ude00",  # a surrogate pair, as two code points
    "\U0001f600",
    "x" * 100_000,
    "x" * 100_001,
    _key_text("\ud800"),  # a key that looks like another's digest
]


def test_any_str_is_a_key_of_its_own(path: Path) -> None:
    with Store(path) as store:
        for n, name in enumerate(ODD_KEYS):
            record = key(name, b"%d" % n)
            assert store.enqueue([own(n)], now=NOW, idempotent=record) is None
        for n, name in enumerate(ODD_KEYS):
            assert store.enqueue([own(100 + n)], now=NOW, idempotent=key(name)) == key(
                name, b"%d" % n
            )
        assert len(queued_ids(store)) == len(ODD_KEYS)


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=())), st.text(st.characters(exclude_categories=())))
def test_stored_keys_are_distinct_and_bounded(a: str, b: str) -> None:
    assert len(_key_text(a).encode("utf-8")) <= 1024
    assert (_key_text(a) == _key_text(b)) == (a == b)


# -- schema 5 -> 6 ---------------------------------------------------------------------------


def schema_5_store(path: Path) -> None:
    """A store as schema 5 left it: schema 6 only added the idempotency table, so a
    schema-6 store without it, marked 5, is what the previous ptth wrote."""
    with Store(path, max_inbox_bytes=MiB) as store:
        store.accept([here(message(n, b"x" * n)) for n in range(5)], now=NOW)
        store.accept([here(message(n, src=ALICE)) for n in range(3)], now=NOW)
        store.accept([onward(message(n, dst=ALICE)) for n in range(10, 14)], now=NOW)
        store.enqueue([own(20), own(21)], now=NOW, receipts=[True, False])
        store.remove([1])  # the queue's counter is past its rows
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE idempotency")
        db.execute("UPDATE meta SET value = 5 WHERE key = 'schema'")
    db.close()


def tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        names = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'"
            )
        ]
        return {name: db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall() for name in names}
    finally:
        db.close()


def test_a_schema_5_store_is_migrated_keeping_every_row(path: Path) -> None:
    schema_5_store(path)
    before = tables(path)
    with Store(path, max_inbox_bytes=MiB) as store:
        assert sql(store, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        # The byte counts, charges now, are counted from the rows.
        inbox = sql(store, "SELECT src, LENGTH(envelope) + LENGTH(body) FROM inbox")
        by_origin: dict[object, int] = {}
        for src, size in inbox:
            by_origin[src] = by_origin.get(src, 0) + stored_charge(size)
        assert dict(store._inbox_origin) == by_origin
        sizes = [row[0] for row in sql(store, "SELECT size FROM queue")]
        statistics = store.statistics()
        assert (statistics.inbox_frames, statistics.queued_frames) == (8, 5)
        assert statistics.inbox_bytes == sum(by_origin.values())
        assert statistics.queued_bytes == sum(stored_charge(s) for s in sizes)
        # Idempotency keys work.
        assert store.enqueue([own(30)], now=NOW, idempotent=key("k")) is None
        assert store.enqueue([own(31)], now=NOW, idempotent=key("k")) == key("k")
    after = tables(path)
    assert after.pop("idempotency") == [("k", b"request 1", b"first", NOW)]
    (seq,) = [row for row in after["sqlite_sequence"] if row[0] == "queue"]
    assert seq == ("queue", 7)  # 6 taken before, 1 after
    after["queue"] = [row for row in after["queue"] if row[2] != frame_id(30)]
    after["sent"] = [row for row in after["sent"] if row[0] != frame_id(30)]
    after["sqlite_sequence"] = before["sqlite_sequence"]
    assert after == before
    # Reopening a migrated store changes nothing.
    with Store(path, max_inbox_bytes=MiB) as store:
        queued_bytes = statistics.queued_bytes + stored_charge(len(own(30).envelope))
        assert store.statistics() == StoreStatistics(8, statistics.inbox_bytes, 8, 6, queued_bytes)


def outcomes(results: Sequence[mesh.Result]) -> list[str]:
    return [result.outcome.value for result in results]


def test_a_copy_of_a_taken_frame_is_a_duplicate_even_past_the_share(path: Path) -> None:
    # The hop before resends what this node took (its answer was lost): still a
    # duplicate, so it does not tell the origin a frame was dropped that was not.
    items = [message(n, b"x" * 100) for n in range(3)]
    each = inbox_charge(items[0])
    with Store(path, max_inbox_bytes=10 * each, max_inbox_bytes_per_origin=2 * each) as store:
        assert outcomes(store.accept([here(items[0]), here(items[1])], now=NOW)) == [
            "accepted",
            "accepted",
        ]
        results = store.accept([here(items[0]), here(items[2])], now=NOW)
        assert outcomes(results) == ["duplicate", "rejected"]
        assert results[1].code is mesh.Reason.STORE_FULL
    quotas = Quotas(per_origin=stored_charge(len(onward(message(9, dst=ALICE)).admitted.envelope)))
    with Store(path.with_name("relay.sqlite3"), quotas=quotas) as store:
        first, second = onward(message(10, dst=ALICE)), onward(message(11, dst=ALICE))
        assert outcomes(store.accept([first], now=NOW)) == ["accepted"]
        assert outcomes(store.accept([first, second], now=NOW)) == ["duplicate", "rejected"]
