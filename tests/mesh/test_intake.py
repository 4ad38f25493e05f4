"""Admission of inbound frames (mesh.admit): verification, expiry and the hop limit.

Admission decides nothing about where a frame goes: every valid kind, for any
destination, is admitted. Deliver, forward or refuse is mesh.Router.classify's decision
(tested with the Router).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_a_message_is_admitted_with_one_more_hop() -> None:
    frame = msg()
    envelope = frame.seal(ALICE)
    admitted = admit(WireFrame(2, envelope), now=NOW)
    assert admitted == Admitted(frame, envelope, 3)


def test_a_receipt_is_admitted() -> None:
    receipt = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=ALICE.node_id,
        id=bytes(16),
        ts=TS,
        exp=EXP,
        hops=1,
        dst=BOB.node_id,
        ref=bytes(range(16)),
        st="delivered",
        n=3,
    )
    admitted = admit(wire(receipt), now=NOW)
    assert isinstance(admitted, Admitted)
    assert admitted.frame == receipt
    assert admitted.hops == 1


def test_bad_signature() -> None:
    envelope = bytearray(msg().seal(ALICE))
    envelope[-1] ^= 0x01  # the last byte is the signature's
    result = rejection(admit(WireFrame(0, bytes(envelope)), now=NOW))
    assert result.code is Reason.BAD_SIGNATURE
    assert "does not verify" in result.words


@pytest.mark.parametrize("now", [EXP, EXP + 1, EXP + 3_600_000])
def test_expired(now: int) -> None:
    result = rejection(admit(wire(msg()), now=now))
    assert result.code is Reason.EXPIRED
    assert f"expired {(now - EXP) // 1000} s ago" in result.words


def test_just_before_expiry_is_admitted() -> None:
    assert isinstance(admit(wire(msg()), now=EXP - 1), Admitted)


def test_not_an_envelope_is_malformed() -> None:
    result = rejection(admit(WireFrame(0, b"\x00"), now=NOW))
    assert result.code is Reason.MALFORMED


def test_an_envelope_for_another_purpose() -> None:
    envelope = crypto.seal(ALICE, crypto.Purpose.ADDRESS, {"node": ALICE.node_id.raw})
    result = rejection(admit(WireFrame(0, envelope), now=NOW))
    assert result.code is Reason.WRONG_PURPOSE


def test_too_large_envelope() -> None:
    envelope = b"\x00" * (crypto.MAX_ENVELOPE_SIZE + 1)
    result = rejection(admit(WireFrame(0, envelope), now=NOW))
    assert result.code is Reason.TOO_LARGE


@pytest.mark.parametrize(("allowed", "made"), [(4, 4), (4, 5), (1, 1), (1, crypto.MAX_HOPS)])
def test_hop_limit(allowed: int, made: int) -> None:
    result = rejection(admit(wire(msg(hops=allowed), made), now=NOW))
    assert result.code is Reason.HOP_LIMIT
    assert result.words == f"frame has made {made} hops, its origin allows {allowed}"


def test_last_allowed_hop_is_admitted() -> None:
    admitted = admit(wire(msg(hops=4), 3), now=NOW)
    assert isinstance(admitted, Admitted)
    assert admitted.hops == 4


KINDS = [
    pytest.param({}, id="msg"),
    pytest.param({"rr": True}, id="msg-receipt"),
    pytest.param({"kind": crypto.Kind.PUB, "dst": None, "topic": "news"}, id="pub"),
    pytest.param({"kind": crypto.Kind.SUB, "dst": None, "body": None, "pat": "news.#"}, id="sub"),
    pytest.param(
        {"kind": crypto.Kind.UNSUB, "dst": None, "body": None, "pat": "news.*"}, id="unsub"
    ),
    pytest.param({"kind": crypto.Kind.ANN, "dst": None}, id="ann"),
    pytest.param({"kind": crypto.Kind.ANN, "dst": None, "hello": True}, id="ann-hello"),
    pytest.param(
        {"kind": crypto.Kind.RCPT, "body": None, "ref": bytes(16), "st": "dropped", "why": "x"},
        id="rcpt",
    ),
]


@pytest.mark.parametrize("changes", KINDS)
def test_every_kind_is_admitted(changes: dict[str, object]) -> None:
    frame = msg(**changes)
    admitted = admit(wire(frame, 1), now=NOW)
    assert admitted == Admitted(frame, frame.seal(ALICE), 2)


@pytest.mark.parametrize("dst", [BOB.node_id, CAROL.node_id, ALICE.node_id])
def test_any_destination_is_admitted(dst: crypto.NodeId) -> None:
    # Whether the frame is ours, to relay, or to refuse is the Router's to say.
    admitted = admit(wire(msg(dst=dst)), now=NOW)
    assert isinstance(admitted, Admitted)
    assert admitted.frame.dst == dst


def test_a_frame_signed_by_someone_else_than_its_origin() -> None:
    envelope = crypto.seal(CAROL, crypto.Purpose.FRAME, msg().to_payload())
    result = rejection(admit(WireFrame(0, envelope), now=NOW))
    assert result.code is Reason.MALFORMED
    assert f"signed by {CAROL.node_id.short}" in result.words


def test_a_bad_payload_is_malformed() -> None:
    payload = msg().to_payload()
    payload["rr"] = False
    envelope = crypto.seal(ALICE, crypto.Purpose.FRAME, payload)
    result = rejection(admit(WireFrame(0, envelope), now=NOW))
    assert result.code is Reason.MALFORMED
    assert "rr must be true" in result.words


@given(
    allowed=st.integers(1, crypto.MAX_HOPS),
    made=st.integers(0, 2 * crypto.MAX_HOPS),
    offset=st.integers(-TS, 2 * (EXP - TS)),
)
def test_admission_is_expiry_then_hop_limit(allowed: int, made: int, offset: int) -> None:
    now = TS + offset
    outcome = admit(wire(msg(hops=allowed), made), now=now)
    if now >= EXP:
        assert rejection(outcome).code is Reason.EXPIRED
    elif made >= allowed:
        assert rejection(outcome).code is Reason.HOP_LIMIT
    else:
        assert isinstance(outcome, Admitted)
        assert outcome.hops == made + 1
        assert outcome.hops <= outcome.frame.hops


# -- from a trusted neighbour (mesh.Policy.unverified_from) ---------------------------------


def forged(frame: crypto.Frame) -> bytes:
    """``frame`` sealed by its origin, then its signature spoiled."""
    envelope = bytearray(frame.seal(ALICE))
    envelope[-1] ^= 0x01
    return bytes(envelope)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="msg"),
        pytest.param(
            {"kind": crypto.Kind.RCPT, "body": None, "ref": bytes(16), "st": "delivered"},
            id="rcpt",
        ),
    ],
)
def test_a_message_for_another_node_goes_on_unchecked_for_a_trusted_neighbour(
    changes: dict[str, object],
) -> None:
    frame = msg(dst=CAROL.node_id, **changes)
    envelope = forged(frame)
    admitted = admit(WireFrame(1, envelope), now=NOW, unverified_for=BOB.node_id)
    assert admitted == Admitted(frame, envelope, 2, unverified=True)
    # The same frame from anyone else, or sound, is checked as ever.
    assert rejection(admit(WireFrame(1, envelope), now=NOW)).code is Reason.BAD_SIGNATURE
    sound = admit(WireFrame(1, frame.seal(ALICE)), now=NOW, unverified_for=BOB.node_id)
    assert isinstance(sound, Admitted)
    assert sound.unverified


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"dst": BOB.node_id}, id="for-us"),
        pytest.param({"kind": crypto.Kind.PUB, "dst": None, "topic": "news"}, id="pub"),
        pytest.param(
            {
                "kind": crypto.Kind.SUB,
                "dst": CAROL.node_id,
                "body": None,
                "pat": f"~{CAROL.node_id.text}.chirp",
            },
            id="addressed-sub",
        ),
        pytest.param({"kind": crypto.Kind.ANN, "dst": None}, id="ann"),
    ],
)
def test_what_a_node_acts_on_is_checked_whoever_brings_it(changes: dict[str, object]) -> None:
    envelope = forged(msg(**changes))
    outcome = admit(WireFrame(0, envelope), now=NOW, unverified_for=BOB.node_id)
    assert rejection(outcome).code is Reason.BAD_SIGNATURE


def test_unchecked_still_means_read_as_strictly() -> None:
    """Expiry, the hop limit, the envelope's shape and purpose, and the signer it names
    being the origin: all checked without the signature."""

    def trusted(wire: WireFrame) -> Admitted | Result:
        return admit(wire, now=NOW, unverified_for=BOB.node_id)

    expired = forged(msg(dst=CAROL.node_id, exp=NOW))
    assert rejection(trusted(WireFrame(0, expired))).code is Reason.EXPIRED
    spent = forged(msg(dst=CAROL.node_id, hops=2))
    assert rejection(trusted(WireFrame(2, spent))).code is Reason.HOP_LIMIT
    assert rejection(trusted(WireFrame(0, b"\x00" * 40))).code is Reason.MALFORMED
    other = crypto.seal(ALICE, "ptth/addr", {"x": 1})
    assert rejection(trusted(WireFrame(0, other))).code is Reason.WRONG_PURPOSE
    # An envelope naming Carol as its signer for a frame whose origin is Alice.
    named = crypto.seal(CAROL, crypto.Purpose.FRAME, msg(dst=CAROL.node_id).to_payload())
    outcome = rejection(trusted(WireFrame(0, named)))
    assert outcome.code is Reason.MALFORMED
    assert f"signed by {CAROL.node_id.short}" in outcome.words
