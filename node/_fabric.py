"""Hop-by-hop authentication of node-to-node HTTP (docs/architecture.md).

Requests are signed with HTTP Message Signatures (RFC 9421), alg ed25519, ``keyid`` =
the sender's node id, covering ``@method``, ``@target-uri``, ``content-digest`` (RFC
9530) and ``created``. A node id *is* its public key, so the key for a keyid is the id
itself: authentication proves which node sent a request; whether to serve that node is
a policy above this.

Responses to ``/ptth/v1/frames`` are signed by the receiver, covering ``@status``,
their own ``content-digest`` and ``ptth-request-digest`` (the request's digest echoed),
so the per-frame results are a receipt bound to the request they answer.

A signature may be presented once: :class:`ReplayGuard` remembers signatures for the
window in which they are valid, and anything older is refused as expired.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Final

import crypto
from crypto import _httpsig

__all__ = [
    "REQUEST_COMPONENTS",
    "RESPONSE_COMPONENTS",
    "ReplayGuard",
    "sign_request",
    "sign_response",
    "verify_request",
    "verify_request_body",
    "verify_request_head",
    "verify_response",
]

REQUEST_COMPONENTS: Final = ("@method", "@target-uri", "content-digest")
RESPONSE_COMPONENTS: Final = ("@status", "content-digest", "ptth-request-digest")
REQUEST_DIGEST_HEADER: Final = "ptth-request-digest"


def _public_key(keyid: str) -> bytes:
    return crypto.NodeId.parse(keyid).raw


def sign_request(
    identity: crypto.Identity,
    method: str,
    url: str,
    body: bytes,
    *,
    now: int,
    nonce: str | None = None,
) -> list[tuple[str, str]]:
    """The headers that authenticate a request from ``identity`` (``now`` in seconds).

    Ed25519 is deterministic, so two identical requests in the same second would carry
    the same signature and the second would look like a replay: pass a fresh ``nonce``
    (RFC 9421 §2.3) for each request.
    """
    digest = _httpsig.content_digest(body)
    message = _httpsig.Message(headers=[("content-digest", digest)], method=method, target_uri=url)
    signature = _httpsig.sign_message(
        message,
        signing_key=identity.sign,
        keyid=identity.node_id.text,
        created=now,
        components=REQUEST_COMPONENTS,
        nonce=nonce,
    )
    return [("content-digest", digest), *signature]


def verify_request(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    now: int,
    guard: ReplayGuard | None = None,
) -> crypto.NodeId:
    """Check a request's signature and digest; return the node that sent it.

    :func:`verify_request_head` then :func:`verify_request_body`: see those.
    """
    sender = verify_request_head(method, url, headers, now=now, guard=guard)
    verify_request_body(headers, body)
    return sender


def verify_request_head(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    now: int,
    guard: ReplayGuard | None = None,
) -> crypto.NodeId:
    """Check a request's signature from its head alone; return the node that sent it.

    The signature covers the ``Content-Digest`` header, so it can be checked before a
    byte of the body is read; :func:`verify_request_body` then checks the body against
    that digest. A server decides from the head whether to read the body at all.

    Raises :class:`crypto.BadSignature` (401) if it is unsigned, signed badly, does not
    cover what we require, or was seen before; :class:`crypto.Expired` if its signature
    is too old; :class:`crypto.Malformed` for unparseable signature fields. The
    sender's fault, all of them.
    """
    message = _httpsig.Message(headers=headers, method=method, target_uri=url)
    verified = _httpsig.verify_message(
        message, public_key_for=_public_key, now=now, required_components=REQUEST_COMPONENTS
    )
    if guard is not None:
        # The decoded signature, not the header's text: the same signature spelled
        # another way (base64 padding, another dictionary member) is the same request.
        guard.check(verified.keyid, verified.signature, now=now)
    return crypto.NodeId.parse(verified.keyid)


def verify_request_body(headers: Sequence[tuple[str, str]], body: bytes) -> None:
    """Check the body of a request whose head :func:`verify_request_head` accepted
    against its signed ``Content-Digest``; raises :class:`crypto.BadSignature` if it
    differs (the sender's fault: 401) and :class:`crypto.Malformed` if the digest field
    cannot be read."""
    digest = _header(headers, "content-digest")
    if digest is None:  # covered by the signature, so present once the head verified
        raise crypto.BadSignature("request has no content-digest")
    _httpsig.verify_content_digest(digest, body)


def sign_response(
    identity: crypto.Identity,
    status: int,
    body: bytes,
    request_digest: str,
    *,
    now: int,
) -> list[tuple[str, str]]:
    """Headers that make a response a signed receipt for the request it answers."""
    digest = _httpsig.content_digest(body)
    fields = [("content-digest", digest), (REQUEST_DIGEST_HEADER, request_digest)]
    message = _httpsig.Message(headers=fields, status=status)
    signature = _httpsig.sign_message(
        message,
        signing_key=identity.sign,
        keyid=identity.node_id.text,
        created=now,
        components=RESPONSE_COMPONENTS,
    )
    return [*fields, *signature]


def verify_response(
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    expected: crypto.NodeId,
    request_digest: str,
    now: int,
) -> None:
    """Check that ``expected`` signed this response to our request.

    Raises :class:`crypto.BadSignature` if it is not signed by ``expected``, does not
    answer the request whose digest is ``request_digest``, or its body was altered.
    """
    message = _httpsig.Message(headers=headers, status=status)
    verified = _httpsig.verify_message(
        message, public_key_for=_public_key, now=now, required_components=RESPONSE_COMPONENTS
    )
    if verified.keyid != expected.text:
        raise crypto.BadSignature(
            f"response is signed by {verified.keyid[:10]}, expected {expected.short}"
        )
    if _header(headers, REQUEST_DIGEST_HEADER) != request_digest:
        raise crypto.BadSignature("response answers another request (request digest differs)")
    digest = _header(headers, "content-digest")
    assert digest is not None  # covered, so present
    _httpsig.verify_content_digest(digest, body)


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


class ReplayGuard:
    """Refuses a request signature presented a second time within its validity window.

    Memory is bounded: entries leave when they can no longer verify anyway (older than
    the signature window), and past ``max_entries`` the oldest go first.
    """

    def __init__(
        self, *, window: int = _httpsig.MAX_SIGNATURE_AGE, max_entries: int = 100_000
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: collections.OrderedDict[tuple[str, bytes], int] = collections.OrderedDict()

    def check(self, keyid: str, signature: bytes, *, now: int) -> None:
        """Record a signature; raise :class:`crypto.BadSignature` if it was seen."""
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at > now - self.window - _httpsig.MAX_CLOCK_SKEW and (
                len(self._seen) < self.max_entries
            ):
                break
            del self._seen[key]
        entry = (keyid, signature)
        if entry in self._seen:
            raise crypto.BadSignature(
                f"replayed request: this signature from {keyid[:10]} was already used"
            )
        self._seen[entry] = now
