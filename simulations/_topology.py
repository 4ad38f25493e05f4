"""Topologies: which pairs of nodes peer, and which pairs talk.

Each function takes the nodes (any items) and returns pairs; give them to
:meth:`Simulation.peer_all` to peer, and to :func:`generate_traffic` (through
:func:`both_ways` for two-way traffic) to say who sends to whom. Today the mesh
delivers only between direct peers, so scenarios make adjacent pairs talk; when routing
lands, a scenario can peer a chain and make its ends talk.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from typing import TypeVar

__all__ = ["both_ways", "chain", "complete", "random_graph", "ring", "star"]

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
