"""Signed tree coordinates (purpose ``ptth/coord``): a node's place in the spanning tree.

The public nodes of a mesh agree on a spanning tree (docs/routing-at-scale.md, "Tree
coordinates"); a node's *coordinates* are its path from the root, and each hop of it is
signed by the parent that admits the child, so a node cannot claim a place it was not
given. Each hop is a *grant*, an envelope signed by the parent with the payload::

    {root: <root id>, ts: <the root statement's time>, child: <child id>,
     depth: <the child's depth>, exp: <ms>, up: <SHA-256 of the grant above>}

"``child`` sits at ``depth`` below me in the tree of ``root`` as of ``ts``, until
``exp``". The root's own *statement* is a grant to itself at depth 0, without ``up``;
the root signs a new one (a fresher ``ts``) every announce interval. ``up`` binds a
grant to the exact grant that placed its signer, so a grant cannot be spliced onto
another chain of its parent.

A :class:`CoordChain` is the grants from the root statement down to a node, sent as a
CBOR array of byte strings. Reading one (:meth:`CoordChain.parse`) checks the size and
the number of grants before any signature, then, grant by grant from the root: the
signature, that the signer is the child of the grant above, the depths 0, 1, 2, ..., the
same root and ``ts`` all along, ``up``, no node twice on the path, and no grant expired.

Tree distance (docs/routing-at-scale.md, "Greedy routing") is computed from two nodes'
coordinates alone: depth(a) + depth(b) - 2 depth(their deepest common ancestor).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from crypto import _cbor, _envelope
from crypto._errors import CryptoError, Expired, Malformed, TooLarge
from crypto._frames import MAX_TIME_MS
from crypto._identity import NODE_ID_SIZE, Identity, NodeId

__all__ = [
    "DIFFERENT_TREES",
    "MAX_COORD_CHAIN_SIZE",
    "MAX_GRANT_LIFETIME_MS",
    "MAX_TREE_DEPTH",
    "CoordChain",
    "Coordinates",
    "grant_coordinates",
    "root_statement",
]

#: Deepest place in a tree: the design's trees are ~log N deep (12 at 10,000 nodes in
#: benchmarks/routing.py); each level costs a signature check on every offer.
MAX_TREE_DEPTH: Final = 32
#: Largest grant: ours are ~260 bytes (a 32-byte kid, root, child and up, three integers).
MAX_GRANT_SIZE: Final = 512
#: Largest chain: MAX_TREE_DEPTH + 1 grants of the largest size, each with a 3-byte
#: byte-string head, in an array whose head is at most 2 bytes.
MAX_COORD_CHAIN_SIZE: Final = 2 + (MAX_TREE_DEPTH + 1) * (3 + MAX_GRANT_SIZE)
#: Longest a grant may be valid: a tree whose root has left lives on until its root
#: statement expires; a day bounds that whatever a root signs (ptth's own are 30 min).
MAX_GRANT_LIFETIME_MS: Final = 24 * 3600 * 1000
#: What :meth:`Coordinates.distance` returns for two nodes in different trees: more
#: than any distance within one tree (at most 2 * MAX_TREE_DEPTH), so "nearest" picks a
#: node in the destination's tree over any node outside it.
DIFFERENT_TREES: Final = 2**32

_KEYS: Final = frozenset({"root", "ts", "child", "depth", "exp", "up"})
_REQUIRED: Final = frozenset({"root", "ts", "child", "depth", "exp"})


def _digest(grant: bytes) -> bytes:
    """What a grant's ``up`` holds for the grant above it."""
    return hashlib.sha256(grant).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class CoordChain:
    """The grants (envelopes) from the root statement down to a node, the root's first.

    Made by :meth:`decode` (shape only, nothing verified) or as the ``chain`` of
    :class:`Coordinates` that were verified.
    """

    grants: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The wire form: a CBOR array of byte strings."""
        return _cbor.encode(list(self.grants))

    @classmethod
    def decode(cls, data: bytes) -> CoordChain:
        """Read the wire form without verifying anything; bounded before decoding.

        Raises (the sender's fault) :class:`TooLarge` if ``data`` is over
        :data:`MAX_COORD_CHAIN_SIZE` bytes (checked first), holds more than
        MAX_TREE_DEPTH + 1 grants or a grant over MAX_GRANT_SIZE bytes;
        :class:`Malformed` if it is not a non-empty CBOR array of byte strings.
        """
        if not isinstance(data, bytes):
            raise Malformed(f"a coordinate chain is bytes, got {type(data).__name__}")
        if len(data) > MAX_COORD_CHAIN_SIZE:
            raise TooLarge(f"coordinate chain is {len(data)} bytes, limit {MAX_COORD_CHAIN_SIZE}")
        items = _cbor.decode(data, what="coordinate chain", max_size=MAX_COORD_CHAIN_SIZE)
        if not isinstance(items, list):
            raise Malformed(f"coordinate chain is a {type(items).__name__}, expected an array")
        if not items:
            raise Malformed("coordinate chain is empty: it needs at least the root statement")
        if len(items) > MAX_TREE_DEPTH + 1:
            raise TooLarge(
                f"coordinate chain has {len(items)} grants, limit {MAX_TREE_DEPTH + 1} "
                f"(depth {MAX_TREE_DEPTH})"
            )
        for index, item in enumerate(items):
            if not isinstance(item, bytes):
                raise Malformed(
                    f"coordinate chain's grant {index} is a {type(item).__name__}, "
                    "expected a byte string"
                )
            if len(item) > MAX_GRANT_SIZE:
                raise TooLarge(
                    f"coordinate chain's grant {index} is {len(item)} bytes, limit {MAX_GRANT_SIZE}"
                )
        return cls(tuple(items))

    def verify(self, *, now: int) -> Coordinates:
        """Check every grant (see the module docstring) at ``now`` (ms since the epoch);
        return the coordinates of the node the chain ends at.

        Raises, naming the grant (0 = the root statement), all the sender's fault:
        :class:`crypto.BadSignature`, :class:`crypto.WrongPurpose` and :class:`Malformed`
        as :func:`crypto.open` does; :class:`Malformed` for a grant of the wrong shape,
        signed by another node than the one above it, at the wrong depth, for another
        root or ``ts``, not bound to the grant above (``up``), or placing a node already
        on the path; :class:`Expired` for a grant past its ``exp``.
        """
        if not self.grants:
            raise Malformed("coordinate chain is empty: it needs at least the root statement")
        if len(self.grants) > MAX_TREE_DEPTH + 1:
            raise TooLarge(
                f"coordinate chain has {len(self.grants)} grants, limit {MAX_TREE_DEPTH + 1}"
            )
        coordinates = _root(self.grants[0], now=now)
        for grant in self.grants[1:]:
            coordinates = coordinates.below(grant, now=now)
        return coordinates

    @classmethod
    def parse(cls, data: bytes, *, now: int) -> Coordinates:
        """:meth:`decode` then :meth:`verify`: the verified coordinates a chain proves.

        Raises what those two raise (always a :class:`crypto.CryptoError`).
        """
        return cls.decode(data).verify(now=now)


@dataclasses.dataclass(frozen=True, slots=True)
class Coordinates:
    """A node's place in a tree: ``path`` from the root (first) to the node (last).

    ``ts`` is the root statement's time (the tree's version), ``exp`` the time (ms) the
    first of the chain's grants expires. ``chain`` is the proof, when these coordinates
    were verified (:meth:`CoordChain.verify`); coordinates are equal when their path,
    ``ts`` and ``exp`` are, whatever proof they carry.

    Raises :class:`Malformed` if the path is empty, deeper than :data:`MAX_TREE_DEPTH`,
    or names a node twice.
    """

    path: tuple[NodeId, ...]
    ts: int
    exp: int
    chain: CoordChain | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, tuple) or not self.path:
            raise Malformed("coordinates need a non-empty tuple of node ids (the path)")
        if len(self.path) > MAX_TREE_DEPTH + 1:
            raise TooLarge(f"coordinates are at depth {len(self.path) - 1}, limit {MAX_TREE_DEPTH}")
        if not all(isinstance(node, NodeId) for node in self.path):
            raise Malformed("a coordinate path holds node ids only")
        if len(set(self.path)) != len(self.path):
            raise Malformed("a coordinate path names a node twice (a loop)")
        _integer(self.ts, "ts")
        _integer(self.exp, "exp")

    @property
    def root(self) -> NodeId:
        return self.path[0]

    @property
    def node(self) -> NodeId:
        """The node these coordinates place."""
        return self.path[-1]

    @property
    def depth(self) -> int:
        """Hops from the root (0: the root itself)."""
        return len(self.path) - 1

    def hops_below(self, node: NodeId) -> int | None:
        """How many hops this path runs on below ``node`` (0: ``node`` is the one these
        coordinates place); None if ``node`` is not on it."""
        path, wanted = self.path, node._bytes  # (bytes compared, as in distance())
        for index in range(len(path)):
            if path[index]._bytes == wanted:
                return len(path) - 1 - index
        return None

    def distance(self, other: Coordinates) -> int:
        """Hops between the two nodes over tree links: depth(a) + depth(b) - 2
        depth(deepest common ancestor). 0 only for the same node.

        Nodes in different trees (different roots) are :data:`DIFFERENT_TREES` apart;
        ``ts`` is not compared (a tree refreshed since keeps its shape until a node moves).
        """
        # (Called for every neighbour of every node on a greedy route: kept to plain
        # index arithmetic, half the time of a zip over the paths and the depth property;
        # the ids' bytes compared, not the ids: 0.50 against 0.91 us at depth 7.)
        mine, theirs = self.path, other.path
        if mine[0]._bytes != theirs[0]._bytes:
            return DIFFERENT_TREES
        shorter = min(len(mine), len(theirs))
        common = 1  # nodes on both paths from the root: the deepest is the common ancestor
        while common < shorter and mine[common]._bytes == theirs[common]._bytes:
            common += 1
        return len(mine) + len(theirs) - 2 * common

    def below(self, grant: bytes, *, now: int) -> Coordinates:
        """Verify ``grant``, by this node for a child one level below; return the
        child's coordinates (whose chain is this one's and the grant).

        Raises what :meth:`CoordChain.verify` raises for that grant, and
        :class:`Malformed` if these coordinates carry no chain (a caller's bug).
        """
        if self.chain is None:
            raise Malformed("coordinates without their chain cannot be extended")
        index = len(self.path)
        if index > MAX_TREE_DEPTH:
            raise TooLarge(
                f"grant {index} would place a node at depth {index}, limit {MAX_TREE_DEPTH}"
            )
        grant_bytes = _sized(grant, index)
        signer, fields = _open_grant(grant_bytes, index)

        def where() -> str:  # made only for an error: base32 of two ids is not free
            return (
                f"grant {index} (depth {fields.depth}, {fields.child.short} under {signer.short})"
            )

        if signer != self.node:
            raise Malformed(
                f"{where()} is signed by {signer.short}, but the node above it is {self.node.short}"
            )
        if fields.root != self.root or fields.ts != self.ts:
            raise Malformed(
                f"{where()} is for the tree of {fields.root.short} as of {fields.ts}, "
                f"but the chain's is {self.root.short} as of {self.ts}"
            )
        if fields.depth != index:
            raise Malformed(f"{where()} is at depth {fields.depth}, expected {index}")
        if fields.up != _digest(self.chain.grants[-1]):
            raise Malformed(f"{where()} is not bound to the grant above it (its up differs)")
        if fields.child in self.path:
            raise Malformed(
                f"{where()} places {fields.child.short}, already on the path above (a loop)"
            )
        _check_time(fields, where, now)
        if self.exp <= now:
            raise Expired(f"the chain above {where()} expired {now - self.exp} ms ago")
        return _checked(
            (*self.path, fields.child),
            self.ts,
            min(self.exp, fields.exp),
            CoordChain((*self.chain.grants, grant_bytes)),
        )


#: The slots of :class:`Coordinates`, written by :func:`_checked` (a frozen class's
#: ``__setattr__`` refuses; its slots' descriptors do not).
_PATH: Final = Coordinates.__dict__["path"]
_TS: Final = Coordinates.__dict__["ts"]
_EXP: Final = Coordinates.__dict__["exp"]
_CHAIN: Final = Coordinates.__dict__["chain"]


def _checked(path: tuple[NodeId, ...], ts: int, exp: int, chain: CoordChain) -> Coordinates:
    """``Coordinates(path, ts, exp, chain)`` for fields :meth:`Coordinates.below` has
    checked: a path one node longer than a valid one's, within the depth limit, whose
    new node is a :class:`NodeId` not on it already; ``ts`` and ``exp`` integers in
    range. ``__post_init__`` would check the whole path again at each level, so that a
    chain's verification cost its depth squared (4% of a 10,000-node simulation's
    start)."""
    made = object.__new__(Coordinates)
    _PATH.__set__(made, path)
    _TS.__set__(made, ts)
    _EXP.__set__(made, exp)
    _CHAIN.__set__(made, chain)
    return made


class _Grant(NamedTuple):
    root: NodeId
    ts: int
    child: NodeId
    depth: int
    exp: int
    up: bytes | None


def _root(statement: bytes, *, now: int) -> Coordinates:
    statement = _sized(statement, 0)
    signer, fields = _open_grant(statement, 0)

    def where() -> str:
        return f"the root statement (grant 0, by {signer.short})"

    if fields.depth != 0:
        raise Malformed(f"{where()} is at depth {fields.depth}, expected 0")
    if fields.root != signer or fields.child != signer:
        raise Malformed(
            f"{where()} names root {fields.root.short} and child {fields.child.short}; "
            "both must be its signer"
        )
    _check_time(fields, where, now)  # (it has no up: _read_grant saw to that at depth 0)
    return Coordinates((signer,), fields.ts, fields.exp, CoordChain((statement,)))


def _sized(grant: bytes, index: int) -> bytes:
    if not isinstance(grant, bytes):
        raise Malformed(f"grant {index} is a {type(grant).__name__}, expected bytes")
    if len(grant) > MAX_GRANT_SIZE:
        raise TooLarge(f"grant {index} is {len(grant)} bytes, limit {MAX_GRANT_SIZE}")
    return grant


def _open_grant(grant: bytes, index: int) -> tuple[NodeId, _Grant]:
    try:
        signer, payload = _envelope.open(grant, _envelope.Purpose.COORD, max_size=MAX_GRANT_SIZE)
    except CryptoError as exc:  # say which grant, keep the class (and its status hint)
        raise type(exc)(f"grant {index}: {exc}") from exc
    return signer, _read_grant(payload, index)


def _read_grant(payload: dict[Any, Any], index: int) -> _Grant:
    keys = set(payload)
    if missing := _REQUIRED - keys:
        raise Malformed(f"grant {index} lacks {', '.join(sorted(missing))}")
    if unknown := keys - _KEYS:
        raise Malformed(f"grant {index} has unknown keys {sorted(map(repr, unknown))}")
    up = payload.get("up")
    if "up" in payload and (not isinstance(up, bytes) or len(up) != hashlib.sha256().digest_size):
        raise Malformed(f"grant {index}'s up is not a {hashlib.sha256().digest_size}-byte digest")
    depth = _integer(payload["depth"], f"grant {index}'s depth")
    if depth > MAX_TREE_DEPTH:
        raise TooLarge(f"grant {index} is at depth {depth}, limit {MAX_TREE_DEPTH}")
    if (depth == 0) != (up is None):
        raise Malformed(f"grant {index} at depth {depth} must have an up exactly when below 0")
    return _Grant(
        root=_node(payload["root"], f"grant {index}'s root"),
        ts=_integer(payload["ts"], f"grant {index}'s ts"),
        child=_node(payload["child"], f"grant {index}'s child"),
        depth=depth,
        exp=_integer(payload["exp"], f"grant {index}'s exp"),
        up=up,
    )


def _node(value: Any, what: str) -> NodeId:
    if not isinstance(value, bytes) or len(value) != NODE_ID_SIZE:
        raise Malformed(f"{what} is not a {NODE_ID_SIZE}-byte node id")
    return NodeId(value)


def _integer(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"{what} is not an integer")
    if not 0 <= value <= MAX_TIME_MS:
        raise Malformed(f"{what} {value} is outside 0..{MAX_TIME_MS}")
    return value


def _check_time(fields: _Grant, where: Callable[[], str], now: int) -> None:
    if fields.exp <= now:
        raise Expired(f"{where()} expired {now - fields.exp} ms ago")
    if fields.exp - now > MAX_GRANT_LIFETIME_MS:
        raise Malformed(
            f"{where()} is valid for {fields.exp - now} ms more, limit {MAX_GRANT_LIFETIME_MS}"
        )


# -- making grants ------------------------------------------------------------------------


def root_statement(identity: Identity, *, now: int, lifetime_ms: int) -> bytes:
    """Sign this node's statement as a tree's root, as of ``now``, valid ``lifetime_ms``.

    Raises :class:`Malformed` (our bug) if ``lifetime_ms`` is not in
    1..:data:`MAX_GRANT_LIFETIME_MS` or ``now`` is not a time.
    """
    node = identity.node_id
    payload = _payload(node, now, node, 0, _exp(now, lifetime_ms), None)
    return _envelope.seal(identity, _envelope.Purpose.COORD, payload)


def grant_coordinates(
    identity: Identity, child: NodeId, parent: Coordinates, *, now: int, lifetime_ms: int
) -> bytes:
    """Sign a grant placing ``child`` one level below this node, whose verified
    coordinates are ``parent``; valid ``lifetime_ms`` from ``now``. The child's chain is
    ``parent.chain`` and this grant.

    Raises (our bug, not a peer's) :class:`Malformed` if ``parent`` are not this node's
    verified coordinates, ``child`` is already on its path, or the lifetime is not in
    1..:data:`MAX_GRANT_LIFETIME_MS`; :class:`TooLarge` if ``parent`` is at
    :data:`MAX_TREE_DEPTH` (no deeper place can be given); :class:`Expired` if
    ``parent`` has expired.
    """
    if parent.chain is None:
        raise Malformed("only verified coordinates (with their chain) can grant a place")
    if parent.node != identity.node_id:
        raise Malformed(
            f"coordinates of {parent.node.short} cannot be extended by {identity.node_id.short}"
        )
    if child in parent.path:
        raise Malformed(f"{child.short} is already on the path: granting it would make a loop")
    if parent.depth >= MAX_TREE_DEPTH:
        raise TooLarge(f"{parent.node.short} is at depth {parent.depth}, the deepest allowed")
    if parent.exp <= now:
        raise Expired(f"coordinates of {parent.node.short} expired {now - parent.exp} ms ago")
    payload = _payload(
        parent.root,
        parent.ts,
        child,
        parent.depth + 1,
        _exp(now, lifetime_ms),
        _digest(parent.chain.grants[-1]),
    )
    return _envelope.seal(identity, _envelope.Purpose.COORD, payload)


def _exp(now: int, lifetime_ms: int) -> int:
    _integer(now, "now")
    if not isinstance(lifetime_ms, int) or not 0 < lifetime_ms <= MAX_GRANT_LIFETIME_MS:
        raise Malformed(f"a grant's lifetime is 1..{MAX_GRANT_LIFETIME_MS} ms, got {lifetime_ms!r}")
    return _integer(now + lifetime_ms, "exp")


def _payload(
    root: NodeId, ts: int, child: NodeId, depth: int, exp: int, up: bytes | None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "root": root.raw,
        "ts": ts,
        "child": child.raw,
        "depth": depth,
        "exp": exp,
    }
    if up is not None:
        payload["up"] = up
    return payload
