"""Routing designs at scale, compared on the ``mesh`` scenario's graphs: a model, not a run.

What one node must hold and hear to route in a mesh of N nodes decides whether the mesh
can grow to the internet's size. This script builds, for each N (``--nodes``, default
100, 1,000 and 10,000), the graph the ``mesh`` scenario builds (two thirds of the nodes
public, in a random connected graph of average degree 3; a third NATed, each attached to
a relay, a random public node, and peered with one more public node, which it can send
to but which reaches it only through its relay), and computes for each design:

* **state**: routing entries per node (median and max over nodes);
* **control**: routing messages a node receives per hour (mean, 99th percentile and
  max over nodes; announces, lookups and their answers, including those it relays);
* **interests**: interest-table entries per node when every node follows ``--follows``
  other nodes' secure-name topics (``~<id>.chirp``), popular ones more (Zipf);
* **stretch**: hops a message takes over the fewest possible, over ``--pairs`` random
  pairs (mean and 99th percentile), and how many of them arrive at all.

Designs:

``flood`` (what ptth does today): every node's signed announce is flooded to every node
every 10 minutes (six times an hour), and every node keeps a route to every other; subscriptions
are flooded too, so every node keeps every pattern followed anywhere. Shortest paths
(stretch 1), state and control linear in N. Counted exactly: each origin's announce is
flooded over the graph (every node passes a new announce to every neighbour it can send
to, but the one it came from), for up to ``--flood-origins`` origins, scaled to all.

``tree`` (proposed): nodes agree on a spanning tree rooted at the node with the least
id (each node's parent is a neighbour one hop nearer the root; a NATed node's parent is
its relay), and a node's *coordinates* are its path from the root. A frame is routed
greedily: each hop passes it to the neighbour (any neighbour, tree link or not) nearest
its destination in the tree (depth(a) + depth(b) - 2 depth(common ancestor)), which
always makes progress, so it always arrives. A node keeps its neighbours' coordinates
(announced to neighbours only, six times an hour) and finds a destination's coordinates with a
Kademlia lookup (k = ``--bucket``; contacts by XOR distance of ids) among the nodes,
each query routed over the tree; nodes store their coordinates at the k nodes nearest
their id and refresh every bucket once an hour (Kademlia's
refresh interval). Subscriptions to ``~<id>`` topics travel
toward ``<id>`` along the same greedy path, each node on it keeping one entry per
(pattern, neighbour) it came from. Coordinates learned for destinations in use are a
cache bounded by use, not by N, and are not counted.

The model leaves out churn (a tree re-forms when a node near the root goes) and loss;
those the simulator measures. It is deterministic for a ``--seed``.

Usage: python benchmarks/routing.py [--nodes 100 1000 10000] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where benchmarks/mesh.py
# would shadow the mesh package: take it off.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import bisect
import dataclasses
import itertools
import json
import random
import statistics
import time
from collections.abc import Sequence

from simulations import random_graph

#: As the ``mesh`` scenario: average degree of the public graph, a third NATed.
DEGREE = 3.0
NATTED_SHARE = 3
ID_BITS = 64  # of a node id, for XOR distances (ptth's are 256: the same orders)

#: Figures over nodes (median, max; mean, p99) or over pairs.
Figures = dict[str, float]


@dataclasses.dataclass
class Graph:
    """Nodes 0..n-1; ``out[u]``: the neighbours ``u`` can send to."""

    ids: list[int]
    out: list[list[int]]
    relay_of: dict[int, int]  # NATed node -> its relay

    @property
    def size(self) -> int:
        return len(self.ids)


def mesh_graph(count: int, rng: random.Random) -> Graph:
    """The ``mesh`` scenario's network, as ``simulations._scenarios._build_mesh`` peers it."""
    natted = count // NATTED_SHARE
    public = list(range(count - natted))
    out: list[list[int]] = [[] for _ in range(count)]
    for a, b in random_graph(public, DEGREE, rng):
        out[a].append(b)
        out[b].append(a)
    relay_of = {}
    for node in range(len(public), count):
        relay = rng.randrange(len(public))
        relay_of[node] = relay
        out[node].append(relay)
        out[relay].append(node)  # the relay reaches it over its attachment
        others = [p for p in public if p != relay]
        if others:
            out[node].append(others[rng.randrange(len(others))])  # it sends that way only
    ids: list[int] = []
    while len(ids) < count:  # distinct random ids
        ids = list(dict.fromkeys(ids + [rng.getrandbits(ID_BITS) for _ in range(count - len(ids))]))
    return Graph(ids, out, relay_of)


def distances_from(graph: Graph, source: int) -> list[int]:
    """Fewest hops from ``source`` to every node (-1: unreachable)."""
    dist = [-1] * graph.size
    dist[source] = 0
    frontier = [source]
    while frontier:
        following = []
        for u in frontier:
            for v in graph.out[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    following.append(v)
        frontier = following
    return dist


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spread(values: Sequence[float]) -> Figures:
    return {"median": statistics.median(values), "max": max(values)}


def load(values: Sequence[float]) -> Figures:
    """Of a count estimated from a sample and scaled up: the mean is exact in
    expectation, a median or a maximum would mislead."""
    return {"mean": statistics.fmean(values), "p99": percentile(values, 0.99), "max": max(values)}


#: Announce rounds an hour (ptth's default interval: 10 minutes).
ROUNDS_PER_HOUR = 6


# -- flooding (today) ---------------------------------------------------------------------


def flood_copies(graph: Graph, origin: int, received: list[int]) -> None:
    """Flood ``origin``'s announce: each node passes it on, once, to every neighbour it
    can send to but the one it first got it from; count the copies each node receives."""
    came_from = {origin: -1}
    frontier = [origin]
    while frontier:
        following = []
        for u in frontier:
            for v in graph.out[u]:
                if v == came_from[u]:
                    continue
                received[v] += 1
                if v not in came_from:
                    came_from[v] = u
                    following.append(v)
        frontier = following


def flood(graph: Graph, origins: int, rng: random.Random) -> tuple[Figures, Figures]:
    """State and control per node, flooding."""
    sample = rng.sample(range(graph.size), min(origins, graph.size))
    received = [0] * graph.size
    for origin in sample:
        flood_copies(graph, origin, received)
    scale = graph.size / len(sample) * ROUNDS_PER_HOUR
    control = [count * scale for count in received]
    return spread([graph.size - 1] * graph.size), load(control)


# -- tree coordinates and greedy routing --------------------------------------------------


@dataclasses.dataclass
class Tree:
    parent: list[int]
    depth: list[int]

    def distance(self, a: int, b: int) -> int:
        """Hops between ``a`` and ``b`` over tree links."""
        hops = 0
        da, db = self.depth[a], self.depth[b]
        while da > db:
            a, da, hops = self.parent[a], da - 1, hops + 1
        while db > da:
            b, db, hops = self.parent[b], db - 1, hops + 1
        while a != b:
            a, b, hops = self.parent[a], self.parent[b], hops + 2
        return hops


def spanning_tree(graph: Graph) -> Tree:
    """Rooted at the public node with the least id; a public node's parent is a public
    neighbour one hop nearer the root (the least id among them), a NATed node's its relay
    (a NATed node is no one's parent: nobody else can reach it)."""
    public = [node for node in range(graph.size) if node not in graph.relay_of]
    root = min(public, key=graph.ids.__getitem__)
    dist = {root: 0}
    frontier = [root]
    while frontier:
        following = []
        for u in frontier:
            for v in graph.out[u]:
                if v not in dist and v not in graph.relay_of:
                    dist[v] = dist[u] + 1
                    following.append(v)
        frontier = following
    parent = [-1] * graph.size
    for node in range(graph.size):
        if node in graph.relay_of:
            parent[node] = graph.relay_of[node]
        elif node != root:
            nearer = [v for v in graph.out[node] if dist.get(v) == dist[node] - 1]
            parent[node] = min(nearer, key=graph.ids.__getitem__)
    depth = [0] * graph.size
    for node in sorted(public, key=dist.__getitem__):
        if parent[node] >= 0:
            depth[node] = depth[parent[node]] + 1
    for node, relay in graph.relay_of.items():
        depth[node] = depth[relay] + 1
    return Tree(parent, depth)


def greedy_path(graph: Graph, tree: Tree, source: int, target: int) -> list[int] | None:
    """The nodes a frame visits from ``source`` to ``target`` routed greedily on tree
    distance (None if it gets stuck: never, as a tree link always gets nearer)."""
    path = [source]
    here = source
    while here != target:
        best, best_distance = -1, tree.distance(here, target)
        for v in graph.out[here]:
            d = tree.distance(v, target)
            if d < best_distance:
                best, best_distance = v, d
        if best < 0:
            return None
        here = best
        path.append(here)
    return path


# -- Kademlia lookups of coordinates ------------------------------------------------------


class Kademlia:
    """Ideal routing tables: for each bucket (ids at XOR distance [2^i, 2^(i+1))) up to
    ``k`` of its nodes, chosen at random; made for a node when first needed."""

    def __init__(self, graph: Graph, k: int, rng: random.Random) -> None:
        self.graph = graph
        self.k = k
        self.rng = rng
        self.order = sorted(range(graph.size), key=graph.ids.__getitem__)
        self.sorted_ids = [graph.ids[node] for node in self.order]
        self._tables: dict[int, list[int]] = {}

    def bucket(self, node: int, bit: int) -> range:
        """Positions (in id order) of the nodes in ``node``'s bucket ``bit``: those whose
        ids share its bits above ``bit`` and differ at ``bit``: a contiguous run."""
        flipped = (self.graph.ids[node] ^ (1 << bit)) >> bit << bit
        low = bisect.bisect_left(self.sorted_ids, flipped)
        high = bisect.bisect_left(self.sorted_ids, flipped + (1 << bit))
        return range(low, high)

    def buckets(self, node: int) -> list[range]:
        return [run for bit in range(ID_BITS) if (run := self.bucket(node, bit))]

    def table(self, node: int) -> list[int]:
        if node not in self._tables:
            contacts = []
            for run in self.buckets(node):
                chosen = self.rng.sample(run, min(self.k, len(run)))
                contacts += [self.order[position] for position in chosen]
            self._tables[node] = contacts
        return self._tables[node]

    def lookup(self, source: int, key: int) -> list[int]:
        """The nodes ``source`` queries, one after another, to find the node nearest
        ``key``: each answers with its contact nearest the key (alpha = 1)."""
        ids = self.graph.ids
        queried: list[int] = []
        here = source
        while True:
            best = min(self.table(here), key=lambda v: ids[v] ^ key, default=here)
            if ids[best] ^ key >= ids[here] ^ key:
                return queried
            queried.append(best)
            here = best


def tree_design(
    graph: Graph, tree: Tree, k: int, lookups: int, rng: random.Random
) -> tuple[Figures, Figures]:
    """State and control per node, with tree coordinates and Kademlia lookups."""
    kademlia = Kademlia(graph, k, rng)
    received = [0.0] * graph.size
    # Tree upkeep: every node announces its coordinates to each neighbour, each round.
    for u in range(graph.size):
        for v in graph.out[u]:
            received[v] += ROUNDS_PER_HOUR
    # Kademlia upkeep, by a sample of nodes, scaled to all: one lookup per bucket and
    # storing its coordinates at the k nodes nearest its id; every query and answer
    # routed greedily over the tree, each hop a message received.
    sample = rng.sample(range(graph.size), min(lookups, graph.size))
    scale = graph.size / len(sample)
    state = []
    for node in range(graph.size):
        state.append(len(graph.out[node]) + sum(min(k, len(run)) for run in kademlia.buckets(node)))
    for node in sample:
        keys = [graph.ids[node]] + [
            kademlia.sorted_ids[run[len(run) // 2]] for run in kademlia.buckets(node)
        ]
        for key in keys:
            for queried in kademlia.lookup(node, key):
                path = greedy_path(graph, tree, node, queried)
                assert path is not None
                for hop in path[1:]:
                    received[hop] += scale  # the query ...
                for hop in path[:-1]:
                    received[hop] += scale  # ... and its answer, back the same way
    return spread(state), load(received)


# -- interests ----------------------------------------------------------------------------


def follows(graph: Graph, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(follower, followed) pairs: each node follows ``count`` others, popular ones more
    (weights 1/rank, as the chirp scenario's few popular users)."""
    nodes = list(range(graph.size))
    weights = [1 / (rank + 1) for rank in range(graph.size)]
    popularity = nodes[:]
    rng.shuffle(popularity)
    pairs = []
    for follower in nodes:
        chosen: set[int] = set()
        while len(chosen) < min(count, graph.size - 1):
            (pick,) = rng.choices(popularity, weights)
            if pick != follower:
                chosen.add(pick)
        pairs += [(follower, followed) for followed in sorted(chosen)]
    return pairs


def interest_tables(
    graph: Graph, tree: Tree, pairs: Sequence[tuple[int, int]]
) -> dict[str, Figures]:
    """Entries per node: flooded, every node holds each followed topic once per
    neighbour it came from (at most its degree); routed toward the owner, only the
    nodes on the way hold it, once per neighbour it came from."""
    topics = {followed for _, followed in pairs}
    flooded = [len(topics) for _ in range(graph.size)]
    entries: list[set[tuple[int, int]]] = [set() for _ in range(graph.size)]
    paths: dict[tuple[int, int], list[int]] = {}
    for follower, followed in pairs:
        path = paths.get((follower, followed))
        if path is None:
            path = greedy_path(graph, tree, follower, followed)
            assert path is not None
        for came_from, holder in itertools.pairwise(path):
            entries[holder].add((followed, came_from))
    return {"flood": spread(flooded), "tree": spread([len(held) for held in entries])}


def stretch(graph: Graph, tree: Tree, pairs: int, rng: random.Random) -> dict[str, Figures]:
    results: dict[str, list[float]] = {"flood": [], "tree": []}
    arrived = 0
    sources = rng.sample(range(graph.size), min(pairs, graph.size))
    for source in sources:
        dist = distances_from(graph, source)
        target = rng.randrange(graph.size)
        while target == source:
            target = rng.randrange(graph.size)
        path = greedy_path(graph, tree, source, target)
        results["flood"].append(1.0)
        if path is not None:
            arrived += 1
            results["tree"].append((len(path) - 1) / dist[target])
    return {
        name: {
            "mean": statistics.fmean(values),
            "p99": percentile(values, 0.99),
            "arrived": (arrived if name == "tree" else len(sources)) / len(sources),
        }
        for name, values in results.items()
    }


@dataclasses.dataclass
class Design:
    """One design's figures at one N (see the module docstring)."""

    state: Figures
    control: Figures
    interests: Figures
    stretch: Figures


@dataclasses.dataclass
class Result:
    nodes: int
    depth: int  # of the tree
    designs: dict[str, Design]
    seconds: float


def measure(count: int, args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    rng = random.Random(args.seed * 1_000_003 + count)
    graph = mesh_graph(count, rng)
    tree = spanning_tree(graph)
    pairs = follows(graph, args.follows, rng)
    interests = interest_tables(graph, tree, pairs)
    paths = stretch(graph, tree, args.pairs, rng)
    flood_state, flood_control = flood(graph, args.flood_origins, rng)
    tree_state, tree_control = tree_design(graph, tree, args.bucket, args.lookups, rng)
    designs = {
        "flood": Design(flood_state, flood_control, interests["flood"], paths["flood"]),
        "tree": Design(tree_state, tree_control, interests["tree"], paths["tree"]),
    }
    return Result(count, max(tree.depth), designs, time.perf_counter() - started)


def table(results: Sequence[Result]) -> str:
    lines = [
        f"{'nodes':>6} {'design':6} {'state med/max':>15} {'control/h mean/p99/max':>28}"
        f" {'interests med/max':>19} {'stretch mean/p99':>17} {'arrived':>8}"
    ]
    for result in results:
        for name, design in result.designs.items():
            state, control, interests, paths = (
                design.state, design.control, design.interests, design.stretch
            )  # fmt: skip
            lines.append(
                f"{result.nodes:>6} {name:6}"
                f" {state['median']:>7,.0f}/{state['max']:<7,.0f}"
                f" {control['mean']:>8,.0f}/{control['p99']:>8,.0f}/{control['max']:>9,.0f}"
                f" {interests['median']:>9,.0f}/{interests['max']:<9,.0f}"
                f" {paths['mean']:>8.2f}/{paths['p99']:<8.2f}"
                f" {paths['arrived']:>8.1%}"
            )
    return "\n".join(lines)


def growth(results: Sequence[Result]) -> list[str]:
    """Per design, how much each per-node figure grows between the two largest N."""
    first, last = (results[-2], results[-1]) if len(results) > 1 else (results[0], results[0])
    lines = []
    for name in first.designs:
        a, b = first.designs[name], last.designs[name]
        parts = [
            f"state {b.state['median'] / a.state['median']:.1f}x (median)",
            f"control {b.control['mean'] / a.control['mean']:.1f}x (mean)",
            f"interests {b.interests['median'] / max(a.interests['median'], 1):.1f}x (median)",
        ]
        lines.append(f"{name}: from {first.nodes:,} to {last.nodes:,} nodes, " + ", ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--follows", type=int, default=5, help="topics each node follows")
    parser.add_argument("--pairs", type=int, default=300, help="pairs routed for the stretch")
    parser.add_argument("--bucket", type=int, default=8, help="Kademlia's k")
    parser.add_argument("--lookups", type=int, default=300, help="nodes whose upkeep is routed")
    parser.add_argument("--flood-origins", type=int, default=300, help="announces flooded")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    results = [measure(count, args) for count in sorted(args.nodes)]
    if args.json:
        document = {"results": [dataclasses.asdict(r) for r in results], "growth": growth(results)}
        print(json.dumps(document, indent=1))
        return
    print(table(results))
    print()
    for line in growth(results):
        print(line)
    depths = ", ".join(f"{r.depth} at {r.nodes:,}" for r in results)
    print(f"(model: {sum(r.seconds for r in results):.0f} s; tree depth {depths})")


if __name__ == "__main__":
    main()
