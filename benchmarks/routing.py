"""Routing designs at scale, compared on the ``mesh`` scenario's graphs: a model, and
ptth's own tree and DHT code run on the same graphs.

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

``tree`` (proposed, modelled): nodes agree on a spanning tree rooted at the node with the least
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
cache bounded by use, not by N, and are not counted. The model's routing tables are
ideal (each bucket as full as its range allows) and its lookups ask one node at a time.

``tree-built`` (the same design, measured): ptth's own sans-IO code run on the same
graph, in virtual time, in this process. Each node has a :class:`crypto.Identity` (from
the seed; the model's ids are the first 64 bits of these node ids, so both have the same
root and parents) and a :class:`mesh.Tree`: public nodes are each other's
``Role.PEER``; a NATed node has its relay as ``Role.RELAY`` (the relay has it as
``Role.ATTACHED``) and its other peer as ``Role.PEER``, and may not be root. The
:class:`mesh.Offer` s they make are delivered over the graph's links, in order on each
link and the links in a random order, from a cold start until none is left; then each
node is ticked at its ``wake_at`` for an hour, counting the offers each receives. A
NATed node's other peer cannot send to it, so its offers are not delivered: a NATed node
knows its relay's coordinates only and routes through it (the model lets it take the
shortcut). Each node has a :class:`mesh.Contacts` filled by Kademlia's join (its graph
neighbours, then a :class:`mesh.Lookup` of its own id, answered from the asked nodes'
contacts, asker and asked learning each other), and stores its signed coordinates in
the :class:`mesh.Records` of the k nodes a lookup of its id finds. Then ``--lookups``
nodes do an hour's upkeep with real lookups (alpha 3): a lookup for each bucket
:meth:`mesh.Contacts.stale_buckets` names, their coordinates stored again at the k
nearest, and one other node's coordinates found (``find_value``). Every query, answer,
store and probe is routed hop by hop with :meth:`mesh.Tree.next_hop` on the nodes' real
coordinates, each hop a message received, scaled to all nodes as the model's. Control:
the hour's offers received plus those messages; state: the neighbours' coordinates a
node holds, its contacts and the records it holds for others; interests and stretch:
over greedy paths by :meth:`mesh.Tree.next_hop`. Skipped above ``--built-max`` nodes.

The model and the run leave out churn (a tree re-forms when a node near the root goes)
and loss; those the simulator measures. Both are deterministic for a ``--seed``.

Usage: python benchmarks/routing.py [--nodes 100 1000 10000] [--built-max N] [--json]
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
import collections
import dataclasses
import functools
import heapq
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence

import crypto
import mesh
from simulations import random_graph

#: As the ``mesh`` scenario: average degree of the public graph, a third NATed.
DEGREE = 3.0
NATTED_SHARE = 3
#: Bits of a node id the model uses, for XOR distances: the first 64 of the real (256-bit)
#: node ids, which order the nodes as the real ids do.
ID_BITS = 64

SEED_SIZE = 32  # bytes of an Ed25519 seed, from which crypto.Identity makes a key pair

#: Figures over nodes (median, max; mean, p99) or over pairs.
Figures = dict[str, float]
#: How a design routes: the nodes a frame visits from a source to a target (None: stuck).
Router = Callable[[int, int], list[int] | None]


@dataclasses.dataclass
class Graph:
    """Nodes 0..n-1; ``out[u]``: the neighbours ``u`` can send to; ``identities[u]``:
    its key pair (``ids[u]``: the first :data:`ID_BITS` of its node id)."""

    ids: list[int]
    out: list[list[int]]
    relay_of: dict[int, int]  # NATed node -> its relay
    identities: list[crypto.Identity] = dataclasses.field(default_factory=list, repr=False)

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
    identities: dict[int, crypto.Identity] = {}
    while len(identities) < count:  # distinct ids (two alike in 64 bits: draw again)
        identity = crypto.Identity(rng.randbytes(SEED_SIZE))
        identities.setdefault(int.from_bytes(identity.node_id.raw[: ID_BITS // 8]), identity)
    return Graph(list(identities), out, relay_of, list(identities.values()))


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


def flooded_interests(graph: Graph, pairs: Sequence[tuple[int, int]]) -> Figures:
    """Entries per node, flooded: every node holds each followed topic (once per
    neighbour it came from, at most its degree: counted once)."""
    topics = {followed for _, followed in pairs}
    return spread([len(topics)] * graph.size)


def routed_interests(graph: Graph, pairs: Sequence[tuple[int, int]], route: Router) -> Figures:
    """Entries per node, routed toward the owner: only the nodes on the way hold a
    topic, once per neighbour it came from."""
    entries: list[set[tuple[int, int]]] = [set() for _ in range(graph.size)]
    for follower, followed in pairs:
        path = route(follower, followed)
        assert path is not None, f"no greedy path from {follower} to {followed}"
        for came_from, holder in itertools.pairwise(path):
            entries[holder].add((followed, came_from))
    return spread([len(held) for held in entries])


# -- stretch ------------------------------------------------------------------------------


def route_pairs(graph: Graph, count: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """``count`` random (source, target, fewest hops) with distinct sources."""
    pairs = []
    for source in rng.sample(range(graph.size), min(count, graph.size)):
        target = rng.randrange(graph.size)
        while target == source:
            target = rng.randrange(graph.size)
        pairs.append((source, target, distances_from(graph, source)[target]))
    return pairs


def stretch(pairs: Sequence[tuple[int, int, int]], route: Router) -> Figures:
    """Hops over the fewest, of the pairs that arrive; and the share that arrive."""
    ratios = []
    for source, target, fewest in pairs:
        path = route(source, target)
        if path is not None:
            ratios.append((len(path) - 1) / fewest)
    return {
        "mean": statistics.fmean(ratios) if ratios else float("nan"),
        "p99": percentile(ratios, 0.99) if ratios else float("nan"),
        "arrived": len(ratios) / len(pairs),
    }


#: Flooding routes over shortest paths, and every frame arrives.
SHORTEST: Figures = {"mean": 1.0, "p99": 1.0, "arrived": 1.0}


@dataclasses.dataclass
class Design:
    """One design's figures at one N (see the module docstring)."""

    state: Figures
    control: Figures
    interests: Figures
    stretch: Figures


# -- the tree and the DHT built by ptth's own code ----------------------------------------

#: Where the built mesh's virtual time starts (ms since the epoch: 2026-12-03).
EPOCH_MS = 1_796_256_000_000
HOUR_MS = 3_600_000
#: A record lapses two hourly rounds after it was last stored.
RECORD_TTL_MS = 2 * HOUR_MS
#: DHT messages by what they are for.
DHT_KINDS = ("refreshes", "stores", "finds", "probes")


class BuiltMesh:
    """The graph's nodes running ptth's sans-IO logic, driven here in virtual time: each
    a :class:`mesh.Tree`, :class:`mesh.Contacts` and :class:`mesh.Records` (see the
    module docstring). Messages take no time: all that a tick sets off is delivered
    before the next tick."""

    def __init__(self, graph: Graph, k: int, rng: random.Random) -> None:
        self.graph = graph
        self.k = k
        self.rng = rng
        self.now = EPOCH_MS
        self.node_ids = [identity.node_id for identity in graph.identities]
        self.index = {node: position for position, node in enumerate(self.node_ids)}
        self.links = [set(out) for out in graph.out]
        self.trees = [
            mesh.Tree(identity, eligible_root=node not in graph.relay_of)
            for node, identity in enumerate(graph.identities)
        ]
        self.contacts = [
            mesh.Contacts(node, k=k, rng=random.Random(rng.getrandbits(64)))
            for node in self.node_ids
        ]
        self.records = [mesh.Records() for _ in self.node_ids]
        #: Offers in flight: a FIFO per directed link, and the links with any.
        self._queues: dict[tuple[int, int], collections.deque[mesh.Offer]] = {}
        self._busy: list[tuple[int, int]] = []
        self._touched: set[int] = set()
        #: Offers each node has received, and those its ticks sent (periodic offers).
        self.received = [0] * graph.size
        self.sent_by_ticks = 0
        #: DHT messages each node has received, scaled (see :meth:`upkeep`).
        self.dht_received = [0.0] * graph.size
        self.dht_kinds: dict[str, float] = dict.fromkeys(DHT_KINDS, 0.0)  # mean per node
        self._scale = 0.0  # while counting (upkeep): nodes each sampled node stands for
        self.unrouted = 0
        self.refused: collections.Counter[str] = collections.Counter()
        #: What greedy routing reads, made by :meth:`freeze`: each node's neighbours it
        #: can send to, with their coordinates; every node's coordinates.
        self._view: list[dict[crypto.NodeId, crypto.Coordinates]] = []
        self._coordinates: list[crypto.Coordinates | None] = []
        self._routes: dict[tuple[int, int], list[int] | None] = {}

    def role(self, node: int, neighbour: int) -> mesh.Role:
        """What ``neighbour`` is to ``node``."""
        if self.graph.relay_of.get(node) == neighbour:
            return mesh.Role.RELAY
        if self.graph.relay_of.get(neighbour) == node:
            return mesh.Role.ATTACHED
        return mesh.Role.PEER

    # -- the tree --------------------------------------------------------------------------

    def _send(self, sender: int, actions: Sequence[mesh.TreeAction]) -> int:
        """Queue the offers among ``actions`` on their links; return how many."""
        queued = 0
        for action in actions:
            if not isinstance(action, mesh.Offer):
                continue
            target = self.index[action.neighbour]
            if target not in self.links[sender]:
                continue  # no link that way: a NATed node's other peer cannot reach it
            queue = self._queues.get((sender, target))
            if queue is None:
                queue = self._queues[sender, target] = collections.deque()
                self._busy.append((sender, target))
            queue.append(action)
            queued += 1
        return queued

    def settle(self) -> None:
        """Deliver offers until none is left: each link's in order, links at random."""
        while self._busy:
            position = self.rng.randrange(len(self._busy))
            sender, target = link = self._busy[position]
            queue = self._queues[link]
            offer = queue.popleft()
            if not queue:
                del self._queues[link]
                self._busy[position] = self._busy[-1]
                self._busy.pop()
            self.received[target] += 1
            self._touched.add(target)
            actions = self.trees[target].on_offer(
                self.node_ids[sender],
                self.role(target, sender),
                offer.chain,
                offer.grant,
                now=self.now,
            )
            self._send(target, actions)

    def cold_start(self) -> int:
        """Every node meets its neighbours at once; the offers delivered until quiet."""
        before = sum(self.received)
        for node, tree in enumerate(self.trees):
            for neighbour in self.graph.out[node]:
                role = self.role(node, neighbour)
                self._send(node, tree.add_neighbour(self.node_ids[neighbour], role, now=self.now))
        self.settle()
        return sum(self.received) - before

    def run(self, duration_ms: int) -> list[int]:
        """Tick each node at its ``wake_at`` for ``duration_ms``, the nodes due at one
        time in a random order, delivering all that each tick sets off; return the
        offers each node received meanwhile."""
        before = list(self.received)
        end = self.now + duration_ms
        wake = [tree.wake_at(self.now) for tree in self.trees]
        heap = [(at, node) for node, at in enumerate(wake) if at is not None]
        heapq.heapify(heap)
        while heap and heap[0][0] <= end:
            self.now = heap[0][0]
            due: dict[int, None] = {}
            while heap and heap[0][0] == self.now:
                at, node = heapq.heappop(heap)
                if wake[node] == at:
                    due[node] = None
            order = list(due)
            self.rng.shuffle(order)
            self._touched = set(order)
            for node in order:
                actions = self.trees[node].tick(self.now)
                self.sent_by_ticks += self._send(node, actions)
                self.settle()
            for node in sorted(self._touched):
                wake[node] = next_wake = self.trees[node].wake_at(self.now)
                if next_wake is not None:
                    heapq.heappush(heap, (next_wake, node))
        self.now = end
        return [after - earlier for after, earlier in zip(self.received, before, strict=True)]

    def freeze(self) -> None:
        """Take the tree as it stands now for greedy routing."""
        self._coordinates = [tree.coordinates for tree in self.trees]
        self._view = []
        for node, tree in enumerate(self.trees):
            known = tree.neighbour_coordinates(self.now)
            self._view.append(
                {
                    self.node_ids[v]: known[self.node_ids[v]]
                    for v in self.graph.out[node]
                    if self.node_ids[v] in known
                }
            )
        self._routes = {}

    def coordinates(self, node: int) -> crypto.Coordinates | None:
        return self._coordinates[node]

    def route(self, source: int, target: int) -> list[int] | None:
        """The nodes a frame visits from ``source`` to ``target``, each hop chosen by
        the node it is at with :meth:`mesh.Tree.next_hop` (None: it got stuck)."""
        if (source, target) in self._routes:
            return self._routes[source, target]
        dest = self._coordinates[target]
        path: list[int] | None = [source]
        here, came_from = source, None
        while path is not None and here != target:
            step = None
            if dest is not None:
                step = self.trees[here].next_hop(dest, self._view[here], avoid=came_from)
            if step is None:
                path = None
            else:
                came_from, here = self.node_ids[here], self.index[step]
                path.append(here)
        self._routes[source, target] = path
        return path

    # -- the DHT ---------------------------------------------------------------------------

    def _exchange(self, asker: int, asked: int, kind: str) -> None:
        """A message and its answer, routed greedily both ways, each hop counted."""
        for source, target in ((asker, asked), (asked, asker)):
            path = self.route(source, target)
            if path is None:
                self.unrouted += 1
                continue
            for hop in path[1:]:
                self.dht_received[hop] += self._scale
            self.dht_kinds[kind] += (len(path) - 1) * self._scale / self.graph.size

    def _see(self, node: int, heard: int, *, counted: bool) -> None:
        """``node`` heard from ``heard``; a probe it asks for is answered (all live)."""
        probe = self.contacts[node].seen(self.node_ids[heard], self.now)
        if probe is not None:
            if counted:
                self._exchange(node, self.index[probe.node], "probes")
            self.contacts[node].probe_answered(probe.node, self.now)

    def lookup(
        self, asker: int, target: crypto.NodeId, kind: str, *, find_value: bool = False
    ) -> mesh.Lookup:
        """A :class:`mesh.Lookup` by ``asker``, done: each query answered at once from
        the asked node's contacts (and records, for a value); counted as ``kind``
        during :meth:`upkeep`."""
        counted = self._scale > 0
        me = self.node_ids[asker]
        search = mesh.Lookup(
            target,
            self.contacts[asker].nearest(target, self.k),
            k=self.k,
            find_value=find_value,
            self_id=me,
        )
        while not search.done:
            batch = search.next_queries()
            assert batch, "a lookup that is not done has queries to send (answers are at once)"
            for node in batch:
                asked = self.index[node]
                if counted:
                    self._exchange(asker, asked, kind)
                self._see(asked, asker, counted=counted)
                record = self.records[asked].get(target, self.now) if find_value else None
                nearest = self.contacts[asked].nearest(target, self.k, exclude=[me])
                search.on_reply(node, nearest, None if record is None else record.value)
                self._see(asker, asked, counted=counted)
        self.contacts[asker].touch(target, self.now)
        return search

    def store(self, node: int) -> None:
        """Store ``node``'s coordinates at the k nodes a lookup of its id finds."""
        coordinates = self.trees[node].coordinates
        assert coordinates is not None
        assert coordinates.chain is not None
        value = coordinates.chain.encode()
        me = self.node_ids[node]
        holders, _ = self.lookup(node, me, "stores").result()
        for holder in holders:
            if self._scale > 0:
                self._exchange(node, self.index[holder], "stores")
            try:
                self.records[self.index[holder]].put(
                    me, value, self.now, RECORD_TTL_MS, version=coordinates.ts, origin=me
                )
            except (crypto.CryptoError, mesh.MeshError) as exc:
                self.refused[type(exc).__name__] += 1

    def join(self) -> None:
        """Kademlia's join, node after node in a random order (its graph neighbours,
        then a lookup of its own id); then each stores its coordinates. Not counted."""
        for node in range(self.graph.size):
            for neighbour in self.graph.out[node]:
                self._see(node, neighbour, counted=False)
        order = self.rng.sample(range(self.graph.size), self.graph.size)
        for node in order:
            self.lookup(node, self.node_ids[node], "joins")
        for node in order:
            self.store(node)

    def _found(self, node: int, wanted: int) -> bool:
        """``node`` finds ``wanted``'s coordinates: held, or by a lookup; True if it
        gets its chain (as signed when stored: grants live 30 minutes, records an hour
        or two, so the chain may have expired since)."""
        key = self.node_ids[wanted]
        record = self.records[node].get(key, self.now)
        if record is None:
            search = self.lookup(node, key, "finds", find_value=True)
            holder = search.value_from
            if holder is None:
                return False
            record = self.records[self.index[holder]].get(key, self.now)
            assert record is not None
        try:
            chain = crypto.CoordChain.parse(record.value, now=record.stored_at)
        except crypto.CryptoError:
            return False
        return chain.node == key

    def upkeep(self, sample: Sequence[int]) -> int:
        """An hour's upkeep by ``sample``, its messages counted scaled to all nodes:
        each refreshes its stale buckets, stores its coordinates again and finds
        another node's. Returns how many found them."""
        self._scale = self.graph.size / len(sample)
        found = 0
        for node in sample:
            for _, target in self.contacts[node].stale_buckets(self.now, HOUR_MS):
                self.lookup(node, target, "refreshes")
            self.store(node)
            other = self.rng.randrange(self.graph.size - 1)
            found += self._found(node, other + (other >= node))
        self._scale = 0.0
        return found

    def state(self) -> list[int]:
        """Per node: neighbours' coordinates held, contacts, records held for others."""
        return [
            len(tree.neighbour_coordinates(self.now)) + len(contacts) + len(records)
            for tree, contacts, records in zip(self.trees, self.contacts, self.records, strict=True)
        ]


@dataclasses.dataclass
class Built:
    """What running the real code measured at one N, beside the table's row."""

    cold_offers: int  # offers delivered from a cold start until none was left
    roots: int  # distinct roots of the nodes' coordinates after the hour (1: one tree)
    placed: float  # share of the nodes with coordinates
    depth: Figures  # of the nodes in the tree: median, max
    offers: Figures  # tree offers received per node in the hour: mean, p99, max
    periodic: float  # share of the hour's offers that ticks made (the rest: new chains)
    per_link: float  # offers per link per announce interval in the hour (1 would do)
    lookups: Figures  # DHT messages received per node per hour (scaled from the sample)
    kinds: dict[str, float]  # the mean of those, by what they were for
    found: float  # share of the sample that found another node's coordinates
    refused_stores: dict[str, int]  # records the holders refused, by reason
    unrouted: int  # DHT messages greedy routing could not deliver
    seconds: float


def built_design(
    graph: Graph,
    follow_pairs: Sequence[tuple[int, int]],
    pairs: Sequence[tuple[int, int, int]],
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[Built, Design]:
    """Run the real code on ``graph`` (see the module docstring)."""
    started = time.perf_counter()
    # Chains are verified again and again (every offer carries its sender's, every
    # hop down the tree one grant longer): remember what verified, for the working
    # set of an announce interval (about one grant per link and a chain per node).
    with crypto.verifying_once(limit=max(100_000, 20 * graph.size)):
        net = BuiltMesh(graph, args.bucket, rng)
        cold = net.cold_start()
        net.join()
        offers = net.run(HOUR_MS)
        net.freeze()
        state = net.state()
        sample = rng.sample(range(graph.size), min(args.lookups, graph.size))
        found = net.upkeep(sample)
        interests = routed_interests(graph, follow_pairs, net.route)
        paths = stretch(pairs, net.route)
    placed = [c for node in range(graph.size) if (c := net.coordinates(node)) is not None]
    control = [o + d for o, d in zip(offers, net.dht_received, strict=True)]
    built = Built(
        cold_offers=cold,
        roots=len({c.root for c in placed}),
        placed=len(placed) / graph.size,
        depth=spread([c.depth for c in placed]),
        offers=load(offers),
        periodic=net.sent_by_ticks / max(1, sum(offers)),
        per_link=sum(offers) / (sum(map(len, net.links)) * ROUNDS_PER_HOUR),
        lookups=load(net.dht_received),
        kinds=net.dht_kinds,
        found=found / len(sample),
        refused_stores=dict(sorted(net.refused.items())),
        unrouted=net.unrouted,
        seconds=time.perf_counter() - started,
    )
    return built, Design(spread(state), load(control), interests, paths)


# -- the report ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    nodes: int
    depth: int  # of the modelled tree
    designs: dict[str, Design]
    seconds: float  # the model's
    built: Built | None = None


def measure(count: int, args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    rng = random.Random(args.seed * 1_000_003 + count)
    graph = mesh_graph(count, rng)
    built_rng = random.Random(rng.getrandbits(64))  # drawn always: the model's figures stay
    tree = spanning_tree(graph)
    follow_pairs = follows(graph, args.follows, rng)
    pairs = route_pairs(graph, args.pairs, rng)
    modelled = functools.partial(greedy_path, graph, tree)
    flood_state, flood_control = flood(graph, args.flood_origins, rng)
    tree_state, tree_control = tree_design(graph, tree, args.bucket, args.lookups, rng)
    designs = {
        "flood": Design(
            flood_state, flood_control, flooded_interests(graph, follow_pairs), SHORTEST
        ),
        "tree": Design(
            tree_state,
            tree_control,
            routed_interests(graph, follow_pairs, modelled),
            stretch(pairs, modelled),
        ),
    }
    result = Result(count, max(tree.depth), designs, time.perf_counter() - started)
    if count <= args.built_max:
        result.built, designs["tree-built"] = built_design(
            graph, follow_pairs, pairs, args, built_rng
        )
    return result


def table(results: Sequence[Result]) -> str:
    lines = [
        f"{'nodes':>6} {'design':10} {'state med/max':>15} {'control/h mean/p99/max':>28}"
        f" {'interests med/max':>19} {'stretch mean/p99':>17} {'arrived':>8}"
    ]
    for result in results:
        for name, design in result.designs.items():
            state, control, interests, paths = (
                design.state, design.control, design.interests, design.stretch
            )  # fmt: skip
            lines.append(
                f"{result.nodes:>6} {name:10}"
                f" {state['median']:>7,.0f}/{state['max']:<7,.0f}"
                f" {control['mean']:>8,.0f}/{control['p99']:>8,.0f}/{control['max']:>9,.0f}"
                f" {interests['median']:>9,.0f}/{interests['max']:<9,.0f}"
                f" {paths['mean']:>8.2f}/{paths['p99']:<8.2f}"
                f" {paths['arrived']:>8.1%}"
            )
    return "\n".join(lines)


def growth(results: Sequence[Result]) -> list[str]:
    """Per design, how much each per-node figure grows between the two largest N it
    was measured at."""
    lines = []
    for name in dict.fromkeys(name for result in results for name in result.designs):
        having = [result for result in results if name in result.designs]
        first, last = having[-2:] if len(having) > 1 else (having[0], having[0])
        a, b = first.designs[name], last.designs[name]
        parts = [
            f"state {b.state['median'] / a.state['median']:.1f}x (median)",
            f"control {b.control['mean'] / a.control['mean']:.1f}x (mean)",
            f"interests {b.interests['median'] / max(a.interests['median'], 1):.1f}x (median)",
        ]
        lines.append(f"{name}: from {first.nodes:,} to {last.nodes:,} nodes, " + ", ".join(parts))
    return lines


def convergence(result: Result) -> list[str]:
    """What the built run measured besides the table, at one N."""
    built = result.built
    if built is None:
        return [f"{result.nodes:>6} tree-built not run (--built-max); model {result.seconds:.0f} s"]
    kinds = ", ".join(f"{kind} {count:,.0f}" for kind, count in built.kinds.items())
    refused = ", ".join(f"{count} {why}" for why, count in built.refused_stores.items())
    return [
        f"{result.nodes:>6} tree-built: quiet after {built.cold_offers:,} offers from a cold"
        f" start ({built.cold_offers / result.nodes:.1f} a node); {built.roots} root(s),"
        f" {built.placed:.0%} placed, depth {built.depth['median']:.0f}/{built.depth['max']:.0f}"
        f" (median/max); run in {built.seconds:.0f} s (model {result.seconds:.0f} s)",
        f"{'':>6} an hour: offers a node {built.offers['mean']:,.0f} (mean;"
        f" {built.per_link:.1f} a link a round, {built.periodic:.0%} from ticks);"
        f" DHT messages a node {built.lookups['mean']:,.0f} (mean: {kinds});"
        f" coordinates found {built.found:.0%}; stores refused: {refused or 'none'};"
        f" unrouted {built.unrouted}",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--follows", type=int, default=5, help="topics each node follows")
    parser.add_argument("--pairs", type=int, default=300, help="pairs routed for the stretch")
    parser.add_argument("--bucket", type=int, default=8, help="Kademlia's k")
    parser.add_argument("--lookups", type=int, default=300, help="nodes whose upkeep is routed")
    parser.add_argument("--flood-origins", type=int, default=300, help="announces flooded")
    parser.add_argument(
        "--built-max", type=int, default=10_000, help="run the real code up to this many nodes"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = []
    for count in sorted(args.nodes):
        results.append(measure(count, args))
        if not args.json:
            print("\n".join(convergence(results[-1])), file=sys.stderr, flush=True)
    if args.json:
        document = {"results": [dataclasses.asdict(r) for r in results], "growth": growth(results)}
        print(json.dumps(document, indent=1))
        return
    print(table(results))
    print()
    for line in growth(results):
        print(line)
    print()
    for result in results:
        print("\n".join(convergence(result)))
    depths = ", ".join(f"{r.depth} at {r.nodes:,}" for r in results)
    print(f"(model: {sum(r.seconds for r in results):.0f} s; tree depth {depths})")


if __name__ == "__main__":
    main()
