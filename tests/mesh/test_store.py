"""The durable store (mesh.Store): responsibility, dedup, quotas, durability, failures.

Every test uses a real SQLite file under ``tmp_path``. "Accepted" must mean committed:
the crash test kills a process with SIGKILL right after ``accept`` returns and finds
everything it acknowledged.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crypto
from mesh import (
    Admitted,
    InboxEntry,
    MeshError,
    Outcome,
    Result,
    Store,
    StoreFull,
    StoreStatistics,
)
from mesh._store import SEEN_GRACE_MS

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5


def frame_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def admitted(n: int, body: bytes = b"body", *, exp: int = EXP, hops: int = 1) -> Admitted:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=ALICE.node_id,
        id=frame_id(n),
        ts=TS,
        exp=exp,
        hops=8,
        dst=BOB.node_id,
        body=body,
        ct="text/plain",
    )
    return Admitted(frame, frame.seal(ALICE), hops)


def receipt(n: int, ref: bytes) -> Admitted:
    frame = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=ALICE.node_id,
        id=frame_id(n),
        ts=TS,
        exp=EXP,
        hops=8,
        dst=BOB.node_id,
        ref=ref,
    )
    return Admitted(frame, frame.seal(ALICE), 2)


def outcomes(results: list[Result]) -> list[str]:
    return [str(r.outcome) for r in results]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path) as store:
        yield store


# -- accepting, dedup ----------------------------------------------------------------


def test_accept_then_duplicate(store: Store) -> None:
    results = store.accept([admitted(1), admitted(2)], now=NOW)
    assert outcomes(results) == ["accepted", "accepted"]
    assert all(r.ok for r in results)
    results = store.accept([admitted(2), admitted(3), admitted(1)], now=NOW)
    assert outcomes(results) == ["duplicate", "accepted", "duplicate"]
    assert [e.id for e in store.pending()] == [frame_id(1), frame_id(2), frame_id(3)]


def test_duplicates_within_one_batch(store: Store) -> None:
    results = store.accept([admitted(1), admitted(1, b"other body"), admitted(1)], now=NOW)
    assert outcomes(results) == ["accepted", "duplicate", "duplicate"]
    (entry,) = store.pending()
    assert entry.body == b"body"
    assert store.statistics() == StoreStatistics(inbox_frames=1, inbox_bytes=4, seen_ids=1)


def test_empty_batch(store: Store) -> None:
    assert store.accept([], now=NOW) == []
    assert store.statistics() == StoreStatistics(0, 0, 0)


def test_inbox_entry_carries_the_frame(store: Store) -> None:
    store.accept([admitted(1, b"hello", hops=3)], now=NOW)
    store.accept([receipt(2, ref=frame_id(1))], now=NOW + 1)
    message, rcpt = store.pending()
    assert message == InboxEntry(
        seq=message.seq,
        id=frame_id(1),
        src=ALICE.node_id,
        kind=crypto.Kind.MSG,
        ts=TS,
        received=NOW,
        hops=3,
        ct="text/plain",
        ref=None,
        body=b"hello",
    )
    assert isinstance(message.kind, crypto.Kind)
    assert (rcpt.kind, rcpt.ref, rcpt.body, rcpt.ct, rcpt.received, rcpt.hops) == (
        crypto.Kind.RCPT,
        frame_id(1),
        b"",
        None,
        NOW + 1,
        2,
    )
    assert rcpt.seq > message.seq


def test_seen_set_and_inbox_survive_reopening(path: Path) -> None:
    with Store(path) as store:
        store.accept([admitted(1, b"a" * 10), admitted(2, b"b" * 20)], now=NOW)
        store.ack([frame_id(1)])
        before = store.pending()
    with Store(path) as store:
        assert store.pending() == before
        assert store.statistics() == StoreStatistics(inbox_frames=1, inbox_bytes=20, seen_ids=2)
        # Acknowledged or not, a frame taken once is a duplicate forever after.
        assert outcomes(store.accept([admitted(1), admitted(2)], now=NOW)) == [
            "duplicate",
            "duplicate",
        ]


# -- pending, ack ----------------------------------------------------------------------


def test_pending_order_and_paging(store: Store) -> None:
    for start in range(0, 10, 3):
        store.accept([admitted(n) for n in range(start, min(start + 3, 10))], now=NOW)
    everything = store.pending(limit=100)
    assert [e.id for e in everything] == [frame_id(n) for n in range(10)]
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    pages: list[InboxEntry] = []
    after = 0
    while page := store.pending(after=after, limit=4):
        assert len(page) <= 4
        pages += page
        after = page[-1].seq
    assert pages == everything
    assert store.pending(after=everything[-1].seq) == []
    assert store.pending(after=everything[4].seq, limit=2) == everything[5:7]
    assert len(store.pending()) == 10  # default limit is above 10


def test_pending_default_limit(store: Store) -> None:
    store.accept([admitted(n) for n in range(150)], now=NOW)
    assert len(store.pending()) == 100


def test_ack(store: Store) -> None:
    store.accept([admitted(n, b"x" * (n + 1)) for n in range(4)], now=NOW)
    assert store.ack([frame_id(1), frame_id(3), frame_id(99), frame_id(1)]) == 2
    assert [e.id for e in store.pending()] == [frame_id(0), frame_id(2)]
    assert store.statistics() == StoreStatistics(inbox_frames=2, inbox_bytes=1 + 3, seen_ids=4)
    assert store.ack([]) == 0
    assert store.ack(iter([frame_id(0)])) == 1  # any iterable
    assert store.ack([frame_id(0)]) == 0


def test_ack_accepts_a_generator_once(store: Store) -> None:
    store.accept([admitted(1), admitted(2)], now=NOW)
    assert store.ack(e.id for e in store.pending()) == 2
    assert store.pending() == []


def test_inbox_bytes_accounting(path: Path) -> None:
    with Store(path) as store:
        store.accept([admitted(1, b"x" * 100), admitted(2, b"y" * 50)], now=NOW)
        store.accept([admitted(2, b"y" * 50), receipt(3, frame_id(1))], now=NOW)
        assert store.statistics() == StoreStatistics(inbox_frames=3, inbox_bytes=150, seen_ids=3)
        store.ack([frame_id(1)])
        assert store.statistics().inbox_bytes == 50
    with Store(path) as store:
        assert store.statistics() == StoreStatistics(inbox_frames=2, inbox_bytes=50, seen_ids=3)
        store.ack([frame_id(2), frame_id(3)])
        assert store.statistics() == StoreStatistics(inbox_frames=0, inbox_bytes=0, seen_ids=3)


# -- quota and disk full -------------------------------------------------------------


def test_quota_is_atomic(path: Path) -> None:
    with Store(path, max_inbox_bytes=100) as store:
        store.accept([admitted(1, b"a" * 60)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.accept([admitted(2, b"b" * 20), admitted(3, b"c" * 21)], now=NOW)
        assert str(caught.value) == "inbox holds 60 bytes; 41 more would pass its quota of 100"
        assert caught.value.status_hint == 429
        # Nothing of the refused batch was taken: not even the frame that would fit.
        assert [e.id for e in store.pending()] == [frame_id(1)]
        assert store.statistics() == StoreStatistics(inbox_frames=1, inbox_bytes=60, seen_ids=1)
        # So the same frames are not duplicates later, once there is room.
        assert outcomes(store.accept([admitted(2, b"b" * 40)], now=NOW)) == ["accepted"]
        assert store.statistics().inbox_bytes == 100  # exactly at the quota is fine
        with pytest.raises(StoreFull, match="inbox holds 100 bytes; 1 more"):
            store.accept([admitted(3, b"c")], now=NOW)
        # Duplicates and empty bodies add nothing, so they are taken even when full.
        results = store.accept([admitted(1, b"a" * 60), receipt(4, frame_id(1))], now=NOW)
        assert outcomes(results) == ["duplicate", "accepted"]
        store.ack([frame_id(1)])
        assert outcomes(store.accept([admitted(3, b"c" * 60)], now=NOW)) == ["accepted"]


def test_quota_counts_what_is_already_stored_after_reopening(path: Path) -> None:
    with Store(path) as store:
        store.accept([admitted(1, b"a" * 80)], now=NOW)
    with (
        Store(path, max_inbox_bytes=100) as store,
        pytest.raises(StoreFull, match="inbox holds 80 bytes"),
    ):
        store.accept([admitted(2, b"b" * 21)], now=NOW)


def test_disk_full_is_store_full_and_reads_still_work(store: Store) -> None:
    store.accept([admitted(1, b"small")], now=NOW)
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count={pages + 2}")
    big = [admitted(n, os.urandom(100_000)) for n in range(2, 5)]
    with pytest.raises(StoreFull, match="out of disk space") as caught:
        store.accept(big, now=NOW)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert [e.id for e in store.pending()] == [frame_id(1)]
    assert store.statistics() == StoreStatistics(inbox_frames=1, inbox_bytes=5, seen_ids=1)
    # Not taken, so not seen: the same frames are accepted once there is room.
    store._db.execute("PRAGMA max_page_count=1073741823")
    assert outcomes(store.accept(big, now=NOW)) == ["accepted"] * 3
    assert store.statistics().inbox_frames == 4


def test_a_value_sqlite_cannot_take_leaves_no_transaction_open(store: Store) -> None:
    # Our bug, not the disk's: it propagates as is, and the store stays usable.
    with pytest.raises(OverflowError):
        store.accept([admitted(1), admitted(2, hops=2**64)], now=NOW)
    assert not store._db.in_transaction
    assert store.pending() == []
    assert outcomes(store.accept([admitted(1)], now=NOW)) == ["accepted"]
    with pytest.raises(OverflowError):
        store.ack([frame_id(1), 2**64])  # type: ignore[list-item]
    assert not store._db.in_transaction
    assert store.ack([frame_id(1)]) == 1


# -- sweeping --------------------------------------------------------------------------


def test_sweep_forgets_ids_only_after_expiry_and_grace(store: Store) -> None:
    store.accept([admitted(n, exp=EXP + n - 1) for n in (1, 2, 3)], now=NOW)
    store.ack([frame_id(1), frame_id(2), frame_id(3)])
    assert store.sweep(now=EXP) == 0
    assert store.sweep(now=EXP + SEEN_GRACE_MS) == 0  # exp == now - grace: kept
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 2) == 2
    assert store.statistics().seen_ids == 1
    assert outcomes(store.accept([admitted(3, exp=EXP + 2)], now=NOW)) == ["duplicate"]
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 3) == 1
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 3) == 0
    assert store.statistics().seen_ids == 0


# -- opening, settings, failures -----------------------------------------------------


def test_wal_and_full_sync(store: Store) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_schema_version_mismatch(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    db.close()
    with pytest.raises(MeshError, match=f"store {path} has schema 2; this ptth reads 1"):
        Store(path)


def test_a_corrupt_file_is_a_mesh_error(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database, just garbage " * 100)
    with pytest.raises(MeshError, match=f"store {path} failed") as caught:
        Store(path)
    assert type(caught.value) is MeshError
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_a_path_that_cannot_be_opened_is_a_mesh_error(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="unable to open") as caught:
        Store(tmp_path / "no such directory" / "store.sqlite3")
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_close_is_idempotent_and_a_closed_store_raises_mesh_errors(path: Path) -> None:
    store = Store(path)
    store.close()
    store.close()
    with Store(path):
        pass
    calls: list[Callable[[], object]] = [
        lambda: store.accept([admitted(1)], now=NOW),
        lambda: store.pending(),
        lambda: store.ack([frame_id(1)]),
        lambda: store.sweep(now=NOW),
        lambda: store.statistics(),
    ]
    for call in calls:
        with pytest.raises(MeshError, match="closed database") as caught:
            call()
        assert isinstance(caught.value.__cause__, sqlite3.ProgrammingError)


# -- threads ---------------------------------------------------------------------------


def test_accept_from_many_threads(store: Store) -> None:
    threads, batches, size = 8, 20, 5
    shared = admitted(10_000, b"shared")
    results: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for b in range(batches):
                base = (t * batches + b) * size
                batch = [admitted(base + i, b"x" * (t + 1)) for i in range(size)]
                results[t] += outcomes(store.accept([*batch, shared], now=NOW))
                store.pending(limit=5)
                store.statistics()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    flat = [outcome for per_thread in results for outcome in per_thread]
    assert flat.count("accepted") == threads * batches * size + 1  # the shared one once
    assert flat.count("duplicate") == threads * batches - 1
    expected_bytes = sum((t + 1) * batches * size for t in range(threads)) + len(b"shared")
    frames = threads * batches * size + 1
    assert store.statistics() == StoreStatistics(frames, expected_bytes, frames)
    with Store(store.path) as again:
        assert again.statistics() == StoreStatistics(frames, expected_bytes, frames)


# -- durability ------------------------------------------------------------------------

_CRASH = textwrap.dedent(
    """
    import os, signal, sys
    import crypto, mesh

    alice = crypto.Identity(bytes(range(32)))
    bob = crypto.Identity(bytes(range(1, 33)))
    batch = []
    for n in range(50):
        frame = crypto.Frame(
            kind=crypto.Kind.MSG, src=alice.node_id, id=n.to_bytes(16, "big"),
            ts=1, exp=1000, hops=4, dst=bob.node_id, body=b"body %d" % n,
        )
        batch.append(mesh.Admitted(frame, frame.seal(alice), 1))
    store = mesh.Store(sys.argv[1])
    results = store.accept(batch, now=1)
    assert all(r.outcome is mesh.Outcome.ACCEPTED for r in results), results
    print("accepted", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_process_killed_after_accept_loses_nothing(path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CRASH, str(path)],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout == b"accepted\n", child.stderr.decode()
    assert child.returncode == -signal.SIGKILL
    with Store(path) as store:
        pending = store.pending()
        assert [e.body for e in pending] == [b"body %d" % n for n in range(50)]
        assert store.statistics().seen_ids == 50
        again = [admitted(n) for n in range(50)]  # same ids
        assert all(r.outcome is Outcome.DUPLICATE for r in store.accept(again, now=1))
