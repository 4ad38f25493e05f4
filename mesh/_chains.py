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
(a clock that stepped back) the chain is parsed again.
"""

from __future__ import annotations

import hashlib
from typing import Final

import crypto

__all__ = ["DEFAULT_MAX_CHAINS", "VerifiedChains"]

#: Chains a node remembers having verified (the oldest verified go first past it): a
#: router keeps the coordinates of up to 1,024 destinations, and its DHT contacts and
#: lookups are shown a few thousand more. Each costs ~0.45 KB at depth 6 (a digest, a
#: path of node ids shared with the other paths: ~1.1 KB unshared), ~2 MB in all.
DEFAULT_MAX_CHAINS: Final = 4096
#: Node ids kept for sharing, per chain held at most (chains of one tree share most).
_IDS_PER_CHAIN: Final = 2


class VerifiedChains:
    """The coordinate chains one node verified, at most ``max_chains`` of them.

    Raises :class:`ValueError` for a ``max_chains`` below 1.
    """

    def __init__(self, max_chains: int = DEFAULT_MAX_CHAINS) -> None:
        if max_chains < 1:
            raise ValueError(f"max_chains must be >= 1, got {max_chains}")
        self.max_chains = max_chains
        #: By the chain's digest: its coordinates (no chain) and when they were verified
        #: (oldest verified first).
        self._held: dict[bytes, tuple[crypto.Coordinates, int]] = {}
        #: One node id object per node on the paths held: chains of one tree share
        #: their upper levels, so the paths share their ids (forgotten all at once
        #: past a bound: only the sharing is lost).
        self._ids: dict[crypto.NodeId, crypto.NodeId] = {}

    def __len__(self) -> int:
        return len(self._held)

    def verify(self, chain: bytes, now: int) -> crypto.Coordinates:
        """The coordinates ``chain`` proves at ``now``, without their chain
        (:attr:`crypto.Coordinates.chain` is None: they cannot be extended); parsed
        (:meth:`crypto.CoordChain.parse`) only if not remembered as verified by ``now``.

        Raises what parsing raises (always a :class:`crypto.CryptoError`); for a chain
        remembered, :class:`crypto.Expired` once its coordinates' ``exp`` is past (and
        forgets it).
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
        return self._remember(digest, crypto.CoordChain.parse(chain, now=now), now)

    def parse(self, chain: bytes, now: int) -> crypto.Coordinates:
        """:meth:`crypto.CoordChain.parse` at ``now``, always (for coordinates that must
        carry their chain, to be extended); what it proves is remembered as
        :meth:`verify` does. Raises what parsing raises."""
        coordinates = crypto.CoordChain.parse(chain, now=now)
        self._remember(hashlib.sha256(chain).digest(), coordinates, now)
        return coordinates

    def _remember(
        self, digest: bytes, coordinates: crypto.Coordinates, now: int
    ) -> crypto.Coordinates:
        held = self._held
        previous = held.pop(digest, None)
        if previous is not None and previous[1] <= now:
            # (From parse:) verified earlier already, so valid from then on.
            held[digest] = previous
            return previous[0]
        while len(held) >= self.max_chains:
            del held[next(iter(held))]
        ids = self._ids
        if len(ids) > _IDS_PER_CHAIN * self.max_chains:
            ids.clear()
        path = tuple([ids.setdefault(node, node) for node in coordinates.path])
        kept = crypto.Coordinates(path, coordinates.ts, coordinates.exp)
        held[digest] = (kept, now)
        return kept
