"""benchmarks/routing.py: the model of routing designs builds the mesh scenario's graph,
floods and routes over it as its docstring says, and prints figures that hold for every
graph (a route to every node when flooding; every greedy path arrives, no shorter than
the shortest)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random

import pytest

from benchmarks import routing


@pytest.fixture
def graph() -> routing.Graph:
    return routing.mesh_graph(90, random.Random(3))


def test_the_graph_is_the_mesh_scenarios(graph: routing.Graph) -> None:
    natted = set(graph.relay_of)
    assert len(natted) == 30
    assert len(set(graph.ids)) == graph.size
    for node in range(graph.size):
        senders = {u for u in range(graph.size) if node in graph.out[u]}
        if node in natted:
            # Reached through its relay only; it sends to its relay and one more node.
            assert senders == {graph.relay_of[node]}
            assert len(graph.out[node]) == 2
            assert graph.relay_of[node] in graph.out[node]
        else:
            assert all(routing.distances_from(graph, node)[v] >= 0 for v in range(graph.size))


def test_the_tree_hangs_natted_nodes_off_their_relays(graph: routing.Graph) -> None:
    tree = routing.spanning_tree(graph)
    (root,) = [node for node in range(graph.size) if tree.parent[node] < 0]
    assert root not in graph.relay_of
    assert graph.ids[root] == min(
        graph.ids[node] for node in range(graph.size) if node not in graph.relay_of
    )
    for node in range(graph.size):
        if node == root:
            continue
        parent = tree.parent[node]
        assert parent in graph.out[node]
        assert node in graph.out[parent]
        assert tree.depth[node] == tree.depth[parent] + 1
        assert parent not in graph.relay_of
        if node in graph.relay_of:
            assert parent == graph.relay_of[node]


def test_greedy_paths_always_arrive_over_links(graph: routing.Graph) -> None:
    tree = routing.spanning_tree(graph)
    for source in range(0, graph.size, 7):
        shortest = routing.distances_from(graph, source)
        for target in range(graph.size):
            path = routing.greedy_path(graph, tree, source, target)
            assert path is not None
            assert (path[0], path[-1]) == (source, target)
            assert all(b in graph.out[a] for a, b in itertools.pairwise(path))
            assert shortest[target] <= len(path) - 1 <= tree.distance(source, target)


def test_lookups_end_at_the_node_nearest_the_key(graph: routing.Graph) -> None:
    kademlia = routing.Kademlia(graph, 4, random.Random(5))
    rng = random.Random(6)
    for _ in range(200):
        source = rng.randrange(graph.size)
        key = rng.getrandbits(routing.ID_BITS)
        queried = kademlia.lookup(source, key)
        found = queried[-1] if queried else source
        nearest = min(range(graph.size), key=lambda v: graph.ids[v] ^ key)
        assert found == nearest
        distances = [graph.ids[v] ^ key for v in [source, *queried]]
        assert distances == sorted(distances, reverse=True)  # nearer at every step


def test_flooding_a_chain_counts_each_copy() -> None:
    # 0 - 1 - 2: 1 passes 0's announce to 2 only; 2 has no one else to pass it to.
    chain = routing.Graph(ids=[5, 6, 7], out=[[1], [0, 2], [1]], relay_of={})
    received = [0, 0, 0]
    routing.flood_copies(chain, 0, received)
    assert received == [0, 1, 1]
    routing.flood_copies(chain, 1, received)
    assert received == [1, 1, 2]


def test_the_report() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        routing.main(["--nodes", "40", "120", "--pairs", "30", "--lookups", "20", "--json"])
    document = json.loads(out.getvalue())
    small, large = document["results"]
    assert (small["nodes"], large["nodes"]) == (40, 120)
    for result in (small, large):
        flood, tree = result["designs"]["flood"], result["designs"]["tree"]
        assert flood["state"] == {"median": result["nodes"] - 1, "max": result["nodes"] - 1}
        assert flood["stretch"]["mean"] == 1.0
        assert tree["stretch"]["arrived"] == 1.0
        assert tree["stretch"]["mean"] >= 1.0
        assert tree["state"]["median"] < flood["state"]["median"]
    assert [line.split(":")[0] for line in document["growth"]] == ["flood", "tree"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        routing.main(["--nodes", "40", "--pairs", "10", "--lookups", "5"])
    assert "tree depth" in out.getvalue()
