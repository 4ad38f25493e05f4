"""Topologies: which pairs of nodes peer, and which pairs talk.

Each function takes the nodes (any items) and returns pairs; give them to
:meth:`Simulation.peer_all` to peer, and to :func:`generate_traffic` (through
:func:`both_ways` for two-way traffic) to say who sends to whom. Today the mesh
delivers only between direct peers, so scenarios make adjacent pairs talk; when routing
lands, a scenario can peer a chain and make its ends talk.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from typing import TypeVar, overload

__all__ = ["Strangers", "both_ways", "chain", "complete", "random_graph", "ring", "star"]

T = TypeVar("T")


def chain(nodes: Sequence[T]) -> list[tuple[T, T]]:
    """``n0-n1, n1-n2, ...``: each node with the next."""
    return list(itertools.pairwise(nodes))


def ring(nodes: Sequence[T]) -> list[tuple[T, T]]:
    """A chain whose last node is joined to its first (a chain below 3 nodes)."""
    pairs = chain(nodes)
    if len(nodes) > 2:
        pairs.append((nodes[-1], nodes[0]))
    return pairs


def star(hub: T, leaves: Iterable[T]) -> list[tuple[T, T]]:
    """``hub-leaf`` for every leaf."""
    return [(hub, leaf) for leaf in leaves]


def complete(nodes: Sequence[T]) -> list[tuple[T, T]]:
    """Every pair once."""
    return [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1 :]]


def random_graph(nodes: Sequence[T], degree: float, rng: random.Random) -> list[tuple[T, T]]:
    """A connected random graph of average degree ``degree`` (at least a tree).

    A random spanning tree (each node joins a random earlier one, in a shuffled order),
    then random extra edges until there are ``ceil(n * degree / 2)``, or every pair.
    Raises :class:`ValueError` for a negative degree.
    """
    if degree < 0:
        raise ValueError(f"degree must be >= 0, not {degree}")
    order = list(range(len(nodes)))
    rng.shuffle(order)
    edges: dict[tuple[int, int], None] = {}
    for position in range(1, len(order)):
        a, b = order[position], order[rng.randrange(position)]
        edges[min(a, b), max(a, b)] = None
    possible = len(nodes) * (len(nodes) - 1) // 2
    wanted = min(possible, max(len(edges), math.ceil(len(nodes) * degree / 2)))
    while len(edges) < wanted:
        a, b = rng.sample(range(len(nodes)), 2)
        edges[min(a, b), max(a, b)] = None
    return [(nodes[a], nodes[b]) for a, b in sorted(edges)]


def both_ways(pairs: Iterable[tuple[T, T]]) -> list[tuple[T, T]]:
    """Each pair and its reverse: ``[(a, b), (b, a), ...]``."""
    return [pair for a, b in pairs for pair in ((a, b), (b, a))]


class Strangers(Sequence[tuple[T, T]]):
    """Every ordered pair of distinct nodes that are not neighbours, without listing them.

    The same sequence as ``[(a, b) for a in nodes for b in nodes if a is not b and {a, b}
    is not a neighbour pair]``, in that order, but each item is computed when asked for
    (a binary search over the rows, then a step per neighbour of the row's node), so
    that ``rng.sample(Strangers(...), k)`` picks the same pairs as it would from the
    list, in memory and time that grow with the nodes and neighbour pairs rather than
    their square (10,000 nodes: 10^8 pairs, about 10 GB as a list).
    ``neighbours`` are pairs of indices into ``nodes``.
    """

    def __init__(self, nodes: Sequence[T], neighbours: Iterable[tuple[int, int]]) -> None:
        self._nodes = nodes
        excluded: list[set[int]] = [{i} for i in range(len(nodes))]
        for a, b in neighbours:
            excluded[a].add(b)
            excluded[b].add(a)
        #: Per node, the indices it is not paired with (itself, its neighbours), sorted.
        self._excluded = [sorted(row) for row in excluded]
        #: ``_starts[i]``: the index of node i's first pair; the last is the length.
        self._starts = [0, *itertools.accumulate(len(nodes) - len(row) for row in excluded)]

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, index: int) -> tuple[T, T]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[T, T]]: ...
    def __getitem__(self, index: int | slice) -> tuple[T, T] | list[tuple[T, T]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("pair index out of range")
        src = bisect.bisect_right(self._starts, index) - 1
        dst = index - self._starts[src]
        # The dst-th index not excluded: step over each excluded index at or below it.
        for skipped in self._excluded[src]:
            if skipped > dst:
                break
            dst += 1
        return self._nodes[src], self._nodes[dst]
