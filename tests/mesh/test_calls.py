"""Calls on objects, sans I/O (mesh/_calls.py): the call and reply codec, round trips and
every refusal; event topics; the store keeping a call's seen-set entry only; and the
capability URLs the capability book keeps (mesh/_capabilities.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
import mesh
import mesh._capabilities
from crypto import _cbor

NODE = crypto.Identity(bytes(range(32)))
CALLER = crypto.Identity(bytes(range(1, 33)))
CALL_ID = bytes(range(16))
NOW = 1_700_000_000_000

names = st.from_regex(mesh.OBJECT_NAME, fullmatch=True)
operations = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
).filter(lambda op: op == op.strip())
content_types = st.none() | st.from_regex(r"[a-z]{1,10}/[a-z0-9.+-]{1,20}", fullmatch=True)
bodies = st.binary(max_size=256)


@given(names, operations, bodies, content_types)
def test_a_call_round_trips(obj: str, op: str, body: bytes, ct: str | None) -> None:
    call = mesh.Call(obj, op, body, ct)
    data = call.encode()
    assert mesh.Call.decode(data) == call
    assert data == _cbor.encode(_cbor.decode(data))  # deterministic


@given(
    st.binary(min_size=16, max_size=16),
    st.integers(200, 599),
    bodies,
    content_types,
    st.none() | st.text(max_size=1024),
)
def test_a_reply_round_trips(
    re: bytes, status: int, body: bytes, ct: str | None, why: str | None
) -> None:
    reply = mesh.Reply(re, status, body, ct, why)
    assert mesh.Reply.decode(reply.encode()) == reply
    assert reply.ok == (200 <= status < 300)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    for decode in (mesh.Call.decode, mesh.Reply.decode):
        try:
            decode(data)
        except crypto.Malformed:
            pass


def test_the_biggest_call_fits_in_a_frame() -> None:
    call = mesh.Call(
        "n" * 64, "O" * mesh.MAX_OPERATION_LENGTH, b"x" * mesh.MAX_CALL_BODY, "t/" + "c" * 125
    )
    reply = mesh.Reply(
        CALL_ID, 599, b"x" * mesh.MAX_CALL_BODY, "t/" + "c" * 125, "\U0001f600" * 1024
    )
    for body in (call.encode(), reply.encode()):
        assert len(body) <= crypto.MAX_BODY_SIZE
        crypto.Frame(
            kind=crypto.Kind.MSG,
            src=CALLER.node_id,
            id=CALL_ID,
            ts=NOW,
            exp=NOW + 1,
            hops=1,
            dst=NODE.node_id,
            body=body,
            ct=mesh.CALL_CONTENT_TYPE,
        )


def encoded(value: Any) -> bytes:
    return _cbor.encode(value)


GOOD_CALL = {"obj": "web", "op": "GET /", "body": b""}
GOOD_REPLY = {"re": CALL_ID, "st": 200, "body": b""}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "call is empty"),
        (b"\xff", "call is not valid CBOR"),
        (encoded(GOOD_CALL) + b"\x00", "call has 1 trailing bytes"),
        (encoded([1]), "call is not a CBOR map but list"),
        (encoded({**GOOD_CALL, "x": 1}), "call has unknown keys 'x'"),
        (encoded({"obj": "web", "op": "x"}), "call lacks body"),
        (encoded({"body": b""}), "call lacks obj, op"),
        (encoded({**GOOD_CALL, "obj": "a.b"}), "object name 'a.b' is not 1..64 characters"),
        (encoded({**GOOD_CALL, "obj": "x" * 65}), "is not 1..64 characters"),
        (encoded({**GOOD_CALL, "obj": 7}), "object name int is not"),
        (encoded({**GOOD_CALL, "op": ""}), "call op '' is not 1..255 printable ASCII"),
        (encoded({**GOOD_CALL, "op": " GET"}), "call op ' GET' is not"),
        (encoded({**GOOD_CALL, "op": "GET\n/"}), "call op 'GET\\n/' is not"),
        (encoded({**GOOD_CALL, "op": "é"}), "call op 'é' is not"),
        (encoded({**GOOD_CALL, "op": "x" * 256}), "is not 1..255 printable ASCII"),
        (encoded({**GOOD_CALL, "op": b"x"}), "call op bytes is not"),
        (encoded({**GOOD_CALL, "body": "text"}), "call body must be a byte string, got str"),
        (encoded({**GOOD_CALL, "ct": "bad type"}), "call ct 'bad type' is not a content type"),
        (encoded({**GOOD_CALL, "ct": 1}), "call ct int is not a content type"),
    ],
)
def test_bad_calls_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(crypto.Malformed) as refused:
        mesh.Call.decode(data)
    assert words in str(refused.value)


def test_an_oversized_call_is_too_large() -> None:
    with pytest.raises(crypto.TooLarge, match=f"limit {mesh.MAX_CALL_BODY}"):
        mesh.Call("web", "x", b"x" * (mesh.MAX_CALL_BODY + 1))
    with pytest.raises(crypto.TooLarge, match=f"call is {crypto.MAX_BODY_SIZE + 1} bytes"):
        mesh.Call.decode(b"x" * (crypto.MAX_BODY_SIZE + 1))
    with pytest.raises(crypto.Malformed, match="a call is bytes, not str"):
        mesh.Call.decode("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (encoded([]), "reply is not a CBOR map but list"),
        (encoded({**GOOD_REPLY, "y": 1}), "reply has unknown keys 'y'"),
        (encoded({"re": CALL_ID, "st": 200}), "reply lacks body"),
        (encoded({**GOOD_REPLY, "re": b"short"}), "reply re must be a frame id of 16 bytes"),
        (encoded({**GOOD_REPLY, "re": "x" * 16}), "reply re must be a frame id of 16 bytes"),
        (encoded({**GOOD_REPLY, "st": 199}), "reply st must be a status of 200..599, got 199"),
        (encoded({**GOOD_REPLY, "st": 600}), "got 600"),
        (encoded({**GOOD_REPLY, "st": True}), "got True"),
        (encoded({**GOOD_REPLY, "st": "200"}), "got '200'"),
        (encoded({**GOOD_REPLY, "body": None}), "reply body must be a byte string, got NoneType"),
        (encoded({**GOOD_REPLY, "ct": ""}), "reply ct '' is not a content type"),
        (encoded({**GOOD_REPLY, "why": 1}), "reply why must be text of <= 1024 characters"),
        (encoded({**GOOD_REPLY, "why": "w" * 1025}), "reply why must be text of <= 1024"),
    ],
)
def test_bad_replies_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(crypto.Malformed) as refused:
        mesh.Reply.decode(data)
    assert words in str(refused.value)


def test_error_replies_cut_their_words() -> None:
    reply = mesh.Reply.error(CALL_ID, mesh.CallStatus.REFUSED, "w" * 2000)
    assert (reply.status, reply.body, reply.ok) == (403, b"", False)
    assert reply.why == "w" * crypto.MAX_WHY_LENGTH


def test_event_topics() -> None:
    node = NODE.node_id
    assert mesh.event_topic(node, "web", "changed") == f"~{node.text}.obj.web.changed"
    assert mesh.event_topic(node, "web", "a.b") == f"~{node.text}.obj.web.a.b"
    assert mesh.events_pattern(node, "web") == f"~{node.text}.obj.web.#"
    assert mesh.matches(mesh.events_pattern(node, "web"), mesh.event_topic(node, "web", "x.y"))
    for name, event, words in [
        ("web", "", "event '' is not one or more dot-separated words"),
        ("web", "~x", "event '~x' is not one or more"),
        ("web", "a..b", "event 'a..b' of object 'web': "),
        ("web", "a b", "event 'a b' of object 'web': "),
        ("web", "*", "event '*' of object 'web': "),
        ("a.b", "x", "object name 'a.b' is not"),
        ("web", ".".join(["w"] * 40), "event 'w.w.w"),
    ]:
        with pytest.raises(crypto.Malformed) as refused:
            mesh.event_topic(node, name, event)
        assert words in str(refused.value)
    with pytest.raises(crypto.Malformed):
        mesh.events_pattern(node, "a b")


# -- the store: a call is taken into the seen-set only -------------------------------


def call_intake(n: int, *, seen_only: bool = True) -> mesh.Intake:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=CALLER.node_id,
        id=n.to_bytes(16, "big"),
        ts=NOW,
        exp=NOW + 60_000,
        hops=8,
        dst=NODE.node_id,
        body=mesh.Call("web", "GET /").encode(),
        ct=mesh.CALL_CONTENT_TYPE,
    )
    admitted = mesh.Admitted(frame, frame.seal(CALLER), 1)
    return mesh.Intake(admitted, mesh.Deliver(), CALLER.node_id, seen_only=seen_only)


def test_a_call_is_seen_once_and_never_in_the_inbox(tmp_path: Path) -> None:
    with mesh.Store(tmp_path / "store.sqlite3", max_inbox_bytes_per_origin=1) as store:
        # Past the inbox's share per origin, a call is still taken: it takes no room.
        results = store.accept([call_intake(1), call_intake(1), call_intake(2)], now=NOW)
        assert [r.outcome for r in results] == [
            mesh.Outcome.ACCEPTED, mesh.Outcome.DUPLICATE, mesh.Outcome.ACCEPTED
        ]  # fmt: skip
        assert store.pending() == []
        (again,) = store.accept([call_intake(1)], now=NOW + 1)
        assert again.outcome is mesh.Outcome.DUPLICATE
        statistics = store.statistics()
        assert (statistics.inbox_frames, statistics.seen_ids) == (0, 2)
        # The same frame without the option is a message for the inbox (refused here:
        # the share per origin is 1 byte).
        (message,) = store.accept([call_intake(3, seen_only=False)], now=NOW)
        assert message.outcome is mesh.Outcome.REJECTED


# -- capability URLs in the capability book ----------------------------------------------


def test_capability_urls_are_kept_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    secret = "s" * 43
    with mesh.CapabilityBook(path) as book:
        book.add_url("u1", secret, "web", now=NOW)
        book.add_url("u2", "t" * 43, "inbox", now=NOW + 1)
        with pytest.raises(mesh.MeshError, match="capability URL u1 is held already"):
            book.add_url("u1", "other", "web", now=NOW)
        with pytest.raises(mesh.MeshError, match="capability URL u3 is held already"):
            book.add_url("u3", secret, "web", now=NOW)  # the same secret
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM cap_urls").fetchall()
    assert secret.encode() not in repr(rows).encode()  # only its digest is kept
    with mesh.CapabilityBook(path) as book:
        assert book.url(secret) == mesh.CapUrlRecord("u1", "web", NOW)
        assert book.url("x" * 43) is None
        assert book.revoke_url("u1", now=NOW + 5)
        assert not book.revoke_url("u1", now=NOW + 6)
        assert not book.revoke_url("nope", now=NOW)
        assert book.url(secret) is None
        assert book.urls() == [
            mesh.CapUrlRecord("u1", "web", NOW, NOW + 5),
            mesh.CapUrlRecord("u2", "inbox", NOW + 1),
        ]
        assert book.revoke_urls_of("inbox", now=NOW + 7) == 1
        assert book.url("t" * 43) is None


def test_capability_urls_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh._capabilities, "MAX_CAP_URLS", 2)
    with mesh.CapabilityBook(tmp_path / "store.sqlite3") as book:
        book.add_url("a", "1", "web", now=NOW)
        book.add_url("b", "2", "web", now=NOW)
        with pytest.raises(mesh.MeshError, match="holds 2 capability URLs already, the limit"):
            book.add_url("c", "3", "web", now=NOW)


def test_the_url_table_joins_a_book_made_before_it(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with mesh.CapabilityBook(path):
        pass
    with sqlite3.connect(path) as db:  # as a ptth from before cap_urls left it
        db.execute("DROP TABLE cap_urls")
    with mesh.CapabilityBook(path) as book:
        book.add_url("u1", "s", "web", now=NOW)
        assert [url.id for url in book.urls()] == ["u1"]
