"""Real nodes on the simulated network: delivery, latency, faults and their recovery."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

import mesh
from node import DeliveryFailed, NodeConfig
from simulations import (
    Link,
    NodeDown,
    NotVirtualTime,
    Simulation,
    SimulationError,
    both_ways,
    chain,
    generate_traffic,
    open_simulation,
    random_graph,
    star,
)


async def test_what_a_test_looks_like(sim: Simulation, autojump_clock: MockClock) -> None:
    sim.network.default_link = Link(latency=0.05)
    a, b, c = await sim.add_nodes(3)
    sim.peer_all(chain([a, b, c]))
    await a.send(b, b"hello b")
    await c.send(b, b"hello from c")
    assert [(d.src, d.body) for d in b.received] == [("n0", b"hello b"), ("n2", b"hello from c")]
    sim.partition([[a], [b, c]])
    with pytest.raises(DeliveryFailed):
        await a.send(b, b"cut off")


async def test_messages_take_the_links_latency_through_the_http_stack(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.05)
    a, b = await sim.add_nodes(2)
    sim.peer(a, b)
    start = sim.now
    result = await a.send(b, b"first", ct="text/plain")
    assert result.outcome is mesh.Outcome.ACCEPTED
    # Dial (a round trip), the request, and the answer back to the sender.
    assert sim.now - start == pytest.approx(0.20)
    [first] = b.received
    assert (first.src, first.dst, first.body, first.hops) == ("n0", "n1", b"first", 1)
    assert first.latency == pytest.approx(0.15)
    # The next message reuses the kept-alive connection: one way.
    await a.send(b, b"second")
    assert b.received[1].latency == pytest.approx(0.05)
    assert sim.network.statistics.connections == 1
    report = sim.report()
    assert (report.sent, report.delivered, report.duplicates) == (2, 2, 0)
    assert report.http_requests == 2
    assert report.http_bytes == sim.network.statistics.bytes > 2 * 1000  # heads, signatures


async def test_a_partition_fails_sends_until_it_heals(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2, send_timeout=30.0)
    sim.peer(a, b)
    sim.partition([[a], [b]])
    start = sim.now
    with pytest.raises(DeliveryFailed, match="unreachable for 30 s"):
        await a.send(b, b"lost in the cut")
    assert sim.now - start < 30.0 + 10.0  # the last attempt may run out its connect timeout
    assert a.statistics.send_retries > 0
    assert sim.network.statistics.syns_dropped > 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(a.send, b, b"patient", resend=True))
        await sim.advance(100)
        assert b.received == []
        sim.heal()
    [delivery] = b.received
    assert delivery.body == b"patient"
    assert delivery.latency is not None
    assert delivery.latency >= 100
    report = sim.report()
    assert (report.sent, report.delivered, report.failed) == (2, 1, 1)
    assert report.resends >= 2
    assert [event.split(": ", 1)[1] for event in report.events] == [
        "partition {n0} | {n1}",
        "healed",
    ]


async def test_a_restarted_node_keeps_its_store_and_identity(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    sim.peer(a, b)
    frame = a.node.new_frame(b.node_id, b"once")
    wire = mesh.WireFrame(0, frame.seal(a.node.identity))
    assert (await a.node.send_frame(b.node_id, wire)).outcome is mesh.Outcome.ACCEPTED
    node_id = b.node_id
    await b.crash()
    assert not b.up
    with pytest.raises(NodeDown):
        _ = b.node
    await b.start()
    assert b.node.node_id == node_id
    # Its seen-set survived: the frame sent again is a duplicate, not a second delivery.
    assert (await a.node.send_frame(b.node_id, wire)).outcome is mesh.Outcome.DUPLICATE
    assert len(b.received) == 1
    assert b.starts == 2
    assert b.statistics.frames_accepted == 1
    assert b.statistics.frames_duplicate == 1


async def test_a_node_restarted_without_its_store_takes_a_frame_twice(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    sim.peer(a, b)
    frame = a.node.new_frame(b.node_id, b"twice")
    wire = mesh.WireFrame(0, frame.seal(a.node.identity))
    await a.node.send_frame(b.node_id, wire)
    await b.restart(keep_store=False)
    assert b.up
    # Same identity and peers, empty seen-set: the application sees a duplicate.
    assert (await a.node.send_frame(b.node_id, wire)).outcome is mesh.Outcome.ACCEPTED
    assert [d.duplicate for d in b.received] == [False, True]
    assert sim.report().duplicates == 1
    assert sim.events[-1][1] == "n1 restarted with an empty store"


async def test_an_application_resends_what_its_crashed_node_held(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    sim.peer(a, b)
    await b.crash()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(a.send, b, b"outbox", resend=True))
        await sim.advance(5)  # a's node retries against b's closed port
        assert sim.network.statistics.dials_refused > 0
        await a.crash()  # the send in flight ends with a's node
        await sim.advance(20)
        await a.start()
        await b.start()
    assert [d.body for d in b.received] == [b"outbox"]
    assert sim.ledger.resends >= 1


async def test_a_natted_node_can_send_but_cannot_be_reached(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    public = await sim.add_node("public")
    home = await sim.add_node("home", nat=True)
    sim.peer(public, home)
    await home.send(public, b"from behind the NAT")
    assert [d.body for d in public.received] == [b"from behind the NAT"]
    with pytest.raises(DeliveryFailed):
        await public.send(home, b"inbound")
    assert sim.network.statistics.syns_dropped > 0
    assert home.received == []


async def test_traffic_in_a_star_is_delivered_exactly_once(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.01)
    hub, *leaves = await sim.add_nodes(5)
    sim.peer_all(star(hub, leaves))
    await generate_traffic(sim, both_ways(star(hub, leaves)), interval=5.0, until=300.0)
    with trio.fail_after(60):
        await sim.wait_delivered()
    report = sim.report()
    assert report.sent > 400
    assert report.delivered == report.sent
    assert report.duplicates == 0
    assert report.latency_p50 is not None
    assert 0.02 <= report.latency_p50 < 0.05
    assert report.http_requests >= report.delivered * 0.5  # batching, little of it
    assert report.segments_lost > 0


async def test_traffic_to_a_node_that_is_not_a_peer_fails(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    # Today a node sends only to its peers; traffic between non-neighbours fails, and
    # counts as failed, until routing lands.
    a, b, c = await sim.add_nodes(3)
    sim.peer_all(chain([a, b, c]))
    await generate_traffic(sim, [(a, c)], interval=10.0, until=60.0)
    report = sim.report()
    assert report.sent > 0
    assert report.failed == report.sent
    assert report.delivered == 0


async def test_churn_crashes_and_restarts_nodes(sim: Simulation, autojump_clock: MockClock) -> None:
    hub, *leaves = await sim.add_nodes(4)
    sim.peer_all(star(hub, leaves))
    await sim.run_churn(leaves, interval=20.0, downtime=(5.0, 15.0), until=300.0)
    assert all(node.up for node in leaves)
    crashes = [text for _, text in sim.events if text.endswith("crashed")]
    assert len(crashes) > 5
    assert sum(node.starts for node in leaves) == len(leaves) + len(crashes)


async def test_an_idle_hour_of_thirty_nodes(sim: Simulation, autojump_clock: MockClock) -> None:
    nodes = await sim.add_nodes(30)
    sim.peer_all(random_graph(nodes, 3, sim.rng("graph")))
    await sim.advance(3600)
    assert sim.now == pytest.approx(3600)
    assert all(node.up for node in nodes)
    assert nodes[0].node.clock() == sim.clock_ms()


async def test_stop_start_and_the_errors_of_the_life_cycle(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a = await sim.add_node("a")
    with pytest.raises(SimulationError, match="already running"):
        await a.start()
    await a.stop()
    with pytest.raises(NodeDown):
        await a.stop()
    with pytest.raises(NodeDown):
        await a.crash()
    await a.start()
    assert a.up
    with pytest.raises(SimulationError, match="already exists"):
        await sim.add_node("a")
    with pytest.raises(SimulationError, match="not usable"):
        await sim.add_node("not a hostname")


async def test_the_same_seed_gives_the_same_identities(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async def ids(seed: int, where: str) -> list[str]:
        async with open_simulation(seed=seed, data_dir=tmp_path / where) as sim:
            return [node.node_id.text for node in await sim.add_nodes(3)]

    assert await ids(1, "x") == await ids(1, "y")
    assert await ids(1, "x2") != await ids(2, "z")


async def test_node_config_comes_from_the_simulation(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_simulation(data_dir=tmp_path, config=NodeConfig(send_timeout=5.0)) as sim:
        a = await sim.add_node()
        b = await sim.add_node(send_timeout=7.0)
        assert (a.node.config.send_timeout, b.node.config.send_timeout) == (5.0, 7.0)
        assert a.node.endpoints == ("http://n0:8470",)


async def test_a_simulation_needs_virtual_time() -> None:
    with pytest.raises(NotVirtualTime, match="MockClock"):
        async with open_simulation():
            pass


# -- topologies -------------------------------------------------------------------------


def test_topologies() -> None:
    nodes = list(range(5))
    assert chain(nodes) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert star(0, nodes[1:]) == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert both_ways([(0, 1)]) == [(0, 1), (1, 0)]
    from simulations import complete, ring

    assert ring(nodes)[-1] == (4, 0)
    assert ring([0, 1]) == [(0, 1)]
    assert len(complete(nodes)) == 10


@pytest.mark.parametrize(("count", "degree"), [(1, 3), (2, 0), (10, 2), (50, 4), (6, 10)])
def test_random_graphs_are_connected_with_the_degree_asked(count: int, degree: float) -> None:
    import random

    nodes = list(range(count))
    edges = random_graph(nodes, degree, random.Random(count))
    assert len(set(edges)) == len(edges)
    assert all(a < b for a, b in edges)
    reached, frontier = {0}, [0]
    while frontier:
        here = frontier.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == here and y not in reached:
                    reached.add(y)
                    frontier.append(y)
    assert reached == set(nodes)
    expected = min(count * (count - 1) // 2, max(count - 1, -(-count * degree // 2)))
    assert len(edges) == expected
    assert random_graph(nodes, degree, random.Random(count)) == edges
