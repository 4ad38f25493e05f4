"""The peer book (node._datadir.PeerBook): verified address records, one file each,
read again only when a file changes (the mesh walks them at every tick)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import crypto
from node._datadir import PeerBook

T0 = 1_700_000_000_000


def address(identity: crypto.Identity, seq: int = 1) -> crypto.SignedAddress:
    return crypto.sign_address(
        identity, seq=seq, endpoints=(f"http://{identity.node_id.short}.example/",), exp=T0 * 2
    )


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = crypto.parse_token

    def counted(token: str, *, now: int) -> crypto.SignedAddress:
        calls[0] += 1
        return real(token, now=now)

    monkeypatch.setattr(crypto, "parse_token", counted)
    return calls


def test_walking_the_book_reads_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = PeerBook(tmp_path / "peers")
    alice, bob = crypto.Identity.generate(), crypto.Identity.generate()
    book.add(address(alice), now=T0)
    book.add(address(bob), now=T0)
    calls = count_parses(monkeypatch)
    first = list(book)
    assert sorted(a.node for a in first) == sorted([alice.node_id, bob.node_id])
    assert [a.node.text for a in first] == sorted(a.node.text for a in first)  # by file name
    reads = calls[0]
    assert list(book) == first
    assert calls[0] == reads  # unchanged: neither read nor verified again
    # Bob's record replaced (as `ptth peer add` with a newer token): read again.
    newer = address(bob, seq=2)
    book.add(newer, now=T0)
    assert {a.node: a.record.seq for a in book} == {alice.node_id: 1, bob.node_id: 2}
    # Alice's file removed behind its back (another process): gone from the walk.
    book.remove(alice.node_id)
    assert [a.node for a in book] == [bob.node_id]


def test_a_file_not_named_by_a_node_id_is_still_read(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers")
    carol = crypto.Identity.generate()
    book.directory.mkdir(parents=True)
    (book.directory / "carol.token").write_text(address(carol).token + "\n", encoding="ascii")
    assert [a.node for a in book] == [carol.node_id]


def test_a_file_changed_in_place_is_read_again(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers")
    dave = crypto.Identity.generate()
    book.add(address(dave), now=T0)
    assert [a.record.seq for a in book] == [1]
    path = book.directory / f"{dave.node_id.text}.token"
    path.write_text(address(dave, seq=3).token + "\n", encoding="ascii")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later write
    assert [a.record.seq for a in book] == [3]
