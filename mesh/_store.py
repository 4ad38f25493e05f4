"""The node's durable store: SQLite in WAL mode.

Tables (schema 7):

* ``seen``: (origin, id) of every frame delivered to this node, and of every
  publication it took (delivered, passed on, or both), kept until the frame expires
  (after that the frame itself is refused as expired, so a replay can never be taken
  twice). Keyed by origin *and* id: one origin reusing another's frame id cannot
  suppress the real frame. ``seen_v1`` keeps the id-only entries of a schema-1 store
  until they expire.
* ``inbox``: messages and publications for this node that the application has not
  acknowledged (``topic``: a publication's topic, NULL for a message).
* ``queue``: frames this node holds for a next hop (its own and others'), or holds
  with no next hop (``next_hop`` NULL) until a route appears or they expire. A ``msg``
  or ``rcpt`` is held once: unique by (origin, id), so a frame held here is a duplicate
  if it comes again. A ``pub`` is held once *per next hop* (unique by (origin, id,
  dst), where ``dst`` of a pub copy is the next hop it is for: bookkeeping only, a pub
  has no destination); a pub copy never changes next hop (:meth:`Store.reroute`
  leaves it), it stays until that neighbour takes it or it expires. Whether a pub is
  new is decided by the seen-set, not the queue.
* ``sent``: the origin's trace of each frame it sent: first hop and when it accepted,
  and what receipts said (delivered after N hops, or dropped by X because Y).
* ``receipts``: the receipts that came back for a frame we sent (at most
  :data:`MAX_RECEIPTS_PER_FRAME` each).
* ``routes`` and ``addresses``: the routing table and the address records learned from
  announces, saved so a restarted node starts from what it knew.
* ``interests``: the subscribers' interests (from ``sub``/``unsub`` frames, withdrawn
  ones as tombstones) the router holds, saved whole like the routes.
* ``subscriptions``: this node's named durable subscriptions (patterns, lease).
* ``idempotency``: the local API's idempotency keys (the IETF httpapi
  Idempotency-Key draft) of this node's own sends and publications, with what the first
  request answered, for :data:`IDEMPOTENCY_WINDOW_MS` (at most
  :data:`MAX_IDEMPOTENCY_KEYS`, oldest go first).

"Accepted" means committed: :meth:`Store.accept`, :meth:`Store.enqueue` and
:meth:`Store.publish` write a whole batch in one transaction (``synchronous=FULL``), so
a node killed right after answering (or after ``send()`` returned) loses nothing it took
(docs/architecture.md: commit per batch).

Quotas: the inbox has a total and one per origin; the queue has a total, per origin, per
next hop and per neighbour the frames came from. They count what is stored: every inbox
and queue row is charged :func:`stored_charge` of the bytes it holds (envelope, and an
inbox row's copy of the body) plus what SQLite spends on the row and its index entries,
so empty frames cost something too. The charges are counted in memory (recounted from
the tables when the store opens), never summed per frame. A batch that would pass any
quota is refused whole with :class:`StoreFull` (429 upstream, so the previous hop keeps
the frames). The byte figures of :meth:`Store.statistics` and :meth:`Store.queues` are
these charges too, so they compare with the quotas. On a relay that requires a ``store``
capability, a neighbour's frames are taken on the terms its capability sets
(:class:`Custody`): none for others without one, and its ``quota`` in place of the one
per neighbour.

The methods block; the runtime calls them through ``trio.to_thread``. A lock inside
makes one store safe to use from any thread. No clock is read: ``now`` is passed in.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import crypto
from mesh import _sqlite
from mesh._engine import Deliver, Fanout, Forward
from mesh._errors import MeshError, StoreFull
from mesh._intake import Admitted
from mesh._interests import Interest
from mesh._records import quick_init
from mesh._routes import Route
from mesh._wire import ACCEPTED, DUPLICATE, Reason, Result, WireFrame

__all__ = [
    "DEFAULT_MAX_INBOX_BYTES",
    "IDEMPOTENCY_WINDOW_MS",
    "INBOX_ORIGIN_SHARE",
    "MAX_IDEMPOTENCY_KEYS",
    "MIN_CHARGE",
    "PURGED",
    "ROW_OVERHEAD",
    "Custody",
    "Idempotent",
    "InboxEntry",
    "Intake",
    "Outgoing",
    "QueueStatistics",
    "Queued",
    "Quotas",
    "Receipt",
    "SavedSubscription",
    "Store",
    "StoreStatistics",
    "Trace",
    "Write",
    "stored_charge",
]

#: Inbox quota: past it, senders are told to retry later (429) rather than fill the disk.
DEFAULT_MAX_INBOX_BYTES: Final = 256 * 1024 * 1024
#: The inbox quota per origin is the inbox quota divided by this (unless given): one
#: origin, e.g. a throw-away identity, cannot fill the inbox for all; 8 leave room for
#: several busy senders at once.
INBOX_ORIGIN_SHARE: Final = 8
#: What SQLite spends on a row besides the bytes of its blobs: the other columns, record
#: and cell headers, the entries in the table's indexes, pages left part-full; for an
#: inbox row also its seen-set entry. Measured (SQLite 3.40, 4 KiB pages): 20,000 frames
#: with empty bodies and random ids from 8 origins taken through accept() into the queue
#: and, in another store, the inbox; the growth of (page_count - freelist_count) *
#: page_size after a WAL checkpoint, divided by 20,000, less the blob bytes per row:
#: 518 bytes per queue row (it has 5 indexes), 337 per inbox row. With bodies of 100 to
#: 1,500 bytes: 490-550 per queue row. Rows of a few KiB leave up to half a page unused
#: each (up to 2,100 bytes measured, e.g. queue rows of 2.3 KiB, inbox rows of 6 KiB),
#: so a full store may take up to 1.6 times its charges on disk; for small frames, the
#: flood case, the charges cover what is on disk.
ROW_OVERHEAD: Final = 512
#: The least a row is charged, whatever it holds: a message with an empty body (a
#: 277-byte envelope) took 795 bytes in the queue; the smallest frame, a publication with
#: an empty body and a one-letter topic, has a 217-byte envelope and costs about as much.
MIN_CHARGE: Final = 768
#: How long an idempotency key of the local API answers with the first result: a day,
#: long past any client's retries (the Idempotency-Key draft leaves it to the server).
IDEMPOTENCY_WINDOW_MS: Final = 24 * 3600 * 1000
#: Idempotency keys kept at most (oldest go first): bounds the table whatever clients
#: send; a day of 100,000 sends is more than one node's local API makes.
MAX_IDEMPOTENCY_KEYS: Final = 100_000
#: How long the seen-set keeps an id past the frame's expiry: covers clock skew.
SEEN_GRACE_MS: Final = 10 * 60 * 1000
#: How long the origin keeps the trace of a frame past its expiry.
TRACE_KEEP_MS: Final = 7 * 24 * 3600 * 1000
SCHEMA_VERSION: Final = 7
#: Parameters in one ``IN (...)`` list at most (SQLite's limit is 32,766 since 3.32).
_IN_CHUNK: Final = 500
#: Why a frame this node made was dropped by :meth:`Store.purge` (its trace says so).
PURGED: Final = "purged by the operator"
_T = TypeVar("_T")
_K = TypeVar("_K", bytes, bytes | None)
#: A frame into the queue; a copy there already (its key) is left as it is.
_INSERT_QUEUE: Final = (
    "INSERT OR IGNORE INTO queue (src, id, kind, dst, exp, hops, next_hop, came_from,"
    " queued, size, envelope, subscribers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _queue_row(outgoing: Outgoing, now: int) -> tuple[Any, ...]:
    """The values of :data:`_INSERT_QUEUE` for ``outgoing``, queued at ``now``: (src, id,
    kind, dst, exp, hops, next_hop, came_from, queued, size, envelope, subscribers)."""
    return (
        outgoing.src.raw,
        outgoing.id,
        str(outgoing.kind),
        outgoing.dst.raw,
        outgoing.exp,
        outgoing.hops,
        _raw(outgoing.next_hop),
        _raw(outgoing.came_from),
        now,
        len(outgoing.envelope),
        outgoing.envelope,
        b"".join(node.raw for node in outgoing.to),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Write(Generic[_T]):
    """One write of a :class:`Store`'s, ready to run: alone (:meth:`Store.write`) or
    with others in one transaction (:meth:`Store.write_group`). Made by the store's
    ``*_write`` methods; ``work`` runs in the transaction and ``then`` once its changes
    stand (the in-memory counts follow the tables)."""

    work: Callable[[], _T]
    then: Callable[[_T], None] | None = None
    #: For a plain :meth:`Store.enqueue_write` (no idempotency key): what it takes, so
    #: that a group runs a run of them as one statement per table (its outcome, None,
    #: the same); ``work`` and ``then`` are what runs otherwise.
    enqueue: _Enqueue | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Enqueue:
    """What a plain enqueue write takes: frames, whether each asked for a receipt, when,
    and where to put the rows it queued (see :meth:`Store.enqueue_write`)."""

    frames: tuple[Outgoing, ...]
    receipts: tuple[bool, ...]
    now: int
    queued: list[Queued] | None = None


def _queued_from(outgoing: Outgoing, seq: int, now: int) -> Queued:
    """The queue row just inserted for ``outgoing`` (``seq``, at ``now``) as it reads."""
    return Queued(
        seq,
        outgoing.src,
        outgoing.id,
        outgoing.kind,
        outgoing.dst,
        outgoing.exp,
        outgoing.hops,
        outgoing.next_hop,
        outgoing.came_from,
        now,
        len(outgoing.envelope),
        outgoing.envelope,
        outgoing.to,
    )


def stored_charge(stored_bytes: int) -> int:
    """What a row holding ``stored_bytes`` of blobs counts against the quotas: those
    bytes plus :data:`ROW_OVERHEAD`, at least :data:`MIN_CHARGE`. A queue row holds its
    envelope; an inbox row its envelope and the body again."""
    return max(MIN_CHARGE, stored_bytes + ROW_OVERHEAD)


#: stored_charge in SQL, of a queue row and of an inbox row.
_QUEUE_CHARGE: Final = f"MAX({MIN_CHARGE}, size + {ROW_OVERHEAD})"
_INBOX_CHARGE: Final = f"MAX({MIN_CHARGE}, LENGTH(envelope) + LENGTH(body) + {ROW_OVERHEAD})"
#: Receipts kept for one frame this node sent: one per hop that dropped a copy and the
#: destination's delivery, with room to spare; more (forged by relays that saw the id)
#: would take disk no quota counts.
MAX_RECEIPTS_PER_FRAME: Final = 32
#: Idempotency keys longer than this (UTF-8 bytes), or that UTF-8 cannot encode, are
#: stored as a digest (:func:`_key_text`).
_MAX_KEY_BYTES: Final = 1024

#: The queue's columns and keys, for _SCHEMA and for the migrations that rebuild it.
_QUEUE_TABLE: Final = """(
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
    subscribers BLOB NOT NULL DEFAULT x''
)"""

_SCHEMA: Final = f"""
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
    topic TEXT,
    UNIQUE (src, id)
);
CREATE TABLE IF NOT EXISTS queue {_QUEUE_TABLE};
CREATE UNIQUE INDEX IF NOT EXISTS queue_one_copy ON queue (src, id) WHERE kind != 'pub';
CREATE UNIQUE INDEX IF NOT EXISTS queue_pub_copy ON queue (src, id, dst, subscribers)
    WHERE kind = 'pub';
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
CREATE TABLE IF NOT EXISTS interests (
    origin BLOB NOT NULL,
    pattern TEXT NOT NULL,
    ts INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    withdrawn INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    PRIMARY KEY (origin, pattern)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    patterns TEXT NOT NULL, -- a JSON list of patterns
    lease_ms INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sub_pending (
    name TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sub_pending_by_seq ON sub_pending (seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    response BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_created ON idempotency (created);
"""

#: Schema 1 -> 2: dedup by (origin, id); the inbox unique by (origin, id). Ids seen
#: without a known origin go to seen_v1 until they expire.
_MIGRATE_1_TO_2: Final = """
CREATE TABLE seen_new (
    src BLOB NOT NULL, id BLOB NOT NULL, exp INTEGER NOT NULL, PRIMARY KEY (src, id)
) WITHOUT ROWID;
INSERT INTO seen_new SELECT inbox.src, seen.id, seen.exp FROM seen JOIN inbox USING (id);
CREATE TABLE seen_v1 (id BLOB PRIMARY KEY, exp INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO seen_v1 SELECT id, exp FROM seen WHERE id NOT IN (SELECT id FROM inbox);
DROP TABLE seen;
ALTER TABLE seen_new RENAME TO seen;
CREATE TABLE inbox_new (
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
INSERT INTO inbox_new SELECT seq, id, src, kind, ts, exp, received, hops, ct, ref, body, envelope
    FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
"""


def _rebuild_queue(subscribers: str) -> str:
    """Schemas 2 to 6 -> 7: the queue is unique by (origin, id) for every kind but
    ``pub``, and a ``pub`` by (origin, id, dst, subscribers) (queued once per next hop
    and per list of subscribers it names), each a partial unique index. Schemas 5 and 6
    had the second as the table's constraint, for every kind: an index each frame
    queued updated for nothing but publications. SQLite cannot drop a constraint, so
    the table is rebuilt, every row (and its seq, and the seq counter) kept; _SCHEMA
    makes the indexes. ``subscribers``: the SQL for each row's list (schema 4 had the
    column, nullable; before it there was none)."""
    return f"""
CREATE TABLE queue_new {_QUEUE_TABLE};
INSERT INTO queue_new SELECT seq, src, id, kind, dst, exp, hops, next_hop, came_from, queued,
    size, envelope, {subscribers} FROM queue;
DELETE FROM sqlite_sequence WHERE name = 'queue_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'queue_new', seq FROM sqlite_sequence
    WHERE name = 'queue';
DROP TABLE queue;
ALTER TABLE queue_new RENAME TO queue;
"""  # noqa: S608 - built from our own constants


@dataclasses.dataclass(frozen=True)
class Quotas:
    """Limits on what the queue holds, in bytes charged (:func:`stored_charge` of each
    row's envelope)."""

    total: int = 512 * 1024 * 1024
    per_origin: int = 64 * 1024 * 1024
    per_next_hop: int = 256 * 1024 * 1024
    #: Frames taken from one neighbour: one neighbour cannot fill the store for all.
    per_neighbour: int = 128 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Custody:
    """On what terms the queue takes frames for others from one neighbour, on a node
    that requires a ``store`` capability for that (``mesh.Requirements.store``; see
    :meth:`Store.custody`).

    ``refused``: the neighbour presented no capability that holds, and these words say
    why: each of its frames that would be queued (a ``msg`` or ``rcpt`` for another
    node, a ``pub`` to pass on, also one delivered here as well: taking it for this
    node alone would drop the other copies unsaid) is rejected ``forbidden`` with
    them, while its frames for this node are taken. Else ``quota``: the bytes charged
    the queue may hold of frames taken from it (the capability's ``quota``), in place
    of :attr:`Quotas.per_neighbour` (None: that one); past it, :class:`StoreFull`.
    """

    refused: str | None = None
    quota: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Idempotent:
    """An idempotency key of the local API and what its first request got.

    Given to :meth:`Store.enqueue` or :meth:`Store.publish`: if ``key`` is recorded
    (within :data:`IDEMPOTENCY_WINDOW_MS`), nothing is taken and the record is returned;
    else the frames are taken and this is recorded with them, in one transaction.
    ``fingerprint``: what identifies the request (e.g. a digest of its body), for the
    caller to tell a retry from another request reusing the key (the store does not
    compare it). ``response``: what to answer a retry with.
    """

    key: str
    fingerprint: bytes
    response: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received frame (``msg`` or ``pub``) waiting for the application to acknowledge
    it. ``topic``: a publication's topic (None for a message)."""

    seq: int
    id: bytes
    src: crypto.NodeId
    kind: crypto.Kind
    ts: int
    received: int
    hops: int
    ct: str | None
    ref: bytes | None
    body: bytes
    topic: str | None = None


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to queue: sealed, with the hops it has made and where it goes next.

    Build it with :meth:`of` (``msg``, ``rcpt``) or :meth:`copy_for` (one copy of a
    ``pub`` for one next hop: ``dst`` is that next hop, for bookkeeping).
    """

    src: crypto.NodeId
    id: bytes
    kind: crypto.Kind
    dst: crypto.NodeId
    exp: int
    hops: int
    envelope: bytes
    next_hop: crypto.NodeId | None
    came_from: crypto.NodeId | None = None
    #: A publication's copy: the subscribers it is for (empty: every matching one).
    to: tuple[crypto.NodeId, ...] = ()

    @classmethod
    def of(
        cls,
        frame: crypto.Frame,
        envelope: bytes,
        *,
        hops: int,
        next_hop: crypto.NodeId | None,
        came_from: crypto.NodeId | None = None,
    ) -> Outgoing:
        assert frame.dst is not None  # msg and rcpt frames; a pub: copy_for
        return cls(
            frame.src, frame.id, frame.kind, frame.dst, frame.exp, hops, envelope, next_hop,
            came_from,
        )  # fmt: skip

    @classmethod
    def copy_for(
        cls,
        frame: crypto.Frame,
        envelope: bytes,
        *,
        hops: int,
        next_hop: crypto.NodeId,
        came_from: crypto.NodeId | None = None,
        to: tuple[crypto.NodeId, ...] = (),
    ) -> Outgoing:
        """The copy of publication ``frame`` queued for ``next_hop``, for the
        subscribers ``to`` (empty: every matching one)."""
        assert frame.kind is crypto.Kind.PUB  # msg and rcpt frames: of
        return cls(
            frame.src, frame.id, frame.kind, next_hop, frame.exp, hops, envelope, next_hop,
            came_from, to,
        )  # fmt: skip

    @classmethod
    def held_for(
        cls,
        frame: crypto.Frame,
        envelope: bytes,
        *,
        hops: int,
        subscriber: crypto.NodeId,
        came_from: crypto.NodeId | None = None,
    ) -> Outgoing:
        """The copy of publication ``frame`` held for ``subscriber`` (no next hop yet):
        addressed to it, with it as ``dst``, so that :meth:`Store.reroute` sends it on
        once a route to it appears."""
        assert frame.kind is crypto.Kind.PUB
        return cls(
            frame.src, frame.id, frame.kind, subscriber, frame.exp, hops, envelope, None,
            came_from, (subscriber,),
        )  # fmt: skip


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Queued:
    """A frame in the queue. For a copy of a ``pub``, ``dst`` is the next hop the copy
    is for (the frame has no destination), or for a copy held for one subscriber
    (:meth:`Outgoing.held_for`), that subscriber."""

    seq: int
    src: crypto.NodeId
    id: bytes
    kind: crypto.Kind
    dst: crypto.NodeId
    exp: int
    hops: int
    next_hop: crypto.NodeId | None
    came_from: crypto.NodeId | None
    queued: int
    size: int
    envelope: bytes
    to: tuple[crypto.NodeId, ...] = ()
    #: The destination's coordinates to send with it (not stored: the router's).
    coords: bytes | None = None
    #: A message's origin's coordinates to send with it (not stored: the router's).
    src_coords: bytes | None = None

    @property
    def wire(self) -> WireFrame:
        return WireFrame(self.hops, self.envelope, self.to, self.coords, self.src_coords)


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Intake:
    """One admitted frame and the router's decision for it (:class:`Fanout` for a
    ``pub``, and only for one).

    ``receipt``: the delivery receipt to queue if the frame is delivered here for the
    first time (the origin asked for one).
    """

    admitted: Admitted
    decision: Deliver | Forward | Fanout
    came_from: crypto.NodeId | None
    receipt: Outgoing | None = None
    #: For a publication delivered here: the named subscriptions it is pending for.
    named: tuple[str, ...] = ()
    #: For a frame delivered here: enter it in the seen-set only, not the inbox (a call
    #: on an object, or a reply, that the runtime hands over from memory once the
    #: batch is committed). A copy seen before is a duplicate all the same.
    seen_only: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What a receipt said about one of our frames."""

    by: crypto.NodeId
    state: str  # delivered | dropped
    why: str | None
    hops: int | None
    ts: int
    received: int


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    """Where a frame this node sent is known to be."""

    id: bytes
    dst: crypto.NodeId
    kind: str
    created: int
    exp: int
    receipt: bool
    #: queued (here), held (here, no route), forwarded, delivered, dropped
    state: str
    next_hop: crypto.NodeId | None
    first_hop: crypto.NodeId | None
    first_accepted: int | None
    done_at: int | None
    hops: int | None
    by: crypto.NodeId | None
    why: str | None
    receipts: tuple[Receipt, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SavedSubscription:
    """A named durable subscription of this node: its patterns and lease (ms)."""

    name: str
    patterns: tuple[str, ...]
    lease_ms: int
    created: int


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatistics:
    """Frames queued for one next hop (None: held, no route yet). ``bytes``: what they
    are charged (:func:`stored_charge`), as the quotas count."""

    next_hop: crypto.NodeId | None
    frames: int
    bytes: int
    oldest: int  # when the oldest was queued (ms)


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatistics:
    """What the store holds. The byte figures are charges (:func:`stored_charge`), as
    the quotas count them: what the rows take on disk, not the bytes of bodies."""

    inbox_frames: int
    inbox_bytes: int
    seen_ids: int
    queued_frames: int
    queued_bytes: int


def _translate(exc: sqlite3.Error, path: str) -> MeshError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "full" in text:
        return StoreFull(f"store {path} is out of disk space: {text}")
    return MeshError(f"store {path} failed: {text}")


def _node(raw: bytes | None) -> crypto.NodeId | None:
    return None if raw is None else crypto.NodeId(raw)


def _raw(node: crypto.NodeId | None) -> bytes | None:
    return None if node is None else node.raw


_QUEUED_COLUMNS: Final = (
    "seq, src, id, kind, dst, exp, hops, next_hop, came_from, queued, size, envelope, subscribers"
)


#: A kind as stored (its text) to the :class:`crypto.Kind` (a lookup, not an enum call).
_KIND: Final = {str(kind): kind for kind in crypto.Kind}


class _NodeIds:
    """Node ids read from the store, one object per id: rows name the same few nodes
    again and again, so this saves making them, and an id's text form (for JSON, logs)
    is made once. Forgotten all at once past ``limit``, so many identities cannot make
    it grow."""

    __slots__ = ("_ids", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._ids: dict[bytes, crypto.NodeId] = {}
        self.limit = limit

    def get(self, raw: bytes) -> crypto.NodeId:
        node = self._ids.get(raw)
        if node is None:
            if len(self._ids) >= self.limit:
                self._ids.clear()
            node = self._ids[raw] = crypto.NodeId(raw)
        return node

    def maybe(self, raw: bytes | None) -> crypto.NodeId | None:
        return None if raw is None else self.get(raw)

    def queued(self, row: Sequence[Any]) -> Queued:
        """A queue row (:data:`_QUEUED_COLUMNS`) as a :class:`Queued`."""
        return Queued(
            seq=row[0],
            src=self.get(row[1]),
            id=row[2],
            kind=_KIND[row[3]],
            dst=self.get(row[4]),
            exp=row[5],
            hops=row[6],
            next_hop=self.maybe(row[7]),
            came_from=self.maybe(row[8]),
            queued=row[9],
            size=row[10],
            envelope=row[11],
            to=_nodes(row[12]),
        )

    def inbox_entry(self, row: Sequence[Any]) -> InboxEntry:
        """An inbox row (seq, id, src, kind, ts, received, hops, ct, ref, body, topic)."""
        return InboxEntry(
            seq=row[0],
            id=row[1],
            src=self.get(row[2]),
            kind=_KIND[row[3]],
            ts=row[4],
            received=row[5],
            hops=row[6],
            ct=row[7],
            ref=row[8],
            body=row[9],
            topic=row[10],
        )


def _key_text(key: str) -> str:
    """The text idempotency key ``key`` is stored as: the key itself, or, if UTF-8
    cannot encode it (lone surrogates), it is longer than :data:`_MAX_KEY_BYTES` or it
    starts with NUL, NUL and the SHA-256 of its bytes in hex. Any str is stored, and
    distinct keys stay distinct (the two forms cannot meet: only digests start with
    NUL)."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= _MAX_KEY_BYTES and not key.startswith("\0"):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return key
    return "\0" + hashlib.sha256(raw).hexdigest()


def _nodes(raw: bytes | None) -> tuple[crypto.NodeId, ...]:
    """Node ids stored concatenated (NULL: none)."""
    if not raw:
        return ()
    return tuple(crypto.NodeId(raw[i : i + 32]) for i in range(0, len(raw), 32))


class _WriteFailed(Exception):
    """A write of a group run without savepoints raised ``error``: run them again with
    (or, for a group of one, that is its outcome)."""

    def __init__(self, error: MeshError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclasses.dataclass
class _Counts:
    usage: _Usage
    inbox_bytes: int
    inbox_origin: collections.Counter[bytes]
    idempotency_keys: int


class _Usage:
    """Bytes charged for the queue, in total and by origin, next hop and neighbour (kept
    in memory). Plain dicts, a missing key meaning 0: one is made for every write, and a
    Counter costs several times as much to make."""

    def __init__(self) -> None:
        self.total = 0
        self.origin: dict[bytes, int] = {}
        self.next_hop: dict[bytes | None, int] = {}
        self.neighbour: dict[bytes | None, int] = {}

    def add(self, src: bytes, next_hop: bytes | None, came_from: bytes | None, size: int) -> None:
        self.total += size
        self.origin[src] = self.origin.get(src, 0) + size
        self.next_hop[next_hop] = self.next_hop.get(next_hop, 0) + size
        self.neighbour[came_from] = self.neighbour.get(came_from, 0) + size

    def remove(
        self, src: bytes, next_hop: bytes | None, came_from: bytes | None, size: int
    ) -> None:
        self.add(src, next_hop, came_from, -size)
        if self.origin[src] <= 0:
            del self.origin[src]
        if self.next_hop[next_hop] <= 0:
            del self.next_hop[next_hop]
        if self.neighbour[came_from] <= 0:
            del self.neighbour[came_from]

    def merge(self, other: _Usage) -> None:
        """Add what ``other`` counts (rows it deleted count negative: an origin, next
        hop or neighbour left at 0 is forgotten, as by :meth:`remove`)."""
        _add_into(self.origin, other.origin)
        _add_into(self.next_hop, other.next_hop)
        _add_into(self.neighbour, other.neighbour)
        self.total += other.total

    def over(
        self, quotas: Quotas, added: _Usage, granted: dict[bytes, int] | None = None
    ) -> str | None:
        """Why adding ``added`` would pass a quota, or None. ``granted``: the quota of
        frames from a neighbour, in place of ``quotas.per_neighbour``, for the
        neighbours that hold a ``store`` capability with one (:class:`Custody`)."""
        if added.total and self.total + added.total > quotas.total:
            return (
                f"queue holds {self.total} bytes; {added.total} more would pass its quota "
                f"of {quotas.total}; retry later"
            )
        for src, size in added.origin.items():
            if size > 0 and (held := self.origin.get(src, 0)) + size > quotas.per_origin:
                return (
                    f"queue holds {held} bytes from {crypto.NodeId(src).short}; "
                    f"{size} more would pass its quota per origin of {quotas.per_origin}; "
                    "retry later"
                )
        for hop, size in added.next_hop.items():
            if (
                size > 0
                and hop is not None
                and (held := self.next_hop.get(hop, 0)) + size > quotas.per_next_hop
            ):
                return (
                    f"queue holds {held} bytes for {crypto.NodeId(hop).short}; "
                    f"{size} more would pass its quota per next hop of {quotas.per_next_hop}; "
                    "retry later"
                )
        for came, size in added.neighbour.items():
            if size <= 0 or came is None:
                continue
            quota = None if granted is None else granted.get(came)
            limit = quotas.per_neighbour if quota is None else quota
            if (held := self.neighbour.get(came, 0)) + size > limit:
                which = "quota per neighbour" if quota is None else "capability's quota"
                return (
                    f"queue holds {held} bytes taken from "
                    f"{crypto.NodeId(came).short}; {size} more would pass its {which} "
                    f"of {limit}; retry later"
                )
        return None


def _add_into(counts: dict[_K, int], added: dict[_K, int]) -> None:
    for key, size in added.items():
        held = counts.get(key, 0) + size
        if held > 0:
            counts[key] = held
        else:
            counts.pop(key, None)


class Store:
    """One node's SQLite store. Use :meth:`close` (or ``with``) when done.

    Raises :class:`MeshError` if the file cannot be opened or has a schema this ptth
    does not know (a newer one); a store of an older schema (1 to 5) is migrated in
    place, in one transaction (a migration that fails leaves the file as it was).

    ``max_inbox_bytes``: the inbox quota, in bytes charged (:func:`stored_charge`).
    ``max_inbox_bytes_per_origin``: what one origin's frames may take of it (None: the
    quota divided by :data:`INBOX_ORIGIN_SHARE`). ``quotas``: the queue's. ``sync``
    False commits without waiting for the disk (``PRAGMA synchronous=OFF``): what was
    committed survives the process ending at any moment, but not the machine's (power,
    kernel); for simulations, whose crashes are processes' only. Default: wait (FULL).
    ``uri``: ``path`` is an SQLite URI (``sqlite3.connect(uri=True)``), such as a
    simulation's in-memory store ``file:NAME?mode=memory&cache=shared``. ``lean``: keep
    SQLite's memory for this store small, at some cost in speed (mesh/_sqlite.py): for
    simulations of many nodes.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES,
        max_inbox_bytes_per_origin: int | None = None,
        quotas: Quotas | None = None,
        sync: bool = True,
        uri: bool = False,
        lean: bool = False,
    ):
        self.path = str(path)
        self.max_inbox_bytes = max_inbox_bytes
        self.max_inbox_bytes_per_origin = (
            max_inbox_bytes // INBOX_ORIGIN_SHARE
            if max_inbox_bytes_per_origin is None
            else max_inbox_bytes_per_origin
        )
        self.quotas = quotas or Quotas()
        self.sync = sync
        self._lock = threading.Lock()
        self._usage = _Usage()
        #: Where the queue rows inserted by the transaction under way go, as
        #: :class:`Queued` (a caller's list; None: nobody asked). Under the lock.
        self._new_rows: list[Queued] | None = None
        #: With ``sync``: whether the connection is at synchronous=FULL (False while a
        #: relaxed transaction runs, and after one that could not set it back).
        self._waits_for_disk = True
        self._ids = _NodeIds()
        # Bytes charged for the inbox, in total and by origin.
        self._inbox_bytes = 0
        self._inbox_origin: collections.Counter[bytes] = collections.Counter()
        self._idempotency_keys = 0  # rows in the idempotency table
        #: The terms frames from a neighbour are taken on now (:meth:`custody`), by
        #: neighbour: immutable tuples, replaced whole (read from the store's thread).
        self._custody: dict[bytes, tuple[Custody, ...]] = {}
        #: The rows of the routes and interests tables as this store last wrote them
        #: (by primary key), so that a save writes only what changed; None: not known
        #: (a save then replaces the table whole).
        self._saved_routes: dict[tuple[bytes, bytes], tuple[Any, ...]] | None = None
        self._saved_interests: dict[tuple[bytes, str], tuple[Any, ...]] | None = None
        try:
            self._db = _sqlite.connect(self.path, uri=uri, lean=lean)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
            self._migrate()
            self._recount()
            (legacy,) = self._db.execute("SELECT COUNT(*) FROM seen_v1").fetchone()
            self._legacy_seen = legacy > 0
        except sqlite3.Error as exc:
            self._db.close()
            raise _translate(exc, self.path) from exc
        except MeshError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = None if row is None else row[0]
        if version is not None and version > SCHEMA_VERSION:
            raise MeshError(
                f"store {self.path} has schema {version}; this ptth reads up to "
                f"{SCHEMA_VERSION} (a newer ptth wrote it): run that ptth, or move the file "
                "away to start afresh"
            )
        if version == SCHEMA_VERSION:
            db.executescript(_SCHEMA)  # idempotent: every statement is IF NOT EXISTS
            return
        if version is not None and version not in (1, 2, 3, 4, 5, 6):
            raise MeshError(f"store {self.path} has schema {version}, which ptth never wrote")

        def run(script: str) -> None:
            # Statement by statement: executescript would commit first.
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)

        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                run(_MIGRATE_1_TO_2)
                version = 2
            # A schema-1 store migrated just now has no queue yet: _SCHEMA makes it.
            queue = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'queue'").fetchone()
            if queue and version is not None and version < 7:
                subscribers = {4: "COALESCE(subscribers, x'')", 5: "subscribers", 6: "subscribers"}
                run(_rebuild_queue(subscribers.get(version, "x''")))
            if version == 2:
                db.execute("ALTER TABLE inbox ADD COLUMN topic TEXT")
            # Schema 5 -> 6: the idempotency table (_SCHEMA makes it). The quotas' byte
            # counts, now charges, are not stored: counted from the tables on opening.
            run(_SCHEMA)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _recount(self) -> None:
        """Count the quotas' bytes and the idempotency keys from the tables (on opening,
        and after a group of writes failed to commit)."""
        self._inbox_origin = collections.Counter()
        self._inbox_bytes = 0
        for src, charged in self._db.execute(
            f"SELECT src, SUM({_INBOX_CHARGE}) FROM inbox GROUP BY src"  # noqa: S608
        ):
            self._inbox_origin[src] = charged
            self._inbox_bytes += charged
        self._usage = self._count()
        (self._idempotency_keys,) = self._db.execute("SELECT COUNT(*) FROM idempotency").fetchone()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            self._db.close()

    # -- plumbing ---------------------------------------------------------------------

    def _rollback(self) -> None:
        # SQLite may have rolled back already (it does on SQLITE_FULL); a closed
        # connection has nothing to roll back, and asking it raises ProgrammingError.
        with contextlib.suppress(sqlite3.ProgrammingError):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _transaction(
        self,
        work: Callable[[], _T],
        *,
        then: Callable[[_T], None] | None = None,
        wait_for_disk: bool = True,
    ) -> _T:
        """Run ``work`` in one write transaction, under the lock; roll back on error.

        ``then(result)`` runs once the transaction is committed, still under the lock:
        the in-memory byte counts change with the tables, so no thread sees (or
        recounts) one without the other.

        ``wait_for_disk`` False commits without an fsync (``synchronous=NORMAL`` for
        this transaction: in WAL mode the commit is appended to the log, and reaches the
        disk with the next commit that waits, or the next checkpoint). For a change that
        a machine's crash may undo without harm: the process ending loses nothing.
        """
        relaxed = self.sync and not wait_for_disk
        with self._lock:
            try:
                if relaxed:
                    self._waits_for_disk = False
                    self._db.execute("PRAGMA synchronous=NORMAL")
                else:
                    self._wait_for_disk()
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    result = work()
                    self._db.execute("COMMIT")
                finally:
                    if relaxed:
                        self._rollback()  # nothing open after a COMMIT: a no-op then
                        self._db.execute("PRAGMA synchronous=FULL")
                        self._waits_for_disk = True
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path) from exc
            except BaseException:
                self._rollback()  # e.g. a value SQLite cannot bind: never leave it open
                raise
            if then is not None:
                then(result)
            return result

    def _wait_for_disk(self) -> None:
        """Under the lock, before a transaction that waits for the disk: if the last
        relaxed one could not set ``synchronous=FULL`` back, set it now, so no commit
        that should wait for the disk goes without (raises ``sqlite3.Error`` if it
        cannot: then nothing is committed)."""
        if self.sync and not self._waits_for_disk:
            self._db.execute("PRAGMA synchronous=FULL")
            self._waits_for_disk = True

    def _read(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            try:
                return work()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    def write(self, write: Write[_T]) -> _T:
        """Run ``write`` in a transaction of its own; raise what it raises."""
        return self._transaction(write.work, then=write.then)

    def write_group(self, writes: Sequence[Write[Any]]) -> list[Any]:
        """Run ``writes`` in one transaction: one fsync for them all (group commit).
        Return, for each, its result, or the :class:`MeshError` it raised
        (:class:`StoreFull` for a quota, say): that one's changes are undone, the
        others stand.

        Raises :class:`MeshError` (none of the writes stands) if the transaction
        fails (the disk is full, the file cannot be written), and what a write raises
        that is not a :class:`MeshError` (a bug), undoing them all.

        The writes run one after another, each seeing those before it (a quota check
        counts them); if one raises, the transaction is rolled back and they run again,
        each in a savepoint of its own, so that only its changes are undone (a
        savepoint per write costs as much again as the write: paid only then). A group
        of one needs no savepoint: the rollback undid its changes, and nothing else.
        Plain enqueues in a row (no idempotency key: concurrent ``node.send`` calls)
        run as one, a statement per table for all their frames, with the same outcome;
        if one of their frames is queued already or a quota would be passed, that
        first pass fails and the savepoint pass decides write by write.
        """
        with self._lock:
            counts = self._counts()
            try:
                return self._run_group(writes, counts, savepoints=False)
            except _WriteFailed as failed:
                if len(writes) == 1:
                    return [failed.error]
            return self._run_group(writes, counts, savepoints=True)

    def _run_group(
        self, writes: Sequence[Write[Any]], counts: _Counts, *, savepoints: bool
    ) -> list[Any]:
        outcomes: list[Any] = []
        try:
            self._wait_for_disk()
            self._db.execute("BEGIN IMMEDIATE")
            index = 0
            while index < len(writes):
                write = writes[index]
                index += 1
                if not savepoints and write.enqueue is not None:
                    # Plain enqueues in a row (concurrent node.send calls): together.
                    end = index
                    while end < len(writes) and writes[end].enqueue is not None:
                        end += 1
                    if end - index:
                        together = [
                            w.enqueue for w in writes[index - 1 : end] if w.enqueue is not None
                        ]
                        self._enqueue_together(together)
                        outcomes += [None] * len(together)
                        index = end
                        continue
                if savepoints:
                    self._db.execute("SAVEPOINT write")
                try:
                    result = write.work()
                except MeshError as exc:
                    if not savepoints:
                        raise _WriteFailed(exc) from exc
                    self._db.execute("ROLLBACK TO write")
                    self._db.execute("RELEASE write")
                    outcomes.append(exc)
                    continue
                if savepoints:
                    self._db.execute("RELEASE write")
                # Counted now, so the next write's quota check sees this one; if the
                # transaction does not stand, the counts are put back as they were.
                if write.then is not None:
                    write.then(result)
                outcomes.append(result)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._restore(counts)
            raise _translate(exc, self.path) from exc
        except BaseException:
            self._rollback()
            self._restore(counts)
            raise
        return outcomes

    def _counts(self) -> _Counts:
        """A copy of the in-memory counts, to put back if a transaction fails."""
        usage = _Usage()
        usage.total = self._usage.total
        usage.origin = self._usage.origin.copy()
        usage.next_hop = self._usage.next_hop.copy()
        usage.neighbour = self._usage.neighbour.copy()
        return _Counts(usage, self._inbox_bytes, self._inbox_origin.copy(), self._idempotency_keys)

    def _restore(self, counts: _Counts) -> None:
        self._usage = counts.usage
        self._inbox_bytes = counts.inbox_bytes
        self._inbox_origin = counts.inbox_origin
        self._idempotency_keys = counts.idempotency_keys

    # -- taking frames ----------------------------------------------------------------

    def accept(
        self, batch: Sequence[Intake], *, now: int, queued: list[Queued] | None = None
    ) -> list[Result]:
        """Take responsibility for ``batch`` in one transaction; a result per frame.

        Frames for this node go to the inbox (receipts to the trace of the frame they
        are about; one with ``seen_only`` to the seen-set alone); a frame delivered
        before (its origin and id are in the seen-set) is a duplicate. Frames to
        forward go to the queue; one already queued here is a duplicate. A publication
        (:class:`Fanout`) taken before (in the seen-set) is a duplicate; else it is
        entered in the seen-set, delivered to the inbox if ``deliver``, and a copy is
        queued for each next hop: accepted, even with nowhere to go. Raises
        :class:`StoreFull` (nothing taken) if the batch would pass the inbox quota (in
        total or its origin's) or a queue quota (each pub copy counts), or the disk is
        full.

        With ``queued``: the rows this queued (frames to forward, copies, receipts), as
        :class:`Queued` in the order of their ``seq``, go there once committed, so that
        the forwarders need not read them back.
        """
        usage = _Usage()
        inbox_added: collections.Counter[bytes] = collections.Counter()

        def work() -> list[Result]:
            with self._rows_into(queued):
                return take()

        def take() -> list[Result]:
            results: list[Result] = []
            for item in batch:
                refusal = self._custody_refusal(item) or self._origin_refusal(
                    item, inbox_added, usage
                )
                if refusal is not None:
                    results.append(refusal)
                    continue
                if isinstance(item.decision, Fanout):
                    added = self._fan_out(
                        item.admitted, item.decision, came_from=item.came_from, now=now,
                        usage=usage, named=item.named,
                    )  # fmt: skip
                    if added is None:
                        results.append(DUPLICATE)
                    else:
                        inbox_added[item.admitted.frame.src.raw] += added
                        results.append(ACCEPTED)
                    continue
                if isinstance(item.decision, Forward):
                    outgoing = Outgoing.of(
                        item.admitted.frame,
                        item.admitted.envelope,
                        hops=item.admitted.hops,
                        next_hop=item.decision.next_hop,
                        came_from=item.came_from,
                    )
                    fresh = self._insert_queue(outgoing, now, usage) or self._came_round(
                        outgoing, now, usage
                    )
                    results.append(ACCEPTED if fresh else DUPLICATE)
                    continue
                delivered = self._deliver(item.admitted, now, inbox=not item.seen_only)
                if delivered is None:
                    results.append(DUPLICATE)
                    continue
                inbox_added[item.admitted.frame.src.raw] += delivered
                if item.receipt is not None:
                    self._insert_queue(item.receipt, now, usage)
                results.append(ACCEPTED)
            self._check_quotas(inbox_added, usage)
            return results

        def committed(_: list[Result]) -> None:
            self._inbox_taken(inbox_added)
            self._merge(usage)

        return self._transaction(work, then=committed)

    @contextlib.contextmanager
    def custody(self, neighbour: crypto.NodeId, terms: Custody) -> Iterator[None]:
        """Take frames from ``neighbour`` on ``terms`` within the block (:class:`Custody`).

        A node that requires a ``store`` capability checks the one a neighbour presents
        with its frames request, and takes the request's frames (:meth:`accept`) within
        this. Blocks for one neighbour may overlap (requests in flight at once): the
        latest one's terms hold until it ends. Outside any block a neighbour's frames
        are taken on the plain quotas.
        """
        key = neighbour.raw
        self._custody[key] = (*self._custody.get(key, ()), terms)
        try:
            yield
        finally:
            held = list(self._custody.get(key, ()))
            held.remove(terms)
            if held:
                self._custody[key] = tuple(held)
            else:
                del self._custody[key]

    def _terms(self, neighbour: bytes | None) -> Custody | None:
        held = () if neighbour is None else self._custody.get(neighbour, ())
        return held[-1] if held else None

    def _granted(self) -> dict[bytes, int]:
        """The quotas of the neighbours taken from on a capability with one."""
        granted = {}
        for neighbour, held in list(self._custody.items()):
            quota = held[-1].quota
            if quota is not None:
                granted[neighbour] = quota
        return granted

    def _custody_refusal(self, item: Intake) -> Result | None:
        """A rejection (``forbidden``) if ``item`` would be queued for others and its
        neighbour may not have us do that (:class:`Custody`); else None."""
        terms = self._terms(None if item.came_from is None else item.came_from.raw)
        if terms is None or terms.refused is None:
            return None
        decision = item.decision
        queued = isinstance(decision, Forward) or (
            isinstance(decision, Fanout) and bool(decision.next_hops or decision.held)
        )
        return Result.rejected(Reason.FORBIDDEN, terms.refused) if queued else None

    def _origin_refusal(
        self, item: Intake, inbox_added: collections.Counter[bytes], usage: _Usage
    ) -> Result | None:
        """A rejection (``store-full``) if ``item`` would take its origin past its share
        of the inbox or of the queue; else None.

        Per frame, not for the whole request: the neighbour that carried it drops it and
        tells its origin, while the other origins' frames of the same request are taken.
        An origin over its share cannot push anything more, empty or not (the charge has
        a minimum); a copy of what it pushed before is still a duplicate (so the hop
        before does not tell the origin it was dropped).
        """
        frame = item.admitted.frame
        if frame.kind is crypto.Kind.RCPT:
            return None  # receipts are not charged (see _take_receipt)
        envelope = len(item.admitted.envelope)
        decision = item.decision
        to_inbox = (
            not isinstance(decision, Forward)
            and not item.seen_only
            and (not isinstance(decision, Fanout) or decision.deliver)
        )
        copies = (
            1
            if isinstance(decision, Forward)
            else len(decision.next_hops)
            if isinstance(decision, Fanout)
            else 0
        )
        src = frame.src.raw
        words = None
        if to_inbox:
            charge = stored_charge(envelope + len(frame.body or b""))
            held = self._inbox_origin[src] + inbox_added[src]
            if held + charge > self.max_inbox_bytes_per_origin:
                words = (
                    f"inbox holds {held} bytes from {frame.src.short}, its quota per origin "
                    f"is {self.max_inbox_bytes_per_origin}: no more until some are read"
                )
        if copies:
            charge = copies * stored_charge(envelope)
            held = self._usage.origin.get(src, 0) + usage.origin.get(src, 0)
            if words is None and held + charge > self.quotas.per_origin:
                words = (
                    f"queue holds {held} bytes from {frame.src.short}, its quota per origin "
                    f"is {self.quotas.per_origin}: no more until some are passed on"
                )
        if words is None or self._held(frame):
            return None  # room, or a copy of what was taken (a duplicate, whatever its share)
        return Result.rejected(Reason.STORE_FULL, words)

    def _check_quotas(self, inbox_added: collections.Counter[bytes], usage: _Usage) -> None:
        """Raise :class:`StoreFull` if ``inbox_added`` (bytes charged, by origin) more in
        the inbox or ``usage`` more in the queue would pass a quota (in a transaction:
        rolled back)."""
        added = sum(inbox_added.values())
        if added and self._inbox_bytes + added > self.max_inbox_bytes:
            raise StoreFull(
                f"inbox holds {self._inbox_bytes} bytes; {added} more would pass its quota "
                f"of {self.max_inbox_bytes}; retry later"
            )
        for src, size in inbox_added.items():
            held = self._inbox_origin[src]
            if size > 0 and held + size > self.max_inbox_bytes_per_origin:
                raise StoreFull(
                    f"inbox holds {held} bytes from {crypto.NodeId(src).short}; {size} more "
                    f"would pass its quota per origin of {self.max_inbox_bytes_per_origin}; "
                    "retry later"
                )
        if problem := self._usage.over(self.quotas, usage, self._granted()):
            raise StoreFull(problem)

    def _inbox_taken(self, added: collections.Counter[bytes]) -> None:
        """Count bytes charged (by origin) that a committed transaction put in the inbox."""
        for src, size in added.items():
            if size:
                self._inbox_origin[src] += size
                self._inbox_bytes += size

    def _inbox_freed(self, removed: Iterable[tuple[bytes, int]]) -> None:
        """Count (origin, bytes charged) rows a committed transaction took out of the
        inbox."""
        for src, size in removed:
            self._inbox_bytes -= size
            self._inbox_origin[src] -= size
            if self._inbox_origin[src] <= 0:
                del self._inbox_origin[src]

    def _fan_out(
        self,
        admitted: Admitted,
        decision: Fanout,
        *,
        came_from: crypto.NodeId | None,
        now: int,
        usage: _Usage,
        named: Sequence[str] = (),
    ) -> int | None:
        """Take publication ``admitted``: the seen-set, the inbox if ``decision.deliver``
        (pending for each of the ``named`` subscriptions), a queue copy per next hop.
        Return the bytes charged for the inbox, None if a duplicate.

        A duplicate whose copies name their subscribers (``decision.to``) is still passed
        on toward those: two copies sent for different subscribers may meet here (paths
        of equal length), and the second must not stop its subscribers' way. Copies for
        one next hop naming other subscribers are rows of their own (a row being sent
        must not change under the forwarder).
        """
        frame = admitted.frame
        if frame.kind is not crypto.Kind.PUB:
            raise MeshError(
                f"frame {frame.id.hex()} is a {frame.kind} frame: only pub frames fan out "
                "(a bug in the router: report it)"
            )
        if self._seen(frame):
            # Held copies only for a copy addressed to its subscribers: an unaddressed
            # duplicate's subscribers were seen to when it was first taken.
            hold = bool(admitted.to)
            if any(decision.to) or (hold and decision.held):
                self._queue_copies(
                    admitted, decision, came_from, now, usage, addressed=True, hold=hold
                )
            return None
        added = self._insert_inbox(admitted, now) if decision.deliver else 0
        if added or decision.deliver:
            (seq,) = self._db.execute(
                "SELECT seq FROM inbox WHERE src = ? AND id = ?", (frame.src.raw, frame.id)
            ).fetchone()
            self._db.executemany(
                "INSERT OR IGNORE INTO sub_pending (name, seq) VALUES (?, ?)",
                [(name, seq) for name in named],
            )
        self._queue_copies(admitted, decision, came_from, now, usage)
        return added

    def _queue_copies(
        self,
        admitted: Admitted,
        decision: Fanout,
        came_from: crypto.NodeId | None,
        now: int,
        usage: _Usage,
        *,
        addressed: bool = False,
        hold: bool = True,
    ) -> None:
        """A copy per next hop (with ``addressed``, only those naming subscribers), and
        with ``hold`` one held for each of ``decision.held``."""
        frame = admitted.frame
        taken: set[crypto.NodeId] = set()
        for index, hop in enumerate(decision.next_hops):
            to = decision.subscribers_for(index)
            if hop in taken or (addressed and not to):
                continue  # once per next hop, in order
            taken.add(hop)
            copy = Outgoing.copy_for(
                frame, admitted.envelope, hops=admitted.hops, next_hop=hop, came_from=came_from,
                to=to,
            )  # fmt: skip
            self._insert_queue(copy, now, usage)
        for subscriber in decision.held if hold else ():
            held = Outgoing.held_for(
                frame, admitted.envelope, hops=admitted.hops, subscriber=subscriber,
                came_from=came_from,
            )  # fmt: skip
            self._insert_queue(held, now, usage)

    def _forget(self, removed: Iterable[tuple[bytes, bytes | None, bytes | None, int]]) -> None:
        """Count queue rows (origin, next hop, neighbour, envelope size) a committed
        transaction deleted."""
        for src, hop, came, size in removed:
            self._usage.remove(src, hop, came, stored_charge(size))

    def _merge(self, usage: _Usage) -> None:
        self._usage.merge(usage)

    def _held(self, frame: crypto.Frame) -> bool:
        """Is (origin, id) in the seen-set or the queue already? (Looks only.)"""
        key = (frame.src.raw, frame.id)
        return (
            self._db.execute("SELECT 1 FROM seen WHERE src = ? AND id = ?", key).fetchone()
            is not None
            or self._db.execute(
                # By kind, so that each half reads its own partial index.
                "SELECT 1 FROM queue WHERE src = ? AND id = ? AND kind != 'pub'"
                " UNION ALL SELECT 1 FROM queue WHERE src = ? AND id = ? AND kind = 'pub'"
                " LIMIT 1",
                key + key,
            ).fetchone()
            is not None
        )

    def _seen(self, frame: crypto.Frame) -> bool:
        """Enter (origin, id) in the seen-set; return True if it was there already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO seen (src, id, exp) VALUES (?, ?, ?)",
            (frame.src.raw, frame.id, frame.exp),
        )
        if cursor.rowcount == 0:
            return True
        if self._legacy_seen:
            row = self._db.execute("SELECT 1 FROM seen_v1 WHERE id = ?", (frame.id,)).fetchone()
            return row is not None
        return False

    def _deliver(self, admitted: Admitted, now: int, *, inbox: bool = True) -> int | None:
        """Deliver one frame here; return the bytes charged for the inbox, None if a
        duplicate. ``inbox`` False: only enter it in the seen-set (0 bytes)."""
        frame = admitted.frame
        if frame.kind is crypto.Kind.RCPT:
            return self._take_receipt(frame, now)
        if self._seen(frame):
            return None
        return self._insert_inbox(admitted, now) if inbox else 0

    def _take_receipt(self, frame: crypto.Frame, now: int) -> int | None:
        """A receipt for this node: 0 (it takes no inbox room), None if a duplicate.

        Only receipts about a frame this node sent (and keeps a trace of) are kept, at
        most :data:`MAX_RECEIPTS_PER_FRAME` of them: the others are not even entered in
        the seen-set (no quota counts receipts, so anyone could fill the disk with
        them). Past that number, a receipt still settles the trace, without a row.
        """
        assert frame.ref is not None  # rcpt frames have ref and st
        row = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM receipts WHERE ref = ?) FROM sent WHERE id = ?",
            (frame.ref, frame.ref),
        ).fetchone()
        if row is None:
            return 0
        if row[0] >= MAX_RECEIPTS_PER_FRAME:
            assert frame.st is not None
            self._record_outcome(frame.ref, frame.st, by=frame.src, why=frame.why,
                                 hops=frame.n, when=now)  # fmt: skip
            return 0
        if self._seen(frame):
            return None
        self._apply_receipt(frame, now)
        return 0

    def _insert_inbox(self, admitted: Admitted, now: int) -> int:
        """Put a frame in the inbox; return the bytes it is charged (its envelope and
        body: the row holds both)."""
        frame = admitted.frame
        body = frame.body or b""
        self._db.execute(
            "INSERT INTO inbox (id, src, kind, ts, exp, received, hops, ct, ref, body,"
            " envelope, topic) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                frame.id,
                frame.src.raw,
                str(frame.kind),
                frame.ts,
                frame.exp,
                now,
                admitted.hops,
                frame.ct,
                frame.ref,
                body,
                admitted.envelope,
                frame.topic,
            ),
        )
        return stored_charge(len(admitted.envelope) + len(body))

    def _apply_receipt(self, frame: crypto.Frame, now: int) -> None:
        assert frame.ref is not None  # rcpt frames have ref and st
        assert frame.st is not None
        self._insert_receipt(frame.ref, frame.src, frame.st, frame.why, frame.n, frame.ts, now)
        self._record_outcome(frame.ref, frame.st, by=frame.src, why=frame.why, hops=frame.n,
                             when=now)  # fmt: skip

    def _insert_receipt(
        self,
        ref: bytes,
        by: crypto.NodeId,
        state: str,
        why: str | None,
        hops: int | None,
        ts: int,
        received: int,
    ) -> None:
        # Kept only for a frame this node sent (and keeps a trace of): receipts do not
        # count against the inbox quota, so anyone could fill the disk with the others.
        self._db.execute(
            "INSERT INTO receipts (ref, src, st, why, hops, ts, received)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sent WHERE id = ?)",
            (ref, by.raw, state, why, hops, ts, received, ref),
        )

    def _record_outcome(
        self,
        ref: bytes,
        state: str,
        *,
        by: crypto.NodeId,
        why: str | None,
        hops: int | None,
        when: int,
    ) -> None:
        # A delivery is final; a drop does not overwrite a delivery (a copy may have been
        # dropped on another path after one got through). Only the destination can say
        # it delivered: a relay that knows the id must not pass a drop off as one.
        self._db.execute(
            "UPDATE sent SET state = ?, done_at = ?, by = ?, why = ?, hops = ?"
            " WHERE id = ? AND state != 'delivered' AND (? != 'delivered' OR dst = ?)",
            (state, when, by.raw, why, hops, ref, state, by.raw),
        )

    def _insert_queue(self, outgoing: Outgoing, now: int, usage: _Usage) -> bool:
        row = _queue_row(outgoing, now)
        cursor = self._db.execute(_INSERT_QUEUE, row)
        if cursor.rowcount == 0:
            return False
        usage.add(row[0], row[6], row[7], stored_charge(row[9]))
        if self._new_rows is not None:
            assert cursor.lastrowid is not None  # a row was inserted
            self._new_rows.append(_queued_from(outgoing, cursor.lastrowid, now))
        return True

    def _came_round(self, outgoing: Outgoing, now: int, usage: _Usage) -> bool:
        """Whether ``outgoing``, a frame to forward that is queued here already, came
        back having made more hops than when it was queued (round a loop, or by
        another way); if so, it is queued anew as it arrived now.

        The copy queued here may be on its way to its next hop, whose acceptance
        deletes it. Answered ``duplicate``, the neighbour that brought it back would
        drop its copy too, and once that next hop had passed its copy on (round the
        loop, to where it came back from) no node would hold the frame: seen in a
        300-node mesh, a message went round four nodes back to its origin before the
        first hop's answer, and was lost. Queued anew (a new ``seq``, which that
        answer does not delete), it goes on from here. A retry of the same copy (an
        answer lost on the way back) has made as many hops: a duplicate."""
        row = self._db.execute(
            "DELETE FROM queue WHERE src = ? AND id = ? AND kind != 'pub' AND hops < ?"
            " RETURNING src, next_hop, came_from, size",
            (outgoing.src.raw, outgoing.id, outgoing.hops),
        ).fetchone()
        if row is None:
            return False
        usage.add(row[0], row[1], row[2], -stored_charge(row[3]))
        return self._insert_queue(outgoing, now, usage)

    @contextlib.contextmanager
    def _rows_into(self, queued: list[Queued] | None) -> Iterator[None]:
        """Within the block, the queue rows inserted go to ``queued`` (emptied first: a
        group may run its writes twice)."""
        if queued is None:
            yield
            return
        queued.clear()
        self._new_rows = queued
        try:
            yield
        finally:
            self._new_rows = None

    def _recorded(self, idempotent: Idempotent, now: int) -> Idempotent | None:
        """The record of ``idempotent.key`` if there is one younger than the window."""
        row = self._db.execute(
            "SELECT fingerprint, response FROM idempotency WHERE key = ? AND created > ?",
            (_key_text(idempotent.key), now - IDEMPOTENCY_WINDOW_MS),
        ).fetchone()
        return None if row is None else Idempotent(idempotent.key, row[0], row[1])

    def _record(self, idempotent: Idempotent | None, now: int) -> int:
        """Record ``idempotent`` (replacing an expired record of its key), the oldest
        records going past :data:`MAX_IDEMPOTENCY_KEYS`; return how many are kept."""
        if idempotent is None:
            return self._idempotency_keys
        key = _key_text(idempotent.key)
        kept = self._idempotency_keys + 1
        kept -= self._db.execute("DELETE FROM idempotency WHERE key = ?", (key,)).rowcount
        self._db.execute(
            "INSERT INTO idempotency (key, fingerprint, response, created) VALUES (?, ?, ?, ?)",
            (key, idempotent.fingerprint, idempotent.response, now),
        )
        if kept > MAX_IDEMPOTENCY_KEYS:
            kept -= self._db.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
                " WHERE key != ? ORDER BY created, rowid LIMIT ?)",
                (key, kept - MAX_IDEMPOTENCY_KEYS),
            ).rowcount
        return kept

    def enqueue(
        self,
        frames: Sequence[Outgoing],
        *,
        now: int,
        receipts: Sequence[bool] | None = None,
        idempotent: Idempotent | None = None,
    ) -> Idempotent | None:
        """:meth:`enqueue_write`, run alone."""
        return self.write(
            self.enqueue_write(frames, now=now, receipts=receipts, idempotent=idempotent)
        )

    def enqueue_write(
        self,
        frames: Sequence[Outgoing],
        *,
        now: int,
        receipts: Sequence[bool] | None = None,
        idempotent: Idempotent | None = None,
        queued: list[Queued] | None = None,
    ) -> Write[Idempotent | None]:
        """Take custody of frames this node made (sent, or receipts it issues), in one
        transaction (publications: :meth:`publish`). ``receipts[i]``: frame i asked for
        a delivery receipt (its trace is kept either way for ``msg`` frames). Raises
        :class:`StoreFull` if a quota would be passed (nothing taken).

        With ``idempotent``: if its key is recorded (and younger than
        :data:`IDEMPOTENCY_WINDOW_MS`), nothing is taken and that record is returned;
        else the frames are taken, ``idempotent`` is recorded with them and None is
        returned (also without ``idempotent``).

        With ``queued``: the rows queued go there as :class:`Queued` (see
        :meth:`accept`); read it only once the write succeeded.
        """
        usage = _Usage()
        kept: list[int] = []  # the idempotency keys kept, once recorded

        def work() -> Idempotent | None:
            with self._rows_into(queued):
                return take()

        def take() -> Idempotent | None:
            nonlocal usage
            usage = _Usage()  # afresh: a group may run its writes twice
            if idempotent is not None and (recorded := self._recorded(idempotent, now)):
                return recorded
            for index, outgoing in enumerate(frames):
                if not self._insert_queue(outgoing, now, usage):
                    raise MeshError(f"frame {outgoing.id.hex()} is queued already")
                if outgoing.kind is crypto.Kind.MSG:
                    wants = bool(receipts[index]) if receipts is not None else False
                    self._db.execute(
                        "INSERT OR REPLACE INTO sent (id, dst, kind, created, exp, receipt,"
                        " state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            outgoing.id,
                            outgoing.dst.raw,
                            str(outgoing.kind),
                            now,
                            outgoing.exp,
                            int(wants),
                            "queued",
                        ),
                    )
            if problem := self._usage.over(self.quotas, usage):
                raise StoreFull(problem)
            kept.append(self._record(idempotent, now))
            return None

        def committed(recorded: Idempotent | None) -> None:
            if recorded is None:
                self._idempotency_keys = kept[-1]
                self._merge(usage)

        wants = (False,) * len(frames) if receipts is None else tuple(map(bool, receipts))
        plain = None
        if idempotent is None and len(wants) == len(frames):
            plain = _Enqueue(tuple(frames), wants, now, queued)
        return Write(work, committed, plain)

    def _enqueue_together(self, writes: Sequence[_Enqueue]) -> None:
        """Run plain enqueue writes as one: a statement per table for all their frames.

        Each write's own outcome is None, as if run one by one, or this raises
        :class:`_WriteFailed` (changes made: the group runs again, each write in a
        savepoint, to find out which stand) if a frame is queued already or a quota
        would be passed: then the writes one by one are what decides.
        """
        queue_rows = []
        sent_rows = []
        usage = _Usage()
        for write in writes:
            now = write.now
            for outgoing, wants in zip(write.frames, write.receipts, strict=True):
                row = _queue_row(outgoing, now)
                queue_rows.append(row)
                usage.add(row[0], row[6], row[7], stored_charge(row[9]))
                if outgoing.kind is crypto.Kind.MSG:
                    sent_rows.append(
                        (outgoing.id, outgoing.dst.raw, "msg", now, outgoing.exp, int(wants))
                    )
        if problem := self._usage.over(self.quotas, usage):
            raise _WriteFailed(StoreFull(problem))
        before = self._db.total_changes
        self._db.executemany(_INSERT_QUEUE, queue_rows)
        if self._db.total_changes - before != len(queue_rows):
            raise _WriteFailed(MeshError("a frame in the group is queued already"))
        if any(write.queued is not None for write in writes):
            # Every row was inserted, by one statement: AUTOINCREMENT gave them
            # consecutive seqs, the last one last_insert_rowid().
            ((last,),) = self._db.execute("SELECT last_insert_rowid()").fetchall()
            first = last - len(queue_rows) + 1
            for write in writes:
                if write.queued is not None:
                    write.queued[:] = [
                        _queued_from(outgoing, seq, write.now)
                        for seq, outgoing in enumerate(write.frames, first)
                    ]
                first += len(write.frames)
        self._db.executemany(
            "INSERT OR REPLACE INTO sent (id, dst, kind, created, exp, receipt, state)"
            " VALUES (?, ?, ?, ?, ?, ?, 'queued')",
            sent_rows,
        )
        self._merge(usage)

    def publish(
        self,
        frame: crypto.Frame,
        envelope: bytes,
        *,
        deliver: bool,
        next_hops: Iterable[crypto.NodeId],
        now: int,
        named: Sequence[str] = (),
        to: Sequence[tuple[crypto.NodeId, ...]] = (),
        idempotent: Idempotent | None = None,
    ) -> Idempotent | None:
        """:meth:`publish_write`, run alone."""
        return self.write(
            self.publish_write(
                frame,
                envelope,
                deliver=deliver,
                next_hops=next_hops,
                now=now,
                named=named,
                to=to,
                idempotent=idempotent,
            )
        )

    def publish_write(
        self,
        frame: crypto.Frame,
        envelope: bytes,
        *,
        deliver: bool,
        next_hops: Iterable[crypto.NodeId],
        now: int,
        named: Sequence[str] = (),
        to: Sequence[tuple[crypto.NodeId, ...]] = (),
        held: Sequence[crypto.NodeId] = (),
        idempotent: Idempotent | None = None,
    ) -> Write[Idempotent | None]:
        """Take custody of a publication this node made, in one transaction: enter it
        in the seen-set (a copy coming back is a duplicate), deliver it to our inbox if
        ``deliver`` (a local subscription matches), queue a copy for each of
        ``next_hops``, and hold one for each of ``held`` (subscribers with no way to them
        yet: :meth:`Outgoing.held_for`). No trace is kept (a pub has no one destination,
        and no receipts): :meth:`trace` of its id is None.

        Raises :class:`MeshError` if the frame is not a ``pub`` or was taken already,
        :class:`StoreFull` if a quota would be passed (nothing taken).

        ``idempotent``: as for :meth:`enqueue` (a recorded key: nothing is taken, not
        even checked, and its record is returned; else None).
        """
        hops = list(next_hops)
        usage = _Usage()
        inbox_added: collections.Counter[bytes] = collections.Counter()
        kept: list[int] = []  # the idempotency keys kept, once recorded

        def work() -> Idempotent | None:
            nonlocal usage, inbox_added
            usage, inbox_added = _Usage(), collections.Counter()  # afresh, as above
            if idempotent is not None and (recorded := self._recorded(idempotent, now)):
                return recorded
            added = self._fan_out(
                Admitted(frame, envelope, 0),
                Fanout(deliver, tuple(hops), tuple(to), tuple(held)),
                came_from=None,
                now=now, usage=usage, named=named,
            )  # fmt: skip
            if added is None:
                raise MeshError(
                    f"publication {frame.id.hex()} from {frame.src.short} was taken already: "
                    "publish each frame once (a new frame has a new id)"
                )
            inbox_added[frame.src.raw] += added
            self._check_quotas(inbox_added, usage)
            kept.append(self._record(idempotent, now))
            return None

        def committed(recorded: Idempotent | None) -> None:
            if recorded is None:
                self._idempotency_keys = kept[-1]
                self._inbox_taken(inbox_added)
                self._merge(usage)

        return Write(work, committed)

    # -- forwarding -------------------------------------------------------------------

    def batch(
        self,
        next_hop: crypto.NodeId,
        *,
        now: int,
        limit: int = 100,
        after: int = 0,
        exclude: Collection[crypto.NodeId] = (),
    ) -> list[Queued]:
        """Up to ``limit`` unexpired frames queued for ``next_hop`` with ``seq`` above
        ``after``, oldest first; none from the origins in ``exclude``."""
        skip = [node.raw for node in exclude]
        unless = f" AND src NOT IN ({','.join('?' * len(skip))})" if skip else ""

        def work() -> list[Queued]:
            rows = self._db.execute(
                f"SELECT {_QUEUED_COLUMNS} FROM queue"  # noqa: S608 - fixed columns, ?s
                f" WHERE next_hop = ? AND seq > ? AND exp > ?{unless} ORDER BY seq LIMIT ?",
                (next_hop.raw, after, now, *skip, limit),
            ).fetchall()
            return [self._ids.queued(row) for row in rows]

        return self._read(work)

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete frames by ``seq`` (handed on, or dropped); return how many were there."""
        return len(self.remove_each(seqs))

    def remove_each(self, seqs: Iterable[int]) -> set[int]:
        """:meth:`remove`, in one transaction; return the seqs that were there (the others
        were purged or handed on meanwhile)."""
        seqs = list(seqs)
        if not seqs:
            return set()

        def work() -> list[tuple[int, bytes, bytes | None, bytes | None, int]]:
            removed = []
            for seq in seqs:
                row = self._db.execute(
                    "DELETE FROM queue WHERE seq = ? RETURNING seq, src, next_hop, came_from, size",
                    (seq,),
                ).fetchone()
                if row is not None:
                    removed.append(row)
            return removed

        def forget(rows: list[tuple[int, bytes, bytes | None, bytes | None, int]]) -> None:
            self._forget([row[1:] for row in rows])

        return {row[0] for row in self._transaction(work, then=forget)}

    def forwarded(self, seqs: Iterable[int], *, first_hop: crypto.NodeId, now: int) -> int:
        """Frames handed on to ``first_hop``: delete them, and note the first hop in the
        trace of those this node made. Return how many were still queued.

        Committed without waiting for the disk: if a machine's crash undoes it, the
        frames are sent again, as when the neighbour's answer is lost, and a copy is
        taken once as ever (the destination's seen-set answers ``duplicate``)."""
        seqs = list(seqs)

        def work() -> list[tuple[bytes, bytes | None, bytes | None, int]]:
            removed: list[tuple[bytes, bytes | None, bytes | None, int]] = []
            ours: list[tuple[bytes, int, bytes]] = []
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[start : start + _IN_CHUNK]
                rows = self._db.execute(
                    f"DELETE FROM queue WHERE seq IN ({','.join('?' * len(chunk))})"  # noqa: S608
                    " RETURNING id, src, next_hop, came_from, size,"
                    " came_from IS NULL AND kind != 'pub'",
                    chunk,
                ).fetchall()
                for row in rows:
                    removed.append(row[1:5])
                    if row[5]:
                        ours.append((first_hop.raw, now, row[0]))
            if ours:
                self._db.executemany(
                    "UPDATE sent SET first_hop = ?, first_accepted = ?,"
                    " state = CASE WHEN state IN ('queued', 'held') THEN 'forwarded'"
                    " ELSE state END WHERE id = ? AND first_hop IS NULL",
                    ours,
                )
            return removed

        return len(self._transaction(work, then=self._forget, wait_for_disk=False))

    def record_outcome(
        self,
        ref: bytes,
        state: str,
        *,
        by: crypto.NodeId,
        why: str | None = None,
        hops: int | None = None,
        now: int,
    ) -> None:
        """Note in the trace of our frame ``ref`` that ``by`` delivered or dropped it
        (for a drop seen here, with no receipt frame to carry it)."""
        self.record_outcomes([(ref, why)], state, by=by, hops=hops, now=now)

    def record_outcomes(
        self,
        outcomes: Sequence[tuple[bytes, str | None]],
        state: str,
        *,
        by: crypto.NodeId,
        hops: int | None = None,
        now: int,
    ) -> None:
        """:meth:`record_outcome` for several frames of ours, each ``(ref, why)``, in one
        transaction."""

        def work() -> None:
            for ref, why in outcomes:
                self._insert_receipt(ref, by, state, why, hops, now, now)
                self._record_outcome(ref, state, by=by, why=why, hops=hops, when=now)

        self._transaction(work)

    def reroute(
        self,
        dst: crypto.NodeId,
        next_hop: crypto.NodeId | None,
        *,
        instead: crypto.NodeId | None = None,
    ) -> int:
        """Send every frame queued for ``dst`` to ``next_hop`` (None: hold them); those
        that came from ``next_hop`` go to ``instead`` (None: hold them; ``next_hop``
        itself: back where they came from). Return how many frames changed next hop.
        Copies of publications stay with the next hop they were queued for."""
        hop = _raw(next_hop)
        other = _raw(instead)

        def work() -> tuple[int, _Usage | None]:
            cursor = self._db.execute(
                "UPDATE queue SET next_hop = CASE WHEN came_from IS ? THEN ? ELSE ? END"
                " WHERE dst = ? AND kind != 'pub' AND next_hop IS NOT"
                " (CASE WHEN came_from IS ? THEN ? ELSE ? END)",
                (hop, other, hop, dst.raw, hop, other, hop),
            )
            moved = cursor.rowcount
            if hop is not None:
                # Publication copies held for subscriber dst go its way now, even back
                # where they came from: that node takes them as addressed duplicates
                # and, never sending them straight back, on toward dst.
                moved += self._db.execute(
                    "UPDATE queue SET next_hop = ? WHERE dst = ? AND kind = 'pub'"
                    " AND next_hop IS NULL AND subscribers = ?",
                    (hop, dst.raw, dst.raw),
                ).rowcount
            return moved, self._count() if moved else None

        def committed(result: tuple[int, _Usage | None]) -> None:
            if result[1] is not None:
                self._usage = result[1]

        moved, _ = self._transaction(work, then=committed)
        return moved

    def purge(
        self, next_hop: crypto.NodeId | None, *, by: crypto.NodeId, now: int
    ) -> tuple[int, int]:
        """Delete every frame queued for ``next_hop`` (None: those held with no next
        hop, copies of publications held for a subscriber too), in one transaction;
        return (frames, bytes charged) as :meth:`queues` counted them. The quotas are
        released at once.

        The trace of each of this node's own messages among them says it was dropped
        by ``by`` (this node) because :data:`PURGED`, with a receipt of that, so that
        ``trace`` and a wait for the outcome end. The origins of the others are not
        told: a receipt per frame would refill the very queues being emptied.
        Announces waiting in memory are not the store's and stay.
        """
        hop = _raw(next_hop)
        ours = "SELECT id FROM queue WHERE next_hop IS ? AND came_from IS NULL AND kind != 'pub'"

        def work() -> list[tuple[bytes, bytes | None, int, int]]:
            groups: list[tuple[bytes, bytes | None, int, int]] = self._db.execute(
                f"SELECT src, came_from, COUNT(*), SUM({_QUEUE_CHARGE}) FROM queue"  # noqa: S608
                " WHERE next_hop IS ? GROUP BY src, came_from",
                (hop,),
            ).fetchall()
            if not groups:
                return groups
            self._db.execute(
                "INSERT INTO receipts (ref, src, st, why, hops, ts, received)"  # noqa: S608
                f" SELECT id, ?, 'dropped', ?, NULL, ?, ? FROM sent WHERE id IN ({ours})"
                " AND state != 'delivered'",
                (by.raw, PURGED, now, now, hop),
            )
            self._db.execute(
                "UPDATE sent SET state = 'dropped', done_at = ?, by = ?, why = ?,"  # noqa: S608
                f" hops = NULL WHERE id IN ({ours}) AND state != 'delivered'",
                (now, by.raw, PURGED, hop),
            )
            self._db.execute("DELETE FROM queue WHERE next_hop IS ?", (hop,))
            return groups

        def committed(groups: list[tuple[bytes, bytes | None, int, int]]) -> None:
            for src, came, _, charged in groups:
                self._usage.remove(src, hop, came, charged)

        groups = self._transaction(work, then=committed)
        return sum(group[2] for group in groups), sum(group[3] for group in groups)

    def _count(self) -> _Usage:
        """The queue's bytes charged, counted from the table."""
        usage = _Usage()
        for src, hop, came, size in self._db.execute(
            f"SELECT src, next_hop, came_from, SUM({_QUEUE_CHARGE}) FROM queue"  # noqa: S608
            " GROUP BY src, next_hop, came_from"
        ):
            usage.add(src, hop, came, size)
        return usage

    def held_destinations(self) -> list[crypto.NodeId]:
        """Destinations of frames held with no next hop (for a copy of a publication
        held for a subscriber, that subscriber)."""

        def work() -> list[crypto.NodeId]:
            rows = self._db.execute(
                "SELECT DISTINCT dst FROM queue WHERE next_hop IS NULL"
            ).fetchall()
            return [crypto.NodeId(row[0]) for row in rows]

        return self._read(work)

    def holds(self, dst: crypto.NodeId) -> bool:
        """Whether frames for ``dst`` are held here with no next hop (see
        :meth:`held_destinations`)."""

        def work() -> bool:
            row = self._db.execute(
                "SELECT 1 FROM queue WHERE dst = ? AND next_hop IS NULL LIMIT 1", (dst.raw,)
            ).fetchone()
            return row is not None

        return self._read(work)

    def destinations_via(self, next_hop: crypto.NodeId) -> list[crypto.NodeId]:
        """Destinations of the frames queued for ``next_hop`` (not copies of
        publications: they stay with the next hop they were queued for)."""

        def work() -> list[crypto.NodeId]:
            rows = self._db.execute(
                "SELECT DISTINCT dst FROM queue WHERE next_hop = ? AND kind != 'pub'",
                (next_hop.raw,),
            ).fetchall()
            return [crypto.NodeId(row[0]) for row in rows]

        return self._read(work)

    def queued_destinations(self) -> list[tuple[crypto.NodeId, crypto.NodeId | None]]:
        """(destination, next hop) pairs that have frames queued (copies of publications
        only when held for a subscriber: the others have a next hop, no destination)."""

        def work() -> list[tuple[crypto.NodeId, crypto.NodeId | None]]:
            rows = self._db.execute(
                "SELECT DISTINCT dst, next_hop FROM queue"
                " WHERE kind != 'pub' OR (next_hop IS NULL AND subscribers = dst)"
            ).fetchall()
            return [(crypto.NodeId(row[0]), _node(row[1])) for row in rows]

        return self._read(work)

    def take_expired(self, *, now: int, limit: int = 1000) -> list[Queued]:
        """Delete and return up to ``limit`` queued frames that have expired.

        Asked at every tick, mostly of a queue with nothing expired: a read answers
        that, with no write transaction (a frame that expires meanwhile is taken at
        the next call)."""

        def any_expired() -> bool:
            row = self._db.execute("SELECT 1 FROM queue WHERE exp <= ? LIMIT 1", (now,))
            return row.fetchone() is not None

        if not self._read(any_expired):
            return []

        def work() -> list[Queued]:
            rows = self._db.execute(
                f"DELETE FROM queue WHERE seq IN (SELECT seq FROM queue"  # noqa: S608
                f" WHERE exp <= ? ORDER BY exp LIMIT ?) RETURNING {_QUEUED_COLUMNS}",
                (now, limit),
            ).fetchall()
            return [self._ids.queued(row) for row in rows]

        def committed(expired: list[Queued]) -> None:
            self._forget(
                (item.src.raw, _raw(item.next_hop), _raw(item.came_from), item.size)
                for item in expired
            )

        return self._transaction(work, then=committed)

    def queues(self) -> list[QueueStatistics]:
        """Per next hop (None: held): frames, bytes charged, oldest."""

        def work() -> list[QueueStatistics]:
            rows = self._db.execute(
                f"SELECT next_hop, COUNT(*), SUM({_QUEUE_CHARGE}), MIN(queued)"  # noqa: S608
                " FROM queue GROUP BY next_hop"
            ).fetchall()
            return [QueueStatistics(_node(row[0]), row[1], row[2], row[3]) for row in rows]

        return self._read(work)

    def next_hop_of(self, frame_id: bytes) -> tuple[bool, crypto.NodeId | None]:
        """Whether a frame we made (``msg`` or ``rcpt``) is still queued here, and for
        which next hop. Copies of our publications: :meth:`copies_of`."""

        def work() -> tuple[bool, crypto.NodeId | None]:
            row = self._db.execute(
                "SELECT next_hop FROM queue WHERE id = ? AND came_from IS NULL AND kind != 'pub'",
                (frame_id,),
            ).fetchone()
            return (False, None) if row is None else (True, _node(row[0]))

        return self._read(work)

    def queued_copy(self, origin: crypto.NodeId, frame_id: bytes) -> list[crypto.NodeId | None]:
        """The next hop the message or receipt (``origin``, ``frame_id``) is queued for
        here, whoever made it (None: held, no way on yet); [] if it is not queued here.
        A store keeps one copy of such a frame at most; a publication's: :meth:`copies_of`."""
        return self._next_hops(
            "SELECT next_hop FROM queue WHERE src = ? AND id = ? AND kind != 'pub'",
            (origin.raw, frame_id),
        )

    def copies_of(self, origin: crypto.NodeId, frame_id: bytes) -> list[crypto.NodeId | None]:
        """The next hops that copies of publication (``origin``, ``frame_id``) are still
        queued for, oldest copy first; None for a copy held here with no next hop yet."""
        return self._next_hops(
            "SELECT next_hop FROM queue WHERE src = ? AND id = ? AND kind = 'pub' ORDER BY seq",
            (origin.raw, frame_id),
        )

    def _next_hops(self, query: str, params: tuple[bytes, bytes]) -> list[crypto.NodeId | None]:
        """The next hops ``query`` selects (one column: ``next_hop``), in its order."""

        def work() -> list[crypto.NodeId | None]:
            return [_node(row[0]) for row in self._db.execute(query, params).fetchall()]

        return self._read(work)

    # -- the trace --------------------------------------------------------------------

    def trace(self, frame_id: bytes) -> Trace | None:
        """What is known of frame ``frame_id`` that this node sent, or None (also for
        our publications: no trace is kept of them)."""

        def work() -> Trace | None:
            # One statement for a trace without receipts: the sent row, whether the
            # frame is still queued here and for which next hop (the queue row of a
            # frame this node made has its dst, as it came from this node: no src is
            # needed), and whether there are receipts to read.
            row = self._db.execute(
                "SELECT id, dst, kind, created, exp, receipt, first_hop, first_accepted,"
                " state, done_at, hops, by, why,"
                " EXISTS (SELECT 1 FROM queue WHERE dst = sent.dst AND id = sent.id"
                "  AND came_from IS NULL AND kind != 'pub'),"
                " (SELECT next_hop FROM queue WHERE dst = sent.dst AND id = sent.id"
                "  AND came_from IS NULL AND kind != 'pub'),"
                " EXISTS (SELECT 1 FROM receipts WHERE ref = sent.id)"
                " FROM sent WHERE id = ?",
                (frame_id,),
            ).fetchone()
            if row is None:
                return None
            queued = (row[14],) if row[13] else None
            receipts = (
                self._db.execute(
                    "SELECT src, st, why, hops, ts, received FROM receipts WHERE ref = ?"
                    " ORDER BY received, rowid",
                    (frame_id,),
                ).fetchall()
                if row[15]
                else []
            )
            state = row[8]
            if queued is not None and state in ("queued", "held", "forwarded"):
                state = "queued" if queued[0] is not None else "held"
            return Trace(
                id=row[0],
                dst=crypto.NodeId(row[1]),
                kind=row[2],
                created=row[3],
                exp=row[4],
                receipt=bool(row[5]),
                state=state,
                next_hop=None if queued is None else _node(queued[0]),
                first_hop=_node(row[6]),
                first_accepted=row[7],
                done_at=row[9],
                hops=row[10],
                by=_node(row[11]),
                why=row[12],
                receipts=tuple(
                    Receipt(crypto.NodeId(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in receipts
                ),
            )

        return self._read(work)

    # -- routes and addresses ---------------------------------------------------------

    def save_routes(self, routes: Iterable[Route]) -> None:
        """Replace the saved routing table with ``routes``."""
        rows = {
            row[:2]: row
            for row in (
                (r.dst.raw, r.via.raw, r.ts, r.hops, r.learned, r.expires, r.announce)
                for r in routes
                if r.announce
            )
        }

        def work() -> None:
            self._replace("routes", "dst = ? AND via = ?", self._saved_routes, rows)

        def committed(_: None) -> None:
            self._saved_routes = rows

        self._transaction(work, then=committed)

    def _replace(
        self,
        table: str,
        where_key: str,
        saved: dict[Any, tuple[Any, ...]] | None,
        rows: dict[Any, tuple[Any, ...]],
    ) -> None:
        """Make ``table`` hold ``rows`` (by primary key), knowing it holds ``saved``
        (None: not known): delete the rows gone and write those new or changed."""
        insert = f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
        if saved is None:
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608
            self._db.executemany(insert, rows.values())
            return
        gone = [key for key in saved if key not in rows]
        if gone:
            self._db.executemany(f"DELETE FROM {table} WHERE {where_key}", gone)  # noqa: S608
        changed = [row for key, row in rows.items() if saved.get(key) != row]
        if changed:
            self._db.executemany(insert, changed)

    def load_routes(self, *, now: int) -> list[Route]:
        """The saved routes that have not expired."""

        def work() -> list[Route]:
            rows = self._db.execute(
                "SELECT dst, via, ts, hops, learned, expires, announce FROM routes"
                " WHERE expires > ?",
                (now,),
            ).fetchall()
            return [
                Route(crypto.NodeId(r[0]), crypto.NodeId(r[1]), r[2], r[3], r[4], r[5], r[6])
                for r in rows
            ]

        return self._read(work)

    def save_address(self, address: crypto.SignedAddress) -> bool:
        """Keep a learned address record if it is newer than the one held; return
        whether it was."""
        record = address.record

        def work() -> bool:
            cursor = self._db.execute(
                "INSERT INTO addresses (node, seq, exp, envelope) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, exp = excluded.exp,"
                " envelope = excluded.envelope WHERE excluded.seq > addresses.seq",
                (record.node.raw, record.seq, record.exp, address.envelope),
            )
            return cursor.rowcount > 0

        return self._transaction(work)

    def addresses(self, *, now: int) -> list[crypto.SignedAddress]:
        """Learned address records that have not expired."""

        def work() -> list[bytes]:
            rows = self._db.execute(
                "SELECT envelope FROM addresses WHERE exp > ?", (now,)
            ).fetchall()
            return [row[0] for row in rows]

        return [crypto.SignedAddress.open(envelope, now=now) for envelope in self._read(work)]

    # -- interests and subscriptions --------------------------------------------------

    def save_interests(self, items: Iterable[Interest]) -> None:
        """Replace the saved interests (withdrawn ones too: tombstones) with ``items``."""
        rows = {
            row[:2]: row
            for row in (
                (i.origin.raw, i.pattern, i.ts, i.exp, i.envelope, int(i.withdrawn), i.hops)
                for i in items
            )
        }

        def work() -> None:
            self._replace("interests", "origin = ? AND pattern = ?", self._saved_interests, rows)

        def committed(_: None) -> None:
            self._saved_interests = rows

        self._transaction(work, then=committed)

    def interests(self, *, now: int) -> list[Interest]:
        """The saved interests that have not expired (tombstones too), by origin and
        pattern."""

        def work() -> list[Interest]:
            rows = self._db.execute(
                "SELECT origin, pattern, ts, exp, envelope, withdrawn, hops FROM interests"
                " WHERE exp > ? ORDER BY origin, pattern",
                (now,),
            ).fetchall()
            return [
                Interest(crypto.NodeId(r[0]), r[1], r[2], r[3], r[4], bool(r[5]), r[6])
                for r in rows
            ]

        return self._read(work)

    def save_subscription(
        self, name: str, patterns: Sequence[str], lease_ms: int, *, now: int
    ) -> None:
        """Keep (or replace the patterns and lease of) subscription ``name``; a
        replaced one keeps when it was created. The caller validates the patterns."""
        text = json.dumps(list(patterns))

        def work() -> None:
            self._db.execute(
                "INSERT INTO subscriptions (name, patterns, lease_ms, created)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " patterns = excluded.patterns, lease_ms = excluded.lease_ms",
                (name, text, lease_ms, now),
            )

        self._transaction(work)

    def delete_subscription(self, name: str) -> bool:
        """Forget subscription ``name``; return whether there was one."""

        def work() -> tuple[bool, list[tuple[bytes, int]]]:
            cursor = self._db.execute("DELETE FROM subscriptions WHERE name = ?", (name,))
            pending = self._db.execute(
                "DELETE FROM sub_pending WHERE name = ? RETURNING seq", (name,)
            ).fetchall()
            return cursor.rowcount > 0, self._drop_orphan_publications(s for (s,) in pending)

        def committed(result: tuple[bool, list[tuple[bytes, int]]]) -> None:
            self._inbox_freed(result[1])

        existed, _ = self._transaction(work, then=committed)
        return existed

    def _drop_orphan_publications(self, seqs: Iterable[int]) -> list[tuple[bytes, int]]:
        """Of the inbox publications ``seqs``, delete those no named subscription waits
        for any more; return (origin, bytes charged) of each."""
        freed = []
        for seq in seqs:
            row = self._db.execute(
                "DELETE FROM inbox WHERE seq = ? AND kind = 'pub' AND NOT EXISTS"  # noqa: S608
                " (SELECT 1 FROM sub_pending WHERE sub_pending.seq = ?)"
                f" RETURNING src, {_INBOX_CHARGE}",
                (seq, seq),
            ).fetchone()
            if row is not None:
                freed.append((row[0], row[1]))
        return freed

    def subscription_pending(
        self, name: str, *, after: int = 0, limit: int = 100
    ) -> list[InboxEntry]:
        """Publications pending for subscription ``name`` (not acknowledged by it),
        with ``seq`` above ``after``, in the order they arrived."""

        def work() -> list[Any]:
            return self._db.execute(
                "SELECT inbox.seq, id, src, kind, ts, received, hops, ct, ref, body, topic"
                " FROM sub_pending JOIN inbox ON inbox.seq = sub_pending.seq"
                " WHERE name = ? AND sub_pending.seq > ? ORDER BY sub_pending.seq LIMIT ?",
                (name, after, limit),
            ).fetchall()

        return [self._ids.inbox_entry(row) for row in self._read(work)]

    def ack_subscription(self, name: str, seqs: Iterable[int]) -> int:
        """Subscription ``name`` is done with these publications; return how many were
        pending. A publication no subscription waits for any more leaves the inbox."""
        seqs = list(seqs)

        def work() -> tuple[int, list[tuple[bytes, int]]]:
            acked = [
                seq
                for seq in seqs
                if self._db.execute(
                    "DELETE FROM sub_pending WHERE name = ? AND seq = ?", (name, seq)
                ).rowcount
            ]
            return len(acked), self._drop_orphan_publications(acked)

        def committed(result: tuple[int, list[tuple[bytes, int]]]) -> None:
            self._inbox_freed(result[1])

        acked, _ = self._transaction(work, then=committed)
        return acked

    def subscriptions(self) -> list[SavedSubscription]:
        """This node's named subscriptions, by name."""

        def work() -> list[Any]:
            return self._db.execute(
                "SELECT name, patterns, lease_ms, created FROM subscriptions ORDER BY name"
            ).fetchall()

        return [
            SavedSubscription(row[0], tuple(json.loads(row[1])), row[2], row[3])
            for row in self._read(work)
        ]

    # -- the inbox --------------------------------------------------------------------

    def pending(
        self, *, after: int = 0, limit: int = 100, publications: bool = False
    ) -> list[InboxEntry]:
        """Unacknowledged messages in the inbox with ``seq`` above ``after``, oldest
        first; publications only with ``publications`` (they are reached through their
        subscriptions: :meth:`subscription_pending`)."""

        def work() -> list[Any]:
            return self._db.execute(
                "SELECT seq, id, src, kind, ts, received, hops, ct, ref, body, topic FROM inbox"
                " WHERE seq > ? AND (? OR kind != 'pub') ORDER BY seq LIMIT ?",
                (after, publications, limit),
            ).fetchall()

        return [self._ids.inbox_entry(row) for row in self._read(work)]

    def ack(self, keys: Iterable[tuple[crypto.NodeId, bytes] | bytes]) -> int:
        """Remove acknowledged entries from the inbox (they stay seen); return how many.

        A key is ``(origin, frame id)``; a bare frame id removes that id from every
        origin (only safe when the origins are trusted: prefer the pair).
        """
        keys = list(keys)
        if not keys:
            return 0

        pairs = [value for key in keys if isinstance(key, tuple) for value in (key[0].raw, key[1])]
        bare = [(key,) for key in keys if not isinstance(key, tuple)]

        def work() -> list[tuple[bytes, int]]:
            freed: list[tuple[bytes, int]] = []
            # The pairs a chunk at a time, in one statement each (a statement per key
            # costs about twice as much); the inbox's (src, id) key finds each row.
            for start in range(0, len(pairs), 2 * _IN_CHUNK):
                chunk = pairs[start : start + 2 * _IN_CHUNK]
                values = ",".join(("(?,?)",) * (len(chunk) // 2))
                freed += self._db.execute(
                    "DELETE FROM inbox WHERE seq IN (SELECT inbox.seq FROM"  # noqa: S608
                    f" (VALUES {values}) AS key JOIN inbox"
                    " ON inbox.src = key.column1 AND inbox.id = key.column2)"
                    f" RETURNING src, {_INBOX_CHARGE}",
                    chunk,
                ).fetchall()
            for args in bare:
                freed += self._db.execute(
                    f"DELETE FROM inbox WHERE id = ? RETURNING src, {_INBOX_CHARGE}",  # noqa: S608
                    args,
                ).fetchall()
            return freed

        return len(self._transaction(work, then=self._inbox_freed))

    # -- upkeep -----------------------------------------------------------------------

    def sweep(self, *, now: int) -> int:
        """Forget seen ids of frames expired longer than the grace period ago, traces of
        long-expired frames, expired routes, addresses and interests, idempotency keys
        older than :data:`IDEMPOTENCY_WINDOW_MS`. Return how many seen ids went.

        Ids of frames still in the inbox stay (the inbox's UNIQUE key needs them), so a
        clock that runs fast cannot turn a redelivery into a second copy.
        """

        def work() -> tuple[int, list[tuple[bytes, int]], int]:
            cursor = self._db.execute(
                "DELETE FROM seen WHERE exp < ? AND NOT EXISTS"
                " (SELECT 1 FROM inbox WHERE inbox.src = seen.src AND inbox.id = seen.id)",
                (now - SEEN_GRACE_MS,),
            )
            swept = cursor.rowcount
            swept += self._db.execute(
                "DELETE FROM seen_v1 WHERE exp < ?", (now - SEEN_GRACE_MS,)
            ).rowcount
            old = now - TRACE_KEEP_MS
            self._db.execute(
                "DELETE FROM receipts WHERE ref IN (SELECT id FROM sent WHERE exp < ?)", (old,)
            )
            self._db.execute("DELETE FROM sent WHERE exp < ?", (old,))
            self._db.execute("DELETE FROM routes WHERE expires <= ?", (now,))
            self._db.execute("DELETE FROM addresses WHERE exp <= ?", (now,))
            self._db.execute("DELETE FROM interests WHERE exp <= ?", (now,))
            # Publications waiting for a named subscription are kept until they expire.
            expired = self._db.execute(
                "DELETE FROM inbox WHERE kind = 'pub' AND exp <= ?"  # noqa: S608
                f" RETURNING seq, src, {_INBOX_CHARGE}",
                (now,),
            ).fetchall()
            self._db.executemany(
                "DELETE FROM sub_pending WHERE seq = ?", [(seq,) for seq, _, _ in expired]
            )
            keys = self._db.execute(
                "DELETE FROM idempotency WHERE created <= ?", (now - IDEMPOTENCY_WINDOW_MS,)
            ).rowcount
            return swept, [(src, size) for _, src, size in expired], keys

        def committed(result: tuple[int, list[tuple[bytes, int]], int]) -> None:
            self._inbox_freed(result[1])
            self._idempotency_keys -= result[2]
            # As the DELETEs above: expired routes and interests are gone.
            if self._saved_routes is not None:
                self._saved_routes = {
                    key: row for key, row in self._saved_routes.items() if row[5] > now
                }
            if self._saved_interests is not None:
                self._saved_interests = {
                    key: row for key, row in self._saved_interests.items() if row[3] > now
                }

        swept, _, _ = self._transaction(work, then=committed)
        if self._legacy_seen:
            (left,) = self._read(
                lambda: self._db.execute("SELECT COUNT(*) FROM seen_v1").fetchone()
            )
            self._legacy_seen = left > 0
        return swept

    def statistics(self) -> StoreStatistics:
        def work() -> StoreStatistics:
            (inbox,) = self._db.execute("SELECT COUNT(*) FROM inbox").fetchone()
            (seen,) = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
            (queued,) = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()
            return StoreStatistics(
                inbox_frames=inbox,
                inbox_bytes=self._inbox_bytes,
                seen_ids=seen,
                queued_frames=queued,
                queued_bytes=self._usage.total,
            )

        return self._read(work)
