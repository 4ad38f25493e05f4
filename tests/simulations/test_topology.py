"""Topologies (simulations/_topology.py): the pairs that peer and the pairs that talk."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations._topology import Strangers, random_graph


def _listed(nodes: list[str], edges: list[tuple[int, int]]) -> list[tuple[str, str]]:
    neighbours = {frozenset(edge) for edge in edges}
    return [
        (a, b)
        for i, a in enumerate(nodes)
        for j, b in enumerate(nodes)
        if i != j and frozenset((i, j)) not in neighbours
    ]


@given(
    count=st.integers(min_value=0, max_value=30),
    degree=st.sampled_from([0.0, 1.0, 3.0, 10.0, 40.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_strangers_are_the_listed_pairs_and_sample_the_same(
    count: int, degree: float, seed: int
) -> None:
    nodes = [f"n{i}" for i in range(count)]
    edges = random_graph(list(range(count)), degree, random.Random(seed))
    listed = _listed(nodes, edges)
    strangers = Strangers(nodes, edges)
    assert len(strangers) == len(listed)
    assert list(strangers) == listed
    assert [strangers[i] for i in range(-len(listed), 0)] == listed
    assert strangers[1:-1:3] == listed[1:-1:3]
    k = min(count, len(listed))
    assert random.Random(seed).sample(strangers, k) == random.Random(seed).sample(listed, k)
    for index in (len(listed), -len(listed) - 1):
        with pytest.raises(IndexError):
            strangers[index]


def test_strangers_of_many_nodes_are_not_listed() -> None:
    count = 100_000
    strangers = Strangers(range(count), [(i, i + 1) for i in range(count - 1)])
    assert len(strangers) == count * (count - 1) - 2 * (count - 1)
    assert strangers[0] == (0, 2)
    assert strangers[-1] == (count - 1, count - 3)
    for a, b in random.Random(1).sample(strangers, 1000):
        assert abs(a - b) > 1
