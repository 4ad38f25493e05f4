"""A frame a node holds must move on once a route for it is there again.

Found by the ``mesh`` scenario (50 nodes, seed 1, 10 minutes): three messages stayed
"pending" to the end, each held by a node that had a usable route for it. Frames are
never sent straight back where they came from, so when the routes to a destination
change, frames that came from the new best next hop take the best one that avoids it
(``mesh.Reroute.instead``) rather than being held.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

import crypto
import mesh
from node import NodeConfig
from simulations import Simulation, open_simulation


async def test_a_frame_from_the_best_next_hop_takes_the_next_best_route(
    sim: Simulation, autojump_clock: MockClock
) -> None:
    # h has two routes of two hops to dst: via a (the tie-winner: lower id) and via b.
    h, dst, *pair = await sim.add_nodes(4)
    a, b = sorted(pair, key=lambda node: node.node_id.raw)
    await sim.peer_all([(h, a), (h, b), (a, dst), (b, dst)])
    await sim.advance(10)
    candidates = h.node.mesh.router.table.candidates(dst.node_id)
    assert sorted((r.via, r.hops) for r in candidates) == sorted([(a.node_id, 2), (b.node_id, 2)])
    # b is cut off; a hands h a frame for dst (as a does when its own route goes
    # through h): h queues it for b, the only way on that is not back to a.
    sim.partition([[b]])
    frame = a.node.new_frame(dst.node_id, b"a to dst, through h")
    [result] = await a.post(h, [mesh.WireFrame(0, frame.seal(a.node.identity))])
    assert result.outcome is mesh.Outcome.ACCEPTED
    # b's link goes down: frames for dst are rerouted via a, so this one is held.
    await sim.advance(60)
    sim.heal()
    # b is back: the frame should take it (a is where it came from).
    await sim.advance(600)
    held = h.node.store._db.execute("SELECT next_hop FROM queue WHERE id = ?", (frame.id,))
    where = [crypto.NodeId(row[0]).short if row[0] else "held" for row in held.fetchall()]
    assert [d.body for d in dst.received] == [b"a to dst, through h"], where


async def test_frames_queued_for_a_neighbour_that_goes_move_on_with_their_coordinates_forgotten(
    autojump_clock: MockClock,
) -> None:
    # Found by the 1,000-node mesh: two messages still pending at the end, once nodes
    # forgot the coordinates of frames passing through after two idle minutes. A node
    # reroutes what it remembers sending through a neighbour that goes; frames queued
    # for it whose destination's coordinates (and so the way they went) were forgotten
    # must move on too, not wait for that neighbour to come back.
    # Announces go one hop: h reaches d, two hops away, greedily via x or y.
    config = NodeConfig(tree=True, store_sync=False, announce_interval=60.0, announce_radius=1)
    async with open_simulation(seed=3, config=config, fidelity="engine") as sim:
        s, h, x, y, d = await sim.add_nodes(5)
        await sim.peer_all([(s, h), (h, x), (h, y), (x, d), (y, d)])
        await sim.advance(180)  # the tree, then every node's publication
        await s.send(d, b"first")
        with trio.fail_after(600):
            await sim.wait_delivered()
        router = h.node.mesh.router
        via = router._greedy_via[d.node_id]
        gone = x if via == x.node_id else y
        coords = d.node.mesh.router.tree.chain if d.node.mesh.router.tree else None
        assert coords is not None
        # The neighbour it went through is cut off; the next frame is queued for it.
        sim.partition([[gone]])
        frame = s.node.new_frame(d.node_id, b"second")
        [result] = await s.post(h, [mesh.WireFrame(0, frame.seal(s.node.identity), coords=coords)])
        assert result.outcome is mesh.Outcome.ACCEPTED
        queued = h.node.store._db.execute("SELECT next_hop FROM queue WHERE id = ?", (frame.id,))
        assert [crypto.NodeId(row[0]) for row in queued.fetchall()] == [via]
        # h forgets d's coordinates, as after two minutes with no frame using them.
        del router._coordinates[d.node_id]
        del router._greedy_via[d.node_id]
        # The link to the cut-off neighbour goes down: the frame goes the other way,
        # its destination looked up, long before the cut heals.
        with trio.fail_after(300):
            received = await d.wait_received(2)
        assert [delivery.body for delivery in received] == [b"first", b"second"]
        sim.heal()
