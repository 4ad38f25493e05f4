"""Capabilities (purpose ``ptth/cap``) and their revocations (purpose ``ptth/revoke``).

A capability is a signed token that says: the holder (``sub``, or anyone holding it)
may perform these operations (``ops``) on this object (``obj``), within these caveats
(not before, expiry, uses, rate, store quota). The signer of an envelope is its issuer.

A chain travels whole: a delegated capability embeds its parent's envelope (``up``),
which embeds its own parent, up to the root. Rules, checked by :meth:`Capability.open`
without a clock or network:

* the root is signed by the object's owner (``obj.node``);
* a child is signed by its parent's subject, or by anyone if the parent names none
  (anyone holding it may use it, so may narrow it);
* a child is never wider than its parent: the same object kind and owner, a topic
  pattern the parent's covers (:func:`pattern_covers`), the same object name, a subset
  of the operations, caveats no looser (each limit the parent sets is set by the child
  and no higher; ``nbf`` no earlier), the same revoker or none;
* at most :data:`MAX_CHAIN_DEPTH` links and :data:`MAX_CAPABILITY_SIZE` bytes.

:func:`verify` then checks a chain for one use at one time: rooted at the owner the
verifier trusts, no link revoked (a revocation names a link's id and is signed by that
link's issuer or the revoker it names), every link within its time window, the
presenter its subject, the operation allowed and the object asked for within the one
designated. Errors name the link (1 = the root) and say why.

Object kinds (closed): ``topic`` (a topic pattern of ``node``'s: publish, subscribe),
``inbox`` (``node``'s inbox: send), ``relay`` (``node`` as relay: attach, store) and
``object`` (a named object of ``node``'s: call). Narrowing a topic pattern is done on
the object: a child designates a pattern its parent's covers.

Text form: ``ptthcap:`` + unpadded base64url of the envelope (as address tokens).
Nothing here keeps uses or rates: :class:`VerifiedCapability` gives the limits of every
link, for the enforcement point to count.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import enum
import functools
import re
from collections.abc import Iterable
from typing import Any, Final

from crypto import _envelope
from crypto._errors import CryptoError, Expired, Malformed, TooLarge
from crypto._frames import MAX_TIME_MS, validate_pattern
from crypto._identity import NODE_ID_TEXT_LENGTH, Identity, NodeId

__all__ = [
    "CAPABILITY_ID_SIZE",
    "CAPABILITY_TOKEN_PREFIX",
    "MAX_CAPABILITY_SIZE",
    "MAX_CHAIN_DEPTH",
    "Capability",
    "CapabilityExpired",
    "CapabilityRefused",
    "Caveats",
    "ObjectKind",
    "Operation",
    "Revocation",
    "RevocationSet",
    "Revoked",
    "Target",
    "VerifiedCapability",
    "capability_envelope",
    "delegate",
    "grant",
    "parse_capability",
    "pattern_covers",
    "verify",
]

CAPABILITY_TOKEN_PREFIX: Final = "ptthcap:"  # noqa: S105 - a token prefix, not a password
CAPABILITY_ID_SIZE: Final = 16
#: Most links in a chain, the root included: delegation eight deep is plenty, and each
#: link costs a signature check.
MAX_CHAIN_DEPTH: Final = 8
#: Largest capability envelope, its whole chain included (a link is ~250 bytes).
MAX_CAPABILITY_SIZE: Final = 16 * 1024
#: Longest text form: the base64url of the largest envelope, and the prefix.
MAX_CAPABILITY_TOKEN_LENGTH: Final = (
    len(CAPABILITY_TOKEN_PREFIX) + (MAX_CAPABILITY_SIZE * 4 + 2) // 3
)
MAX_OBJECT_NAME_LENGTH: Final = 64
_OBJECT_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_KEYS: Final = frozenset(
    {"id", "iat", "obj", "ops", "sub", "rev", "nbf", "exp", "uses", "rate", "quota", "up"}
)
_REQUIRED: Final = frozenset({"id", "iat", "obj", "ops"})
_OBJECT_KEYS: Final = frozenset({"k", "node", "pat", "name"})
_REVOCATION_KEYS: Final = frozenset({"cap", "ts"})


class Operation(enum.StrEnum):
    """What a capability allows."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    SEND = "send"
    ATTACH = "attach"
    STORE = "store"
    CALL = "call"


class ObjectKind(enum.StrEnum):
    """What a capability designates."""

    TOPIC = "topic"
    INBOX = "inbox"
    RELAY = "relay"
    OBJECT = "object"


#: The operations each kind of object has.
OPERATIONS: Final = {
    ObjectKind.TOPIC: frozenset({Operation.PUBLISH, Operation.SUBSCRIBE}),
    ObjectKind.INBOX: frozenset({Operation.SEND}),
    ObjectKind.RELAY: frozenset({Operation.ATTACH, Operation.STORE}),
    ObjectKind.OBJECT: frozenset({Operation.CALL}),
}


class CapabilityRefused(CryptoError):
    """A well-formed capability that does not allow what is asked (HTTP 403).

    ``link`` is the link at fault (1 = the root), or None for the request as a whole.
    """

    status_hint = 403

    def __init__(self, message: str, *, link: int | None = None) -> None:
        super().__init__(message)
        self.link = link


class CapabilityExpired(CapabilityRefused, Expired):
    """A link of the chain is outside its time window (expired, or not valid yet)."""


class Revoked(CapabilityRefused):
    """A link of the chain has been revoked (so has everything delegated from it)."""


# -- topic patterns -------------------------------------------------------------------


def pattern_covers(general: str, specific: str) -> bool:
    """True only if every topic ``specific`` matches, ``general`` matches too.

    Sound, not complete: a True answer is always right; False may be said of patterns
    that do cover each other only through a different shape (``*.#`` covers ``#``
    since topics are never empty, but is not recognised). Matching is word by word:
    ``#`` in ``general`` absorbs any words of ``specific`` (wildcards too), ``*`` takes
    one literal or ``*``, a literal takes only itself. O(words x words).

    Raises :class:`Malformed` if either is not a valid pattern.
    """
    big = validate_pattern(general).split(".")
    small = validate_pattern(specific).split(".")

    @functools.cache  # per call: no state outlives it
    def covers(i: int, j: int) -> bool:
        if i == len(big):
            return j == len(small)
        word = big[i]
        if j == len(small):
            return all(rest == "#" for rest in big[i:])
        if word == "#":
            # ``#`` matches no more words, or takes what small[j] matches and stays.
            return covers(i + 1, j) or covers(i, j + 1)
        if word == "*":
            return small[j] != "#" and covers(i + 1, j + 1)
        return small[j] == word and covers(i + 1, j + 1)

    return covers(0, 0)


def _secure_owner(pattern: str) -> NodeId | None:
    first = pattern.split(".", 1)[0]
    if first.startswith("~") and len(first) == NODE_ID_TEXT_LENGTH + 1:
        return NodeId.parse(first[1:])
    return None


# -- the parts of a capability ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """An object: what a capability designates, or what a request acts on.

    ``pattern`` for a topic (a topic is a pattern without wildcards), ``name`` for a
    named object; neither for an inbox or a relay.
    """

    kind: ObjectKind
    node: NodeId
    pattern: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not ObjectKind:
            if not isinstance(self.kind, str) or self.kind not in OPERATIONS:
                kinds = ", ".join(ObjectKind)
                raise Malformed(f"object kind {self.kind!r} is not one of {kinds}")
            object.__setattr__(self, "kind", ObjectKind(self.kind))
        if not isinstance(self.node, NodeId):
            raise Malformed("an object's node must be a node id")
        if (self.pattern is not None) != (self.kind is ObjectKind.TOPIC):
            raise Malformed("a topic object has a pattern, and no other kind has one")
        if (self.name is not None) != (self.kind is ObjectKind.OBJECT):
            raise Malformed("a named object has a name, and no other kind has one")
        if self.pattern is not None:
            validate_pattern(self.pattern)
            owner = _secure_owner(self.pattern)
            if owner is not None and owner != self.node:
                raise Malformed(
                    f"pattern {self.pattern!r} is under {owner.short}'s secure name: "
                    f"only that node designates it, not {self.node.short}"
                )
        if self.name is not None and (
            not isinstance(self.name, str) or not _OBJECT_NAME.fullmatch(self.name)
        ):
            raise Malformed(
                f"object name {self.name!r} is not 1..{MAX_OBJECT_NAME_LENGTH} "
                "characters of A-Z a-z 0-9 _ - ."
            )

    @classmethod
    def topic(cls, node: NodeId, pattern: str) -> Target:
        return cls(ObjectKind.TOPIC, node, pattern=pattern)

    @classmethod
    def inbox(cls, node: NodeId) -> Target:
        return cls(ObjectKind.INBOX, node)

    @classmethod
    def relay(cls, node: NodeId) -> Target:
        return cls(ObjectKind.RELAY, node)

    @classmethod
    def named(cls, node: NodeId, name: str) -> Target:
        return cls(ObjectKind.OBJECT, node, name=name)

    def within(self, other: Target) -> bool:
        """True if this object is ``other`` or part of it (a narrower topic pattern)."""
        if self.kind != other.kind or self.node != other.node or self.name != other.name:
            return False
        if self.pattern is not None and other.pattern is not None:
            return pattern_covers(other.pattern, self.pattern)
        return True

    def describe(self) -> str:
        """In words: ``topics 'news.#' of abcdefghij``."""
        if self.kind is ObjectKind.TOPIC:
            return f"topics {self.pattern!r} of {self.node.text}"
        if self.kind is ObjectKind.OBJECT:
            return f"object {self.name!r} of {self.node.text}"
        return f"the {self.kind} of {self.node.text}"

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"k": str(self.kind), "node": self.node.raw}
        if self.pattern is not None:
            payload["pat"] = self.pattern
        if self.name is not None:
            payload["name"] = self.name
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> Target:
        if not isinstance(payload, dict):
            raise Malformed("capability obj is not a map")
        if unknown := set(payload) - _OBJECT_KEYS:
            raise Malformed(f"capability obj has unknown keys {sorted(map(repr, unknown))}")
        if "k" not in payload or "node" not in payload:
            raise Malformed("capability obj lacks k or node")
        node = payload["node"]
        if not isinstance(node, bytes):
            raise Malformed("capability obj's node is not a byte string")
        return cls(payload["k"], NodeId(node), payload.get("pat"), payload.get("name"))


def _integer(value: Any, name: str, low: int = 0) -> int:
    """A required integer in ``low``..:data:`MAX_TIME_MS` (SQLite's INTEGER)."""
    if value is None:
        raise Malformed(f"capability {name} must be an integer, got null")
    limited = _limit(value, name, low)
    assert limited is not None  # not None, checked above
    return limited


def _limit(value: Any, name: str, low: int = 0) -> int | None:
    """An optional integer in ``low``..:data:`MAX_TIME_MS` (None: no limit)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"capability {name} must be an integer, got {type(value).__name__}")
    if not low <= value <= MAX_TIME_MS:
        raise Malformed(f"capability {name} is {value}, expected {low}..{MAX_TIME_MS}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Caveats:
    """Limits on a capability; None is no limit.

    ``nbf``/``exp``: valid from ``nbf`` until before ``exp`` (ms since the epoch);
    ``uses``: most uses in all; ``rate``: most uses per minute; ``quota``: most bytes
    stored (with the ``store`` operation).
    """

    nbf: int | None = None
    exp: int | None = None
    uses: int | None = None
    rate: int | None = None
    quota: int | None = None

    def __post_init__(self) -> None:
        _limit(self.nbf, "nbf")
        _limit(self.exp, "exp", 1)
        _limit(self.uses, "uses", 1)
        _limit(self.rate, "rate", 1)
        _limit(self.quota, "quota")
        if self.nbf is not None and self.exp is not None and self.exp <= self.nbf:
            raise Malformed(f"capability expires ({self.exp}) before it is valid ({self.nbf})")

    def looser_than(self, parent: Caveats) -> str | None:
        """Why these caveats are looser than ``parent``'s (None if they are not)."""
        if parent.nbf is not None and (self.nbf is None or self.nbf < parent.nbf):
            return f"it is valid before its parent is (from {_time(parent.nbf)})"
        if parent.exp is not None and (self.exp is None or self.exp > parent.exp):
            shown = "never" if self.exp is None else _time(self.exp)
            return f"it expires {shown}, after its parent ({_time(parent.exp)})"
        for name, what in (("uses", "uses"), ("rate", "uses a minute"), ("quota", "bytes")):
            mine, theirs = getattr(self, name), getattr(parent, name)
            if theirs is not None and (mine is None or mine > theirs):
                shown = "no limit" if mine is None else f"{mine} {what}"
                return f"its {name} ({shown}) is over its parent's ({theirs} {what})"
        return None

    def narrowed(self, **changes: int | None) -> Caveats:
        """These caveats with ``changes`` (None keeps a limit: a child inherits it)."""
        kept = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **kept)


# -- capabilities -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Capability:
    """One verified link of a chain, and (``parent``) the links above it.

    Made by :meth:`open`, :func:`grant` or :func:`delegate`: its signatures and the
    rules of the chain (module docstring) have been checked, not its time or use.
    """

    id: bytes
    issuer: NodeId
    issued: int
    target: Target
    ops: frozenset[Operation]
    subject: NodeId | None
    caveats: Caveats
    revoker: NodeId | None
    parent: Capability | None = dataclasses.field(repr=False)
    envelope: bytes = dataclasses.field(repr=False)

    @property
    def chain(self) -> tuple[Capability, ...]:
        """Every link, the root first and this one last."""
        links: list[Capability] = []
        link: Capability | None = self
        while link is not None:
            links.append(link)
            link = link.parent
        return tuple(reversed(links))

    @property
    def depth(self) -> int:
        """The number of links (1 for a root)."""
        return len(self.chain)

    @property
    def owner(self) -> NodeId:
        """The issuer of the root: the owner of the object."""
        return self.chain[0].issuer

    @property
    def token(self) -> str:
        """The one-line text form: ``ptthcap:`` + unpadded base64url of the envelope."""
        return CAPABILITY_TOKEN_PREFIX + base64.urlsafe_b64encode(self.envelope).decode(
            "ascii"
        ).rstrip("=")

    @property
    def id_text(self) -> str:
        """The id as 32 hex digits (what ``ptth cap revoke`` takes)."""
        return self.id.hex()

    @classmethod
    def open(cls, envelope: bytes) -> Capability:
        """Verify a capability envelope and its whole chain (no clock: see :func:`verify`).

        Raises, naming the link (1 = the root): :class:`TooLarge` over
        :data:`MAX_CAPABILITY_SIZE`; :class:`Malformed` for a bad shape or a chain over
        :data:`MAX_CHAIN_DEPTH`; :class:`crypto.BadSignature` and
        :class:`crypto.WrongPurpose` as :func:`crypto.open` does; :class:`CapabilityRefused`
        for a link signed by someone who may not, or wider than its parent.
        """
        if not isinstance(envelope, bytes):
            raise Malformed("a capability is bytes")
        if len(envelope) > MAX_CAPABILITY_SIZE:
            raise TooLarge(f"capability is {len(envelope)} bytes, limit {MAX_CAPABILITY_SIZE}")
        # Unwrap from the leaf up; links are numbered from the root once the depth is known.
        opened: list[tuple[bytes, NodeId, dict[Any, Any]]] = []
        current: bytes | None = envelope
        while current is not None:
            if len(opened) == MAX_CHAIN_DEPTH:
                raise Malformed(f"capability chain is deeper than {MAX_CHAIN_DEPTH} links")
            try:
                signer, payload = _envelope.open(
                    current, _envelope.Purpose.CAPABILITY, max_size=MAX_CAPABILITY_SIZE
                )
            except CryptoError as exc:
                above = len(opened)
                where = "token" if not above else "parent" if above == 1 else f"ancestor {above} up"
                raise _at_link(exc, where) from exc
            opened.append((current, signer, payload))
            up = payload.get("up")
            if up is not None and not isinstance(up, bytes):
                raise Malformed("capability up (the parent) is not a byte string")
            current = up
        parent: Capability | None = None
        for number, (link_envelope, signer, payload) in enumerate(reversed(opened), 1):
            try:
                parent = cls._link(link_envelope, signer, payload, parent, number)
            except CapabilityRefused:
                raise
            except CryptoError as exc:
                raise _at_link(exc, f"link {number}") from exc
        assert parent is not None  # at least one envelope was opened
        return parent

    @classmethod
    def _link(
        cls,
        envelope: bytes,
        signer: NodeId,
        payload: dict[Any, Any],
        parent: Capability | None,
        number: int,
    ) -> Capability:
        keys = set(payload)
        if missing := _REQUIRED - keys:
            raise Malformed(f"capability lacks {', '.join(sorted(missing))}")
        if unknown := keys - _KEYS:
            raise Malformed(f"capability has unknown keys {sorted(map(repr, unknown))}")
        for key in keys - _REQUIRED:
            if payload[key] is None:
                raise Malformed(f"capability has a null {key}; an absent one is left out")
        cap_id = payload["id"]
        if not isinstance(cap_id, bytes) or len(cap_id) != CAPABILITY_ID_SIZE:
            raise Malformed(f"capability id is not {CAPABILITY_ID_SIZE} bytes")
        issued = _integer(payload["iat"], "iat")
        target = Target.from_payload(payload["obj"])
        ops = _operations(payload["ops"], target.kind)
        subject = _node(payload.get("sub"), "sub")
        revoker = _node(payload.get("rev"), "rev")
        caveats = Caveats(
            nbf=_limit(payload.get("nbf"), "nbf"),
            exp=_limit(payload.get("exp"), "exp", 1),
            uses=_limit(payload.get("uses"), "uses", 1),
            rate=_limit(payload.get("rate"), "rate", 1),
            quota=_limit(payload.get("quota"), "quota"),
        )
        if caveats.quota is not None and Operation.STORE not in ops:
            raise Malformed("capability has a quota but does not allow store")
        link = cls(cap_id, signer, issued, target, ops, subject, caveats, revoker, parent, envelope)
        if parent is None:
            if signer != target.node:
                raise CapabilityRefused(
                    f"capability link 1 (the root) is signed by {signer.short}, not by the "
                    f"object's owner {target.node.short}",
                    link=1,
                )
        else:
            if why := link.wider_than(parent):
                raise CapabilityRefused(
                    f"capability link {number} widens its parent: {why}", link=number
                )
            if parent.subject is not None and signer != parent.subject:
                raise CapabilityRefused(
                    f"capability link {number} is signed by {signer.short}, but its parent "
                    f"is for {parent.subject.short} only",
                    link=number,
                )
        return link

    def wider_than(self, parent: Capability) -> str | None:
        """Why this capability allows more than ``parent`` (None if it does not)."""
        if not self.target.within(parent.target):
            return f"{self.target.describe()} is not within {parent.target.describe()}"
        if extra := self.ops - parent.ops:
            return f"operations {', '.join(sorted(extra))} are not allowed by its parent"
        if why := self.caveats.looser_than(parent.caveats):
            return why
        if parent.revoker is not None and self.revoker != parent.revoker:
            return "it drops or changes its parent's revoker"
        if self.id in {link.id for link in parent.chain}:
            return "it reuses the id of a link above it"
        return None

    def to_payload(self) -> dict[str, Any]:
        """The map that is signed."""
        return _payload(
            cap_id=self.id,
            issued=self.issued,
            target=self.target,
            ops=self.ops,
            subject=self.subject,
            caveats=self.caveats,
            revoker=self.revoker,
            parent=self.parent,
        )

    def describe(self) -> list[str]:
        """The chain in words, one line per link, the root first."""
        lines = []
        for number, link in enumerate(self.chain, 1):
            who = "anyone holding it" if link.subject is None else link.subject.text
            ops = ", ".join(sorted(link.ops))
            limits = [f"id {link.id_text}", f"signed by {link.issuer.text}"]
            lines.append(
                f"link {number}: {who} may {ops} on {link.target.describe()}"
                f" ({'; '.join(limits + link.limits())})"
            )
        return lines

    def limits(self) -> list[str]:
        caveats = self.caveats
        words = []
        if caveats.nbf is not None:
            words.append(f"not before {_time(caveats.nbf)}")
        words.append("no expiry" if caveats.exp is None else f"until {_time(caveats.exp)}")
        if caveats.uses is not None:
            words.append(f"{caveats.uses} uses")
        if caveats.rate is not None:
            words.append(f"{caveats.rate} uses a minute")
        if caveats.quota is not None:
            words.append(f"{caveats.quota} bytes stored")
        if self.revoker is not None:
            words.append(f"revocable by {self.revoker.text} too")
        return words


def _time(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _at_link(exc: CryptoError, where: str) -> CryptoError:
    """``exc`` again (its type), its message saying which link it is about."""
    return type(exc)(f"capability {where}: {exc}")


def _node(value: Any, name: str) -> NodeId | None:
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise Malformed(f"capability {name} is not a byte string")
    return NodeId(value)


def _operations(value: Any, kind: ObjectKind) -> frozenset[Operation]:
    if not isinstance(value, list) or not value:
        raise Malformed("capability ops is not a non-empty array")
    if not all(isinstance(op, str) and op in Operation.__members__.values() for op in value):
        raise Malformed(f"capability ops {value!r} are not all of {', '.join(Operation)}")
    if value != sorted(set(value)):
        raise Malformed("capability ops must be sorted and without repeats")
    ops = frozenset(Operation(op) for op in value)
    if extra := ops - OPERATIONS[kind]:
        raise Malformed(f"a {kind} has no operation {', '.join(sorted(extra))}")
    return ops


def _payload(
    *,
    cap_id: bytes,
    issued: int,
    target: Target,
    ops: Iterable[Operation],
    subject: NodeId | None,
    caveats: Caveats,
    revoker: NodeId | None,
    parent: Capability | None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": cap_id,
        "iat": issued,
        "obj": target.to_payload(),
        "ops": sorted(str(op) for op in ops),
    }
    if subject is not None:
        payload["sub"] = subject.raw
    if revoker is not None:
        payload["rev"] = revoker.raw
    for name in ("nbf", "exp", "uses", "rate", "quota"):
        value = getattr(caveats, name)
        if value is not None:
            payload[name] = value
    if parent is not None:
        payload["up"] = parent.envelope
    return payload


def _issue(identity: Identity, payload: dict[str, Any]) -> Capability:
    envelope = _envelope.seal(identity, _envelope.Purpose.CAPABILITY, payload)
    return Capability.open(envelope)  # the same rules as every verifier's


def grant(
    identity: Identity,
    target: Target,
    ops: Iterable[Operation | str],
    *,
    subject: NodeId | None,
    now: int,
    cap_id: bytes,
    caveats: Caveats | None = None,
    revoker: NodeId | None = None,
) -> Capability:
    """Sign a root capability on an object ``identity`` owns.

    ``cap_id``: 16 random bytes (the caller's, so that tests can be reproducible).
    Raises :class:`Malformed` for bad fields and :class:`CapabilityRefused` if
    ``identity`` does not own ``target``.
    """
    return _issue(
        identity,
        _payload(
            cap_id=cap_id,
            issued=now,
            target=target,
            ops=_checked_ops(ops),
            subject=subject,
            caveats=Caveats() if caveats is None else caveats,
            revoker=revoker,
            parent=None,
        ),
    )


def delegate(
    identity: Identity,
    parent: Capability,
    *,
    subject: NodeId | None,
    now: int,
    cap_id: bytes,
    target: Target | None = None,
    ops: Iterable[Operation | str] | None = None,
    caveats: Caveats | None = None,
) -> Capability:
    """Sign a child of ``parent``: by default the same object, operations and caveats
    (and revoker) as the parent, for ``subject``.

    Raises :class:`CapabilityRefused` if ``identity`` may not delegate ``parent`` or
    the child would be wider, :class:`Malformed` for bad fields or a chain too deep.
    """
    return _issue(
        identity,
        _payload(
            cap_id=cap_id,
            issued=now,
            target=parent.target if target is None else target,
            ops=parent.ops if ops is None else _checked_ops(ops),
            subject=subject,
            caveats=parent.caveats if caveats is None else caveats,
            revoker=parent.revoker,
            parent=parent,
        ),
    )


def _checked_ops(ops: Iterable[Operation | str]) -> frozenset[Operation]:
    values = list(ops)
    bad = [op for op in values if op not in Operation.__members__.values()]
    if bad or not values:
        raise Malformed(f"operations must be some of {', '.join(Operation)}, got {values!r}")
    return frozenset(Operation(op) for op in values)


def parse_capability(text: str) -> Capability:
    """Open a ``ptthcap:`` token: :func:`capability_envelope`, then
    :meth:`Capability.open` (which raises as it says)."""
    return Capability.open(capability_envelope(text))


def capability_envelope(text: str) -> bytes:
    """The envelope in a ``ptthcap:`` token, decoded but not verified (a verifier
    that caches opened chains by envelope looks it up first).

    Raises :class:`TooLarge` for a token longer than
    :data:`MAX_CAPABILITY_TOKEN_LENGTH` (before decoding) and :class:`Malformed` if it
    is not a capability token.
    """
    text = text.strip()
    if len(text) > MAX_CAPABILITY_TOKEN_LENGTH:
        raise TooLarge(
            f"capability token is {len(text)} characters, limit {MAX_CAPABILITY_TOKEN_LENGTH}"
        )
    if not text.startswith(CAPABILITY_TOKEN_PREFIX):
        raise Malformed(f"not a capability token: it must start with {CAPABILITY_TOKEN_PREFIX!r}")
    body = text[len(CAPABILITY_TOKEN_PREFIX) :]
    if not body or not body.isascii() or not body.replace("-", "").replace("_", "").isalnum():
        raise Malformed("capability token holds characters outside base64url")
    if len(body) % 4 == 1:
        raise Malformed("capability token is not valid base64url: truncated")
    try:
        envelope = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Malformed(f"capability token is not valid base64url: {exc}") from exc
    return envelope


# -- revocations ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    """A signed statement: capability ``cap_id`` is revoked, as of ``ts``.

    It takes effect only for a link with that id whose issuer or named revoker signed
    it (:class:`RevocationSet`); anyone else's revocation is noise.
    """

    cap_id: bytes
    signer: NodeId
    ts: int
    envelope: bytes

    @property
    def id_text(self) -> str:
        return self.cap_id.hex()

    @classmethod
    def sign(cls, identity: Identity, cap_id: bytes, *, now: int) -> Revocation:
        """Revoke ``cap_id`` as ``identity``. Raises :class:`Malformed` for a bad id."""
        payload = {"cap": cap_id, "ts": now}
        return cls.open(_envelope.seal(identity, _envelope.Purpose.REVOCATION, payload))

    @classmethod
    def open(cls, envelope: bytes) -> Revocation:
        """Verify a revocation envelope. Raises as :func:`crypto.open`, and
        :class:`Malformed` for a bad payload."""
        signer, payload = _envelope.open(envelope, _envelope.Purpose.REVOCATION, max_size=1024)
        if set(payload) != _REVOCATION_KEYS:
            raise Malformed(f"a revocation has exactly the keys {sorted(_REVOCATION_KEYS)}")
        cap_id = payload["cap"]
        if not isinstance(cap_id, bytes) or len(cap_id) != CAPABILITY_ID_SIZE:
            raise Malformed(f"a revocation's cap is not {CAPABILITY_ID_SIZE} bytes")
        return cls(cap_id, signer, _integer(payload["ts"], "revocation ts"), envelope)


class RevocationSet:
    """The revocations a verifier knows, by capability id."""

    __slots__ = ("_by_id",)

    def __init__(self, revocations: Iterable[Revocation] = ()) -> None:
        self._by_id: dict[bytes, list[Revocation]] = {}
        for revocation in revocations:
            self.add(revocation)

    def add(self, revocation: Revocation) -> None:
        held = self._by_id.setdefault(revocation.cap_id, [])
        if all(other.signer != revocation.signer for other in held):
            held.append(revocation)

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_id.values())

    def __contains__(self, revocation: object) -> bool:
        """True if a revocation of the same id by the same signer is held."""
        if not isinstance(revocation, Revocation):
            return False
        held = self._by_id.get(revocation.cap_id, ())
        return any(other.signer == revocation.signer for other in held)

    def revoking(self, link: Capability) -> Revocation | None:
        """A revocation of ``link`` by its issuer or its named revoker, if known."""
        for revocation in self._by_id.get(link.id, ()):
            if revocation.signer in (link.issuer, link.revoker):
                return revocation
        return None


# -- verification -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedCapability:
    """A capability found good for one use: who may do what on what, within which limits.

    ``chain`` is every link, the root first: an enforcement point counts a use against
    each link's ``caveats.uses`` and ``caveats.rate`` (a parent's limits are shared by
    everything delegated from it).
    """

    capability: Capability
    operation: Operation
    target: Target
    presenter: NodeId | None

    @property
    def chain(self) -> tuple[Capability, ...]:
        return self.capability.chain

    @property
    def quota(self) -> int | None:
        return self.capability.caveats.quota


def verify(
    token: Capability | bytes | str,
    *,
    now: int,
    owner: NodeId,
    operation: Operation | str,
    target: Target,
    presenter: NodeId | None,
    revoked: RevocationSet | None = None,
) -> VerifiedCapability:
    """Check that ``token`` lets ``presenter`` perform ``operation`` on ``target`` at
    ``now``, on the authority of ``owner`` (the root's issuer). Offline: no network.

    ``presenter`` None: the holder is not authenticated (only a capability for anyone
    holding it serves). Raises :class:`Malformed` (and the like) for a bad token, as
    :meth:`Capability.open`; :class:`Revoked` if any link is revoked;
    :class:`CapabilityExpired` if any link is outside its time window;
    :class:`CapabilityRefused` for the rest. Each names the link at fault.
    """
    if isinstance(token, str):
        capability = parse_capability(token)
    elif isinstance(token, bytes):
        capability = Capability.open(token)
    else:
        capability = token
    chain = capability.chain
    last = len(chain)
    if chain[0].issuer != owner:
        raise CapabilityRefused(
            f"capability's root is issued by {chain[0].issuer.short}, not {owner.short}",
            link=1,
        )
    for number, link in enumerate(chain, 1):
        name = f"capability link {number} of {last} (id {link.id_text})"
        if revoked is not None and (revocation := revoked.revoking(link)) is not None:
            by = "its issuer" if revocation.signer == link.issuer else "its revoker"
            raise Revoked(f"{name} was revoked by {by} at {_time(revocation.ts)}", link=number)
        caveats = link.caveats
        if caveats.exp is not None and now >= caveats.exp:
            raise CapabilityExpired(f"{name} expired at {_time(caveats.exp)}", link=number)
        if caveats.nbf is not None and now < caveats.nbf:
            raise CapabilityExpired(f"{name} is not valid before {_time(caveats.nbf)}", link=number)
    if capability.subject is not None and presenter != capability.subject:
        shown = "an unauthenticated holder" if presenter is None else presenter.short
        raise CapabilityRefused(
            f"capability is for {capability.subject.short}, presented by {shown}", link=last
        )
    if operation not in Operation.__members__.values():
        raise Malformed(f"operation {operation!r} is not one of {', '.join(Operation)}")
    operation = Operation(operation)
    if operation not in capability.ops:
        raise CapabilityRefused(
            f"capability allows {', '.join(sorted(capability.ops))}, not {operation}", link=last
        )
    if not target.within(capability.target):
        raise CapabilityRefused(
            f"capability designates {capability.target.describe()}, not {target.describe()}",
            link=last,
        )
    return VerifiedCapability(capability, operation, target, presenter)
