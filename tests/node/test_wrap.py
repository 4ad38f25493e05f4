"""``message/http`` (RFC 9112 §10.1): HTTP messages wrapped as bodies, for long-poll."""

from __future__ import annotations

import h11
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from node._wrap import (
    MAX_WRAPPED_SIZE,
    WrapError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: What h11 lets through in a field value: no NUL, no CR/LF, no other ASCII whitespace
#: inside a "word"; obs-text (0x80-0xFF) included.
VALUE_CHARS = st.characters(codec="latin-1", exclude_characters="\x00\t\n\x0b\x0c\r ")
#: Fields the codec manages itself (framing, Host), or that change h11's behaviour.
MANAGED = {"content-length", "transfer-encoding", "connection", "host", "upgrade", "expect"}

methods = st.text(TCHAR, min_size=1, max_size=12)
targets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
    lambda path: "/" + path
)
names = st.text(TCHAR, min_size=1, max_size=20).filter(lambda name: name.lower() not in MANAGED)
values = st.lists(st.text(VALUE_CHARS, min_size=1, max_size=10), max_size=4).map(" ".join)
headers = st.lists(st.tuples(names, values), max_size=8)
bodies = st.binary(max_size=300)
#: Statuses that carry a body (1xx are not final; 204 and 304 have none).
statuses = st.integers(200, 999).filter(lambda status: status not in (204, 304))


def lowered(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in fields]


@given(methods, targets, headers, bodies)
@example("GET", "/", [], b"")
@example("POST", "/ptth/v1/frames?x=1", [("x-latin", "caf\xe9")], b"\x00\xff")
def test_request_round_trip(
    method: str, target: str, fields: list[tuple[str, str]], body: bytes
) -> None:
    wrapped = encode_request(method, target, fields, body)
    got_method, got_target, got_headers, got_body = decode_request(wrapped)
    assert (got_method, got_target, got_body) == (method, target, body)
    # h11 writes Host first (RFC 9112 §3.2 asks for it early).
    assert got_headers == [
        ("host", "wrapped"),
        *lowered(fields),
        ("content-length", str(len(body))),
    ]


@given(statuses, headers, bodies)
@example(200, [], b"")
@example(599, [("x-latin", "caf\xe9")], b"\x00\xff")
def test_response_round_trip(status: int, fields: list[tuple[str, str]], body: bytes) -> None:
    wrapped = encode_response(status, fields, body)
    got_status, got_headers, got_body = decode_response(wrapped)
    assert (got_status, got_body) == (status, body)
    assert got_headers == [*lowered(fields), ("content-length", str(len(body)))]


def test_framing_is_the_codecs() -> None:
    # The caller's Host is kept; its framing fields are replaced by a true length.
    wrapped = encode_request(
        "PUT",
        "/x",
        [("Content-Length", "999"), ("Transfer-Encoding", "chunked"), ("Host", "relay")],
        b"abc",
    )
    assert decode_request(wrapped) == (
        "PUT",
        "/x",
        [("host", "relay"), ("content-length", "3")],
        b"abc",
    )
    wrapped = encode_response(
        200, [("Connection", "close"), ("Content-Length", "0"), ("x-y", "z")], b"abc"
    )
    assert decode_response(wrapped) == (200, [("x-y", "z"), ("content-length", "3")], b"abc")


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(status: int) -> None:
    assert decode_response(encode_response(status, [], b"")) == (
        status,
        [("content-length", "0")],
        b"",
    )


def test_other_framings_are_read() -> None:
    # What h11 reads, we read: chunked bodies, and a response delimited by its end.
    chunked = (
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert decode_request(chunked)[3] == b"abc"
    until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it"
    assert decode_response(until_close) == (200, [], b"all of it")
    informational_first = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"
    )
    assert decode_response(informational_first)[0] == 201


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",  # a response, not a request
    ],
)
def test_garbage_request_is_wrap_error(data: bytes) -> None:
    with pytest.raises(WrapError):
        decode_request(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"HTTP/1.1 banana\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",  # a request, not a response
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # no Upgrade was asked for
    ],
)
def test_garbage_response_is_wrap_error(data: bytes) -> None:
    with pytest.raises(WrapError):
        decode_response(data)


def test_truncated_is_wrap_error() -> None:
    request = encode_request("POST", "/frames", [("x", "y")], b"0123456789")
    response = encode_response(200, [("x", "y")], b"0123456789")
    # Every proper prefix: in the head, or short of the Content-Length.
    for cut in range(len(request)):
        with pytest.raises(WrapError):
            decode_request(request[:cut])
    for cut in range(len(response)):
        with pytest.raises(WrapError):
            decode_response(response[:cut])


def test_bytes_after_the_message_are_wrap_error() -> None:
    # One message per body: what follows it would otherwise be dropped without a word
    # (a node's body longer than its Content-Length would reach the visitor cut short).
    request = encode_request("GET", "/", [], b"")
    with pytest.raises(WrapError, match="4 bytes after its end"):
        decode_request(request + b"more")
    with pytest.raises(WrapError, match="bytes after its end"):
        decode_request(request + request)
    with pytest.raises(WrapError, match="1 bytes after its end"):
        decode_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nabc")


def test_oversized_is_wrap_error() -> None:
    body = b"x" * (MAX_WRAPPED_SIZE + 1)
    wrapped = encode_response(200, [], body)
    assert len(wrapped) > MAX_WRAPPED_SIZE
    with pytest.raises(WrapError, match=f"limit {MAX_WRAPPED_SIZE}"):
        decode_response(wrapped)
    with pytest.raises(WrapError, match=f"limit {MAX_WRAPPED_SIZE}"):
        decode_request(b"P" * (MAX_WRAPPED_SIZE + 1))
    # Just under the limit is fine.
    body = b"y" * (MAX_WRAPPED_SIZE - 100)
    assert decode_response(encode_response(200, [], body))[2] == body


@given(st.binary(max_size=200))
@example(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\x00")
@example(b"HTTP/1.1 200 OK\r\n\r\n")
def test_arbitrary_bytes_raise_only_wrap_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except WrapError:
            pass


@given(st.binary(min_size=1, max_size=40), st.integers(0, 10_000))
def test_any_bytes_mixed_into_a_message(noise: bytes, where: int) -> None:
    # A good message with bytes inserted somewhere: read as some message, or WrapError.
    request = encode_request("POST", "/x", [("a", "b")], b"body")
    at = where % (len(request) + 1)
    mixed = request[:at] + noise + request[at:]
    try:
        decode_request(mixed)
    except WrapError:
        pass
    response = encode_response(200, [("a", "b")], b"body")
    at = where % (len(response) + 1)
    try:
        decode_response(response[:at] + noise + response[at:])
    except WrapError:
        pass


def test_encoding_refuses_what_h11_refuses() -> None:
    # The caller's fault, raised as h11's LocalProtocolError (never sent or wrapped).
    with pytest.raises(h11.LocalProtocolError):
        encode_request("GET", "/", [("bad name", "x")], b"")
    with pytest.raises(h11.LocalProtocolError):
        encode_response(200, [("x", "a\r\nb")], b"")
    with pytest.raises(h11.LocalProtocolError):
        encode_response(101, [], b"")
