"""The durable store (mesh.Store): custody, dedup, the queue, quotas, traces, failures.

Every test uses a real SQLite file under ``tmp_path``. "Accepted" must mean committed:
the crash test kills a process with SIGKILL right after ``accept`` and ``enqueue``
return and finds everything they took.

Cast: BOB is this node, ALICE an origin far away, CAROL and DAVE neighbours, EVE an
origin that plays tricks.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import crypto
import mesh
from mesh import (
    Admitted,
    Deliver,
    Forward,
    InboxEntry,
    Intake,
    MeshError,
    Outcome,
    Outgoing,
    Queued,
    QueueStatistics,
    Quotas,
    Receipt,
    Result,
    Route,
    Store,
    StoreFull,
    StoreStatistics,
    Trace,
    WireFrame,
    stored_charge,
)
from mesh._store import SCHEMA_VERSION, SEEN_GRACE_MS, TRACE_KEEP_MS

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
DAVE = crypto.Identity(bytes(range(3, 35)))
EVE = crypto.Identity(bytes(range(4, 36)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 5


def frame_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def message(
    n: int,
    body: bytes = b"body",
    *,
    src: crypto.Identity = ALICE,
    dst: crypto.Identity = BOB,
    exp: int = EXP,
    rr: bool | None = None,
) -> tuple[crypto.Frame, bytes]:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=src.node_id,
        id=frame_id(n),
        ts=TS,
        exp=exp,
        hops=8,
        dst=dst.node_id,
        body=body,
        ct="text/plain",
        rr=rr,
    )
    return frame, frame.seal(src)


def admitted(
    n: int,
    body: bytes = b"body",
    *,
    src: crypto.Identity = ALICE,
    dst: crypto.Identity = BOB,
    exp: int = EXP,
    hops: int = 1,
) -> Admitted:
    frame, envelope = message(n, body, src=src, dst=dst, exp=exp)
    return Admitted(frame, envelope, hops)


def deliver(
    item: Admitted, *, came_from: crypto.Identity | None = CAROL, receipt: Outgoing | None = None
) -> Intake:
    return Intake(item, Deliver(), None if came_from is None else came_from.node_id, receipt)


def relay(
    item: Admitted, next_hop: crypto.Identity | None, *, came_from: crypto.Identity = CAROL
) -> Intake:
    hop = None if next_hop is None else next_hop.node_id
    return Intake(item, Forward(hop), came_from.node_id)


def inbound(n: int, body: bytes = b"body", **changes: object) -> Intake:
    """A message from ALICE for this node, handed over by CAROL."""
    return deliver(admitted(n, body, **changes))  # type: ignore[arg-type]


def receipt(
    n: int,
    ref: bytes,
    st: str = "delivered",
    *,
    by: crypto.Identity = ALICE,
    to: crypto.Identity = BOB,
    why: str | None = None,
    hops: int | None = None,
) -> Admitted:
    """A receipt ``by`` issued about frame ``ref``, arriving at ``to``."""
    frame = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=by.node_id,
        id=frame_id(n),
        ts=TS,
        exp=EXP,
        hops=8,
        dst=to.node_id,
        ref=ref,
        st=st,
        why=why,
        n=hops,
    )
    return Admitted(frame, frame.seal(by), 2)


def own(
    n: int,
    body: bytes = b"body",
    *,
    dst: crypto.Identity = ALICE,
    next_hop: crypto.Identity | None = CAROL,
    exp: int = EXP,
) -> Outgoing:
    """A message this node (BOB) made, for ``dst``."""
    frame, envelope = message(n, body, src=BOB, dst=dst, exp=exp)
    return Outgoing.of(
        frame, envelope, hops=0, next_hop=None if next_hop is None else next_hop.node_id
    )


def own_receipt(n: int, ref: bytes, *, next_hop: crypto.Identity | None = CAROL) -> Outgoing:
    """A delivery receipt this node issues to ALICE about her frame ``ref``."""
    frame = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=BOB.node_id,
        id=frame_id(n),
        ts=TS,
        exp=EXP,
        hops=8,
        dst=ALICE.node_id,
        ref=ref,
        st="delivered",
        n=1,
    )
    return Outgoing.of(
        frame, frame.seal(BOB), hops=0, next_hop=None if next_hop is None else next_hop.node_id
    )


def outcomes(results: list[Result]) -> list[str]:
    return [str(r.outcome) for r in results]


def stats(
    inbox: int = 0, inbox_bytes: int = 0, seen: int = 0, queued: int = 0, queued_bytes: int = 0
) -> StoreStatistics:
    return StoreStatistics(inbox, inbox_bytes, seen, queued, queued_bytes)


def size_of(*items: Outgoing | Admitted) -> int:
    return sum(len(item.envelope) for item in items)


def sql(store: Store, query: str, *args: object) -> list[tuple[object, ...]]:
    return store._db.execute(query, args).fetchall()


#: Envelope bytes of one ``own(n)``/``admitted(n)`` message with the default body: every
#: such frame is the same size (ids and node ids are fixed-size).
S = size_of(own(1))
assert size_of(admitted(1), admitted(2, src=EVE), own(2, next_hop=None)) == 3 * S
#: What one such frame is charged in the queue (the quotas and byte counts are charges).
Q = stored_charge(S)


def inbox_charge(body: bytes = b"body") -> int:
    """What one message from ``admitted(n, body)`` is charged in the inbox: the row holds
    its envelope and the body again."""
    return stored_charge(size_of(admitted(1, body)) + len(body))


#: What one ``inbound(n)`` (the default body) is charged in the inbox.
B = inbox_charge()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path) as store:
        yield store


# -- accepting, dedup ----------------------------------------------------------------


def test_accept_then_duplicate(store: Store) -> None:
    results = store.accept([inbound(1), inbound(2)], now=NOW)
    assert outcomes(results) == ["accepted", "accepted"]
    assert all(r.ok for r in results)
    results = store.accept([inbound(2), inbound(3), inbound(1)], now=NOW)
    assert outcomes(results) == ["duplicate", "accepted", "duplicate"]
    assert [e.id for e in store.pending()] == [frame_id(1), frame_id(2), frame_id(3)]


def test_duplicates_within_one_batch(store: Store) -> None:
    results = store.accept([inbound(1), inbound(1, b"other body"), inbound(1)], now=NOW)
    assert outcomes(results) == ["accepted", "duplicate", "duplicate"]
    (entry,) = store.pending()
    assert entry.body == b"body"
    assert store.statistics() == stats(inbox=1, inbox_bytes=B, seen=1)


def test_a_duplicate_from_another_neighbour_is_still_a_duplicate(store: Store) -> None:
    store.accept([inbound(1)], now=NOW)
    again = deliver(admitted(1, hops=3), came_from=DAVE)
    assert outcomes(store.accept([again], now=NOW + 1)) == ["duplicate"]
    (entry,) = store.pending()
    assert (entry.hops, entry.received) == (1, NOW)


def test_empty_batch(store: Store) -> None:
    assert store.accept([], now=NOW) == []
    assert store.statistics() == stats()


def test_inbox_entry_carries_the_frame(store: Store) -> None:
    store.accept([deliver(admitted(1, b"hello", hops=3))], now=NOW)
    (entry,) = store.pending()
    assert entry == InboxEntry(
        seq=entry.seq,
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
    assert isinstance(entry.kind, crypto.Kind)
    (envelope,) = sql(store, "SELECT envelope FROM inbox")
    assert envelope == (message(1, b"hello")[1],)


def test_receipts_go_to_the_trace_not_the_inbox(store: Store) -> None:
    store.enqueue([own(1)], now=NOW, receipts=[True])
    assert outcomes(store.accept([deliver(receipt(50, frame_id(1)))], now=NOW + 1)) == ["accepted"]
    assert store.pending() == []
    assert store.statistics() == stats(seen=1, queued=1, queued_bytes=Q)
    trace = store.trace(frame_id(1))
    assert trace is not None
    # Delivered, though a copy is still queued here: the receipt says what matters.
    assert (trace.state, trace.next_hop) == ("delivered", CAROL.node_id)
    assert [r.state for r in trace.receipts] == ["delivered"]


def test_seen_set_and_inbox_survive_reopening(path: Path) -> None:
    with Store(path) as store:
        store.accept([inbound(1, b"a" * 10), inbound(2, b"b" * 20)], now=NOW)
        store.ack([frame_id(1)])
        before = store.pending()
    with Store(path) as store:
        assert store.pending() == before
        assert store.statistics() == stats(inbox=1, inbox_bytes=inbox_charge(b"b" * 20), seen=2)
        # Acknowledged or not, a frame taken once is a duplicate until it expires.
        assert outcomes(store.accept([inbound(1), inbound(2)], now=NOW)) == [
            "duplicate",
            "duplicate",
        ]


# -- the attack: one origin reusing another's frame id --------------------------------


def test_an_origin_reusing_a_frame_id_cannot_suppress_the_real_frame(store: Store) -> None:
    # EVE learnt the id ALICE will use (say she relays ALICE's frames) and delivers a
    # frame of her own with that id first.
    fake = admitted(7, b"fake", src=EVE)
    real = admitted(7, b"real", src=ALICE)
    assert outcomes(store.accept([deliver(fake, came_from=EVE)], now=NOW)) == ["accepted"]
    assert outcomes(store.accept([deliver(real)], now=NOW + 1)) == ["accepted"]
    assert [(e.src, e.body) for e in store.pending()] == [
        (EVE.node_id, b"fake"),
        (ALICE.node_id, b"real"),
    ]
    # Each is a duplicate of itself only.
    assert outcomes(store.accept([deliver(fake), deliver(real)], now=NOW + 2)) == [
        "duplicate",
        "duplicate",
    ]
    # Acknowledging EVE's (origin, id) leaves ALICE's message where it is.
    assert store.ack([(EVE.node_id, frame_id(7))]) == 1
    assert [(e.src, e.body) for e in store.pending()] == [(ALICE.node_id, b"real")]
    assert store.ack([(EVE.node_id, frame_id(7))]) == 0
    assert store.statistics() == stats(inbox=1, inbox_bytes=inbox_charge(b"real"), seen=2)
    assert store.ack([(ALICE.node_id, frame_id(7))]) == 1
    assert store.pending() == []


def test_the_same_id_from_two_origins_in_one_batch(store: Store) -> None:
    batch = [inbound(7), deliver(admitted(7, src=EVE)), inbound(7)]
    assert outcomes(store.accept(batch, now=NOW)) == ["accepted", "accepted", "duplicate"]
    # A bare id acknowledges every origin's frame with that id (trusted callers only).
    assert store.ack([frame_id(7)]) == 2


def test_an_origin_reusing_a_frame_id_in_the_queue(store: Store) -> None:
    # The queue is unique by (origin, id) too: EVE's frame does not block ALICE's.
    fake = relay(admitted(7, src=EVE, dst=DAVE), DAVE, came_from=EVE)
    real = relay(admitted(7, dst=DAVE), DAVE)
    assert outcomes(store.accept([fake, real, real], now=NOW)) == [
        "accepted",
        "accepted",
        "duplicate",
    ]
    assert [q.src for q in store.batch(DAVE.node_id, now=NOW)] == [EVE.node_id, ALICE.node_id]


def test_a_relayed_frame_reusing_our_id_does_not_touch_our_trace(store: Store) -> None:
    store.enqueue([own(7, dst=DAVE)], now=NOW, receipts=[True])
    # EVE's frame, relayed through us, carries our frame's id.
    store.accept([relay(admitted(7, src=EVE, dst=DAVE), DAVE, came_from=EVE)], now=NOW)
    (theirs,) = store.batch(DAVE.node_id, now=NOW)
    assert (theirs.src, theirs.id) == (EVE.node_id, frame_id(7))
    assert store.forwarded([theirs.seq], first_hop=DAVE.node_id, now=NOW + 1) == 1
    trace = store.trace(frame_id(7))
    assert trace is not None
    assert (trace.state, trace.first_hop, trace.next_hop) == ("queued", None, CAROL.node_id)
    assert store.next_hop_of(frame_id(7)) == (True, CAROL.node_id)


# -- pending, ack ----------------------------------------------------------------------


def test_pending_order_and_paging(store: Store) -> None:
    for start in range(0, 10, 3):
        store.accept([inbound(n) for n in range(start, min(start + 3, 10))], now=NOW)
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
    store.accept([inbound(n) for n in range(150)], now=NOW)
    assert len(store.pending()) == 100


def test_ack(store: Store) -> None:
    store.accept([inbound(n, b"x" * (n + 1)) for n in range(4)], now=NOW)
    assert store.ack([frame_id(1), frame_id(3), frame_id(99), frame_id(1)]) == 2
    assert [e.id for e in store.pending()] == [frame_id(0), frame_id(2)]
    assert store.statistics() == stats(
        inbox=2, inbox_bytes=inbox_charge(b"x") + inbox_charge(b"xxx"), seen=4
    )
    assert store.ack([]) == 0
    assert store.ack(iter([frame_id(0)])) == 1  # any iterable
    assert store.ack([frame_id(0)]) == 0
    # Keys by (origin, id): only that origin's frame.
    assert store.ack([(EVE.node_id, frame_id(2))]) == 0
    assert store.ack([(ALICE.node_id, frame_id(2)), (ALICE.node_id, frame_id(2))]) == 1
    assert store.statistics() == stats(seen=4)


def test_ack_of_more_keys_than_one_statement_takes_counts_each_once(store: Store) -> None:
    # Pairs go a chunk at a time: more than one chunk, duplicates across chunks, keys of
    # other origins and unknown ids, and bare ids beside them.
    count = 1_200
    store.accept([inbound(n, b"x" * (n % 7 + 1)) for n in range(count)], now=NOW)
    keys: list[tuple[crypto.NodeId, bytes] | bytes] = [
        (ALICE.node_id, frame_id(n)) for n in range(0, count, 2)
    ]
    keys += [(ALICE.node_id, frame_id(n)) for n in range(0, 40, 2)]  # again
    keys += [(EVE.node_id, frame_id(n)) for n in range(1, count, 2)]  # not from eve
    keys += [(ALICE.node_id, frame_id(n)) for n in range(count, count + 600)]  # unknown
    keys += [frame_id(1), frame_id(3), frame_id(1)]  # bare ids
    assert store.ack(keys) == count // 2 + 2
    left = [e.id for e in store.pending(limit=count)]
    assert left == [frame_id(n) for n in range(5, count, 2)]
    charges = sum(inbox_charge(b"x" * (n % 7 + 1)) for n in range(5, count, 2))
    assert store.statistics() == stats(inbox=len(left), inbox_bytes=charges, seen=count)


def test_ack_accepts_a_generator_once(store: Store) -> None:
    store.accept([inbound(1), inbound(2)], now=NOW)
    assert store.ack((e.src, e.id) for e in store.pending()) == 2
    assert store.pending() == []


def test_inbox_bytes_accounting(path: Path) -> None:
    # What each row is charged: its envelope, its body again, and what SQLite spends on
    # a row; an empty body costs something too.
    x, y, empty = inbox_charge(b"x" * 100), inbox_charge(b"y" * 50), inbox_charge(b"")
    assert x == size_of(admitted(1, b"x" * 100)) + 100 + mesh.ROW_OVERHEAD
    assert empty >= mesh.MIN_CHARGE
    with Store(path) as store:
        store.accept([inbound(1, b"x" * 100), inbound(2, b"y" * 50)], now=NOW)
        store.accept([inbound(2, b"y" * 50), inbound(3, b"")], now=NOW)
        assert store.statistics() == stats(inbox=3, inbox_bytes=x + y + empty, seen=3)
        store.ack([frame_id(1)])
        assert store.statistics().inbox_bytes == y + empty
    with Store(path) as store:
        assert store.statistics() == stats(inbox=2, inbox_bytes=y + empty, seen=3)
        store.ack([frame_id(2), frame_id(3)])
        assert store.statistics() == stats(seen=3)


# -- the queue ---------------------------------------------------------------------------


def test_enqueue_then_batch_oldest_first(store: Store) -> None:
    frames = [own(1), own(2), own(3, next_hop=DAVE), own(4, next_hop=None), own(5)]
    store.enqueue(frames, now=NOW, receipts=[True, False, False, True, False])
    first, second, fifth = store.batch(CAROL.node_id, now=NOW)
    assert first == Queued(
        seq=first.seq,
        src=BOB.node_id,
        id=frame_id(1),
        kind=crypto.Kind.MSG,
        dst=ALICE.node_id,
        exp=EXP,
        hops=0,
        next_hop=CAROL.node_id,
        came_from=None,
        queued=NOW,
        size=S,
        envelope=frames[0].envelope,
    )
    assert first.wire == WireFrame(0, frames[0].envelope)
    assert [q.id for q in (first, second, fifth)] == [frame_id(1), frame_id(2), frame_id(5)]
    assert first.seq < second.seq < fifth.seq
    assert store.batch(CAROL.node_id, now=NOW, limit=2) == [first, second]
    assert store.batch(CAROL.node_id, now=NOW, after=first.seq, limit=1) == [second]
    assert store.batch(CAROL.node_id, now=NOW, after=fifth.seq) == []
    assert [q.id for q in store.batch(DAVE.node_id, now=NOW)] == [frame_id(3)]
    assert store.batch(EVE.node_id, now=NOW) == []  # held frames go to nobody
    assert store.statistics() == stats(queued=5, queued_bytes=5 * Q)


def test_batch_leaves_out_expired_frames(store: Store) -> None:
    store.enqueue([own(1, exp=NOW + 10), own(2)], now=NOW)
    assert [q.id for q in store.batch(CAROL.node_id, now=NOW + 9)] == [frame_id(1), frame_id(2)]
    assert [q.id for q in store.batch(CAROL.node_id, now=NOW + 10)] == [frame_id(2)]


def test_enqueue_refuses_a_frame_queued_already_and_takes_nothing(store: Store) -> None:
    store.enqueue([own(1)], now=NOW)
    with pytest.raises(MeshError, match=f"frame {frame_id(1).hex()} is queued already"):
        store.enqueue([own(2), own(1)], now=NOW)
    assert [q.id for q in store.batch(CAROL.node_id, now=NOW)] == [frame_id(1)]
    assert store.trace(frame_id(2)) is None
    assert store.statistics() == stats(queued=1, queued_bytes=Q)
    store.enqueue([], now=NOW)
    assert store.statistics() == stats(queued=1, queued_bytes=Q)


def test_relayed_frames_are_queued_with_where_they_came_from(store: Store) -> None:
    item = admitted(1, dst=DAVE, hops=2)
    assert outcomes(store.accept([relay(item, DAVE)], now=NOW)) == ["accepted"]
    (queued,) = store.batch(DAVE.node_id, now=NOW)
    assert (queued.src, queued.dst, queued.hops, queued.came_from, queued.next_hop) == (
        ALICE.node_id,
        DAVE.node_id,
        2,
        CAROL.node_id,
        DAVE.node_id,
    )
    assert queued.wire == WireFrame(2, item.envelope)
    assert store.pending() == []
    assert store.trace(frame_id(1)) is None  # a trace is for frames this node made
    # Queued here already: a duplicate, whoever hands it over again.
    assert outcomes(store.accept([relay(item, None, came_from=DAVE)], now=NOW)) == ["duplicate"]
    assert store.statistics() == stats(queued=1, queued_bytes=Q)


def test_a_frame_come_back_round_a_loop_while_queued_here_is_queued_anew(store: Store) -> None:
    # It went to CAROL, round a loop and back here (from DAVE) before CAROL's answer
    # came: CAROL's answer must not delete it, nor DAVE drop it as a duplicate, or no
    # node holds it once CAROL has passed hers on.
    item = admitted(1, dst=EVE, hops=2)
    store.accept([relay(item, CAROL, came_from=ALICE)], now=NOW)
    (first,) = store.batch(CAROL.node_id, now=NOW)
    again = relay(admitted(1, dst=EVE, hops=6), CAROL, came_from=DAVE)
    assert outcomes(store.accept([again], now=NOW + 1)) == ["accepted"]
    assert store.forwarded([first.seq], first_hop=CAROL.node_id, now=NOW + 2) == 0
    (queued,) = store.batch(CAROL.node_id, now=NOW + 2)
    assert (queued.hops, queued.came_from) == (6, DAVE.node_id)
    assert queued.seq != first.seq
    assert store.statistics() == stats(queued=1, queued_bytes=Q)
    # Counted once, as taken from DAVE now (what the quotas per neighbour read).
    usage = store._usage
    assert (usage.total, usage.origin, usage.next_hop, usage.neighbour) == (
        Q,
        {ALICE.node_id.raw: Q},
        {CAROL.node_id.raw: Q},
        {DAVE.node_id.raw: Q},
    )
    # A retry of the copy it came back as, or of the first, is a duplicate.
    for copy in (again, relay(item, CAROL, came_from=ALICE)):
        assert outcomes(store.accept([copy], now=NOW + 3)) == ["duplicate"]
    assert store.statistics() == stats(queued=1, queued_bytes=Q)


@pytest.mark.parametrize("sync", [True, False])
def test_only_forwarded_commits_without_waiting_for_the_disk(path: Path, sync: bool) -> None:
    # Handed on is the one change a machine's crash may undo (the frames go again and
    # are taken once); what the node took custody of waits for the disk.
    with Store(path, sync=sync) as store:
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        store.enqueue([own(1)], now=NOW, receipts=[True])
        assert not [s for s in statements if s.startswith("PRAGMA")]
        (queued,) = store.batch(CAROL.node_id, now=NOW)
        statements.clear()
        assert store.forwarded([queued.seq], first_hop=CAROL.node_id, now=NOW) == 1
        pragmas = [s for s in statements if s.startswith("PRAGMA")]
        if sync:
            assert statements[0] == "PRAGMA synchronous=NORMAL"
            assert "COMMIT" in statements
            assert pragmas[-1] == "PRAGMA synchronous=FULL"
        else:
            assert pragmas == []  # never waits: nothing to relax
        store._db.set_trace_callback(None)
        (level,) = store._db.execute("PRAGMA synchronous").fetchone()
        assert level == (2 if sync else 0)  # FULL again (or OFF, as opened)
    with Store(path) as again:
        assert again.batch(CAROL.node_id, now=NOW) == []  # committed all the same


class FailingOnce:
    """A store's connection whose next ``statement`` fails once (then as the real one)."""

    def __init__(self, db: sqlite3.Connection, statement: str) -> None:
        self._db = db
        self.statement: str | None = statement

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == self.statement:
            self.statement = None
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.mark.parametrize("then", ["alone", "grouped"])
def test_a_commit_after_a_failed_restore_of_full_still_waits_for_the_disk(
    path: Path, then: str
) -> None:
    # Setting synchronous=FULL back after a relaxed commit failed: the next commit that
    # must wait for the disk sets it first, alone or in a group commit.
    with Store(path) as store:
        store.enqueue([own(1)], now=NOW)
        (queued,) = store.batch(CAROL.node_id, now=NOW)
        real = store._db
        store._db = FailingOnce(real, "PRAGMA synchronous=FULL")  # type: ignore[assignment]
        with pytest.raises(MeshError):
            store.forwarded([queued.seq], first_hop=CAROL.node_id, now=NOW)
        store._db = real
        (level,) = real.execute("PRAGMA synchronous").fetchone()
        assert level == 1  # NORMAL: left relaxed
        statements: list[str] = []
        real.set_trace_callback(statements.append)
        if then == "alone":
            store.enqueue([own(2)], now=NOW)
        else:
            assert store.write_group([store.enqueue_write([own(2)], now=NOW)]) == [None]
        real.set_trace_callback(None)
        assert statements.index("PRAGMA synchronous=FULL") < statements.index("COMMIT")
        (level,) = real.execute("PRAGMA synchronous").fetchone()
        assert level == 2


def test_forwarded_deletes_and_writes_the_first_hop(store: Store) -> None:
    store.enqueue([own(1), own(2, next_hop=DAVE)], now=NOW, receipts=[True, False])
    store.accept([relay(admitted(3, dst=EVE), CAROL, came_from=DAVE)], now=NOW)
    ours, relayed = store.batch(CAROL.node_id, now=NOW)
    assert store.forwarded([ours.seq, relayed.seq, 9999], first_hop=CAROL.node_id, now=NOW + 7) == 2
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.next_hop, trace.first_hop, trace.first_accepted) == (
        "forwarded",
        None,
        CAROL.node_id,
        NOW + 7,
    )
    # Handed on once: a second report changes nothing.
    assert store.forwarded([ours.seq], first_hop=DAVE.node_id, now=NOW + 8) == 0
    assert store.trace(frame_id(1)) == trace
    assert store.forwarded([], first_hop=DAVE.node_id, now=NOW + 8) == 0
    assert store.statistics() == stats(queued=1, queued_bytes=Q)
    (left,) = store.batch(DAVE.node_id, now=NOW)
    assert left.id == frame_id(2)


def test_remove(store: Store) -> None:
    store.enqueue([own(1), own(2, next_hop=None)], now=NOW, receipts=[True, True])
    first = store.batch(CAROL.node_id, now=NOW)[0]
    (held_seq,) = sql(store, "SELECT seq FROM queue WHERE next_hop IS NULL")
    assert store.remove([first.seq, held_seq[0], first.seq, 12345]) == 2  # type: ignore[list-item]
    assert store.remove([]) == 0
    assert store.statistics() == stats()
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert trace.first_hop is None  # removed is not forwarded
    assert trace.next_hop is None


def test_reroute_and_the_came_from_rule(store: Store) -> None:
    store.enqueue([own(1), own(2)], now=NOW)  # ours, for ALICE, via CAROL
    relayed = [relay(admitted(n, src=EVE, dst=ALICE), CAROL, came_from=DAVE) for n in (3, 4)]
    store.accept(relayed, now=NOW)  # EVE's, for ALICE, came from DAVE, via CAROL
    store.enqueue([own(5, dst=EVE)], now=NOW)  # another destination, via CAROL

    def hops() -> dict[int, crypto.NodeId | None]:
        rows = sql(store, "SELECT id, next_hop FROM queue")
        return {
            int.from_bytes(row[0], "big"): None if row[1] is None else crypto.NodeId(row[1])  # type: ignore[arg-type]
            for row in rows
        }

    carol, dave = CAROL.node_id, DAVE.node_id
    # DAVE is now the way to ALICE: our frames go to him, those he gave us are held
    # (never straight back).
    assert store.reroute(ALICE.node_id, dave) == 4
    assert hops() == {1: dave, 2: dave, 3: None, 4: None, 5: carol}
    assert store.reroute(ALICE.node_id, dave) == 0  # nothing changes twice
    assert store.reroute(ALICE.node_id, None) == 2
    assert hops() == {1: None, 2: None, 3: None, 4: None, 5: carol}
    assert store.reroute(ALICE.node_id, carol) == 4
    assert hops() == {1: carol, 2: carol, 3: carol, 4: carol, 5: carol}
    assert store.reroute(BOB.node_id, dave) == 0  # nothing queued for BOB
    # DAVE again, with a second way for what he gave us: through BOB.
    bob = BOB.node_id
    assert store.reroute(ALICE.node_id, dave, instead=bob) == 4
    assert hops() == {1: dave, 2: dave, 3: bob, 4: bob, 5: carol}
    # No second way: what DAVE gave us is held ...
    assert store.reroute(ALICE.node_id, dave) == 2
    assert hops() == {1: dave, 2: dave, 3: None, 4: None, 5: carol}
    # ... or, "instead" the very hop it came from, goes back to him.
    assert store.reroute(ALICE.node_id, dave, instead=dave) == 2
    assert hops() == {1: dave, 2: dave, 3: dave, 4: dave, 5: carol}
    assert store.reroute(ALICE.node_id, dave, instead=None) == 2
    assert store.statistics() == stats(queued=5, queued_bytes=5 * Q)


def test_held_frames_and_queue_statistics(store: Store) -> None:
    store.enqueue([own(1, next_hop=None), own(2)], now=NOW)
    store.enqueue([own(3, next_hop=None, dst=EVE), own(4, next_hop=DAVE)], now=NOW + 3)
    store.accept([relay(admitted(5, dst=EVE, body=b"longer body"), None)], now=NOW + 4)
    by_hop = {q.next_hop: q for q in store.queues()}
    big = size_of(admitted(5, dst=EVE, body=b"longer body"))
    assert by_hop == {
        None: QueueStatistics(None, 3, 2 * Q + stored_charge(big), NOW),
        CAROL.node_id: QueueStatistics(CAROL.node_id, 1, Q, NOW),
        DAVE.node_id: QueueStatistics(DAVE.node_id, 1, Q, NOW + 3),
    }
    assert sorted(store.held_destinations(), key=lambda n: n.raw) == sorted(
        [ALICE.node_id, EVE.node_id], key=lambda n: n.raw
    )
    assert set(store.queued_destinations()) == {
        (ALICE.node_id, None),
        (EVE.node_id, None),
        (ALICE.node_id, CAROL.node_id),
        (ALICE.node_id, DAVE.node_id),
    }
    assert store.next_hop_of(frame_id(1)) == (True, None)
    assert store.next_hop_of(frame_id(4)) == (True, DAVE.node_id)
    assert store.next_hop_of(frame_id(5)) == (False, None)  # not ours
    assert store.next_hop_of(frame_id(99)) == (False, None)
    # Any origin's message, by origin and id (a simulation's report says where it waits).
    assert store.queued_copy(ALICE.node_id, frame_id(5)) == [None]
    assert store.queued_copy(BOB.node_id, frame_id(4)) == [DAVE.node_id]
    assert store.queued_copy(EVE.node_id, frame_id(5)) == []
    # A route to ALICE via CAROL: her held frame and DAVE's move; EVE's stay held.
    assert store.reroute(ALICE.node_id, CAROL.node_id) == 2
    by_hop = {q.next_hop: q for q in store.queues()}
    assert by_hop[None] == QueueStatistics(None, 2, Q + stored_charge(big), NOW + 3)
    assert by_hop[CAROL.node_id] == QueueStatistics(CAROL.node_id, 3, 3 * Q, NOW)
    assert DAVE.node_id not in by_hop  # DAVE's frame was for ALICE too


def test_empty_queue_statistics(store: Store) -> None:
    assert store.queues() == []
    assert store.held_destinations() == []
    assert store.queued_destinations() == []


def test_take_expired_with_nothing_expired_takes_no_write_lock(path: Path) -> None:
    # The mesh asks at every tick: with nothing expired, the answer must not wait for
    # (or hold) the write lock another writer has.
    with Store(path) as store:
        store.enqueue([own(1, exp=NOW + 100)], now=NOW, receipts=[False])
        store._db.execute("PRAGMA busy_timeout=0")  # a wait would fail at once
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            assert store.take_expired(now=NOW + 99) == []
            with pytest.raises(MeshError, match="locked"):
                store.take_expired(now=NOW + 100)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert [q.id for q in store.take_expired(now=NOW + 100)] == [frame_id(1)]


def test_take_expired(store: Store) -> None:
    store.enqueue([own(n, exp=NOW + 100 - n) for n in range(5)], now=NOW, receipts=[True] * 5)
    store.accept([relay(admitted(9, dst=EVE, exp=NOW + 150), None)], now=NOW)
    assert store.take_expired(now=NOW + 95) == []
    expired = store.take_expired(now=NOW + 97)
    assert sorted((q.id, q.exp) for q in expired) == [
        (frame_id(3), NOW + 97),
        (frame_id(4), NOW + 96),
    ]
    assert store.statistics() == stats(queued=4, queued_bytes=4 * Q)
    # With a limit, the earliest expiry goes first.
    assert [q.id for q in store.take_expired(now=NOW + 1000, limit=1)] == [frame_id(2)]
    expired = store.take_expired(now=NOW + 1000)
    assert sorted(q.id for q in expired) == [frame_id(0), frame_id(1), frame_id(9)]
    (relayed,) = (q for q in expired if q.id == frame_id(9))
    assert (relayed.src, relayed.came_from, relayed.next_hop) == (
        ALICE.node_id,
        CAROL.node_id,
        None,
    )
    assert store.take_expired(now=NOW + 1000) == []
    assert store.statistics() == stats()
    # The trace keeps the last known state until the runtime records the drop.
    trace = store.trace(frame_id(0))
    assert trace is not None
    assert (trace.state, trace.next_hop) == ("queued", None)
    store.record_outcome(frame_id(0), "dropped", by=BOB.node_id, why="expired: 0 s", now=EXP)
    trace = store.trace(frame_id(0))
    assert trace is not None
    assert (trace.state, trace.by, trace.why) == ("dropped", BOB.node_id, "expired: 0 s")


# -- quotas and disk full --------------------------------------------------------------


def test_inbox_quota_is_atomic(path: Path) -> None:
    a, b, c = inbox_charge(b"a" * 60), inbox_charge(b"b" * 20), inbox_charge(b"c" * 21)
    quota = a + inbox_charge(b"b" * 40)
    # One origin may take all of it (its own quota is the subject of test_store_quotas).
    with Store(path, max_inbox_bytes=quota, max_inbox_bytes_per_origin=10 * quota) as store:
        store.accept([inbound(1, b"a" * 60)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.accept([inbound(2, b"b" * 20), inbound(3, b"c" * 21)], now=NOW)
        assert str(caught.value) == (
            f"inbox holds {a} bytes; {b + c} more would pass its quota of {quota}; retry later"
        )
        assert caught.value.status_hint == 429
        # Nothing of the refused batch was taken: not even the frame that would fit.
        assert [e.id for e in store.pending()] == [frame_id(1)]
        assert store.statistics() == stats(inbox=1, inbox_bytes=a, seen=1)
        # So the same frames are not duplicates later, once there is room.
        assert outcomes(store.accept([inbound(2, b"b" * 40)], now=NOW)) == ["accepted"]
        assert store.statistics().inbox_bytes == quota  # exactly at the quota is fine
        # An empty body is charged too: the row is stored all the same.
        with pytest.raises(StoreFull, match=f"inbox holds {quota} bytes; {inbox_charge(b'')} more"):
            store.accept([inbound(3, b"")], now=NOW)
        # Duplicates and receipts (about frames we did not send) add nothing: taken even
        # when full.
        results = store.accept([inbound(1, b"a" * 60), deliver(receipt(5, frame_id(1)))], now=NOW)
        assert outcomes(results) == ["duplicate", "accepted"]
        # Frames to forward do not count against the inbox.
        assert outcomes(store.accept([relay(admitted(6, b"d" * 60, dst=DAVE), DAVE)], now=NOW)) == [
            "accepted"
        ]
        store.ack([frame_id(1)])
        assert outcomes(store.accept([inbound(3, b"c" * 60)], now=NOW)) == ["accepted"]


def test_inbox_quota_counts_what_is_already_stored_after_reopening(path: Path) -> None:
    with Store(path) as store:
        store.accept([inbound(1, b"a" * 80)], now=NOW)
    quota = inbox_charge(b"a" * 80) + inbox_charge(b"b" * 21) - 1
    with (
        Store(path, max_inbox_bytes=quota, max_inbox_bytes_per_origin=10 * quota) as store,
        pytest.raises(StoreFull, match=f"inbox holds {inbox_charge(b'a' * 80)} bytes"),
    ):
        store.accept([inbound(2, b"b" * 21)], now=NOW)


def test_total_queue_quota(path: Path) -> None:
    with Store(path, quotas=Quotas(total=3 * Q)) as store:
        store.enqueue([own(1), own(2, next_hop=None)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.enqueue([own(3), own(4, next_hop=DAVE)], now=NOW)
        assert str(caught.value) == (
            f"queue holds {2 * Q} bytes; {2 * Q} more would pass its quota of {3 * Q}; retry later"
        )
        assert caught.value.status_hint == 429
        with pytest.raises(StoreFull, match=f"queue holds {2 * Q} bytes"):
            store.accept(
                [inbound(10), *(relay(admitted(n, dst=DAVE), DAVE) for n in (3, 4))], now=NOW
            )
        assert store.trace(frame_id(3)) is None
        assert store.pending() == []  # the whole batch, the inbox part too
        assert store.statistics() == stats(queued=2, queued_bytes=2 * Q)
        store.enqueue([own(3)], now=NOW)  # exactly at the quota is fine
        with pytest.raises(StoreFull, match=f"queue holds {3 * Q} bytes; {Q} more"):
            store.enqueue([own(4)], now=NOW)
        # Copies of what is queued add nothing: one come back round a loop takes the
        # place of the copy queued here, a retry of it is a duplicate.
        back = relay(admitted(1, src=BOB), DAVE)
        assert outcomes(store.accept([back], now=NOW)) == ["accepted"]
        assert outcomes(store.accept([back], now=NOW)) == ["duplicate"]
        assert store.statistics() == stats(queued=3, queued_bytes=3 * Q)
    with Store(path, quotas=Quotas(total=3 * Q)) as store:
        with pytest.raises(StoreFull, match=f"queue holds {3 * Q} bytes; {Q} more"):
            store.enqueue([own(4)], now=NOW)
        (first, *_) = store.batch(CAROL.node_id, now=NOW)
        store.forwarded([first.seq], first_hop=CAROL.node_id, now=NOW)
        store.enqueue([own(4)], now=NOW)


def test_per_origin_quota(path: Path) -> None:
    quotas = Quotas(per_origin=2 * Q)
    with Store(path, quotas=quotas) as store:
        from_alice = [relay(admitted(n, dst=DAVE), DAVE) for n in range(3)]
        store.accept(from_alice[:2], now=NOW)
        eve = relay(admitted(1, src=EVE, dst=DAVE), DAVE)
        # Per frame: the neighbour drops Alice's and tells her; Eve's is taken.
        results = store.accept([eve, from_alice[2]], now=NOW)
        assert outcomes(results) == ["accepted", "rejected"]
        assert results[1].code is mesh.Reason.STORE_FULL
        assert results[1].words == (
            f"queue holds {2 * Q} bytes from {ALICE.node_id.short}, its quota per origin "
            f"is {2 * Q}: no more until some are passed on"
        )
        assert store.statistics().queued_frames == 3
        # This node is an origin too, with the same quota: its own sends get StoreFull.
        store.enqueue([own(1), own(2)], now=NOW)
        with pytest.raises(StoreFull, match=f"bytes from {BOB.node_id.short}"):
            store.enqueue([own(3)], now=NOW)
    with Store(path, quotas=quotas) as store:
        assert outcomes(store.accept([from_alice[2]], now=NOW)) == ["rejected"]


def test_per_next_hop_quota(path: Path) -> None:
    quotas = Quotas(per_next_hop=2 * Q)
    with Store(path, quotas=quotas) as store:
        store.enqueue([own(1), own(2)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.enqueue([own(3, next_hop=DAVE), own(4)], now=NOW)
        assert str(caught.value) == (
            f"queue holds {2 * Q} bytes for {CAROL.node_id.short}; {Q} more would pass its "
            f"quota per next hop of {2 * Q}; retry later"
        )
        assert store.statistics().queued_frames == 2
        # Held frames wait for any next hop: no next-hop quota applies to them.
        store.enqueue([own(n, next_hop=None) for n in (3, 4, 5)], now=NOW)
        store.accept([relay(admitted(n, dst=EVE), DAVE) for n in (1, 2)], now=NOW)
        with pytest.raises(StoreFull, match=f"for {DAVE.node_id.short}"):
            store.accept([relay(admitted(3, dst=EVE), DAVE)], now=NOW)
    with Store(path, quotas=quotas) as store:
        with pytest.raises(StoreFull, match=f"queue holds {2 * Q} bytes for {CAROL.node_id.short}"):
            store.enqueue([own(6)], now=NOW)
        # Rerouting counts: CAROL's frames for ALICE (and the held ones) go to DAVE,
        # past his quota (a reroute does not refuse); CAROL has room again.
        assert store.reroute(ALICE.node_id, DAVE.node_id) == 5
        with pytest.raises(StoreFull, match=f"queue holds {7 * Q} bytes for {DAVE.node_id.short}"):
            store.enqueue([own(6, dst=EVE, next_hop=DAVE)], now=NOW)
        store.enqueue([own(6, dst=EVE), own(7, dst=EVE)], now=NOW)
        with pytest.raises(StoreFull, match=f"{2 * Q} bytes for {CAROL.node_id.short}"):
            store.enqueue([own(8, dst=EVE)], now=NOW)
        # Removing makes room.
        (first, *_) = store.batch(CAROL.node_id, now=NOW)
        assert store.remove([first.seq]) == 1
        store.enqueue([own(8, dst=EVE)], now=NOW)


def test_per_neighbour_quota(path: Path) -> None:
    quotas = Quotas(per_neighbour=2 * Q)
    with Store(path, quotas=quotas) as store:
        store.accept([relay(admitted(n, dst=EVE), DAVE, came_from=CAROL) for n in (1, 2)], now=NOW)
        with pytest.raises(StoreFull) as caught:
            store.accept(
                [
                    relay(admitted(3, dst=EVE), DAVE, came_from=DAVE),
                    relay(admitted(4, src=EVE, dst=ALICE), None, came_from=CAROL),
                ],
                now=NOW,
            )
        assert str(caught.value) == (
            f"queue holds {2 * Q} bytes taken from {CAROL.node_id.short}; {Q} more would "
            f"pass its quota per neighbour of {2 * Q}; retry later"
        )
        assert store.statistics().queued_frames == 2
        # Other neighbours have room of their own; this node's frames, and the receipts
        # it issues for what a neighbour delivered, are no neighbour's.
        store.accept([relay(admitted(3, dst=EVE), CAROL, came_from=DAVE)], now=NOW)
        store.enqueue([own(n) for n in range(5)], now=NOW)
        asked = deliver(admitted(9), came_from=CAROL, receipt=own_receipt(100, frame_id(9)))
        assert outcomes(store.accept([asked], now=NOW)) == ["accepted"]
    with Store(path, quotas=quotas) as store:
        refused = relay(admitted(6, dst=EVE), DAVE, came_from=CAROL)
        with pytest.raises(StoreFull, match=f"{2 * Q} bytes taken from {CAROL.node_id.short}"):
            store.accept([refused], now=NOW)
        # Rerouting does not change where frames came from.
        assert store.reroute(EVE.node_id, None) == 3
        with pytest.raises(StoreFull, match=f"{2 * Q} bytes taken from {CAROL.node_id.short}"):
            store.accept([refused], now=NOW)
        ((seq,), _) = sql(store, "SELECT seq FROM queue WHERE came_from = ?", CAROL.node_id.raw)
        assert store.remove([seq]) == 1  # type: ignore[list-item]
        assert outcomes(store.accept([refused], now=NOW)) == ["accepted"]


def test_a_delivery_receipt_counts_against_the_queue_quota(path: Path) -> None:
    rcpt = own_receipt(100, frame_id(1))
    with Store(path, quotas=Quotas(total=stored_charge(size_of(rcpt)) - 1)) as store:
        asked = deliver(admitted(1), receipt=rcpt)
        with pytest.raises(StoreFull, match=f"{stored_charge(size_of(rcpt))} more"):
            store.accept([asked], now=NOW)
        assert store.pending() == []  # the delivery is refused with its receipt
        assert outcomes(store.accept([inbound(2)], now=NOW)) == ["accepted"]


def test_disk_full_is_store_full_and_reads_still_work(store: Store) -> None:
    store.accept([inbound(1, b"small")], now=NOW)
    store.enqueue([own(1)], now=NOW)
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count={pages + 2}")
    big = [inbound(n, os.urandom(100_000)) for n in range(2, 5)]
    with pytest.raises(StoreFull, match="out of disk space") as caught:
        store.accept(big, now=NOW)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(StoreFull, match="out of disk space"):
        store.enqueue([own(n, os.urandom(100_000)) for n in range(2, 5)], now=NOW)
    assert [e.id for e in store.pending()] == [frame_id(1)]
    assert store.statistics() == stats(
        inbox=1, inbox_bytes=inbox_charge(b"small"), seen=1, queued=1, queued_bytes=Q
    )
    # Not taken, so not seen: the same frames are accepted once there is room.
    store._db.execute("PRAGMA max_page_count=1073741823")
    assert outcomes(store.accept(big, now=NOW)) == ["accepted"] * 3
    store.enqueue([own(2)], now=NOW)
    assert store.statistics().inbox_frames == 4
    assert store.statistics().queued_bytes == 2 * Q


def test_a_value_sqlite_cannot_take_leaves_no_transaction_open(store: Store) -> None:
    # Our bug, not the disk's: it propagates as is, and the store stays usable.
    with pytest.raises(OverflowError):
        store.accept([inbound(1), deliver(admitted(2, hops=2**64))], now=NOW)
    assert not store._db.in_transaction
    assert store.pending() == []
    assert outcomes(store.accept([inbound(1)], now=NOW)) == ["accepted"]
    with pytest.raises(OverflowError):
        store.ack([frame_id(1), 2**64])  # type: ignore[list-item]
    assert not store._db.in_transaction
    assert store.ack([frame_id(1)]) == 1
    with pytest.raises(OverflowError):
        store.remove([2**64])
    assert not store._db.in_transaction


# -- receipts and the trace ------------------------------------------------------------


def test_a_delivery_receipt_settles_the_trace(store: Store) -> None:
    store.enqueue([own(1)], now=NOW, receipts=[True])
    (queued,) = store.batch(CAROL.node_id, now=NOW)
    store.forwarded([queued.seq], first_hop=CAROL.node_id, now=NOW + 1)
    rcpt = receipt(50, frame_id(1), "delivered", hops=3)
    assert outcomes(store.accept([deliver(rcpt)], now=NOW + 20)) == ["accepted"]
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert trace.state == "delivered"
    assert (trace.by, trace.hops, trace.why, trace.done_at) == (ALICE.node_id, 3, None, NOW + 20)
    assert (trace.first_hop, trace.first_accepted) == (CAROL.node_id, NOW + 1)
    assert trace.receipts == (Receipt(ALICE.node_id, "delivered", None, 3, TS, NOW + 20),)
    # The same receipt again is a duplicate and adds nothing.
    assert outcomes(store.accept([deliver(rcpt, came_from=DAVE)], now=NOW + 30)) == ["duplicate"]
    assert store.trace(frame_id(1)) == trace


def test_a_drop_does_not_overwrite_a_delivery(store: Store) -> None:
    store.enqueue([own(1)], now=NOW, receipts=[True])
    store.accept([deliver(receipt(50, frame_id(1), hops=2))], now=NOW + 10)
    # A copy dropped on another path after one got through.
    dropped = receipt(51, frame_id(1), "dropped", by=DAVE, why="expired: frame expired 1 s ago")
    assert outcomes(store.accept([deliver(dropped)], now=NOW + 20)) == ["accepted"]
    store.record_outcome(frame_id(1), "dropped", by=BOB.node_id, why="no-route: none", now=NOW + 30)
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.by, trace.hops, trace.why, trace.done_at) == (
        "delivered",
        ALICE.node_id,
        2,
        None,
        NOW + 10,
    )
    assert [(r.by, r.state, r.why, r.received) for r in trace.receipts] == [
        (ALICE.node_id, "delivered", None, NOW + 10),
        (DAVE.node_id, "dropped", "expired: frame expired 1 s ago", NOW + 20),
        (BOB.node_id, "dropped", "no-route: none", NOW + 30),
    ]


def test_a_delivery_after_a_drop_wins(store: Store) -> None:
    store.enqueue([own(1)], now=NOW, receipts=[True])
    store.record_outcome(frame_id(1), "dropped", by=CAROL.node_id, why="x: y", now=NOW + 1)
    trace = store.trace(frame_id(1))
    assert trace is not None
    # Still queued here (another copy): what is known most recently is the drop.
    assert (trace.state, trace.by, trace.why, trace.done_at) == (
        "dropped",
        CAROL.node_id,
        "x: y",
        NOW + 1,
    )
    assert trace.receipts == (Receipt(CAROL.node_id, "dropped", "x: y", None, NOW + 1, NOW + 1),)
    store.accept([deliver(receipt(50, frame_id(1), hops=4))], now=NOW + 2)
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert (trace.state, trace.by, trace.why, trace.hops) == ("delivered", ALICE.node_id, None, 4)


def test_only_the_destination_can_report_a_delivery(store: Store) -> None:
    # A relay on the path knows the frame id; it must not be able to claim the frame
    # was delivered (while dropping it).
    store.enqueue([own(1)], now=NOW, receipts=[True])
    forged = receipt(50, frame_id(1), "delivered", by=CAROL, hops=1)
    assert outcomes(store.accept([deliver(forged)], now=NOW + 1)) == ["accepted"]
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert trace.state == "queued"
    assert (trace.by, trace.done_at) == (None, None)
    # The receipt itself is kept, as evidence.
    assert [(r.by, r.state) for r in trace.receipts] == [(CAROL.node_id, "delivered")]


def test_a_receipt_about_a_frame_we_never_sent_is_not_kept(store: Store) -> None:
    # Else anyone could fill the disk with receipts the inbox quota does not count.
    rcpts = [deliver(receipt(50 + n, frame_id(n), by=EVE)) for n in range(5)]
    assert outcomes(store.accept(rcpts, now=NOW)) == ["accepted"] * 5
    assert sql(store, "SELECT COUNT(*) FROM receipts") == [(0,)]
    store.record_outcome(frame_id(9), "dropped", by=BOB.node_id, now=NOW)
    assert sql(store, "SELECT COUNT(*) FROM receipts") == [(0,)]
    assert store.trace(frame_id(1)) is None


def test_trace_states(store: Store) -> None:
    store.enqueue([own(1), own(2, next_hop=None)], now=NOW, receipts=[False, True])

    def state(n: int) -> tuple[str, crypto.NodeId | None]:
        trace = store.trace(frame_id(n))
        assert trace is not None
        return trace.state, trace.next_hop

    held = store.trace(frame_id(2))
    assert held is not None
    assert held == Trace(
        id=frame_id(2),
        dst=ALICE.node_id,
        kind="msg",
        created=NOW,
        exp=EXP,
        receipt=True,
        state="held",
        next_hop=None,
        first_hop=None,
        first_accepted=None,
        done_at=None,
        hops=None,
        by=None,
        why=None,
        receipts=(),
    )
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert trace.receipt is False
    assert state(1) == ("queued", CAROL.node_id)
    assert store.reroute(ALICE.node_id, None) == 1
    assert state(1) == ("held", None)
    assert store.reroute(ALICE.node_id, DAVE.node_id) == 2
    assert state(1) == ("queued", DAVE.node_id)
    assert state(2) == ("queued", DAVE.node_id)
    first, _ = store.batch(DAVE.node_id, now=NOW)
    store.forwarded([first.seq], first_hop=DAVE.node_id, now=NOW + 1)
    assert state(1) == ("forwarded", None)
    assert store.trace(frame_id(3)) is None
    # Receipts this node issues have no trace of their own.
    store.enqueue([own_receipt(4, frame_id(99))], now=NOW)
    assert store.trace(frame_id(4)) is None
    assert store.next_hop_of(frame_id(4)) == (True, CAROL.node_id)


def test_a_delivery_with_a_receipt_queues_it_once(store: Store) -> None:
    rcpt = own_receipt(100, frame_id(1))
    asked = deliver(admitted(1), receipt=rcpt)
    assert outcomes(store.accept([asked], now=NOW)) == ["accepted"]
    (queued,) = store.batch(CAROL.node_id, now=NOW)
    assert (queued.kind, queued.src, queued.dst, queued.id, queued.came_from) == (
        crypto.Kind.RCPT,
        BOB.node_id,
        ALICE.node_id,
        frame_id(100),
        None,
    )
    # Delivered again (the sender did not hear us): a duplicate, and no second receipt.
    again = deliver(admitted(1), receipt=own_receipt(101, frame_id(1)))
    assert outcomes(store.accept([again], now=NOW + 1)) == ["duplicate"]
    assert [q.id for q in store.batch(CAROL.node_id, now=NOW)] == [frame_id(100)]
    assert store.statistics() == stats(
        inbox=1, inbox_bytes=B, seen=1, queued=1, queued_bytes=stored_charge(size_of(rcpt))
    )


def test_enqueue_keeps_a_trace_for_messages_only_and_receipts_default_off(store: Store) -> None:
    store.enqueue([own(1), own_receipt(2, frame_id(7))], now=NOW)
    trace = store.trace(frame_id(1))
    assert trace is not None
    assert trace.receipt is False
    assert sql(store, "SELECT id FROM sent") == [(frame_id(1),)]


# -- routes and addresses --------------------------------------------------------------


def route(dst: crypto.Identity, via: crypto.Identity, *, expires: int, hops: int = 2) -> Route:
    return Route(
        dst.node_id,
        via.node_id,
        ts=TS,
        hops=hops,
        learned=NOW,
        expires=expires,
        announce=b"announce of " + dst.node_id.raw,
    )


def test_routes_round_trip_and_expire(path: Path) -> None:
    routes = [
        route(ALICE, CAROL, expires=NOW + 100),
        route(ALICE, DAVE, expires=NOW + 200, hops=3),
        route(EVE, DAVE, expires=NOW + 50, hops=1),
    ]
    unsaved = Route(CAROL.node_id, CAROL.node_id, TS, 1, NOW, NOW + 100)  # no announce
    with Store(path) as store:
        assert store.load_routes(now=NOW) == []
        store.save_routes([*routes, unsaved])
    with Store(path) as store:
        loaded = store.load_routes(now=NOW)
        assert sorted(loaded, key=Route.key) == sorted(routes, key=Route.key)
        assert {r.announce for r in loaded} == {r.announce for r in routes}
        assert sorted(store.load_routes(now=NOW + 50), key=Route.key) == sorted(
            routes[:2], key=Route.key
        )
        assert store.load_routes(now=NOW + 200) == []
        # A save replaces the whole table.
        store.save_routes(routes[1:2])
        assert store.load_routes(now=NOW) == routes[1:2]
        store.save_routes([])
        assert store.load_routes(now=NOW) == []


def test_sweep_forgets_expired_routes_and_addresses(store: Store) -> None:
    store.save_routes([route(ALICE, CAROL, expires=NOW + 100), route(EVE, DAVE, expires=NOW + 50)])
    store.save_address(address(CAROL, seq=1, exp=NOW + 100))
    store.save_address(address(DAVE, seq=1, exp=NOW + 50))
    store.sweep(now=NOW + 50)
    assert sql(store, "SELECT dst FROM routes") == [(ALICE.node_id.raw,)]
    assert sql(store, "SELECT node FROM addresses") == [(CAROL.node_id.raw,)]


def address(who: crypto.Identity, *, seq: int, exp: int = EXP) -> crypto.SignedAddress:
    return crypto.sign_address(who, seq=seq, endpoints=[f"http://127.0.0.1:{1000 + seq}"], exp=exp)


def test_save_address_keeps_only_a_higher_seq(path: Path) -> None:
    with Store(path) as store:
        assert store.addresses(now=NOW) == []
        assert store.save_address(address(CAROL, seq=2)) is True
        assert store.save_address(address(CAROL, seq=1)) is False
        assert store.save_address(address(CAROL, seq=2)) is False
        assert store.save_address(address(DAVE, seq=1, exp=NOW + 10)) is True
        assert store.addresses(now=NOW) == [
            address(CAROL, seq=2),
            address(DAVE, seq=1, exp=NOW + 10),
        ]
        assert store.save_address(address(CAROL, seq=3, exp=NOW + 20)) is True
    with Store(path) as store:
        held = {a.node: a for a in store.addresses(now=NOW)}
        assert held == {
            CAROL.node_id: address(CAROL, seq=3, exp=NOW + 20),
            DAVE.node_id: address(DAVE, seq=1, exp=NOW + 10),
        }
        assert store.addresses(now=NOW + 10) == [address(CAROL, seq=3, exp=NOW + 20)]
        assert store.addresses(now=NOW + 20) == []
        # An expired record still blocks an older one (its seq is what counts).
        assert store.save_address(address(CAROL, seq=2)) is False


# -- sweeping --------------------------------------------------------------------------


def test_sweep_forgets_ids_only_after_expiry_and_grace(store: Store) -> None:
    store.accept([inbound(n, exp=EXP + n - 1) for n in (1, 2, 3)], now=NOW)
    store.ack([frame_id(1), frame_id(2), frame_id(3)])
    assert store.sweep(now=EXP) == 0
    assert store.sweep(now=EXP + SEEN_GRACE_MS) == 0  # exp == now - grace: kept
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 2) == 2
    assert store.statistics().seen_ids == 1
    assert outcomes(store.accept([inbound(3, exp=EXP + 2)], now=NOW)) == ["duplicate"]
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 3) == 1
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 3) == 0
    assert store.statistics().seen_ids == 0


def test_sweep_keeps_ids_of_frames_still_in_the_inbox(store: Store) -> None:
    store.accept([inbound(1), deliver(admitted(1, src=EVE))], now=NOW)
    store.ack([(EVE.node_id, frame_id(1))])
    assert store.sweep(now=EXP + SEEN_GRACE_MS + 1) == 1  # EVE's went; ALICE's is unread
    assert outcomes(store.accept([inbound(1)], now=NOW)) == ["duplicate"]


def test_sweep_forgets_traces_long_after_expiry(store: Store) -> None:
    store.enqueue([own(1), own(2, exp=EXP + 1)], now=NOW, receipts=[True, True])
    store.accept([deliver(receipt(50, frame_id(1))), deliver(receipt(51, frame_id(2)))], now=NOW)
    store.remove(seq for (seq,) in sql(store, "SELECT seq FROM queue"))  # type: ignore[misc]
    store.sweep(now=EXP + TRACE_KEEP_MS)
    assert store.trace(frame_id(1)) is not None
    store.sweep(now=EXP + TRACE_KEEP_MS + 1)
    assert store.trace(frame_id(1)) is None
    assert sql(store, "SELECT ref FROM receipts") == [(frame_id(2),)]


# -- opening, schema, failures ---------------------------------------------------------


def test_wal_and_full_sync(store: Store) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert sql(store, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]


def set_schema(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
    db.close()


def test_a_newer_schema_is_refused(path: Path) -> None:
    with Store(path) as store:
        store.accept([inbound(1)], now=NOW)
    newer = SCHEMA_VERSION + 1
    set_schema(path, newer)
    with pytest.raises(MeshError) as caught:
        Store(path)
    assert str(caught.value) == (
        f"store {path} has schema {newer}; this ptth reads up to {SCHEMA_VERSION} (a newer "
        "ptth wrote it): run that ptth, or move the file away to start afresh"
    )
    # Refused, not changed.
    set_schema(path, SCHEMA_VERSION)
    with Store(path) as store:
        assert [e.id for e in store.pending()] == [frame_id(1)]


@pytest.mark.parametrize("version", [0, -1])
def test_a_schema_ptth_never_wrote_is_refused(path: Path, version: int) -> None:
    Store(path).close()
    set_schema(path, version)
    with pytest.raises(MeshError, match=f"store {path} has schema {version}, which ptth never"):
        Store(path)


def test_reopening_a_current_store_changes_nothing(path: Path) -> None:
    with Store(path) as store:
        store.accept([inbound(1)], now=NOW)
        store.enqueue([own(1)], now=NOW, receipts=[True])
        schema = sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with Store(path) as store:
        assert sql(store, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
        assert store.statistics() == stats(inbox=1, inbox_bytes=B, seen=1, queued=1, queued_bytes=Q)


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
        lambda: store.accept([inbound(1)], now=NOW),
        lambda: store.enqueue([own(1)], now=NOW),
        lambda: store.batch(CAROL.node_id, now=NOW),
        lambda: store.forwarded([1], first_hop=CAROL.node_id, now=NOW),
        lambda: store.remove([1]),
        lambda: store.reroute(ALICE.node_id, None),
        lambda: store.take_expired(now=NOW),
        lambda: store.queues(),
        lambda: store.trace(frame_id(1)),
        lambda: store.record_outcome(frame_id(1), "dropped", by=CAROL.node_id, now=NOW),
        lambda: store.save_routes([]),
        lambda: store.load_routes(now=NOW),
        lambda: store.save_address(address(CAROL, seq=1)),
        lambda: store.addresses(now=NOW),
        lambda: store.pending(),
        lambda: store.ack([frame_id(1)]),
        lambda: store.sweep(now=NOW),
        lambda: store.statistics(),
    ]
    for call in calls:
        with pytest.raises(MeshError, match="closed database") as caught:
            call()
        assert isinstance(caught.value.__cause__, sqlite3.ProgrammingError)


# -- migration from schema 1 -------------------------------------------------------------

#: Schema 1, as the previous ptth wrote it (``git show HEAD:mesh/_store.py``).
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (id BLOB PRIMARY KEY, exp INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_exp ON seen (exp);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    src BLOB NOT NULL,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    received INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    ct TEXT,
    ref BLOB,
    body BLOB NOT NULL,
    envelope BLOB NOT NULL
);
"""


def schema_1_store(path: Path, *, inbox: Sequence[Admitted], acked: Sequence[bytes]) -> None:
    """A schema-1 store holding ``inbox`` unread and the ids ``acked`` seen."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_1)
    with db:
        db.execute("INSERT INTO meta VALUES ('schema', 1)")
        for item in inbox:
            frame = item.frame
            db.execute("INSERT INTO seen VALUES (?, ?)", (frame.id, frame.exp))
            db.execute(
                "INSERT INTO inbox (id, src, kind, ts, exp, received, hops, ct, ref, body,"
                " envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (frame.id, frame.src.raw, str(frame.kind), frame.ts, frame.exp, NOW,
                 item.hops, frame.ct, frame.ref, frame.body, item.envelope),
            )  # fmt: skip
        for acked_id in acked:
            db.execute("INSERT INTO seen VALUES (?, ?)", (acked_id, EXP))
    db.close()


def test_a_schema_1_store_is_migrated(path: Path) -> None:
    unread = [admitted(1, b"unread"), admitted(2, b"also unread", src=EVE)]
    schema_1_store(path, inbox=unread, acked=[frame_id(3), frame_id(4)])
    with Store(path) as store:
        assert sql(store, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        # The inbox is kept as it was.
        pending = store.pending()
        assert [(e.src, e.id, e.body, e.received, e.hops) for e in pending] == [
            (ALICE.node_id, frame_id(1), b"unread", NOW, 1),
            (EVE.node_id, frame_id(2), b"also unread", NOW, 1),
        ]
        charged = inbox_charge(b"unread") + inbox_charge(b"also unread")
        assert store.statistics() == stats(inbox=2, inbox_bytes=charged, seen=2)
        # Ids of unread frames are now keyed by their origin: still duplicates from
        # that origin, and no longer block another origin's frame with the same id.
        results = store.accept(
            [inbound(1), deliver(admitted(2, src=EVE)), deliver(admitted(1, src=EVE))], now=NOW
        )
        assert outcomes(results) == ["duplicate", "duplicate", "accepted"]
        # Acknowledged ids have no known origin: a duplicate from any origin, until
        # they expire.
        results = store.accept([inbound(3), deliver(admitted(4, src=EVE))], now=NOW)
        assert outcomes(results) == ["duplicate", "duplicate"]
        assert outcomes(store.accept([deliver(admitted(3, src=DAVE))], now=NOW)) == ["duplicate"]
        store.ack([(ALICE.node_id, frame_id(1))])
        assert [e.id for e in store.pending()] == [frame_id(2), frame_id(1)]
        # The inbox is unique by (origin, id) now.
        assert sql(store, "SELECT COUNT(*) FROM inbox WHERE id = ?", frame_id(1)) == [(1,)]
    with Store(path) as store:  # reopening a migrated store changes nothing
        assert outcomes(store.accept([inbound(3)], now=NOW)) == ["duplicate"]
        assert store.sweep(now=EXP + SEEN_GRACE_MS) == 0
        # Once the old ids are swept, their frames (if ever valid again) are new. Gone:
        # the 2 old ids, and 4 of seen (ALICE's 1, acknowledged; the 3 that came again
        # as duplicates of old ids); EVE's 1 and 2 are unread and stay.
        assert store.sweep(now=EXP + SEEN_GRACE_MS + 1) == 2 + 4
        assert sql(store, "SELECT COUNT(*) FROM seen_v1") == [(0,)]
        assert sql(store, "SELECT src, id FROM seen ORDER BY id") == [
            (EVE.node_id.raw, frame_id(1)),
            (EVE.node_id.raw, frame_id(2)),
        ]
        assert not store._legacy_seen
        later = EXP + SEEN_GRACE_MS + 1
        assert outcomes(store.accept([inbound(4, exp=later + 1000)], now=later)) == ["accepted"]


def test_a_migration_that_fails_leaves_schema_1_as_it_was(path: Path) -> None:
    schema_1_store(path, inbox=[admitted(1)], acked=[frame_id(2)])
    db = sqlite3.connect(path)
    with db:
        db.execute("ALTER TABLE inbox RENAME TO mailbox")  # the migration needs inbox
    db.close()
    with pytest.raises(MeshError, match=f"store {path} failed: no such table: inbox"):
        Store(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchall() == [(1,)]
    assert db.execute("SELECT COUNT(*) FROM seen").fetchall() == [(2,)]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'seen_v1'").fetchall() == []
    db.close()


def test_an_empty_schema_1_store_is_migrated(path: Path) -> None:
    schema_1_store(path, inbox=[], acked=[])
    with Store(path) as store:
        assert store.statistics() == stats()
        assert outcomes(store.accept([inbound(1)], now=NOW)) == ["accepted"]
        assert not store._legacy_seen


# -- threads ---------------------------------------------------------------------------


def test_accept_from_many_threads(store: Store) -> None:
    threads, batches, size = 8, 20, 5
    shared = inbound(10_000, b"shared")
    results: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for b in range(batches):
                base = (t * batches + b) * size
                batch = [inbound(base + i, b"x" * (t + 1)) for i in range(size)]
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
    expected_bytes = sum(
        inbox_charge(b"x" * (t + 1)) * batches * size for t in range(threads)
    ) + inbox_charge(b"shared")
    frames = threads * batches * size + 1
    assert store.statistics() == stats(frames, expected_bytes, frames)
    with Store(store.path) as again:
        assert again.statistics() == stats(frames, expected_bytes, frames)


def test_queue_accounting_from_many_threads(store: Store) -> None:
    # The in-memory byte counts must match the table whatever the threads interleave.
    threads, rounds = 6, 30
    frames = {
        t: [own(t * 1000 + n, dst=ALICE if n % 2 else EVE) for n in range(rounds)]
        for t in range(threads)
    }
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        try:
            start.wait()
            for n, outgoing in enumerate(frames[t]):
                store.enqueue([outgoing], now=NOW)
                if n % 3 == 0:
                    taken = [q.seq for q in store.batch(CAROL.node_id, now=NOW, limit=2)]
                    store.forwarded(taken, first_hop=CAROL.node_id, now=NOW)
                elif n % 3 == 1:
                    store.reroute(EVE.node_id, DAVE.node_id if n % 2 else CAROL.node_id)
                else:
                    taken = [q.seq for q in store.batch(DAVE.node_id, now=NOW, limit=1)]
                    store.remove(taken)
                store.statistics()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for worker in workers:
            worker.start()
        start.wait()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert_accounting(store)


def test_no_thread_can_recount_between_a_commit_and_its_accounting(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread's reroute recounts the queue from the table. Were the in-memory
    # counts updated after the lock is let go, a reroute scheduled in between would
    # count the new frames, and then they would be added once more.
    merge = store._merge

    def merge_late(usage: object) -> None:
        if not store._lock.locked():  # another thread could run here: let one
            store.reroute(ALICE.node_id, DAVE.node_id)
        merge(usage)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_merge", merge_late)
    store.enqueue([own(1), own(2)], now=NOW)
    store.accept([relay(admitted(3), CAROL, came_from=DAVE)], now=NOW)
    assert_accounting(store)
    assert store.statistics().queued_bytes == 3 * Q


# -- properties --------------------------------------------------------------------------


def assert_accounting(store: Store) -> None:
    """The store's byte counts equal what its tables hold (charged by stored_charge)."""
    db = store._db
    queue = [
        (src, hop, came, stored_charge(size))
        for src, hop, came, size in db.execute("SELECT src, next_hop, came_from, size FROM queue")
    ]
    inbox = [
        (src, stored_charge(stored))
        for src, stored in db.execute("SELECT src, LENGTH(envelope) + LENGTH(body) FROM inbox")
    ]
    total = sum(row[3] for row in queue)
    statistics = store.statistics()
    assert (statistics.queued_bytes, statistics.queued_frames) == (total, len(queue))
    inbox_bytes = sum(size for _, size in inbox)
    assert (statistics.inbox_bytes, statistics.inbox_frames) == (inbox_bytes, len(inbox))
    by_origin: dict[object, int] = {}
    for src, size in inbox:
        by_origin[src] = by_origin.get(src, 0) + size
    assert {k: v for k, v in store._inbox_origin.items() if v} == by_origin
    usage = store._usage
    for column, counter in ((0, usage.origin), (1, usage.next_hop), (2, usage.neighbour)):
        grouped: dict[object, int] = {}
        for row in queue:
            grouped[row[column]] = grouped.get(row[column], 0) + row[3]
        held: dict[object, int] = {k: v for k, v in counter.items() if v}
        assert held == grouped, column
    assert usage.total == total


ORIGINS = (ALICE, EVE, DAVE)
NEIGHBOURS = (CAROL, DAVE)
DESTINATIONS = (ALICE, EVE)
NEXT_HOPS = (CAROL, DAVE, None)
#: (frame number, origin, where it goes: "here" or a next hop, the neighbour it came
#: from, body length, whether its delivery queues a receipt)
INTAKES = st.tuples(
    st.integers(0, 15),
    st.sampled_from(ORIGINS),
    st.sampled_from(("here", *NEXT_HOPS)),
    st.sampled_from(NEIGHBOURS),
    st.integers(0, 40),
    st.booleans(),
)


@functools.cache
def sealed(
    n: int, src: crypto.Identity, dst: crypto.Identity, body: int, exp: int
) -> tuple[crypto.Frame, bytes]:
    return message(n, b"x" * body, src=src, dst=dst, exp=exp)


class StoreMachine(RuleBasedStateMachine):
    """Random custody traffic; the byte counts always match the tables, quotas hold,
    and a refused batch leaves no trace."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "store.sqlite3"
        self.quotas = Quotas(
            total=12 * Q, per_origin=6 * Q, per_next_hop=5 * Q, per_neighbour=5 * Q
        )
        self.max_inbox = 5 * B
        self.max_inbox_per_origin = 3 * B
        self.store = self.open()
        self.now = NOW
        self.serial = 1000

    def open(self) -> Store:
        return Store(
            self.path,
            max_inbox_bytes=self.max_inbox,
            max_inbox_bytes_per_origin=self.max_inbox_per_origin,
            quotas=self.quotas,
        )

    def teardown(self) -> None:
        self.store.close()
        self.directory.cleanup()

    def contents(self) -> list[list[tuple[object, ...]]]:
        return [
            sql(self.store, "SELECT * FROM queue ORDER BY seq"),
            sql(self.store, "SELECT * FROM inbox ORDER BY seq"),
            sql(self.store, "SELECT * FROM seen ORDER BY src, id"),
            sql(self.store, "SELECT * FROM sent ORDER BY id"),
        ]

    def next_id(self) -> int:
        self.serial += 1
        return self.serial

    @rule(items=st.lists(INTAKES, max_size=6), exp=st.sampled_from([NOW + 200, EXP]))
    def accept(
        self,
        items: list[tuple[int, crypto.Identity, object, crypto.Identity, int, bool]],
        exp: int,
    ) -> None:
        batch = []
        for n, src, where, came_from, body, asks in items:
            if where == "here":
                frame, envelope = sealed(n, src, BOB, body, exp)
                rcpt = own_receipt(self.next_id(), frame.id, next_hop=came_from) if asks else None
                batch.append(
                    deliver(Admitted(frame, envelope, 1), came_from=came_from, receipt=rcpt)
                )
            else:
                assert where is None or isinstance(where, crypto.Identity)
                frame, envelope = sealed(n, src, DESTINATIONS[n % 2], body, exp)
                batch.append(relay(Admitted(frame, envelope, 1), where, came_from=came_from))
        before = self.contents()
        try:
            results = self.store.accept(batch, now=self.now)
        except StoreFull:
            assert self.contents() == before
            return
        assert len(results) == len(batch)
        # A frame past its origin's share is refused on its own (store-full).
        assert all(r.ok or r.code is mesh.Reason.STORE_FULL for r in results)

    @rule(
        items=st.lists(
            st.tuples(st.sampled_from(DESTINATIONS), st.sampled_from(NEXT_HOPS), st.booleans()),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue(self, items: list[tuple[crypto.Identity, crypto.Identity | None, bool]]) -> None:
        frames = [own(self.next_id(), dst=dst, next_hop=hop) for dst, hop, _ in items]
        before = self.contents()
        try:
            self.store.enqueue(frames, now=self.now, receipts=[asks for *_, asks in items])
        except StoreFull:
            assert self.contents() == before

    @rule(hop=st.sampled_from(NEIGHBOURS), limit=st.integers(1, 5), keep=st.integers(0, 2))
    def forward(self, hop: crypto.Identity, limit: int, keep: int) -> None:
        batch = self.store.batch(hop.node_id, now=self.now, limit=limit)
        assert all(q.next_hop == hop.node_id and q.exp > self.now for q in batch)
        taken = [q.seq for q in batch[keep:]]
        assert self.store.forwarded(taken, first_hop=hop.node_id, now=self.now) == len(taken)

    @rule(picks=st.lists(st.integers(0, 40), max_size=4))
    def remove(self, picks: list[int]) -> None:
        seqs = [row[0] for row in sql(self.store, "SELECT seq FROM queue ORDER BY seq")]
        if seqs:
            chosen = {seqs[pick % len(seqs)] for pick in picks}
            assert self.store.remove(chosen) == len(chosen)  # type: ignore[arg-type]

    @rule(dst=st.sampled_from(DESTINATIONS), hop=st.sampled_from(NEXT_HOPS))
    def reroute(self, dst: crypto.Identity, hop: crypto.Identity | None) -> None:
        self.store.reroute(dst.node_id, None if hop is None else hop.node_id)
        if hop is not None:
            assert not sql(
                self.store,
                "SELECT 1 FROM queue WHERE dst = ? AND came_from = ? AND next_hop IS NOT NULL",
                dst.node_id.raw,
                hop.node_id.raw,
            )

    @rule(step=st.integers(0, 300))
    def expire(self, step: int) -> None:
        self.now += step
        self.store.take_expired(now=self.now)
        assert not sql(self.store, "SELECT 1 FROM queue WHERE exp <= ?", self.now)

    @rule(picks=st.lists(st.tuples(st.sampled_from(ORIGINS), st.integers(0, 15)), max_size=4))
    def ack(self, picks: list[tuple[crypto.Identity, int]]) -> None:
        self.store.ack([(src.node_id, frame_id(n)) for src, n in picks])

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self.open()

    @invariant()
    def accounting_matches_the_tables(self) -> None:
        assert_accounting(self.store)

    @invariant()
    def quotas_hold(self) -> None:
        usage = self.store._usage
        assert usage.total <= self.quotas.total
        assert all(size <= self.quotas.per_origin for size in usage.origin.values())
        assert all(
            size <= self.quotas.per_neighbour
            for came, size in usage.neighbour.items()
            if came is not None
        )
        assert self.store.statistics().inbox_bytes <= self.max_inbox
        assert all(size <= self.max_inbox_per_origin for size in self.store._inbox_origin.values())


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestStoreMachine = StoreMachine.TestCase


# -- durability ------------------------------------------------------------------------

_CRASH = textwrap.dedent(
    """
    import os, signal, sys
    import crypto, mesh

    alice = crypto.Identity(bytes(range(32)))
    bob = crypto.Identity(bytes(range(1, 33)))
    carol = crypto.Identity(bytes(range(2, 34)))

    def frame(n, src, dst):
        frame = crypto.Frame(
            kind=crypto.Kind.MSG, src=src.node_id, id=n.to_bytes(16, "big"),
            ts=1, exp=1000, hops=4, dst=dst.node_id, body=b"body %d" % n,
        )
        return frame, frame.seal(src)

    store = mesh.Store(sys.argv[1])
    intakes = []
    for n in range(50):
        f, envelope = frame(n, alice, bob if n < 30 else carol)
        decision = mesh.Deliver() if n < 30 else mesh.Forward(carol.node_id)
        intakes.append(mesh.Intake(mesh.Admitted(f, envelope, 1), decision, carol.node_id))
    results = store.accept(intakes, now=1)
    assert all(r.outcome is mesh.Outcome.ACCEPTED for r in results), results
    ours = [mesh.Outgoing.of(*frame(n, bob, alice), hops=0, next_hop=carol.node_id)
            for n in range(100, 110)]
    store.enqueue(ours, now=2, receipts=[True] * 10)
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
        assert [e.body for e in pending] == [b"body %d" % n for n in range(30)]
        assert store.statistics().seen_ids == 30
        queued = store.batch(CAROL.node_id, now=1)
        assert [int.from_bytes(q.id, "big") for q in queued] == [*range(30, 50), *range(100, 110)]
        for n in range(100, 110):
            trace = store.trace(frame_id(n))
            assert trace is not None
            assert (trace.state, trace.receipt, trace.created) == ("queued", True, 2)
        assert_accounting(store)
        again = [inbound(n) for n in range(30)]  # same ids
        assert all(r.outcome is Outcome.DUPLICATE for r in store.accept(again, now=1))


# -- the rows a write queued, handed back --------------------------------------------


def read_back(store: Store, *hops: crypto.Identity) -> list[mesh.Queued]:
    """Every row queued for ``hops``, as the forwarders read them, in seq order."""
    rows = [row for hop in hops for row in store.batch(hop.node_id, now=NOW, limit=1000)]
    return sorted(rows, key=lambda row: row.seq)


def test_accept_hands_back_the_rows_it_queued_as_batch_reads_them(store: Store) -> None:
    # Two frames to forward (one to DAVE, one to EVE), a message for us asking for a
    # receipt (queued back toward ALICE through CAROL), one frame held (no next hop),
    # and a frame queued earlier, now a duplicate: four rows queued, and handed back.
    store.accept([relay(admitted(1, dst=DAVE), DAVE)], now=NOW)
    for_us = admitted(3, dst=BOB)
    receipt_out = own_receipt(90, for_us.frame.id)
    queued: list[mesh.Queued] = []
    results = store.accept(
        [
            relay(admitted(2, dst=EVE), EVE),
            deliver(for_us, receipt=receipt_out),
            relay(admitted(4, dst=DAVE), None),
            relay(admitted(1, dst=DAVE), DAVE),
        ],
        now=NOW,
        queued=queued,
    )
    assert [result.outcome for result in results] == [
        Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.DUPLICATE,
    ]  # fmt: skip
    assert [row.id for row in queued] == [frame_id(2), frame_id(90), frame_id(4)]
    held = store._db.execute("SELECT seq FROM queue WHERE next_hop IS NULL").fetchall()
    assert [row.seq for row in queued if row.next_hop is None] == [seq for (seq,) in held]
    sent = [row for row in queued if row.next_hop is not None]
    assert sent == [row for row in read_back(store, EVE, CAROL) if row.id != frame_id(1)]
    # Nothing asked for, nothing kept; a refused batch leaves what was handed empty.
    store.accept([relay(admitted(5, dst=DAVE), DAVE)], now=NOW)
    assert store._new_rows is None


def test_enqueue_hands_back_its_rows_alone_and_together(tmp_path: Path) -> None:
    def sending(n: int) -> Outgoing:
        frame, envelope = message(n, src=BOB, dst=ALICE)
        return Outgoing.of(frame, envelope, hops=0, next_hop=CAROL.node_id)

    with Store(tmp_path / "s.sqlite3") as store:
        alone: list[mesh.Queued] = []
        assert store.write(store.enqueue_write([sending(1)], now=NOW, queued=alone)) is None
        lists: list[list[mesh.Queued]] = [[], [], []]
        writes = [
            store.enqueue_write([sending(2), sending(3)], now=NOW, queued=lists[0]),
            store.enqueue_write([sending(4)], now=NOW + 1, queued=lists[1]),
            store.enqueue_write([sending(5)], now=NOW + 2),  # not asked
            store.enqueue_write([sending(6)], now=NOW + 3, queued=lists[2]),
        ]
        assert store.write_group(writes) == [None] * 4  # together: one statement
        rows = read_back(store, CAROL)
        assert alone == rows[:1]
        assert lists == [rows[1:3], rows[3:4], rows[5:6]]
        # A group that fails its first pass runs write by write: what each hands back
        # is what it queued in the pass that stands.
        again: list[mesh.Queued] = []
        refused: list[mesh.Queued] = []
        outcomes = store.write_group(
            [
                store.enqueue_write([sending(7)], now=NOW, queued=again),
                store.enqueue_write([sending(1)], now=NOW, queued=refused),  # queued already
            ]
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], MeshError)
        assert again == read_back(store, CAROL)[-1:]
        assert [row.id for row in again] == [frame_id(7)]
