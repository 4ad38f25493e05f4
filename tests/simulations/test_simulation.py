"""Real nodes on the simulated network: custody, routing across hops, latency, faults and
their recovery, and what the ledger makes of it all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

import crypto
import mesh
from node import NodeConfig, Sent
from node._forwarder import PostFailed
from simulations import (
    EPOCH_MS,
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
from simulations._simulation import LOST


async def test_what_a_test_looks_like(sim: Simulation, autojump_clock: MockClock) -> None:
    sim.network.default_link = Link(latency=0.05)
    a, b, c = await sim.add_nodes(3)
    await sim.peer_all(chain([a, b, c]))
    await a.send(c, b"hello c, two hops away")
    await c.send(b, b"hello b")
    with trio.fail_after(10):
        await c.wait_received(1)
        await b.wait_received(1)
    assert [(d.src, d.body, d.hops) for d in c.received] == [("n0", b"hello c, two hops away", 2)]
    assert [(d.src, d.hops) for d in b.received] == [("n2", 1)]
    sim.partition([[a], [b, c]])
    await a.send(c, b"held by a until the heal")
    await sim.advance(60)
    assert len(c.received) == 1
    sim.heal()
    with trio.fail_after(60):
        await sim.wait_delivered()
    assert c.received[-1].body == b"held by a until the heal"


async def test_send_returns_at_custody_and_the_frame_takes_the_links_latency(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.05)
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    await sim.advance(10)  # the greetings are over: a kept-alive connection to b waits
    start = sim.now
    sent = await a.send(b, b"first", ct="text/plain")
    assert sim.now == start  # custody is a commit to a's own store, no network
    assert (sent.dst, sent.next_hop) == (b.node_id, b.node_id)
    [first] = await b.wait_received(1)
    assert (first.src, first.dst, first.body, first.hops) == ("n0", "n1", b"first", 1)
    assert first.latency == pytest.approx(0.05)  # one way, on the kept-alive connection
    await sim.advance(1)  # the answer goes back to a: it hands the frame over
    report = sim.report()
    assert (report.sent, report.delivered, report.duplicates, report.pending) == (1, 1, 0, 0)
    assert (report.hops_mean, report.hops_max) == (1.0, 1)
    assert report.frames_forwarded == 1
    assert report.announces_sent >= 2  # each greeted the other
    assert report.http_bytes == sim.network.statistics.bytes > 1000  # heads, signatures


async def test_a_partition_holds_frames_until_it_heals(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    sim.partition([[a], [b]])
    await a.send(b, b"patient")
    await sim.advance(100)
    assert b.received == []
    assert sim.report().pending == 1
    assert a.statistics.send_retries > 0
    assert sim.network.statistics.syns_dropped > 0
    sim.heal()
    [delivery] = await b.wait_received(1)
    assert delivery.body == b"patient"
    assert delivery.latency is not None
    assert delivery.latency >= 100
    report = sim.report()
    assert (report.sent, report.delivered, report.dropped, report.pending) == (1, 1, 0, 0)
    assert [event.split(": ", 1)[1] for event in report.events] == [
        "partition {n0} | {n1}",
        "healed",
    ]


async def test_a_restarted_node_keeps_its_store_and_identity(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    frame = a.node.new_frame(b.node_id, b"once")
    wire = mesh.WireFrame(0, frame.seal(a.node.identity))
    [result] = await a.post(b, [wire])
    assert result.outcome is mesh.Outcome.ACCEPTED
    node_id = b.node_id
    await b.crash()
    assert not b.up
    with pytest.raises(NodeDown):
        _ = b.node
    await b.start()
    assert b.node.node_id == node_id
    # Its seen-set survived: the frame sent again is a duplicate, not a second delivery.
    [again] = await a.post(b, [wire])
    assert again.outcome is mesh.Outcome.DUPLICATE
    assert len(b.received) == 1
    assert b.starts == 2
    assert b.statistics.frames_duplicate >= 1


async def test_a_node_whose_directory_went_away_does_not_come_back_as_another(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await b.crash()
    shutil.rmtree(b.data_dir)
    with pytest.raises(SimulationError, match="identity key is gone"):
        await b.start()
    assert not b.up
    await a.stop()
    await a.start()  # the others start as ever


async def test_store_failures_are_counted_and_fail_the_report(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    assert not sim.report().failed
    taken = b.node.store.accept

    def broken(*args: object, **kwargs: object) -> list[mesh.Result]:
        raise mesh.MeshError("store /x failed: disk I/O error")

    b.node.store.accept = broken  # type: ignore[method-assign]
    frame = a.node.new_frame(b.node_id, b"to a bad disk")
    with pytest.raises(PostFailed, match=r"503 .* store unavailable"):
        await a.post(b, [mesh.WireFrame(0, frame.seal(a.node.identity))])
    b.node.store.accept = taken  # type: ignore[method-assign]
    report = sim.report()
    assert report.store_failures == 1
    assert report.failed
    assert any("stores failed 1 times" in event for event in report.events)
    assert "1 STORE FAILURES" in report.to_text()


async def test_a_node_restarted_without_its_store_takes_a_frame_twice(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    frame = a.node.new_frame(b.node_id, b"twice")
    wire = mesh.WireFrame(0, frame.seal(a.node.identity))
    await a.post(b, [wire])
    await b.restart(keep_store=False)
    assert b.up
    # Same identity and peers, empty seen-set: the application sees a duplicate.
    [result] = await a.post(b, [wire])
    assert result.outcome is mesh.Outcome.ACCEPTED
    await b.wait_received(2)
    assert [d.duplicate for d in b.received] == [False, True]
    assert sim.report().duplicates == 1
    assert sim.events[-1][1] == "n1 restarted with an empty store"


async def test_frames_in_custody_survive_a_crash_of_their_origin(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    await b.crash()
    await a.send(b, b"in a's store")
    await sim.advance(5)  # a's forwarder tries b's closed port
    assert sim.network.statistics.dials_refused > 0
    await a.crash()
    await sim.advance(20)
    await a.start()
    await b.start()
    with trio.fail_after(60):
        await sim.wait_delivered()
    assert [d.body for d in b.received] == [b"in a's store"]
    assert sim.report().delivered == 1


async def test_an_origin_that_loses_its_store_loses_what_it_held(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    await b.crash()
    await a.send(b, b"only in a's store")
    await a.restart(keep_store=False)
    await b.start()
    await sim.advance(60)
    [message] = sim.ledger.messages.values()
    assert message.state(sim.now) == "dropped"
    assert message.why == LOST
    assert b.received == []
    report = sim.report()
    assert (report.sent, report.delivered, report.dropped, report.pending) == (1, 0, 1, 0)
    assert report.drops == {"lost": 1}
    assert "dropped 1 (lost 1), expired 0" in report.to_text()


async def test_a_frame_that_expires_on_the_way_comes_back_as_a_drop_receipt(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b, c = await sim.add_nodes(3)
    await sim.peer_all(chain([a, b, c]))
    await sim.advance(5)  # routes: a knows c is behind b
    sim.partition([[a, b], [c]])
    await a.send(c, b"short-lived", ttl=30)
    await sim.advance(120)
    [message] = sim.ledger.messages.values()
    assert message.exp == pytest.approx(35.0, abs=0.01)
    assert message.state(sim.now) == "expired"
    assert message.why is not None
    assert message.why.startswith("expired: expired at")
    assert b.statistics.frames_dropped == 1  # b held it for c, and gave up
    report = sim.report()
    assert (report.sent, report.expired, report.dropped, report.pending) == (1, 1, 0, 0)
    assert report.drops == {}  # expired, not dropped
    assert "dropped 0, expired 1" in report.to_text()
    assert report.delivery_ratio is None  # nothing was left to deliver
    assert report.frames_dropped == 1


async def test_a_frame_refused_on_the_way_is_dropped(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a = await sim.add_node("a")
    b = await sim.add_node("b", forward_policy="off")
    c = await sim.add_node("c")
    await sim.peer_all(chain([a, b, c]))
    await sim.advance(5)
    await a.send(c, b"b will not carry this")
    await sim.advance(30)
    [message] = sim.ledger.messages.values()
    assert message.state(sim.now) == "dropped"
    assert message.why is not None
    assert message.why.startswith("policy: ")
    assert c.received == []
    # The report's events say which message was dropped, between whom, and why.
    [line] = [e for e in sim.report().events if "dropped after" in e]
    assert f"message {message.id.hex()[:12]} a->c dropped after" in line
    assert line.endswith(message.why)
    # And its figures, how many were dropped for each reason.
    report = sim.report()
    assert report.drops == {"policy": 1}
    assert report.to_dict()["drops"] == {"policy": 1}
    assert "dropped 1 (policy 1), expired 0" in report.to_text()


@pytest.mark.parametrize("told", ["settled", "everyone looks again"])
async def test_a_message_settled_while_it_was_being_sent_is_settled(
    sim: Simulation, autojump_clock: MockClock, told: str
) -> None:
    # The sender's application follows its messages through the node's settle
    # notifications; one that comes before send() has entered the message (here, a drop
    # made up as custody ends, told as that frame's or as every frame's) is not missed.
    a, b = await sim.add_nodes(2)  # not peers: nothing will reach b
    node = a.node
    custody = node.send_sealed

    async def custody_then_dropped(sealed: list[tuple[crypto.Frame, bytes]]) -> list[Sent]:
        sent = await custody(sealed)
        [(frame, _)] = sealed
        node.store.record_outcome(
            frame.id, "dropped", by=node.node_id, why="test: dropped at once", now=node.clock()
        )
        if told == "settled":
            node.mesh.settled(frame.id)
        else:
            node.mesh.release_waiters()
        await trio.testing.wait_all_tasks_blocked()  # the application's watch runs first
        return sent

    node.send_sealed = custody_then_dropped  # type: ignore[method-assign,assignment]
    await a.send(b, b"gone before send() returns")
    await sim.advance(1)
    [message] = sim.ledger.messages.values()
    assert message.state(sim.now) == "dropped"
    assert message.why == "test: dropped at once"
    assert sim.report().pending == 0


async def test_the_report_says_where_each_pending_message_waits(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    a, b, c = await sim.add_nodes(3)
    loner = await sim.add_node("loner")
    await sim.peer_all(chain([a, b, c]))
    await sim.advance(5)
    sim.partition([[a, b], [c, loner]])
    stuck = await a.send(c, b"queued at b for c until the heal")
    nowhere = await a.send(loner, b"no node has a route to loner")
    await sim.advance(30)
    report = sim.report()
    assert report.pending == 2
    lines = [event for event in report.events if "not delivered at the end" in event]
    assert len(lines) == 2
    assert f"message {stuck.id.hex()[:12]} n0->n2 not delivered" in lines[0]
    assert lines[0].endswith("; held at n1->n2")
    assert f"message {nowhere.id.hex()[:12]} n0->loner not delivered" in lines[1]
    assert lines[1].endswith("; held at n0 (no way on yet)")
    # The node holding it crashed: nobody running has it (its store keeps it).
    await b.crash()
    [line, _] = [e for e in sim.report().events if "not delivered at the end" in e]
    assert line.endswith("not held by a running node (in flight, or at a node that is down)")
    await b.start()
    sim.heal()
    with trio.fail_after(120):
        await c.wait_received(1)
    [line] = [e for e in sim.report().events if "not delivered at the end" in e]
    assert line.endswith("; held at n0 (no way on yet)")


async def test_delivery_receipts_come_back_to_the_origin(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.01)
    a, b, c = await sim.add_nodes(3)
    await sim.peer_all(chain([a, b, c]))
    await sim.advance(5)
    await a.send(c, b"tell me when", receipt=True)
    await a.send(c, b"no need to tell")
    await sim.advance(10)
    acknowledged = [m.acknowledged_at is not None for m in sim.ledger.messages.values()]
    assert acknowledged == [True, False]
    report = sim.report()
    assert (report.delivered, report.acknowledged) == (2, 1)


async def test_a_natted_node_can_send_but_cannot_be_reached(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    public = await sim.add_node("public")
    home = await sim.add_node("home", nat=True)
    await sim.peer(public, home)
    await home.send(public, b"from behind the NAT")
    await public.send(home, b"inbound")
    await sim.advance(120)
    assert [d.body for d in public.received] == [b"from behind the NAT"]
    assert home.received == []  # held by public: nobody can dial home
    assert sim.network.statistics.syns_dropped > 0
    assert sim.report().pending == 1


async def test_traffic_in_a_star_is_delivered_exactly_once(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.01)
    hub, *leaves = await sim.add_nodes(5)
    await sim.peer_all(star(hub, leaves))
    pairs = both_ways(star(hub, leaves) + chain(leaves))
    await generate_traffic(sim, pairs, interval=5.0, until=300.0)
    with trio.fail_after(60):
        await sim.wait_delivered()
    report = sim.report()
    assert report.sent > 700
    assert report.delivered == report.sent
    assert report.duplicates == 0
    assert report.hops_max == 2  # leaf to leaf, through the hub
    assert report.hops_mean is not None
    assert 1.0 < report.hops_mean < 2.0
    assert report.latency_p50 is not None
    assert 0.02 <= report.latency_p50 < 0.2
    assert report.requests_per_delivered is not None
    assert report.requests_per_delivered < 2  # announces and receipts included
    assert report.segments_lost > 0


async def test_traffic_crosses_a_chain_hop_by_hop(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    nodes = await sim.add_nodes(5)
    await sim.peer_all(chain(nodes))
    await sim.advance(10)  # the announces have crossed the chain
    await generate_traffic(sim, both_ways([(nodes[0], nodes[-1])]), interval=10.0, until=310.0)
    with trio.fail_after(60):
        await sim.wait_delivered()
    await sim.advance(1)  # the last answers go back
    report = sim.report()
    assert report.sent > 30
    assert (report.delivered, report.duplicates) == (report.sent, 0)
    assert (report.hops_mean, report.hops_max) == (4.0, 4)
    assert report.frames_forwarded == 4 * report.sent


async def test_churn_crashes_and_restarts_nodes(sim: Simulation, autojump_clock: MockClock) -> None:
    hub, *leaves = await sim.add_nodes(4)
    await sim.peer_all(star(hub, leaves))
    await sim.run_churn(leaves, interval=20.0, downtime=(5.0, 15.0), until=300.0)
    assert all(node.up for node in leaves)
    crashes = [text for _, text in sim.events if text.endswith("crashed")]
    assert len(crashes) > 5
    assert sum(node.starts for node in leaves) == len(leaves) + len(crashes)


async def test_an_idle_hour_of_twelve_nodes_announces_itself(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    nodes = await sim.add_nodes(12, announce_interval=600.0)
    edges = random_graph(nodes, 3, sim.rng("graph"))
    await sim.peer_all(edges)
    await sim.advance(3600)
    assert sim.now == pytest.approx(3600)
    assert all(node.up for node in nodes)
    assert nodes[0].node.clock() == sim.clock_ms() == EPOCH_MS + 3_600_000
    # Every node has a route to every other.
    assert all(len(node.node.routes()) == 11 for node in nodes)
    report = sim.report()
    # Each node greeted each neighbour, then announced itself to it about six times
    # (every 600 s, jittered x0.75..1.25), and took in copies of everyone's announces.
    links = 2 * len(edges)
    assert 5 * links <= report.announces_sent <= 10 * links
    assert report.announces_sent_per_node_hour == pytest.approx(
        report.announces_sent / 12, abs=0.01
    )
    assert report.announces_received > 11 * 12 * 5
    assert report.sent == report.frames_forwarded == 0


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
    b = await sim.add_node("b")
    with pytest.raises(NodeDown):
        await a.send(b, b"from a node that is down")
    with pytest.raises(NodeDown):
        await sim.peer(a, b)
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
    config = NodeConfig(announce_interval=120.0)
    async with open_simulation(data_dir=tmp_path, config=config) as sim:
        a = await sim.add_node()
        b = await sim.add_node(announce_interval=300.0)
        assert (a.node.config.announce_interval, b.node.config.announce_interval) == (120, 300)
        assert a.node.endpoints == ("http://n0:8470",)


async def test_kept_alive_connections_expire_in_virtual_time(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    # httpcore expires an idle connection 30 s after its last exchange: in virtual time
    # here (it would be real time otherwise, and runs would depend on the machine).
    a, b = await sim.add_nodes(2)
    await sim.peer(a, b)
    await sim.advance(10)
    await a.send(b, b"one")
    await sim.advance(20)
    await a.send(b, b"two: the connection is 20 s idle, reused")
    await b.wait_received(2)
    connections = sim.network.statistics.connections
    await sim.advance(40)
    await a.send(b, b"three: 40 s idle, expired, a new connection")
    await b.wait_received(3)
    assert sim.network.statistics.connections == connections + 1


async def test_a_simulation_needs_virtual_time() -> None:
    with pytest.raises(NotVirtualTime, match=r"VirtualClock.*MockClock"):
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
