"""Enforcement of capabilities: what a node requires, and the checks it makes.

:class:`Authority` is the sans-IO half of every enforcement point. It holds the
revocations this node knows (loaded from :class:`mesh.CapabilityBook` at start, learned
from ``rev`` frames after), a cache of opened capability chains (opening one costs a
signature check per link; the same token arrives on every frame its holder sends), and
the uses and rates counted against capabilities this node issued.

What a node requires is its :class:`Requirements`; everything is off by default (the
behaviour without capabilities is open, as documented):

* ``publish``: topic patterns under which publishing needs a capability from this node
  (``publish`` on the topic). Independently of it, a topic under another node's secure
  name (``~<owner>.…``) may be published by anyone holding a capability from its owner:
  every relay checks that, offline, as it checks secure names.
* ``subscribe``: patterns a subscription may reach into only with a capability from this
  node (``subscribe`` on a pattern covering the subscription's).
* ``send``: this node's inbox takes messages only from holders (``send`` on the inbox).
* ``attach`` / ``store``: as a relay, it takes attachments, and frames to hold for others,
  only from holders (``store`` carries the byte quota).

Uses and rates (:class:`crypto.Caveats`) are counted by the object's owner, the node that
issued the root: a relay that only passes a frame on checks the chain, the time and the
revocations, not the count (each relay would count the same frame again). A frame is
counted once however often it arrives. Counts are kept in memory: they start again when
the node restarts (a limit per run of the node, documented as such).

Nothing here reads a clock or touches a file.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Final

import crypto
from mesh._interests import Learned, secure_owner
from mesh._topics import matches, overlaps

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "MAX_REVOCATIONS",
    "MAX_REVOCATIONS_PER_SIGNER",
    "Authority",
    "Requirements",
    "Wallet",
]

#: Opened capability chains kept, by envelope: one per holder and token in use.
DEFAULT_CACHE_SIZE: Final = 4_096
#: Most revocations a node holds, and most by one signer: revocations are flooded to
#: every node, so a neighbour signing them in a loop (with one identity or many) must not
#: fill every node's memory and store. Past either, new ones are refused (``store-full``).
MAX_REVOCATIONS: Final = 100_000
MAX_REVOCATIONS_PER_SIGNER: Final = 10_000
#: A minute, the window of a capability's ``rate``.
_MINUTE_MS: Final = 60_000


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What this node requires a capability for (module docstring). Empty: nothing."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    send: bool = False
    attach: bool = False
    store: bool = False

    def __post_init__(self) -> None:
        for pattern in (*self.publish, *self.subscribe):
            crypto.validate_pattern(pattern)

    @property
    def any(self) -> bool:
        return bool(self.publish or self.subscribe or self.send or self.attach or self.store)

    def describe(self) -> list[str]:
        """In words, one line per requirement (empty: none)."""
        lines = [f"publish on {pattern!r}" for pattern in self.publish]
        lines += [f"subscribe to {pattern!r}" for pattern in self.subscribe]
        lines += [what for what, on in (("send to the inbox", self.send),
                                        ("attach", self.attach),
                                        ("store for others", self.store)) if on]  # fmt: skip
        return lines


@dataclasses.dataclass
class _Count:
    """What one link has been used for: frame ids (each counted once)."""

    total: set[bytes] = dataclasses.field(default_factory=set)
    recent: collections.deque[tuple[int, bytes]] = dataclasses.field(
        default_factory=collections.deque
    )


class Authority:
    """The capability checks of node ``local`` (see the module docstring)."""

    def __init__(
        self,
        local: crypto.NodeId,
        *,
        requirements: Requirements | None = None,
        revocations: Iterable[crypto.Revocation] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_revocations: int = MAX_REVOCATIONS,
        max_per_signer: int = MAX_REVOCATIONS_PER_SIGNER,
    ) -> None:
        self.local = local
        self.requirements = requirements or Requirements()
        self.revoked = crypto.RevocationSet()
        self.max_revocations = max_revocations
        self.max_per_signer = max_per_signer
        self._per_signer: collections.Counter[crypto.NodeId] = collections.Counter()
        for revocation in revocations:
            self.learn(revocation)
        self._cache: collections.OrderedDict[bytes, crypto.Capability] = collections.OrderedDict()
        self._cache_size = cache_size
        self._counts: dict[bytes, _Count] = {}

    # -- revocations ------------------------------------------------------------------

    def knows(self, revocation: crypto.Revocation) -> bool:
        """True if this revocation (its capability id and signer) is held already."""
        return revocation in self.revoked

    def learn(self, revocation: crypto.Revocation, *, own: bool = False) -> Learned:
        """Take a verified revocation: :attr:`Learned.NEWS` (then keep and flood it),
        :attr:`Learned.STALE` (held already) or :attr:`Learned.FULL` (past a limit;
        ``own``: one this node made or was handed by its operator, taken regardless)."""
        if self.knows(revocation):
            return Learned.STALE
        if not own and (
            len(self.revoked) >= self.max_revocations
            or self._per_signer[revocation.signer] >= self.max_per_signer
        ):
            return Learned.FULL
        self.revoked.add(revocation)
        self._per_signer[revocation.signer] += 1
        return Learned.NEWS

    # -- checks -----------------------------------------------------------------------

    def open(self, envelope: bytes) -> crypto.Capability:
        """The capability chain in ``envelope``, verified (cached). Raises as
        :meth:`crypto.Capability.open`."""
        cached = self._cache.get(envelope)
        if cached is not None:
            self._cache.move_to_end(envelope)
            return cached
        capability = crypto.Capability.open(envelope)
        self._cache[envelope] = capability
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return capability

    def check(
        self,
        envelope: bytes | None,
        *,
        now: int,
        owner: crypto.NodeId,
        operation: crypto.Operation,
        target: crypto.Target,
        presenter: crypto.NodeId | None,
        use: bytes | None = None,
        what: str,
    ) -> crypto.VerifiedCapability:
        """Check that ``envelope`` lets ``presenter`` do ``operation`` on ``target``.

        ``what`` names the request in the refusal ("publishing on 'news.x'"). ``use``:
        an id for this use (a frame id) when ``owner`` is this node, counted against
        every link's uses and rate (once per id). Raises :class:`crypto.CapabilityRefused`
        (403) for a missing, failing, revoked, expired or used-up capability, and
        :class:`crypto.Malformed` and the like for a token that is no capability.
        """
        if envelope is None:
            raise crypto.CapabilityRefused(
                f"{what} needs a capability from {owner.text} ({operation} on "
                f"{target.describe()}); none was presented"
            )
        try:
            capability = self.open(envelope)
            verified = crypto.verify(
                capability,
                now=now,
                owner=owner,
                operation=operation,
                target=target,
                presenter=presenter,
                revoked=self.revoked,
            )
        except crypto.CapabilityRefused as exc:
            raise type(exc)(f"{what}: {exc}", link=exc.link) from exc
        except crypto.CryptoError as exc:
            raise crypto.CapabilityRefused(
                f"{what}: the capability presented is bad: {exc}"
            ) from exc
        if use is not None and owner == self.local:
            self._count(verified, use, now, what)
        return verified

    def _count(self, verified: crypto.VerifiedCapability, use: bytes, now: int, what: str) -> None:
        chain = verified.chain
        limited = [
            (number, link)
            for number, link in enumerate(chain, 1)
            if link.caveats.uses is not None or link.caveats.rate is not None
        ]
        # Check every link first, then count on all: a refused use counts nowhere.
        for number, link in limited:
            count = self._counts.get(link.id)
            if count is None or use in count.total:
                continue
            uses, rate = link.caveats.uses, link.caveats.rate
            if uses is not None and len(count.total) >= uses:
                raise crypto.CapabilityRefused(
                    f"{what}: capability link {number} of {len(chain)} (id {link.id_text}) "
                    f"has been used its {uses} times",
                    link=number,
                )
            recent = count.recent
            while recent and recent[0][0] <= now - _MINUTE_MS:
                recent.popleft()
            if rate is not None and len(recent) >= rate:
                raise crypto.CapabilityRefused(
                    f"{what}: capability link {number} of {len(chain)} (id {link.id_text}) "
                    f"allows {rate} uses a minute; try again later",
                    link=number,
                )
        for _, link in limited:
            count = self._counts.setdefault(link.id, _Count())
            if use in count.total:
                continue
            if link.caveats.uses is not None:
                count.total.add(use)
            if link.caveats.rate is not None:
                count.recent.append((now, use))

    # -- the enforcement points of the mesh -------------------------------------------

    def publication_refusal(self, frame: crypto.Frame, now: int) -> str | None:
        """Why a ``pub`` frame may not be published (None: it may)."""
        topic = frame.topic
        assert topic is not None  # pub frames have one
        owner = secure_owner(topic)
        if owner is not None and owner != frame.src:
            if frame.cap is None:
                return (
                    f"topic {topic!r} is {owner.short}'s secure name; only it, or a holder "
                    f"of its capability, may publish there, not {frame.src.short}"
                )
            return self._refusal(frame, owner, crypto.Operation.PUBLISH,
                                 crypto.Target.topic(owner, topic),
                                 f"publishing on {topic!r}", now)  # fmt: skip
        required = self.requirements.publish
        if (
            required
            and frame.src != self.local
            and (owner is None or owner == self.local)
            and any(matches(pattern, topic) for pattern in required)
        ):
            return self._refusal(frame, self.local, crypto.Operation.PUBLISH,
                                 crypto.Target.topic(self.local, topic),
                                 f"publishing on {topic!r}", now)  # fmt: skip
        return None

    def subscription_refusal(self, frame: crypto.Frame, now: int) -> str | None:
        """Why a ``sub`` frame may not be taken (None: it may)."""
        pattern = frame.pat
        assert pattern is not None  # sub frames have one
        required = self.requirements.subscribe
        if not required or frame.src == self.local:
            return None
        if not any(overlaps(pattern, guarded) for guarded in required):
            return None
        owner = secure_owner(pattern)
        if owner is not None and owner != self.local:
            return (
                f"subscribing to {pattern!r} needs a capability from this node "
                f"({self.local.short}), and {owner.short}'s secure names are not its to give"
            )
        return self._refusal(frame, self.local, crypto.Operation.SUBSCRIBE,
                             crypto.Target.topic(self.local, pattern),
                             f"subscribing to {pattern!r}", now)  # fmt: skip

    def inbox_refusal(self, frame: crypto.Frame, now: int) -> str | None:
        """Why a ``msg`` frame for this node may not enter its inbox (None: it may)."""
        if not self.requirements.send or frame.src == self.local:
            return None
        return self._refusal(frame, self.local, crypto.Operation.SEND,
                             crypto.Target.inbox(self.local),
                             f"sending to {self.local.short}'s inbox", now)  # fmt: skip

    def _refusal(
        self,
        frame: crypto.Frame,
        owner: crypto.NodeId,
        operation: crypto.Operation,
        target: crypto.Target,
        what: str,
        now: int,
    ) -> str | None:
        try:
            self.check(
                frame.cap,
                now=now,
                owner=owner,
                operation=operation,
                target=target,
                presenter=frame.src,
                use=frame.id,
                what=what,
            )
        except crypto.CapabilityRefused as exc:
            return str(exc)
        return None


class Wallet:
    """The capabilities this node holds to present: for each thing it does, the first
    one that allows it (its target covers the object, its operations include the one
    asked for, it is for this node or for anyone). Time and revocation are the
    verifier's to check: a capability this node knows to be revoked or expired is
    still offered, and the refusal says so."""

    def __init__(self, local: crypto.NodeId, held: Iterable[crypto.Capability] = ()) -> None:
        self.local = local
        self._held: list[crypto.Capability] = []
        for capability in held:
            self.add(capability)

    def add(self, capability: crypto.Capability) -> None:
        if all(capability.envelope != other.envelope for other in self._held):
            self._held.append(capability)

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[crypto.Capability]:
        return iter(self._held)

    def choose(
        self, operation: crypto.Operation, target: crypto.Target
    ) -> crypto.Capability | None:
        """The first capability held that lets this node do ``operation`` on ``target``."""
        for capability in self._held:
            if (
                operation in capability.ops
                and capability.subject in (None, self.local)
                and target.within(capability.target)
            ):
                return capability
        return None

    def choose_topic(self, operation: crypto.Operation, pattern: str) -> crypto.Capability | None:
        """The first capability held to ``operation`` on topics ``pattern`` (a topic or a
        pattern), whichever node issued it (the one that requires it checks)."""
        for capability in self._held:
            target = capability.target
            if (
                target.pattern is not None
                and operation in capability.ops
                and capability.subject in (None, self.local)
                and crypto.pattern_covers(target.pattern, pattern)
            ):
                return capability
        return None
