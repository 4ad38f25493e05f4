"""Interests: which subscribers want which topics, learned from ``sub``/``unsub`` frames.

Each subscriber signs a ``sub`` frame per pattern it wants, with a lease (the frame's
``exp``), and floods it; the frame is passed on as it is, so every node knows, for each
(subscriber, pattern), the freshest word of the subscriber itself. A publication goes
toward each matching subscriber along the routes (:class:`mesh.Router`), one copy per
neighbour whatever the number of subscribers behind it.

:class:`Interests` is that table, with a :class:`mesh.TopicTrie` over it (matching a
topic never scans the patterns). Rules:

* The fresher frame (higher ``ts``) for a (subscriber, pattern) wins; an older copy
  arriving late is stale.
* An ``unsub`` leaves a tombstone until its ``exp``: a late ``sub`` older than it does
  not bring the interest back.
* An interest lapses at its ``exp`` unless a fresher ``sub`` (the subscriber's
  refresh) replaced it.
* Quotas: at most ``max_per_origin`` entries (live or tombstones) per subscriber and
  ``max_total`` in all; past them a new entry is refused (:data:`Learned.FULL`), so a
  stranger signing patterns in a loop fills neither memory nor the mesh.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterator
from typing import Final

import crypto
from mesh._topics import TopicTrie

__all__ = [
    "DEFAULT_MAX_INTERESTS",
    "DEFAULT_MAX_PATTERNS_PER_ORIGIN",
    "Interest",
    "Interests",
    "Learned",
    "secure_owner",
]

#: Most (pattern) entries one subscriber may hold at a node.
DEFAULT_MAX_PATTERNS_PER_ORIGIN: Final = 1024
#: Most entries a node holds in all.
DEFAULT_MAX_INTERESTS: Final = 200_000


@dataclasses.dataclass(frozen=True, slots=True)
class Interest:
    """Subscriber ``origin``'s interest in ``pattern``, from its signed ``sub`` frame.

    ``ts`` and ``exp`` are the frame's (its lease ends at ``exp``); ``envelope`` is the
    signed frame, passed on as it is, ``hops`` the hops it made to reach us. A withdrawn
    interest (``unsub``) is kept until ``exp`` as a tombstone (``withdrawn`` True, the
    other fields the unsub's), so that an older copy of the ``sub`` arriving late
    cannot bring it back.
    """

    origin: crypto.NodeId
    pattern: str
    ts: int
    exp: int
    envelope: bytes
    withdrawn: bool = False
    hops: int = 0

    @property
    def key(self) -> tuple[crypto.NodeId, str]:
        return self.origin, self.pattern

    @classmethod
    def of(cls, frame: crypto.Frame, envelope: bytes, *, hops: int) -> Interest:
        """The interest a verified ``sub`` or ``unsub`` frame states."""
        assert frame.pat is not None  # sub and unsub frames have one
        withdrawn = frame.kind is crypto.Kind.UNSUB
        return cls(frame.src, frame.pat, frame.ts, frame.exp, envelope, withdrawn, hops)


class Learned(enum.Enum):
    """What :meth:`Interests.learn` made of a frame."""

    NEWS = "news"  # a new or fresher word: pass it on
    STALE = "stale"  # we hold this one or a fresher one
    FULL = "full"  # a quota is reached: refused


def secure_owner(topic: str) -> crypto.NodeId | None:
    """The node a topic's secure name (first word ``~<node-id>``) belongs to, if any.

    Raises :class:`crypto.Malformed` for a first word with ``~`` that is not a node id.
    """
    first = topic.split(".", 1)[0]
    if not first.startswith("~"):
        return None
    return crypto.NodeId.parse(first[1:])


class Interests:
    """The interests a node holds (see the module docstring)."""

    def __init__(
        self,
        *,
        max_per_origin: int = DEFAULT_MAX_PATTERNS_PER_ORIGIN,
        max_total: int = DEFAULT_MAX_INTERESTS,
    ) -> None:
        self.max_per_origin = max_per_origin
        self.max_total = max_total
        self._held: dict[tuple[crypto.NodeId, str], Interest] = {}
        self._per_origin: collections.Counter[crypto.NodeId] = collections.Counter()
        self._trie: TopicTrie[tuple[crypto.NodeId, str]] = TopicTrie()

    def __len__(self) -> int:
        """Entries held, tombstones included."""
        return len(self._held)

    def __iter__(self) -> Iterator[Interest]:
        return iter(list(self._held.values()))

    def get(self, origin: crypto.NodeId, pattern: str) -> Interest | None:
        return self._held.get((origin, pattern))

    def learn(self, interest: Interest, *, now: int) -> Learned:
        """Take a ``sub`` (or, withdrawn, an ``unsub``) if it is news."""
        key = interest.key
        held = self._held.get(key)
        if interest.exp <= now or (held is not None and held.ts >= interest.ts):
            return Learned.STALE
        if held is None:
            if self._per_origin[interest.origin] >= self.max_per_origin:
                return Learned.FULL
            if len(self._held) >= self.max_total:
                return Learned.FULL
            self._per_origin[interest.origin] += 1
        self._held[key] = interest
        if interest.withdrawn:
            self._trie.remove(interest.pattern, key)
        else:
            self._trie.add(interest.pattern, key)
        return Learned.NEWS

    def subscribers(self, topic: str, *, now: int) -> set[crypto.NodeId]:
        """The subscribers with a live interest matching ``topic``."""
        found: set[crypto.NodeId] = set()
        for key in self._trie.match(topic):
            if self._held[key].exp > now:
                found.add(key[0])
        return found

    def held(self, *, now: int) -> list[Interest]:
        """Everything unexpired, tombstones included (what is worth saving)."""
        return [i for i in self._held.values() if i.exp > now]

    def expire(self, now: int) -> list[Interest]:
        """Drop what lapsed; return the live interests that did (not the tombstones)."""
        gone = [i for i in self._held.values() if i.exp <= now]
        for interest in gone:
            self._drop(interest)
        return [i for i in gone if not i.withdrawn]

    def forget_origin(self, origin: crypto.NodeId) -> int:
        """Drop everything ``origin`` said; return how many entries went."""
        gone = [i for i in self._held.values() if i.origin == origin]
        for interest in gone:
            self._drop(interest)
        return len(gone)

    def _drop(self, interest: Interest) -> None:
        key = interest.key
        del self._held[key]
        if not interest.withdrawn:
            self._trie.remove(interest.pattern, key)
        self._per_origin[interest.origin] -= 1
        if self._per_origin[interest.origin] <= 0:
            del self._per_origin[interest.origin]
