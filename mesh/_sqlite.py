"""Opening a node's store file: the connection settings both of its users share.

A node's store (``store.sqlite3``) is opened by :class:`mesh.Store` and by
:class:`mesh.CapabilityBook`. Both open it the same way: write-ahead log, autocommit
(each caller runs its own ``BEGIN``), usable from the thread that owns the store.

``lean`` trades some speed for memory, for simulations that run thousands of nodes in
one process (``NodeConfig.store_lean``). Measured on the ``mesh`` scenario, 100 nodes,
in-memory stores: SQLite's own memory fell from 466 to 205 KiB a node. Where it went:

* prepared statements: Python's ``sqlite3`` keeps the last 128 of each connection
  prepared, several KiB each (184 KiB a node). A lean store keeps
  :data:`LEAN_STATEMENTS`, as many as its hot path uses, and prepares the others again
  when they come; a lean capability book (``statements=0``) keeps none, since its
  statements are rare. The cache drops the least recently used, so one fewer than a
  hot path's cycle of statements is as bad as none: a message through ``star`` runs
  about a dozen. Measured 2026-12-06 (``star``, 50 nodes, engine, stand-in signatures;
  ``mesh``, 300 nodes, 10 virtual minutes, tree radius 2, seed 0; the same reports): 8
  for both connections gave 660-692 messages a wall second on ``star`` and peaked at
  326 MB on ``mesh``; 12 and none gave 735-889 and 325 MB (10: as slow as 8; 16 and 16:
  892-906, 343 MB);
* empty pages: every table and index is a b-tree of at least one page, and a store has
  27 of them; a new lean store uses 1 KiB pages instead of 4 KiB (77 KiB a node);
* the page cache (of a store on disk; an in-memory store *is* its pages): SQLite keeps
  up to 2 MiB of a file's pages, lean :data:`LEAN_CACHE_KIB`; the operating system
  caches the file as well;
* the write-ahead log (on disk): checkpointed every :data:`LEAN_WAL_PAGES` pages instead
  of 1,000, and cut back to that after each checkpoint instead of keeping its largest
  size (4 MiB).

None of this changes what is stored or when it is durable.

A store that is not lean (a real node's) keeps up to :data:`CACHE_KIB` of its pages
in SQLite's cache instead of SQLite's 2 MiB: the trace of what a node sent and its queue
are keyed by frame ids, which are random, so each new row lands on a page of its own
and, once the tables outgrow the cache, every write reads one first. Measured
(``benchmarks/versus.py``, ``ptth-api``, 60,000 messages a round, three interleaved
pairs): 4,601, 4,585 and 4,482 messages/s with 2 MiB, 4,717, 4,909 and 4,997 with
32 MiB; the sending node's system time (its page reads) fell from 0.31 to 0.21 of a
core. The cache grows as pages are read, up to that size, per connection.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

__all__ = [
    "CACHE_KIB",
    "LEAN_CACHE_KIB",
    "LEAN_PAGE_SIZE",
    "LEAN_STATEMENTS",
    "LEAN_WAL_PAGES",
    "connect",
]

#: The page cache of a store that is not lean, in KiB (SQLite's default: 2,000).
CACHE_KIB: Final = 32 * 1024

#: Prepared statements kept per connection by a lean store (Python's default: 128).
LEAN_STATEMENTS: Final = 12
#: The page size of a store created lean (SQLite's default: 4,096 bytes).
LEAN_PAGE_SIZE: Final = 1024
#: A lean store's page cache, in KiB (SQLite's default: 2,000).
LEAN_CACHE_KIB: Final = 64
#: A lean store's write-ahead log is checkpointed at this many pages (default 1,000),
#: and cut back to this size after each checkpoint.
LEAN_WAL_PAGES: Final = 64

#: How long a connection waits for another's lock before SQLite says it is busy.
_BUSY_TIMEOUT_S: Final = 10.0


def connect(
    path: Path | str, *, uri: bool = False, lean: bool = False, statements: int | None = None
) -> sqlite3.Connection:
    """Open the store at ``path`` (an SQLite URI if ``uri``) in WAL mode, autocommit,
    keeping ``statements`` prepared (None: :data:`LEAN_STATEMENTS` if ``lean``, else
    Python's 128).

    Raises :class:`sqlite3.Error` (the caller says which store it was).
    """
    if statements is None:
        statements = LEAN_STATEMENTS if lean else 128
    db = sqlite3.connect(
        path,
        check_same_thread=False,
        isolation_level=None,
        timeout=_BUSY_TIMEOUT_S,
        uri=uri,
        cached_statements=statements,
    )
    try:
        if lean:
            # Only a database with no table yet takes a new page size: an existing
            # store keeps its own, silently.
            db.execute(f"PRAGMA page_size={LEAN_PAGE_SIZE}")
        db.execute(f"PRAGMA cache_size=-{LEAN_CACHE_KIB if lean else CACHE_KIB}")
        db.execute("PRAGMA journal_mode=WAL")
        if lean:
            db.execute(f"PRAGMA wal_autocheckpoint={LEAN_WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={LEAN_WAL_PAGES * LEAN_PAGE_SIZE}")
    except BaseException:
        db.close()
        raise
    return db
