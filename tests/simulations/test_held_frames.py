"""A frame a node holds must move on once a route for it is there again.

Found by the ``mesh`` scenario (50 nodes, seed 1, 10 minutes): three messages stayed
"pending" to the end, each held by a node that had a usable route for it. Frames are
never sent straight back where they came from, so when the routes to a destination
change, frames that came from the new best next hop take the best one that avoids it
(``mesh.Reroute.instead``) rather than being held.
"""

from __future__ import annotations

from trio.testing import MockClock

import crypto
import mesh
from simulations import Simulation


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
