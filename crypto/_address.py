"""Signed address records (purpose ``ptth/addr``) and their text tokens.

A record says where a node can be reached: ``{node, seq, endpoints, exp, name?}``, signed
by that node. ``endpoints`` are http(s) URLs: the node's own listener and/or relay URLs
``http(s)://relay/n/<node-id>``. A record replaces another for the same node only with a
higher ``seq``; a record past ``exp`` (ms since the epoch) is refused.

The token is one line a human can paste: ``ptth:`` + unpadded base64url of the envelope.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import urllib.parse
from typing import Any, Final

from crypto import _envelope
from crypto._errors import Expired, Malformed, Stale, TooLarge
from crypto._identity import Identity, NodeId

__all__ = [
    "MAX_ENDPOINTS",
    "TOKEN_PREFIX",
    "AddressRecord",
    "SignedAddress",
    "parse_token",
    "sign_address",
    "validate_endpoint",
]

TOKEN_PREFIX: Final = "ptth:"  # noqa: S105 - a token prefix, not a password
MAX_ENDPOINTS: Final = 16  # a node with more ways in than this is misconfigured
MAX_URL_LENGTH: Final = 2048  # the de-facto limit of browsers and proxies
MAX_NAME_LENGTH: Final = 64  # a display name, not a biography
MAX_SEQ: Final = 2**63 - 1  # fits SQLite's INTEGER (so does exp, ms since the epoch)
MAX_TOKEN_LENGTH: Final = 8192  # 16 endpoints of 2 KiB do not fit; real tokens are < 1 KiB
_KEYS: Final = frozenset({"node", "seq", "endpoints", "exp", "name"})
_REQUIRED: Final = frozenset({"node", "seq", "endpoints", "exp"})


def validate_endpoint(url: str) -> str:
    """Check that ``url`` is an absolute http(s) URL fit to reach a node; return it.

    Raises :class:`Malformed` naming what is wrong.
    """
    if not isinstance(url, str) or not url:
        raise Malformed("an endpoint must be a non-empty URL string")
    if len(url) > MAX_URL_LENGTH:
        raise Malformed(f"endpoint is {len(url)} characters, limit {MAX_URL_LENGTH}")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise Malformed(f"endpoint {url!r} has spaces or characters outside printable ASCII")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Malformed(f"endpoint {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise Malformed(f"endpoint {url!r} must use http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise Malformed(f"endpoint {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise Malformed(f"endpoint {url!r} must not carry a user name or password")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise Malformed(f"endpoint {url!r} must not have a query or fragment")
    if port == 0:
        raise Malformed(f"endpoint {url!r} has port 0")
    return url


@dataclasses.dataclass(frozen=True, slots=True)
class AddressRecord:
    """Where ``node`` can be reached, as of ``seq``, until ``exp`` (ms since the epoch)."""

    node: NodeId
    seq: int
    endpoints: tuple[str, ...]
    exp: int
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.node, NodeId):
            raise Malformed(f"address node must be a node id, got {type(self.node).__name__}")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool):
            raise Malformed(f"address seq must be an integer, got {type(self.seq).__name__}")
        if not 0 <= self.seq <= MAX_SEQ:
            raise Malformed(f"address seq {self.seq} is outside 0..{MAX_SEQ}")
        if not isinstance(self.exp, int) or isinstance(self.exp, bool):
            raise Malformed(f"address exp must be an integer, got {type(self.exp).__name__}")
        if not 0 <= self.exp <= MAX_SEQ:
            raise Malformed(f"address exp {self.exp} is outside 0..{MAX_SEQ}")
        if not isinstance(self.endpoints, tuple) or not self.endpoints:
            raise Malformed("an address record needs a non-empty tuple of endpoints")
        if len(self.endpoints) > MAX_ENDPOINTS:
            raise Malformed(
                f"address record has {len(self.endpoints)} endpoints, limit {MAX_ENDPOINTS}"
            )
        for url in self.endpoints:
            validate_endpoint(url)
        if len(set(self.endpoints)) != len(self.endpoints):
            raise Malformed("address record lists an endpoint twice")
        if self.name is not None:
            if not isinstance(self.name, str) or not self.name.isprintable() or not self.name:
                raise Malformed("address name must be non-empty printable text")
            if len(self.name) > MAX_NAME_LENGTH:
                raise Malformed(
                    f"address name is {len(self.name)} characters, limit {MAX_NAME_LENGTH}"
                )

    def to_payload(self) -> dict[str, Any]:
        """The map that is signed."""
        payload: dict[str, Any] = {
            "node": self.node.raw,
            "seq": self.seq,
            "endpoints": list(self.endpoints),
            "exp": self.exp,
        }
        if self.name is not None:
            payload["name"] = self.name
        return payload

    @classmethod
    def from_payload(cls, payload: dict[Any, Any]) -> AddressRecord:
        """Read a signed map. Raises :class:`Malformed` for missing, unknown or bad keys."""
        keys = set(payload)
        if missing := _REQUIRED - keys:
            raise Malformed(f"address record lacks {', '.join(sorted(missing))}")
        if unknown := keys - _KEYS:
            raise Malformed(f"address record has unknown keys {sorted(map(repr, unknown))}")
        if "name" in payload and payload["name"] is None:
            # None means "no name"; a signed null would be a second encoding of it.
            raise Malformed("address record has a null name; an absent name is left out")
        node = payload["node"]
        if not isinstance(node, bytes):
            raise Malformed("address record's node is not a byte string")
        endpoints = payload["endpoints"]
        if not isinstance(endpoints, list | tuple):
            raise Malformed("address record's endpoints is not an array")
        return cls(
            node=NodeId(node),
            seq=payload["seq"],
            endpoints=tuple(endpoints),
            exp=payload["exp"],
            name=payload.get("name"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SignedAddress:
    """An address record together with the envelope that proves it."""

    record: AddressRecord
    envelope: bytes

    @property
    def node(self) -> NodeId:
        return self.record.node

    @property
    def token(self) -> str:
        """The one-line text form: ``ptth:`` + unpadded base64url of the envelope."""
        return TOKEN_PREFIX + base64.urlsafe_b64encode(self.envelope).decode("ascii").rstrip("=")

    def check_replaces(self, held: SignedAddress | None) -> None:
        """Raise :class:`Stale` unless this record may replace ``held``.

        It may if nothing is held, or if ``held`` is for the same node with a lower
        ``seq``. Records of different nodes never replace each other: that is refused
        as :class:`Malformed` (the caller's mistake).
        """
        if held is None:
            return
        if held.node != self.node:
            raise Malformed(
                f"address for {self.node.short} cannot replace one for {held.node.short}"
            )
        if self.record.seq <= held.record.seq:
            raise Stale(
                f"address for {self.node.short} has seq {self.record.seq}, "
                f"not newer than the held seq {held.record.seq}"
            )

    @classmethod
    def open(cls, envelope: bytes, *, now: int) -> SignedAddress:
        """Verify an address envelope at time ``now`` (ms since the epoch).

        Raises (the sender's fault): :class:`Malformed`, :class:`BadSignature`,
        :class:`WrongPurpose` as :func:`crypto.open` does; :class:`Malformed` if it is
        signed by another node than it describes; :class:`Expired` if past its ``exp``.
        """
        signer, payload = _envelope.open(envelope, _envelope.Purpose.ADDRESS)
        record = AddressRecord.from_payload(payload)
        if record.node != signer:
            raise Malformed(f"address record for {record.node.short} is signed by {signer.short}")
        if record.exp <= now:
            raise Expired(
                f"address record for {record.node.short} (seq {record.seq}) expired "
                f"{(now - record.exp) // 1000} s ago"
            )
        return cls(record, envelope)


def sign_address(
    identity: Identity,
    *,
    seq: int,
    endpoints: tuple[str, ...] | list[str],
    exp: int,
    name: str | None = None,
) -> SignedAddress:
    """Make and sign this node's address record. Raises :class:`Malformed` for bad fields."""
    record = AddressRecord(identity.node_id, seq, tuple(endpoints), exp, name)
    envelope = _envelope.seal(identity, _envelope.Purpose.ADDRESS, record.to_payload())
    return SignedAddress(record, envelope)


def parse_token(text: str, *, now: int) -> SignedAddress:
    """Read and verify a ``ptth:...`` token at time ``now`` (ms since the epoch).

    Surrounding whitespace is ignored. Raises :class:`TooLarge` if it is longer than
    :data:`MAX_TOKEN_LENGTH` (checked before decoding), :class:`Malformed` if it is not a
    token, and whatever :meth:`SignedAddress.open` raises for its envelope.
    """
    text = text.strip()
    if len(text) > MAX_TOKEN_LENGTH:
        raise TooLarge(f"token is {len(text)} characters, limit {MAX_TOKEN_LENGTH}")
    if not text.startswith(TOKEN_PREFIX):
        raise Malformed(f"not a ptth address token: it must start with {TOKEN_PREFIX!r}")
    body = text[len(TOKEN_PREFIX) :]
    if not body or not body.isascii() or not body.replace("-", "").replace("_", "").isalnum():
        raise Malformed("address token holds characters outside base64url")
    try:
        envelope = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Malformed(f"address token is not valid base64url: {exc}") from exc
    try:
        return SignedAddress.open(envelope, now=now)
    except Malformed as exc:  # (cut short or altered in transit: say it is the token)
        raise Malformed(f"address token is damaged: {exc}") from exc
