"""Signed address records and their ``ptth:`` tokens (crypto._address)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from crypto import (
    MAX_ENDPOINTS,
    TOKEN_PREFIX,
    AddressRecord,
    BadSignature,
    CryptoError,
    Expired,
    Identity,
    Malformed,
    NodeId,
    Purpose,
    SignedAddress,
    Stale,
    TooLarge,
    WrongPurpose,
    parse_token,
    sign_address,
    validate_endpoint,
)
from crypto._address import MAX_NAME_LENGTH, MAX_SEQ, MAX_TOKEN_LENGTH, MAX_URL_LENGTH

NOW = 1_700_000_000_000  # ms since the epoch
LATER = NOW + 3_600_000
ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# -- strategies ----------------------------------------------------------------------

LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(
    st.lists(LABELS, min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
PATHS = st.one_of(
    st.just(""),
    st.just("/"),
    st.binary(min_size=32, max_size=32).map(lambda raw: f"/n/{NodeId(raw).text}"),
    st.from_regex(r"(/[A-Za-z0-9._~-]{1,10}){1,3}", fullmatch=True),
)
ENDPOINTS = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    HOSTS,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}")),
    PATHS,
)
NAMES = st.one_of(
    st.none(),
    st.text(
        st.characters(
            exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
            include_characters=" ",
        ),
        min_size=1,
        max_size=MAX_NAME_LENGTH,
    ),
)
IDENTITIES = st.binary(min_size=32, max_size=32).map(Identity)
FIELDS = st.fixed_dictionaries(
    {
        "seq": st.integers(0, MAX_SEQ),
        "endpoints": st.lists(ENDPOINTS, min_size=1, max_size=MAX_ENDPOINTS, unique=True),
        "exp": st.integers(NOW + 1, MAX_SEQ),
        "name": NAMES,
    }
)


def signed(identity: Identity = ALICE, **fields: Any) -> SignedAddress:
    values: dict[str, Any] = {"seq": 1, "endpoints": ["http://alice.example:8000"], "exp": LATER}
    values.update(fields)
    return sign_address(identity, **values)


def record_fields(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "node": ALICE.node_id,
        "seq": 1,
        "endpoints": ("http://alice.example:8000",),
        "exp": LATER,
        "name": None,
    }
    values.update(changes)
    return values


def payload(**changes: Any) -> dict[str, Any]:
    values = AddressRecord(**record_fields()).to_payload()
    values.update(changes)
    return {key: value for key, value in values.items() if value is not ...}


def token_of(envelope: bytes) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(envelope).decode().rstrip("=")


# -- round trips -----------------------------------------------------------------------


@given(IDENTITIES, FIELDS)
def test_round_trip(identity: Identity, fields: dict[str, Any]) -> None:
    address = sign_address(identity, **fields)
    record = address.record
    assert record.node == address.node == identity.node_id
    assert record.endpoints == tuple(fields["endpoints"])
    assert (record.seq, record.exp, record.name) == (fields["seq"], fields["exp"], fields["name"])
    assert SignedAddress.open(address.envelope, now=NOW) == address
    assert AddressRecord.from_payload(record.to_payload()) == record
    assert crypto.open(address.envelope, Purpose.ADDRESS).payload == record.to_payload()


@given(IDENTITIES, FIELDS, st.sampled_from(["", " ", "\n", "\t ", "\r\n"]))
def test_token_round_trip(identity: Identity, fields: dict[str, Any], space: str) -> None:
    address = sign_address(identity, **fields)
    token = address.token
    assert token.startswith(TOKEN_PREFIX)
    assert set(token[len(TOKEN_PREFIX) :]) <= set(BASE64URL)  # one line, no '=' padding
    assert parse_token(space + token + space, now=NOW) == address


def test_payload_layout() -> None:
    assert signed(name="alice").record.to_payload() == {
        "node": ALICE.node_id.raw,
        "seq": 1,
        "endpoints": ["http://alice.example:8000"],
        "exp": LATER,
        "name": "alice",
    }
    assert "name" not in signed().record.to_payload()


# -- endpoints -------------------------------------------------------------------------


@given(ENDPOINTS)
def test_generated_endpoints_are_valid(url: str) -> None:
    assert validate_endpoint(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://relay.example:8443/n/25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena",
        "http://10.0.0.1:1",
        "http://[::1]:65535/",
        "HTTPS://Example.COM/Path",
        "http://h/" + "a" * (MAX_URL_LENGTH - 9),
    ],
)
def test_valid_endpoints(url: str) -> None:
    assert validate_endpoint(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("", "an endpoint must be a non-empty URL string", id="empty"),
        pytest.param(b"http://h", "an endpoint must be a non-empty URL string", id="bytes"),
        pytest.param(None, "an endpoint must be a non-empty URL string", id="none"),
        pytest.param(
            "http://h/" + "a" * 2040, "endpoint is 2049 characters, limit 2048", id="long"
        ),
        pytest.param("http://exämple.com", "outside printable ASCII", id="non-ascii"),
        pytest.param("http://a b", "has spaces", id="space"),
        pytest.param("http://h/\n", "outside printable ASCII", id="newline"),
        pytest.param("http://h\x00", "outside printable ASCII", id="nul"),
        pytest.param("http://[::1", "is not a valid URL: Invalid IPv6 URL", id="ipv6"),
        pytest.param("http://h:99999", "is not a valid URL: Port out of range", id="port-range"),
        pytest.param("http://h:port", "is not a valid URL: Port could not be cast", id="bad-port"),
        pytest.param("ftp://h", "must use http or https, not 'ftp'", id="ftp"),
        pytest.param("ws://h", "must use http or https, not 'ws'", id="ws"),
        pytest.param("//h/path", "must use http or https, not ''", id="no-scheme"),
        pytest.param("h:80", "must use http or https, not 'h'", id="host-port"),
        pytest.param("http:///path", "has no host", id="no-host"),
        pytest.param("http://:8080", "has no host", id="port-only"),
        pytest.param("http://user@h", "must not carry a user name or password", id="user"),
        pytest.param("http://user:pw@h", "must not carry a user name or password", id="password"),
        pytest.param("http://:pw@h", "must not carry a user name or password", id="empty-user"),
        pytest.param("http://@h", "must not carry a user name or password", id="empty-userinfo"),
        pytest.param("http://h/?q=1", "must not have a query or fragment", id="query"),
        pytest.param("http://h/#f", "must not have a query or fragment", id="fragment"),
        pytest.param("http://h/?", "must not have a query or fragment", id="empty-query"),
        pytest.param("http://h#", "must not have a query or fragment", id="empty-fragment"),
        pytest.param("http://h:0", "has port 0", id="port-0"),
        pytest.param("http://h:0/n/x", "has port 0", id="port-0-path"),
    ],
)
def test_invalid_endpoints(url: Any, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        validate_endpoint(url)


def test_invalid_url_keeps_its_cause() -> None:
    with pytest.raises(Malformed) as info:
        validate_endpoint("http://h:99999")
    assert isinstance(info.value.__cause__, ValueError)


# -- record validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"node": ALICE.node_id.raw},
            "address node must be a node id, got bytes",
            id="node-bytes",
        ),
        pytest.param(
            {"node": ALICE.node_id.text}, "address node must be a node id, got str", id="node-text"
        ),
        pytest.param({"seq": -1}, f"address seq -1 is outside 0..{MAX_SEQ}", id="seq-negative"),
        pytest.param(
            {"seq": MAX_SEQ + 1}, f"address seq {MAX_SEQ + 1} is outside 0..{MAX_SEQ}", id="seq-big"
        ),
        pytest.param({"seq": True}, "address seq must be an integer, got bool", id="seq-bool"),
        pytest.param({"seq": "1"}, "address seq must be an integer, got str", id="seq-str"),
        pytest.param({"seq": 1.0}, "address seq must be an integer, got float", id="seq-float"),
        pytest.param({"exp": -1}, f"address exp -1 is outside 0..{MAX_SEQ}", id="exp-negative"),
        pytest.param(
            {"exp": MAX_SEQ + 1}, f"address exp {MAX_SEQ + 1} is outside 0..{MAX_SEQ}", id="exp-big"
        ),
        pytest.param({"exp": False}, "address exp must be an integer, got bool", id="exp-bool"),
        pytest.param({"exp": None}, "address exp must be an integer, got NoneType", id="exp-none"),
        pytest.param({"endpoints": ()}, "needs a non-empty tuple of endpoints", id="no-endpoints"),
        pytest.param(
            {"endpoints": ["http://h"]}, "needs a non-empty tuple of endpoints", id="endpoints-list"
        ),
        pytest.param(
            {"endpoints": tuple(f"http://h{i}" for i in range(17))},
            "has 17 endpoints, limit 16",
            id="too-many",
        ),
        pytest.param(
            {"endpoints": ("http://h", "http://h")}, "lists an endpoint twice", id="duplicate"
        ),
        pytest.param(
            {"endpoints": ("http://h", "ftp://h")}, "must use http or https", id="bad-endpoint"
        ),
        pytest.param(
            {"endpoints": ("http://h", 5)}, "must be a non-empty URL string", id="int-endpoint"
        ),
        pytest.param(
            {"name": ""}, "address name must be non-empty printable text", id="name-empty"
        ),
        pytest.param(
            {"name": "a\nb"}, "address name must be non-empty printable text", id="name-newline"
        ),
        pytest.param(
            {"name": "a\u200bb"}, "address name must be non-empty printable text", id="name-zwsp"
        ),
        pytest.param(
            {"name": b"alice"}, "address name must be non-empty printable text", id="name-bytes"
        ),
        pytest.param({"name": "x" * 65}, "address name is 65 characters, limit 64", id="name-long"),
    ],
)
def test_record_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Malformed, match=message):
        AddressRecord(**record_fields(**changes))


def test_record_limits_are_inclusive() -> None:
    endpoints = tuple(f"http://h{i}" for i in range(MAX_ENDPOINTS))
    record = AddressRecord(
        **record_fields(seq=MAX_SEQ, exp=MAX_SEQ, endpoints=endpoints, name="x" * 64)
    )
    assert len(record.endpoints) == 16
    assert AddressRecord(**record_fields(seq=0, exp=0)).seq == 0


def test_record_is_immutable() -> None:
    record = AddressRecord(**record_fields())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.seq = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"node": ...}, "address record lacks node$", id="no-node"),
        pytest.param({"seq": ..., "exp": ...}, "address record lacks exp, seq$", id="no-seq-exp"),
        pytest.param({"endpoints": ...}, "address record lacks endpoints$", id="no-endpoints"),
        pytest.param(
            {"extra": 1}, r"address record has unknown keys \[\"'extra'\"\]", id="unknown"
        ),
        pytest.param(
            {"node": "alice"}, "address record's node is not a byte string", id="node-text"
        ),
        pytest.param({"node": b"\x00" * 31}, "a node id is 32 bytes, got 31", id="node-short"),
        pytest.param(
            {"endpoints": "http://h"},
            "address record's endpoints is not an array",
            id="endpoints-text",
        ),
        pytest.param(
            {"endpoints": {"http://h": 1}}, "endpoints is not an array", id="endpoints-map"
        ),
        pytest.param({"name": None}, "has a null name; an absent name is left out", id="null-name"),
        pytest.param({"seq": None}, "address seq must be an integer, got NoneType", id="null-seq"),
    ],
)
def test_from_payload_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Malformed, match=message):
        AddressRecord.from_payload(payload(**changes))


# -- opening ---------------------------------------------------------------------------


def test_record_signed_by_another_node_is_refused() -> None:
    # Bob signs a record that says where Alice is: a route hijack.
    envelope = crypto.seal(BOB, Purpose.ADDRESS, AddressRecord(**record_fields()).to_payload())
    with pytest.raises(
        Malformed,
        match=f"address record for {ALICE.node_id.short} is signed by {BOB.node_id.short}",
    ):
        SignedAddress.open(envelope, now=NOW)


def test_expired_record_is_refused() -> None:
    address = signed(exp=NOW + 1)
    assert SignedAddress.open(address.envelope, now=NOW) == address
    for now, ago in [(NOW + 1, 0), (NOW + 5001, 5), (NOW + 3_600_001, 3600)]:
        with pytest.raises(
            Expired,
            match=f"address record for {ALICE.node_id.short} \\(seq 1\\) expired {ago} s ago",
        ):
            SignedAddress.open(address.envelope, now=now)


def test_envelope_for_another_purpose_is_refused() -> None:
    envelope = crypto.seal(ALICE, Purpose.FRAME, AddressRecord(**record_fields()).to_payload())
    with pytest.raises(WrongPurpose, match="envelope is for 'ptth/frame', expected 'ptth/addr'"):
        SignedAddress.open(envelope, now=NOW)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"extra": 1}, "unknown keys", id="unknown-key"),
        pytest.param({"exp": ...}, "lacks exp", id="missing-key"),
        pytest.param({"name": None}, "null name", id="null-name"),
        pytest.param({"endpoints": []}, "needs a non-empty tuple of endpoints", id="no-endpoints"),
    ],
)
def test_signed_bad_payload_is_refused(changes: dict[str, Any], message: str) -> None:
    envelope = crypto.seal(ALICE, Purpose.ADDRESS, payload(**changes))
    with pytest.raises(Malformed, match=message):
        SignedAddress.open(envelope, now=NOW)


# -- replacing -------------------------------------------------------------------------


def test_check_replaces() -> None:
    held = signed(seq=5)
    signed(seq=0).check_replaces(None)
    signed(seq=6).check_replaces(held)
    signed(seq=MAX_SEQ).check_replaces(held)
    for seq in (5, 4, 0):
        with pytest.raises(
            Stale,
            match=f"address for {ALICE.node_id.short} has seq {seq}, not newer than the held seq 5",
        ) as info:
            signed(seq=seq).check_replaces(held)
        assert info.value.status_hint == 409
    with pytest.raises(
        Malformed,
        match=f"address for {BOB.node_id.short} cannot replace one for {ALICE.node_id.short}",
    ):
        signed(BOB, seq=6).check_replaces(held)


# -- tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        pytest.param("", Malformed, "must start with 'ptth:'", id="empty"),
        pytest.param(
            "hello", Malformed, "not a ptth address token: it must start with 'ptth:'", id="garbage"
        ),
        pytest.param("PTTH:abcd", Malformed, "must start with 'ptth:'", id="uppercase-prefix"),
        pytest.param("ptth;abcd", Malformed, "must start with 'ptth:'", id="wrong-prefix"),
        pytest.param("http://alice.example", Malformed, "must start with 'ptth:'", id="url"),
        pytest.param("ptth:", Malformed, "characters outside base64url", id="no-body"),
        pytest.param("ptth:ab+/", Malformed, "characters outside base64url", id="base64-not-url"),
        pytest.param("ptth:abcd==", Malformed, "characters outside base64url", id="padding"),
        pytest.param("ptth:ab cd", Malformed, "characters outside base64url", id="inner-space"),
        pytest.param("ptth:abçd", Malformed, "characters outside base64url", id="non-ascii"),
        pytest.param(
            "ptth:abcde",
            Malformed,
            "not valid base64url: .*1 more than a multiple of 4",
            id="length",
        ),
        pytest.param(
            "ptth:" + "A" * 8188, TooLarge, "token is 8193 characters, limit 8192", id="too-long"
        ),
        pytest.param(
            "ptth:AQ",
            Malformed,
            "^address token is damaged: envelope is not a COSE_Sign1",
            id="not-cose",
        ),
        pytest.param(
            "ptth:AAAA", Malformed, "^address token is damaged: envelope has 2 trailing", id="zeros"
        ),
    ],
)
def test_bad_tokens_are_refused(text: str, error: type[CryptoError], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_token(text, now=NOW)


def test_a_token_cut_short_is_refused_as_damaged() -> None:
    token = signed(name="alice").token
    with pytest.raises(Malformed, match=r"^address token is damaged: envelope ends early"):
        parse_token(token[: len(token) // 2], now=NOW)


def test_token_length_limit_is_inclusive() -> None:
    text = "ptth:" + "A" * (MAX_TOKEN_LENGTH - 5)
    assert len(text) == MAX_TOKEN_LENGTH
    with pytest.raises(Malformed, match="envelope has 6139 trailing bytes") as info:
        parse_token(text, now=NOW)
    assert not isinstance(info.value, TooLarge)


@given(st.data())
def test_tampered_token_is_refused(data: st.DataObject) -> None:
    token = signed(name="alice").token
    body = token[len(TOKEN_PREFIX) :]
    # Every character but the last carries only data bits, so changing it changes the
    # envelope (the last one may also carry spare bits that decoding ignores).
    index = data.draw(st.integers(0, len(body) - 2), label="index")
    char = data.draw(st.sampled_from(BASE64URL).filter(lambda c: c != body[index]), label="char")
    tampered = TOKEN_PREFIX + body[:index] + char + body[index + 1 :]
    with pytest.raises(CryptoError):
        parse_token(tampered, now=NOW)


@given(st.integers(0, 200), st.integers(1, 255))
def test_token_of_a_tampered_envelope_is_refused(index: int, mask: int) -> None:
    envelope = bytearray(signed().envelope)
    envelope[index % len(envelope)] ^= mask
    with pytest.raises(CryptoError):
        parse_token(token_of(bytes(envelope)), now=NOW)


def test_token_refusals_keep_their_meaning() -> None:
    assert parse_token(token_of(signed().envelope), now=NOW) == signed()
    with pytest.raises(Expired):
        parse_token(signed(exp=NOW).token, now=NOW)
    frame_envelope = crypto.seal(
        ALICE, Purpose.FRAME, AddressRecord(**record_fields()).to_payload()
    )
    with pytest.raises(WrongPurpose):
        parse_token(token_of(frame_envelope), now=NOW)
    envelope = bytearray(signed().envelope)
    envelope[-1] ^= 1  # the last byte of the signature
    with pytest.raises(BadSignature):
        parse_token(token_of(bytes(envelope)), now=NOW)
