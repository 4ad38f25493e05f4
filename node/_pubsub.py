"""This node's own subscriptions: what it tells the mesh, and what it hands the
application.

* Each :class:`Subscription` holds one or more patterns. A publication that matches any
  of them is handed to it once (a :class:`TopicTrie` of subscription ids finds them).
* A named subscription is durable: its patterns are kept in the store and advertised
  from the node's start, whether a reader is there or not; the publications it matches
  wait in the store (pending for it) until the application acknowledges each
  (:class:`DurableSubscription`). So a subscriber that was down, or detached from its
  relay, gets what was published meanwhile: the relays kept it for it (within the
  lease, the frames' expiry and the quotas).
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
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import trio

import crypto
import mesh
from node._message import Publication

__all__ = [
    "DEFAULT_LEASE",
    "DurableSubscription",
    "LocalSubscriptions",
    "Subscription",
    "validate_name",
]

log = logging.getLogger("ptth.node")

#: How long a relay keeps an interest without a refresh (s); refreshed every half.
DEFAULT_LEASE = 3600.0
#: Publications a subscription buffers for a slow reader.
DEFAULT_CAPACITY = 10_000
#: The least time between two restatements of every interest that drop receipts
#: prompt (s): a refusal that comes back at once (the owner's table is full, a node on
#: the way forwards for nobody) must not make us sign and send at a round trip's pace.
RESTATE_INTERVAL = 60.0
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a subscription; raise :class:`crypto.Malformed`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise crypto.Malformed(f"subscription name {name!r} must be 1..64 of A-Z a-z 0-9 _ . -")
    return name


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


class DurableSubscription:
    """A named subscription's reader: ``async for publication in subscription``, then
    ``await publication.ack()``. It offers what is pending (oldest first), then waits
    for more; what is not acknowledged is offered again by the next reader."""

    def __init__(
        self,
        name: str,
        patterns: tuple[str, ...],
        *,
        fetch: Callable[[int], Awaitable[list[mesh.InboxEntry]]],
        ack: Callable[[int], Awaitable[object]],
        changed: Callable[[], trio.Event],
    ) -> None:
        self.name = name
        self.patterns = patterns
        self._fetch = fetch
        self._ack = ack
        self._changed = changed
        self._after = 0
        self._ready: list[mesh.InboxEntry] = []

    def __aiter__(self) -> DurableSubscription:
        return self

    async def __anext__(self) -> Publication:
        return await self.get()

    async def get(self) -> Publication:
        """The next pending publication (waits for one)."""
        while not self._ready:
            changed = self._changed()
            self._ready = await self._fetch(self._after)
            if not self._ready:
                await changed.wait()
        entry = self._ready.pop(0)
        self._after = entry.seq
        return self._publication(entry)

    async def pending(self) -> list[Publication]:
        """Everything pending now, without waiting (and without moving on)."""
        found: list[Publication] = []
        after = 0
        while batch := await self._fetch(after):
            found += [self._publication(entry) for entry in batch]
            after = batch[-1].seq
        return found

    def _publication(self, entry: mesh.InboxEntry) -> Publication:
        assert entry.topic is not None  # publications have one
        seq = entry.seq
        return Publication(
            topic=entry.topic,
            body=entry.body,
            ct=entry.ct,
            origin=entry.src,
            id=entry.id,
            ts=entry.ts,
            received=entry.received,
            hops=entry.hops,
            seq=seq,
            _ack=lambda: self._ack(seq),
        )


Sign = Callable[[crypto.Frame], bytes]
Apply = Callable[[Sequence[mesh.Action]], Awaitable[None]]
#: Takes custody of frames of ours to send (``MeshRuntime.send_frames``).
Send = Callable[[Sequence[tuple[crypto.Frame, bytes]]], Awaitable[object]]


class LocalSubscriptions:
    """The node's subscriptions and the ``sub``/``unsub`` frames that state them."""

    def __init__(
        self,
        *,
        local: crypto.NodeId,
        router: mesh.Router,
        sign: Sign,
        apply: Apply,
        send: Send,
        clock: Callable[[], int],
        new_id: Callable[[], bytes],
        hops: int,
        lease: float = DEFAULT_LEASE,
        capacity: int = DEFAULT_CAPACITY,
        wallet: mesh.Wallet | None = None,
    ) -> None:
        self.local = local
        #: Capabilities to present with our ``sub`` frames (the first that covers each).
        self.wallet = wallet if wallet is not None else mesh.Wallet(local)
        self.router = router
        self.sign = sign
        self.apply = apply
        self.send = send
        self.clock = clock
        self.new_id = new_id
        self.hops = hops
        self.lease_ms = int(lease * 1000)
        self.capacity = capacity
        self._ids = itertools.count(1)
        self._live: dict[int, Subscription] = {}
        self._trie: mesh.TopicTrie[int] = mesh.TopicTrie()
        #: Named (durable) subscriptions: name -> patterns, and a trie of names.
        self.durable: dict[str, tuple[str, ...]] = {}
        self._durable_trie: mesh.TopicTrie[str] = mesh.TopicTrie()
        #: The patterns advertised now (aggregated).
        self.advertised: set[str] = set()
        #: The id of the last ``sub`` frame signed for each advertised pattern, and the
        #: reverse: a drop receipt about one of them means a neighbour forgot it (every
        #: receipt that reaches us is looked up here).
        self._signed: dict[str, bytes] = {}
        self._signed_ids: set[bytes] = set()
        #: When drop receipts last made us state every interest again, and whether
        #: another came since, too soon to act on (:meth:`restate`).
        self._restated = -math.inf
        self._restate_pending = False
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

    async def keep(self, name: str, patterns: Iterable[str]) -> tuple[str, ...]:
        """Hold named subscription ``name`` with ``patterns`` (replacing its old ones);
        advertise what is new, withdraw what nobody wants any more. Returns the
        patterns, validated and without repeats."""
        wanted = tuple(dict.fromkeys(crypto.validate_pattern(p) for p in patterns))
        if not wanted:
            raise crypto.Malformed("a subscription needs at least one pattern")
        self._drop_durable(validate_name(name))
        self.durable[name] = wanted
        for pattern in wanted:
            self._durable_trie.add(pattern, name)
        await self._advertise()
        return wanted

    async def forget(self, name: str) -> bool:
        """Drop named subscription ``name``; withdraw what nobody wants any more."""
        if not self._drop_durable(name):
            return False
        await self._advertise()
        return True

    def _drop_durable(self, name: str) -> bool:
        old = self.durable.pop(name, None)
        for pattern in old or ():
            self._durable_trie.remove(pattern, name)
        return old is not None

    def durable_names(self, topic: str) -> tuple[str, ...]:
        """The named subscriptions a publication to ``topic`` is pending for."""
        return tuple(sorted(self._durable_trie.match(topic)))

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

    async def refresh(self) -> None:
        """Sign every advertised pattern again (a fresh lease)."""
        await self._state(sorted(self.advertised), crypto.Kind.SUB)

    async def restate(self) -> None:
        """A node dropped one of our interests (its drop receipt came): state them
        all again, at once unless we did less than :data:`RESTATE_INTERVAL` ago; then
        once that time is over (:meth:`restate_due`)."""
        if self.clock() - self._restated < RESTATE_INTERVAL * 1000:
            self._restate_pending = True
            return
        await self._restate()

    async def restate_due(self) -> None:
        """State every interest again if a drop receipt asked for it too soon after
        the last time and that time is over (the runtime calls this at its tick)."""
        if self._restate_pending and self.clock() - self._restated >= RESTATE_INTERVAL * 1000:
            await self._restate()

    async def _restate(self) -> None:
        self._restated = self.clock()
        self._restate_pending = False
        await self.refresh()

    async def refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.lease_ms / 2000)
            await self.refresh()

    async def _advertise(self) -> None:
        wanted = _aggregate([*self._trie.patterns(), *self._durable_trie.patterns()])
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
        addressed: list[tuple[crypto.Frame, bytes]] = []
        for pattern in patterns:
            now = self.clock()
            # A later word about a pattern must be fresher than the one before, even
            # within the same millisecond (subscribe, then leave at once).
            held = self.router.interests.get(self.local, pattern)
            ts = now if held is None else max(now, held.ts + 1)
            cap = None
            if kind is crypto.Kind.SUB:
                cap = self.wallet.choose_topic(crypto.Operation.SUBSCRIBE, pattern)
            # With the tree, a pattern under another node's secure name goes to that
            # node alone (one under ours stays here); any other is flooded.
            owner = self.router.interest_owner(pattern)
            frame = crypto.Frame(
                kind=kind,
                src=self.local,
                id=self.new_id(),
                ts=ts,
                exp=ts + self.lease_ms,
                hops=self.hops,
                dst=owner if owner != self.local else None,
                pat=pattern,
                cap=None if cap is None else cap.envelope,
            )
            envelope = self.sign(frame)
            actions += self.router.own_interest(frame, envelope, now)
            if frame.dst is not None:
                addressed.append((frame, envelope))
            old = self._signed.pop(pattern, None)
            self._signed_ids.discard(old or b"")
            if kind is crypto.Kind.SUB:
                self._signed[pattern] = frame.id
                self._signed_ids.add(frame.id)
        await self.apply(actions)
        if addressed:
            try:
                await self.send(addressed)
            except mesh.StoreFull as exc:
                # Stated again at the next refresh (or when a drop receipt comes).
                log.warning(
                    "could not send %d interests to their owners: the store is full: %s",
                    len(addressed), exc,
                )  # fmt: skip

    def is_ours(self, frame_id: bytes) -> bool:
        """Is ``frame_id`` one of the ``sub`` frames stating our interests now?"""
        return frame_id in self._signed_ids


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
