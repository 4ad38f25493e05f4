"""Kademlia over node ids: contacts by XOR distance, iterative lookups, stored records.

The distributed hash table that finds a node's coordinates (docs/routing-at-scale.md,
"Finding coordinates"), after Maymounkov and Mazières, *Kademlia: A Peer-to-peer
Information System Based on the XOR Metric* (IPTPS 2002), with S/Kademlia's care for
Sybils. The distance between two node ids is the XOR of their 32 raw bytes read as a
big-endian integer. Three pieces, none doing I/O or reading the clock (``now``, in ms, is
passed in); the runtime sends the queries and probes and feeds the answers back:

* :class:`Contacts` (Kademlia §2.2): 256 k-buckets, bucket ``i`` holding contacts whose id
  shares exactly ``i`` leading bits with ours, least recently seen first. A newcomer to a
  full bucket does not push anyone out: it waits as the bucket's one pending
  replacement while the oldest contact is probed (:class:`Probe`), and takes its place
  only if the probe fails. Long-lived contacts are kept, so a flood of fresh (Sybil) ids
  cannot evict the live ones. A contact that leaves a query unanswered
  (:meth:`Contacts.failed`) goes only after :data:`MAX_FAILURES` in a row, or at once
  if a newcomer waits to take its place: on a lossy link one lost query or answer does
  not cost a live contact. Buckets no lookup touched for a while are named by
  :meth:`Contacts.stale_buckets`, with a random id in each to look up.
* :class:`Lookup` (§2.3): the iterative lookup as a state machine. It queries the
  nearest known nodes not yet asked, ``alpha`` at a time, merges the contacts they
  return, and is done once the ``k`` nearest nodes it knows of (that did not fail) have
  all answered, or, looking for a value, once one answered with it. A reply it did not
  ask for is ignored, at most the ``k`` nearest contacts of a reply are taken, and the
  number of queries is bounded, so nodes that hand out ever-nearer ids cannot keep a
  lookup going.
* :class:`Records` (§2.5): the values this node stores for others (signed coordinates,
  opaque here: the caller verifies them first), one per key, each with an expiry; the
  newest version wins, the table is bounded in all and per origin, and
  :meth:`Records.republish_due` names the records to store again at the nodes now
  nearest their key.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import enum
import heapq
import random
from collections.abc import Iterable, Iterator
from typing import Final

import crypto
from mesh._errors import MeshError, StoreFull

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_K",
    "DEFAULT_MAX_LOOKUP_QUERIES",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_MAX_RECORDS_PER_ORIGIN",
    "DEFAULT_MAX_RECORD_TTL_MS",
    "DEFAULT_MAX_VALUE_SIZE",
    "DEFAULT_PROBE_INTERVAL_MS",
    "ID_BITS",
    "MAX_FAILURES",
    "Contact",
    "Contacts",
    "Lookup",
    "Probe",
    "Record",
    "Records",
    "bucket_index",
    "xor_distance",
]

#: Bits in a node id, hence buckets in a contact table.
ID_BITS: Final = 256
#: Kademlia's k: contacts per bucket, nodes a lookup returns (and a value is stored at).
DEFAULT_K: Final = 8
#: Kademlia's alpha: queries a lookup keeps in flight at once.
DEFAULT_ALPHA: Final = 3
#: Most queries one lookup sends. A lookup among a million nodes needs about k + alpha
#: x log2(N) / alpha = 28; past 100, the nodes answering are leading it on (handing
#: out ever-nearer ids), and it ends with the nearest it has heard from.
DEFAULT_MAX_LOOKUP_QUERIES: Final = 100
#: The oldest contact of a full bucket, heard from within this long, is alive enough:
#: it is not probed for a newcomer. A probe the caller has not reported on after this
#: long is asked for again. Bounds the probes a flood of newcomers makes: each
#: contact is probed at most once per interval.
DEFAULT_PROBE_INTERVAL_MS: Final = 60_000
#: Queries in a row a contact may leave unanswered before it is dropped (with no
#: newcomer waiting for its place): Kademlia §4.1 tolerates a few, since a query or its
#: answer may be lost. At 1% loss each way a live contact misses three in a row about
#: once in 125,000 tries; a dead one is dropped after three timeouts.
MAX_FAILURES: Final = 3
#: Most records a node stores for others. A node holds about k records on average
#: (k copies of each node's coordinates spread over all nodes); the rest is headroom
#: for unlucky ids and caching, bounded so that strangers cannot fill memory.
DEFAULT_MAX_RECORDS: Final = 10_000
#: Most records one origin (the node that asked to store them) may add: its own
#: coordinates plus those it republishes, about k on average.
DEFAULT_MAX_RECORDS_PER_ORIGIN: Final = 256
#: Largest value stored: signed coordinates, ~240 bytes plus ~275 per level of depth,
#: up to the deepest chain a node accepts (crypto.MAX_COORD_CHAIN_SIZE, ~17 KiB).
DEFAULT_MAX_VALUE_SIZE: Final = crypto.MAX_COORD_CHAIN_SIZE
#: Longest a record is kept without being stored again (Kademlia §2.5 expires values
#: 24 hours after publication); a longer ttl asked for is cut to it.
DEFAULT_MAX_RECORD_TTL_MS: Final = 24 * 3600 * 1000


def _as_int(node: crypto.NodeId) -> int:
    return int.from_bytes(node.raw, "big")


def xor_distance(a: crypto.NodeId, b: crypto.NodeId) -> int:
    """The XOR distance between two node ids, as an integer (0: the same id)."""
    return _as_int(a) ^ _as_int(b)


def bucket_index(self_id: crypto.NodeId, node: crypto.NodeId) -> int:
    """The bucket ``node`` belongs in, in ``self_id``'s table: the number of leading bits
    their ids share, 0 to 255. Raises :class:`ValueError` for ``self_id`` itself (it has
    no bucket)."""
    d = xor_distance(self_id, node)
    if d == 0:
        raise ValueError("a node's own id has no bucket in its table")
    return ID_BITS - d.bit_length()


@dataclasses.dataclass(frozen=True, slots=True)
class Contact:
    """A node in a contact table: when it was ``added`` and last ``seen`` (ms), the
    opaque ``info`` the caller keeps with it (say, its signed coordinates), and the
    queries it has left unanswered since it was last heard from (``failures``)."""

    node: crypto.NodeId
    info: bytes | None
    added: int
    seen: int
    failures: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """Action: check that ``node`` is alive (the oldest contact of a full bucket a
    newcomer wants into), then report :meth:`Contacts.probe_answered` or
    :meth:`Contacts.probe_failed`."""

    node: crypto.NodeId


class _Bucket:
    """One k-bucket: contacts least recently seen first, one pending replacement, the
    probe in flight, and when a contact in it or a lookup in its range was last seen."""

    __slots__ = ("contacts", "pending", "probe_sent", "probing", "touched")

    def __init__(self) -> None:
        self.contacts: dict[crypto.NodeId, Contact] = {}  # insertion order: oldest first
        self.pending: Contact | None = None
        self.probing: crypto.NodeId | None = None
        self.probe_sent = 0
        self.touched: int | None = None


class Contacts:
    """A node's k-buckets (see the module docstring).

    ``rng`` picks the ids :meth:`stale_buckets` asks to look up; pass a seeded one for
    repeatable runs (by default, one seeded with ``self_id``).
    """

    def __init__(
        self,
        self_id: crypto.NodeId,
        *,
        k: int = DEFAULT_K,
        rng: random.Random | None = None,
        probe_interval_ms: int = DEFAULT_PROBE_INTERVAL_MS,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.self_id = self_id
        self.k = k
        self.probe_interval_ms = probe_interval_ms
        self._rng = rng if rng is not None else random.Random(self_id.raw)
        self._self_int = _as_int(self_id)
        self._buckets: dict[int, _Bucket] = {}  # made when first needed
        #: Counts changes to the contacts held or their ``info``: a caller that derives
        #: something from them (say, when to renew each) knows when to derive it again.
        self.changes = 0
        #: When the first contact was seen (we joined): buckets never touched count
        #: as touched then.
        self._joined: int | None = None

    def __len__(self) -> int:
        """Contacts held (not the pending replacements): at most 256 x k."""
        return sum(len(bucket.contacts) for bucket in self._buckets.values())

    def __contains__(self, node: object) -> bool:
        return isinstance(node, crypto.NodeId) and self.get(node) is not None

    def __iter__(self) -> Iterator[Contact]:
        """Every contact, bucket by bucket, oldest first within each."""
        return iter(
            [c for _, bucket in sorted(self._buckets.items()) for c in bucket.contacts.values()]
        )

    def get(self, node: crypto.NodeId) -> Contact | None:
        """The contact held for ``node`` (not a pending one), if any."""
        bucket = self._bucket_of(node, create=False)
        return None if bucket is None else bucket.contacts.get(node)

    def bucket(self, index: int) -> list[Contact]:
        """The contacts of bucket ``index`` (0 to 255), least recently seen first."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else list(bucket.contacts.values())

    def seen(self, node: crypto.NodeId, now: int, info: bytes | None = None) -> Probe | None:
        """``node`` was heard from (it answered, or sent us something it signed).

        A known contact moves to the tail of its bucket (``info``, if given, replaces
        what was kept); a new one is added if its bucket has room. Into a full bucket it
        becomes the pending replacement (the latest newcomer wins that place) and the
        oldest contact is to be probed: :class:`Probe` is returned, unless that contact
        was heard from within :attr:`probe_interval_ms` or a probe is in flight. Our own
        id is ignored.
        """
        bucket = self._bucket_of(node, create=True)
        if bucket is None:
            return None
        if self._joined is None:
            self._joined = now
        bucket.touched = now
        held = bucket.contacts.pop(node, None)
        if held is not None:
            if info is not None and info is not held.info:
                self.changes += 1
            bucket.contacts[node] = dataclasses.replace(
                held, seen=now, info=held.info if info is None else info, failures=0
            )
            if bucket.probing == node:  # alive: the probe is answered
                bucket.probing = None
                bucket.pending = None
            return None
        if len(bucket.contacts) < self.k:
            bucket.contacts[node] = Contact(node, info, now, now)
            self.changes += 1
            return None
        pending = bucket.pending
        if pending is not None and pending.node == node:
            bucket.pending = dataclasses.replace(
                pending, seen=now, info=pending.info if info is None else info
            )
        else:
            bucket.pending = Contact(node, info, now, now)
        if bucket.probing is not None and now - bucket.probe_sent < self.probe_interval_ms:
            return None
        oldest = next(iter(bucket.contacts.values()))
        if now - oldest.seen < self.probe_interval_ms:
            bucket.probing = None
            return None
        bucket.probing = oldest.node
        bucket.probe_sent = now
        return Probe(oldest.node)

    def probe_answered(self, node: crypto.NodeId, now: int) -> None:
        """``node`` answered a probe: it stays (to the tail of its bucket), and the
        pending newcomer it was probed for is dropped. Unknown nodes are ignored."""
        bucket = self._bucket_of(node, create=False)
        if bucket is None or node not in bucket.contacts:
            return
        if bucket.probing == node:
            bucket.probing = None
            bucket.pending = None
        held = bucket.contacts.pop(node)
        bucket.contacts[node] = dataclasses.replace(held, seen=now, failures=0)

    def probe_failed(self, node: crypto.NodeId) -> None:
        """``node`` did not answer a probe: it is evicted, and the pending newcomer of its
        bucket takes its place."""
        self.remove(node)

    def failed(self, node: crypto.NodeId) -> bool:
        """``node`` left a query unanswered. It is dropped (return True) if a newcomer
        waits for a place in its bucket, or after :data:`MAX_FAILURES` in a row (an
        answer, or anything else heard from it, clears the count); else it stays, where
        it was in its bucket. Unknown nodes are ignored (False)."""
        bucket = self._bucket_of(node, create=False)
        held = None if bucket is None else bucket.contacts.get(node)
        if bucket is None or held is None:
            return False
        if bucket.pending is not None or held.failures + 1 >= MAX_FAILURES:
            self.remove(node)
            return True
        bucket.contacts[node] = dataclasses.replace(held, failures=held.failures + 1)
        return False

    def remove(self, node: crypto.NodeId) -> None:
        """Forget ``node`` (held or pending); a pending newcomer fills the room made."""
        bucket = self._bucket_of(node, create=False)
        if bucket is None:
            return
        if bucket.pending is not None and bucket.pending.node == node:
            bucket.pending = None
        if bucket.contacts.pop(node, None) is None:
            return
        self.changes += 1
        if bucket.probing == node:
            bucket.probing = None
        if bucket.pending is not None:
            bucket.contacts[bucket.pending.node] = bucket.pending
            bucket.pending = None

    def nearest(
        self, target: crypto.NodeId, n: int, *, exclude: Iterable[crypto.NodeId] = ()
    ) -> list[crypto.NodeId]:
        """The ``n`` contacts nearest ``target`` by XOR distance, nearest first, leaving
        out ``exclude`` (pending newcomers are not contacts yet)."""
        if n <= 0:
            return []
        skip = set(exclude)
        t = _as_int(target)
        found = heapq.nsmallest(
            n,
            (
                (_as_int(node) ^ t, node)
                for bucket in self._buckets.values()
                for node in bucket.contacts
                if node not in skip
            ),
        )
        return [node for _, node in found]

    def touch(self, target: crypto.NodeId, now: int) -> None:
        """A lookup for ``target`` was made: its bucket counts as refreshed."""
        bucket = self._bucket_of(target, create=True)
        if bucket is not None:
            bucket.touched = now

    def stale_buckets(self, now: int, refresh_ms: int) -> list[tuple[int, crypto.NodeId]]:
        """Buckets to refresh (Kademlia §2.3): those no contact nor lookup touched for
        ``refresh_ms``, each with a random id in its range to look up (then call
        :meth:`touch`).

        Only buckets up to the deepest one holding a contact count: deeper ones cover
        ranges too small to hold anyone yet. An empty table names none (join by looking
        up our own id). A bucket never touched counts as touched when the table took
        its first contact: after that join lookup, the buckets fill from the lookups
        made and the nodes heard, and one still empty is looked up ``refresh_ms`` later,
        not at once. (Kademlia's join refreshes every bucket farther than the nearest
        contact at once; BitTorrent's DHT, BEP 5, only looks up its own id, as here. In
        the ``mesh`` scenario, 300 nodes for 10 minutes, the join refreshes were 38% of
        all DHT queries, and without them lookups took 6% more queries each.)
        """
        if not any(bucket.contacts for bucket in self._buckets.values()):
            return []
        deepest = max(index for index, bucket in self._buckets.items() if bucket.contacts)
        stale: list[tuple[int, crypto.NodeId]] = []
        for index in range(deepest + 1):
            bucket = self._buckets.get(index)
            touched = None if bucket is None else bucket.touched
            if touched is None:
                touched = self._joined
            if touched is None or now - touched >= refresh_ms:
                stale.append((index, self._random_id_in(index)))
        return stale

    def _random_id_in(self, index: int) -> crypto.NodeId:
        # Shares the first `index` bits with us, differs at the next, random after it.
        low = ID_BITS - 1 - index
        offset = (1 << low) | self._rng.getrandbits(low)
        return crypto.NodeId((self._self_int ^ offset).to_bytes(ID_BITS // 8, "big"))

    def _bucket_of(self, node: crypto.NodeId, *, create: bool) -> _Bucket | None:
        d = _as_int(node) ^ self._self_int
        if d == 0:
            return None
        index = ID_BITS - d.bit_length()
        bucket = self._buckets.get(index)
        if bucket is None and create:
            bucket = self._buckets[index] = _Bucket()
        return bucket


class _Query(enum.Enum):
    """Where a lookup stands with one node it knows of."""

    UNQUERIED = "unqueried"
    IN_FLIGHT = "in flight"
    ANSWERED = "answered"
    FAILED = "failed"


class Lookup:
    """An iterative lookup of ``target`` (see the module docstring).

    ``seeds`` are the nearest contacts this node knows (:meth:`Contacts.nearest`).
    ``self_id``, if given, is never queried (a reply naming us is a contact we need not
    ask). The target itself, if some node names it, is queried like any other node.
    With ``find_value``, the lookup ends at the first reply carrying a value (which the
    caller has verified: pass None for a value that failed verification); with
    ``every_value`` too, it goes on as a node lookup and gathers every value offered
    (:attr:`values`), for the caller to choose the best of (one holder's may be stale).

    Drive it: send :meth:`next_queries`, report each with :meth:`on_reply` or
    :meth:`on_failure` (a timeout is a failure), and call :meth:`next_queries` again,
    until :attr:`done`; then read :meth:`result`. Once done, it stays done: late
    replies are ignored.
    """

    def __init__(
        self,
        target: crypto.NodeId,
        seeds: Iterable[crypto.NodeId],
        *,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        find_value: bool = False,
        every_value: bool = False,
        self_id: crypto.NodeId | None = None,
        max_queries: int = DEFAULT_MAX_LOOKUP_QUERIES,
        answered: Iterable[crypto.NodeId] = (),
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError(f"k and alpha must be at least 1, got k={k}, alpha={alpha}")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.find_value = find_value
        self.every_value = every_value
        #: With ``every_value``: (node, value) for each reply that carried one.
        self.values: list[tuple[crypto.NodeId, bytes]] = []
        self.self_id = self_id
        self.max_queries = max_queries
        self._target_int = _as_int(target)
        self._state: dict[crypto.NodeId, _Query] = {}
        self._order: list[tuple[int, crypto.NodeId]] = []  # every node known, nearest first
        self._in_flight = 0
        self._queries = 0
        self._value: bytes | None = None
        self._value_from: crypto.NodeId | None = None
        self._done = False
        for node in seeds:
            self._learn(node)
        for node in answered:  # asked before: they count as having answered
            self._learn(node)
            if node in self._state:
                self._state[node] = _Query.ANSWERED
        self._settle()

    @property
    def done(self) -> bool:
        """The k nearest nodes known (that did not fail) have all answered, a value was
        found, or the queries are spent and none is in flight."""
        return self._done

    @property
    def queries(self) -> int:
        """Queries sent so far."""
        return self._queries

    @property
    def value_from(self) -> crypto.NodeId | None:
        """The node whose reply carried the value found, if any."""
        return self._value_from

    def next_queries(self) -> list[crypto.NodeId]:
        """The nodes to query now: the nearest not yet asked among the k nearest known,
        so that at most ``alpha`` queries are in flight."""
        if self._done:
            return []
        chosen: list[crypto.NodeId] = []
        for node in self._nearest_live():
            if self._in_flight >= self.alpha or self._queries >= self.max_queries:
                break
            if self._state[node] is _Query.UNQUERIED:
                self._state[node] = _Query.IN_FLIGHT
                self._in_flight += 1
                self._queries += 1
                chosen.append(node)
        return chosen

    def on_reply(
        self, node: crypto.NodeId, contacts: Iterable[crypto.NodeId], value: bytes | None = None
    ) -> None:
        """``node`` answered with the ``contacts`` it knows nearest the target (at most k
        of them are taken, the nearest; duplicates and our own id are skipped) and, in
        find-value mode, perhaps the value. A reply to no query in flight is ignored."""
        if self._done or self._state.get(node) is not _Query.IN_FLIGHT:
            return
        self._state[node] = _Query.ANSWERED
        self._in_flight -= 1
        if self.find_value and value is not None:
            self._value = value
            self._value_from = node
            if not self.every_value:
                self._done = True
                return
            self.values.append((node, value))
        offered = {c for c in contacts if isinstance(c, crypto.NodeId) and c != self.self_id}
        t = self._target_int
        for contact in heapq.nsmallest(self.k, offered, key=lambda c: _as_int(c) ^ t):
            self._learn(contact)
        self._settle()

    def on_late_reply(
        self, node: crypto.NodeId, contacts: Iterable[crypto.NodeId], value: bytes | None = None
    ) -> None:
        """:meth:`on_reply` for a node whose query failed (timed out) but answered since."""
        if self._done or self._state.get(node) is not _Query.FAILED:
            return
        self._state[node] = _Query.IN_FLIGHT
        self._in_flight += 1
        self.on_reply(node, contacts, value)

    def on_failure(self, node: crypto.NodeId) -> None:
        """The query to ``node`` failed or timed out: it is left out from now on."""
        if self._done or self._state.get(node) is not _Query.IN_FLIGHT:
            return
        self._state[node] = _Query.FAILED
        self._in_flight -= 1
        self._settle()

    def result(self) -> tuple[list[crypto.NodeId], bytes | None]:
        """The k nearest nodes that answered, nearest first, and the value found (None
        if none was, or not in find-value mode)."""
        answered = [node for _, node in self._order if self._state[node] is _Query.ANSWERED]
        return answered[: self.k], self._value

    def missed(self) -> bool:
        """Whether a node nearer the target than the farthest of :meth:`result`'s failed
        (with fewer than k of them, any node): those that answered may not be the k
        nearest there are. A query that times out may be one to a node that is only
        out of reach for now (a tree still forming, a link down)."""
        answered = 0
        for _, node in self._order:
            if answered == self.k:
                return False
            state = self._state[node]
            if state is _Query.FAILED:
                return True
            answered += state is _Query.ANSWERED
        return False

    def stop(self) -> None:
        """End the lookup now (its caller has what it wanted); late replies are ignored."""
        self._done = True

    def nearest_known(self) -> list[crypto.NodeId]:
        """The k nearest nodes heard of (asked or not; not those that failed), nearest
        first: an asker names them in its queries, so that answers name others."""
        return self._nearest_live()

    def _learn(self, node: crypto.NodeId) -> None:
        if node in self._state or node == self.self_id:
            return
        self._state[node] = _Query.UNQUERIED
        bisect.insort(self._order, (_as_int(node) ^ self._target_int, node))

    def _nearest_live(self) -> list[crypto.NodeId]:
        nearest: list[crypto.NodeId] = []
        for _, node in self._order:
            if self._state[node] is not _Query.FAILED:
                nearest.append(node)
                if len(nearest) == self.k:
                    break
        return nearest

    def _settle(self) -> None:
        settled = all(self._state[node] is _Query.ANSWERED for node in self._nearest_live())
        spent = self._queries >= self.max_queries and self._in_flight == 0
        if settled or spent:
            self._done = True


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A value stored for others under ``key``: its ``version`` (higher replaces lower),
    when it was last stored here or republished from here (``stored_at``), when it
    lapses (``expires``), and the node that first asked to store it (``origin``; None:
    this node)."""

    key: crypto.NodeId
    value: bytes = dataclasses.field(repr=False)
    version: int
    stored_at: int
    expires: int
    origin: crypto.NodeId | None


class Records:
    """The values this node stores for others (see the module docstring).

    Bounded: at most ``max_records`` keys, of which ``max_per_origin`` added by any one
    origin, values of at most ``max_value_size`` bytes kept at most ``max_ttl_ms``.
    """

    def __init__(
        self,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_per_origin: int = DEFAULT_MAX_RECORDS_PER_ORIGIN,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        max_ttl_ms: int = DEFAULT_MAX_RECORD_TTL_MS,
    ) -> None:
        self.max_records = max_records
        self.max_per_origin = max_per_origin
        self.max_value_size = max_value_size
        self.max_ttl_ms = max_ttl_ms
        self._records: dict[crypto.NodeId, Record] = {}
        self._per_origin: collections.Counter[crypto.NodeId] = collections.Counter()
        #: No record lapses before this (a lower bound: refreshes only push expiries on).
        self._next_expiry: int | None = None

    def __len__(self) -> int:
        """Records held, lapsed ones not yet expired included."""
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def put(
        self,
        key: crypto.NodeId,
        value: bytes,
        now: int,
        ttl_ms: int,
        *,
        version: int = 0,
        origin: crypto.NodeId | None = None,
    ) -> Record:
        """Store ``value`` under ``key`` for ``ttl_ms`` (cut to :attr:`max_ttl_ms`), on
        behalf of ``origin``; return the record now held.

        A version at least as high as the one held replaces it (the same version
        refreshes its expiry). Raises, the asker being at fault:
        :class:`mesh.MeshError` (400) for a ttl that is not positive;
        :class:`crypto.TooLarge` (413) for a value over :attr:`max_value_size`;
        :class:`crypto.Stale` (409) for a version lower than the one held;
        :class:`mesh.StoreFull` (429) for a new key past :attr:`max_records` or past
        :attr:`max_per_origin` for ``origin``.
        """
        if ttl_ms <= 0:
            raise MeshError(f"a record's ttl must be positive, got {ttl_ms} ms")
        if len(value) > self.max_value_size:
            raise crypto.TooLarge(
                f"record value is {len(value)} bytes, limit {self.max_value_size}"
            )
        expires = now + min(ttl_ms, self.max_ttl_ms)
        held = self.get(key, now)
        if held is not None:
            if version < held.version:
                raise crypto.Stale(
                    f"record for {key} has version {version}, older than the {held.version} held"
                )
            record = dataclasses.replace(
                held, value=value, version=version, stored_at=now, expires=expires
            )
        else:
            at_quota = origin is not None and self._per_origin[origin] >= self.max_per_origin
            if at_quota or len(self._records) >= self.max_records:
                self.expire(now)  # lapsed records give their room back first
            if len(self._records) >= self.max_records:
                raise StoreFull(
                    f"holds {len(self._records)} records for others, limit {self.max_records}"
                )
            if origin is not None and self._per_origin[origin] >= self.max_per_origin:
                raise StoreFull(
                    f"holds {self._per_origin[origin]} records added by {origin}, "
                    f"limit {self.max_per_origin} per origin"
                )
            record = Record(key, value, version, now, expires, origin)
            if origin is not None:
                self._per_origin[origin] += 1
        self._records[key] = record
        if self._next_expiry is None or expires < self._next_expiry:
            self._next_expiry = expires
        return record

    def get(self, key: crypto.NodeId, now: int) -> Record | None:
        """The unexpired record held under ``key``, if any (a lapsed one is dropped)."""
        record = self._records.get(key)
        if record is not None and record.expires <= now:
            self._drop(record)
            return None
        return record

    def expire(self, now: int) -> list[crypto.NodeId]:
        """Drop the records that lapsed; return their keys."""
        if self._next_expiry is None or self._next_expiry > now:
            return []
        gone = [record for record in self._records.values() if record.expires <= now]
        for record in gone:
            self._drop(record)
        self._next_expiry = min((r.expires for r in self._records.values()), default=None)
        return [record.key for record in gone]

    def republish_due(self, now: int, interval_ms: int) -> list[Record]:
        """Unexpired records neither stored here nor republished for ``interval_ms``
        (Kademlia §2.5: a record stored again by someone else meanwhile need not be);
        store each at the k nodes now nearest its key, then call :meth:`republished`."""
        return [
            record
            for record in self._records.values()
            if record.expires > now and now - record.stored_at >= interval_ms
        ]

    def republished(self, key: crypto.NodeId, now: int) -> None:
        """The record under ``key`` was republished at ``now``."""
        record = self._records.get(key)
        if record is not None:
            self._records[key] = dataclasses.replace(record, stored_at=now)

    def remove(self, key: crypto.NodeId) -> None:
        """Drop the record under ``key``, if any."""
        record = self._records.get(key)
        if record is not None:
            self._drop(record)

    def _drop(self, record: Record) -> None:
        del self._records[record.key]
        if record.origin is not None:
            self._per_origin[record.origin] -= 1
            if self._per_origin[record.origin] <= 0:
                del self._per_origin[record.origin]
