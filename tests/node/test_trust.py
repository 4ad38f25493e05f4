"""Trusted neighbours (``ptth trust``): their messages for other nodes are passed on
without their origin's signature checked, and the destination still checks it.

On the in-memory network in virtual time. A forged message (its origin's signature
spoiled) handed over by a trusted neighbour is passed on and refused where it was going,
never delivered; from any other neighbour, or addressed to the node itself, it is refused
at once. Each test ends with honest traffic flowing.
"""

from __future__ import annotations

import trio
import trio.testing

import crypto
import mesh
from node import MemoryNetwork
from tests.helpers import NodeFactory, Stranger, chain, delivered, drain


def spoiled(envelope: bytes) -> bytes:
    """``envelope`` with its signature's last byte changed."""
    return envelope[:-1] + bytes([envelope[-1] ^ 0x01])


async def test_a_trusted_neighbours_forgery_goes_on_and_its_destination_refuses_it(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await chain([a, b, c])
    assert await b.change_policy("trust", a.node_id)
    with trio.fail_after(30):
        await delivered(a, c, b"honest")
    # The message went on unchecked at b; the receipt, from c (not trusted), was checked.
    assert b.statistics.frames_unverified == 1
    assert b.statistics.frames_rejected == 0

    network = memory_nodes.network
    assert isinstance(network, MemoryNetwork)
    as_a = Stranger(network, a.identity)  # a's own requests, a forged frame in them
    forged = spoiled(as_a.frame(c.node_id, b.clock(), body=b"forged"))
    (taken,) = await as_a.post(b, [forged])
    assert taken.outcome is mesh.Outcome.ACCEPTED  # in b's custody, unchecked
    assert b.statistics.frames_unverified == 2
    with trio.fail_after(60):
        while c.statistics.rejected_by_reason["bad-signature"] == 0:  # noqa: ASYNC110
            await trio.sleep(1)  # virtual time: b posts it on, c refuses it
    assert await drain(c) == [b"honest"]

    # Addressed to b itself: checked whoever brings it.
    (refused,) = await as_a.post(b, [spoiled(as_a.frame(b.node_id, b.clock()))])
    assert (refused.outcome, refused.code) == (mesh.Outcome.REJECTED, mesh.Reason.BAD_SIGNATURE)
    # From a neighbour b does not trust (c), or from a once untrusted: refused at b.
    as_c = Stranger(network, c.identity)
    (refused,) = await as_c.post(b, [spoiled(as_c.frame(a.node_id, b.clock()))])
    assert refused.code is mesh.Reason.BAD_SIGNATURE
    assert await b.change_policy("untrust", a.node_id)
    (refused,) = await as_a.post(b, [spoiled(as_a.frame(c.node_id, b.clock()))])
    assert refused.code is mesh.Reason.BAD_SIGNATURE
    assert b.statistics.frames_unverified == 2

    with trio.fail_after(30):
        await delivered(a, c, b"honest again")
    assert await drain(c) == [b"honest again"]
    assert b.statistics.frames_unverified == 2


async def test_a_blocked_node_is_not_trusted(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    b = await memory_nodes.open("b")
    someone = crypto.Identity.generate().node_id
    await b.change_policy("trust", someone)
    policy = b.mesh.router.policy
    assert policy.unverified_from(someone)
    await b.change_policy("block", someone)
    assert not policy.unverified_from(someone)


async def test_a_trusted_neighbours_message_is_checked_when_the_node_would_refuse_it(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """A refusal tells the origin (a drop receipt): an unchecked frame is checked first,
    so a forgery is refused as one and its named origin is told nothing."""
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b", forward_policy="off")
    await chain([a, b])
    await b.change_policy("trust", a.node_id)
    network = memory_nodes.network
    assert isinstance(network, MemoryNetwork)
    as_a = Stranger(network, a.identity)
    elsewhere = crypto.Identity.generate().node_id
    sound, forged = as_a.frame(elsewhere, b.clock()), as_a.frame(elsewhere, b.clock())
    (refused, bad) = await as_a.post(b, [sound, spoiled(forged)])
    assert (refused.code, refused.words) == (
        mesh.Reason.POLICY,
        "this node does not forward frames for others",
    )
    assert bad.code is mesh.Reason.BAD_SIGNATURE
    assert b.statistics.frames_unverified == 0
    assert b.statistics.rejected_by_reason == {"policy": 1, "bad-signature": 1}
    with trio.fail_after(30):
        await delivered(a, b, b"honest")
    assert await drain(b) == [b"honest"]
