"""Reverse HTTP in the simulator: NATed nodes reach each other through a relay."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from simulations import Link, Simulation, both_ways, generate_traffic, open_simulation, ring


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
    await sim.peer_all(ring(leaves))
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


async def test_a_natted_node_cut_off_from_its_relay_gets_its_messages_after_the_heal(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    relay = await sim.add_node("relay")
    token = relay.node.address_token()
    home = await sim.add_node("home", nat=True, relays=(token,))
    away = await sim.add_node("away", nat=True, relays=(token,))
    await home.node.links[0].wait_connected(1)
    await away.node.links[0].wait_connected(1)
    await sim.peer(home, away)
    await away.send(home, b"through the relay")
    [first] = await home.wait_received(1)
    assert first.body == b"through the relay"
    sim.partition([[relay, away], [home]])
    await away.send(home, b"while home is cut off")
    await sim.advance(120)
    assert len(home.received) == 1  # held by away (or the relay) meanwhile
    sim.heal()
    await home.node.links[0].wait_connected(1)  # it re-attaches after the partition
    with trio.fail_after(120):
        await sim.wait_delivered()
    assert [d.body for d in home.received] == [b"through the relay", b"while home is cut off"]


async def test_a_node_attached_to_a_relay_is_routed_to_at_once(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    # No tokens exchanged with the relay: attaching alone makes home and the relay
    # neighbours. The relay learns where to reach home before home's next announce
    # (its first one may come before the attachment, and be refused).
    sim.network.default_link = Link(latency=0.01)
    relay = await sim.add_node("relay")
    far = await sim.add_node("far")
    await sim.peer(relay, far)
    home = await sim.add_node("home", nat=True, relays=(relay.node.address_token(),))
    await home.node.links[0].wait_connected(1)
    await sim.advance(5)
    await home.send(far, b"out through the relay")
    await far.send(home, b"in through the relay")
    await sim.advance(60)  # much less than the announce interval (600 s)
    states = [(m.src, m.state(sim.now), m.hops) for m in sim.ledger.messages.values()]
    assert states == [("home", "delivered", 2), ("far", "delivered", 2)]


async def test_frames_queued_for_a_restarting_relay_are_not_dropped(
    autojump_clock: MockClock,
) -> None:
    # home is attached to the relay (no tokens exchanged); the relay crashes while home
    # has frames for it, and comes back. Until home re-attaches, the relay does not
    # count home as a neighbour: frames home sends it then must wait, not be dropped.
    # Whether home's forwarder or its attachment comes first depends on the timing,
    # so several seeds are tried.
    outcomes = []
    for seed in range(8):
        async with open_simulation(seed=seed, link=Link(latency=0.01)) as sim:
            relay = await sim.add_node("relay")
            far = await sim.add_node("far")
            await sim.peer(relay, far)
            home = await sim.add_node("home", nat=True, relays=(relay.node.address_token(),))
            await home.node.links[0].wait_connected(1)
            await sim.advance(5)
            await relay.crash()
            for number in range(3):
                await home.send(far, b"while the relay is down %d" % number)
                await sim.advance(10)
            await relay.start()
            await sim.advance(120)
            outcomes += [(seed, m.state(sim.now), m.why) for m in sim.ledger.messages.values()]
    assert [outcome for outcome in outcomes if outcome[1] != "delivered"] == []
