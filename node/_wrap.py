"""HTTP messages wrapped as bodies (``message/http``, RFC 9112 §10.1), for long-poll.

The relay hands a visitor's request to a polling node as the body of the poll's answer,
and the node hands its response back as the body of a POST. Both directions are
serialised and parsed by h11 (we write no HTTP parser): a throwaway ``h11.Connection``
of the right role produces or consumes exactly one message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import h11

__all__ = ["WrapError", "decode_request", "decode_response", "encode_request", "encode_response"]

#: Largest wrapped message we parse (the relay's body limit plus headers).
MAX_WRAPPED_SIZE: Final = 17 * 1024 * 1024
_PRIMER_REQUEST: Final = h11.Request(method="GET", target="/", headers=[("host", "wrapped")])
Headers = list[tuple[str, str]]


class WrapError(Exception):
    """A wrapped message that h11 cannot read: the sender's fault."""


def _decoded(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


def _encoded(
    headers: Sequence[tuple[str, str]], dropped: tuple[str, ...]
) -> list[tuple[bytes, bytes]]:
    # Bytes for h11, which takes ``str`` as ASCII: a field value may hold obs-text.
    return [
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() not in dropped
    ]


def encode_request(
    method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """One request as bytes (Content-Length framing)."""
    fields = _encoded(headers, ("content-length", "transfer-encoding"))
    if not any(k.lower() == b"host" for k, _ in fields):
        fields.append((b"host", b"wrapped"))
    fields.append((b"content-length", str(len(body)).encode("ascii")))
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method=method, target=target, headers=fields))
    data += conn.send(h11.Data(data=body)) if body else b""
    return data + conn.send(h11.EndOfMessage())


def encode_response(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """One response as bytes (Content-Length framing)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(h11.Connection(h11.CLIENT).send(_PRIMER_REQUEST) or b"")
    conn.next_event()  # the primer request
    conn.next_event()  # its end
    fields = _encoded(headers, ("content-length", "transfer-encoding", "connection"))
    fields.append((b"content-length", str(len(body)).encode("ascii")))
    data = conn.send(h11.Response(status_code=status, headers=fields))
    data += conn.send(h11.Data(data=body)) if body else b""
    return data + conn.send(h11.EndOfMessage())


def _read_message(conn: h11.Connection, data: bytes) -> tuple[h11.Request | h11.Response, bytes]:
    if len(data) > MAX_WRAPPED_SIZE:
        raise WrapError(f"wrapped message is {len(data)} bytes, limit {MAX_WRAPPED_SIZE}")
    conn.receive_data(data)
    conn.receive_data(b"")
    head: h11.Request | h11.Response | None = None
    body: list[bytes] = []
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request | h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise WrapError("wrapped message ends before it is complete")
    except h11.RemoteProtocolError as exc:
        raise WrapError(f"wrapped message is not HTTP/1.1: {exc}") from exc
    assert head is not None  # h11 yields the head before any body or end
    extra = len(conn.trailing_data[0])
    if extra:  # e.g. a body longer than its Content-Length: not one message
        raise WrapError(f"wrapped message has {extra} bytes after its end")
    return head, b"".join(body)


def decode_request(data: bytes) -> tuple[str, str, Headers, bytes]:
    """Parse a wrapped request: method, target, headers (names lowercase), body."""
    head, body = _read_message(h11.Connection(h11.SERVER), data)
    assert isinstance(head, h11.Request)
    return head.method.decode("ascii"), head.target.decode("latin-1"), _decoded(head.headers), body


def decode_response(data: bytes) -> tuple[int, Headers, bytes]:
    """Parse a wrapped response: status, headers (names lowercase), body."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(_PRIMER_REQUEST)
    conn.send(h11.EndOfMessage())
    head, body = _read_message(conn, data)
    assert isinstance(head, h11.Response)
    return head.status_code, _decoded(head.headers), body
