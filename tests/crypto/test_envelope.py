"""COSE_Sign1 envelopes (crypto.seal / crypto.open): round-trips, tampering, bounds.

Envelopes that are wrong in one precise way are built by hand here: the protected
header, payload bytes and Sig_structure (RFC 9052 §4.4) are encoded directly with cbor2,
and signed with the identity, so each refusal is shown to come from the check that names
it and not from a signature that happens not to verify.
"""

from __future__ import annotations

from typing import Any

import cbor2
import nacl.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from crypto import (
    MAX_ENVELOPE_SIZE,
    BadSignature,
    CryptoError,
    Identity,
    Malformed,
    NodeId,
    Opened,
    Purpose,
    TooLarge,
    WrongPurpose,
    _cbor,
    _envelope,
)
from tests.strategies import cbor_values

IDENTITIES = st.binary(min_size=32, max_size=32).map(Identity)
PAYLOADS = st.dictionaries(st.text(max_size=10), cbor_values(), max_size=6)
PURPOSES = st.sampled_from(Purpose) | st.text(min_size=1, max_size=20)

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))


def protected_header(identity: Identity = ALICE, purpose: str = Purpose.FRAME) -> bytes:
    return cbor2.dumps({1: -8, 3: purpose, 4: identity.node_id.raw}, canonical=True)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def envelope(
    *,
    identity: Identity = ALICE,
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = b"\xa1\x61a\x01",
    signature: Any = None,
    tag: int = 18,
    extra: tuple[Any, ...] = (),
) -> bytes:
    """A COSE_Sign1 built by hand; by default signed correctly by ``identity``."""
    if protected is None:
        protected = protected_header(identity)
    if unprotected is None:
        unprotected = {}
    if signature is None:
        signature = identity.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected, payload, signature, *extra]))


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _no_decoder(*args: object, **kwargs: object) -> Any:
    raise AssertionError("the decoder must not be reached")


# -- round trips -----------------------------------------------------------------------


@given(IDENTITIES, PURPOSES, PAYLOADS)
def test_round_trip(identity: Identity, purpose: str, payload: dict[str, Any]) -> None:
    data = crypto.seal(identity, purpose, payload)
    opened = crypto.open(data, purpose)
    assert opened == Opened(identity.node_id, payload)
    assert opened.signer == identity.node_id
    assert opened.payload == payload
    assert crypto.seal(identity, purpose, payload) == data  # Ed25519 is deterministic
    assert crypto.open(data, str(purpose)) == opened


def test_hand_built_envelope_opens() -> None:
    # The helper makes valid envelopes, so every refusal below is due to its one change.
    assert crypto.open(envelope(), Purpose.FRAME) == (ALICE.node_id, {"a": 1})
    assert envelope() == crypto.seal(ALICE, Purpose.FRAME, {"a": 1})


def test_envelope_layout() -> None:
    tag = cbor2.loads(crypto.seal(ALICE, Purpose.ADDRESS, {"x": b"y"}))
    assert tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    assert cbor2.loads(protected) == {1: -8, 3: "ptth/addr", 4: ALICE.node_id.raw}
    assert unprotected == {}
    assert payload == _cbor.encode({"x": b"y"})
    ALICE.node_id.verify(sig_structure(protected, payload), signature)


SIZES_AT_CBOR_LENGTH_BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536]


@pytest.mark.parametrize("size", SIZES_AT_CBOR_LENGTH_BOUNDARIES)
def test_hand_written_envelopes_are_what_cbor2_would_write(size: int) -> None:
    # seal() writes the envelope and the Sig_structure by hand: the same bytes as the
    # deterministic encoding, whatever the lengths' heads.
    payload = bytes(size)
    protected = protected_header()
    assert _envelope._sig_structure(protected, payload) == sig_structure(protected, payload)
    data = _envelope.seal_encoded(ALICE, Purpose.FRAME, payload)
    assert data == envelope(payload=payload)
    assert data == _cbor.encode(
        cbor2.CBORTag(18, [protected, {}, payload, ALICE.sign(sig_structure(protected, payload))])
    )


def _long_head(data: bytes) -> bytes:
    """``data`` as a CBOR byte string whose length is in 2 bytes (not shortest form)."""
    return b"\x59" + len(data).to_bytes(2, "big") + data


@pytest.mark.parametrize(
    "data",
    [
        # Each is not in the shape seal() writes, so open() reads it the general way.
        pytest.param(envelope(unprotected={"note": 1}), id="an unprotected header"),
        pytest.param(
            b"\xd2\x84"
            + _long_head(protected_header())
            + b"\xa0\x44\xa1\x61a\x01"
            + b"\x58\x40"
            + ALICE.sign(sig_structure(protected_header(), b"\xa1\x61a\x01")),
            id="a protected header's length not in shortest form",
        ),
        pytest.param(
            envelope(protected=cbor2.dumps({4: ALICE.node_id.raw, 1: -8, 3: "ptth/frame"})),
            id="protected header keys out of order",
        ),
        pytest.param(
            envelope(
                protected=cbor2.dumps(
                    {1: -8, 3: "ptth/frame", 4: ALICE.node_id.raw, 5: b""}, canonical=True
                )
            ),
            id="another header beside the three",
        ),
    ],
)
def test_envelopes_in_other_shapes_open_the_general_way(data: bytes) -> None:
    assert crypto.open(data, Purpose.FRAME) == (ALICE.node_id, {"a": 1})


def test_a_long_purpose_is_read_the_general_way() -> None:
    # A purpose of 24 bytes or more has a two-byte head: not the shape read by hand.
    purpose = "ptth/" + "x" * 40
    data = crypto.seal(ALICE, purpose, {"a": 1})
    assert crypto.open(data, purpose) == (ALICE.node_id, {"a": 1})
    with pytest.raises(WrongPurpose, match="envelope is for 'ptth/x"):
        crypto.open(data, Purpose.FRAME)


# -- tampering and fuzzing -------------------------------------------------------------


@given(PAYLOADS, st.data())
def test_flipping_any_byte_fails(payload: dict[str, Any], data: st.DataObject) -> None:
    sealed = crypto.seal(ALICE, Purpose.FRAME, payload)
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(sealed)
    tampered[index] ^= mask
    with pytest.raises(CryptoError):
        crypto.open(bytes(tampered), Purpose.FRAME)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    try:
        crypto.open(data, Purpose.FRAME)
    except CryptoError:
        pass
    else:
        raise AssertionError(f"{data.hex()} opened")


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_garbage_after_a_valid_prefix_raises_only_our_errors(head: bytes, tail: bytes) -> None:
    sealed = crypto.seal(ALICE, Purpose.FRAME, {"k": head})
    data = sealed[: len(tail)] + tail
    try:
        crypto.open(data, Purpose.FRAME)
    except CryptoError:
        pass


@given(PAYLOADS)
def test_every_truncation_is_refused(payload: dict[str, Any]) -> None:
    sealed = crypto.seal(ALICE, Purpose.FRAME, payload)
    for end in range(len(sealed)):
        with pytest.raises(Malformed):
            crypto.open(sealed[:end], Purpose.FRAME)


@pytest.mark.parametrize("extra", [b"\x00", b"\xd2", b"\xff" * 3])
def test_trailing_bytes_are_refused(extra: bytes) -> None:
    with pytest.raises(Malformed, match=f"envelope has {len(extra)} trailing bytes"):
        crypto.open(envelope() + extra, Purpose.FRAME)


def test_one_byte_at_a_time() -> None:
    # Every prefix is refused; only the whole envelope opens (h11 test_io style).
    sealed = crypto.seal(ALICE, Purpose.FRAME, {"a": [1, 2, {"b": b"c"}]})
    for end in range(len(sealed)):
        with pytest.raises(Malformed):
            crypto.open(sealed[:end], Purpose.FRAME)
    assert crypto.open(sealed, Purpose.FRAME).payload == {"a": [1, 2, {"b": b"c"}]}


# -- purpose ---------------------------------------------------------------------------


@pytest.mark.parametrize("made_for", list(Purpose))
@pytest.mark.parametrize("asked_for", [*Purpose, "ptth/other", ""])
def test_wrong_purpose_is_refused(made_for: Purpose, asked_for: str) -> None:
    sealed = crypto.seal(ALICE, made_for, {"a": 1})
    if asked_for == made_for:
        assert crypto.open(sealed, asked_for).signer == ALICE.node_id
        return
    with pytest.raises(
        WrongPurpose, match=f"envelope is for '{made_for}', expected '{asked_for}'"
    ) as info:
        crypto.open(sealed, asked_for)
    assert info.value.status_hint == 400


def test_purpose_is_checked_before_the_signature() -> None:
    # A bad signature for another purpose is still "wrong purpose": the cheap check first.
    data = envelope(protected=protected_header(purpose="ptth/addr"), signature=b"\x00" * 64)
    with pytest.raises(WrongPurpose):
        crypto.open(data, Purpose.FRAME)
    with pytest.raises(BadSignature):
        crypto.open(data, Purpose.ADDRESS)


# -- size ------------------------------------------------------------------------------


def test_oversized_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cbor, "_decoder", _no_decoder)
    monkeypatch.setattr(_cbor, "check_bounds", _no_decoder)
    monkeypatch.setattr(cbor2, "CBORDecoder", _no_decoder)
    monkeypatch.setattr(cbor2, "loads", _no_decoder)
    data = b"\xd2\x84" + b"\x00" * MAX_ENVELOPE_SIZE
    with pytest.raises(TooLarge, match="envelope is 1048578 bytes, limit 1048576") as info:
        crypto.open(data, Purpose.FRAME)
    assert info.value.status_hint == 413
    assert isinstance(info.value, Malformed)


def test_max_size_is_the_callers_limit() -> None:
    sealed = crypto.seal(ALICE, Purpose.FRAME, {"a": b"x" * 100})
    assert crypto.open(sealed, Purpose.FRAME, max_size=len(sealed)).payload == {"a": b"x" * 100}
    with pytest.raises(TooLarge, match=f"envelope is {len(sealed)} bytes, limit {len(sealed) - 1}"):
        crypto.open(sealed, Purpose.FRAME, max_size=len(sealed) - 1)


def test_largest_envelope_opens() -> None:
    payload = {"b": b""}
    overhead = len(crypto.seal(ALICE, Purpose.FRAME, payload))
    # The body's length and the payload's length each grow from 1 to 5 bytes.
    payload = {"b": b"\x00" * (MAX_ENVELOPE_SIZE - overhead - 8)}
    sealed = crypto.seal(ALICE, Purpose.FRAME, payload)
    assert len(sealed) == MAX_ENVELOPE_SIZE
    assert crypto.open(sealed, Purpose.FRAME).payload == payload


def test_colliding_int_keys_are_refused_by_check_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Integer hashes are not keyed (hash(k) is k mod 2**61 - 1), so crafted int keys
    # collide and a big map of them is slow to build. COSE header labels are ints, so
    # check_bounds must refuse such a map on sight, before cbor2 builds anything.
    # (A decode that takes text/bytes keys only may run first: it refuses the first
    # integer key before it has built anything. A decode that takes integer keys must
    # never see this input.)
    data = envelope(unprotected=dict.fromkeys(range(100000), 0))
    assert len(data) < MAX_ENVELOPE_SIZE
    real_decoder = _cbor._decoder

    def strict_only(fp: Any, allowed_tags: Any, *, any_keys: bool) -> Any:
        assert not any_keys, "a decoder taking integer keys must not be reached"
        return real_decoder(fp, allowed_tags, any_keys=any_keys)

    monkeypatch.setattr(_cbor, "_decoder", strict_only)
    with pytest.raises(Malformed, match="envelope has a map of 100000 items, limit 32"):
        crypto.open(data, Purpose.FRAME)


# -- the COSE structure ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            cbor2.dumps([b"", {}, b"", b""]), "not a COSE_Sign1 \\(CBOR tag 18\\)", id="untagged"
        ),
        pytest.param(cbor2.dumps(b"x"), "not a COSE_Sign1", id="bytes"),
        pytest.param(envelope(tag=17), "CBOR tag 17 is not allowed", id="tag-17"),
        pytest.param(envelope(tag=98), "CBOR tag 98 is not allowed", id="cose-sign"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(18, 5)), "array of 4, got int", id="not-array"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(18, [1, 2, 3])), "array of 4, got 3", id="three"),
        pytest.param(envelope(extra=(b"",)), "array of 4, got 5", id="five"),
        pytest.param(
            cbor2.dumps(cbor2.CBORTag(18, cbor2.CBORTag(18, []))),
            "array of 4, got CBORTag",
            id="tag-in-tag",
        ),
        pytest.param(
            envelope(protected=b""),
            "protected header is not a non-empty byte",
            id="empty-protected",
        ),
        pytest.param(
            envelope(protected={1: -8}),
            "protected header is not a non-empty byte",
            id="protected-map",
        ),
        pytest.param(
            envelope(unprotected=[]), "unprotected header is not a map", id="unprotected-array"
        ),
        pytest.param(
            envelope(unprotected=b""), "unprotected header is not a map", id="unprotected-bytes"
        ),
        pytest.param(
            envelope(payload=None, signature=b"\x00" * 64),
            "payload is not a byte string \\(detached payloads unsupported\\)",
            id="detached",
        ),
        pytest.param(
            envelope(payload="text", signature=b"\x00" * 64),
            "payload is not a byte string",
            id="text-payload",
        ),
        pytest.param(
            envelope(signature=b"\x00" * 63),
            "signature is 63, expected 64 bytes",
            id="short-signature",
        ),
        pytest.param(
            envelope(signature=b"\x00" * 65),
            "signature is 65, expected 64 bytes",
            id="long-signature",
        ),
        pytest.param(
            envelope(signature="x" * 64), "signature is str, expected 64 bytes", id="text-signature"
        ),
        pytest.param(envelope(unprotected={1: nested(16)}), "nests deeper than 16", id="deep"),
        pytest.param(
            envelope(unprotected={"k": cbor2.CBORTag(1, 0)}),
            "CBOR tag 1 is not allowed",
            id="tag-1-unprotected",
        ),
        pytest.param(b"\xd2\x9f\xff", "indefinite length", id="indefinite"),
    ],
)
def test_malformed_structure_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message) as info:
        crypto.open(data, Purpose.FRAME)
    assert info.value.status_hint == 400


def test_unprotected_header_is_ignored() -> None:
    # Not signed, so it must not matter: not even a kid there names the signer.
    data = envelope(unprotected={4: BOB.node_id.raw, 3: "ptth/addr", "x": [1, {"y": 2}]})
    assert crypto.open(data, Purpose.FRAME) == (ALICE.node_id, {"a": 1})


def protected_map(headers: Any) -> bytes:
    return envelope(protected=cbor2.dumps(headers))


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        pytest.param([1, -8], Malformed, "protected header is not a map", id="array"),
        pytest.param("text", Malformed, "protected header is not a map", id="text"),
        pytest.param(
            {1: -8, 2: [99], 3: "ptth/frame", 4: ALICE.node_id.raw},
            Malformed,
            "critical headers \\(crit\\)",
            id="crit",
        ),
        pytest.param(
            {3: "ptth/frame", 4: ALICE.node_id.raw},
            Malformed,
            "alg is None, expected EdDSA \\(-8\\)",
            id="no-alg",
        ),
        pytest.param(
            {1: -7, 3: "ptth/frame", 4: ALICE.node_id.raw},
            Malformed,
            "alg is -7, expected EdDSA \\(-8\\)",
            id="es256",
        ),
        pytest.param(
            {1: "EdDSA", 3: "ptth/frame", 4: ALICE.node_id.raw},
            Malformed,
            "alg is 'EdDSA'",
            id="alg-text",
        ),
        pytest.param(
            {1: -8, 3: "ptth/frame"}, Malformed, "protected header has no kid", id="no-kid"
        ),
        pytest.param(
            {1: -8, 3: "ptth/frame", 4: "kid"},
            Malformed,
            "protected header has no kid",
            id="text-kid",
        ),
        pytest.param(
            {1: -8, 3: "ptth/frame", 4: b"\x01" * 31},
            Malformed,
            "a node id is 32 bytes, got 31",
            id="short-kid",
        ),
        pytest.param(
            {1: -8, 4: ALICE.node_id.raw},
            Malformed,
            "has no content type \\(its purpose\\)",
            id="no-purpose",
        ),
        pytest.param(
            {1: -8, 3: 60, 4: ALICE.node_id.raw},
            Malformed,
            "has no content type",
            id="coap-content-format",
        ),
        pytest.param(
            {1: -8, 3: "ptth/frame", 4: ALICE.node_id.raw, 5: b"x" * 230},
            TooLarge,
            "protected header is 2\\d\\d bytes, limit 256",
            id="too-large",
        ),
        pytest.param(
            {1: -8, 3: "ptth/frame", 4: ALICE.node_id.raw, 7: cbor2.CBORTag(18, 0)},
            Malformed,
            "protected header is not valid CBOR: CBOR tag 18",
            id="tag",
        ),
        pytest.param(
            # The 256-byte limit bounds every map in a protected header (no scan is
            # needed); a header of many labels is refused for what it holds.
            dict.fromkeys(range(33), 0),
            Malformed,
            "critical headers",
            id="many",
        ),
    ],
)
def test_bad_protected_headers_are_refused(
    headers: Any, error: type[CryptoError], message: str
) -> None:
    with pytest.raises(error, match=message):
        crypto.open(protected_map(headers), Purpose.FRAME)


def test_protected_header_trailing_bytes_and_duplicates() -> None:
    good = protected_header()
    with pytest.raises(Malformed, match="protected header has 1 trailing bytes"):
        crypto.open(envelope(protected=good + b"\x00"), Purpose.FRAME)
    duplicated = b"\xa4" + good[1:] + b"\x01\x27"  # alg (1: -8) a second time
    with pytest.raises(Malformed, match=r"protected header is not valid CBOR: .*Duplicate map key"):
        crypto.open(envelope(protected=duplicated), Purpose.FRAME)


def test_protected_header_need_not_be_deterministic() -> None:
    # RFC 9052 signs the protected bytes as they are; other encoders (pycose) put kid
    # before content type. Only the payload has to be deterministic (docs/architecture.md).
    protected = cbor2.dumps({4: ALICE.node_id.raw, 1: -8, 3: "ptth/frame"})
    assert protected != protected_header()
    assert crypto.open(envelope(protected=protected), Purpose.FRAME).signer == ALICE.node_id


# -- signatures ------------------------------------------------------------------------


def test_bad_signatures_are_refused() -> None:
    payload = b"\xa1\x61a\x01"
    protected = protected_header()
    forged = [
        b"\x00" * 64,
        BOB.sign(sig_structure(protected, payload)),  # right structure, other key
        ALICE.sign(sig_structure(protected, b"\xa1\x61a\x02")),  # other payload
        ALICE.sign(sig_structure(protected_header(purpose="ptth/addr"), payload)),
        ALICE.sign(cbor2.dumps(["Signature", protected, b"", payload])),  # COSE_Sign context
        ALICE.sign(cbor2.dumps(["Signature1", protected, b"aad", payload])),  # external aad
        ALICE.sign(payload),  # the payload alone
    ]
    for signature in forged:
        with pytest.raises(
            BadSignature, match=f"does not verify for node {ALICE.node_id.short}"
        ) as info:
            crypto.open(envelope(payload=payload, signature=signature), Purpose.FRAME)
        assert isinstance(info.value.__cause__, nacl.exceptions.BadSignatureError)
        assert info.value.status_hint == 401


def test_kid_of_another_node_is_refused() -> None:
    # Alice signs, but names Bob as the signer: Bob's key does not verify it.
    protected = protected_header(BOB)
    signature = ALICE.sign(sig_structure(protected, b"\xa1\x61a\x01"))
    with pytest.raises(BadSignature, match=f"for node {BOB.node_id.short}"):
        crypto.open(envelope(protected=protected, signature=signature), Purpose.FRAME)


def test_kid_that_is_not_a_curve_point_is_refused() -> None:
    kid = b"\xff" * 32
    data = envelope(protected=cbor2.dumps({1: -8, 3: "ptth/frame", 4: kid}), signature=b"\x01" * 64)
    with pytest.raises(BadSignature, match=f"for node {NodeId(kid).short}"):
        crypto.open(data, Purpose.FRAME)


# -- the payload -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(
            b"\xa2\x61b\x01\x61a\x02",
            "envelope payload is not deterministically encoded",
            id="unsorted-keys",
        ),
        pytest.param(
            b"\xa1\x61a\x18\x01",
            "envelope payload is not deterministically encoded",
            id="non-shortest-int",
        ),
        pytest.param(
            b"\xa1\x61a\xfa\x3f\xc0\x00\x00",
            "envelope payload is not deterministically encoded",
            id="non-shortest-float",
        ),
        pytest.param(
            b"\xb8\x01\x61a\x01",
            "envelope payload is not deterministically encoded",
            id="non-shortest-map",
        ),
        pytest.param(
            b"\xa1\x78\x01a\x01",
            "envelope payload is not deterministically encoded",
            id="non-shortest-key",
        ),
        pytest.param(b"\x82\x01\x02", "envelope payload is a list, expected a map", id="array"),
        pytest.param(b"\x01", "envelope payload is a int, expected a map", id="int"),
        pytest.param(b"", "envelope payload is empty", id="empty"),
        pytest.param(b"\xa1\x61a", "envelope payload is not valid CBOR", id="truncated"),
        pytest.param(b"\xa1\x61a\x01\x00", "envelope payload has 1 trailing bytes", id="trailing"),
        pytest.param(
            b"\xa1\x01\x01", "envelope payload is not valid CBOR: .*map key must be", id="int-key"
        ),
        pytest.param(
            b"\xa2\x61a\x01\x61a\x02",
            "envelope payload is not valid CBOR: .*Duplicate",
            id="duplicate",
        ),
        pytest.param(
            b"\xbf\x61a\x01\xff",
            "envelope payload is not valid CBOR: .*indefinite",
            id="indefinite",
        ),
        pytest.param(
            b"\xa1\x61a" + b"\x81" * 16 + b"\x00",
            "envelope payload is not valid CBOR: .*depth",
            id="deep",
        ),
        pytest.param(
            b"\xa1\x61a\xd2\x80",
            "envelope payload is not valid CBOR: CBOR tag 18 is not allowed",
            id="tag-18",
        ),
    ],
)
def test_bad_payloads_are_refused_even_when_signed(payload: bytes, message: str) -> None:
    # Signed correctly by hand over exactly these bytes: only the payload check refuses.
    with pytest.raises(Malformed, match=message):
        crypto.open(envelope(payload=payload), Purpose.FRAME)


@pytest.mark.parametrize("tag", [*_cbor._BUILTIN_TAGS, 18, 999])
def test_tags_in_the_payload_are_refused_even_when_signed(tag: int) -> None:
    payload = cbor2.dumps({"a": cbor2.CBORTag(tag, 0)}, canonical=True)
    with pytest.raises(
        Malformed, match=f"envelope payload is not valid CBOR: CBOR tag {tag} is not"
    ):
        crypto.open(envelope(payload=payload), Purpose.FRAME)


# -- seal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param([1, 2], "envelope payload must be a map, got list", id="list"),
        pytest.param(b"x", "envelope payload must be a map, got bytes", id="bytes"),
        pytest.param(
            {1: "a"}, "envelope payload is not valid CBOR: .*map key must be", id="int-key"
        ),
        pytest.param({"a": 2**64}, "CBOR tag 2 is not allowed", id="bignum"),
        pytest.param({"a": -(2**64) - 1}, "CBOR tag 3 is not allowed", id="negative-bignum"),
        pytest.param({"a": {1, 2}}, "CBOR tag 258 is not allowed", id="set"),
        pytest.param({"a": cbor2.CBORTag(18, 0)}, "CBOR tag 18 is not allowed", id="tag"),
        pytest.param({"a": nested(16)}, "depth", id="deep"),
        pytest.param({"a": object()}, "cannot encode", id="object"),
        pytest.param(
            {"a": b"\x00" * MAX_ENVELOPE_SIZE},
            "envelope payload is 10485\\d\\d bytes, limit 1048576",
            id="too-large",
        ),
    ],
)
def test_seal_refuses_what_open_would_refuse(payload: Any, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        crypto.seal(ALICE, Purpose.FRAME, payload)


# -- the foreign errors we translate ---------------------------------------------------


def test_foreign_errors_are_translated_with_their_cause() -> None:
    # cbor2 and PyNaCl errors surface as ours, with the original kept as __cause__.
    with pytest.raises(Malformed) as malformed:
        crypto.open(envelope(payload=b"\x1c"), Purpose.FRAME)
    assert isinstance(malformed.value.__cause__, cbor2.CBORDecodeError)
    with pytest.raises(BadSignature) as bad:
        crypto.open(envelope(signature=b"\x00" * 64), Purpose.FRAME)
    assert isinstance(bad.value.__cause__, nacl.exceptions.BadSignatureError)
