"""The routing table: for each destination, the neighbours that lead there.

Routes come from announces (``ann`` frames, docs/architecture.md): node X signs an announce
carrying its address record and floods it; each copy that reaches this node through
neighbour N says "X is ``hops`` hops away via N, as fresh as ``ts``". The table keeps,
per destination, one candidate per neighbour (the freshest copy that came through it)
and picks:

1. among *feasible* candidates whose neighbour is usable (not DOWN): the freshest
   ``ts``, then the fewest hops, then the lowest neighbour id (so every node decides
   alike);
2. if none is, the same order over the feasible candidates whose neighbour is DOWN (it
   may come back; holding frames for it beats sending them round a loop);
3. a neighbour to avoid (the one a frame came from: never send a frame straight back)
   is passed over; with nothing left, there is no route (hold).

Feasibility (after Babel, RFC 8966 §3.5.1) keeps fall-back routes loop-free: a copy is
feasible if it is of the freshest announce held and has no more hops than the shortest
copy of that announce ever held (the "feasibility distance"). A copy that went through
this node has at least two hops more than that, so it is never taken; a longer detour
is taken only once a fresher announce has come along it.

A candidate expires ``ttl`` after its announce arrived unless a fresher copy replaces it.
Whether a copy is news (to flood on) is decided here too: the first copy of a fresher
announce, or a copy of the same announce that came by a shorter path.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Final

import crypto

__all__ = ["DEFAULT_MAX_DESTINATIONS", "Route", "RoutingTable"]

#: Most destinations one table holds: a stranger announcing many identities must not
#: grow it without bound (new destinations are refused past it).
DEFAULT_MAX_DESTINATIONS: Final = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """``dst`` is ``hops`` hops away via neighbour ``via`` (``hops`` = 1: it *is* ``via``)."""

    dst: crypto.NodeId
    via: crypto.NodeId
    ts: int  # the announce's origin time: its freshness
    hops: int
    learned: int  # when this copy arrived (ms)
    expires: int  # when it lapses unless refreshed (ms)
    #: The announce frame's envelope, to pass on to new neighbours as it is.
    announce: bytes = dataclasses.field(repr=False, compare=False, default=b"")

    def key(self) -> tuple[int, int, bytes]:
        """Sort key: freshest, then shortest, then lowest neighbour id."""
        return (-self.ts, self.hops, self.via.raw)


class RoutingTable:
    """Candidates per destination; see the module docstring for the choice."""

    def __init__(self, *, max_destinations: int = DEFAULT_MAX_DESTINATIONS) -> None:
        self.max_destinations = max_destinations
        self._routes: dict[crypto.NodeId, dict[crypto.NodeId, Route]] = {}
        #: Per destination, the freshest announce seen and its shortest hops: what is
        #: news. Kept while the destination has candidates.
        self._newest: dict[crypto.NodeId, tuple[int, int]] = {}
        #: No candidate held lapses before this (ms): :meth:`expire` has nothing to do.
        self._lapses_from: float = math.inf

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, dst: object) -> bool:
        return dst in self._routes

    def learn(self, route: Route) -> bool:
        """Take a copy of an announce; return True if it is news (flood it on).

        A copy older than the candidate already held through the same neighbour is
        ignored (not news). Past :attr:`max_destinations` a new destination is ignored.
        """
        candidates = self._routes.get(route.dst)
        if candidates is None:
            if len(self._routes) >= self.max_destinations:
                return False
            candidates = self._routes[route.dst] = {}
        held = candidates.get(route.via)
        if held is None or (route.ts, -route.hops) >= (held.ts, -held.hops):
            candidates[route.via] = route
            if route.expires < self._lapses_from:
                self._lapses_from = route.expires
        newest = self._newest.get(route.dst)
        if (
            newest is None
            or route.ts > newest[0]
            or (route.ts == newest[0] and route.hops < newest[1])
        ):
            self._newest[route.dst] = (route.ts, route.hops)
            return True
        return False

    def best(
        self,
        dst: crypto.NodeId,
        *,
        now: int,
        usable: Callable[[crypto.NodeId], bool] = lambda node: True,
        avoid: crypto.NodeId | None = None,
    ) -> Route | None:
        """The route to use for ``dst`` now, or None (see the module docstring)."""
        candidates = self._routes.get(dst)
        if not candidates:
            return None
        unexpired = [r for r in candidates.values() if r.expires > now]
        if not unexpired:
            return None
        ts, hops = self._feasibility(dst, unexpired)
        feasible = [r for r in unexpired if r.ts == ts and r.hops <= hops and r.via != avoid]
        if not feasible:
            return None
        preferred = [r for r in feasible if usable(r.via)]
        return min(preferred or feasible, key=Route.key)

    def _feasibility(self, dst: crypto.NodeId, unexpired: list[Route]) -> tuple[int, int]:
        """(ts, hops): the freshest announce held and the fewest hops it was ever seen at."""
        newest = self._newest.get(dst)
        if newest is not None and any(r.ts == newest[0] for r in unexpired):
            return newest
        # Every copy of the freshest announce has lapsed: start again from what is left.
        ts = max(r.ts for r in unexpired)
        return ts, min(r.hops for r in unexpired if r.ts == ts)

    def expire(self, now: int) -> set[crypto.NodeId]:
        """Drop lapsed candidates; return the destinations that lost any."""
        changed: set[crypto.NodeId] = set()
        if now < self._lapses_from:
            return changed
        lapses_from: float = math.inf
        for dst, candidates in list(self._routes.items()):
            for via, route in list(candidates.items()):
                if route.expires <= now:
                    del candidates[via]
                    changed.add(dst)
                elif route.expires < lapses_from:
                    lapses_from = route.expires
            if not candidates:
                del self._routes[dst]
                self._newest.pop(dst, None)
        self._lapses_from = lapses_from
        return changed

    def forget_via(self, via: crypto.NodeId) -> set[crypto.NodeId]:
        """Drop every candidate through ``via`` (no longer a neighbour); return the
        destinations affected."""
        changed: set[crypto.NodeId] = set()
        for dst, candidates in list(self._routes.items()):
            if candidates.pop(via, None) is not None:
                changed.add(dst)
                if not candidates:
                    del self._routes[dst]
                    self._newest.pop(dst, None)
        return changed

    def destinations_via(self, via: crypto.NodeId) -> set[crypto.NodeId]:
        """Destinations with a candidate through ``via``."""
        return {dst for dst, candidates in self._routes.items() if via in candidates}

    def candidates(self, dst: crypto.NodeId) -> list[Route]:
        """Every candidate for ``dst``, best first (ignoring link states)."""
        return sorted(self._routes.get(dst, {}).values(), key=Route.key)

    def __iter__(self) -> Iterator[crypto.NodeId]:
        return iter(list(self._routes))

    def all_routes(self) -> list[Route]:
        """Every candidate of every destination."""
        return [route for candidates in self._routes.values() for route in candidates.values()]
