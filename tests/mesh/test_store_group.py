"""Group commit in the store: :meth:`mesh.Store.write_group` runs writes in one
transaction, each in a savepoint, so one write's failure undoes that write alone, the
quotas see the writes before it, and a failed commit leaves the counts as the tables are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import crypto
from mesh import Idempotent, MeshError, Outgoing, Quotas, Store, StoreFull, Write, stored_charge

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5


def own(n: int) -> Outgoing:
    """A message this node (BOB) sends to ALICE, through CAROL."""
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=BOB.node_id, id=n.to_bytes(16, "big"), ts=TS, exp=EXP,
        hops=8, dst=ALICE.node_id, body=b"body",
    )  # fmt: skip
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=CAROL.node_id)


def own_pub(n: int) -> tuple[crypto.Frame, bytes]:
    frame = crypto.Frame(
        kind=crypto.Kind.PUB, src=BOB.node_id, id=n.to_bytes(16, "big"), ts=TS, exp=EXP,
        hops=8, topic="news", body=b"goal",
    )  # fmt: skip
    return frame, frame.seal(BOB)


def queued(store: Store) -> list[int]:
    rows = store._db.execute("SELECT id FROM queue ORDER BY seq").fetchall()
    return [int.from_bytes(row[0], "big") for row in rows]


def counts(store: Store) -> tuple[Any, ...]:
    """The store's in-memory counts (quotas, idempotency keys)."""
    usage = store._usage
    return (
        usage.total,
        dict(usage.origin),
        dict(usage.next_hop),
        store._inbox_bytes,
        dict(store._inbox_origin),
        store._idempotency_keys,
    )


def recounted(store: Store) -> tuple[Any, ...]:
    """The same counts, made again from the tables."""
    store._recount()
    return counts(store)


CHARGE = stored_charge(len(own(1).envelope))


def test_writes_in_one_group_stand_together(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        frame, envelope = own_pub(9)
        writes: list[Write[Any]] = [
            store.enqueue_write([own(1), own(2)], now=NOW),
            store.publish_write(frame, envelope, deliver=False, next_hops=[CAROL.node_id], now=NOW),
            store.enqueue_write([own(3)], now=NOW, idempotent=Idempotent("k", b"f", b"r")),
        ]
        assert store.write_group(writes) == [None, None, None]
        assert queued(store) == [1, 2, 9, 3]
        before = counts(store)
        assert before == recounted(store)
        assert store.queues()[0].frames == 4


def receipt_of(n: int) -> Outgoing:
    """A delivery receipt this node (BOB) issues to ALICE for her frame ``n``."""
    frame = crypto.Frame(
        kind=crypto.Kind.RCPT, src=BOB.node_id, id=(1000 + n).to_bytes(16, "big"), ts=TS,
        exp=EXP, hops=8, dst=ALICE.node_id, ref=n.to_bytes(16, "big"), st="delivered", n=1,
    )  # fmt: skip
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=None)


def tables(store: Store) -> tuple[list[Any], list[Any]]:
    return (
        store._db.execute("SELECT * FROM queue ORDER BY seq").fetchall(),
        store._db.execute("SELECT * FROM sent ORDER BY id").fetchall(),
    )


def test_plain_enqueues_in_a_row_go_together_as_if_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Concurrent node.send calls: a run of writes without idempotency keys is taken in
    # one statement per table; a write with a key, or another kind, ends the run.
    def writes(store: Store) -> list[Write[Any]]:
        frame, envelope = own_pub(50)
        return [
            store.enqueue_write([own(1)], now=NOW, receipts=[True]),
            store.enqueue_write([own(2), receipt_of(7)], now=NOW),
            store.enqueue_write([own(3)], now=NOW + 1, receipts=[False]),
            store.publish_write(frame, envelope, deliver=False, next_hops=[CAROL.node_id], now=NOW),
            store.enqueue_write([own(4)], now=NOW),  # a run of one: on its own
            store.enqueue_write([own(5)], now=NOW, idempotent=Idempotent("k", b"f", b"r")),
            store.enqueue_write([own(6)], now=NOW),
            store.enqueue_write([own(7)], now=NOW, receipts=[True]),
        ]

    runs: list[int] = []
    with Store(tmp_path / "one-by-one.sqlite3") as alone:
        for write in writes(alone):
            assert alone.write(write) is None
        expected = tables(alone), counts(alone)
    with Store(tmp_path / "grouped.sqlite3") as store:
        together = store._enqueue_together

        def spy(run: Any) -> None:
            runs.append(len(run))
            together(run)

        monkeypatch.setattr(store, "_enqueue_together", spy)
        assert store.write_group(writes(store)) == [None] * 8
        assert (tables(store), counts(store)) == expected
        assert counts(store) == recounted(store)
    assert runs == [3, 2]


def test_a_failing_write_alone_in_its_group_is_undone(tmp_path: Path) -> None:
    # A group of one runs without a savepoint: the rollback undoes its changes.
    with Store(tmp_path / "s.sqlite3", quotas=Quotas(total=CHARGE)) as store:
        (refused,) = store.write_group([store.enqueue_write([own(1), own(2)], now=NOW)])
        assert isinstance(refused, StoreFull)
        assert queued(store) == []
        assert not store._db.in_transaction
        assert counts(store) == recounted(store)
        (taken,) = store.write_group([store.enqueue_write([own(2)], now=NOW)])
        assert taken is None
        assert queued(store) == [2]
        assert counts(store) == recounted(store)
        assert store._usage.total == CHARGE


def test_a_failing_write_is_undone_alone(tmp_path: Path) -> None:
    # Room for three frames: the second write (two frames) fits, the third does not.
    quotas = Quotas(total=3 * CHARGE)
    with Store(tmp_path / "s.sqlite3", quotas=quotas) as store:
        writes = [
            store.enqueue_write([own(1)], now=NOW),
            store.enqueue_write([own(2), own(3)], now=NOW),
            store.enqueue_write([own(4)], now=NOW),  # over the total: refused
            store.enqueue_write([own(1)], now=NOW),  # queued already (by the first)
        ]
        first, second, third, fourth = store.write_group(writes)
        assert (first, second) == (None, None)
        assert isinstance(third, StoreFull)
        assert isinstance(fourth, MeshError)
        assert "queued already" in str(fourth)
        assert queued(store) == [1, 2, 3]
        assert counts(store) == recounted(store)
        assert store._usage.total == 3 * CHARGE


def test_an_idempotency_key_used_earlier_in_the_group_answers_the_later_write(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        key = Idempotent("k", b"request", b"first answer")
        first, again = store.write_group([
            store.enqueue_write([own(1)], now=NOW, idempotent=key),
            store.enqueue_write([own(2)], now=NOW, idempotent=Idempotent("k", b"r", b"second")),
        ])  # fmt: skip
        assert first is None
        assert again == key
        assert queued(store) == [1]
        assert store._idempotency_keys == 1 == recounted(store)[-1]


def test_a_commit_that_fails_leaves_nothing_and_counts_true(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        store.enqueue([own(1)], now=NOW)
        before = counts(store)

        def broken() -> None:
            raise RuntimeError("a bug in a write")

        with pytest.raises(RuntimeError, match="a bug"):
            store.write_group([store.enqueue_write([own(2)], now=NOW), Write(broken)])
        assert queued(store) == [1]
        assert counts(store) == before == recounted(store)
        # The store works on.
        assert store.write_group([store.enqueue_write([own(3)], now=NOW)]) == [None]
        assert queued(store) == [1, 3]


def test_a_closed_store_fails_the_whole_group(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    write = store.enqueue_write([own(1)], now=NOW)
    store.close()
    with pytest.raises(MeshError, match="failed"):
        store.write_group([write])
