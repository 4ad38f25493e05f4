"""The capability tables (mesh._capabilities): grants and revocations in the store file,
beside mesh.Store's tables, surviving a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import crypto
import mesh
from mesh._capabilities import MAX_REVOCATIONS

NOW = 1_700_000_000_000
OWNER = crypto.Identity(bytes(range(32)))
OTHER = crypto.Identity(bytes([7]) * 32)


def granted(number: int) -> crypto.Capability:
    return crypto.grant(
        OWNER,
        crypto.Target.topic(OWNER.node_id, "news.#"),
        ["publish"],
        subject=None,
        now=NOW + number,
        cap_id=number.to_bytes(16, "big"),
    )


def test_grants_and_revocations_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    first, second = granted(1), granted(2)
    with mesh.CapabilityBook(path) as book:
        book.record_grant(second)
        book.record_grant(first)
        book.record_grant(first)  # again: no change
        assert book.add_revocation(crypto.Revocation.sign(OWNER, first.id, now=NOW))
        assert not book.add_revocation(crypto.Revocation.sign(OWNER, first.id, now=NOW + 1))
        assert book.add_revocation(crypto.Revocation.sign(OTHER, first.id, now=NOW))
    with mesh.CapabilityBook(path) as book:
        grants = book.grants()
        assert [g.capability for g in grants] == [first, second]  # oldest first
        assert grants[0].revoked is not None
        assert grants[0].revoked.signer == OWNER.node_id
        assert grants[1].revoked is None
        assert book.grant(first.id) == first
        assert book.grant(b"\x00" * 16) is None
        assert len(book.revocation_list()) == 2
        revoked = book.revocations()
        assert revoked.revoking(first) is not None
        assert revoked.revoking(second) is None


def test_the_tables_live_beside_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with mesh.Store(path):
        pass
    with mesh.CapabilityBook(path) as book:
        book.record_grant(granted(1))
    with mesh.Store(path) as store:  # the store opens a file with the extra tables
        assert store.statistics().inbox_frames == 0
    with mesh.CapabilityBook(path) as book:
        assert len(book.grants()) == 1


def test_the_store_opens_a_file_the_book_made(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with mesh.CapabilityBook(path) as book:
        book.add_revocation(crypto.Revocation.sign(OWNER, b"\x01" * 16, now=NOW))
    with mesh.Store(path) as store:
        assert store.statistics().queued_frames == 0
    with mesh.CapabilityBook(path) as book:
        assert len(book.revocation_list()) == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    mesh.CapabilityBook(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 2 WHERE key = 'capabilities'")
    db.close()
    with pytest.raises(mesh.MeshError, match="capability schema 2"):
        mesh.CapabilityBook(path)


def test_an_unusable_file_is_a_mesh_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(mesh.MeshError, match=r"store .*: file is not a database"):
        mesh.CapabilityBook(path)


def test_revocations_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mesh._capabilities.MAX_REVOCATIONS", 2)
    with mesh.CapabilityBook(tmp_path / "s.sqlite3") as book:
        for number in range(2):
            book.add_revocation(crypto.Revocation.sign(OWNER, bytes([number]) * 16, now=NOW))
        with pytest.raises(mesh.MeshError, match="the limit"):
            book.add_revocation(crypto.Revocation.sign(OWNER, b"\x09" * 16, now=NOW))
    assert MAX_REVOCATIONS > 2
