"""Lean stores (``Store(lean=True)``, mesh/_sqlite.py): SQLite's memory kept small for
simulations of many nodes, with the same contents and the same durability."""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import mesh
from mesh import Store
from mesh._sqlite import CACHE_KIB, LEAN_CACHE_KIB, LEAN_PAGE_SIZE, LEAN_WAL_PAGES
from tests.mesh.test_store import CAROL, NOW, frame_id, inbound, outcomes


def pragmas(db: sqlite3.Connection) -> dict[str, int]:
    names = ("page_size", "cache_size", "wal_autocheckpoint", "journal_size_limit")
    return {name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


def test_a_lean_store_keeps_its_pages_cache_and_log_small(tmp_path: Path) -> None:
    with Store(tmp_path / "lean.sqlite3", lean=True) as lean:
        assert pragmas(lean._db) == {
            "page_size": LEAN_PAGE_SIZE,
            "cache_size": -LEAN_CACHE_KIB,
            "wal_autocheckpoint": LEAN_WAL_PAGES,
            "journal_size_limit": LEAN_WAL_PAGES * LEAN_PAGE_SIZE,
        }
        assert lean._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with Store(tmp_path / "plain.sqlite3") as plain:  # SQLite's defaults, a bigger cache
        assert pragmas(plain._db) == {
            "page_size": 4096,
            "cache_size": -CACHE_KIB,
            "wal_autocheckpoint": 1000,
            "journal_size_limit": -1,
        }


def test_a_lean_store_holds_and_refuses_what_a_plain_one_does(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path, lean=True) as store:
        assert outcomes(store.accept([inbound(1), inbound(2)], now=NOW)) == [
            "accepted",
            "accepted",
        ]
        assert outcomes(store.accept([inbound(2), inbound(3)], now=NOW)) == [
            "duplicate",
            "accepted",
        ]
    with Store(path, lean=True) as store:  # reopened: all there, the seen-set too
        assert [e.id for e in store.pending()] == [frame_id(1), frame_id(2), frame_id(3)]
        assert outcomes(store.accept([inbound(3)], now=NOW)) == ["duplicate"]


def test_an_existing_store_opened_lean_keeps_its_page_size_and_contents(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        store.accept([inbound(1)], now=NOW)
    with Store(path, lean=True) as store:
        assert pragmas(store._db)["page_size"] == 4096
        assert pragmas(store._db)["cache_size"] == -LEAN_CACHE_KIB
        assert [e.id for e in store.pending()] == [frame_id(1)]
    with mesh.CapabilityBook(path, lean=True) as book:
        assert pragmas(book._db)["page_size"] == 4096


def test_a_lean_in_memory_store_is_lean_too(tmp_path: Path) -> None:
    uri = f"file:{tmp_path / 'memory-store'}?mode=memory&cache=shared"
    keeper = sqlite3.connect(uri, uri=True)  # as a simulation holds it open
    try:
        with Store(uri, uri=True, lean=True) as store:
            assert pragmas(store._db)["page_size"] == LEAN_PAGE_SIZE
            store.accept([inbound(1)], now=NOW)
        with Store(uri, uri=True, lean=True) as store:
            assert [e.id for e in store.pending()] == [frame_id(1)]
    finally:
        keeper.close()


def _sqlite_memory_used() -> Callable[[], int]:
    """SQLite's heap in this process (``sqlite3_memory_used``), from the library the
    ``sqlite3`` module is linked with; skips where that cannot be reached."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("no shared libsqlite3 to ask for its memory (sqlite3 linked statically?)")
    lib = ctypes.CDLL(name)
    used = lib.sqlite3_memory_used
    used.restype = ctypes.c_int64
    before = used()
    probe = sqlite3.connect(":memory:")
    probe.execute("CREATE TABLE t (x)")
    if used() <= before:  # another copy of SQLite than the module's
        probe.close()
        pytest.skip("the shared libsqlite3 is not the one the sqlite3 module uses")
    probe.close()
    return lambda: int(used())


def test_lean_stores_take_less_of_sqlites_memory(tmp_path: Path) -> None:
    used = _sqlite_memory_used()

    def cost(lean: bool) -> int:
        kept = []
        start = used()
        for n in range(8):
            uri = f"file:{tmp_path / f'{lean}-{n}'}?mode=memory&cache=shared"
            keeper = sqlite3.connect(uri, uri=True)
            store = Store(uri, uri=True, lean=lean)
            for i in range(1, 4):  # the statements of a store's day
                store.accept([inbound(i)], now=NOW)
                store.pending(after=i)
                store.batch(CAROL.node_id, now=NOW)
                store.queues()
                store.held_destinations()
                store.queued_destinations()
                store.take_expired(now=NOW)
                store.trace(frame_id(i))
                store.load_routes(now=NOW)
                store.interests(now=NOW)
            kept.append((keeper, store))
        grown = used() - start
        for keeper, store in kept:
            store.close()
            keeper.close()
        return grown // 8

    plain, lean = cost(False), cost(True)
    assert lean < plain * 0.75, (lean, plain)
