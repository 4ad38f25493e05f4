"""A node's greetings carry the announce its other neighbours got, not a fresher one.

Fresher beats shorter in every routing table, and a fresher announce that comes within
the flood interval is not flooded on where the one before was: a node that sent each
neighbour an announce of its own (one greeting after another at start, or a new peer
later) left part of the mesh holding its freshest announce only by a long way round,
routing that way until its next announce, past the hop limit in a 200-node mesh (chirp
simulation: direct messages dropped at hop limit 16/16, a post swallowed at its limit).
"""

from __future__ import annotations

import trio
import trio.testing

import crypto
from node import Node
from tests.helpers import NodeFactory, Recorder, peer, record


def announced(sent: Recorder, origin: Node, dst: Node) -> set[int]:
    """The ``ts`` of ``origin``'s own announces posted to ``dst`` and taken there."""
    found = set()
    for post in sent.to(dst):
        for wire, result in zip(post.frames, post.results or (), strict=False):
            frame = crypto.Frame.open(wire.envelope)
            if frame.kind is crypto.Kind.ANN and frame.src == origin.node_id and result.ok:
                found.add(frame.ts)
    return found


def route_ts(at: Node, dst: Node) -> int:
    (route,) = [r for r in at.mesh.router.routes(at.clock()) if r.dst == dst.node_id]
    return route.ts


async def test_greetings_carry_the_announce_the_other_neighbours_got(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    sent = record(a)
    await peer(a, b)
    with trio.fail_after(30):
        await sent.wait_for(lambda: bool(announced(sent, a, b)))
    await trio.sleep(2)  # virtual: c becomes a's peer later
    await peer(a, c)
    with trio.fail_after(30):
        await sent.wait_for(lambda: bool(announced(sent, a, c)))
    assert announced(sent, a, c) == announced(sent, a, b)
    assert route_ts(b, a) == route_ts(c, a)


async def test_the_periodic_announce_is_fresher_and_goes_to_every_neighbour(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    sent = record(a)
    await peer(a, b)
    await peer(a, c)
    with trio.fail_after(30):
        await sent.wait_for(lambda: bool(announced(sent, a, b) and announced(sent, a, c)))
    (before,) = announced(sent, a, b)
    await trio.sleep(1)
    a.mesh.announce()  # what the announce loop does every interval
    with trio.fail_after(30):
        await sent.wait_for(
            lambda: len(announced(sent, a, b)) == 2 and len(announced(sent, a, c)) == 2
        )
    assert announced(sent, a, b) == announced(sent, a, c)
    assert route_ts(b, a) == route_ts(c, a) == max(announced(sent, a, b)) > before
