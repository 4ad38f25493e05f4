"""Admission of inbound frames (mesh.admit): what a node takes and why it refuses."""

from __future__ import annotations

import dataclasses

import pytest

import crypto
from mesh import Admitted, Reason, Result, WireFrame, admit

ALICE = crypto.Identity(bytes(range(32)))
BOB = crypto.Identity(bytes(range(1, 33)))
CAROL = crypto.Identity(bytes(range(2, 34)))
TS = 1_700_000_000_000
EXP = TS + 60_000
NOW = TS + 1000


def msg(**changes: object) -> crypto.Frame:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=ALICE.node_id,
        id=bytes(range(16)),
        ts=TS,
        exp=EXP,
        hops=4,
        dst=BOB.node_id,
        body=b"hello",
    )
    return dataclasses.replace(frame, **changes)  # type: ignore[arg-type]


def wire(frame: crypto.Frame, hops: int = 0) -> WireFrame:
    return WireFrame(hops, frame.seal(ALICE))


def rejection(outcome: Admitted | Result) -> Result:
    assert isinstance(outcome, Result), outcome
    assert not outcome.ok
    return outcome


def test_a_message_for_us_is_admitted_with_one_more_hop() -> None:
    frame = msg()
    envelope = frame.seal(ALICE)
    admitted = admit(WireFrame(2, envelope), local=BOB.node_id, now=NOW)
    assert admitted == Admitted(frame, envelope, 3)


def test_a_receipt_for_us_is_admitted() -> None:
    receipt = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=ALICE.node_id,
        id=bytes(16),
        ts=TS,
        exp=EXP,
        hops=1,
        dst=BOB.node_id,
        ref=bytes(range(16)),
    )
    admitted = admit(wire(receipt), local=BOB.node_id, now=NOW)
    assert isinstance(admitted, Admitted)
    assert admitted.frame == receipt
    assert admitted.hops == 1


def test_bad_signature() -> None:
    envelope = bytearray(msg().seal(ALICE))
    envelope[-1] ^= 0x01  # the last byte is the signature's
    result = rejection(admit(WireFrame(0, bytes(envelope)), local=BOB.node_id, now=NOW))
    assert result.code is Reason.BAD_SIGNATURE
    assert "does not verify" in result.words


@pytest.mark.parametrize("now", [EXP, EXP + 1, EXP + 3_600_000])
def test_expired(now: int) -> None:
    result = rejection(admit(wire(msg()), local=BOB.node_id, now=now))
    assert result.code is Reason.EXPIRED
    assert f"expired {(now - EXP) // 1000} s ago" in result.words


def test_just_before_expiry_is_admitted() -> None:
    assert isinstance(admit(wire(msg()), local=BOB.node_id, now=EXP - 1), Admitted)


def test_not_an_envelope_is_malformed() -> None:
    result = rejection(admit(WireFrame(0, b"\x00"), local=BOB.node_id, now=NOW))
    assert result.code is Reason.MALFORMED


def test_an_envelope_for_another_purpose() -> None:
    envelope = crypto.seal(ALICE, crypto.Purpose.ADDRESS, {"node": ALICE.node_id.raw})
    result = rejection(admit(WireFrame(0, envelope), local=BOB.node_id, now=NOW))
    assert result.code is Reason.WRONG_PURPOSE


def test_too_large_envelope() -> None:
    envelope = b"\x00" * (crypto.MAX_ENVELOPE_SIZE + 1)
    result = rejection(admit(WireFrame(0, envelope), local=BOB.node_id, now=NOW))
    assert result.code is Reason.TOO_LARGE


@pytest.mark.parametrize(("allowed", "made"), [(4, 4), (4, 5), (1, 1), (1, crypto.MAX_HOPS)])
def test_hop_limit(allowed: int, made: int) -> None:
    result = rejection(admit(wire(msg(hops=allowed), made), local=BOB.node_id, now=NOW))
    assert result.code is Reason.HOP_LIMIT
    assert result.words == f"frame has made {made} hops, its origin allows {allowed}"


def test_last_allowed_hop_is_admitted() -> None:
    admitted = admit(wire(msg(hops=4), 3), local=BOB.node_id, now=NOW)
    assert isinstance(admitted, Admitted)
    assert admitted.hops == 4


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": crypto.Kind.PUB, "dst": None, "topic": "news"},
        {"kind": crypto.Kind.SUB, "dst": None, "body": None, "pat": "news.#"},
        {"kind": crypto.Kind.UNSUB, "dst": None, "body": None, "pat": "news.*"},
        {"kind": crypto.Kind.ANN, "dst": None},
    ],
)
def test_kinds_this_node_does_not_take_yet(changes: dict[str, object]) -> None:
    frame = msg(**changes)
    result = rejection(admit(wire(frame), local=BOB.node_id, now=NOW))
    assert result.code is Reason.NO_ROUTE
    assert result.words == f"this node does not take {frame.kind} frames yet"


@pytest.mark.parametrize("kind", [crypto.Kind.MSG, crypto.Kind.RCPT])
def test_a_frame_for_another_node_is_no_route(kind: crypto.Kind) -> None:
    if kind is crypto.Kind.MSG:
        frame = msg(dst=CAROL.node_id)
    else:
        frame = msg(kind=kind, dst=CAROL.node_id, body=None, ref=bytes(16))
    result = rejection(admit(wire(frame), local=BOB.node_id, now=NOW))
    assert result.code is Reason.NO_ROUTE
    assert CAROL.node_id.short in result.words
    assert "does not relay yet" in result.words


def test_a_frame_from_us_to_us_is_admitted() -> None:
    frame = msg(src=BOB.node_id)
    admitted = admit(WireFrame(0, frame.seal(BOB)), local=BOB.node_id, now=NOW)
    assert isinstance(admitted, Admitted)
