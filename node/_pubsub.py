"""This node's own subscriptions: what it tells the mesh, and what it hands the
application.

* Each :class:`Subscription` holds one or more patterns. A publication that matches any
  of them is handed to it once (a :class:`TopicTrie` of subscription ids finds them).
* The node advertises the patterns of all its subscriptions, aggregated: a pattern that
  another one covers (``news.tech`` under ``news.#``) is not advertised, since every
  publication it matches comes for the other anyway. When the covering pattern goes,
  the covered one is advertised.
* Each advertised pattern is a signed ``sub`` frame with a lease (``exp``); they are
  signed again every half lease while the subscription lives. Leaving the last
  subscription with a pattern signs an ``unsub`` (its tombstone lives one lease).

A subscription buffers up to ``capacity`` publications for an application that reads
slower than they come; past that it counts them in ``dropped`` (a live subscription
must not stall the node's intake).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

import crypto
import mesh
from node._message import Publication

__all__ = ["DEFAULT_LEASE", "LocalSubscriptions", "Subscription"]

log = logging.getLogger("ptth.node")

#: How long a relay keeps an interest without a refresh (s); refreshed every half.
DEFAULT_LEASE = 3600.0
#: Publications a subscription buffers for a slow reader.
DEFAULT_CAPACITY = 10_000


class Subscription:
    """A live subscription: ``async for publication in subscription``."""

    def __init__(self, sid: int, patterns: tuple[str, ...], capacity: int) -> None:
        self.sid = sid
        self.patterns = patterns
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[Publication](capacity)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def get(self) -> Publication:
        """The next publication (waits for one)."""
        return await self._receive.receive()

    def _offer(self, publication: Publication) -> None:
        try:
            self._send.send_nowait(publication)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or math.log2(self.dropped).is_integer():
                log.warning(
                    "subscription %s is read too slowly: %d publications dropped",
                    ",".join(self.patterns),
                    self.dropped,
                )
        except trio.BrokenResourceError:
            pass

    def _close(self) -> None:
        self._send.close()


Sign = Callable[[crypto.Frame], bytes]
Apply = Callable[[Sequence[mesh.Action]], Awaitable[None]]


class LocalSubscriptions:
    """The node's subscriptions and the ``sub``/``unsub`` frames that state them."""

    def __init__(
        self,
        *,
        local: crypto.NodeId,
        router: mesh.Router,
        sign: Sign,
        apply: Apply,
        clock: Callable[[], int],
        new_id: Callable[[], bytes],
        hops: int,
        lease: float = DEFAULT_LEASE,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.local = local
        self.router = router
        self.sign = sign
        self.apply = apply
        self.clock = clock
        self.new_id = new_id
        self.hops = hops
        self.lease_ms = int(lease * 1000)
        self.capacity = capacity
        self._ids = itertools.count(1)
        self._live: dict[int, Subscription] = {}
        self._trie: mesh.TopicTrie[int] = mesh.TopicTrie()
        #: The patterns advertised now (aggregated).
        self.advertised: set[str] = set()
        self.changed = trio.Event()

    def __len__(self) -> int:
        return len(self._live)

    async def open(self, patterns: Iterable[str]) -> Subscription:
        """Start a subscription to ``patterns``; advertise what is new."""
        wanted = tuple(dict.fromkeys(crypto.validate_pattern(p) for p in patterns))
        if not wanted:
            raise crypto.Malformed("a subscription needs at least one pattern")
        subscription = Subscription(next(self._ids), wanted, self.capacity)
        self._live[subscription.sid] = subscription
        for pattern in wanted:
            self._trie.add(pattern, subscription.sid)
        await self._advertise()
        return subscription

    async def close(self, subscription: Subscription) -> None:
        """End a subscription; withdraw what nobody else here wants."""
        if self._live.pop(subscription.sid, None) is None:
            return
        for pattern in subscription.patterns:
            self._trie.remove(pattern, subscription.sid)
        subscription._close()
        await self._advertise()

    def close_all(self) -> None:
        """The node stops: end every subscription's iteration (nothing is withdrawn:
        the leases lapse, or the node comes back and refreshes them)."""
        for subscription in self._live.values():
            subscription._close()
        self._live.clear()

    def dispatch(self, publication: Publication) -> int:
        """Hand a publication to each matching subscription once; return how many."""
        sids = self._trie.match(publication.topic)
        for sid in sids:
            self._live[sid]._offer(publication)
        return len(sids)

    def wants(self, topic: str) -> bool:
        return bool(self._trie.match(topic))

    async def refresh(self) -> None:
        """Sign every advertised pattern again (a fresh lease)."""
        await self._state(sorted(self.advertised), crypto.Kind.SUB)

    async def refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.lease_ms / 2000)
            await self.refresh()

    async def _advertise(self) -> None:
        wanted = _aggregate(self._trie.patterns())
        added = sorted(wanted - self.advertised)
        withdrawn = sorted(self.advertised - wanted)
        self.advertised = wanted
        await self._state(added, crypto.Kind.SUB)
        await self._state(withdrawn, crypto.Kind.UNSUB)
        if added or withdrawn:
            self.changed.set()
            self.changed = trio.Event()

    async def _state(self, patterns: Sequence[str], kind: crypto.Kind) -> None:
        actions: list[mesh.Action] = []
        for pattern in patterns:
            now = self.clock()
            # A later word about a pattern must be fresher than the one before, even
            # within the same millisecond (subscribe, then leave at once).
            held = self.router.interests.get(self.local, pattern)
            ts = now if held is None else max(now, held.ts + 1)
            frame = crypto.Frame(
                kind=kind,
                src=self.local,
                id=self.new_id(),
                ts=ts,
                exp=ts + self.lease_ms,
                hops=self.hops,
                pat=pattern,
            )
            actions += self.router.own_interest(frame, self.sign(frame), now)
        await self.apply(actions)


def _aggregate(patterns: Iterable[str]) -> set[str]:
    """The patterns not covered by another one (of two equivalent, the smaller)."""
    unique = sorted(set(patterns))
    kept: set[str] = set()
    for pattern in unique:
        covered = any(
            other != pattern
            and mesh.covers(other, pattern)
            and (not mesh.covers(pattern, other) or other < pattern)
            for other in unique
        )
        if not covered:
            kept.add(pattern)
    return kept
