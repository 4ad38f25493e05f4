"""What a node keeps about capabilities: the ones it granted, the revocations it knows
and the capability URLs it minted.

Three tables in the node's store file (``store.sqlite3``, beside :class:`mesh.Store`'s),
versioned by their own ``meta`` key (``capabilities``, schema 1), so that this module
and the store migrate independently:

* ``cap_grants``: every capability this node signed (``ptth cap grant`` and ``ptth cap
  delegate``), its id, when, and its envelope (the whole chain);
* ``cap_revocations``: signed revocations, at most one per (capability id, signer),
  with their envelopes. They survive restarts; a verifier loads them as a
  :class:`crypto.RevocationSet`;
* ``cap_urls``: the capability URLs (``/c/<secret>``) minted for this node's objects:
  an id, the object, when, when revoked, and a SHA-256 digest of the secret (the
  secret itself is not kept: a copy of the file opens no object). Added to schema 1
  later as a table of its own, created where it is missing: a ptth from before ignores
  it, so the version stays.

State only: nothing here propagates revocations over the mesh or enforces anything
(that comes with the enforcement points). The methods block; a lock makes one book
safe from any thread. No clock is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import crypto
from mesh import _sqlite
from mesh._errors import MeshError

__all__ = ["CAPABILITY_SCHEMA_VERSION", "MAX_CAP_URLS", "CapUrlRecord", "CapabilityBook", "Grant"]

CAPABILITY_SCHEMA_VERSION: Final = 1
#: Most revocations kept: a bound on what others' revocations can make a node store
#: (each is a ~150-byte row). Past it, new ones are refused.
MAX_REVOCATIONS: Final = 100_000
#: Most capability URLs kept (revoked ones included, until forgotten): past it, no more
#: are minted.
MAX_CAP_URLS: Final = 10_000
_META_KEY: Final = "capabilities"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cap_grants (
    id BLOB PRIMARY KEY,
    issued INTEGER NOT NULL,
    envelope BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cap_revocations (
    id BLOB NOT NULL,
    signer BLOB NOT NULL,
    ts INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (id, signer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cap_urls (
    id TEXT PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    object TEXT NOT NULL,
    created INTEGER NOT NULL,
    revoked INTEGER
);
"""
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A capability this node signed, and whether a revocation of it is held."""

    capability: crypto.Capability
    revoked: crypto.Revocation | None


@dataclasses.dataclass(frozen=True, slots=True)
class CapUrlRecord:
    """A capability URL minted here: its id, its object, when (ms) and when revoked."""

    id: str
    object: str
    created: int
    revoked: int | None = None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class CapabilityBook:
    """The capability tables of one store file. Raises :class:`MeshError` for a file
    that cannot be opened or was written by a newer ptth. ``uri``: ``path`` is an SQLite
    URI, and ``lean`` SQLite's memory kept small, as for :class:`Store`."""

    def __init__(self, path: Path | str, *, uri: bool = False, lean: bool = False) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            # Lean: no statement kept prepared (mesh/_sqlite.py says why).
            statements = 0 if lean else None
            self._db = _sqlite.connect(self.path, uri=uri, lean=lean, statements=statements)
        except sqlite3.Error as exc:
            raise MeshError(f"cannot open store {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise MeshError(f"cannot use store {self.path}: {exc}") from exc
        except MeshError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            row = db.execute("SELECT value FROM meta WHERE key = ?", (_META_KEY,)).fetchone()
            if row is not None and row[0] != CAPABILITY_SCHEMA_VERSION:
                raise MeshError(
                    f"store {self.path} has capability schema {row[0]}; this ptth reads "
                    f"{CAPABILITY_SCHEMA_VERSION} (a newer ptth wrote it)"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (_META_KEY, CAPABILITY_SCHEMA_VERSION)
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def __enter__(self) -> CapabilityBook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            self._db.close()

    def _run(self, work: Callable[[], _T], *, write: bool = False) -> _T:
        with self._lock:
            try:
                if not write:
                    return work()
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work()
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                raise MeshError(f"store {self.path}: {exc}") from exc

    def record_grant(self, capability: crypto.Capability) -> None:
        """Keep a capability this node signed (again: no change)."""
        self._run(
            lambda: self._db.execute(
                "INSERT OR IGNORE INTO cap_grants VALUES (?, ?, ?)",
                (capability.id, capability.issued, capability.envelope),
            ),
            write=True,
        )

    def grant(self, cap_id: bytes) -> crypto.Capability | None:
        """The capability with this id this node signed, if any."""
        row = self._run(
            lambda: self._db.execute(
                "SELECT envelope FROM cap_grants WHERE id = ?", (cap_id,)
            ).fetchone()
        )
        return None if row is None else crypto.Capability.open(row[0])

    def grants(self) -> list[Grant]:
        """What this node signed, oldest first, each with its revocation if held."""
        rows = self._run(
            lambda: self._db.execute(
                "SELECT envelope FROM cap_grants ORDER BY issued, id"
            ).fetchall()
        )
        revoked = self.revocations()
        return [
            Grant(capability, revoked.revoking(capability))
            for capability in (crypto.Capability.open(row[0]) for row in rows)
        ]

    def add_revocation(self, revocation: crypto.Revocation) -> bool:
        """Keep a verified revocation; False if one by the same signer was held.

        Raises :class:`MeshError` past :data:`MAX_REVOCATIONS`.
        """

        def work() -> bool:
            (count,) = self._db.execute("SELECT COUNT(*) FROM cap_revocations").fetchone()
            if count >= MAX_REVOCATIONS:
                raise MeshError(f"store holds {count} revocations already, the limit")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO cap_revocations VALUES (?, ?, ?, ?)",
                (revocation.cap_id, revocation.signer.raw, revocation.ts, revocation.envelope),
            )
            return cursor.rowcount > 0

        return self._run(work, write=True)

    def revocations(self) -> crypto.RevocationSet:
        """Every revocation held (each verified again as it is read)."""
        return crypto.RevocationSet(self.revocation_list())

    def revocation_list(self) -> list[crypto.Revocation]:
        """Every revocation held, oldest first."""
        rows = self._run(
            lambda: self._db.execute(
                "SELECT envelope FROM cap_revocations ORDER BY ts, id"
            ).fetchall()
        )
        return [crypto.Revocation.open(row[0]) for row in rows]

    # -- capability URLs ------------------------------------------------------------------

    def add_url(self, url_id: str, secret: str, name: str, *, now: int) -> None:
        """Keep capability URL ``url_id`` (its ``secret``'s digest) for object ``name``.

        Raises :class:`MeshError` past :data:`MAX_CAP_URLS`, or for an id or secret
        held already.
        """

        def work() -> None:
            (count,) = self._db.execute("SELECT COUNT(*) FROM cap_urls").fetchone()
            if count >= MAX_CAP_URLS:
                raise MeshError(
                    f"store holds {count} capability URLs already, the limit: revoke and "
                    "forget some first"
                )
            try:
                self._db.execute(
                    "INSERT INTO cap_urls (id, digest, object, created) VALUES (?, ?, ?, ?)",
                    (url_id, _digest(secret), name, now),
                )
            except sqlite3.IntegrityError as exc:
                raise MeshError(f"capability URL {url_id} is held already") from exc

        self._run(work, write=True)

    def url(self, secret: str) -> CapUrlRecord | None:
        """The capability URL with this secret, if held and not revoked."""
        row = self._run(
            lambda: self._db.execute(
                "SELECT id, object, created FROM cap_urls WHERE digest = ? AND revoked IS NULL",
                (_digest(secret),),
            ).fetchone()
        )
        return None if row is None else CapUrlRecord(row[0], row[1], row[2])

    def urls(self) -> list[CapUrlRecord]:
        """Every capability URL held (revoked ones too), oldest first."""
        rows = self._run(
            lambda: self._db.execute(
                "SELECT id, object, created, revoked FROM cap_urls ORDER BY created, id"
            ).fetchall()
        )
        return [CapUrlRecord(*row) for row in rows]

    def revoke_url(self, url_id: str, *, now: int) -> bool:
        """Revoke capability URL ``url_id``; False if none such is held unrevoked."""
        cursor = self._run(
            lambda: self._db.execute(
                "UPDATE cap_urls SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, url_id)
            ),
            write=True,
        )
        return cursor.rowcount > 0

    def revoke_urls_of(self, name: str, *, now: int) -> int:
        """Revoke every capability URL of object ``name``; return how many."""
        cursor = self._run(
            lambda: self._db.execute(
                "UPDATE cap_urls SET revoked = ? WHERE object = ? AND revoked IS NULL",
                (now, name),
            ),
            write=True,
        )
        return int(cursor.rowcount)
