"""Scenario scripts, and running one from start to report.

A :class:`Scenario` builds its nodes and topology on a fresh :class:`Simulation`, drives
traffic and faults, and lets virtual time run to the requested duration; the report is
taken then. Traffic (:func:`generate_traffic`: each message handed to the mesh once)
stops 10% of the duration (at most a minute) before the end, so messages in flight can
land.

The small scenarios (``chain``, ``star``, ``lossy``, ``partition``, ``nat``, ``churn``)
make neighbours talk and also pairs two or more hops apart (a chain's ends, leaves of a
star through the hub, NATed leaves across their ring). ``mesh`` is the big one: a
random graph of low degree (:data:`MESH_DEGREE`) over two thirds of the nodes; the
other third are NATed, each attached to one relay (a random public node) and peered,
through that relay's URL, with one more public node. On links with 1% segment loss,
with nodes crashing and restarting (store kept) and a connected region (a seventh of
the public nodes, with the NATed nodes attached there) cut off from 30% to 45% of the
run, as many random pairs as there are nodes, none of them neighbours, exchange
messages with delivery receipts (:data:`MESH_INTERVAL` s apart on average per pair).
Its nodes announce every :data:`MESH_ANNOUNCE_INTERVAL` s.

``chirp`` is a toy Twitter over publish/subscribe on the same network (built by the
same code, with the same links, announce interval, churn and direct messages between
non-neighbours, but no partition). Each user follows :data:`CHIRP_FOLLOWS` others,
drawn with weights 1/rank over a random order of popularity (a few are followed by
many); the follows are set up first (they are kept in the nodes' stores, so they survive
restarts), and posting starts once every author knows each of its followers and a way
to it (at most :data:`CHIRP_SETTLE` s). Each user then posts (``node.chirp.post``,
:data:`CHIRP_POST_SIZE` characters) as a Poisson process, every
:data:`CHIRP_POST_INTERVAL` s on average, while its node is up, and every node's
application reads its ``chirp`` subscription while it runs (see
:class:`simulations.SimNode`). Posts stop when the traffic does; nodes stop crashing
:data:`CHIRP_CHURN_MARGIN` s before that, so each is back up before the quiet tail, and
every post (they live a week) must reach each follower by the end, exactly once.

``revocation`` measures how long a capability's revocation takes to reach every node
(simulations/_revocation.py): on the mesh scenario's network (built by the same code,
same links and announce interval, direct messages between non-neighbours, no churn
and no partition), an owner's ``publish`` capability on its feed, delegated on to a
third node that posts with it every few seconds, is revoked at :data:`REVOKE_AT` of
the run; a few NATed nodes are down meanwhile and come back later. The report tells
how long each node took to learn it, what its flood cost, and that nothing posted
under it got through once the nodes knew.

:func:`run_scenario` runs one in its own ``trio.run`` under a :class:`VirtualClock`
(virtual time as ``MockClock(autojump_threshold=0)`` keeps it, in fewer passes of
trio's loop), with trio's scheduler made deterministic and
seeded from the seed (trio otherwise shuffles tasks woken together with an unseeded
RNG; it offers the switch for Hypothesis, ``trio._core._run``). So the same scenario,
nodes, duration and seed give the same report, all but ``wall_seconds``.

httpcore's kept-alive connections expire by trio's (virtual) clock while a simulation
is open (see :func:`simulations.open_simulation`), so how fast the machine runs a
scenario changes nothing in its report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import math
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import trio
from trio._core import _run as trio_run

from node import NodeConfig
from simulations._clock import VirtualClock
from simulations._engine import Fidelity
from simulations._engine import fidelity as fidelity_of
from simulations._errors import SimulationError
from simulations._gc import collecting_seldom
from simulations._link import Link
from simulations._report import Report, format_duration
from simulations._revocation import ABSENT_PER, SUBSCRIBERS_PER, RevocationWatch
from simulations._simulation import (
    Signatures,
    SimNode,
    Simulation,
    Stores,
    open_simulation,
    signatures_of,
    stores_of,
)
from simulations._topology import Strangers, both_ways, chain, random_graph, ring, star
from simulations._traffic import generate_traffic

__all__ = ["SCENARIOS", "Progress", "Scenario", "run_scenario"]

#: A link across a city or a country: 20-30 ms one way, 10 Mbit/s each way.
WAN: Final = Link(latency=0.020, jitter=0.010, bandwidth=1.25e6)
#: A bad link: WAN plus 2% segment loss, 1% of writes resetting their connection.
LOSSY: Final = dataclasses.replace(WAN, jitter=0.030, loss=0.02, reset=0.01)
#: The mesh scenario's links: WAN plus 1% segment loss.
MESH_LINK: Final = dataclasses.replace(WAN, loss=0.01)
#: Mean virtual seconds between two messages of one talking pair, and message size.
INTERVAL: Final = 10.0
SIZE: Final = 200
#: The mesh scenario: average degree of the graph of public nodes, and the mean
#: seconds between two messages of one pair (there are as many pairs as nodes).
MESH_DEGREE: Final = 3.0
MESH_INTERVAL: Final = 60.0
#: The mesh scenario's announce interval (s): routes lapse after three.
MESH_ANNOUNCE_INTERVAL: Final = 600.0
#: How long a crashed node stays down in the mesh and chirp scenarios (s, uniform).
CHURN_DOWNTIME: Final = (10.0, 90.0)
#: The chirp scenario: mean seconds between two posts of one user; post size
#: (characters); how many users each one follows (uniform between the bounds).
CHIRP_POST_INTERVAL: Final = 450.0
CHIRP_POST_SIZE: Final = 100
CHIRP_FOLLOWS: Final = (3, 8)
#: The chirp scenario's churn stops crashing nodes this long before posts stop (s), so
#: that every node is back up (within :data:`CHURN_DOWNTIME`) before the quiet tail.
CHIRP_CHURN_MARGIN: Final = CHURN_DOWNTIME[1]
#: How long the chirp scenario waits at most for the follows to spread (s; and a
#: quarter of the time before the quiet tail). With the tree, a follow made in the first
#: second goes to its author once the follower has found the author's place in a DHT
#: that is still filling: at 1,000 nodes some took over three minutes, and posts made
#: before an author knew a follower never went to it.
CHIRP_SETTLE: Final = 600.0
#: The revocation scenario: when the owner revokes, as a share of the run.
REVOKE_AT: Final = 0.4

Script = Callable[[Simulation, int, float], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named script: ``script(sim, nodes, duration)`` builds and drives a simulation."""

    name: str
    summary: str
    script: Script
    link: Link = WAN
    default_nodes: int = 10
    min_nodes: int = 2
    #: :class:`node.NodeConfig` fields the scenario's nodes use (over the simulation's).
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    async def play(self, sim: Simulation, *, nodes: int, duration: float) -> None:
        """Run the script on ``sim`` (whose default link and node configuration it sets)
        until ``duration``.

        Raises :class:`SimulationError` for fewer nodes than the scenario needs.
        """
        if nodes < self.min_nodes:
            raise SimulationError(f"scenario {self.name} needs at least {self.min_nodes} nodes")
        sim.network.default_link = self.link
        sim.config = dataclasses.replace(sim.config, **self.config)
        await self.script(sim, nodes, duration)
        await sim.advance_to(duration)


def quiet_at(duration: float) -> float:
    """When traffic stops: 10% of the duration, at most a minute, before the end."""
    return duration - min(60.0, duration * 0.1)


async def _talk(
    sim: Simulation,
    pairs: list[tuple[SimNode, SimNode]],
    duration: float,
    *,
    interval: float = INTERVAL,
    receipt: bool = False,
) -> None:
    with trio.move_on_at(sim.start_time + duration):
        await generate_traffic(
            sim, pairs, interval=interval, size=SIZE, until=quiet_at(duration), receipt=receipt
        )


def _across(nodes: list[SimNode]) -> list[tuple[SimNode, SimNode]]:
    """Each node with the one two places on (wrapping): pairs that are not adjacent in
    a chain or a ring of ``nodes`` (none below 4 nodes)."""
    if len(nodes) < 4:
        return []
    return [(node, nodes[(index + 2) % len(nodes)]) for index, node in enumerate(nodes)]


async def _chain(sim: Simulation, count: int, duration: float) -> None:
    nodes = await sim.add_nodes(count)
    await sim.peer_all(chain(nodes))
    ends = [(nodes[0], nodes[-1])] if count > 2 else []
    await _talk(sim, both_ways(chain(nodes) + ends), duration)


async def _star(sim: Simulation, count: int, duration: float) -> None:
    hub, *leaves = await sim.add_nodes(count)
    await sim.peer_all(star(hub, leaves))
    await _talk(sim, both_ways(star(hub, leaves) + _leaf_pairs(leaves)), duration)


def _leaf_pairs(leaves: list[SimNode]) -> list[tuple[SimNode, SimNode]]:
    """Each leaf with the next (two hops, through the hub)."""
    return chain(leaves)


async def _partition(sim: Simulation, count: int, duration: float) -> None:
    hub, *leaves = await sim.add_nodes(count)
    await sim.peer_all(star(hub, leaves))
    cut = len(leaves) // 2
    async with trio.open_nursery() as nursery:
        pairs = both_ways(star(hub, leaves) + _leaf_pairs(leaves))
        nursery.start_soon(_talk, sim, pairs, duration)
        await sim.advance_to(duration * 0.2)
        sim.partition([[hub, *leaves[:cut]], leaves[cut:]])
        await sim.advance_to(duration * 0.5)
        sim.heal()


async def _nat(sim: Simulation, count: int, duration: float) -> None:
    # The hub is a relay; every leaf is behind a NAT, attached to it (Reverse HTTP), and
    # advertises the relay URL first. Leaves peer in a ring (through each other's relay
    # URL) and talk to their ring neighbours and across the ring, so every message goes
    # leaf -> relay -> (reversed connection) -> leaf, some of them twice.
    relay = await sim.add_node("relay")
    leaves = await sim.add_nodes(
        count - 1, prefix="nat", nat=True, relays=(relay.node.address_token(),)
    )
    for leaf in leaves:
        await leaf.node.links[0].wait_connected(1)
    pairs = ring(leaves) if len(leaves) > 2 else chain(leaves)
    await sim.peer_all(pairs)
    await _talk(sim, both_ways(pairs + _across(leaves)), duration)


async def _churn(sim: Simulation, count: int, duration: float) -> None:
    hub, *leaves = await sim.add_nodes(count)
    await sim.peer_all(star(hub, leaves))
    churn = functools.partial(
        sim.run_churn,
        leaves,
        interval=max(30.0, duration / 20),
        downtime=(10.0, 90.0),
        until=quiet_at(duration) - 90.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn)
        pairs = both_ways(star(hub, leaves) + _leaf_pairs(leaves))
        nursery.start_soon(_talk, sim, pairs, duration)


@dataclasses.dataclass
class _MeshTopology:
    """The ``mesh`` scenario's network (see :func:`_build_mesh`)."""

    public: list[SimNode]
    natted: list[SimNode]
    #: The graph of public nodes.
    edges: list[tuple[SimNode, SimNode]]
    relay_of: dict[str, SimNode]
    #: Every pair of neighbours, by name.
    neighbours: set[frozenset[str]]

    @property
    def everyone(self) -> list[SimNode]:
        return [*self.public, *self.natted]

    def strangers(self) -> Strangers[SimNode]:
        """Every ordered pair of nodes that are not neighbours (computed as sampled)."""
        everyone = self.everyone
        index = {node.name: i for i, node in enumerate(everyone)}
        return Strangers(everyone, ((index[a], index[b]) for a, b in self.neighbours))


async def _build_mesh(sim: Simulation, count: int, rng: random.Random) -> _MeshTopology:
    """Start ``count`` nodes and peer them as the ``mesh`` scenario does: a random graph
    of low degree over two thirds of them (public), the other third NATed, each attached
    to a relay (a random public node) and peered with one more public node."""
    natted_count = count // 3
    public = await sim.add_nodes(count - natted_count)
    edges = random_graph(public, MESH_DEGREE, rng)
    await sim.peer_all(edges)
    # Each NATed node is attached to one relay (a random public node) and also peers,
    # through its relay URL, with one other public node: it is reachable through its
    # relay only, but can send by two ways.
    natted: list[SimNode] = []
    relay_of: dict[str, SimNode] = {}
    neighbours = {frozenset((a.name, b.name)) for a, b in edges}
    extra: list[tuple[SimNode, SimNode]] = []
    for _ in range(natted_count):
        at = rng.randrange(len(public))
        relay = public[at]
        (node,) = await sim.add_nodes(
            1, prefix="nat", nat=True, relays=(relay.node.address_token(),)
        )
        natted.append(node)
        relay_of[node.name] = relay
        neighbours.add(frozenset((node.name, relay.name)))
        if len(public) > 1:
            # A random public node other than the relay (as from the list without it).
            pick = rng.randrange(len(public) - 1)
            other = public[pick if pick < at else pick + 1]
            extra.append((node, other))
            neighbours.add(frozenset((node.name, other.name)))
    for node in natted:
        await node.node.links[0].wait_connected(1)
    # A NATed node also peers with its relay (tokens both ways, as `ptth peer add` on
    # each side): the relay then knows its address and forwards for it whether or not
    # it is attached at the moment (e.g. while re-attaching after a crash).
    await sim.peer_all([(node, relay_of[node.name]) for node in natted])
    await sim.peer_all(extra)
    return _MeshTopology(public, natted, edges, relay_of, neighbours)


def _mesh_churn(
    sim: Simulation, nodes: list[SimNode], duration: float, *, until: float
) -> Callable[[], Awaitable[None]]:
    """The ``mesh`` scenario's churn of ``nodes``, crashing until ``until``."""
    return functools.partial(
        sim.run_churn,
        nodes,
        interval=max(20.0, duration / max(1, len(nodes) // 5)),
        downtime=CHURN_DOWNTIME,
        until=until,
    )


async def _mesh(sim: Simulation, count: int, duration: float) -> None:
    rng = sim.rng("mesh")
    net = await _build_mesh(sim, count, rng)
    everyone = net.everyone
    # Traffic between random pairs that are not neighbours: every message crosses hops.
    strangers = net.strangers()
    pairs = rng.sample(strangers, min(count, len(strangers)))
    # A region (a connected part of the graph, with the NATed nodes attached in it) is
    # cut off from 30% to 45% of the run; nodes crash and restart throughout.
    region = _region(net.public, net.edges, max(1, len(net.public) // 7), rng)
    region += [node for node in net.natted if net.relay_of[node.name] in region]
    churn = _mesh_churn(sim, everyone, duration, until=quiet_at(duration) - CHURN_DOWNTIME[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn)
        nursery.start_soon(
            functools.partial(_talk, sim, pairs, duration, interval=MESH_INTERVAL, receipt=True)
        )
        if len(region) < len(everyone):
            await sim.advance_to(duration * 0.30)
            sim.partition([region])
            await sim.advance_to(duration * 0.45)
            sim.heal()


async def _chirp(sim: Simulation, count: int, duration: float) -> None:
    rng = sim.rng("chirp")
    net = await _build_mesh(sim, count, rng)
    users = net.everyone
    for user, followed in _choose_follows(users, rng).items():
        await user.follow(*followed)
    await _spread_follows(sim, users, until=min(CHIRP_SETTLE, quiet_at(duration) / 4))
    strangers = net.strangers()
    pairs = rng.sample(strangers, min(count, len(strangers)))
    until = quiet_at(duration)
    churn = _mesh_churn(sim, users, duration, until=until - CHIRP_CHURN_MARGIN)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn)
        nursery.start_soon(_post_at_random, sim, users, until)
        nursery.start_soon(
            functools.partial(_talk, sim, pairs, duration, interval=MESH_INTERVAL, receipt=True)
        )


async def _revocation(sim: Simulation, count: int, duration: float) -> None:
    rng = sim.rng("revocation")
    net = await _build_mesh(sim, count, rng)
    everyone = net.everyone
    owner, issuer, holder = rng.sample(net.public, 3)
    absent = rng.sample(net.natted, min(len(net.natted), max(1, count // ABSENT_PER)))
    others = [node for node in everyone if node is not holder and node not in absent]
    subscribers = rng.sample(others, min(len(others), max(2, count // SUBSCRIBERS_PER)))
    watch = RevocationWatch(
        sim,
        owner=owner,
        issuer=issuer,
        holder=holder,
        subscribers=subscribers,
        absent=absent,
        revoke_at=duration * REVOKE_AT,
    )
    sim.revocation_report = watch.report
    for node in everyone:
        watch.attach(node)
    strangers = net.strangers()
    pairs = rng.sample(strangers, min(count, len(strangers)))
    until = quiet_at(duration)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(_talk, sim, pairs, duration, interval=MESH_INTERVAL, receipt=True)
        )
        for subscriber in subscribers:
            nursery.start_soon(watch.read_feed, subscriber)
        started = sim.now
        settle = min(CHIRP_SETTLE, watch.revoke_at / 2)
        while not watch.holder_knows_subscribers() and sim.now < settle:
            await sim.advance(1.0)
        sim.log(f"subscribers known to the holder after {format_duration(sim.now - started)}")
        async with trio.open_nursery() as acts:
            acts.start_soon(watch.post_until, until)
            acts.start_soon(watch.revoke_in_absence, until)
        await sim.advance_to(duration)
        nursery.cancel_scope.cancel()


def _choose_follows(users: list[SimNode], rng: random.Random) -> dict[SimNode, list[SimNode]]:
    """Whom each user follows: between :data:`CHIRP_FOLLOWS` others, drawn without
    repeats with weights 1/rank over a random order of popularity (Zipf: the first
    users in it are followed by many, most by a few)."""
    ranked = rng.sample(users, len(users))
    weight = {user.name: 1 / rank for rank, user in enumerate(ranked, start=1)}
    follows: dict[SimNode, list[SimNode]] = {}
    for user in users:
        others = [other for other in ranked if other is not user]
        wanted = min(len(others), rng.randint(*CHIRP_FOLLOWS))
        chosen: list[SimNode] = []
        while len(chosen) < wanted:
            (pick,) = rng.choices(others, weights=[weight[other.name] for other in others])
            chosen.append(pick)
            others.remove(pick)
        follows[user] = chosen
    return follows


async def _spread_follows(sim: Simulation, users: list[SimNode], *, until: float) -> None:
    """Let time pass until each author knows each of its followers' interest and a
    route to it (or until ``until``): posts made before would not go to them."""
    started = sim.now
    while not all(_knows(author, user) for user in users for author in user.following):
        if sim.now >= until:
            sim.log(f"follows not all known after {format_duration(sim.now - started)}")
            return
        await sim.advance(1.0)
    sim.log(f"follows known after {format_duration(sim.now - started)}")


def _knows(author: SimNode, follower: SimNode) -> bool:
    """``author`` knows ``follower`` follows it, and a way to it."""
    mesh = author.node.mesh
    return follower.node_id in author.followers_known() and (
        mesh.router.next_hop(follower.node_id, mesh.clock()) is not None
    )


async def _post_at_random(sim: Simulation, users: list[SimNode], until: float) -> None:
    """Each user posts as a Poisson process (mean :data:`CHIRP_POST_INTERVAL` s) until
    ``until``; a user whose node is down posts nothing meanwhile."""
    sources = [sim.rng("posts", user.name) for user in users]
    numbers = [0] * len(users)
    start = sim.now
    rate = 1 / CHIRP_POST_INTERVAL
    schedule = [(start + rng.expovariate(rate), index) for index, rng in enumerate(sources)]
    heapq.heapify(schedule)
    while schedule:
        when, index = schedule[0]
        if when >= until:
            return
        await sim.advance_to(when)
        heapq.heapreplace(schedule, (when + sources[index].expovariate(rate), index))
        user = users[index]
        text = (f"{user.name} #{numbers[index]} " + "." * CHIRP_POST_SIZE)[:CHIRP_POST_SIZE]
        numbers[index] += 1
        if user.up:
            await user.chirp(text)


def _region(
    nodes: list[SimNode],
    edges: list[tuple[SimNode, SimNode]],
    size: int,
    rng: random.Random,
) -> list[SimNode]:
    """``size`` nodes connected among themselves: a breadth-first walk from a random one."""
    adjacent: dict[str, list[SimNode]] = {node.name: [] for node in nodes}
    for a, b in edges:
        adjacent[a.name].append(b)
        adjacent[b.name].append(a)
    first = nodes[rng.randrange(len(nodes))]
    region, frontier = [first], [first]
    seen = {first.name}
    while frontier and len(region) < size:
        here = frontier.pop(0)
        for other in adjacent[here.name]:
            if other.name not in seen and len(region) < size:
                seen.add(other.name)
                region.append(other)
                frontier.append(other)
    return region


SCENARIOS: Final[Mapping[str, Scenario]] = MappingProxyType(
    {
        scenario.name: scenario
        for scenario in (
            Scenario(
                "chain",
                "a chain of direct peers; each node talks to its neighbours, and the two "
                "ends to each other (WAN links)",
                _chain,
            ),
            Scenario(
                "star",
                "a hub peered with every leaf; leaves and hub talk both ways (WAN links)",
                _star,
            ),
            Scenario(
                "lossy",
                "the chain on bad links: 2% segment loss, 1% of writes reset",
                _chain,
                link=LOSSY,
            ),
            Scenario(
                "partition",
                "the star, half the leaves cut off from 20% to 50% of the run, then healed",
                _partition,
                min_nodes=3,
            ),
            Scenario(
                "nat",
                "NATed leaves attached to a relay hub talk to each other through it, on "
                "lossy links (2% segment loss, 1% of writes reset)",
                _nat,
                link=LOSSY,
                min_nodes=3,
            ),
            Scenario(
                "churn",
                "the star, leaves crashing and restarting (store kept) every few minutes",
                _churn,
                min_nodes=2,
            ),
            Scenario(
                "mesh",
                "a random low-degree graph, a third of the nodes NATed behind relays, 1% "
                "segment loss, churn and a healed partition; random non-neighbours talk",
                _mesh,
                link=MESH_LINK,
                default_nodes=200,
                min_nodes=4,
                config=MappingProxyType({"announce_interval": MESH_ANNOUNCE_INTERVAL}),
            ),
            Scenario(
                "chirp",
                "toy Twitter over publish/subscribe on the mesh scenario's network (1% "
                "segment loss, churn): users follow others (a few popular ones by many) "
                "and post; non-neighbours also exchange direct messages",
                _chirp,
                link=MESH_LINK,
                default_nodes=200,
                min_nodes=4,
                config=MappingProxyType({"announce_interval": MESH_ANNOUNCE_INTERVAL}),
            ),
            Scenario(
                "revocation",
                "the mesh scenario's network without churn: an owner's capability, "
                "delegated on to a third node that posts with it, is revoked; how long "
                "until every node knows, and what gets through meanwhile",
                _revocation,
                link=MESH_LINK,
                default_nodes=200,
                min_nodes=4,
                config=MappingProxyType({"announce_interval": MESH_ANNOUNCE_INTERVAL}),
            ),
        )
    }
)


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a run is: virtual seconds done of ``duration``, wall seconds so far."""

    virtual: float
    duration: float
    wall: float
    sent: int
    delivered: int


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make trio's scheduler deterministic and seed it, for one ``trio.run``: tasks that
    wake at the same virtual instant then run in the same order every time, so a
    simulation run with the same seed gives the same figures (:func:`run_scenario`,
    ``benchmarks/scale.py``).

    Uses the switch trio keeps for Hypothesis (``trio._core._run``); if a trio release
    moves it, runs are still correct, only perhaps not repeatable to the bit.
    """
    switch = "_ALLOW_DETERMINISTIC_SCHEDULING"
    rng = getattr(trio_run, "_r", None)
    if not isinstance(rng, random.Random) or not hasattr(trio_run, switch):
        yield  # pragma: no cover - another trio
        return
    allowed = getattr(trio_run, switch)
    state = rng.getstate()
    setattr(trio_run, switch, True)
    rng.seed(f"{seed}/trio")
    try:
        yield
    finally:
        setattr(trio_run, switch, allowed)
        rng.setstate(state)


def _scratch_dir() -> tempfile.TemporaryDirectory[str]:
    # Nodes commit with fsync; on tmpfs that costs nothing, on a disk it dominates.
    shm = Path("/dev/shm")  # noqa: S108 - a private TemporaryDirectory inside it
    usable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
    return tempfile.TemporaryDirectory(prefix="ptth-sim-", dir=shm if usable else None)


def run_scenario(
    name: str,
    *,
    nodes: int | None = None,
    seed: int = 0,
    duration: float = 600.0,
    data_dir: Path | str | None = None,
    progress: Callable[[Progress], None] | None = None,
    fidelity: Fidelity | str = Fidelity.FULL,
    verify_once: bool = False,
    stores: Stores | str = Stores.MEMORY,
    signatures: Signatures | str = Signatures.ED25519,
    tree: bool = False,
    announce_radius: int | None = None,
) -> Report:
    """Run scenario ``name`` in virtual time and return its report.

    ``nodes`` defaults to the scenario's; ``data_dir`` (default: a temporary directory,
    on tmpfs when there is one) holds the nodes' directories; ``progress`` is called
    at every 1% of the duration; ``fidelity``: ``"full"`` (every byte through HTTP) or
    ``"engine"`` (frames handed between the nodes' meshes; simulations/_engine.py);
    ``verify_once`` and ``signatures``: as for :func:`open_simulation`; ``tree`` and
    ``announce_radius``:
    the nodes' routing (``NodeConfig.tree``: greedy routing by tree coordinates where no
    route is known; ``NodeConfig.announce_radius``: how far announces go, with the tree).
    Not from inside a trio run (it runs its own).

    The nodes' stores commit without waiting for the disk (``NodeConfig.store_sync``
    False): a simulated crash ends a node's process, never the machine, so nothing
    committed is lost either way, and each commit costs less. For the same reason
    they are kept in memory by default (``stores``, as for :func:`open_simulation`):
    no scenario models a crash that loses unsynced data; ``"disk"`` runs the SQLite
    files of a real node, with the same report. They are lean
    (``NodeConfig.store_lean``): SQLite's memory per node kept small.

    Raises :class:`SimulationError` for an unknown scenario, too few nodes, a
    duration that is not positive, an unknown fidelity or stores; :class:`NodeError`
    for an announce radius without the tree, or out of range.
    """
    config = NodeConfig(
        store_sync=False, store_lean=True, tree=tree, announce_radius=announce_radius
    )
    config.router_config()  # checks the routing settings before anything starts
    level = fidelity_of(fidelity)
    where = stores_of(stores)
    signing = signatures_of(signatures)
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise SimulationError(f"no scenario {name!r}; there are: {', '.join(SCENARIOS)}")
    count = scenario.default_nodes if nodes is None else nodes
    if count < scenario.min_nodes:
        raise SimulationError(
            f"scenario {name} needs at least {scenario.min_nodes} nodes, not {count}"
        )
    if not (math.isfinite(duration) and duration > 0):
        raise SimulationError(f"duration must be a positive number of seconds, not {duration}")
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(_scratch_dir())
        main = functools.partial(
            _run, scenario, count, seed, duration, Path(data_dir), progress or _ignore, level,
            verify_once, where, config, signing,
        )  # fmt: skip
        with deterministic_scheduling(seed), collecting_seldom():
            report: Report = trio.run(main, clock=VirtualClock())
        return report


def _ignore(progress: Progress) -> None:
    pass


async def _run(
    scenario: Scenario,
    nodes: int,
    seed: int,
    duration: float,
    data_dir: Path,
    progress: Callable[[Progress], None],
    level: Fidelity,
    verify_once: bool,
    stores: Stores,
    config: NodeConfig,
    signatures: Signatures,
) -> Report:
    started = time.perf_counter()
    async with open_simulation(
        seed=seed,
        data_dir=data_dir,
        config=config,
        fidelity=level,
        verify_once=verify_once,
        stores=stores,
        signatures=signatures,
    ) as sim:
        reported = 0

        def report_progress() -> None:
            progress(
                Progress(
                    virtual=sim.now,
                    duration=duration,
                    wall=time.perf_counter() - started,
                    sent=len(sim.ledger.messages),
                    delivered=sim.ledger.deliveries - sim.ledger.duplicates,
                )
            )

        async def tick() -> None:
            # Runs whether or not anyone watches, so that watching changes nothing.
            nonlocal reported
            for step in range(1, 101):
                await sim.advance_to(duration * step / 100)
                report_progress()
                reported = step

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            await scenario.play(sim, nodes=nodes, duration=duration)
            nursery.cancel_scope.cancel()
        if reported < 100:  # the run ended as the last step came due: report the end
            report_progress()
        return sim.report(scenario=scenario.name, wall_seconds=time.perf_counter() - started)
