"""The DHT protocol, sans-IO: finding a node's coordinates, publishing our own.

docs/routing-at-scale.md, "Finding coordinates": each node stores its signed coordinates
(a :class:`crypto.CoordChain`) at the k nodes nearest its id, and a sender finds a
destination's coordinates by an iterative lookup of its id. :class:`Dht` is that protocol
over :class:`mesh.Contacts`, :class:`mesh.Lookup` and :class:`mesh.Records`: it takes
messages as (sender id, body bytes) and the time, and hands back what to send. It does no
I/O and reads no clock. The caller carries each :class:`DhtSend` as a frame signed by its
origin and routed greedily by the destination's coordinates, so ``sender`` is
authenticated by the caller, never read from a body.

Messages (:func:`encode_message`, :func:`decode_message`): deterministic CBOR maps, at
most :data:`MAX_MESSAGE_SIZE` bytes, with exactly these keys (an unknown key is
malformed: grants are read as strictly). ``q`` is an 8-byte query id, chosen by the
asker and echoed in the answer; chains are a :class:`crypto.CoordChain`'s wire form.

===========  =====================================================================
``find``     ``{op, q, key, value: bool, from, known?}``: the contacts nearest ``key``
             (those not in ``known``, ids the asker has heard of, at most
             :data:`MAX_FOUND_NODES`) and,
             with ``value``, the coordinates of ``key`` if held. ``from`` is the
             asker's chain: the answer is routed back by it, and the asker learned
``found``    ``{op, q, nodes: [[id, chain], ...], value?, from?}``: at most
             :data:`MAX_FOUND_NODES` (we send the :data:`DEFAULT_ANSWER_NODES`
             nearest not ``known`` to the asker, of those whose chains are unexpired),
             each with its coordinates; ``from``, the answerer's own now (the
             asker keeps them: the ones it asked by may be about to expire)
``store``    ``{op, q, key, value, ttl}``: keep ``value``, the coordinates of ``key``,
             for ``ttl`` ms (cut to the chain's expiry)
``stored``   ``{op, q}``
``ping``     ``{op, q, from}``: are you there (a probe of the oldest contact of a full
             bucket, :class:`mesh.Probe`)
``pong``     ``{op, q}``
``refused``  ``{op, q, why}``: the question was understood but not answered; ``why``
             in words, at most :data:`MAX_WHY_LENGTH` characters
===========  =====================================================================

Bad input, one behaviour: :meth:`Dht.on_message` raises :class:`crypto.Malformed` or
:class:`crypto.TooLarge` (nothing else) for a body that is not one of these messages;
the caller turns that into the frame's rejected :class:`mesh.Result`
(:meth:`mesh.Result.for_error`). Everything else is answered or ignored, never raised:
a question that cannot be answered (a chain that does not verify, or names another node
than the key or the sender; a store the records refuse; an op this node does not know)
gets ``refused`` with the reason; an answer to no query of ours (unknown ``q``, or from
another node than the one asked) is ignored, as is a chain offered in ``found`` that does
not verify (that node is skipped; the rest of the answer is used).

Every chain is verified (:meth:`crypto.CoordChain.parse`) before it is used, stored or
passed on; a chain that verified is not verified again until it expires (a bounded
memo, :class:`mesh.VerifiedChains`, shared with the node's router: the same contacts'
chains come back in many answers, and with the frames routed by them).

What the caller does with the actions: for :class:`DhtSend`, send the body to ``dst`` (its
coordinates ``dst_chain``, for greedy routing; None when this node holds none for it: a
refusal to a sender whose chain did not verify, or a ``stored`` for a node that stored
coordinates not its own, go back the way the question came if they can). :class:`LookupDone`
reports a lookup started by :meth:`Dht.find`.

Timers, all in :meth:`Dht.tick`: a query unanswered after ``timeout_ms`` failed (the
lookup asks the next node; the contact is dropped from the table, a pending newcomer
takes its place), seen at the first tick after that (node/_mesh.py ticks every 15 s:
10 to 25 s after it was sent; failing each at :meth:`Dht.wake_at` instead was measured
and not kept, docs/routing-at-scale.md; a ``found`` that comes later still, within
:data:`LATE_ANSWER_TIMEOUTS` timeouts of the question, serves the lookup if it runs and
counts its sender alive: at a mesh's start a third of the queries outlive the timeout,
and their answers are worth as much late); our own coordinates are published when they
change (a ``store`` at the k nodes found last time, or after a lookup of our id if none
was, the first time once our place has held :data:`PUBLISH_SETTLE_MS`; a chain that
changed only by the root's newer statement, the same place, once the copy held is in the
last third of its life: the root signs one every interval, and the copy routes as well)
and every ``republish_ms`` (a lookup of our id, then a ``store`` at each of the k
found; sooner, :data:`PUBLISH_RECHECK_MS` and doubling, after our first publication
and while a node nearer our id than those found did not answer, a recheck: a lookup
that counts the holders as having answered, so that only the others are asked (a node
missed, or nearer ones named since), storing at the holders it finds anew; at the next
tick, while fewer than k were found and more contacts are known than then); buckets no
lookup touched for ``refresh_ms`` are refreshed by a lookup of a random id in them.
Records stored for others are not republished by us: each owner publishes its own, and
coordinates expire within the tree's grant lifetime anyway. But a newcomer to our
contacts nearer a record's key than we are, where we know no nearer node, is handed
that record (a ``store``: Kademlia's §2.5): a publication made while the tables were
young, at nodes that were not the nearest its key, so moves to the nearest as they
are learned, and the cheap rechecks above find it there.

Bounds: at most ``max_lookups`` lookups started by :meth:`Dht.find` at once (past it,
:class:`mesh.StoreFull`) and :data:`MAX_BACKGROUND_LOOKUPS` more of our own (publish,
refresh); each has at most ``alpha`` queries in flight and ``max_lookup_queries`` in all;
a publication sends at most k stores; probes are one per full bucket per probe interval.
So the queries pending are bounded, and each lapses after ``timeout_ms``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import heapq
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, Final

import crypto
from crypto import _cbor
from mesh._chains import VerifiedChains
from mesh._dht import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    DEFAULT_MAX_LOOKUP_QUERIES,
    Contacts,
    Lookup,
    Records,
    xor_distance,
)
from mesh._errors import MeshError, NoRoute, StoreFull

__all__ = [
    "DEFAULT_ANSWER_NODES",
    "DEFAULT_MAX_LOOKUPS",
    "DEFAULT_QUERY_TIMEOUT_MS",
    "DEFAULT_REFRESH_MS",
    "DEFAULT_REPUBLISH_MS",
    "MAX_BACKGROUND_LOOKUPS",
    "MAX_FOUND_NODES",
    "MAX_MESSAGE_SIZE",
    "MAX_OP_LENGTH",
    "MAX_WHY_LENGTH",
    "PUBLISH_RECHECK_MS",
    "PUBLISH_SETTLE_MS",
    "QUERY_ID_SIZE",
    "Dht",
    "DhtAction",
    "DhtFind",
    "DhtFound",
    "DhtMessage",
    "DhtPing",
    "DhtPong",
    "DhtRefused",
    "DhtSend",
    "DhtStore",
    "DhtStored",
    "DhtUnknownOp",
    "LookupDone",
    "decode_message",
    "encode_message",
]

#: Largest message body: a ``found`` of k = 8 nodes whose chains are 15 levels deep
#: (~4 KB each) and a value is ~40 KB; an answer that would be larger carries fewer nodes.
MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Bytes in a query id: random, so an answer cannot be guessed by a node not asked.
QUERY_ID_SIZE: Final = 8
#: Most nodes a ``found`` may carry (and ids a ``find`` may name as ``known``): we send
#: :data:`DEFAULT_ANSWER_NODES`; a peer configured to send more is read up to this, and
#: only the k nearest are taken.
MAX_FOUND_NODES: Final = 20
#: Contacts named in a ``found``: the nearest 4 the asker does not know (it names the k
#: nearest it has heard of in its ``find``), not k. Each comes with its chain (about
#: 1.5 KB in a tree 10 deep), so an answer of k = 8 is ~12 KB; a lookup still reaches
#: the k nearest, in answers half the size (docs/routing-at-scale.md).
DEFAULT_ANSWER_NODES: Final = 4
#: Longest reason in a ``refused`` (characters): ours are one sentence.
MAX_WHY_LENGTH: Final = 300
#: Longest op name read, so that an unknown op quoted back in a refusal stays short.
MAX_OP_LENGTH: Final = 32
#: A query unanswered this long failed. It crosses the tree greedily both ways, each hop
#: storing and forwarding: seconds when the hops are up.
DEFAULT_QUERY_TIMEOUT_MS: Final = 10_000
#: A ``found`` answering a query that timed out is still taken this many timeouts after
#: the question (of at most :data:`MAX_LATE_QUERIES` remembered): later, it is ignored.
LATE_ANSWER_TIMEOUTS: Final = 3
MAX_LATE_QUERIES: Final = 1024
#: Lookups :meth:`Dht.find` may have running at once: a node looks up destinations as it
#: starts talking to them, and caches what it finds.
DEFAULT_MAX_LOOKUPS: Final = 64
#: Contacts pinged per tick to renew their coordinates (the rest at later ticks).
MAX_RENEWALS: Final = 8
#: A newcomer to our contacts is handed at most this many records
#: (:meth:`Dht._replicate`), of at most :data:`MAX_HANDOVER_CHECKS` it is nearer than
#: us: the stores and the searches of our contacts one newcomer costs are bounded
#: whatever we hold (each record held is compared with it once, by XOR distance: at
#: most a :class:`mesh.Records` holds, 10,000 by default).
MAX_HANDOVERS: Final = 16
MAX_HANDOVER_CHECKS: Final = 64
#: Lookups of our own running at once: one publication and a few bucket refreshes (more
#: wait for the next tick).
MAX_BACKGROUND_LOOKUPS: Final = 8
#: Kademlia's bucket refresh interval (§2.3): an hour.
DEFAULT_REFRESH_MS: Final = 3600 * 1000
#: How often our coordinates are stored again at the nodes then nearest our id, found
#: afresh (between times, a change is stored at the nodes found last): an hour.
DEFAULT_REPUBLISH_MS: Final = 3600 * 1000
#: A node's first publication, and one whose lookup could not reach a node nearer our id
#: than the holders it found (a query timed out: the tree still forming, a link down),
#: looks for the nearest again this long after, twice as long each time it is unsure
#: again, up to ``republish_ms``: lookups by others end at the nearest nodes, not at
#: ours. (The first, because at a mesh's start the nodes nearest our id may be joining
#: as we do, unknown yet to the nodes we ask: seen at 3,000 nodes, a node stored at 8
#: nodes none of which was among the 12 nearest its id, and nobody found it.)
PUBLISH_RECHECK_MS: Final = 60_000
#: A node's first publication waits until its place has held this long (two of the
#: router's flood intervals; :meth:`Dht.set_coordinates` is told when it changed): while
#: the tree forms, a new root spreads a flood interval a hop and places change every few
#: seconds, and a publication made meanwhile finds its holders by chains of trees about
#: to go, misses the nodes nearest our id and looks again (:data:`PUBLISH_RECHECK_MS`).
PUBLISH_SETTLE_MS: Final = 10_000
_NODE_ID_SIZE: Final = 32


# -- messages -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DhtFind:
    """Ask for the contacts nearest ``key`` (and, with ``value``, its coordinates);
    ``sender_chain`` is the asker's coordinates (``from`` on the wire); ``known``, nodes
    near ``key`` the asker has heard of already, for the answer to leave out."""

    q: bytes
    key: crypto.NodeId
    value: bool
    sender_chain: bytes = dataclasses.field(repr=False)
    known: tuple[crypto.NodeId, ...] = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DhtFound:
    """The answer to :class:`DhtFind`: contacts with their chains, and the value if held;
    ``sender_chain``, the answerer's own coordinates now (``from``), if it has any."""

    q: bytes
    nodes: tuple[tuple[crypto.NodeId, bytes], ...] = dataclasses.field(repr=False)
    value: bytes | None = dataclasses.field(default=None, repr=False)
    sender_chain: bytes | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DhtStore:
    """Keep ``value``, the coordinates of ``key``, for ``ttl_ms``."""

    q: bytes
    key: crypto.NodeId
    value: bytes = dataclasses.field(repr=False)
    ttl_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class DhtStored:
    """The answer to :class:`DhtStore`: kept."""

    q: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class DhtPing:
    """Are you there? ``sender_chain``: the asker's coordinates (``from``)."""

    q: bytes
    sender_chain: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DhtPong:
    """The answer to :class:`DhtPing`; ``sender_chain``, the answerer's coordinates now
    (``from``), if it has any."""

    q: bytes
    sender_chain: bytes | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DhtRefused:
    """Query ``q`` was understood but not answered, for the reason ``why``."""

    q: bytes
    why: str


@dataclasses.dataclass(frozen=True, slots=True)
class DhtUnknownOp:
    """A well-formed message with an op this node does not speak (answered ``refused``)."""

    q: bytes
    op: str


DhtMessage = (
    DhtFind | DhtFound | DhtStore | DhtStored | DhtPing | DhtPong | DhtRefused | DhtUnknownOp
)

# op -> (required keys, optional keys), "op" and "q" included.
_SHAPES: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "find": (frozenset({"op", "q", "key", "value", "from"}), frozenset({"known"})),
    "found": (frozenset({"op", "q", "nodes"}), frozenset({"value", "from"})),
    "store": (frozenset({"op", "q", "key", "value", "ttl"}), frozenset()),
    "stored": (frozenset({"op", "q"}), frozenset()),
    "ping": (frozenset({"op", "q", "from"}), frozenset()),
    "pong": (frozenset({"op", "q"}), frozenset({"from"})),
    "refused": (frozenset({"op", "q", "why"}), frozenset()),
}


def encode_message(message: DhtMessage) -> bytes:
    """The body for ``message``: a deterministic CBOR map.

    Raises :class:`crypto.TooLarge` if it would be over :data:`MAX_MESSAGE_SIZE` (a
    caller's bug: :class:`Dht` trims its answers to fit), :class:`crypto.Malformed` for
    an :class:`DhtUnknownOp` (it is only ever read).
    """
    fields: dict[str, Any]
    match message:
        case DhtFind(q, key, value, sender_chain, known):
            fields = {"op": "find", "q": q, "key": key.raw, "value": value, "from": sender_chain}
            if known:
                fields["known"] = [node.raw for node in known]
        case DhtFound(q, nodes, value, sender_chain):
            fields = {"op": "found", "q": q, "nodes": [[node.raw, chain] for node, chain in nodes]}
            if value is not None:
                fields["value"] = value
            if sender_chain is not None:
                fields["from"] = sender_chain
        case DhtStore(q, key, value, ttl_ms):
            fields = {"op": "store", "q": q, "key": key.raw, "value": value, "ttl": ttl_ms}
        case DhtStored(q):
            fields = {"op": "stored", "q": q}
        case DhtPing(q, sender_chain):
            fields = {"op": "ping", "q": q, "from": sender_chain}
        case DhtPong(q, sender_chain):
            fields = {"op": "pong", "q": q}
            if sender_chain is not None:
                fields["from"] = sender_chain
        case DhtRefused(q, why):
            fields = {"op": "refused", "q": q, "why": why[:MAX_WHY_LENGTH]}
        case DhtUnknownOp(_, op):
            raise crypto.Malformed(f"op {op!r} is read, never sent")
    body = _cbor.encode(fields)
    if len(body) > MAX_MESSAGE_SIZE:
        raise crypto.TooLarge(
            f"DHT {fields['op']} message is {len(body)} bytes, limit {MAX_MESSAGE_SIZE}"
        )
    return body


def decode_message(body: bytes) -> DhtMessage:
    """Read a message body (see the module docstring); bounded before decoding.

    Raises, the sender at fault: :class:`crypto.TooLarge` for a body over
    :data:`MAX_MESSAGE_SIZE` (checked first), a chain over
    :data:`crypto.MAX_COORD_CHAIN_SIZE`, more than :data:`MAX_FOUND_NODES` nodes, a
    ``why`` over :data:`MAX_WHY_LENGTH` characters or an op over :data:`MAX_OP_LENGTH`;
    :class:`crypto.Malformed` for anything else that is not a message: not one CBOR
    map, ``op`` or ``q`` missing or of the wrong type, a key missing or unknown for its
    op, a field of the wrong type or size. A well-formed map whose op is unknown is an
    :class:`DhtUnknownOp`. Chains are not verified here (see :class:`Dht`).
    """
    if not isinstance(body, bytes):
        raise crypto.Malformed(f"a DHT message is bytes, got {type(body).__name__}")
    if len(body) > MAX_MESSAGE_SIZE:
        raise crypto.TooLarge(f"DHT message is {len(body)} bytes, limit {MAX_MESSAGE_SIZE}")
    item = _cbor.decode(body, what="DHT message", max_size=MAX_MESSAGE_SIZE)
    if not isinstance(item, dict):
        raise crypto.Malformed(f"DHT message is a {type(item).__name__}, expected a map")
    op = item.get("op")
    if not isinstance(op, str):
        raise crypto.Malformed("DHT message has no op (text)")
    if len(op) > MAX_OP_LENGTH:
        raise crypto.TooLarge(f"DHT message's op is {len(op)} characters, limit {MAX_OP_LENGTH}")
    q = item.get("q")
    if not isinstance(q, bytes) or len(q) != QUERY_ID_SIZE:
        raise crypto.Malformed(f"DHT {op} message's q is not a {QUERY_ID_SIZE}-byte query id")
    shape = _SHAPES.get(op)
    if shape is None:
        return DhtUnknownOp(q, op)
    required, optional = shape
    keys = set(item)
    if missing := required - keys:
        raise crypto.Malformed(f"DHT {op} message lacks {', '.join(sorted(missing))}")
    if unknown := keys - required - optional:
        raise crypto.Malformed(
            f"DHT {op} message has unknown keys {', '.join(sorted(repr(key) for key in unknown))}"
        )
    match op:
        case "find":
            value = item["value"]
            if not isinstance(value, bool):
                raise crypto.Malformed("DHT find message's value is not a boolean")
            return DhtFind(
                q,
                _node(item["key"], op, "key"),
                value,
                _chain(item["from"], op, "from"),
                _known(item.get("known", [])),
            )
        case "found":
            raw, own = item.get("value"), item.get("from")
            return DhtFound(
                q,
                _nodes(item["nodes"]),
                None if raw is None else _chain(raw, op, "value"),
                None if own is None else _chain(own, op, "from"),
            )
        case "store":
            ttl = item["ttl"]
            if (
                not isinstance(ttl, int)
                or isinstance(ttl, bool)
                or not 0 < ttl <= crypto.MAX_GRANT_LIFETIME_MS
            ):
                raise crypto.Malformed(
                    f"DHT store message's ttl is {ttl!r}, "
                    f"expected 1..{crypto.MAX_GRANT_LIFETIME_MS} ms"
                )
            key = _node(item["key"], op, "key")
            return DhtStore(q, key, _chain(item["value"], op, "value"), ttl)
        case "stored":
            return DhtStored(q)
        case "ping":
            return DhtPing(q, _chain(item["from"], op, "from"))
        case "pong":
            own = item.get("from")
            return DhtPong(q, None if own is None else _chain(own, op, "from"))
        case _:  # "refused"
            why = item["why"]
            if not isinstance(why, str):
                raise crypto.Malformed("DHT refused message's why is not text")
            if len(why) > MAX_WHY_LENGTH:
                raise crypto.TooLarge(
                    f"DHT refused message's why is {len(why)} characters, limit {MAX_WHY_LENGTH}"
                )
            return DhtRefused(q, why)


def _node(value: Any, op: str, what: str) -> crypto.NodeId:
    if not isinstance(value, bytes) or len(value) != _NODE_ID_SIZE:
        raise crypto.Malformed(f"DHT {op} message's {what} is not a 32-byte node id")
    return crypto.NodeId(value)


def _chain(value: Any, op: str, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise crypto.Malformed(f"DHT {op} message's {what} is not a coordinate chain (bytes)")
    if len(value) > crypto.MAX_COORD_CHAIN_SIZE:
        raise crypto.TooLarge(
            f"DHT {op} message's {what} is {len(value)} bytes, limit {crypto.MAX_COORD_CHAIN_SIZE}"
        )
    return value


def _known(value: Any) -> tuple[crypto.NodeId, ...]:
    if not isinstance(value, list):
        raise crypto.Malformed("DHT find message's known is not an array")
    if len(value) > MAX_FOUND_NODES:
        raise crypto.TooLarge(f"DHT find message names {len(value)} known, limit {MAX_FOUND_NODES}")
    return tuple(_node(entry, "find", f"known {index}") for index, entry in enumerate(value))


def _nodes(value: Any) -> tuple[tuple[crypto.NodeId, bytes], ...]:
    if not isinstance(value, list):
        raise crypto.Malformed("DHT found message's nodes is not an array")
    if len(value) > MAX_FOUND_NODES:
        raise crypto.TooLarge(f"DHT found message has {len(value)} nodes, limit {MAX_FOUND_NODES}")
    nodes: list[tuple[crypto.NodeId, bytes]] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != 2:
            raise crypto.Malformed(f"DHT found message's node {index} is not [id, chain]")
        what = f"node {index}"
        nodes.append((_node(entry[0], "found", what), _chain(entry[1], "found", what)))
    return tuple(nodes)


# -- actions ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DhtSend:
    """Send ``body`` to ``dst``, routed greedily by its coordinates ``dst_chain`` (None:
    none are held for it; see the module docstring)."""

    dst: crypto.NodeId
    dst_chain: bytes | None = dataclasses.field(repr=False)
    body: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class LookupDone:
    """The lookup ``lookup_id`` (from :meth:`Dht.find`) of ``key`` ended: the k nearest
    nodes that answered, nearest first; ``value``, the verified chain of ``key`` if it was
    asked for and found; ``queries`` sent."""

    lookup_id: int
    key: crypto.NodeId
    nearest: tuple[crypto.NodeId, ...]
    value: bytes | None = dataclasses.field(repr=False)
    queries: int


DhtAction = DhtSend | LookupDone


# -- the protocol -------------------------------------------------------------------------


class _Purpose(enum.Enum):
    """Why a lookup runs."""

    FIND = "find"  # asked by the caller: ends with LookupDone
    PUBLISH = "publish"  # our own id: then store our coordinates at the k found
    REFRESH = "refresh"  # a random id in a stale bucket


class _Kind(enum.Enum):
    """What a pending query asked, hence the answers it takes."""

    FIND = "find"
    STORE = "store"
    PING = "ping"


_ANSWERS: Final[dict[_Kind, tuple[type, ...]]] = {
    _Kind.FIND: (DhtFound, DhtRefused),
    _Kind.STORE: (DhtStored, DhtRefused),
    _Kind.PING: (DhtPong, DhtRefused),
}


@dataclasses.dataclass(slots=True)
class _Running:
    lookup_id: int
    lookup: Lookup
    purpose: _Purpose
    #: The chains of the nodes it may query (seeds' from the contacts, others' as offered).
    chains: dict[crypto.NodeId, bytes]
    #: A lookup of coordinates that ends at the first value placing the key in our tree.
    first: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    kind: _Kind
    dst: crypto.NodeId
    chain: bytes
    sent: int
    lookup_id: int | None


class Dht:
    """One node's side of the DHT protocol (see the module docstring).

    ``contacts`` and ``records`` are this node's (``contacts.self_id`` must be
    ``identity_id``). ``rng`` draws query ids (by default, one seeded with our id). Call
    :meth:`set_coordinates` when our chain changes and :meth:`introduce` with nodes to
    start from (neighbours, say); then :meth:`find`, :meth:`on_message` and
    :meth:`tick`, all with ``now`` (ms), and perform the actions they return.

    ``chains`` remembers the chains verified (one of its own by default; a router passes
    the one it checks frames' chains with).

    Raises :class:`ValueError` for a ``contacts`` of another node or bounds below 1.
    """

    def __init__(
        self,
        identity_id: crypto.NodeId,
        *,
        contacts: Contacts,
        records: Records,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        timeout_ms: int = DEFAULT_QUERY_TIMEOUT_MS,
        rng: random.Random | None = None,
        max_lookups: int = DEFAULT_MAX_LOOKUPS,
        max_lookup_queries: int = DEFAULT_MAX_LOOKUP_QUERIES,
        refresh_ms: int = DEFAULT_REFRESH_MS,
        republish_ms: int = DEFAULT_REPUBLISH_MS,
        chains: VerifiedChains | None = None,
        answer_nodes: int = DEFAULT_ANSWER_NODES,
    ) -> None:
        if contacts.self_id != identity_id:
            raise ValueError(f"contacts are {contacts.self_id.short}'s, not {identity_id.short}'s")
        if min(k, alpha, timeout_ms, max_lookups, max_lookup_queries, answer_nodes) < 1:
            raise ValueError(
                "k, alpha, timeout_ms, max_lookups, max_lookup_queries and answer_nodes"
                " must be >= 1"
            )
        if answer_nodes > MAX_FOUND_NODES:
            raise ValueError(f"answer_nodes must be <= {MAX_FOUND_NODES}, got {answer_nodes}")
        self.id = identity_id
        self.contacts = contacts
        self.records = records
        self.k = k
        self.alpha = alpha
        self.timeout_ms = timeout_ms
        self.max_lookups = max_lookups
        self.max_lookup_queries = max_lookup_queries
        self.refresh_ms = refresh_ms
        self.republish_ms = republish_ms
        self.answer_nodes = answer_nodes
        self._rng = rng if rng is not None else random.Random(identity_id.raw)
        self._salt = int.from_bytes(identity_id.raw[8:16], "big")
        #: Per contact, for the chain it had at the last tick: when to renew it, and
        #: when that chain expires (computed once per chain, not at every tick).
        self._renew_at: dict[crypto.NodeId, tuple[bytes, int, int]] = {}
        #: The earliest renewal time of those, and ``contacts.changes`` then: until
        #: either moves, a tick has no contact to look at.
        self._renew_next: float = 0
        self._renew_changes = -1
        self._chain: bytes | None = None
        self._chain_since: int | None = None
        self._publish_due = False
        self._publishing: int | None = None  # the lookup id of our publication running
        self._published: int | None = None  # when the last one found its holders
        self._holders: list[tuple[crypto.NodeId, bytes]] = []
        self._known_then = 0  # contacts known when the last publication found its holders
        #: The coordinates we last stored at our holders (without their chain).
        self._stored: crypto.Coordinates | None = None
        self._stored_chain: bytes | None = None  # the chain of _stored
        #: When our last publication missed a nearer node: when to look again, and
        #: the wait before that (doubled each time).
        self._recheck_at: int | None = None
        self._recheck_ms = 0
        self._lookups: dict[int, _Running] = {}
        self._queries: dict[bytes, _Pending] = {}
        #: Lookups' queries that timed out, by id, oldest first: a late answer serves.
        self._late: dict[bytes, _Pending] = {}
        self._last_lookup_id = 0
        #: The chains verified by this node (shared with its router and tree).
        self.chains = chains if chains is not None else VerifiedChains()

    # -- state --------------------------------------------------------------------------

    @property
    def coordinates(self) -> bytes | None:
        """Our chain, as last set."""
        return self._chain

    @property
    def lookups_running(self) -> int:
        """Lookups running, ours (publish, refresh) included."""
        return len(self._lookups)

    @property
    def queries_pending(self) -> int:
        """Queries sent and neither answered nor timed out."""
        return len(self._queries)

    @property
    def holders(self) -> list[crypto.NodeId]:
        """The nodes our coordinates were last stored at (found by our last publication)."""
        return [node for node, _ in self._holders]

    def wake_at(self) -> int | None:
        """When the next pending query times out (call :meth:`tick` then), if any; tick
        at least every few minutes besides, for publication and refresh."""
        return min((p.sent + self.timeout_ms for p in self._queries.values()), default=None)

    def set_coordinates(self, chain: bytes | None, now: int | None = None) -> None:
        """Our coordinates changed (None: we have none): published at the next tick;
        the first time, once they have held :data:`PUBLISH_SETTLE_MS` since ``now``,
        when they changed (None: not known, at the next tick)."""
        if chain != self._chain:
            self._chain = chain
            self._publish_due = chain is not None
            self._chain_since = now

    def introduce(self, chain: bytes, now: int) -> list[DhtAction]:
        """Learn the node ``chain`` places as a contact (a neighbour, say: a node to start
        lookups from). Raises the :class:`crypto.CryptoError` the chain's verification
        raises."""
        coordinates = self._verify(chain, now)
        return self._seen(coordinates.node, chain, now)

    # -- lookups ------------------------------------------------------------------------

    def find(
        self, key: crypto.NodeId, *, value: bool, now: int, first: bool = False
    ) -> tuple[int, list[DhtAction]]:
        """Start a lookup of ``key`` (``value``: of its coordinates too); return its id
        and the queries to send. It ends with :class:`LookupDone` (perhaps among these actions,
        when no contact can be asked).

        A lookup of coordinates goes on until the k nodes nearest ``key`` have answered,
        and takes the newest value offered: a holder that missed the key's last store
        keeps its former place. With ``first``, it ends at the first value that places
        ``key`` in our tree instead, or at ``key``'s own chain doing so (a contact of
        ours, or offered in an answer: asking ``key`` would give it again): a few
        queries rather than k and more (measured in docs/routing-at-scale.md), for a
        place that may be a former one (a caller that finds it leads nowhere looks
        again without ``first``).

        Raises :class:`mesh.NoRoute` while we have no coordinates (no answer could reach
        us), :class:`mesh.StoreFull` with ``max_lookups`` of them running.
        """
        if self._chain is None:
            raise NoRoute("this node has no coordinates yet: no answer to a lookup could reach it")
        running = sum(r.purpose is _Purpose.FIND for r in self._lookups.values())
        if running >= self.max_lookups:
            raise StoreFull(
                f"{running} lookups are running, limit {self.max_lookups}: retry when one is done"
            )
        return self._start(key, _Purpose.FIND, value, now, first=first and value)

    def _start(
        self,
        key: crypto.NodeId,
        purpose: _Purpose,
        value: bool,
        now: int,
        *,
        first: bool = False,
        answered: Sequence[tuple[crypto.NodeId, bytes]] = (),
    ) -> tuple[int, list[DhtAction]]:
        chains: dict[crypto.NodeId, bytes] = {}
        for node in self.contacts.nearest(key, self.k):
            chain = self._chain_of(node)
            if chain is not None and self._usable(chain, now):
                chains[node] = chain
        seeds = list(chains)
        for node, chain in answered:
            chains[node] = self._newest(node, chain, now)
        lookup = Lookup(
            key,
            seeds,
            answered=[node for node, _ in answered],
            k=self.k,
            alpha=self.alpha,
            find_value=value,
            every_value=value,
            self_id=self.id,
            max_queries=self.max_lookup_queries,
        )
        self.contacts.touch(key, now)
        self._last_lookup_id += 1
        running = _Running(self._last_lookup_id, lookup, purpose, chains, first)
        self._lookups[running.lookup_id] = running
        if purpose is _Purpose.PUBLISH:
            self._publishing = running.lookup_id
        return running.lookup_id, self._advance(running, now)

    def _advance(self, running: _Running, now: int) -> list[DhtAction]:
        """Send the queries the lookup wants now; finish it once done."""
        lookup = running.lookup
        actions: list[DhtAction] = []
        if running.first and self._target_placed(running, now):
            lookup.stop()  # a contact of ours, or offered: nobody need be asked (again)
        while not lookup.done:
            batch = lookup.next_queries()
            if not batch:
                return actions
            for node in batch:
                chain = running.chains.get(node)
                if chain is None or self._chain is None:  # (cannot be asked, or answer us)
                    lookup.on_failure(node)
                    continue
                q = self._query(_Kind.FIND, node, chain, now, running.lookup_id)
                known = tuple(n for n in lookup.nearest_known() if n != node)
                body = encode_message(
                    DhtFind(q, lookup.target, lookup.find_value, self._chain, known)
                )
                actions.append(DhtSend(node, chain, body))
        return actions + self._finish(running, now)

    def _finish(self, running: _Running, now: int) -> list[DhtAction]:
        del self._lookups[running.lookup_id]
        nearest, value = running.lookup.result()
        if running.purpose is _Purpose.FIND:
            value = self._freshest(running, now)
            return [
                LookupDone(
                    running.lookup_id,
                    running.lookup.target,
                    tuple(nearest),
                    value,
                    running.lookup.queries,
                )
            ]
        if running.purpose is _Purpose.PUBLISH:
            joined = self._published is None
            rechecking = self._recheck_ms > 0
            before = {node for node, _ in self._holders}
            self._publishing = None
            self._published = now
            self._holders = [(node, running.chains[node]) for node in nearest]
            self._known_then = len(self.contacts)
            # Looked for again after the first publication (our join: the nodes
            # nearest our id may be joining as we do, and unknown yet to those we ask)
            # and after one that missed a nearer node: lookups by others end at the
            # nearest there are, and would find nothing.
            if joined or running.lookup.missed():
                wait = max(2 * self._recheck_ms, PUBLISH_RECHECK_MS)
                self._recheck_ms = min(wait, self.republish_ms)
                self._recheck_at = now + self._recheck_ms
            else:
                self._recheck_at, self._recheck_ms = None, 0
            holders = self._holders
            if rechecking and self._stored_chain == self._chain:
                # A recheck stores at the holders it found anew only: those found before
                # hold this very chain (a holder that restarted since has lost it; the
                # others keep it, and the next change of our place stores it again).
                holders = [(node, chain) for node, chain in holders if node not in before]
            return self._store_at(holders, now)
        return []

    # -- publishing our coordinates and refreshing buckets -------------------------------

    def tick(self, now: int) -> list[DhtAction]:
        """Time passed: queries timed out, records lapsed, our coordinates due to be
        published, buckets due to be refreshed (see the module docstring)."""
        actions: list[DhtAction] = []
        for q, pending in list(self._queries.items()):
            if now - pending.sent >= self.timeout_ms and q in self._queries:
                del self._queries[q]
                if pending.kind is _Kind.FIND and pending.lookup_id is not None:
                    self._late[q] = pending  # its answer may come yet: _on_answer
                    if len(self._late) > MAX_LATE_QUERIES:
                        del self._late[next(iter(self._late))]
                actions += self._failed(pending, now)
        late = self._late
        while late and now - next(iter(late.values())).sent >= (
            LATE_ANSWER_TIMEOUTS * self.timeout_ms
        ):
            del late[next(iter(late))]  # the oldest first
        self.records.expire(now)
        actions += self._publish(now)
        actions += self._refresh(now)
        actions += self._renew(now)
        return actions

    def _renew(self, now: int) -> list[DhtAction]:
        """Ping the contacts whose coordinates are in the last third of their life, up
        to a sixth of it later (:meth:`_renewal_offset`; at most :data:`MAX_RENEWALS`
        per tick, one ping in flight each): the pong brings their coordinates now, so a
        contact stays reachable however long it lives."""
        if self._chain is None:
            return []
        contacts = self.contacts
        if now < self._renew_next and contacts.changes == self._renew_changes:
            return []  # nothing due, and no contact came, went or changed since
        pinged = {p.dst for p in self._queries.values() if p.kind is _Kind.PING}
        actions: list[DhtAction] = []
        due_at = self._renew_at
        self._renew_at = {}
        self._renew_changes = contacts.changes
        next_due: float = math.inf
        for contact in contacts:
            chain = contact.info
            if chain is None:
                continue
            due = due_at.get(contact.node)
            if due is None or due[0] is not chain:
                try:
                    checked = self._verify(chain, now)
                except crypto.CryptoError:
                    continue  # too late: it is found again by lookups, or replaced
                life = checked.exp - checked.ts
                offset = self._renewal_offset(contact.node, life // 6)
                due = (chain, checked.exp - life // 3 + offset, checked.exp)
            self._renew_at[contact.node] = due
            if now >= due[2]:
                continue  # expired: renewed only if it changes (a new chain)
            next_due = min(next_due, due[1])
            if now < due[1] or contact.node in pinged:
                continue
            if len(actions) >= MAX_RENEWALS:
                continue  # (at a later tick)
            q = self._query(_Kind.PING, contact.node, chain, now, None)
            actions.append(DhtSend(contact.node, chain, encode_message(DhtPing(q, self._chain))))
        self._renew_next = next_due
        return actions

    def _renewal_offset(self, node: crypto.NodeId, span: int) -> int:
        """How much later than the last third of its life ``node``'s coordinates are
        renewed: 0 to ``span`` ms, fixed per pair and different each way, so that of two
        contacts of each other (XOR distance is symmetric) one pings first,
        and its ping renews it at the other, whose own ping is then not needed."""
        if span <= 0:
            return 0
        mixed = int.from_bytes(node.raw[:8], "big") * 0x9E3779B97F4A7C15 + self._salt
        return (mixed >> 16) % span

    def _failed(self, pending: _Pending, now: int) -> list[DhtAction]:
        if pending.kind is _Kind.PING:
            self.contacts.probe_failed(pending.dst)
            return []
        if pending.kind is _Kind.STORE:
            return []
        self.contacts.failed(pending.dst)  # dropped if a newcomer waits, or after a few
        running = None if pending.lookup_id is None else self._lookups.get(pending.lookup_id)
        if running is None:
            return []
        running.lookup.on_failure(pending.dst)
        return self._advance(running, now)

    def _background(self) -> int:
        return sum(r.purpose is not _Purpose.FIND for r in self._lookups.values())

    def _publish(self, now: int) -> list[DhtAction]:
        if self._chain is None or self._publishing is not None:
            return []
        # Stored again at the same nodes while they are k (fewer: found when we knew
        # few contacts, they are likely not the nearest our id: look again once we
        # know more; in a mesh of fewer than k + 1 nodes another lookup would find the
        # same) and no nearer node was out of reach (else look again at the recheck
        # time).
        fresh = (
            self._published is not None
            and (len(self._holders) >= self.k or len(self.contacts) <= self._known_then)
            and now - self._published < self.republish_ms
            and (self._recheck_at is None or now < self._recheck_at)
        )
        if fresh and not self._publish_due:
            return []
        if fresh:  # changed since: to the nodes found last time
            if self._held_still(now):
                return []  # the root's next statement: stored when the copy held ages
            return self._store_at(self._holders, now)
        if self._background() >= MAX_BACKGROUND_LOOKUPS:
            return []
        if (
            self._published is None
            and self._chain_since is not None
            and now - self._chain_since < PUBLISH_SETTLE_MS
        ):
            return []
        self._publish_due = False
        answered: list[tuple[crypto.NodeId, bytes]] = []
        if (
            self._recheck_at is not None
            and now >= self._recheck_at
            and self._published is not None
            and now - self._published < self.republish_ms
            and self._stored_chain == self._chain
        ):
            # A recheck (not the hourly republication): those that hold our chain were
            # asked already; ask the others (missed, or nearer ones named) only.
            answered = self._holders
        return self._start(self.id, _Purpose.PUBLISH, False, now, answered=answered)[1]

    def _held_still(self, now: int) -> bool:
        """Whether our chain changed only by a newer root statement (the same place)
        since we stored it, and the copy our holders keep is in the first two thirds of
        its life: it routes as well as the new one, so storing that can wait until the
        copy held nears its end (then the newest is stored)."""
        stored = self._stored
        if stored is None or self._chain is None:
            return False
        try:
            ours = self._verify(self._chain, now)
        except crypto.CryptoError:
            return False
        return ours.path == stored.path and stored.exp - now > (stored.exp - stored.ts) // 3

    def _store_at(
        self, holders: Iterable[tuple[crypto.NodeId, bytes]], now: int
    ) -> list[DhtAction]:
        self._publish_due = False
        chain = self._chain
        if chain is None:
            return []
        try:
            stored = self._verify(chain, now)
        except crypto.CryptoError:
            return []  # (expired: the tree gives us a fresh one, and we publish that)
        self._stored = stored
        self._stored_chain = chain
        ttl = stored.exp - now
        actions: list[DhtAction] = []
        for node, known in holders:
            node_chain = self._newest(node, known, now)
            q = self._query(_Kind.STORE, node, node_chain, now, None)
            body = encode_message(
                DhtStore(q, self.id, chain, min(ttl, crypto.MAX_GRANT_LIFETIME_MS))
            )
            actions.append(DhtSend(node, node_chain, body))
        return actions

    def _refresh(self, now: int) -> list[DhtAction]:
        if self._chain is None:
            return []
        actions: list[DhtAction] = []
        for _, target in self.contacts.stale_buckets(now, self.refresh_ms):
            if self._background() >= MAX_BACKGROUND_LOOKUPS:
                break  # the rest at a later tick
            actions += self._start(target, _Purpose.REFRESH, False, now)[1]
        return actions

    # -- messages -----------------------------------------------------------------------

    def on_message(self, sender: crypto.NodeId, body: bytes, now: int) -> list[DhtAction]:
        """A message ``sender`` sent us (authenticated by the caller); what to send back.

        Raises :class:`crypto.Malformed` or :class:`crypto.TooLarge` for a body that is
        not a message (:func:`decode_message`), nothing else: see the module docstring.
        """
        message = decode_message(body)
        match message:
            case DhtFind():
                return self._on_find(sender, message, now)
            case DhtPing():
                return self._on_ping(sender, message, now)
            case DhtStore():
                return self._on_store(sender, message, now)
            case DhtUnknownOp(q, op):
                known = ", ".join(_SHAPES)
                return [self._refuse(sender, q, f"unknown op {op!r}; this node speaks {known}")]
            case _:
                return self._on_answer(sender, message, now)

    def _asker(self, sender: crypto.NodeId, chain: bytes, now: int, op: str) -> str | None:
        """Why the asker's ``from`` chain cannot be used, or None."""
        try:
            coordinates = self._verify(chain, now)
        except crypto.CryptoError as exc:
            return f"the {op}'s from chain does not verify: {exc}"
        if coordinates.node != sender:
            return (
                f"the {op}'s from chain places {coordinates.node.short}, "
                f"not the sender {sender.short}"
            )
        return None

    def _on_find(self, sender: crypto.NodeId, message: DhtFind, now: int) -> list[DhtAction]:
        if (why := self._asker(sender, message.sender_chain, now, "find")) is not None:
            return [self._refuse(sender, message.q, why, chain=None)]
        actions = self._seen(sender, message.sender_chain, now)
        value: bytes | None = None
        if message.value:
            if message.key == self.id:
                value = self._chain
            elif (record := self.records.get(message.key, now)) is not None:
                value = record.value
        nodes: list[tuple[crypto.NodeId, bytes]] = []
        skip = [sender, *message.known]
        for node in self.contacts.nearest(message.key, self.k, exclude=skip):
            chain = self._chain_of(node)
            if chain is not None and self._usable(chain, now):
                nodes.append((node, chain))
                if len(nodes) == self.answer_nodes:
                    break
        while True:  # fewer nodes if it would not fit (chains deeper than ours are)
            try:
                body = encode_message(DhtFound(message.q, tuple(nodes), value, self._chain))
                break
            except crypto.TooLarge:
                if not nodes:
                    value = None
                nodes = nodes[:-1]
        actions.append(DhtSend(sender, message.sender_chain, body))
        return actions

    def _on_ping(self, sender: crypto.NodeId, message: DhtPing, now: int) -> list[DhtAction]:
        if (why := self._asker(sender, message.sender_chain, now, "ping")) is not None:
            return [self._refuse(sender, message.q, why, chain=None)]
        actions = self._seen(sender, message.sender_chain, now)
        pong = DhtPong(message.q, self._chain)
        actions.append(DhtSend(sender, message.sender_chain, encode_message(pong)))
        return actions

    def _on_store(self, sender: crypto.NodeId, message: DhtStore, now: int) -> list[DhtAction]:
        key = message.key
        reply_to = self._chain_of(sender)
        try:
            coordinates = self._verify(message.value, now)
        except crypto.CryptoError as exc:
            why = f"the coordinates to store for {key.short} do not verify: {exc}"
            return [self._refuse(sender, message.q, why, chain=reply_to)]
        if coordinates.node != key:
            why = (
                f"the coordinates to store place {coordinates.node.short}, not the key {key.short}"
            )
            return [self._refuse(sender, message.q, why, chain=reply_to)]
        actions: list[DhtAction] = []
        if key == sender:  # its own coordinates: it is a contact, and routable
            reply_to = message.value
            actions += self._seen(sender, message.value, now)
        ttl = min(message.ttl_ms, coordinates.exp - now)
        version = coordinates.ts
        held = self.records.get(key, now) if key == sender else None
        if held is not None and version <= held.version:
            # The owner moved to another tree: its word wins (root statements of two
            # trees are not comparable by time). In one tree, the newer statement.
            try:
                if self._verify(held.value, now).root != coordinates.root:
                    version = held.version + 1
            except crypto.CryptoError:
                pass  # expired: the new one replaces it anyway
        try:
            self.records.put(
                key, self.chains.kept(message.value), now, ttl, version=version, origin=sender
            )
        except (MeshError, crypto.TooLarge, crypto.Stale) as exc:
            return [*actions, self._refuse(sender, message.q, str(exc), chain=reply_to)]
        actions.append(DhtSend(sender, reply_to, encode_message(DhtStored(message.q))))
        return actions

    def _on_answer(
        self, sender: crypto.NodeId, message: DhtFound | DhtStored | DhtPong | DhtRefused, now: int
    ) -> list[DhtAction]:
        pending = self._queries.get(message.q)
        # A lookup's query that timed out, answered since: it serves all the same.
        late = pending is None and isinstance(message, DhtFound)
        if late:
            pending = self._late.get(message.q)
        if (
            pending is None
            or pending.dst != sender
            or not isinstance(message, _ANSWERS[pending.kind])
        ):
            return []  # an answer to no query of ours: ignored
        del (self._late if late else self._queries)[message.q]
        if pending.kind is _Kind.PING:
            self.contacts.probe_answered(sender, now)
        # What we asked it by may be older than what we have heard of it since.
        chain = self._newest(sender, pending.chain, now)
        if isinstance(message, DhtFound | DhtPong) and message.sender_chain is not None:
            # Its coordinates now: those we asked it by may be about to expire.
            fresh = message.sender_chain
            with contextlib.suppress(crypto.CryptoError):
                if self._verify(fresh, now).node == sender:
                    chain = self._newer(chain, fresh, now)
        if pending.kind is _Kind.PING:
            if self.contacts.get(sender) is not None:
                self.contacts.seen(sender, now, info=self.chains.kept(chain))
            return []
        actions = self._seen(sender, chain, now)
        running = None if pending.lookup_id is None else self._lookups.get(pending.lookup_id)
        if running is not None and sender in running.chains:
            running.chains[sender] = chain
        if running is None:
            return actions  # a store's answer, or a lookup that ended meanwhile
        if isinstance(message, DhtFound):
            offered = self._offered(running, message.nodes, now)
            value = self._value(running, message.value, now)
            reply = running.lookup.on_late_reply if late else running.lookup.on_reply
            reply(sender, offered, value)
            if value is not None and running.first and self._in_our_tree(value, now):
                running.lookup.stop()
        else:
            running.lookup.on_failure(sender)
        return actions + self._advance(running, now)

    def _offered(
        self, running: _Running, nodes: Iterable[tuple[crypto.NodeId, bytes]], now: int
    ) -> list[crypto.NodeId]:
        """The k nearest of the nodes offered whose chains verify and place them; their
        chains are kept for querying them. The others are skipped."""
        target = running.lookup.target
        offered = {node: chain for node, chain in nodes if node != self.id}
        taken: list[crypto.NodeId] = []
        for node in heapq.nsmallest(len(offered), offered, key=lambda n: xor_distance(n, target)):
            if len(taken) == self.k:
                break
            if node in running.chains:
                taken.append(node)
                continue
            try:
                placed = self._verify(offered[node], now).node
            except crypto.CryptoError:
                continue
            if placed == node:
                running.chains[node] = offered[node]
                taken.append(node)
        return taken

    def _freshest(self, running: _Running, now: int) -> bytes | None:
        """Of the values a lookup gathered and the target's own chain (if it answered,
        or was offered to be asked), the newest; None if none. A holder may keep a
        node's former place for as long as it is valid: the node itself knows best."""
        lookup = running.lookup
        if not lookup.find_value:
            return None
        candidates = [value for _, value in lookup.values if self._usable(value, now)]
        own = running.chains.get(lookup.target)
        if own is not None and self._value(running, own, now) is not None:
            candidates.append(own)  # verified, unexpired, placing the target
        ours = None
        if self._chain is not None:
            with contextlib.suppress(crypto.CryptoError):
                ours = self._verify(self._chain, now).root
        best: bytes | None = None
        for candidate in candidates:
            if best is None:
                best = candidate
                continue
            roots = self._verify(best, now).root, self._verify(candidate, now).root
            if ours is not None and roots[0] != roots[1] and ours in roots:
                # Places in two trees: statements of different roots are not comparable
                # by time; the one in ours is the one we can route by.
                best = best if roots[0] == ours else candidate
            else:
                best = self._newer(best, candidate, now)
        return best

    def _target_placed(self, running: _Running, now: int) -> bool:
        """Whether the lookup holds the target's own chain (a contact of ours, or offered
        by an answer) placing it in our tree: what asking the target, or a holder of
        its record, would tell a lookup that ends at the first value."""
        own = running.chains.get(running.lookup.target)
        return (
            own is not None
            and self._value(running, own, now) is not None
            and self._in_our_tree(own, now)
        )

    def _in_our_tree(self, chain: bytes, now: int) -> bool:
        """Whether ``chain`` (verified) places its node in the tree we are in."""
        if self._chain is None:
            return False
        try:
            return self._verify(chain, now).root == self._verify(self._chain, now).root
        except crypto.CryptoError:
            return False

    def _value(self, running: _Running, value: bytes | None, now: int) -> bytes | None:
        """The value offered, if asked for, verified and placing the key; else None."""
        if value is None or not running.lookup.find_value:
            return None
        try:
            placed = self._verify(value, now).node
        except crypto.CryptoError:
            return None
        return value if placed == running.lookup.target else None

    # -- helpers ------------------------------------------------------------------------

    def _verify(self, chain: bytes, now: int) -> crypto.Coordinates:
        """:meth:`crypto.CoordChain.parse`, remembered (by digest) until the chain expires
        (:class:`mesh.VerifiedChains`): the coordinates, without their chain."""
        return self.chains.verify(chain, now)

    def _seen(self, node: crypto.NodeId, chain: bytes, now: int) -> list[DhtAction]:
        """``node``, at ``chain`` (verified), was heard from; a probe it brings is sent,
        and, a newcomer to our contacts, the records it should hold (:meth:`_replicate`)."""
        known = node in self.contacts
        probe = self.contacts.seen(node, now, info=self.chains.kept(chain))
        actions = [] if known or node not in self.contacts else self._replicate(node, chain, now)
        if probe is None:
            return actions
        contact = self.contacts.get(probe.node)
        if contact is None or contact.info is None:
            self.contacts.probe_failed(probe.node)  # cannot be asked: make room
            return actions
        if self._chain is None:
            return actions  # it cannot answer us: the contacts ask again after their interval
        q = self._query(_Kind.PING, probe.node, contact.info, now, None)
        ping = DhtSend(probe.node, contact.info, encode_message(DhtPing(q, self._chain)))
        return [*actions, ping]

    def _replicate(self, node: crypto.NodeId, chain: bytes, now: int) -> list[DhtAction]:
        """Kademlia's hand-over to a newcomer (§2.5): the records we hold whose key
        ``node`` is nearer than we are, where we know no other contact nearer than us
        (so that of a key's holders only the nearest to it hands it over, and never
        when we know the key's own node), are stored at ``node``. A publication that
        settled on nodes not the nearest its key (made while the tables were young) so
        moves toward the nearest as they are learned."""
        actions: list[DhtAction] = []
        if self._chain is None:
            return actions  # it could not answer us
        checked = 0
        for record in self.records:
            key = record.key
            if key in (node, self.id) or record.expires <= now:
                continue
            ours = xor_distance(self.id, key)
            if xor_distance(node, key) >= ours:
                continue
            # Bounded work for one newcomer: an id next to ours passes the test above
            # for about half the records we hold.
            checked += 1
            if checked > MAX_HANDOVER_CHECKS or len(actions) >= MAX_HANDOVERS:
                break
            nearest = self.contacts.nearest(key, 2)
            if any(other != node and xor_distance(other, key) < ours for other in nearest):
                continue  # a nearer holder (or the key's owner) is known: it hands over
            q = self._query(_Kind.STORE, node, chain, now, None)
            ttl = min(record.expires - now, crypto.MAX_GRANT_LIFETIME_MS)
            body = encode_message(DhtStore(q, key, record.value, ttl))
            actions.append(DhtSend(node, chain, body))
        return actions

    def _newest(self, node: crypto.NodeId, chain: bytes, now: int) -> bytes:
        """Of ``chain`` and the one ``node``'s contact holds, the newer."""
        held = self._chain_of(node)
        return chain if held is None else self._newer(held, chain, now)

    def _newer(self, held: bytes, chain: bytes, now: int) -> bytes:
        """Of two chains of one node, the newer (``held`` on a tie); one that does not
        verify (any more) loses."""
        if held == chain:
            return held
        try:
            held_ts = self._verify(held, now).ts
        except crypto.CryptoError:
            return chain
        try:
            return chain if self._verify(chain, now).ts > held_ts else held
        except crypto.CryptoError:
            return held

    def _usable(self, chain: bytes, now: int) -> bool:
        """Whether ``chain`` (a contact's, verified when it was taken) is unexpired: a
        node can be reached by it, so it may be queried or passed on."""
        try:
            self._verify(chain, now)
        except crypto.CryptoError:
            return False
        return True

    def _chain_of(self, node: crypto.NodeId) -> bytes | None:
        contact = self.contacts.get(node)
        return None if contact is None else contact.info

    def _refuse(
        self, sender: crypto.NodeId, q: bytes, why: str, *, chain: bytes | None = None
    ) -> DhtSend:
        body = encode_message(DhtRefused(q, why[:MAX_WHY_LENGTH]))
        return DhtSend(sender, chain if chain is not None else self._chain_of(sender), body)

    def _query(
        self, kind: _Kind, dst: crypto.NodeId, chain: bytes, now: int, lookup_id: int | None
    ) -> bytes:
        q = self._rng.randbytes(QUERY_ID_SIZE)
        while q in self._queries:
            q = self._rng.randbytes(QUERY_ID_SIZE)
        self._queries[q] = _Pending(kind, dst, chain, now, lookup_id)
        return q
