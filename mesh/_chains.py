"""Coordinate chains verified once per node, sans-IO: :class:`VerifiedChains`.

A node is shown the same chains over and over: with every frame routed greedily
(:attr:`mesh.WireFrame.coords`), in DHT answers, stores and pings, in tree offers. Each
:meth:`crypto.CoordChain.parse` decodes and checks every grant (a signature per level),
so a node keeps what each chain it verified proves, by the SHA-256 of its wire form,
and its router, DHT and tree share that (the router makes one and hands it to the other
two).

What is kept is the chain's :class:`crypto.Coordinates` without their proof (path,
``ts``, ``exp``; the grants stay in the wire bytes their holder keeps), and the time
they were verified at. A chain that verified at ``t`` verifies at any later ``now``
before its ``exp``: its signatures, shape and bindings do not change, a grant refused
for being valid too long (over :data:`crypto.MAX_GRANT_LIFETIME_MS` after ``now``) is
refused at ``t`` already, and the coordinates' ``exp`` is the earliest of the grants'.
So a hit is answered at ``now >= t`` by checking ``exp`` alone; at an earlier ``now``
(a clock that stepped back) the chain is checked again.

Chains of one tree share their upper grants: every chain of a tree starts with the same
root statement, and the chains of a subtree with the same grants down to its top. When
the root signs its next statement every chain in the tree changes, and a node is then
shown each new chain once, at every hop a frame or DHT message routed by it crosses. So
the upper grants of each chain verified (all but its last) are remembered too, by their
SHA-256, with the node each places, the chain's ``ts`` and ``exp`` down to it, and the
digest it is bound to (its ``up``): a
chain not remembered whole is checked from the deepest grant that is remembered and whose
``up`` digests lead back to the root statement through grants of this very chain (so its
upper grants are, byte for byte, those of a chain that verified). Only the grants below
that cost a signature check: one or two for a chain of a tree whose upper levels the node
has seen, not one per level. (Last grants are not kept: most are no other chain's upper
grant, and keeping them cost twice the memory for 8% fewer checks, measured on the
300-node ``mesh`` scenario.)

Both memories are bounded and forget the oldest verified first, and what expired as they
go (entries are verified in time order and live alike, so the oldest expire first).

In a simulation every node runs in one process and is shown the same chains:
:func:`verifying_chains_once` lets a chain that verified at one node count as verified
at every other (as :func:`crypto.verifying_once` does for signatures), the same bytes
verifying the same way: a node not holding it takes the coordinates from there (with
their chain, for :meth:`VerifiedChains.parse`), its expiry still checked, without
checking a grant (nor counting one in :attr:`VerifiedChains.grants_checked`), and
without keeping them in its own memory: the simulation's answers it again next time.
(Each node kept them too before, up to ``max_chains`` a node, filling with the traffic
it carried: ``chirp``, 10 virtual minutes, 250 chains a node at 300 nodes and 506 at
1,000; not keeping them took 12 MB off the 300-node run's peak, 42 KiB a node, the same
report, wall time within the machine's noise.) A real node checks every chain it is
shown.
Within it too the nodes keep one bytes object per chain (:meth:`VerifiedChains.kept`):
a destination's chain held by hundreds of routers, DHT contacts and records takes its
memory once (300-node ``mesh`` scenario, 10 virtual minutes: chain bytes held 173 KiB
a node before, 20 KiB after).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from typing import Final

import crypto

__all__ = ["DEFAULT_MAX_CHAINS", "SharedChains", "VerifiedChains", "verifying_chains_once"]

#: Chains a node remembers having verified (the oldest verified go first past it): a
#: router keeps the coordinates of up to 1,024 destinations, and its DHT contacts and
#: lookups are shown a few thousand more. Each costs ~0.45 KB at depth 6 (a digest, a
#: path of node ids shared with the other paths: ~1.1 KB unshared), ~2 MB in all.
DEFAULT_MAX_CHAINS: Final = 4096
#: Upper grants remembered per chain remembered, at most (those of a tree's chains are
#: its inner nodes' grants, fewer than its nodes).
_GRANTS_PER_CHAIN: Final = 2
#: Node ids kept for sharing, per chain held at most (chains of one tree share most).
_IDS_PER_CHAIN: Final = 2


class SharedChains:
    """Chains verified by any node of a simulation, by digest: their coordinates
    (without their chain) and when they were verified; forgotten all at once past
    ``limit``, which its holder may change as it goes (a simulation raises it with its
    number of nodes: a tree holds a chain per node, and one that forgets them faster
    than they come round checks each again at every node)."""

    __slots__ = ("held", "kept", "limit")

    def __init__(self, limit: int) -> None:
        self.held: dict[bytes, tuple[crypto.Coordinates, int]] = {}
        #: One bytes object per chain the nodes keep (see :meth:`VerifiedChains.kept`).
        self.kept: dict[bytes, bytes] = {}
        self.limit = limit

    def verified(self, digest: bytes, now: int) -> crypto.Coordinates | None:
        """The coordinates (without their chain) of the chain of this digest, if a node
        verified it by ``now`` and they have not expired; else None."""
        known = self.held.get(digest)
        if known is not None and now >= known[1] and known[0].exp > now:
            return known[0]
        return None

    def keep(self, digest: bytes, coordinates: crypto.Coordinates, now: int) -> None:
        if len(self.held) >= self.limit:
            self.held.clear()
        self.held.setdefault(digest, (coordinates, now))

    def same(self, chain: bytes) -> bytes:
        kept = self.kept
        if len(kept) >= self.limit:
            kept.clear()
        return kept.setdefault(chain, chain)


#: Set by :func:`verifying_chains_once` for the tasks and threads started within it.
_SHARED: Final = contextvars.ContextVar[SharedChains | None]("ptth_chains_verified", default=None)


@contextlib.contextmanager
def verifying_chains_once(limit: int = 100_000) -> Iterator[SharedChains]:
    """Within this block, and in the trio tasks and threads started in it, a coordinate
    chain that verified at one :class:`VerifiedChains` counts as verified at every
    other (the last ``limit`` chains; see the module docstring). For simulations.
    Yields the memory they share (its ``limit`` may be changed within the block)."""
    shared = SharedChains(limit)
    token = _SHARED.set(shared)
    try:
        yield shared
    finally:
        _SHARED.reset(token)


class VerifiedChains:
    """The coordinate chains one node verified, at most ``max_chains`` of them, and
    their upper grants (at most twice as many).

    Raises :class:`ValueError` for a ``max_chains`` below 1.
    """

    def __init__(self, max_chains: int = DEFAULT_MAX_CHAINS) -> None:
        if max_chains < 1:
            raise ValueError(f"max_chains must be >= 1, got {max_chains}")
        self.max_chains = max_chains
        #: By the chain's digest: its coordinates (no chain) and when they were verified
        #: (oldest verified first).
        self._held: dict[bytes, tuple[crypto.Coordinates, int]] = {}
        #: By a grant's digest: the node it places, the digest of the grant above it
        #: (None for a root statement), the chain's ``ts``, the earliest ``exp`` from the
        #: root down to it, and when it was verified (oldest verified first). The path
        #: is not kept: it is the nodes of the grants above, walked through to it.
        self._grants: dict[bytes, tuple[crypto.NodeId, bytes | None, int, int, int]] = {}
        #: One node id object per node on the paths held: chains of one tree share
        #: their upper levels, so the paths share their ids (forgotten all at once
        #: past a bound: only the sharing is lost).
        self._ids: dict[crypto.NodeId, crypto.NodeId] = {}
        #: Grants checked (a signature each, refused ones too) since this was made.
        self.grants_checked = 0

    def __len__(self) -> int:
        return len(self._held)

    def verify(self, chain: bytes, now: int) -> crypto.Coordinates:
        """The coordinates ``chain`` proves at ``now``, without their chain
        (:attr:`crypto.Coordinates.chain` is None: they cannot be extended); checked
        only if not remembered as verified by ``now``, and then only below its deepest
        grant remembered (see the module docstring).

        Raises what :meth:`crypto.CoordChain.parse` raises (always a
        :class:`crypto.CryptoError`); for a chain remembered, :class:`crypto.Expired`
        once its coordinates' ``exp`` is past (and forgets it).
        """
        digest = hashlib.sha256(chain).digest()
        held = self._held.get(digest)
        if held is not None and now >= held[1]:
            coordinates = held[0]
            if coordinates.exp <= now:
                del self._held[digest]
                raise crypto.Expired(
                    f"the coordinates of {coordinates.node.short} expired "
                    f"{now - coordinates.exp} ms ago"
                )
            return coordinates
        shared = _SHARED.get()
        if shared is not None:
            known = shared.verified(digest, now)
            if known is not None:
                return known  # verified at another node: nothing to keep here
        _, bare = self._check(crypto.CoordChain.decode(chain), now)
        if shared is not None:
            shared.keep(digest, bare, now)
        return self._remember(digest, bare, now)

    def kept(self, chain: bytes) -> bytes:
        """``chain`` (verified), to be kept by its holder: in a simulation
        (:func:`verifying_chains_once`) the one bytes object equal to it that every node
        keeps, so that a chain held by a thousand nodes takes its memory once (bytes do
        not change); else ``chain`` itself. A real node keeps its own copies."""
        shared = _SHARED.get()
        return chain if shared is None else shared.same(chain)

    def parse(self, chain: bytes, now: int) -> crypto.Coordinates:
        """The coordinates ``chain`` proves at ``now``, with their chain (to be
        extended: :meth:`crypto.Coordinates.below`); checked as :meth:`verify` checks
        a chain not remembered whole, and within :func:`verifying_chains_once` not at
        all once another node verified it. Raises what :meth:`crypto.CoordChain.parse`
        raises."""
        decoded = crypto.CoordChain.decode(chain)
        digest = hashlib.sha256(chain).digest()
        shared = _SHARED.get()
        if shared is not None:
            known = shared.verified(digest, now)
            if known is not None:  # verified at another node: the same place
                return crypto.Coordinates(known.path, known.ts, known.exp, decoded)
        coordinates, bare = self._check(decoded, now)
        if shared is not None:
            shared.keep(digest, bare, now)
        self._remember(digest, bare, now)
        return coordinates

    def _check(
        self, chain: crypto.CoordChain, now: int
    ) -> tuple[crypto.Coordinates, crypto.Coordinates]:
        """Verify ``chain`` at ``now`` from its deepest grant remembered; return its
        coordinates with the chain, and as remembered (without). Raises what
        :meth:`crypto.CoordChain.verify` raises."""
        grants = chain.grants
        known = self._grants
        digests = [hashlib.sha256(grant).digest() for grant in grants]
        path: list[crypto.NodeId] = []
        up: bytes | None = None
        ts = exp = 0
        for digest in digests:
            entry = known.get(digest)
            if entry is None or entry[1] != up or entry[3] <= now or now < entry[4]:
                break
            path.append(entry[0])
            up, ts, exp = digest, entry[2], entry[3]
        start = len(path)
        last = len(grants) - 1
        if start:
            coordinates = crypto.Coordinates(
                tuple(path), ts, exp, crypto.CoordChain(grants[:start])
            )
        else:
            self.grants_checked += 1
            coordinates = crypto.CoordChain(grants[:1]).verify(now=now)
            if last:
                self._keep_grant(digests[0], coordinates, None, now)
            start = 1
        for index in range(start, len(grants)):
            self.grants_checked += 1
            coordinates = coordinates.below(grants[index], now=now)
            if index < last:
                self._keep_grant(digests[index], coordinates, digests[index - 1], now)
        return coordinates, self._bare(coordinates)

    def _keep_grant(
        self, digest: bytes, coordinates: crypto.Coordinates, up: bytes | None, now: int
    ) -> None:
        known = self._grants
        bound = _GRANTS_PER_CHAIN * self.max_chains
        while known:
            oldest = next(iter(known))
            if len(known) < bound and known[oldest][3] > now:
                break
            del known[oldest]
        known.pop(digest, None)
        node = coordinates.node
        known[digest] = (self._ids.setdefault(node, node), up, coordinates.ts, coordinates.exp, now)

    def _remember(
        self, digest: bytes, coordinates: crypto.Coordinates, now: int
    ) -> crypto.Coordinates:
        """Remember ``coordinates`` (without their chain) as the chain's verified at
        ``now``; what is remembered (verified earlier, if it was)."""
        held = self._held
        previous = held.pop(digest, None)
        if previous is not None and previous[1] <= now:
            # (From parse:) verified earlier already, so valid from then on.
            held[digest] = previous
            return previous[0]
        while held:
            oldest = next(iter(held))
            if len(held) < self.max_chains and held[oldest][0].exp > now:
                break
            del held[oldest]
        held[digest] = (coordinates, now)
        return coordinates

    def _bare(self, coordinates: crypto.Coordinates) -> crypto.Coordinates:
        """``coordinates`` without their chain, their path's ids shared."""
        ids = self._ids
        if len(ids) > _IDS_PER_CHAIN * self.max_chains:
            ids.clear()
        path = tuple([ids.setdefault(node, node) for node in coordinates.path])
        return crypto.Coordinates(path, coordinates.ts, coordinates.exp)
