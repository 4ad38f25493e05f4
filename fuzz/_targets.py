"""The fuzz targets: every decoder of input that came from another node or client.

Each :class:`Target` has a ``check`` that feeds one input (bytes) to the decoder and
raises what the decoder raises; ``allowed`` are the errors its docstring names (a clean
refusal); anything else escaping ``check`` is a crash. Where decoding succeeds, ``check``
also tests a property (the value round-trips through our encoder, or a verified input
was really signed by the only key that signs here) and raises :class:`PropertyFailed`
when it does not hold. ``seeds`` builds the corpus of valid inputs with our own encoders.

Multi-part inputs (a signed HTTP request: method, URL, headers, body) are carried as
one text, ``FIRST-LINE\\nname: value\\n...\\n\\nbody``, read back by a total parser
(:func:`split_message`), so that mutations reach every part.

Signed payloads: a node can sign anything, so mutating a frame's or an address's
*payload* must reach the payload checks: the ``frame`` and ``address`` targets take the
payload bytes and sign them (with :data:`IDENTITY`) before opening, as a hostile but
authenticated peer would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import cbor2
import trio
import trio.testing

import crypto
import mesh
from crypto import _cbor, _envelope, _httpsig
from mesh import _engine, _stomp, _xmpp
from node import _attach, _fabric, _forwarder, _relay, _wrap
from node._api import LocalApi
from node._errors import NodeError, Replayed
from node._message import Published, Sent
from node._server import Request, Response, Server, ServerConfig

if TYPE_CHECKING:
    from node._api import ApiHost

__all__ = [
    "IDENTITY",
    "NOW_MS",
    "TARGETS",
    "Hang",
    "PropertyFailed",
    "Target",
    "split_message",
]

#: The clock every target reads (ms since the epoch): a fixed time, so runs repeat.
NOW_MS: Final = 1_700_000_000_000
NOW_S: Final = NOW_MS // 1000
#: The key every seed is signed with (a fixed seed: runs repeat, crashes reproduce).
IDENTITY: Final = crypto.Identity(bytes(range(32)))
#: A second node, for destinations and subscriber lists.
OTHER: Final = crypto.Identity(bytes(range(32, 64)))
REQUEST_URL: Final = "http://127.0.0.1:9000/ptth/v1/frames"


class PropertyFailed(AssertionError):
    """A decoder accepted an input but a property of what it returned does not hold."""


class Hang(Exception):
    """One input took longer than the per-input time limit."""


#: The outcome of one input: the exception ``check`` raised (None: accepted) and the
#: seconds it took.
Outcome = tuple[BaseException | None, float]


@dataclasses.dataclass(frozen=True)
class Target:
    """One decoder under fuzzing."""

    name: str
    #: What is decoded, and by which function.
    description: str
    #: Feeds one input to the decoder; raises what it raises.
    check: Callable[[bytes], None]
    #: The errors the decoder documents: a clean refusal, not a crash.
    allowed: tuple[type[BaseException], ...]
    #: Builds the seed corpus: valid inputs made with our own encoders.
    seeds: Callable[[], list[bytes]]
    #: Bytes the mutator inserts now and then (keys, separators, names).
    words: tuple[bytes, ...] = ()
    #: Whether the CBOR-aware mutations apply.
    cbor: bool = True
    #: Runs many inputs at once (targets that need a trio run); None: ``check`` each.
    batch: Callable[[Sequence[bytes]], list[Outcome]] | None = None
    #: Share of ``--inputs`` this target runs by default: an input of the server
    #: target is a whole connection, ~50x the cost of a decoder call.
    share: float = 1.0

    def is_crash(self, exc: BaseException | None) -> bool:
        return exc is not None and not isinstance(exc, self.allowed)


# -- helpers ---------------------------------------------------------------------------


def _text(data: bytes) -> str:
    """Bytes as text, every byte kept (invalid UTF-8 becomes lone surrogates)."""
    return data.decode("utf-8", "surrogateescape")


def split_message(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Read the carrier format: first line, ``name: value`` lines, blank line, body.

    Total: never raises. Header text is latin-1, as our server decodes it; names are
    lowercased, as it does.
    """
    head, _, body = data.partition(b"\n\n")
    lines = head.decode("latin-1").split("\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.lower(), value.removeprefix(" ")))
    return lines[0], headers, body


def join_message(first: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """The carrier format of a message (the inverse of :func:`split_message`)."""
    lines = [first, *(f"{name}: {value}" for name, value in headers)]
    return "\n".join(lines).encode("latin-1") + b"\n\n" + body


def _frames() -> list[crypto.Frame]:
    """One valid frame of each kind and option, from :data:`IDENTITY`."""
    me, other = IDENTITY.node_id, OTHER.node_id
    common: dict[str, Any] = {"src": me, "ts": NOW_MS - 1000, "exp": NOW_MS + 3_600_000}
    address = _address().envelope
    return [
        crypto.Frame(crypto.Kind.MSG, id=b"\x01" * 16, hops=8, dst=other, body=b"hi", **common),
        crypto.Frame(
            crypto.Kind.MSG,
            id=b"\x02" * 16,
            hops=64,
            dst=other,
            body=bytes(range(256)),
            ct="text/plain; charset=utf-8",
            rr=True,
            **common,
        ),
        crypto.Frame(
            crypto.Kind.PUB, id=b"\x03" * 16, hops=4, topic="news.sport", body=b"", **common
        ),
        crypto.Frame(
            crypto.Kind.PUB,
            id=b"\x04" * 16,
            hops=4,
            topic=f"~{me.text}.chirp",
            body=b"x" * 40,
            ct="application/json",
            **common,
        ),
        crypto.Frame(crypto.Kind.SUB, id=b"\x05" * 16, hops=2, pat="news.*.#", **common),
        crypto.Frame(crypto.Kind.UNSUB, id=b"\x06" * 16, hops=2, pat="#", **common),
        crypto.Frame(crypto.Kind.ANN, id=b"\x07" * 16, hops=1, body=address, hello=True, **common),
        crypto.Frame(
            crypto.Kind.RCPT,
            id=b"\x08" * 16,
            hops=8,
            dst=other,
            ref=b"\x01" * 16,
            st="delivered",
            n=3,
            **common,
        ),
        crypto.Frame(
            crypto.Kind.RCPT,
            id=b"\x09" * 16,
            hops=8,
            dst=other,
            ref=b"\x02" * 16,
            st="dropped",
            why="no-route: nobody knows",
            **common,
        ),
    ]


def _address(
    identity: crypto.Identity = IDENTITY, *, name: str | None = "fuzz"
) -> crypto.SignedAddress:
    return crypto.sign_address(
        identity,
        seq=7,
        endpoints=("http://127.0.0.1:9000", f"https://relay.example/n/{identity.node_id.text}"),
        exp=NOW_MS + 86_400_000,
        name=name,
    )


def _addresses() -> list[crypto.SignedAddress]:
    one = crypto.sign_address(
        IDENTITY, seq=0, endpoints=("http://[::1]:80/",), exp=NOW_MS + 1, name=None
    )
    return [_address(), _address(OTHER, name=None), one]


def _sealed_frames() -> list[bytes]:
    return [frame.seal(IDENTITY) for frame in _frames()]


_PROTECTED: Final = {
    purpose: _cbor.encode({1: -8, 3: str(purpose), 4: IDENTITY.node_id.raw})
    for purpose in _envelope.Purpose
}


def _signed(payload: bytes, purpose: _envelope.Purpose) -> bytes:
    """``payload`` (any bytes) in a COSE_Sign1 signed by :data:`IDENTITY`."""
    protected = _PROTECTED[purpose]
    signature = IDENTITY.sign(_envelope._sig_structure(protected, payload))
    return _cbor.encode(cbor2.CBORTag(18, [protected, {}, payload, signature]))


#: Values at the edges of what a field takes, as dictionary words of every CBOR target.
_EDGE_VALUES: Final = (
    None,
    True,
    False,
    -1,
    0,
    2**63,
    2**64 - 1,
    -(2**64),
    1.5,
    float("nan"),
    IDENTITY.node_id.raw,
    b"\x00" * 16,
)

_FRAME_WORDS: Final = tuple(
    _cbor.encode(word)
    for word in (
        "t",
        "src",
        "id",
        "ts",
        "exp",
        "hops",
        "dst",
        "topic",
        "pat",
        "body",
        "ct",
        "ref",
        "rr",
        "st",
        "why",
        "n",
        "hello",
        "msg",
        "pub",
        "ann",
        "rcpt",
        "delivered",
        "node",
        "seq",
        "endpoints",
        "name",
        *_EDGE_VALUES,
    )
)


# -- CBOR ----------------------------------------------------------------------------------


def _cbor_seeds() -> list[bytes]:
    values: list[Any] = [
        0,
        -1,
        2**64 - 1,
        -(2**64),
        1.5,
        -0.0,
        float("inf"),
        "text",
        b"bytes",
        True,
        None,
        [1, [2, [3, {"a": b"b"}]]],
        {"k": {"nested": [1.0, "x", None]}, "z": []},
    ]
    values += [frame.to_payload() for frame in _frames()]
    values += [address.record.to_payload() for address in _addresses()]
    seeds = [_cbor.encode(value) for value in values]
    seeds += _sealed_frames()[:3]
    return seeds


def check_cbor(data: bytes) -> None:
    """``_cbor.decode`` as a payload is read, and as an envelope is (COSE tag, integer
    keys under ``max_items``); an accepted value must re-encode and decode to itself."""
    try:
        value = _cbor.decode(data)
    except crypto.Malformed:
        pass
    else:
        encoded = _cbor.encode(value)
        if _cbor.encode(_cbor.decode(encoded)) != encoded:
            raise PropertyFailed(f"CBOR value does not round-trip: {encoded.hex()}")
    _cbor.decode(data, what="envelope", allowed_tags=(18,), max_items=32)


def check_cbor_bounds(data: bytes) -> None:
    """``_cbor.check_bounds`` (the walk before integer keys are allowed) and
    ``decode_sequence``; what the walk passes must not make cbor2 fail but cleanly."""
    _cbor.check_bounds(data, what="item", max_items=32, allowed_tags=(18,))
    for _ in _cbor.decode_sequence(data, max_items=64, allowed_tags=(18,)):
        pass


# -- envelopes, frames, addresses, tokens --------------------------------------------------


def _envelope_seeds() -> list[bytes]:
    seeds = _sealed_frames()
    seeds += [address.envelope for address in _addresses()]
    seeds.append(_envelope.seal(IDENTITY, _envelope.Purpose.CAPABILITY, {"cap": b"x"}))
    return seeds


def check_envelope(data: bytes) -> None:
    """``crypto.open`` on arbitrary envelope bytes (signature and all), for the purpose
    it names (a wrong purpose is refused before the signature is checked: cheap)."""
    for purpose in crypto.Purpose:
        try:
            signer, payload = crypto.open(data, purpose)
            break
        except crypto.WrongPurpose:
            if purpose is list(crypto.Purpose)[-1]:
                raise
    if signer not in (IDENTITY.node_id, OTHER.node_id):
        raise PropertyFailed(f"an envelope verified as signed by {signer}, who signs nothing here")
    if not isinstance(payload, dict):
        raise PropertyFailed(f"an opened payload is a {type(payload).__name__}")


def _frame_seeds() -> list[bytes]:
    return [_cbor.encode(frame.to_payload()) for frame in _frames()]


def check_frame(data: bytes) -> None:
    """``crypto.Frame.open`` on a payload a hostile node signed (``data`` is the payload)."""
    frame = crypto.Frame.open(_signed(data, _envelope.Purpose.FRAME), now=NOW_MS)
    if _cbor.encode(frame.to_payload()) != data:
        raise PropertyFailed("an opened frame does not re-encode to its signed payload")
    if crypto.Frame.from_payload(frame.to_payload()) != frame:
        raise PropertyFailed("a frame does not round-trip through its payload")


def _address_seeds() -> list[bytes]:
    mine = [address for address in _addresses() if address.node == IDENTITY.node_id]
    return [_cbor.encode(address.record.to_payload()) for address in mine]


def check_address(data: bytes) -> None:
    """``crypto.SignedAddress.open`` on a payload a hostile node signed (an announce's
    body, a stored or pasted address)."""
    address = crypto.SignedAddress.open(_signed(data, _envelope.Purpose.ADDRESS), now=NOW_MS)
    if _cbor.encode(address.record.to_payload()) != data:
        raise PropertyFailed("an opened address does not re-encode to its signed payload")
    again = crypto.parse_token(address.token, now=NOW_MS)
    if again.record != address.record:
        raise PropertyFailed("an address does not round-trip through its token")


def _token_seeds() -> list[bytes]:
    return [address.token.encode("ascii") for address in _addresses()] + [
        b"  " + _address().token.encode("ascii") + b"\n"
    ]


def check_token(data: bytes) -> None:
    """``crypto.parse_token`` on text a user pasted or a peer sent (``POST /peers``)."""
    address = crypto.parse_token(_text(data), now=NOW_MS)
    if address.node not in (IDENTITY.node_id, OTHER.node_id):
        raise PropertyFailed(f"a token verified for {address.node}, who signs nothing here")
    if crypto.parse_token(address.token, now=NOW_MS).record != address.record:
        raise PropertyFailed("a token does not round-trip")


def _capabilities() -> list[crypto.Capability]:
    """One capability of each kind from :data:`IDENTITY`, and chains delegated by
    :data:`IDENTITY` and by :data:`OTHER`."""
    me = IDENTITY.node_id
    made = [
        crypto.grant(
            IDENTITY,
            target,
            ops,
            subject=OTHER.node_id,
            now=NOW_MS,
            cap_id=bytes([number]) * crypto.CAPABILITY_ID_SIZE,
            caveats=crypto.Caveats(nbf=NOW_MS, exp=NOW_MS + 3_600_000, uses=5, rate=2),
        )
        for number, (target, ops) in enumerate(
            [
                (crypto.Target.topic(me, "news.*.#"), ["publish", "subscribe"]),
                (crypto.Target.inbox(me), ["send"]),
                (crypto.Target.named(me, "queue"), ["call"]),
            ],
            1,
        )
    ]
    made.append(
        crypto.grant(
            IDENTITY,
            crypto.Target.relay(me),
            ["attach", "store"],
            subject=None,
            now=NOW_MS,
            cap_id=b"\x09" * crypto.CAPABILITY_ID_SIZE,
            caveats=crypto.Caveats(quota=1 << 20),
            revoker=OTHER.node_id,
        )
    )
    made.append(
        crypto.delegate(
            IDENTITY,
            made[3],
            subject=OTHER.node_id,
            now=NOW_MS,
            cap_id=b"\x0b" * crypto.CAPABILITY_ID_SIZE,
        )
    )
    made.append(
        crypto.delegate(
            OTHER,
            made[0],
            subject=None,
            now=NOW_MS,
            cap_id=b"\x0a" * crypto.CAPABILITY_ID_SIZE,
            target=crypto.Target.topic(me, "news.a.b"),
            ops=["publish"],
        )
    )
    return made


def _capability_seeds() -> list[bytes]:
    # The target signs each payload with IDENTITY: the links it signs are seeds.
    mine = [cap for cap in _capabilities() if cap.issuer == IDENTITY.node_id]
    return [_cbor.encode(capability.to_payload()) for capability in mine]


def check_capability(data: bytes) -> None:
    """``crypto.Capability.open`` on a capability payload a hostile node signed (its
    embedded chain, ``up``, comes as it is), and its token."""
    capability = crypto.Capability.open(_signed(data, _envelope.Purpose.CAPABILITY))
    if _cbor.encode(capability.to_payload()) != data:
        raise PropertyFailed("an opened capability does not re-encode to its signed payload")
    if crypto.parse_capability(capability.token) != capability:
        raise PropertyFailed("a capability does not round-trip through its token")
    if capability.owner not in (IDENTITY.node_id, OTHER.node_id):
        raise PropertyFailed(f"a capability chain verified as rooted at {capability.owner}")


def _cap_token_seeds() -> list[bytes]:
    return [capability.token.encode("ascii") for capability in _capabilities()]


def check_cap_token(data: bytes) -> None:
    """``crypto.parse_capability``: 'ptthcap:...' text a user pasted."""
    capability = crypto.parse_capability(_text(data))
    if any(link.issuer not in (IDENTITY.node_id, OTHER.node_id) for link in capability.chain):
        raise PropertyFailed("a capability verified with a link signed by a stranger")
    if crypto.parse_capability(capability.token) != capability:
        raise PropertyFailed("a capability token does not round-trip")


def _call_seeds() -> list[bytes]:
    return [
        mesh.Call("web", "GET /hello?x=1").encode(),
        mesh.Call("inbox", "send", b"hi", "text/plain").encode(),
        mesh.Reply(bytes(16), 200, b"ok", "text/plain").encode(),
        mesh.Reply(bytes(16), 403, why="refused").encode(),
    ]


def check_call(data: bytes) -> None:
    """``mesh.Call.decode`` and ``mesh.Reply.decode``: the bodies of call and reply
    frames a stranger signed; what is taken re-encodes to itself."""
    value: mesh.Call | mesh.Reply
    try:
        value = mesh.Call.decode(data)
    except crypto.Malformed:
        value = mesh.Reply.decode(data)  # Malformed for neither: refused
    if type(value).decode(value.encode()) != value:
        raise PropertyFailed(f"a decoded {type(value).__name__} does not round-trip")


def check_node_id(data: bytes) -> None:
    """``crypto.NodeId.parse``: node ids in URL paths (``/n/<id>``), query strings, keyids."""
    text = _text(data)
    node = crypto.NodeId.parse(text)
    if node.text != text or crypto.NodeId(node.raw) != node:
        raise PropertyFailed(f"node id {text!r} does not round-trip")


def _node_id_seeds() -> list[bytes]:
    return [IDENTITY.node_id.text.encode(), OTHER.node_id.text.encode()]


# -- the frames request and its results ----------------------------------------------------


def _wire_seeds() -> list[bytes]:
    sealed = _sealed_frames()
    other = OTHER.node_id
    seeds = [mesh.encode_frames([mesh.WireFrame(0, envelope)]) for envelope in sealed]
    seeds.append(mesh.encode_frames(mesh.WireFrame(i % 3, e) for i, e in enumerate(sealed)))
    seeds.append(mesh.encode_frames([mesh.WireFrame(1, sealed[2], (other, IDENTITY.node_id))]))
    return seeds


#: Most frames of one input that are also admitted (each costs a signature check).
_MAX_ADMITTED: Final = 8


def check_wire_frames(data: bytes) -> None:
    """``mesh.decode_frames`` on a ``POST /ptth/v1/frames`` body, then ``mesh.admit`` on
    each frame in it (which must answer with a :class:`mesh.Result`, never raise)."""
    items = mesh.decode_frames(data)
    frames = [item for item in items if isinstance(item, mesh.WireFrame)]
    for frame in frames[:_MAX_ADMITTED]:
        mesh.admit(frame, now=NOW_MS)
    if len(frames) == len(items):
        again = mesh.decode_frames(mesh.encode_frames(frames))
        if again != items:
            raise PropertyFailed("wire frames do not round-trip")


def _results_seeds() -> list[bytes]:
    results = [
        mesh.Result(mesh.Outcome.ACCEPTED),
        mesh.Result(mesh.Outcome.DUPLICATE),
        mesh.Result.rejected(mesh.Reason.EXPIRED, "frame expired 3 s ago"),
        mesh.Result.rejected(mesh.Reason.STORE_FULL, ""),
    ]
    return [mesh.encode_results(results), mesh.encode_results(results[:1])]


def check_wire_results(data: bytes) -> None:
    """``mesh.decode_results`` on a frames response body; the count expected is the
    body's own array length when it has one (else 1)."""
    try:
        value = cbor2.loads(data)
        expected = len(value) if isinstance(value, list) else 1
    except Exception:  # cbor2's own errors: the decoder under test refuses these too
        expected = 1
    results = mesh.decode_results(data, expected=expected)
    again = mesh.decode_results(mesh.encode_results(results), expected=expected)
    if again != results:
        raise PropertyFailed("frame results do not round-trip")


# -- RFC 9421 signatures and RFC 9530 digests ----------------------------------------------


_HTTP_WORDS: Final = (
    b"signature-input: ",
    b"signature: ",
    b"content-digest: ",
    b"ptth-request-digest: ",
    b"host: ",
    b"\n",
    b"\n\n",
    b'"@method"',
    b'"@target-uri"',
    b'"@authority"',
    b'"@status"',
    b'"@query"',
    b'"content-digest"',
    b";created=",
    b";keyid=",
    b';alg="ed25519"',
    b";expires=",
    b";nonce=",
    b";tag=",
    b"sig=",
    b"sha-256=:",
    b":",
    b"=",
    b",",
    b";",
    b"(",
    b")",
    b'"',
    b"\\",
    b"?1",
    b"*",
    b"%",
    b"?",
    b"#",
    b"[",
    b"]",
    b"@",
    str(NOW_S).encode(),
    IDENTITY.node_id.text.encode(),
)


def _request_seeds() -> list[bytes]:
    seeds = []
    for index, (method, url, body) in enumerate(
        [
            ("POST", REQUEST_URL, mesh.encode_frames([mesh.WireFrame(0, _sealed_frames()[0])])),
            ("POST", "http://[::1]:80/ptth/v1/attach?x=1", b""),
            ("GET", "https://relay.example/n/abc/path", b"body"),
        ]
    ):
        headers = _fabric.sign_request(IDENTITY, method, url, body, now=NOW_S, nonce=f"n{index}")
        seeds.append(join_message(f"{method} {url}", headers, body))
    return seeds


def check_request_signature(data: bytes) -> None:
    """``node._fabric.verify_request`` (RFC 9421 over method, URL, content-digest), on
    the carrier ``METHOD URL\\nheaders\\n\\nbody``; what verifies was signed by us."""
    first, headers, body = split_message(data)
    method, _, url = first.partition(" ")
    node = _fabric.verify_request(
        method, url, headers, body, now=NOW_S, guard=_fabric.ReplayGuard(max_entries=4)
    )
    if node != IDENTITY.node_id:
        raise PropertyFailed(f"a request verified as sent by {node}, who signs nothing here")


_REQUEST_DIGEST: Final = _httpsig.content_digest(b"the request")


def _response_seeds() -> list[bytes]:
    seeds = []
    for status, body in (
        (200, mesh.encode_results([mesh.Result(mesh.Outcome.ACCEPTED)])),
        (204, b""),
    ):
        headers = _fabric.sign_response(IDENTITY, status, body, _REQUEST_DIGEST, now=NOW_S)
        seeds.append(join_message(str(status), headers, body))
    return seeds


def check_response_signature(data: bytes) -> None:
    """``node._fabric.verify_response`` (the signed receipt of a frames POST), on the
    carrier ``STATUS\\nheaders\\n\\nbody``."""
    first, headers, body = split_message(data)
    status = int(first) if first.isascii() and first.isdigit() and len(first) <= 3 else 200
    _fabric.verify_response(
        status,
        headers,
        body,
        expected=IDENTITY.node_id,
        request_digest=_REQUEST_DIGEST,
        now=NOW_S,
    )


def _field_seeds() -> list[bytes]:
    seeds = [_httpsig.content_digest(b"body").encode()]
    for _, headers, _ in map(split_message, _request_seeds()):
        seeds += [value.encode("latin-1") for name, value in headers if name != "content-digest"]
    seeds += [
        b'a=1, b;x="y";z=?0, c=(1 2.5 :AAA=: tok/en "s\\"q"), d=-12.345',
        b"sig1=(), sig2=();created=1",
    ]
    return seeds


def check_structured_field(data: bytes) -> None:
    """The RFC 8941 dictionary parser behind Signature-Input, Signature and
    Content-Digest, then ``verify_content_digest`` on the same value if it has a
    ``sha-256`` member (the seed digest is of ``b"body"``)."""
    text = data.decode("latin-1")
    members = _httpsig._parse_dictionary(text, "Signature-Input")
    if not isinstance(members, dict):
        raise PropertyFailed("a dictionary parsed to something else")
    if "sha-256" in members:
        _httpsig.verify_content_digest(text, b"body")


# -- message/http (long-poll) --------------------------------------------------------------


def _wrapped_request_seeds() -> list[bytes]:
    return [
        _wrap.encode_request("GET", "/", [], b""),
        _wrap.encode_request(
            "POST", "/ptth/v1/frames?x=1", [("content-type", "application/cbor-seq")], b"abc"
        ),
        b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ]


def check_wrapped_request(data: bytes) -> None:
    """``node._wrap.decode_request``: a visitor's request, as the relay hands it to a
    polling node; what decodes must encode and decode to the same request."""
    method, target, headers, body = _wrap.decode_request(data)
    again = _wrap.decode_request(_wrap.encode_request(method, target, headers, body))
    if again[0] != method or again[1] != target or again[3] != body:
        raise PropertyFailed("a wrapped request does not round-trip")


def _wrapped_response_seeds() -> list[bytes]:
    return [
        _wrap.encode_response(200, [("content-type", "text/plain")], b"hello"),
        _wrap.encode_response(404, [], b""),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ]


def check_wrapped_response(data: bytes) -> None:
    """``node._wrap.decode_response``: a polling node's answer, as the relay reads it."""
    status, headers, body = _wrap.decode_response(data)
    if status in (204, 304) or status < 200:
        return  # no body is allowed to be framed for these: nothing to round-trip
    again = _wrap.decode_response(_wrap.encode_response(status, headers, body))
    if again[0] != status or again[2] != body:
        raise PropertyFailed("a wrapped response does not round-trip")


_WRAP_WORDS: Final = (
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"content-length: ",
    b"transfer-encoding: chunked",
    b"connection: close",
    b"upgrade: ptth/1.0",
    b"expect: 100-continue",
    b"host: a",
    b"0\r\n\r\n",
    b"GET ",
    b"HEAD ",
    b"CONNECT ",
    b" 101 ",
    b" 204 ",
    b" 304 ",
)


# -- small parsers of header values and relay answers --------------------------------------


def check_header_numbers(data: bytes) -> None:
    """The numbers read from peers' headers and answers: the relay's ``PTTH-Lease``
    (``_relay._requested_lease``), a ``Retry-After`` (``_forwarder._retry_after``,
    ``_attach._retry_after``), a relay's lease and hold (``_attach._seconds``). None
    may raise; each returns a sane number or its default."""
    text = data.decode("latin-1")
    lease = _relay._requested_lease(text, 3600.0)
    if not 1.0 <= lease <= 3600.0:
        raise PropertyFailed(f"lease {lease!r} is outside 1..3600")
    after = _forwarder._retry_after(text)
    if after is not None and not 0 <= after <= 300:
        raise PropertyFailed(f"retry-after {after!r} is outside 0..300")
    seconds = _attach._seconds(text, 60.0)
    if not math.isfinite(seconds) or seconds < 0:
        raise PropertyFailed(f"seconds {seconds!r} is not a finite duration")
    # An attaching node reads a relay's Retry-After too (seconds or an HTTP date).
    waited = _attach._retry_after(text, NOW_MS)
    if waited is not None and not math.isfinite(waited):
        raise PropertyFailed(f"attach retry-after {waited!r} is not finite")


def _number_seeds() -> list[bytes]:
    return [
        b"60", b"1.5", b"0", b"-1", b"1e3", b"nan", b"inf", b" 30 ", b"300",
        b"Wed, 21 Oct 2037 07:28:00 GMT",
    ]  # fmt: skip


def check_relay_session(data: bytes) -> None:
    """``node._attach._session``: the JSON a relay answers a long-poll attach with;
    refusals are ``_AttachFailed``."""
    session = _attach._session(data)
    if not isinstance(session, dict):
        raise PropertyFailed("a poll session is not a JSON object")


def _session_seeds() -> list[bytes]:
    return [
        json.dumps(
            {
                "mode": "long-poll",
                "poll": "/ptth/v1/poll/abcDEF_-123",
                "base_url": "http://relay/n/x",
                "lease": 60,
                "hold": 25.0,
            }
        ).encode()
    ]


_JSON_WORDS: Final = (b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"1e999", b"\\u0000")


# -- the HTTP server -----------------------------------------------------------------------

#: Virtual seconds one connection may take before it counts as a hang: past every
#: timeout of the default ServerConfig (idle 60 s, headers 10 s, body 30 s).
_CONNECTION_LIMIT: Final = 1000.0
#: Inputs run in one ``trio.run``.
SERVER_BATCH: Final = 500


async def _trivial_handler(request: Request) -> Response:
    return Response.text(200, f"{request.method} {request.path} {len(request.body)} bytes")


async def _one_connection(server: Server, data: bytes) -> BaseException | None:
    """Send ``data`` (then end of file if its length is even) on a memory stream to
    ``server``; read until it closes. Returns what ``serve_stream`` raised, or
    :class:`Hang` if it did not close within the limit."""
    client, remote = trio.testing.memory_stream_pair()
    received = bytearray()
    failure: BaseException | None = None

    async def serve() -> None:
        nonlocal failure
        try:
            await server.serve_stream(remote)
        except Exception as exc:
            failure = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(data)
        if len(data) % 2 == 0:
            await client.send_eof()
        with trio.move_on_after(_CONNECTION_LIMIT) as scope:
            while chunk := await client.receive_some(65536):
                received += chunk
        if scope.cancelled_caught and failure is None:
            failure = Hang(f"the server neither answered nor closed in {_CONNECTION_LIMIT} s")
        nursery.cancel_scope.cancel()
    await client.aclose()
    if failure is None and received and not received.startswith(b"HTTP/1.1 "):
        failure = PropertyFailed(f"the server wrote a non-HTTP answer: {bytes(received[:40])!r}")
    return failure


def run_server_batch(inputs: Sequence[bytes]) -> list[Outcome]:
    """Each input as one connection to a :class:`Server` with a trivial handler, all in
    one ``trio.run`` on a virtual clock (so its timeouts pass instantly)."""

    async def main() -> list[Outcome]:
        server = Server(_trivial_handler, ServerConfig())
        outcomes: list[Outcome] = []
        for data in inputs:
            started = time.perf_counter()
            failure = await _one_connection(server, data)
            outcomes.append((failure, time.perf_counter() - started))
        return outcomes

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def check_server(data: bytes) -> None:
    """One connection to the server (see :func:`run_server_batch`)."""
    ((failure, _),) = run_server_batch([data])
    if failure is not None:
        raise failure


def _server_seeds() -> list[bytes]:
    return [
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: a\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\n",
        b"POST /ptth/v1/frames HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST /u HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: ptth/1.0\r\n"
        b"content-length: 0\r\n\r\n",
        b"PUT /e HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    ]


# -- the local API -----------------------------------------------------------------------

API_TOKEN: Final = "fuzz-token"  # noqa: S105 - the stub node's API token
_FRAME_ID: Final = b"\x00" * 16


class _Subscription:
    patterns: tuple[str, ...] = ()

    async def pending(self) -> list[Any]:
        return []


class _Chirp:
    """Chirp's calls, answered at once."""

    async def post(self, text: str) -> Published:
        return Published(_FRAME_ID, f"~{IDENTITY.node_id.text}.chirp", (), False)

    async def follow(self, who: crypto.NodeId) -> list[crypto.NodeId]:
        return [who]

    async def unfollow(self, who: crypto.NodeId) -> bool:
        return who == OTHER.node_id

    async def following(self) -> list[crypto.NodeId]:
        return [OTHER.node_id]

    async def timeline(self) -> list[Any]:
        return []


class ApiStub:
    """What the local API needs from a node (:class:`node._api.ApiHost`), answered at
    once without a store or a network, validating what a node validates (frames are
    real :class:`crypto.Frame` objects; tokens are really parsed)."""

    api_token = API_TOKEN
    identity = IDENTITY
    chirp = _Chirp()

    def new_frame(
        self,
        dst: crypto.NodeId,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
    ) -> crypto.Frame:
        lifetime = int((ttl or 3600) * 1000)
        return crypto.Frame(
            crypto.Kind.MSG,
            src=IDENTITY.node_id,
            id=_FRAME_ID,
            ts=NOW_MS,
            exp=NOW_MS + lifetime,
            hops=8,
            dst=dst,
            body=body,
            ct=ct,
            rr=True if receipt else None,
        )

    def __init__(self) -> None:
        #: Idempotency records, as the store keeps them (by key).
        self.records: dict[str, mesh.Idempotent] = {}

    def _remember(self, record: mesh.Idempotent) -> None:
        earlier = self.records.setdefault(record.key, record)
        if earlier is not record:
            raise Replayed(earlier)

    async def send_sealed(
        self,
        frames: Sequence[tuple[crypto.Frame, bytes]],
        *,
        idempotent: Callable[[list[Sent]], mesh.Idempotent] | None = None,
    ) -> list[Sent]:
        sent = [Sent(frame.id, frame.dst or OTHER.node_id, None) for frame, _ in frames]
        if idempotent is not None:
            self._remember(idempotent(sent))
        return sent

    def _trace(self) -> mesh.Trace:
        return mesh.Trace(
            _FRAME_ID, OTHER.node_id, "msg", NOW_MS, NOW_MS + 1, True, "delivered",
            None, None, None, NOW_MS, 1, OTHER.node_id, None, (),
        )  # fmt: skip

    async def delivered(self, frame_id: bytes) -> mesh.Trace:
        return self._trace()

    async def trace(self, frame_id: bytes) -> mesh.Trace | None:
        return self._trace() if frame_id == _FRAME_ID else None

    def routes(self) -> list[dict[str, Any]]:
        return []

    async def queues(self) -> list[dict[str, Any]]:
        return [{"next_hop": OTHER.node_id.text, "frames": 1, "bytes": 800}]

    async def purge_queue(self, next_hop: crypto.NodeId | None) -> tuple[int, int]:
        return (1, 800) if next_hop == OTHER.node_id else (0, 0)

    async def current_status(self) -> dict[str, Any]:
        return {"node": IDENTITY.node_id.text}

    async def inbox_pages(self, *, follow: bool = True) -> AsyncGenerator[Any, None]:
        return
        yield  # an async generator that yields nothing

    async def ack(self, keys: Sequence[tuple[crypto.NodeId, bytes] | bytes]) -> int:
        return len(keys)

    async def add_peer(self, token: str) -> crypto.SignedAddress:
        return crypto.parse_token(token, now=NOW_MS)

    def policy(self) -> dict[str, Any]:
        return {"admission": "neighbours", "inbox": "anyone", "blocked": [], "allowed": []}

    async def change_policy(self, change: str, node: crypto.NodeId) -> bool:
        return change in ("block", "allow")

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        idempotent: Callable[[Published], mesh.Idempotent] | None = None,
    ) -> Published:
        crypto.Frame(
            crypto.Kind.PUB, src=IDENTITY.node_id, id=_FRAME_ID, ts=NOW_MS, exp=NOW_MS + 1,
            hops=8, topic=topic, body=body, ct=ct,
        )  # fmt: skip
        owner = mesh.secure_owner(topic)
        if owner is not None and owner != IDENTITY.node_id:
            raise NodeError(f"{topic!r} is {owner.short}'s secure name")
        published = Published(_FRAME_ID, topic, (), False)
        if idempotent is not None:
            self._remember(idempotent(published))
        return published

    @contextlib.asynccontextmanager
    async def subscribe(self, *patterns: str, name: str | None = None) -> AsyncIterator[Any]:
        yield _Subscription()

    async def subscriptions(self) -> list[mesh.SavedSubscription]:
        return [mesh.SavedSubscription("saved", ("news.#",), 60_000, NOW_MS)]

    async def unsubscribe(self, name: str) -> bool:
        return name == "saved"

    def capabilities(self) -> dict[str, Any]:
        return {"requires": [], "held": [], "revocations": 0}

    def hold(self, capability: crypto.Capability | str) -> crypto.Capability:
        return crypto.parse_capability(capability) if isinstance(capability, str) else capability

    async def add_revocation(self, revocation: crypto.Revocation) -> bool:
        return True

    @property
    def objects(self) -> Any:
        raise NodeError("the fuzz stand-in exposes no objects")


def _api_request(data: bytes) -> Request:
    first, headers, body = split_message(data)
    method, _, target = first.partition(" ")
    if not any(name == "authorization" for name, _ in headers):
        headers.append(("authorization", f"Bearer {API_TOKEN}"))
    return Request(method, target, headers, body, "127.0.0.1:5555")


async def _api_check(api: LocalApi, data: bytes) -> None:
    response = await api.handle(_api_request(data))
    if response.stream is None and not response.body.startswith((b"{", b"[")):
        raise PropertyFailed(f"the API answered {response.status} without JSON")
    if response.status >= 500 and response.status != 503:
        raise PropertyFailed(f"the API answered {response.status}")


def run_api_batch(inputs: Sequence[bytes]) -> list[Outcome]:
    """Each input as one request to :class:`node._api.LocalApi` over :class:`ApiStub`,
    all in one ``trio.run`` on a virtual clock (``&wait=1&timeout=S`` passes at once)."""

    async def main() -> list[Outcome]:
        # A cast only for chirp (a stand-in, not a node._chirp.Chirp): every other member
        # is checked against ApiHost (drop the cast to see).
        api = LocalApi(cast("ApiHost", ApiStub()))
        outcomes: list[Outcome] = []
        for data in inputs:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                with trio.move_on_after(_CONNECTION_LIMIT) as scope:
                    await _api_check(api, data)
                if scope.cancelled_caught:
                    failure = Hang(f"the API did not answer in {_CONNECTION_LIMIT} s")
            except Exception as exc:
                failure = exc
            outcomes.append((failure, time.perf_counter() - started))
        return outcomes

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def check_api(data: bytes) -> None:
    """One request to the local API (see :func:`run_api_batch`)."""
    ((failure, _),) = run_api_batch([data])
    if failure is not None:
        raise failure


def _api_seeds() -> list[bytes]:
    other = OTHER.node_id.text
    token = _address().token
    calls: list[tuple[str, str, list[tuple[str, str]], bytes | str]] = [
        ("POST", f"/api/v1/send?to={other}&receipt=1", [("content-type", "text/plain")], b"hi"),
        ("POST", f"/api/v1/send?to={other}&wait=1&timeout=2.5", [], b"\xff\x00"),
        ("POST", "/api/v1/inbox/ack", [], json.dumps({"ids": [f"{other}:{'00' * 16}", "ab"]})),
        ("GET", "/api/v1/inbox?follow=0", [], b""),
        ("GET", f"/api/v1/trace/{'00' * 16}", [], b""),
        ("GET", "/api/v1/status", [], b""),
        ("GET", "/api/v1/neighbours", [], b""),
        ("POST", f"/api/v1/queues/{other}/purge", [], b""),
        ("POST", "/api/v1/queues/held/purge", [], b""),
        ("POST", "/api/v1/peers", [], token.encode()),
        ("POST", "/api/v1/publish?topic=news.sport&ttl=60", [("content-type", "a/b")], b"x"),
        ("GET", "/api/v1/subscribe?pattern=news.*&pattern=%23&name=saved", [], b""),
        ("GET", f"/api/v1/subscribe?name=saved&access_token={API_TOKEN}", [], b""),
        ("GET", "/api/v1/subscriptions", [], b""),
        ("POST", "/api/v1/subscriptions/saved/ack", [], b'{"seqs": [1, 2, 3]}'),
        ("DELETE", "/api/v1/subscriptions/sa%76ed", [], b""),
        ("POST", "/api/v1/chirp/post", [], "héllo".encode()),
        ("POST", f"/api/v1/chirp/follow?node={other}", [], b""),
        ("POST", f"/api/v1/chirp/unfollow?node={other}", [], b""),
        ("GET", "/api/v1/chirp/timeline?follow=1", [], b""),
    ]
    return [
        join_message(
            f"{method} {target}", headers, body if isinstance(body, bytes) else body.encode()
        )
        for method, target, headers, body in calls
    ]


_API_WORDS: Final = (
    b"?",
    b"&",
    b"=",
    b"%",
    b"%2F",
    b"%00",
    b"/",
    b"to=",
    b"wait=1",
    b"timeout=",
    b"ttl=",
    b"topic=",
    b"pattern=",
    b"name=",
    b"node=",
    b"receipt=1",
    b"follow=1",
    b"access_token=",
    b"authorization: Bearer ",
    API_TOKEN.encode(),
    OTHER.node_id.text.encode(),
    IDENTITY.node_id.text.encode(),
    b'{"ids": [',
    b'{"seqs": [',
    b"]}",
    b"nan",
    b"inf",
    b"1e999",
    b"-0",
    b"~",
    b"\n",
)


def _xmpp_seeds() -> list[bytes]:
    """What an XMPP server sends a component: the stream header, stanzas (presence,
    message with escaped text, iq), whitespace keep-alives, the close."""
    header = (
        b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
        b"xmlns='jabber:component:accept' from='ptth.example' id='abc123'>"
    )
    stanzas = (
        b"<handshake/>"
        b"<presence from='u@example.org/phone' to='news.tech@ptth.example' type='subscribe'/>"
        b" \n"
        b"<message from='u@example.org' to='news@ptth.example/tech' type='chat'>"
        b"<body>hello &amp; &lt;world&gt; \xc3\xa9</body></message>"
        b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>"
    )
    return [header + stanzas + b"</stream:stream>", header, header + stanzas]


def check_xmpp(data: bytes) -> None:
    """``mesh._xmpp.StreamParser``: what a (hostile) XMPP server sends, fed in two pieces:
    an XmppStreamError (a stream error's condition) for anything refused, never more."""
    parser = _xmpp.StreamParser()
    half = len(data) // 2
    parser.feed(data[:half])
    parser.feed(data[half:])


def _stomp_seeds() -> list[bytes]:
    """A client's whole conversation: connect, subscribe (each ack mode), send with and
    without content-length, a transaction, acks, heart-beat EOLs, disconnect."""
    frames = [
        _stomp.Frame(
            "CONNECT",
            (("accept-version", "1.0,1.1,1.2"), ("host", "h"), ("heart-beat", "1000,1000")),
        ),
        _stomp.Frame("SUBSCRIBE", (("id", "0"), ("destination", "/topic/news.#"), ("ack", "auto"))),
        _stomp.Frame(
            "SUBSCRIBE",
            (
                ("id", "1"),
                ("destination", "/queue/feed"),
                ("ack", "client-individual"),
                ("pattern", "a.*,b.#"),
            ),
        ),
        _stomp.Frame("SUBSCRIBE", (("id", "2"), ("destination", "/node/me"), ("ack", "client"))),
        _stomp.Frame(
            "SEND",
            (
                ("destination", "/topic/news.tech"),
                ("receipt", "r1"),
                ("content-type", "text/plain"),
            ),
            b"hello\x00world",
        ),
        _stomp.Frame("BEGIN", (("transaction", "t1"),)),
        _stomp.Frame(
            "SEND", (("destination", f"/node/{IDENTITY.node_id.text}"), ("transaction", "t1")), b"x"
        ),
        _stomp.Frame("ACK", (("id", "m-1"), ("transaction", "t1"))),
        _stomp.Frame("COMMIT", (("transaction", "t1"),)),
        _stomp.Frame("NACK", (("id", "m-2"),)),
        _stomp.Frame("UNSUBSCRIBE", (("id", "0"),)),
        _stomp.Frame("DISCONNECT", (("receipt", "bye"),)),
    ]
    whole = b"\n".join(_stomp.encode(frame) for frame in frames)
    # Also a NUL-terminated SEND (no content-length), as hand-written clients send.
    bare = b"SEND\ndestination:/topic/a\n\nno length\x00\n"
    return [whole, _stomp.encode(frames[0]) + bare, _stomp.encode(frames[0])]


def check_stomp(data: bytes) -> None:
    """``mesh._stomp``: a client's bytes through the Decoder (fed in two pieces, as a
    socket splits them) and every frame through a Session: a StompError for bad bytes,
    an ERROR action for a bad frame, never anything else."""
    decoder = _stomp.Decoder()
    session = _stomp.Session(local=IDENTITY.node_id)
    half = len(data) // 2
    for piece in (data[:half], data[half:]):
        for frame in decoder.feed(piece):
            session.receive(frame)
            if session.closed:
                return
            if session.version is not None:
                decoder.version = session.version


# -- the tree and the DHT: coordinates, offers, lookups ---------------------------------------

#: How long the seeds' coordinates are valid (ptth's own: 30 minutes).
_COORD_LIFETIME_MS: Final = 30 * 60 * 1000


@functools.cache
def _root_statement() -> bytes:
    """:data:`IDENTITY` as a tree's root, as of :data:`NOW_MS` (signed once: the same
    bytes every time, and every input needs them)."""
    return crypto.root_statement(IDENTITY, now=NOW_MS, lifetime_ms=_COORD_LIFETIME_MS)


@functools.cache
def _chains() -> tuple[bytes, bytes]:
    """(Made once.) The wire forms of :data:`IDENTITY`'s chain (the root's statement) and of
    :data:`OTHER`'s, one level below it."""
    root = crypto.CoordChain((_root_statement(),))
    coordinates = root.verify(now=NOW_MS)
    grant = crypto.grant_coordinates(
        IDENTITY, OTHER.node_id, coordinates, now=NOW_MS, lifetime_ms=_COORD_LIFETIME_MS
    )
    return root.encode(), crypto.CoordChain((*root.grants, grant)).encode()


def _payload_of(envelope: bytes) -> bytes:
    """The signed payload of one of our envelopes, as the bytes that were signed."""
    return cast(bytes, cbor2.loads(envelope).value[2])


def _coord_grant_seeds() -> list[bytes]:
    _, other = _chains()
    return [_payload_of(grant) for grant in crypto.CoordChain.decode(other).grants]


def check_coord_grant(data: bytes) -> None:
    """``crypto.CoordChain.verify`` on a grant payload a hostile node signed: as a root's
    statement on its own, else as the grant below :data:`IDENTITY`'s statement (tree
    offers, DHT answers and frames carry such chains); what verifies places the signer
    where it may."""
    grant = _signed(data, _envelope.Purpose.COORD)
    with contextlib.suppress(*_CRYPTO_ERRORS):  # else not a root's statement: a grant?
        alone = crypto.CoordChain((grant,)).verify(now=NOW_MS)
        if alone.path != (IDENTITY.node_id,):
            raise PropertyFailed(f"a root statement verified as the path {alone.path}")
        return
    below = crypto.CoordChain((_root_statement(), grant)).verify(now=NOW_MS)
    if below.path[0] != IDENTITY.node_id or len(below.path) != 2:
        raise PropertyFailed(f"a grant below the root verified as the path {below.path}")


def _coord_chain_seeds() -> list[bytes]:
    return list(_chains())


def check_coord_chain(data: bytes) -> None:
    """``crypto.CoordChain.parse``: a chain's wire form (a CBOR array of grants); what
    verifies is rooted at :data:`IDENTITY`, the only root here."""
    coordinates = crypto.CoordChain.parse(data, now=NOW_MS)
    if coordinates.root != IDENTITY.node_id:
        raise PropertyFailed(f"a chain verified as rooted at {coordinates.root}")


def _tree_offer_seeds() -> list[bytes]:
    mine, other = _chains()
    grant = crypto.CoordChain.decode(other).grants[-1]
    around = ((IDENTITY.node_id, OTHER.node_id), (IDENTITY.node_id,))
    return [
        mesh.offer_body(mine, None),
        mesh.offer_body(mine, grant),
        mesh.offer_body(mine, grant, around),
        mesh.offer_body(mine, None, around[:1]),
    ]


def check_tree_offer(data: bytes) -> None:
    """The body of a tree offer (a ``crd`` frame) from :data:`IDENTITY`, read and handed
    to :data:`OTHER`'s tree (``mesh.Tree.on_offer``); what is read round-trips through
    :func:`mesh.offer_body`, and a place taken is below the offering root."""
    chain, grant, around = _engine._offer_body(data)
    if _engine._offer_body(mesh.offer_body(chain, grant, around)) != (chain, grant, around):
        raise PropertyFailed("a tree offer read does not round-trip")
    tree = mesh.Tree(OTHER, eligible_root=False)
    tree.add_neighbour(IDENTITY.node_id, mesh.Role.PEER, now=NOW_MS)
    tree.on_offer(IDENTITY.node_id, mesh.Role.PEER, chain, grant, now=NOW_MS, around=around)
    placed = tree.coordinates
    if placed is not None and placed.path != (IDENTITY.node_id, OTHER.node_id):
        raise PropertyFailed(f"an offer placed us at {placed.path}")


def _dht() -> tuple[mesh.Dht, bytes]:
    """:data:`IDENTITY`'s DHT, at the root of its tree, knowing :data:`OTHER` and asking
    it for :data:`OTHER`'s coordinates; and the id of that query (the same every time:
    the DHT's random draws are seeded)."""
    mine, other = _chains()
    dht = mesh.Dht(
        IDENTITY.node_id,
        contacts=mesh.Contacts(IDENTITY.node_id, rng=random.Random(0)),
        records=mesh.Records(),
        rng=random.Random(0),
    )
    dht.set_coordinates(mine, NOW_MS)
    dht.introduce(other, NOW_MS)
    _, actions = dht.find(OTHER.node_id, value=True, now=NOW_MS)
    (query,) = (action for action in actions if isinstance(action, mesh.DhtSend))
    return dht, mesh.decode_message(query.body).q


def _dht_seeds() -> list[bytes]:
    mine, other = _chains()
    _, q = _dht()
    fresh = bytes(range(8))
    messages: list[mesh.DhtMessage] = [
        mesh.DhtFind(fresh, IDENTITY.node_id, True, other, (OTHER.node_id,)),
        mesh.DhtFind(fresh, OTHER.node_id, False, other, ()),
        mesh.DhtStore(fresh, OTHER.node_id, other, 60_000),
        mesh.DhtPing(fresh, other),
        mesh.DhtFound(q, ((OTHER.node_id, other), (IDENTITY.node_id, mine)), other, other),
        mesh.DhtFound(q, (), None, None),
        mesh.DhtStored(q),
        mesh.DhtPong(q, other),
        mesh.DhtRefused(q, "no"),
    ]
    return [mesh.encode_message(message) for message in messages]


def check_dht(data: bytes) -> None:
    """``mesh.decode_message`` and ``mesh.Dht.on_message``: a DHT message body from
    :data:`OTHER` (a question, or an answer to the lookup :func:`_dht` started). A
    message read round-trips; the DHT raises only what it documents."""
    message = mesh.decode_message(data)
    if not isinstance(message, mesh.DhtUnknownOp):
        with contextlib.suppress(crypto.TooLarge):  # a longer why is cut when sent
            if mesh.decode_message(mesh.encode_message(message)) != message:
                raise PropertyFailed(f"a DHT {type(message).__name__} does not round-trip")
    dht, _ = _dht()
    dht.on_message(OTHER.node_id, data, NOW_MS)


def _revocation_seeds() -> list[bytes]:
    return [
        _payload_of(crypto.Revocation.sign(IDENTITY, bytes([n]) * 16, now=NOW_MS).envelope)
        for n in range(2)
    ]


def check_revocation(data: bytes) -> None:
    """``crypto.Revocation.open`` on a revocation payload a hostile node signed (they
    flood the mesh)."""
    revocation = crypto.Revocation.open(_signed(data, _envelope.Purpose.REVOCATION))
    if revocation.signer != IDENTITY.node_id:
        raise PropertyFailed("a revocation opened as signed by another node")


_TREE_WORDS: Final = tuple(
    _cbor.encode(word)
    for word in (
        *("root", "ts", "child", "depth", "exp", "up", "op", "q", "key", "value", "from"),
        *("known", "nodes", "ttl", "why", "find", "found", "store", "stored", "ping", "pong"),
        *("refused", "cap", OTHER.node_id.raw, b"\x00" * 8, *_EDGE_VALUES),
    )
)


# -- the registry ----------------------------------------------------------------------------

_CRYPTO_ERRORS: Final = (crypto.Malformed, crypto.BadSignature, crypto.WrongPurpose, crypto.Expired)

TARGETS: Final[dict[str, Target]] = {
    target.name: target
    for target in [
        Target(
            "cbor",
            "crypto._cbor.decode: any CBOR item from a peer (payloads; envelopes with "
            "max_items and tag 18); accepted values round-trip",
            check_cbor,
            (crypto.Malformed,),
            _cbor_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "cbor_bounds",
            "crypto._cbor.check_bounds and decode_sequence (the walk before integer keys, "
            "and the frames body's sequence)",
            check_cbor_bounds,
            (crypto.Malformed,),
            _cbor_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "envelope",
            "crypto.open: COSE_Sign1 envelope bytes (headers, tag, signature)",
            check_envelope,
            (crypto.Malformed, crypto.WrongPurpose, crypto.BadSignature),
            _envelope_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "frame",
            "crypto.Frame.open on a frame payload a hostile node signed",
            check_frame,
            (crypto.Malformed, crypto.Expired),
            _frame_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "address",
            "crypto.SignedAddress.open on an address payload a hostile node signed "
            "(announce bodies), and its token",
            check_address,
            (crypto.Malformed, crypto.Expired),
            _address_seeds,
            (*_FRAME_WORDS, b"http://", b"https://", b"[::1]", b":0", b"@", b"?", b"#"),
        ),
        Target(
            "token",
            "crypto.parse_token: 'ptth:...' address token text",
            check_token,
            _CRYPTO_ERRORS,
            _token_seeds,
            (b"ptth:", b"-", b"_", b"=", b" ", b"\n", b"A", b"/", b"+"),
            cbor=False,
        ),
        Target(
            "capability",
            "crypto.Capability.open on a capability payload a hostile node signed "
            "(the chain it embeds, its caveats), and its token",
            check_capability,
            (*_CRYPTO_ERRORS, crypto.CapabilityRefused),
            _capability_seeds,
            (*_FRAME_WORDS, b"up", b"ops", b"obj", b"publish", b"#", b"*"),
        ),
        Target(
            "cap_token",
            "crypto.parse_capability: 'ptthcap:...' capability token text",
            check_cap_token,
            (*_CRYPTO_ERRORS, crypto.CapabilityRefused),
            _cap_token_seeds,
            (b"ptthcap:", b"-", b"_", b"=", b" ", b"\n", b"A", b"/", b"+"),
            cbor=False,
        ),
        Target(
            "node_id",
            "crypto.NodeId.parse: node id text in paths, queries and keyids",
            check_node_id,
            (crypto.Malformed,),
            _node_id_seeds,
            (b"a", b"2", b"7", b"8", b"A", b"=", b"q", b"\xc3\xa4"),
            cbor=False,
        ),
        Target(
            "wire_frames",
            "mesh.decode_frames on a POST /ptth/v1/frames body, then mesh.admit per frame",
            check_wire_frames,
            (crypto.Malformed,),
            _wire_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "wire_results",
            "mesh.decode_results on a frames response body",
            check_wire_results,
            (crypto.Malformed,),
            _results_seeds,
            tuple(_cbor.encode(w) for w in ("accepted", "duplicate", "rejected", "expired", 0)),
        ),
        Target(
            "request_sig",
            "node._fabric.verify_request: RFC 9421 Signature-Input/Signature/Content-Digest "
            "of a request (method, URL, headers, body)",
            check_request_signature,
            _CRYPTO_ERRORS,
            _request_seeds,
            _HTTP_WORDS,
            cbor=False,
        ),
        Target(
            "response_sig",
            "node._fabric.verify_response: the signed receipt of a frames POST",
            check_response_signature,
            _CRYPTO_ERRORS,
            _response_seeds,
            _HTTP_WORDS,
            cbor=False,
        ),
        Target(
            "sf_fields",
            "crypto._httpsig RFC 8941 dictionary parser and verify_content_digest",
            check_structured_field,
            (crypto.Malformed, crypto.BadSignature),
            _field_seeds,
            _HTTP_WORDS,
            cbor=False,
        ),
        Target(
            "wrap_request",
            "node._wrap.decode_request: a message/http request handed to a polling node",
            check_wrapped_request,
            (_wrap.WrapError,),
            _wrapped_request_seeds,
            _WRAP_WORDS,
            cbor=False,
        ),
        Target(
            "wrap_response",
            "node._wrap.decode_response: a polling node's message/http answer at the relay",
            check_wrapped_response,
            (_wrap.WrapError,),
            _wrapped_response_seeds,
            _WRAP_WORDS,
            cbor=False,
        ),
        Target(
            "header_numbers",
            "PTTH-Lease (relay), Retry-After (forwarder), a relay's lease/hold (attach): "
            "must never raise",
            check_header_numbers,
            (),
            _number_seeds,
            (b"1", b"0", b".", b"e", b"-", b"+", b"_", b"\xb2", b"inf", b"nan", b" "),
            cbor=False,
        ),
        Target(
            "relay_session",
            "node._attach._session: the JSON a relay answers a long-poll attach with",
            check_relay_session,
            (_attach._AttachFailed,),
            _session_seeds,
            _JSON_WORDS,
            cbor=False,
        ),
        Target(
            "api",
            "node._api.LocalApi.handle: query strings, paths and JSON bodies of local API "
            "calls (a stub node); must answer, never raise",
            check_api,
            (),
            _api_seeds,
            _API_WORDS,
            cbor=False,
            batch=run_api_batch,
            share=0.2,
        ),
        Target(
            "xmpp",
            "mesh._xmpp.StreamParser: an XMPP server's stream to the component (bounded "
            "expat, no DTD or entities)",
            check_xmpp,
            (_xmpp.XmppStreamError,),
            _xmpp_seeds,
            (b"<", b">", b"/>", b"</", b"&amp;", b"<!DOCTYPE x [", b"<!ENTITY", b"'", b"xmlns"),
            cbor=False,
        ),
        Target(
            "call",
            "mesh.Call/Reply.decode: the bodies of call and reply frames (objects)",
            check_call,
            (crypto.Malformed,),
            _call_seeds,
            _FRAME_WORDS,
        ),
        Target(
            "coord_grant",
            "crypto.CoordChain.verify on a tree grant payload a hostile node signed (a "
            "root's statement, and a grant below the root)",
            check_coord_grant,
            _CRYPTO_ERRORS,
            _coord_grant_seeds,
            _TREE_WORDS,
        ),
        Target(
            "coord_chain",
            "crypto.CoordChain.parse: a coordinate chain's wire form (tree offers, DHT "
            "messages, frames' coordinates)",
            check_coord_chain,
            _CRYPTO_ERRORS,
            _coord_chain_seeds,
            _TREE_WORDS,
        ),
        Target(
            "tree_offer",
            "the body of a tree offer (crd frame: chain, grant, neighbours' paths) and "
            "mesh.Tree.on_offer",
            check_tree_offer,
            _CRYPTO_ERRORS,
            _tree_offer_seeds,
            _TREE_WORDS,
        ),
        Target(
            "dht",
            "mesh.decode_message and mesh.Dht.on_message: DHT questions and answers from "
            "another node",
            check_dht,
            (crypto.Malformed,),
            _dht_seeds,
            _TREE_WORDS,
        ),
        Target(
            "revocation",
            "crypto.Revocation.open on a revocation payload a hostile node signed",
            check_revocation,
            _CRYPTO_ERRORS,
            _revocation_seeds,
            _TREE_WORDS,
        ),
        Target(
            "stomp",
            "mesh._stomp: a STOMP client's bytes through the Decoder and each frame through "
            "a Session (the gateway's protocol state)",
            check_stomp,
            (_stomp.StompError,),
            _stomp_seeds,
            (b"\n", b"\x00", b":", b"content-length:", b"receipt:", b"SEND", b"\\c", b"\r\n"),
            cbor=False,
        ),
        Target(
            "server",
            "node._server.Server: arbitrary bytes on a connection (trivial handler) must end "
            "in an HTTP answer or a close",
            check_server,
            (),
            _server_seeds,
            _WRAP_WORDS,
            cbor=False,
            batch=run_server_batch,
            share=0.05,
        ),
    ]
}
