"""Frame payloads (crypto.Frame): kinds, keys, limits, topics and patterns."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from crypto import (
    FRAME_ID_SIZE,
    MAX_BODY_SIZE,
    MAX_ENVELOPE_SIZE,
    MAX_HOPS,
    MAX_LIFETIME_MS,
    MAX_WHY_LENGTH,
    BadSignature,
    CryptoError,
    Expired,
    Frame,
    Identity,
    Kind,
    Malformed,
    NodeId,
    Purpose,
    WrongPurpose,
    _cbor,
    _envelope,
    _frames,
    validate_pattern,
    validate_topic,
)
from crypto._frames import MAX_TIME_MS

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
TS = 1_700_000_000_000
EXP = TS + 60_000
FRAME_ID = bytes(range(16))

# The docs/architecture.md table, restated here so the tests do not trust the code's own tables.
REQUIRED: dict[Kind, set[str]] = {
    Kind.MSG: {"dst", "body"},
    Kind.PUB: {"topic", "body"},
    Kind.SUB: {"pat"},
    Kind.UNSUB: {"pat"},
    Kind.ANN: {"body"},
    Kind.RCPT: {"dst", "ref", "st"},
    Kind.REV: {"body"},
    Kind.CRD: {"dst", "body"},
    Kind.DHT: {"dst", "body"},
}
OPTIONAL: dict[Kind, set[str]] = {
    Kind.MSG: {"ct", "rr", "cap"},
    Kind.PUB: {"ct", "cap"},
    Kind.SUB: {"cap", "dst"},
    Kind.UNSUB: {"dst"},
    Kind.RCPT: {"why", "n"},
    Kind.ANN: {"hello"},
}
VALUES: dict[str, Any] = {
    "dst": BOB.node_id,
    "topic": "news.tech",
    "pat": "news.*",
    "body": b"hello",
    "ct": "text/plain",
    "ref": bytes(16),
    "rr": True,
    "st": "dropped",
    "why": "expired: frame expired 3 s ago",
    "n": 4,
    "hello": True,
    "cap": b"\xd2\x84capability",
}
SECURE = f"~{ALICE.node_id.text}"

# -- strategies ----------------------------------------------------------------------

KINDS = st.sampled_from(Kind)
IDENTITIES = st.binary(min_size=32, max_size=32).map(Identity)
NODE_IDS = st.binary(min_size=32, max_size=32).map(NodeId)
WORDS = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
PATTERN_WORDS = WORDS | st.sampled_from(["*", "#"])
CONTENT_TYPES = st.sampled_from(
    ["text/plain", "application/cbor", "text/plain; charset=utf-8", "a/b;c=d"]
) | st.from_regex(r"[!-~]{1,20}(; ?[!-~]{1,10}){0,2}", fullmatch=True)


def dotted(words: st.SearchStrategy[str], secure: str | None) -> st.SearchStrategy[str]:
    first = st.just([secure]) if secure else st.just([])
    return st.builds(lambda a, b: ".".join(a + b), first, st.lists(words, min_size=1, max_size=5))


@st.composite
def frames(draw: st.DrawFn, kinds: st.SearchStrategy[Kind] = KINDS) -> tuple[Identity, Frame]:
    """An (identity, frame) pair: a valid frame of any kind, from that identity."""
    identity = draw(IDENTITIES)
    kind = draw(kinds)
    secure = draw(st.sampled_from([None, f"~{identity.node_id.text}"]))
    fields: dict[str, Any] = {}
    if kind in (Kind.MSG, Kind.RCPT, Kind.CRD, Kind.DHT):
        fields["dst"] = draw(NODE_IDS)
    if kind is Kind.PUB:
        fields["topic"] = draw(dotted(WORDS, secure))
    if kind in (Kind.SUB, Kind.UNSUB):
        owner = draw(st.none() | NODE_IDS)  # addressed to the owner of its secure name
        if owner is not None:
            fields["dst"] = owner
            secure = f"~{owner.text}"
        fields["pat"] = draw(dotted(PATTERN_WORDS, secure))
    if kind in (Kind.MSG, Kind.PUB, Kind.ANN, Kind.REV, Kind.CRD, Kind.DHT):
        fields["body"] = draw(st.binary(max_size=64))
    if kind in (Kind.MSG, Kind.PUB, Kind.SUB):
        fields["cap"] = draw(st.none() | st.binary(min_size=1, max_size=64))
    if kind in (Kind.MSG, Kind.PUB):
        fields["ct"] = draw(st.none() | CONTENT_TYPES)
    if kind is Kind.RCPT:
        fields["ref"] = draw(st.binary(min_size=16, max_size=16))
        fields["st"] = draw(st.sampled_from(["delivered", "dropped"]))
        fields["why"] = draw(st.none() | st.text(max_size=40))
        fields["n"] = draw(st.none() | st.integers(0, MAX_HOPS))
    if kind is Kind.MSG:
        fields["rr"] = draw(st.none() | st.just(True))
    if kind is Kind.ANN:
        fields["hello"] = draw(st.none() | st.just(True))
    ts = draw(st.integers(0, 2**50))
    frame = Frame(
        kind=kind,
        src=identity.node_id,
        id=draw(st.binary(min_size=16, max_size=16)),
        ts=ts,
        exp=ts + draw(st.integers(1, MAX_LIFETIME_MS)),
        hops=draw(st.integers(1, MAX_HOPS)),
        **fields,
    )
    return identity, frame


def fields(kind: Kind = Kind.MSG, /, **changes: Any) -> dict[str, Any]:
    """Constructor arguments for a valid frame of ``kind``, with ``changes``."""
    values: dict[str, Any] = {
        "kind": kind,
        "src": ALICE.node_id,
        "id": FRAME_ID,
        "ts": TS,
        "exp": EXP,
        "hops": 8,
    }
    values.update({name: VALUES[name] for name in REQUIRED[kind]})
    values.update(changes)
    return values


def payload(kind: Kind = Kind.MSG, /, **changes: Any) -> dict[str, Any]:
    """A frame's signed map, with ``changes`` (``...`` removes a key)."""
    values = Frame(**fields(kind)).to_payload()
    values.update(changes)
    return {key: value for key, value in values.items() if value is not ...}


# -- round trips -----------------------------------------------------------------------


@given(frames())
def test_round_trip(pair: tuple[Identity, Frame]) -> None:
    identity, frame = pair
    sealed = frame.seal(identity)
    assert Frame.open(sealed, now=frame.ts) == frame
    assert Frame.open(sealed, now=frame.exp - 1) == frame
    assert Frame.open(sealed) == frame
    assert Frame.from_payload(frame.to_payload()) == frame
    opened = Frame.open(sealed)
    assert type(opened.kind) is Kind
    assert crypto.open(sealed, Purpose.FRAME) == (identity.node_id, frame.to_payload())


@given(frames(), st.data())
def test_flipping_any_byte_fails(pair: tuple[Identity, Frame], data: st.DataObject) -> None:
    identity, frame = pair
    sealed = bytearray(frame.seal(identity))
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    sealed[index] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(CryptoError):
        Frame.open(bytes(sealed), now=frame.ts)


def test_payload_layout() -> None:
    frame = Frame(**fields(Kind.PUB, ct="text/plain"))
    assert frame.to_payload() == {
        "t": "pub",
        "src": ALICE.node_id.raw,
        "id": FRAME_ID,
        "ts": TS,
        "exp": EXP,
        "hops": 8,
        "topic": "news.tech",
        "body": b"hello",
        "ct": "text/plain",
    }
    assert type(frame.to_payload()["t"]) is str
    assert Frame(**fields(Kind.RCPT)).to_payload()["dst"] == BOB.node_id.raw


def test_kind_text_becomes_the_enum() -> None:
    frame = Frame(**fields(kind="msg"))
    assert frame.kind is Kind.MSG


def test_frame_is_immutable() -> None:
    frame = Frame(**fields())
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.hops = 2  # type: ignore[misc]


# -- keys per kind ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_requires_its_keys(kind: Kind) -> None:
    Frame(**fields(kind))
    for name in REQUIRED[kind]:
        with pytest.raises(Malformed, match=f"^{kind} frame lacks {name}$"):
            Frame(**fields(kind, **{name: None}))
        with pytest.raises(Malformed, match=f"^{kind} frame lacks {name}$"):
            Frame.from_payload(payload(kind, **{name: ...}))


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_allows_its_optional_keys(kind: Kind) -> None:
    for name in OPTIONAL.get(kind, set()):
        more = {}
        if name == "dst":  # an interest addressed to the owner of its secure name
            more["pat"] = f"~{VALUES['dst'].text}.chirp"
        frame = Frame(**fields(kind, **{name: VALUES[name]}, **more))
        assert getattr(frame, name) == VALUES[name]
        assert Frame.from_payload(frame.to_payload()) == frame


@pytest.mark.parametrize("kind", [Kind.SUB, Kind.UNSUB])
@pytest.mark.parametrize("pattern", ["news.*", "#", f"{SECURE}.chirp", "*.chirp"])
def test_an_interest_is_addressed_only_to_the_owner_of_its_secure_name(
    kind: Kind, pattern: str
) -> None:
    message = f"^{kind} frame for '.*' is addressed to {BOB.node_id.short}: only a pattern"
    with pytest.raises(Malformed, match=message):
        Frame(**fields(kind, pat=pattern, dst=BOB.node_id))
    with pytest.raises(Malformed, match=message):
        Frame.from_payload(payload(kind, pat=pattern, dst=BOB.node_id.raw))
    mine = Frame(**fields(kind, pat=f"~{BOB.node_id.text}.chirp.#", dst=BOB.node_id))
    assert Frame.open(mine.seal(ALICE)) == mine


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_forbids_other_keys(kind: Kind) -> None:
    forbidden = set(VALUES) - REQUIRED[kind] - OPTIONAL.get(kind, set())
    assert forbidden
    for name in forbidden:
        value = VALUES[name].raw if name == "dst" else VALUES[name]
        with pytest.raises(Malformed, match=f"^{kind} frame must not have {name}$"):
            Frame(**fields(kind, **{name: VALUES[name]}))
        with pytest.raises(Malformed, match=f"^{kind} frame must not have {name}$"):
            Frame.from_payload(payload(kind, **{name: value}))


def test_missing_keys_are_listed_together() -> None:
    with pytest.raises(Malformed, match=r"^rcpt frame lacks dst, ref, st$"):
        Frame(**fields(Kind.RCPT, dst=None, ref=None, st=None))
    with pytest.raises(Malformed, match=r"^sub frame must not have body, topic$"):
        Frame(**fields(Kind.SUB, topic="news", body=b""))


# -- types and sizes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"kind": "nope"},
            "frame kind 'nope' is not one of msg, pub, sub, unsub, ann, rcpt",
            id="kind-unknown",
        ),
        pytest.param({"kind": "MSG"}, "frame kind 'MSG' is not one of", id="kind-uppercase"),
        pytest.param({"kind": 5}, "frame kind 5 is not one of", id="kind-int"),
        pytest.param({"kind": ["msg"]}, r"frame kind \['msg'\] is not one of", id="kind-list"),
        pytest.param({"src": ALICE.node_id.raw}, "frame src must be a node id", id="src-bytes"),
        pytest.param({"id": "x" * 16}, "frame id must be a byte string, got str", id="id-str"),
        pytest.param({"id": bytes(15)}, "frame id is 15 bytes, expected 16", id="id-15"),
        pytest.param({"id": bytes(17)}, "frame id is 17 bytes, expected 16", id="id-17"),
        pytest.param({"id": b""}, "frame id is 0 bytes, expected 16", id="id-empty"),
        pytest.param({"ts": "1"}, "frame ts must be an integer, got str", id="ts-str"),
        pytest.param({"ts": True}, "frame ts must be an integer, got bool", id="ts-bool"),
        pytest.param({"ts": float(TS)}, "frame ts must be an integer, got float", id="ts-float"),
        pytest.param(
            {"ts": -1}, f"frame ts is -1, expected 0..{MAX_TIME_MS - 1}", id="ts-negative"
        ),
        pytest.param(
            {"ts": MAX_TIME_MS, "exp": MAX_TIME_MS + 1},
            f"frame ts is {MAX_TIME_MS}, expected",
            id="ts-too-late",
        ),
        pytest.param(
            {"exp": TS},
            f"frame exp is {TS}, expected {TS + 1}..{TS + MAX_LIFETIME_MS}",
            id="exp-equals-ts",
        ),
        pytest.param(
            {"exp": TS - 1}, f"frame exp is {TS - 1}, expected {TS + 1}..", id="exp-before-ts"
        ),
        pytest.param(
            {"exp": TS + MAX_LIFETIME_MS + 1},
            f"frame exp is {TS + MAX_LIFETIME_MS + 1}, expected {TS + 1}..{TS + MAX_LIFETIME_MS}$",
            id="lifetime",
        ),
        pytest.param(
            {"ts": MAX_TIME_MS - 10, "exp": MAX_TIME_MS + 1},
            f"expected {MAX_TIME_MS - 9}..{MAX_TIME_MS}$",
            id="exp-past-int64",
        ),
        pytest.param({"exp": None}, "frame exp must be an integer, got NoneType", id="exp-none"),
        pytest.param({"hops": 0}, f"frame hops is 0, expected 1..{MAX_HOPS}", id="hops-0"),
        pytest.param({"hops": MAX_HOPS + 1}, "frame hops is 65, expected 1..64", id="hops-65"),
        pytest.param({"hops": True}, "frame hops must be an integer, got bool", id="hops-bool"),
        pytest.param({"dst": BOB.node_id.raw}, "frame dst must be a node id", id="dst-bytes"),
        pytest.param({"body": "text"}, "frame body must be a byte string, got str", id="body-str"),
        pytest.param(
            {"body": bytes(MAX_BODY_SIZE + 1)},
            "frame body is 524289 bytes, limit 524288",
            id="body-big",
        ),
        pytest.param({"ct": 5}, "frame ct 5 is not a content type of <= 127", id="ct-int"),
        pytest.param({"ct": ""}, "frame ct '' is not a content type", id="ct-empty"),
        pytest.param(
            {"ct": "text plain"}, "frame ct 'text plain' is not a content type", id="ct-space"
        ),
        pytest.param({"ct": "a;  b"}, "is not a content type", id="ct-two-spaces"),
        pytest.param({"ct": "text/é"}, "is not a content type", id="ct-non-ascii"),
        pytest.param({"ct": "a\n"}, "is not a content type", id="ct-newline"),
        pytest.param({"ct": "x" * 128}, "is not a content type of <= 127", id="ct-long"),
    ],
)
def test_bad_fields_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Malformed, match=message):
        Frame(**fields(**changes))


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [
        pytest.param(
            Kind.RCPT, {"ref": bytes(15)}, "frame ref is 15 bytes, expected 16", id="ref-15"
        ),
        pytest.param(
            Kind.RCPT, {"ref": "x" * 16}, "frame ref must be a byte string, got str", id="ref-str"
        ),
        pytest.param(Kind.PUB, {"topic": 5}, "topic must be text, got int", id="topic-int"),
        pytest.param(
            Kind.PUB, {"topic": "a..b"}, "topic 'a..b': word 2 '' is not one of", id="topic-bad"
        ),
        pytest.param(Kind.SUB, {"pat": b"a.*"}, "pattern must be text, got bytes", id="pat-bytes"),
        pytest.param(
            Kind.SUB, {"pat": "a*"}, "pattern 'a\\*': word 1 'a\\*' is not one of", id="pat-bad"
        ),
    ],
)
def test_bad_fields_of_other_kinds_are_refused(
    kind: Kind, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(Malformed, match=message):
        Frame(**fields(kind, **changes))


def test_limits_are_inclusive() -> None:
    Frame(**fields(body=bytes(MAX_BODY_SIZE), hops=MAX_HOPS, exp=TS + MAX_LIFETIME_MS))
    Frame(**fields(ts=0, exp=1, hops=1, ct="x" * 127))
    Frame(**fields(ts=MAX_TIME_MS - 1, exp=MAX_TIME_MS))
    Frame(**fields(Kind.RCPT, ref=bytes(FRAME_ID_SIZE)))
    Frame(**fields(Kind.RCPT, why="x" * MAX_WHY_LENGTH, n=0))
    Frame(**fields(Kind.RCPT, why="", n=MAX_HOPS))


# -- receipts and flags ------------------------------------------------------------------

# Each new key, with a value its check refuses and what the refusal says: the keys a
# receipt carries (st, why, n) and the flags that may only be true (rr, hello).
BAD_NEW_KEYS = [
    pytest.param(Kind.MSG, {"rr": False}, "^frame rr must be true when present, got False$",
                 id="rr-false"),
    pytest.param(Kind.MSG, {"rr": 1}, "^frame rr must be true when present, got 1$", id="rr-1"),
    pytest.param(Kind.MSG, {"rr": "yes"}, "^frame rr must be true when present, got 'yes'$",
                 id="rr-text"),
    pytest.param(Kind.ANN, {"hello": False},
                 "^frame hello must be true when present, got False$", id="hello-false"),
    pytest.param(Kind.ANN, {"hello": 1}, "^frame hello must be true when present, got 1$",
                 id="hello-1"),
    pytest.param(Kind.RCPT, {"st": "lost"},
                 "^frame st 'lost' is not one of delivered, dropped$", id="st-unknown"),
    pytest.param(Kind.RCPT, {"st": "Delivered"},
                 "^frame st 'Delivered' is not one of delivered, dropped$", id="st-case"),
    pytest.param(Kind.RCPT, {"st": b"delivered"},
                 "^frame st b'delivered' is not one of delivered, dropped$", id="st-bytes"),
    pytest.param(Kind.RCPT, {"st": 1}, "^frame st 1 is not one of delivered, dropped$",
                 id="st-int"),
    pytest.param(Kind.RCPT, {"st": ""}, "^frame st '' is not one of delivered, dropped$",
                 id="st-empty"),
    pytest.param(Kind.RCPT, {"why": "x" * (MAX_WHY_LENGTH + 1)},
                 f"^frame why must be text of <= {MAX_WHY_LENGTH} characters$", id="why-long"),
    pytest.param(Kind.RCPT, {"why": b"expired"},
                 f"^frame why must be text of <= {MAX_WHY_LENGTH} characters$", id="why-bytes"),
    pytest.param(Kind.RCPT, {"why": 5},
                 f"^frame why must be text of <= {MAX_WHY_LENGTH} characters$", id="why-int"),
    pytest.param(Kind.RCPT, {"n": -1}, f"^frame n is -1, expected 0..{MAX_HOPS}$", id="n-negative"),
    pytest.param(Kind.RCPT, {"n": MAX_HOPS + 1}, f"^frame n is 65, expected 0..{MAX_HOPS}$",
                 id="n-too-many"),
    pytest.param(Kind.RCPT, {"n": True}, "^frame n must be an integer, got bool$", id="n-bool"),
    pytest.param(Kind.RCPT, {"n": "3"}, "^frame n must be an integer, got str$", id="n-text"),
    pytest.param(Kind.RCPT, {"n": 2.0}, "^frame n must be an integer, got float$", id="n-float"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "changes", "message"), BAD_NEW_KEYS)
def test_bad_receipt_keys_and_flags_are_refused(
    kind: Kind, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(Malformed, match=message):
        Frame(**fields(kind, **changes))


@pytest.mark.parametrize(("kind", "changes", "message"), BAD_NEW_KEYS)
def test_bad_receipt_keys_and_flags_are_refused_when_signed(
    kind: Kind, changes: dict[str, Any], message: str
) -> None:
    # A signer that does not use Frame (another implementation, or an attacker) cannot
    # get a frame with such a key past Frame.open.
    envelope = crypto.seal(ALICE, Purpose.FRAME, payload(kind, **changes))
    with pytest.raises(Malformed, match=message):
        Frame.open(envelope, now=TS)


@pytest.mark.parametrize("state", ["delivered", "dropped"])
def test_both_receipt_states_round_trip(state: str) -> None:
    frame = Frame(**fields(Kind.RCPT, st=state, why="expired: 3 s ago", n=MAX_HOPS))
    opened = Frame.open(frame.seal(ALICE), now=TS)
    assert opened == frame
    assert (opened.st, opened.why, opened.n) == (state, "expired: 3 s ago", MAX_HOPS)


def test_flags_are_absent_unless_true() -> None:
    plain = Frame(**fields())
    assert plain.rr is None
    assert "rr" not in plain.to_payload()
    asked = Frame(**fields(rr=True))
    assert asked.to_payload()["rr"] is True
    assert Frame.open(asked.seal(ALICE), now=TS).rr is True
    greeting = Frame(**fields(Kind.ANN, hello=True))
    assert greeting.to_payload()["hello"] is True
    assert Frame.open(greeting.seal(ALICE), now=TS).hello is True
    assert "hello" not in Frame(**fields(Kind.ANN)).to_payload()


def test_a_receipt_without_why_and_n_is_valid() -> None:
    frame = Frame(**fields(Kind.RCPT, st="delivered"))
    assert (frame.why, frame.n) == (None, None)
    assert set(frame.to_payload()) == {"t", "src", "id", "ts", "exp", "hops", "dst", "ref", "st"}


def test_largest_frame_fits_an_envelope() -> None:
    frame = Frame(**fields(body=bytes(MAX_BODY_SIZE), ct="x" * 127, topic=None))
    sealed = frame.seal(ALICE)
    assert len(sealed) < MAX_ENVELOPE_SIZE
    assert Frame.open(sealed, now=TS) == frame


# -- from_payload ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"exp": ..., "id": ...}, "^frame lacks exp, id$", id="missing-common"),
        pytest.param({"t": ...}, "^frame lacks t$", id="missing-kind"),
        pytest.param({"x": 1}, r"""^frame has unknown keys \["'x'"\]$""", id="unknown"),
        pytest.param({"kind": "msg"}, "unknown keys", id="attribute-name"),
        pytest.param({"t": "nope"}, "frame kind 'nope' is not one of", id="kind-unknown"),
        pytest.param({"t": ["msg"]}, r"frame kind \['msg'\] is not one of", id="kind-list"),
        pytest.param({"t": {"msg": 1}}, "frame kind {'msg': 1} is not one of", id="kind-map"),
        pytest.param({"t": None}, "^frame has null t; absent keys are left out$", id="kind-null"),
        pytest.param({"ct": None}, "^frame has null ct; absent keys are left out$", id="ct-null"),
        pytest.param({"topic": None, "ref": None}, "^frame has null ref, topic;", id="nulls"),
        pytest.param(
            {"src": ALICE.node_id.text}, "frame src must be a byte string, got str", id="src-text"
        ),
        pytest.param({"src": bytes(31)}, "a node id is 32 bytes, got 31", id="src-short"),
        pytest.param(
            {"dst": BOB.node_id.text}, "frame dst must be a byte string, got str", id="dst-text"
        ),
        pytest.param({"dst": bytes(33)}, "a node id is 32 bytes, got 33", id="dst-long"),
        pytest.param({"hops": 0}, "frame hops is 0", id="hops"),
    ],
)
def test_bad_payloads_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Malformed, match=message):
        Frame.from_payload(payload(**changes))
    # ... and the same when the payload arrives signed.
    with pytest.raises(Malformed, match=message):
        Frame.open(crypto.seal(ALICE, Purpose.FRAME, payload(**changes)))


# -- signers and expiry ----------------------------------------------------------------


def test_frame_signed_by_another_node_than_src_is_refused() -> None:
    envelope = crypto.seal(BOB, Purpose.FRAME, Frame(**fields()).to_payload())
    with pytest.raises(
        Malformed, match=f"frame from {ALICE.node_id.short} is signed by {BOB.node_id.short}"
    ):
        Frame.open(envelope)


def test_seal_with_a_foreign_identity_is_refused() -> None:
    with pytest.raises(
        Malformed, match=f"frame from {ALICE.node_id.short} cannot be signed by Identity"
    ):
        Frame(**fields()).seal(BOB)


def test_expired_frame_is_refused_on_open() -> None:
    sealed = Frame(**fields()).seal(ALICE)
    assert Frame.open(sealed, now=EXP - 1).exp == EXP
    assert Frame.open(sealed).exp == EXP  # no clock, no expiry check
    for now, ago in [(EXP, 0), (EXP + 2_500, 2), (EXP + 86_400_000, 86400)]:
        with pytest.raises(Expired, match=f"frame expired {ago} s ago"):
            Frame.open(sealed, now=now)


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the envelopes :meth:`Frame.open` opens (COSE, signature and all)."""
    calls = [0]
    real = _envelope.open_encoded

    def counted(data: bytes, purpose: Purpose | str) -> tuple[NodeId, bytes]:
        calls[0] += 1
        return real(data, purpose)

    monkeypatch.setattr(_envelope, "open_encoded", counted)
    return calls


def test_a_frame_that_opened_is_not_opened_again_within_opening_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_opens(monkeypatch)
    sealed = Frame(**fields()).seal(ALICE)
    with crypto.opening_once():
        first = Frame.open(sealed, now=TS)
        assert Frame.open(sealed, now=EXP - 1) is first
        assert calls == [1]
        # Remembered, yet refused once expired: the clock is checked at every call.
        for now, ago in [(EXP, 0), (EXP + 2_500, 2)]:
            with pytest.raises(Expired, match=f"frame expired {ago} s ago"):
                Frame.open(sealed, now=now)
        assert Frame.open(sealed) is first  # no clock, no expiry check
        assert calls == [1]
    # Outside the block nothing is remembered.
    assert Frame.open(sealed) == first
    assert calls == [2]


def test_a_carried_frame_is_taken_within_opening_once_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_opens(monkeypatch)
    made = Frame(**fields())
    sealed = made.seal(ALICE)
    assert Frame.open(sealed) == made  # what a next hop is handed is what it would open
    assert calls == [1]
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])  # the signature's last byte
    # Anywhere but in a simulation, the frame carried beside an envelope is ignored:
    # the envelope is opened, and refused if it does not verify.
    with pytest.raises(BadSignature):
        Frame.open(damaged, carried=made)
    assert Frame.open(sealed, carried=made) is not made
    assert calls == [3]
    with crypto.opening_once():
        assert Frame.open(sealed, now=TS, carried=made) is made
        with pytest.raises(Expired, match="frame expired 0 s ago"):
            Frame.open(sealed, now=EXP, carried=made)  # its expiry checked all the same
        assert calls == [3]


def test_a_frame_that_failed_to_open_is_opened_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_opens(monkeypatch)
    sealed = Frame(**fields()).seal(ALICE)
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])  # the signature's last byte
    foreign = crypto.seal(BOB, Purpose.FRAME, Frame(**fields()).to_payload())
    with crypto.opening_once():
        for _ in range(2):
            with pytest.raises(BadSignature):
                Frame.open(damaged)
            with pytest.raises(Malformed, match="is signed by"):
                Frame.open(foreign)
        assert calls == [4]
        Frame.open(sealed)  # the good one, next to them, opens
        assert calls == [5]


def test_opening_once_forgets_all_at_once_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_opens(monkeypatch)
    a, b = (Frame(**fields(id=bytes([n]) * FRAME_ID_SIZE)).seal(ALICE) for n in (1, 2))
    with crypto.opening_once(limit=1):
        Frame.open(a)
        Frame.open(a)
        Frame.open(b)  # past the limit: a is forgotten, b remembered
        Frame.open(b)
        Frame.open(a)
    assert calls == [3]


def test_envelope_for_another_purpose_is_refused() -> None:
    envelope = crypto.seal(ALICE, Purpose.ADDRESS, Frame(**fields()).to_payload())
    with pytest.raises(WrongPurpose, match="envelope is for 'ptth/addr', expected 'ptth/frame'"):
        Frame.open(envelope)


# -- the fast path of Frame.open against the general one -------------------------------
#
# Frame.open reads the payload seal() writes with a reader of its own (_frames._read_payload)
# and builds the frame without re-checking its keys (Frame._from_values); anything that reader
# does not take is decoded by cbor2, checked deterministic and read by from_payload. These
# tests hold the two ways to the same outcome: the same frame, or the same refusal.

WORDS_AND_KEYS = sorted({*VALUES, "t", "src", "id", "ts", "exp", "hops", "x", "kind", ""})
ODD_VALUES = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.sampled_from(["msg", "pub", "delivered", "news.tech", "a/b"]),
    st.lists(st.integers(0, 30), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 30), max_size=2),
    st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 18, 24, 55799]), st.integers(0, 30)),
)


MUTATIONS = (
    "none", "wide", "swap", "twice", "extra", "drop", "retype", "indefinite", "tag", "cut", "add",
    "flip", "count", "bytes-key",
)  # fmt: skip


def head(major: int, argument: int, width: int = 0) -> bytes:
    """A CBOR head: in shortest form, or with its argument in ``width`` bytes (1, 2, 4, 8)."""
    if not width:
        if argument < 24:
            return bytes([major << 5 | argument])
        width = next(size for size in (1, 2, 4, 8) if argument < 1 << (8 * size))
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + argument.to_bytes(width, "big")


def item(value: Any, width: int = 0) -> bytes:
    """``value`` in CBOR, its head ``width`` wide where it has one we write (see head())."""
    if isinstance(value, bool) or not isinstance(value, int | bytes | str):
        return cbor2.dumps(value, canonical=True)
    if isinstance(value, int):
        return head(0, value, width) if value >= 0 else cbor2.dumps(value)
    raw = value.encode() if isinstance(value, str) else value
    return head(3 if isinstance(value, str) else 2, len(raw), width) + raw


def canonical(pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    return sorted(pairs, key=lambda pair: _cbor.encode(pair[0]))


def argument_of(value: int | bytes | str) -> int:
    """The argument of ``value``'s head: the integer, or the string's length in bytes."""
    if isinstance(value, int):
        return value
    return len(value.encode() if isinstance(value, str) else value)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[Identity, bytes]:
    """A signer and payload bytes: a valid frame's, or one mutated in a way that matters
    to a reader (heads not in shortest form, keys out of order, twice, extra or missing,
    values of another type, indefinite lengths, tags, bytes cut, added or flipped)."""
    identity, frame = draw(frames())
    pairs: list[tuple[Any, Any]] = canonical(list(frame.to_payload().items()))
    mutation = draw(st.sampled_from(MUTATIONS))
    index = draw(st.integers(0, len(pairs) - 1))
    key, value = pairs[index]
    encoded = [item(k) + item(v) for k, v in pairs]
    count = len(pairs)
    map_head: bytes | None = None  # the map's head, unless made from count at the end
    if mutation == "wide":  # one head wider than it must be: the map's, a key's, a value's
        where = draw(st.sampled_from(["map", "key", "value"]))
        if where == "map":
            map_head = head(5, count, draw(st.sampled_from([1, 2, 4, 8])))
        elif where == "key":
            encoded[index] = item(key, draw(st.sampled_from([1, 2, 4, 8]))) + item(value)
        elif isinstance(value, int | bytes | str) and not isinstance(value, bool):
            argument = argument_of(value)
            size = draw(st.sampled_from([1, 2, 4, 8]))
            if argument < 1 << (8 * size):
                encoded[index] = item(key) + item(value, size)
    elif mutation == "swap" and count > 1:
        other = draw(st.integers(0, count - 1).filter(lambda i: i != index))
        encoded[index], encoded[other] = encoded[other], encoded[index]
    elif mutation == "twice":
        again = draw(st.sampled_from([value, *VALUES.values()]))
        again = again.raw if isinstance(again, NodeId) else again
        encoded.insert(index + draw(st.integers(0, 1)), item(key) + item(again))
        count += 1
    elif mutation == "extra":
        extra_key = draw(st.sampled_from(WORDS_AND_KEYS))
        extra = draw(st.sampled_from(list(VALUES.values())) | ODD_VALUES)
        extra = extra.raw if isinstance(extra, NodeId) else extra
        pairs = canonical([*((k, v) for k, v in pairs if k != extra_key), (extra_key, extra)])
        encoded = [item(k) + item(v) for k, v in pairs]
        count = len(pairs)
    elif mutation == "drop":
        del encoded[index]
        count -= 1
    elif mutation == "retype":
        encoded[index] = item(key) + item(draw(ODD_VALUES))
    elif mutation == "indefinite":  # the map, or a string value in chunks
        if draw(st.booleans()) or not isinstance(value, bytes | str):
            map_head = b"\xbf"
            encoded.append(b"\xff")
        else:
            major = 3 if isinstance(value, str) else 2
            chunk = item(value)  # one chunk: the string itself
            encoded[index] = item(key) + bytes([major << 5 | 31]) + chunk + b"\xff"
    elif mutation == "tag":  # the map, or a value, tagged
        tag = head(6, draw(st.sampled_from([0, 1, 2, 18, 24, 55799, 1000])))
        if draw(st.booleans()):
            map_head = tag + head(5, count)
        else:
            encoded[index] = item(key) + tag + item(value)
    elif mutation == "count":
        map_head = head(5, max(0, count + draw(st.sampled_from([-1, 1]))))
    elif mutation == "bytes-key":
        encoded[index] = item(key.encode()) + item(value)
    payload = (head(5, count) if map_head is None else map_head) + b"".join(encoded)
    if mutation == "cut":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif mutation == "add":
        payload += draw(st.binary(min_size=1, max_size=3))
    elif mutation == "flip":
        at = draw(st.integers(0, len(payload) - 1))
        flipped = bytearray(payload)
        flipped[at] ^= draw(st.integers(1, 255))
        payload = bytes(flipped)
    return identity, payload


@contextlib.contextmanager
def general_path_only() -> Iterator[None]:
    """Frame.open, from_payload and require_deterministic without their fast paths."""
    with (
        mock.patch.object(_frames, "_read_payload", return_value=None),
        mock.patch.object(_frames, "_SHAPES", {}),
        mock.patch.object(_cbor, "_encode_flat_map", return_value=None),
    ):
        yield


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` gives: a frame, or the class and words of its refusal."""
    try:
        return call()
    except CryptoError as exc:
        return type(exc), str(exc)


@given(frames())
def test_the_fast_path_reads_every_valid_frame(pair: tuple[Identity, Frame]) -> None:
    identity, frame = pair
    payload_bytes = _cbor.encode(frame.to_payload())
    values = _frames._read_payload(payload_bytes)
    assert values is not None, "a payload as seal() writes it must take the fast path"
    assert Frame._from_values(values) == frame
    sealed = frame.seal(identity)
    with general_path_only():
        assert Frame.open(sealed) == frame
    assert Frame.open(sealed) == frame


@given(payloads())
def test_the_fast_path_agrees_with_the_general_one(pair: tuple[Identity, bytes]) -> None:
    identity, payload_bytes = pair
    sealed = _envelope.seal_encoded(identity, Purpose.FRAME, payload_bytes)
    with general_path_only():
        expected = outcome(lambda: Frame.open(sealed))
    assert outcome(lambda: Frame.open(sealed)) == expected
    # The reader takes only what the general way reads to the same values.
    values = _frames._read_payload(payload_bytes)
    if values is not None:
        read = dict(zip(_frames._PAYLOAD_KEYS, [str(values[0]), *values[1:]], strict=True))
        with general_path_only():
            payload = _envelope.read_payload(payload_bytes)
            expected = outcome(lambda: Frame.from_payload(payload))
        assert payload == {key: value for key, value in read.items() if value is not None}
        assert list(payload) == sorted(payload, key=_cbor.encode)
        assert outcome(lambda: Frame._from_values(values)) == expected


@given(payloads())
def test_from_payload_fast_path_agrees_with_the_general_one(pair: tuple[Identity, bytes]) -> None:
    _, payload_bytes = pair
    try:
        payload = _envelope.read_payload(payload_bytes)
    except CryptoError:
        return
    # ... and each key order, as a caller's map may have (not only the canonical one).
    for order in (payload, dict(reversed(payload.items()))):
        with general_path_only():
            expected = outcome(lambda: Frame.from_payload(order))  # noqa: B023
        assert outcome(lambda: Frame.from_payload(order)) == expected  # noqa: B023


REPLACEMENTS: tuple[Any, ...] = (
    0, 1, 23, 24, 255, 256, 2**32, 2**64 - 1, -1, -(2**64), False, True, None, 1.5, b"", b"x" * 16,
    b"x" * 32, bytes(300), "", "msg", "delivered", "news.tech", "x" * 300, [], {}, [1],
    {"t": 1}, cbor2.CBORTag(0, "x"), cbor2.CBORTag(2, b"\x01"), cbor2.undefined,
)  # fmt: skip


def every_mutation(pairs: list[tuple[str, Any]]) -> Iterator[bytes]:
    """The payload of ``pairs`` (in canonical order) with one thing changed, every way
    a reader could get wrong: each head made wider, each value replaced, each key left
    out, doubled, swapped with the next or made bytes, tagged or indefinite items, the
    map's count off by one, a byte more, each truncation."""
    items = [item(key) + item(value) for key, value in pairs]

    def joined(changed: list[bytes], map_head: bytes = head(5, len(pairs))) -> bytes:
        return map_head + b"".join(changed)

    for width in (1, 2, 4, 8):
        yield joined(items, head(5, len(pairs), width))
    yield joined([*items, b"\xff"], b"\xbf")
    yield b"\xd8\x18" + joined(items)
    yield joined(items, head(5, len(pairs) - 1))
    yield joined(items, head(5, len(pairs) + 1))
    yield joined(items) + b"\x00"
    for index, (key, value) in enumerate(pairs):

        def changed(new: bytes | None, at: int = index) -> list[bytes]:
            return [*items[:at], *([] if new is None else [new]), *items[at + 1 :]]

        for width in (1, 2, 4, 8):
            yield joined(changed(item(key, width) + item(value)))
            if not isinstance(value, bool) and argument_of(value) < 1 << (8 * width):
                yield joined(changed(item(key) + item(value, width)))
        for replacement in REPLACEMENTS:
            yield joined(changed(item(key) + item(replacement)))
        yield joined(changed(None), head(5, len(pairs) - 1))
        yield joined(changed(None))
        yield joined(
            [*items[: index + 1], items[index], *items[index + 1 :]], head(5, len(pairs) + 1)
        )
        if index + 1 < len(pairs):
            yield joined([*items[:index], items[index + 1], items[index], *items[index + 2 :]])
        yield joined(changed(item(key.encode()) + item(value)))
        yield joined(changed(item(key) + b"\xc1" + item(value)))
        if isinstance(value, bytes | str):
            indefinite = bytes([(3 if isinstance(value, str) else 2) << 5 | 31])
            yield joined(changed(item(key) + indefinite + item(value) + b"\xff"))
    whole = joined(items)
    for end in range(len(whole)):
        yield whole[:end]


@pytest.mark.parametrize("kind", list(Kind))
def test_the_fast_path_agrees_on_every_mutation(kind: Kind) -> None:
    optional = {name: VALUES[name] for name in OPTIONAL.get(kind, ())}
    if kind in (Kind.SUB, Kind.UNSUB):  # addressed to the owner of its secure name
        optional["pat"] = f"~{VALUES['dst'].text}.chirp"
    frame = Frame(**fields(kind, **optional))
    pairs = canonical(list(frame.to_payload().items()))
    with crypto.verifying_once():  # each envelope is opened twice: verify it once
        for payload_bytes in every_mutation(pairs):
            sealed = _envelope.seal_encoded(ALICE, Purpose.FRAME, payload_bytes)
            with general_path_only():
                expected = outcome(lambda: Frame.open(sealed))  # noqa: B023
            assert outcome(lambda: Frame.open(sealed)) == expected, payload_bytes.hex()  # noqa: B023


@pytest.mark.parametrize(
    ("payload_bytes", "message"),
    [
        pytest.param(
            b"\xb8\x08" + _cbor.encode(payload())[1:],
            "not deterministically encoded",
            id="wide-map-head",
        ),
        pytest.param(
            _cbor.encode(payload()).replace(b"\x62ts\x1b", b"\x62ts\x3b"),
            "frame ts is -",
            id="negative-ts",
        ),
        pytest.param(_cbor.encode(payload()) + b"\x00", "1 trailing bytes after", id="trailing"),
        pytest.param(
            _cbor.encode(payload()).replace(b"\x64hops\x08", b"\x64hops\x18\x08"),
            "not deterministically encoded",
            id="wide-hops",
        ),
    ],
)
def test_payloads_the_fast_path_leaves_to_the_general_one(
    payload_bytes: bytes, message: str
) -> None:
    assert _frames._read_payload(payload_bytes) is None
    with pytest.raises(Malformed, match=message):
        Frame.open(_envelope.seal_encoded(ALICE, Purpose.FRAME, payload_bytes))


# -- topics and patterns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "a.b.c",
        "News.Tech_2-x",
        f"{SECURE}.chirp",
        SECURE,
        "x" * 64,
        ".".join(["w"] * 32),
        ".".join(["x" * 63] * 4),  # 255 characters
    ],
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert validate_pattern(topic) == topic  # every topic is a pattern that matches itself
    Frame(**fields(Kind.PUB, topic=topic))


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        pytest.param("", "topic is 0 characters, expected 1..255", id="empty"),
        pytest.param(
            "a..b",
            "topic 'a..b': word 2 '' is not one of words of A-Z a-z 0-9 _ - \\(1..64\\)$",
            id="empty-word",
        ),
        pytest.param(".a", "word 1 '' is not one of", id="leading-dot"),
        pytest.param("a.", "word 2 '' is not one of", id="trailing-dot"),
        pytest.param("*", "topic '\\*': word 1 '\\*' is not one of", id="star"),
        pytest.param("a.*.c", "word 2 '\\*' is not one of", id="star-word"),
        pytest.param("a.#", "word 2 '#' is not one of", id="hash"),
        pytest.param("a.b!", "word 2 'b!' is not one of", id="bang"),
        pytest.param("a b", "word 1 'a b' is not one of", id="space"),
        pytest.param("café", "word 1 'café' is not one of", id="non-ascii"),
        pytest.param("a/b", "word 1 'a/b' is not one of", id="slash"),
        pytest.param("x" * 65, "word 1 'x{65}' is not one of", id="long-word"),
        pytest.param(".".join(["w"] * 33), "topic has 33 words, limit 32", id="too-many-words"),
        pytest.param(
            ".".join(["x" * 63] * 4) + "x",
            "topic is 256 characters, expected 1..255",
            id="too-long",
        ),
        pytest.param(
            "~short", "topic '~short': a first word with '~' must be ~<node-id>", id="short-secure"
        ),
        pytest.param(
            "~short.chirp", "a first word with '~' must be ~<node-id>", id="short-secure-words"
        ),
        pytest.param(
            f"~{ALICE.node_id.text.upper()}", "a first word with '~' must be", id="uppercase-secure"
        ),
        pytest.param(f"{SECURE}x", "a first word with '~' must be", id="long-secure"),
        pytest.param(f"a.{SECURE}", f"word 2 '{SECURE}' is not one of", id="secure-not-first"),
        pytest.param("~", "a first word with '~' must be", id="tilde"),
        pytest.param(5, "topic must be text, got int", id="int"),
        pytest.param(None, "topic must be text, got NoneType", id="none"),
    ],
)
def test_invalid_topics(topic: Any, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        validate_topic(topic)


@pytest.mark.parametrize(
    "pattern",
    ["a.*.c", "#", "a.#", "*", "*.*", "#.a", "a.#.b", f"{SECURE}.chirp.#", f"{SECURE}.*", "a.b.c"],
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern
    Frame(**fields(Kind.SUB, pat=pattern))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param("", "pattern is 0 characters, expected 1..255", id="empty"),
        pytest.param(
            "a..b",
            "word 2 '' is not one of words of A-Z a-z 0-9 _ - \\(1..64\\), '\\*' or '#'$",
            id="empty-word",
        ),
        pytest.param("a*", "pattern 'a\\*': word 1 'a\\*' is not one of", id="star-in-word"),
        pytest.param("##", "word 1 '##' is not one of", id="double-hash"),
        pytest.param("a.#b", "word 2 '#b' is not one of", id="hash-in-word"),
        pytest.param("**", "word 1 '\\*\\*' is not one of", id="double-star"),
        pytest.param(
            "~short.#",
            "pattern '~short.#': a first word with '~' must be ~<node-id>",
            id="short-secure",
        ),
        pytest.param("*.~short", "word 2 '~short' is not one of", id="secure-not-first"),
        pytest.param(".".join(["*"] * 33), "pattern has 33 words, limit 32", id="too-many-words"),
        pytest.param("#" * 256, "pattern is 256 characters", id="too-long"),
        pytest.param(b"a", "pattern must be text, got bytes", id="bytes"),
    ],
)
def test_invalid_patterns(pattern: Any, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        validate_pattern(pattern)


@given(dotted(WORDS, None), dotted(WORDS, SECURE))
def test_generated_topics_are_valid(topic: str, secure_topic: str) -> None:
    assert validate_topic(topic) == topic
    assert validate_topic(secure_topic) == secure_topic


@given(dotted(PATTERN_WORDS, None))
def test_generated_patterns_are_valid(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@given(
    st.text(st.sampled_from("aZ9_-.~*#é"), max_size=12)
    | st.lists(st.sampled_from(["a", "x" * 64, "x" * 65, "", "*", SECURE]), max_size=34).map(
        ".".join
    )
)
def test_plain_topics_are_checked_at_once_as_word_by_word(text: str) -> None:
    never = re.compile(r"(?!)")  # matches nothing: every text is checked word by word
    for check in (validate_topic, validate_pattern):
        with mock.patch.object(_frames, "_PLAIN_WORDS", never):
            expected = outcome(lambda: check(text))  # noqa: B023
        assert outcome(lambda: check(text)) == expected  # noqa: B023
