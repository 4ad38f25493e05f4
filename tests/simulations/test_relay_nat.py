"""Reverse HTTP in the simulator: NATed nodes reach each other through a relay."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from node import DeliveryFailed
from simulations import Link, Simulation, both_ways, generate_traffic, ring


async def test_natted_nodes_talk_through_a_relay_on_lossy_links(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    sim.network.default_link = Link(latency=0.02, jitter=0.01, loss=0.02)
    relay = await sim.add_node("relay")
    token = relay.node.address_token()
    leaves = await sim.add_nodes(4, prefix="home", nat=True, relays=(token,))
    for leaf in leaves:
        await leaf.node.links[0].wait_connected(2)
        assert leaf.node.endpoints[0] == f"http://relay:8470/n/{leaf.node_id.text}"
    sim.peer_all(ring(leaves))
    await generate_traffic(sim, both_ways(ring(leaves)), interval=5.0, until=300.0)
    with trio.fail_after(600):
        await sim.wait_delivered()
    report = sim.report()
    assert report.sent > 200
    assert (report.delivered, report.duplicates) == (report.sent, 0)
    assert report.segments_lost > 0
    # Every message crossed the relay: its reversed connections carried them all.
    relayed = {entry["node"]: entry["requests"] for entry in relay.node.status()["relaying"]}
    assert sorted(relayed) == sorted(leaf.node_id.text for leaf in leaves)
    assert sum(relayed.values()) >= report.delivered / 100  # frames go in batches
    assert all(
        link["mode"] == "upgrade" for leaf in leaves for link in leaf.node.status()["attachments"]
    )


async def test_a_relay_cut_off_from_a_natted_node_leaves_it_unreachable_until_heal(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    relay = await sim.add_node("relay", send_timeout=20.0)
    token = relay.node.address_token()
    home = await sim.add_node("home", nat=True, relays=(token,), send_timeout=20.0)
    away = await sim.add_node("away", nat=True, relays=(token,), send_timeout=20.0)
    await home.node.links[0].wait_connected(1)
    await away.node.links[0].wait_connected(1)
    sim.peer(home, away)
    await away.send(home, b"through the relay")
    assert [d.body for d in home.received] == [b"through the relay"]
    sim.partition([[relay, away], [home]])
    with pytest.raises(DeliveryFailed):
        await away.send(home, b"while home is cut off")
    sim.heal()
    await home.node.links[0].wait_connected(1)  # it re-attaches after the partition
    await away.send(home, b"after the heal")
    assert [d.body for d in home.received][-1] == b"after the heal"
