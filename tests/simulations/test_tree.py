"""The spanning tree (``NodeConfig.tree``) built by real nodes in the simulator: ``crd``
offers over lossy links, NATed nodes under their relays, a new root when the root
crashes and the old one back when it returns; messages flow meanwhile as ever. And the
DHT on it: each node publishes its coordinates, and any node finds any other's."""

from __future__ import annotations

import random
import re

import pytest
import trio
from trio.testing import MockClock

import crypto
import mesh
from node import NodeConfig, Request
from simulations import Link, SimNode, Simulation, chain, open_simulation, random_graph

#: Announces (and tree offers) every minute: a grant lives three.
INTERVAL = 60.0


def places(nodes: list[SimNode]) -> dict[str, dict[str, object] | None]:
    return {node.name: node.node.status()["tree"] for node in nodes}


def check_tree(nodes: list[SimNode], relay_of: dict[str, SimNode], root: crypto.NodeId) -> None:
    """One tree rooted at ``root``: each node's parent is a neighbour one level up, and a
    NATed node's parent is its relay."""
    by_id = {node.node_id: node for node in nodes}
    for node in nodes:
        tree = node.node.mesh.router.tree
        assert tree is not None
        place = tree.coordinates
        assert place is not None, node.name
        assert place.root == root, node.name
        if node.node_id == root:
            assert tree.parent is None
            continue
        assert tree.parent is not None
        assert node.node.mesh.router.is_neighbour(tree.parent)
        parent = by_id[tree.parent].node.mesh.router.tree
        assert parent is not None
        assert parent.coordinates is not None
        assert parent.coordinates.depth == place.depth - 1
        if node.name in relay_of:
            assert tree.parent == relay_of[node.name].node_id


@pytest.mark.parametrize("fidelity", ["engine", "full"])
async def test_nodes_build_one_tree_and_rebuild_it_when_the_root_crashes(
    autojump_clock: MockClock, fidelity: str
) -> None:
    config = NodeConfig(tree=True, store_sync=False, announce_interval=INTERVAL)
    async with open_simulation(seed=7, config=config, fidelity=fidelity) as sim:
        sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.01)
        await check_building(sim)


async def check_building(sim: Simulation) -> None:
    rng = random.Random(7)
    public = await sim.add_nodes(9, prefix="p")
    await sim.peer_all(random_graph(public, 2.5, rng))
    relay_of: dict[str, SimNode] = {}
    natted: list[SimNode] = []
    for i in range(3):
        relay = public[rng.randrange(len(public))]
        (node,) = await sim.add_nodes(
            1, prefix=f"nat{i}-", nat=True, relays=(relay.node.address_token(),)
        )
        await node.node.links[0].wait_connected(1)
        relay_of[node.name] = relay
        natted.append(node)
    await sim.peer_all([(node, relay_of[node.name]) for node in natted])
    everyone = public + natted

    await sim.advance(INTERVAL)
    root = min(node.node_id for node in public)
    check_tree(everyone, relay_of, root)
    assert all(node.node.statistics.tree_offers_received > 0 for node in everyone)
    shown = places(everyone)
    assert all(place is not None and place["root"] == root.text for place in shown.values())

    # The root crashes: its last statement lapses (three intervals), the rest agree on
    # the least of themselves; messages between the others flow meanwhile.
    (first,) = [node for node in public if node.node_id == root]
    await first.crash()
    rest = [node for node in everyone if node is not first]
    a, b = rest[0], rest[-1]
    await a.send(b, b"while the tree re-forms")
    await sim.advance(4 * INTERVAL)
    survivors = [node for node in public if node is not first]
    # NATed nodes whose relay was the root have no parent now: leave them out.
    placed = [node for node in rest if relay_of.get(node.name) is not first]
    check_tree(placed, relay_of, min(node.node_id for node in survivors))
    with trio.fail_after(600):
        await sim.wait_delivered()

    # It comes back, and is the root again.
    await first.restart()
    await sim.advance(2 * INTERVAL)
    check_tree(everyone, relay_of, root)


def dht_of(node: SimNode) -> mesh.Dht:
    dht = node.node.mesh.router.dht
    assert dht is not None
    return dht


@pytest.mark.parametrize("fidelity", ["engine", "full"])
async def test_nodes_find_each_others_coordinates_in_the_dht(
    autojump_clock: MockClock, fidelity: str
) -> None:
    config = NodeConfig(tree=True, store_sync=False, announce_interval=INTERVAL)
    async with open_simulation(seed=11, config=config, fidelity=fidelity) as sim:
        sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.01)
        rng = random.Random(11)
        nodes = await sim.add_nodes(24, prefix="p")
        await sim.peer_all(random_graph(nodes, 2.5, rng))
        await sim.advance(3 * INTERVAL)  # the tree, then every node's publication
        held = {record.key for node in nodes for record in dht_of(node).records}
        assert held == {node.node_id for node in nodes}  # everyone's are held somewhere
        pairs = [tuple(rng.sample(nodes, 2)) for _ in range(12)]
        found = 0
        for asker, target in pairs:
            with trio.fail_after(120):
                place = await asker.node.mesh.find_coordinates(target.node_id)
            tree = target.node.mesh.router.tree
            assert tree is not None
            assert tree.coordinates is not None
            if place is not None:
                assert place.node == target.node_id  # verified, and the target's own
                assert place.root == tree.coordinates.root
                found += 1
        assert found == len(pairs)
        assert all(node.node.statistics.dht_received > 0 for node in nodes)
        # Every node checked grants (its neighbours' chains at least), and says how many.
        for node in nodes:
            chains = node.node.mesh.router.chains
            scraped = await node.node.metrics.handle(
                Request("GET", "/metrics", [("host", "x")], b"", "test")
            )
            counter = re.search(
                rb"^ptth_coordinate_grants_checked_total (\S+)$", scraped.body, re.M
            )
            assert counter is not None
            assert float(counter.group(1)) == chains.grants_checked > 0


@pytest.mark.parametrize("fidelity", ["engine", "full"])
async def test_messages_beyond_the_announce_radius_go_greedily_by_coordinates(
    autojump_clock: MockClock, fidelity: str
) -> None:
    # Announces go one hop: each node knows routes to its neighbours only. Every other
    # destination is looked up in the DHT and reached greedily through the tree, and
    # its receipts come back the same way.
    config = NodeConfig(tree=True, store_sync=False, announce_interval=INTERVAL, announce_radius=1)
    async with open_simulation(seed=5, config=config, fidelity=fidelity) as sim:
        sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.01)
        rng = random.Random(5)
        public = await sim.add_nodes(24, prefix="p")
        await sim.peer_all(random_graph(public, 2.5, rng))
        relay = public[0]
        (natted,) = await sim.add_nodes(
            1, prefix="nat", nat=True, relays=(relay.node.address_token(),)
        )
        await natted.node.links[0].wait_connected(1)
        await sim.peer_all([(natted, relay)])
        nodes = [*public, natted]
        await sim.advance(3 * INTERVAL)  # the tree, then every node's publication
        for node in nodes:
            neighbours = {link.node for link in node.node.mesh.router.links}
            assert set(node.node.mesh.router.table) <= neighbours, node.name
        pairs = [tuple(rng.sample(nodes, 2)) for _ in range(30)]
        pairs += [(natted, public[-1]), (public[-1], natted)]
        for src, dst in pairs:
            await src.send(dst, b"far away", receipt=True)
        with trio.fail_after(900):
            await sim.wait_delivered()
        report = sim.report()
        assert report.delivered == len(pairs)
        assert report.duplicates == 0
        routers = [node.node.mesh.router for node in nodes]
        assert sum(r.greedy_forwarded for r in routers) > 0
        assert sum(r.route_lookups for r in routers) > 0

        # Publications too: copies go toward each follower greedily.
        author = public[-1]
        followers = [node for node in nodes if node is not author][::4]
        for follower in followers:
            await follower.follow(author)
        await sim.advance(INTERVAL)  # their interests spread (still flooded)
        await author.chirp("to my followers, however far")
        with trio.fail_after(900):
            await sim.wait_posts_delivered()
        chirp = sim.report().chirp
        assert chirp is not None
        assert chirp.delivered == chirp.expected == len(followers)
        assert chirp.duplicates == 0


async def test_a_new_root_spreads_a_flood_interval_a_hop_not_a_tick(
    autojump_clock: MockClock,
) -> None:
    """Offers held back by pacing (one per neighbour per flood interval) go as soon as
    the interval is over, not at the node's next tick (every 15 s): along a line of
    nodes whose least id is at one end, every node is placed under it within a flood
    interval a hop."""
    config = NodeConfig(tree=True, store_sync=False)
    async with open_simulation(seed=3, config=config, fidelity="engine") as sim:
        sim.network.default_link = Link(latency=0.01)
        nodes = sorted(await sim.add_nodes(7), key=lambda node: node.node_id.raw)
        # The least id at one end, the others in the worst order: each node hears of a
        # lesser root, and offers again, once per node nearer that end.
        line = [nodes[0], *reversed(nodes[1:])]
        await sim.peer_all(chain(line))
        flood = mesh.RouterConfig().flood_interval_ms / 1000
        await sim.advance(len(line) * flood + 1)
        check_tree(line, {}, nodes[0].node_id)


@pytest.mark.parametrize("fidelity", ["engine", "full"])
async def test_a_messages_receipt_goes_back_by_the_coordinates_it_came_with(
    autojump_clock: MockClock, fidelity: str
) -> None:
    # Announces go one hop. The sender looks its destination up; the destination learns
    # the sender's coordinates from the message (each hop checks and passes them on),
    # so its receipt goes back greedily with no lookup at all.
    config = NodeConfig(tree=True, store_sync=False, announce_interval=INTERVAL, announce_radius=1)
    async with open_simulation(seed=3, config=config, fidelity=fidelity) as sim:
        nodes = await sim.add_nodes(6)
        await sim.peer_all(chain(nodes))
        await sim.advance(3 * INTERVAL)  # the tree, then every node's publication
        first, last = nodes[0], nodes[-1]
        routers = [node.node.mesh.router for node in nodes]
        for r in routers:
            # What DHT traffic passing by taught them (six nodes: everyone's places).
            r._coordinates.clear()
        before = [r.route_lookups for r in routers]
        await first.send(last, b"far away", receipt=True)
        with trio.fail_after(600):
            while sim.report().acknowledged < 1:
                await sim.ledger.wait_changed()
        assert sim.report().delivered == 1
        lookups = [r.route_lookups - b for r, b in zip(routers, before, strict=True)]
        assert lookups[0] == 1  # the sender's, of the destination
        assert lookups[1:] == [0] * 5
        assert routers[-1].coordinates_of(first.node_id, sim.clock_ms()) is not None
