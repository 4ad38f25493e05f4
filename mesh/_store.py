"""The node's durable store: SQLite in WAL mode.

Two tables matter now:

* ``seen``: the id of every frame this node has taken responsibility for, kept until
  the frame expires (after that the frame itself is refused as expired, so a replay can
  never be taken twice). Redelivery finds its id here and is answered "duplicate".
* ``inbox``: frames addressed to this node that the application has not acknowledged.

"Accepted" means committed: :meth:`Store.accept` writes a whole batch in one
transaction (``synchronous=FULL``: the commit is on disk when it returns), so a node
killed right after answering loses nothing it acknowledged, and one commit serves a
batch (DESIGN.md §8: commit per batch, not per frame).

The methods block; the runtime calls them through ``trio.to_thread``. A lock inside
makes one store safe to use from any thread. No clock is read: ``now`` is passed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import crypto
from mesh._errors import MeshError, StoreFull
from mesh._intake import Admitted
from mesh._wire import ACCEPTED, DUPLICATE, Result

__all__ = ["DEFAULT_MAX_INBOX_BYTES", "InboxEntry", "Store", "StoreStatistics"]

#: Inbox quota: past it, senders are told to retry later (429) rather than fill the disk.
DEFAULT_MAX_INBOX_BYTES: Final = 256 * 1024 * 1024
#: How long the seen-set keeps an id past the frame's expiry: covers clock skew.
SEEN_GRACE_MS: Final = 10 * 60 * 1000
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
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


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received frame waiting for the application to acknowledge it."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatistics:
    inbox_frames: int
    inbox_bytes: int
    seen_ids: int


def _translate(exc: sqlite3.Error, path: str) -> MeshError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "full" in text:
        return StoreFull(f"store {path} is out of disk space: {text}")
    return MeshError(f"store {path} failed: {text}")


class Store:
    """One node's SQLite store. Use :meth:`close` (or ``with``) when done."""

    def __init__(self, path: Path | str, *, max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES):
        self.path = str(path)
        self.max_inbox_bytes = max_inbox_bytes
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                raise MeshError(
                    f"store {self.path} has schema {row[0]}; this ptth reads {_SCHEMA_VERSION}"
                )
            (self._inbox_bytes,) = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM inbox"
            ).fetchone()
        except sqlite3.Error as exc:
            self._db.close()
            raise _translate(exc, self.path) from exc
        except MeshError:
            self._db.close()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            self._db.close()

    def accept(self, batch: Sequence[Admitted], *, now: int) -> list[Result]:
        """Take responsibility for ``batch`` in one transaction; a result per frame.

        A frame whose id is in the seen-set (from before, or earlier in this batch) is
        a duplicate and is not stored again. Raises :class:`StoreFull` (nothing taken)
        if the new frames would put the inbox over its quota or the disk is full.
        """
        with self._lock:
            try:
                return self._accept(batch, now)
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path) from exc
            except BaseException:
                self._rollback()  # e.g. a value SQLite cannot bind: never leave it open
                raise

    def _rollback(self) -> None:
        # SQLite may have rolled back already (it does on SQLITE_FULL); a closed
        # connection has nothing to roll back, and asking it raises ProgrammingError.
        with contextlib.suppress(sqlite3.ProgrammingError):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _accept(self, batch: Sequence[Admitted], now: int) -> list[Result]:
        results: list[Result] = []
        added = 0
        self._db.execute("BEGIN IMMEDIATE")
        for item in batch:
            frame = item.frame
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO seen (id, exp) VALUES (?, ?)", (frame.id, frame.exp)
            )
            if cursor.rowcount == 0:
                results.append(DUPLICATE)
                continue
            body = frame.body or b""
            added += len(body)
            self._db.execute(
                "INSERT INTO inbox (id, src, kind, ts, exp, received, hops, ct, ref, body,"
                " envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    frame.id,
                    frame.src.raw,
                    str(frame.kind),
                    frame.ts,
                    frame.exp,
                    now,
                    item.hops,
                    frame.ct,
                    frame.ref,
                    body,
                    item.envelope,
                ),
            )
            results.append(ACCEPTED)
        if added and self._inbox_bytes + added > self.max_inbox_bytes:
            self._db.execute("ROLLBACK")
            raise StoreFull(
                f"inbox holds {self._inbox_bytes} bytes; {added} more would pass its quota "
                f"of {self.max_inbox_bytes}"
            )
        self._db.execute("COMMIT")
        self._inbox_bytes += added
        return results

    def pending(self, *, after: int = 0, limit: int = 100) -> list[InboxEntry]:
        """Unacknowledged inbox entries with ``seq`` above ``after``, oldest first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, id, src, kind, ts, received, hops, ct, ref, body FROM inbox"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc
        return [
            InboxEntry(
                seq=row[0],
                id=row[1],
                src=crypto.NodeId(row[2]),
                kind=crypto.Kind(row[3]),
                ts=row[4],
                received=row[5],
                hops=row[6],
                ct=row[7],
                ref=row[8],
                body=row[9],
            )
            for row in rows
        ]

    def ack(self, ids: Iterable[bytes]) -> int:
        """Remove acknowledged entries from the inbox (their ids stay seen); return how many."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                freed = removed = 0
                for frame_id in ids:
                    row = self._db.execute(
                        "DELETE FROM inbox WHERE id = ? RETURNING LENGTH(body)", (frame_id,)
                    ).fetchone()
                    if row is not None:
                        removed += 1
                        freed += row[0]
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path) from exc
            except BaseException:
                self._rollback()
                raise
            self._inbox_bytes -= freed
            return removed

    def sweep(self, *, now: int) -> int:
        """Forget seen ids of frames expired longer than the grace period ago.

        Ids of frames still in the inbox stay (the inbox's UNIQUE id needs them), so a
        clock that runs fast cannot turn a redelivery into a second copy.
        """
        with self._lock:
            try:
                cursor = self._db.execute(
                    "DELETE FROM seen WHERE exp < ? AND id NOT IN (SELECT id FROM inbox)",
                    (now - SEEN_GRACE_MS,),
                )
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc
            return cursor.rowcount

    def statistics(self) -> StoreStatistics:
        with self._lock:
            try:
                (inbox,) = self._db.execute("SELECT COUNT(*) FROM inbox").fetchone()
                (seen,) = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc
        return StoreStatistics(inbox_frames=inbox, inbox_bytes=self._inbox_bytes, seen_ids=seen)
