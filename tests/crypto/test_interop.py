"""Interoperability with an independent RFC 9052 implementation: pycose (test-only).

docs/architecture.md: any RFC 9052 implementation must verify our envelopes, and ours must
verify theirs.
"""

from __future__ import annotations

from typing import Any

import cbor2
import nacl.signing
import pytest
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

import crypto
from crypto import BadSignature, Frame, Identity, Kind, Purpose

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
PAYLOAD = {"t": "hello", "n": [1, 2, 3], "b": b"\x00\xff", "m": {"x": None}}


def pycose_decode(data: bytes) -> Any:
    """Decode a COSE_Sign1 with pycose, working around pycose 1.1 under cbor2 6.

    ``Sign1Message.decode`` cannot read any message under cbor2 6: cbor2 6 decodes the
    contents of a tag immutably, so the COSE array arrives as a tuple (pycose checks for
    a list and refuses it) and the unprotected map as a frozendict (pycose checks
    ``type(uhdr) is dict``). So decode with cbor2 ourselves and hand pycose the list it
    expects through ``from_cose_obj``. The protected header stays the original bytes, so
    the signature is checked over exactly what was signed.
    """
    tag = cbor2.loads(data)
    assert tag.tag == 18  # COSE_Sign1
    fields = list(tag.value)
    fields[1] = dict(fields[1])
    return Sign1Message.from_cose_obj(fields, True)


def pycose_key(identity: Identity, *, private: bool = False) -> Any:
    if private:
        return OKPKey(crv=Ed25519, d=identity.seed, x=identity.node_id.raw)
    return OKPKey(crv=Ed25519, x=identity.node_id.raw)


def pycose_sign(
    signer: Identity,
    payload: bytes,
    *,
    kid: bytes | None = None,
    purpose: str = "ptth/frame",
) -> bytes:
    message = Sign1Message(
        phdr={
            Algorithm: EdDSA,
            KID: signer.node_id.raw if kid is None else kid,
            ContentType: purpose,
        },
        payload=payload,
    )
    message.key = pycose_key(signer, private=True)
    encoded: bytes = message.encode()
    return encoded


def test_the_workaround_is_still_needed() -> None:
    # If this starts failing, pycose reads cbor2 6 output again: drop the workaround.
    with pytest.raises(TypeError):
        Sign1Message.decode(crypto.seal(ALICE, Purpose.FRAME, PAYLOAD))


# -- (a) pycose verifies our envelopes -------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_pycose_verifies_our_envelope(purpose: Purpose) -> None:
    message = pycose_decode(crypto.seal(ALICE, purpose, PAYLOAD))
    message.key = pycose_key(ALICE)
    assert message.verify_signature()
    assert message.get_attr(Algorithm) is EdDSA
    assert message.get_attr(KID) == ALICE.node_id.raw
    assert message.get_attr(ContentType) == str(purpose)
    # Protected, not merely present: the unprotected header is empty.
    assert message.phdr[KID] == ALICE.node_id.raw
    assert message.uhdr == {}
    assert cbor2.loads(message.payload) == PAYLOAD


def test_pycose_verifies_our_frame() -> None:
    frame = Frame(
        kind=Kind.PUB,
        src=ALICE.node_id,
        id=bytes(16),
        ts=1_700_000_000_000,
        exp=1_700_000_060_000,
        hops=4,
        topic="news.tech",
        body=b"hello",
    )
    message = pycose_decode(frame.seal(ALICE))
    message.key = pycose_key(ALICE)
    assert message.verify_signature()
    assert cbor2.loads(message.payload) == frame.to_payload()


def test_pycose_refuses_our_envelope_with_the_wrong_key() -> None:
    # The check above can fail: pycose does refuse a key that did not sign.
    message = pycose_decode(crypto.seal(ALICE, Purpose.FRAME, PAYLOAD))
    message.key = pycose_key(BOB)
    assert not message.verify_signature()


# -- (b) we verify pycose's envelopes --------------------------------------------------


def test_we_open_a_pycose_envelope() -> None:
    payload = crypto._cbor.encode(PAYLOAD)
    data = pycose_sign(ALICE, payload)
    assert crypto.open(data, Purpose.FRAME) == (ALICE.node_id, PAYLOAD)
    with pytest.raises(crypto.WrongPurpose):
        crypto.open(data, Purpose.ADDRESS)


def test_we_open_a_pycose_frame() -> None:
    frame = Frame(
        kind=Kind.MSG,
        src=ALICE.node_id,
        dst=BOB.node_id,
        id=bytes(range(16)),
        ts=1_700_000_000_000,
        exp=1_700_000_060_000,
        hops=4,
        body=b"hi bob",
    )
    data = pycose_sign(ALICE, crypto._cbor.encode(frame.to_payload()))
    assert Frame.open(data, now=frame.ts) == frame


def test_pycose_key_from_a_nacl_signing_key() -> None:
    # The key pair as PyNaCl makes it, independent of crypto.Identity.
    signing_key = nacl.signing.SigningKey(bytes(range(100, 132)))
    message = Sign1Message(
        phdr={Algorithm: EdDSA, KID: bytes(signing_key.verify_key), ContentType: "ptth/frame"},
        payload=cbor2.dumps(PAYLOAD, canonical=True),
    )
    message.key = OKPKey(crv=Ed25519, d=bytes(signing_key), x=bytes(signing_key.verify_key))
    opened = crypto.open(message.encode(), Purpose.FRAME)
    assert opened.signer.raw == bytes(signing_key.verify_key)
    assert opened.payload == PAYLOAD


# -- (c) we refuse pycose's bad envelopes ----------------------------------------------


def test_we_refuse_a_pycose_envelope_signed_with_another_key() -> None:
    # Bob's key signs, but the kid names Alice.
    data = pycose_sign(BOB, crypto._cbor.encode(PAYLOAD), kid=ALICE.node_id.raw)
    with pytest.raises(BadSignature, match=f"does not verify for node {ALICE.node_id.short}"):
        crypto.open(data, Purpose.FRAME)


def test_we_refuse_a_pycose_envelope_with_a_tampered_payload() -> None:
    original = crypto._cbor.encode(PAYLOAD)
    message = pycose_decode(pycose_sign(ALICE, original))

    def reassemble(payload: bytes) -> bytes:
        # The same protected bytes and signature around another payload, by pycose.
        copy = Sign1Message(phdr_encoded=message.phdr_encoded, payload=payload)
        copy.signature = message.signature
        encoded: bytes = copy.encode(sign=False)
        return encoded

    assert crypto.open(reassemble(original), Purpose.FRAME).payload == PAYLOAD
    tampered = crypto._cbor.encode({**PAYLOAD, "t": "hellO"})
    with pytest.raises(BadSignature, match=f"does not verify for node {ALICE.node_id.short}"):
        crypto.open(reassemble(tampered), Purpose.FRAME)


def test_we_refuse_a_pycose_envelope_with_a_non_deterministic_payload() -> None:
    # Correctly signed by pycose, but the payload's keys are not in deterministic order.
    payload = cbor2.dumps({"b": 1, "a": 2})
    assert payload != crypto._cbor.encode({"b": 1, "a": 2})
    with pytest.raises(crypto.Malformed, match="not deterministically encoded"):
        crypto.open(pycose_sign(ALICE, payload), Purpose.FRAME)
