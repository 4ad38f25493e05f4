"""The mesh end to end on the in-memory network, in virtual time: custody, multi-hop
delivery with receipts, held frames, drops, back-off, expiry, fallback routes, the
forwarding policy and the (origin, id) attack.

Every wait is on an event (a receipt, a message, a POST logged by
:func:`tests.helpers.record`), bounded by ``trio.fail_after``, or for the network to
settle (``wait_all_tasks_blocked``: nothing left to run, before virtual time moves);
virtual time is let pass only where time itself is the subject (back-off, expiry,
"nothing more happens").
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
import mesh
from node import MemoryNetwork, Node
from tests.helpers import (
    NodeFactory,
    Stranger,
    chain,
    delivered,
    drain,
    messages,
    next_message,
    peer,
    record,
)


async def test_chain_of_three_routes_and_delivers(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    c = await memory_nodes.open("c")
    await chain([a, b, c])
    sent = await a.send(c.node_id, b"hello c", receipt=True)
    with trio.fail_after(30):
        trace = await a.delivered(sent.id)
    assert trace.state == "delivered", trace
    assert trace.hops == 2
    assert trace.by == c.node_id
    assert [m.body async for m in c.inbox(follow=False)] == [b"hello c"]


async def test_a_wait_for_a_receipt_given_up_leaves_nothing_behind(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # A wait for a receipt that is abandoned (a timeout, a client gone) forgets what it
    # waited on, unless another waits on it still; a receipt that comes later settles
    # the frame as ever.
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    c = await memory_nodes.open("c")
    await chain([a, b])  # c is nobody's neighbour: nothing reaches it yet
    sent = [await a.send(c.node_id, b"%d" % i, receipt=True) for i in range(3)]
    for one in sent:
        with trio.move_on_after(5):
            await a.delivered(one.id)
    assert a.mesh._outcomes == {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.delivered, sent[0].id)  # still waiting
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(5):
            await a.delivered(sent[0].id)
        assert list(a.mesh._outcomes) == [sent[0].id]
        await peer(b, c)
        with trio.fail_after(60):
            traces = [await a.delivered(one.id) for one in sent]
    assert [trace.state for trace in traces] == ["delivered"] * 3
    assert a.mesh._outcomes == {}


async def test_the_inbox_reads_in_pages_and_one_by_one_alike(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    await peer(a, b)
    sent = {b"%d" % i for i in range(250)}
    for body in sorted(sent):
        await a.send(b.node_id, body)
    with trio.fail_after(30):
        await messages(b, 250)
    pages = [[m.body for m in page] async for page in b.inbox_pages(follow=False)]
    assert [len(page) for page in pages] == [100, 100, 50]  # the store's pages
    flat = [body for page in pages for body in page]
    assert set(flat) == sent
    assert [m.body async for m in b.inbox(follow=False)] == flat


async def test_a_following_inbox_reads_the_store_once_for_each_message_that_comes(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # A page that held all there was, with nothing come since it was read, is not
    # followed by another read that would find nothing: the reader waits at once.
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b")
    await peer(a, b)
    reads = 0
    pending = b.store.pending

    def counted(**kwargs: Any) -> list[mesh.InboxEntry]:
        nonlocal reads
        reads += 1
        return pending(**kwargs)

    b.store.pending = counted  # type: ignore[method-assign]
    got: list[bytes] = []
    arrived_in, arrived = trio.open_memory_channel[bytes](0)
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            async for message in b.inbox():
                await message.ack()
                await arrived_in.send(message.body)

        nursery.start_soon(consume)
        for i in range(5):
            await a.send(b.node_id, b"%d" % i)
            with trio.fail_after(30):
                got.append(await arrived.receive())  # one at a time
        nursery.cancel_scope.cancel()
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert reads == 1 + 5  # the empty inbox at first, then one read for each


async def test_chain_of_four_with_receipts_and_hops(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c, d = [await memory_nodes.open(name) for name in "abcd"]
    await chain([a, b, c, d])
    with trio.fail_after(60):
        trace = await delivered(a, d, b"four nodes, three hops", ct="text/plain")
    assert (trace.state, trace.hops, trace.by, trace.why) == ("delivered", 3, d.node_id, None)
    assert trace.first_hop == b.node_id
    assert trace.first_accepted is not None
    (receipt,) = trace.receipts
    assert (receipt.by, receipt.state, receipt.hops) == (d.node_id, "delivered", 3)
    message = await next_message(d)
    assert (message.src, message.body, message.ct, message.hops) == (
        a.node_id,
        b"four nodes, three hops",
        "text/plain",
        3,
    )
    # And back: d answers a the same way, over the routes the announces made.
    with trio.fail_after(60):
        back = await delivered(d, a, b"and back")
    assert back.hops == 3
    assert await drain(a) == [b"and back"]
    # Once every exchange in flight is done, transit nodes hold nothing and took
    # nothing for themselves.
    await trio.testing.wait_all_tasks_blocked()
    for middle in (b, c):
        assert await drain(middle) == []
        assert middle.store.statistics().queued_frames == 0
        assert middle.statistics.frames_forwarded >= 2  # the message and a receipt
    routes = {route["destination"]: route for route in a.routes()}
    assert routes[d.node_id.text]["next_hop"] == b.node_id.text
    assert routes[d.node_id.text]["hops"] == 3
    assert routes[b.node_id.text]["direct"] is True


async def test_a_frame_without_receipt_is_forwarded_and_not_settled(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await chain([a, b, c])
    sent = await a.send(c.node_id, b"no receipt asked")
    with trio.fail_after(60):
        message = await next_message(c)
    assert message.id == sent.id
    await trio.testing.wait_all_tasks_blocked()  # a has had b's answer
    trace = await a.trace(sent.id)
    assert trace is not None
    assert (trace.state, trace.receipt, trace.first_hop) == ("forwarded", False, b.node_id)
    assert trace.receipts == ()
    # Nothing will settle it: waiting for its receipt times out.
    with trio.move_on_after(600) as scope:
        await a.delivered(sent.id)
    assert scope.cancelled_caught


# -- custody ------------------------------------------------------------------------------


async def test_custody_survives_the_sender_being_cancelled(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    b = await memory_nodes.open("b")
    with trio.CancelScope() as scope:
        async with memory_nodes.session("a") as a:
            await peer(a, b)
            sent = await a.send(b.node_id, b"in custody", receipt=True)
            assert sent.next_hop == b.node_id
            scope.cancel()  # killed right after send() returned
    assert scope.cancelled_caught
    assert await drain(b) == []  # it never left a
    async with memory_nodes.session("a") as a:
        trace = await a.trace(sent.id)
        assert trace is not None
        assert trace.state in ("queued", "forwarded")  # no receipt yet
        with trio.fail_after(30):
            trace = await a.delivered(sent.id)
        assert (trace.state, trace.hops, trace.by) == ("delivered", 1, b.node_id)
    assert await drain(b) == [b"in custody"]


async def test_frames_queued_for_a_dead_neighbour_survive_a_restart(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes.session("b") as b:
        b_id = b.node_id
    async with memory_nodes.session("a") as a:
        await a.add_peer(b.address_token())
        sent = [await a.send(b_id, b"%d" % i, receipt=True) for i in range(3)]
        await trio.sleep(5)  # virtual: a retries a dead b meanwhile
    async with memory_nodes.session("a") as a, memory_nodes.session("b") as b:
        await b.add_peer(a.address_token())  # for the receipts
        with trio.fail_after(60):
            traces = [await a.delivered(s.id) for s in sent]
        assert [t.state for t in traces] == ["delivered"] * 3
        assert await drain(b) == [b"0", b"1", b"2"]


# -- held frames ------------------------------------------------------------------------


async def test_held_frames_go_when_a_route_appears(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await peer(a, b)
    sent = await a.send(c.node_id, b"held until c shows up", receipt=True)
    assert sent.next_hop is None
    trace = await a.trace(sent.id)
    assert trace is not None
    assert (trace.state, trace.next_hop) == ("held", None)
    (held,) = [q for q in await a.queues() if q["next_hop"] is None]
    assert held["frames"] == 1
    await trio.sleep(300)  # virtual: nothing moves while nobody knows c
    assert await drain(c) == []
    await peer(b, c)  # c's announce reaches a through b: a route appears
    with trio.fail_after(60):
        trace = await a.delivered(sent.id)
    assert (trace.state, trace.hops) == ("delivered", 2)
    assert await drain(c) == [b"held until c shows up"]
    assert not [q for q in await a.queues() if q["next_hop"] is None]


async def test_frames_held_across_a_restart_are_looked_up_in_the_tree(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    tree = {"tree": True, "announce_radius": 1}  # routes to neighbours only
    b, c, d = [await memory_nodes.open(name, **tree) for name in "bcd"]
    await chain([b, c, d])
    async with memory_nodes.session("a", **tree) as a:
        sent = await a.send(d.node_id, b"held, then looked up", receipt=True)
        assert sent.next_hop is None  # a knows nobody yet
    # Restarted, a finds the frame held and wants d's place (routes go one hop: a and
    # b know none to d); once it has it, the frame goes on greedily. Before, a
    # restarted node never asked, and the frame waited until it expired.
    async with memory_nodes.session("a", **tree) as a:
        await peer(a, b)
        with trio.fail_after(600):
            trace = await a.delivered(sent.id)
        assert (trace.state, trace.hops) == ("delivered", 3)
    assert await drain(d) == [b"held, then looked up"]


async def test_held_frames_go_when_the_destination_becomes_a_peer(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, c = await memory_nodes.open("a"), await memory_nodes.open("c")
    sent = [await a.send(c.node_id, b"%d" % i) for i in range(3)]
    assert [s.next_hop for s in sent] == [None] * 3
    await peer(a, c)
    with trio.fail_after(30):
        got = await messages(c, 3)
    assert sorted(m.body for m in got) == [b"0", b"1", b"2"]
    assert all(m.hops == 1 for m in got)


async def test_a_frame_that_expires_while_held_is_dropped(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    nobody = crypto.Identity.generate().node_id
    sent = await a.send(nobody, b"for nobody", ttl=30, receipt=True)
    start = trio.current_time()
    with trio.fail_after(120):
        trace = await a.delivered(sent.id)
    # Expired frames are swept on the mesh's tick (every 15 s).
    assert 30 <= trio.current_time() - start <= 30 + 15
    assert (trace.state, trace.by) == ("dropped", a.node_id)
    assert trace.why is not None
    assert trace.why.startswith(f"expired: expired at {a.node_id.short} (held, no route)")
    (receipt,) = trace.receipts
    assert (receipt.by, receipt.state) == (a.node_id, "dropped")
    assert a.store.statistics().queued_frames == 0
    assert a.statistics.frames_dropped == 1


# -- refusals, drops and retries ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code", "words"),
    [
        ({"forward_policy": "off"}, "policy", "this node does not forward frames for others"),
        ({}, "hop-limit", "frame has made 2 of the 2 hops its origin allows"),
    ],
)
async def test_a_refused_frame_is_dropped_with_a_receipt_and_not_retried(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    overrides: dict[str, str],
    code: str,
    words: str,
) -> None:
    # a - b - c - d: c refuses a's frames for d (by policy, or: a allows 2 hops only).
    a = await memory_nodes.open("a", hops=2 if code == "hop-limit" else 16)
    b = await memory_nodes.open("b")
    c = await memory_nodes.open("c", **overrides)
    d = await memory_nodes.open("d")
    await chain([a, b, c, d])
    posts = record(b)
    with trio.fail_after(60):
        # d's route reaches a through c: announces are not transit frames.
        trace = await a.delivered((await a.send(d.node_id, b"refused", receipt=True)).id)
    assert trace.state == "dropped"
    # b dropped it (its receipt came back to a) because c refused it, and says why.
    assert trace.by == b.node_id
    assert trace.why == f"{code}: refused by {c.node_id.short}: {words}"
    (receipt,) = trace.receipts
    assert (receipt.by, receipt.state, receipt.why) == (b.node_id, "dropped", trace.why)
    # Not retried: c saw it once, b holds nothing, d never got it.
    await trio.sleep(300)  # virtual: retries, had there been any, would be done by now
    await trio.testing.wait_all_tasks_blocked()
    to_c = [post for post in posts.to(c) if post.messages]
    assert len(to_c) == 1
    assert to_c[0].results is not None
    assert [r.code for r in to_c[0].results if not r.ok] == [code]
    assert c.statistics.frames_rejected == 1
    assert b.statistics.frames_dropped == 1
    assert b.store.statistics().queued_frames == 0
    assert await drain(d) == []


async def test_a_frame_refused_by_the_first_hop_is_dropped_at_the_origin(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", forward_policy="off")
    c = await memory_nodes.open("c")
    await chain([a, b, c])
    with trio.fail_after(60):
        ok = await delivered(a, b, b"for b itself is fine")
        sent = await a.send(c.node_id, b"through b is not")
        trace = await a.delivered(sent.id)  # settled by the drop, receipt or not
    assert ok.hops == 1
    assert (trace.state, trace.by, trace.receipt) == ("dropped", b.node_id, False)
    assert trace.why == (
        f"policy: refused by {b.node_id.short}: this node does not forward frames for others"
    )
    assert a.statistics.sent_rejected == 1


async def test_back_off_then_retry_at_once_when_the_neighbour_is_heard_from(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", retry_initial=1.0, retry_max=120.0)
    async with memory_nodes.session("b") as b:
        await b.add_peer(a.address_token())  # b will greet a when it comes back
        b_token, b_id = b.address_token(), b.node_id
    posts = record(a)
    await a.add_peer(b_token)  # b is down from the start
    sent = await a.send(b_id, b"patience", receipt=True)
    with trio.fail_after(600):
        await posts.wait_for(lambda: len(posts.failures(b_id)) >= 6)
    await trio.testing.wait_all_tasks_blocked()  # a has noted the failure
    failed = [post.at for post in posts.failures(b_id)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(failed)]
    # Back-off: 1 s doubling each time, with jitter x0.5..1.5.
    for n, gap in enumerate(gaps):
        assert 0.5 * 2**n <= gap <= 1.5 * 2**n
    (row,) = [q for q in await a.queues() if q["next_hop"] == b_id.text]
    assert row["frames"] == 1
    assert row["link"] in ("backing-off", "down")
    assert row["next_attempt_in"] > 10
    assert "ConnectError" in row["last_error"]
    # b comes back: its greeting is heard, and a tries again at once, not at the end of
    # its back-off.
    async with memory_nodes.session("b") as b:
        back = trio.current_time()
        with trio.fail_after(5):
            trace = await a.delivered(sent.id)
        assert trio.current_time() - back < 1
        assert trace.state == "delivered"
        assert await drain(b) == [b"patience"]
        link = a.mesh.router.links.get(b_id)
        assert link is not None
        assert link.state is mesh.LinkState.UP


async def test_retries_go_on_until_the_frame_expires(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    async with memory_nodes.session("b") as b:
        await peer(a, b)
    posts = record(a)
    sent = await a.send(b.node_id, b"into the void", ttl=300, receipt=True)
    with trio.fail_after(600):
        trace = await a.delivered(sent.id)
    assert trace.state == "dropped"
    assert trace.why is not None
    assert trace.why.startswith(f"expired: expired at {a.node_id.short} (queued for ")
    tries = [post.at for post in posts.failures(b.node_id) if post.messages]
    assert len(tries) >= 12  # 0.2 s doubling to the 30 s cap, for 300 s
    assert max(tries) > 250
    await trio.sleep(300)
    assert [post for post in posts.posts if post.messages and post.at > 320] == []


# -- routes around a dead neighbour ------------------------------------------------------


async def test_diamond_falls_back_to_the_other_path(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # a - b - d and a - c - d; whichever of b and c a routes through is killed.
    a, d = await memory_nodes.open("a"), await memory_nodes.open("d")
    middles = {name: await memory_nodes.start(name) for name in "bc"}
    b, c = middles["b"].node, middles["c"].node
    await chain([a, b, d])
    await chain([a, c, d])
    with trio.fail_after(60):
        first = await delivered(a, d, b"while both stand")
    assert first.hops == 2
    (route,) = [r for r in a.routes() if r["destination"] == d.node_id.text]
    doomed, survivor = (b, c) if route["next_hop"] == b.node_id.text else (c, b)
    assert route["next_hop"] == doomed.node_id.text
    await middles[doomed.config.name or ""].stop()

    sent = [await a.send(d.node_id, b"%d" % i, receipt=True) for i in range(5)]
    assert {s.next_hop for s in sent} == {doomed.node_id}  # a does not know yet
    with trio.fail_after(120):
        traces = [await a.delivered(s.id) for s in sent]
    assert [t.state for t in traces] == ["delivered"] * 5
    assert {t.hops for t in traces} == {2}
    got = [m.body async for m in d.inbox(follow=False)]
    assert got == [b"while both stand", *(b"%d" % i for i in range(5))]
    (route,) = [r for r in a.routes() if r["destination"] == d.node_id.text]
    assert route["next_hop"] == survivor.node_id.text
    (row,) = [q for q in await a.queues() if q["next_hop"] == doomed.node_id.text]
    assert (row["frames"], row["link"]) == (0, "down")
    assert survivor.statistics.frames_forwarded >= 5


# -- whose frames a node forwards -------------------------------------------------------


@pytest.mark.parametrize("policy", ["neighbours", "open", "off"])
async def test_forward_policy(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, policy: str
) -> None:
    # m - n - z: n forwards by its policy; a stranger posts to n directly (n's admission
    # is open, or the stranger would be refused from its request's head).
    n = await memory_nodes.open("n", forward_policy=policy, admission="open")
    m, z = await memory_nodes.open("m"), await memory_nodes.open("z")
    await chain([m, n, z])
    stranger = Stranger(network_of(memory_nodes))
    now = n.clock()
    for_n, for_z = stranger.frame(n.node_id, now), stranger.frame(z.node_id, now)
    results = await stranger.post(n, [for_n, for_z])
    assert results[0].outcome is mesh.Outcome.ACCEPTED  # frames for n: always taken
    words = {
        "neighbours": (
            f"this node forwards only for its neighbours; "
            f"{stranger.identity.node_id.short} is not one"
        ),
        "open": None,
        "off": "this node does not forward frames for others",
    }[policy]
    if words is None:
        assert results[1].outcome is mesh.Outcome.ACCEPTED
    else:
        assert (results[1].outcome, results[1].code, results[1].words) == (
            mesh.Outcome.REJECTED,
            mesh.Reason.POLICY,
            words,
        )
    # A neighbour's frames are forwarded unless the policy is off.
    with trio.fail_after(60):
        trace = await a_trace(m, z, b"from a neighbour")
    if policy == "off":
        assert (trace.state, trace.by) == ("dropped", n.node_id)
        assert trace.why == (
            f"policy: refused by {n.node_id.short}: this node does not forward frames for others"
        )
    else:
        assert (trace.state, trace.hops) == ("delivered", 2)
    await trio.testing.wait_all_tasks_blocked()
    expected = {
        "neighbours": [b"from a neighbour"],
        "open": [b"from a neighbour", b"x"],  # the stranger's too
        "off": [],
    }[policy]
    assert sorted(await drain(z)) == expected
    assert await drain(n) == [b"x"]


async def a_trace(sender: Node, dst: Node, body: bytes) -> mesh.Trace:
    """Send with a receipt; wait until the frame is settled (delivered or dropped)."""
    sent = await sender.send(dst.node_id, body, receipt=True)
    return await sender.delivered(sent.id)


def network_of(factory: NodeFactory) -> MemoryNetwork:
    assert isinstance(factory.network, MemoryNetwork)
    return factory.network


# -- one origin cannot suppress another's frame -------------------------------------------


async def test_a_frame_id_reused_by_another_origin_does_not_suppress_the_real_one(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # a - b - d carries a's real frame; x, a neighbour of b, knows its id beforehand
    # and pushes a frame of its own with that id first, to d through b as well.
    a, b, x = [await memory_nodes.open(name) for name in "abx"]
    d = await memory_nodes.open("d", admission="open")  # the stranger below posts to it
    await chain([a, b, d])
    await peer(x, b)
    real = a.new_frame(d.node_id, b"the real one", receipt=True)
    forged = dataclasses.replace(x.new_frame(d.node_id, b"the impostor", receipt=True), id=real.id)
    (early,) = await x.send_sealed([(forged, forged.seal(x.identity))])
    with trio.fail_after(60):
        assert (await x.delivered(early.id)).state == "delivered"
    envelope = real.seal(a.identity)
    (sent,) = await a.send_sealed([(real, envelope)])
    assert sent.id == early.id
    with trio.fail_after(60):
        trace = await a.delivered(sent.id)
    assert (trace.state, trace.by, trace.hops) == ("delivered", d.node_id, 2)
    got = [(m.src, m.id, m.body) async for m in d.inbox(follow=False)]
    assert got == [
        (x.node_id, real.id, b"the impostor"),
        (a.node_id, real.id, b"the real one"),
    ]
    # Acknowledging one (origin, id) leaves the other.
    assert await d.ack([(x.node_id, real.id)]) == 1
    assert [m.src async for m in d.inbox(follow=False)] == [a.node_id]
    # Either one, if it comes again, is a duplicate.
    again = await Stranger(network_of(memory_nodes)).post(d, [envelope, forged.seal(x.identity)])
    assert [r.outcome for r in again] == [mesh.Outcome.DUPLICATE] * 2


async def test_a_transit_node_holds_a_frame_until_a_route_appears(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    n = await memory_nodes.open("n", forward_policy="open", admission="open")
    stranger = Stranger(network_of(memory_nodes))
    async with memory_nodes.session("c") as c:
        c_token, c_id = c.address_token(), c.node_id
    (result,) = await stranger.post(n, [stranger.frame(c_id, n.clock(), body=b"later")])
    assert result.outcome is mesh.Outcome.ACCEPTED  # taken, with nowhere to go yet
    assert n.statistics.frames_held == 1
    (held,) = [q for q in await n.queues() if q["next_hop"] is None]
    assert held["frames"] == 1
    async with memory_nodes.session("c") as c:
        await n.add_peer(c_token)
        await c.add_peer(n.address_token())
        with trio.fail_after(30):
            message = await next_message(c)
        assert (message.src, message.body, message.hops) == (
            stranger.identity.node_id,
            b"later",
            2,
        )


# -- any order of peering and sending ------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    size=st.integers(min_value=2, max_value=4),
    data=st.data(),
)
def test_any_order_of_peerings_and_sends_delivers_each_once(size: int, data: st.DataObject) -> None:
    """On a line of ``size`` nodes, peerings and sends in any order: once the line is
    whole, every frame is delivered exactly once, over as many hops as the line says."""
    links = [(i, i + 1) for i in range(size - 1)]
    pairs = [(s, d) for s in range(size) for d in range(size) if s != d]
    sends = data.draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=6), label="sends")
    steps: list[tuple[str, int, int]] = [("peer", *link) for link in links]
    steps += [("send", *pair) for pair in sends]
    order = data.draw(st.permutations(steps), label="order")

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with trio.open_nursery() as nursery:
                factory = NodeFactory(Path(tmp), MemoryNetwork(), nursery)
                nodes = [await factory.open(f"n{i}") for i in range(size)]
                sent: list[tuple[int, int, bytes]] = []
                for index, (step, x, y) in enumerate(order):
                    if step == "peer":
                        await peer(nodes[x], nodes[y])
                    else:
                        body = b"%d" % index
                        frame = await nodes[x].send(nodes[y].node_id, body, receipt=True)
                        sent.append((x, y, frame.id))
                with trio.fail_after(600):
                    for x, y, frame_id in sent:
                        trace = await nodes[x].delivered(frame_id)
                        assert (trace.state, trace.hops) == ("delivered", abs(x - y))
                await trio.testing.wait_all_tasks_blocked()
                for y, node in enumerate(nodes):
                    got = sorted([m.id async for m in node.inbox(follow=False)])
                    assert got == sorted(i for _, d, i in sent if d == y)
                    assert node.store.statistics().queued_frames == 0
                nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_only_the_destination_can_say_a_frame_was_delivered(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # a - b - d; d is down, so a's frame waits at b. b, knowing its id, tells a it was
    # delivered: a receipt a keeps, but not an outcome.
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    async with memory_nodes.session("d") as d:
        await chain([a, b, d])
        with trio.fail_after(30):
            await delivered(a, d, b"while d is up")
        d_id = d.node_id
    posts = record(a)
    sent = await a.send(d_id, b"waits at b", receipt=True)
    assert sent.next_hop == b.node_id
    with trio.fail_after(30):  # b took it (and a has had b's answer)
        await posts.wait_for(lambda: any(p.results and p.messages for p in posts.to(b)))
    await trio.testing.wait_all_tasks_blocked()
    now = b.clock()
    lie = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=b.node_id,
        id=secrets.token_bytes(crypto.FRAME_ID_SIZE),
        ts=now,
        exp=now + 60_000,
        hops=8,
        dst=a.node_id,
        ref=sent.id,
        st="delivered",
        n=2,
    ).seal(b.identity)
    results = await Stranger(network_of(memory_nodes), b.identity).post(a, [lie])
    assert results[0].outcome is mesh.Outcome.ACCEPTED
    trace = await a.trace(sent.id)
    assert trace is not None
    assert (trace.state, trace.by, trace.hops) == ("forwarded", None, None)
    # Waiting for the outcome goes on; d, once back, settles it.
    with trio.move_on_after(5) as scope:
        await a.delivered(sent.id)
    assert scope.cancelled_caught
    async with memory_nodes.session("d") as d:
        with trio.fail_after(120):
            trace = await a.delivered(sent.id)
        assert (trace.state, trace.by, trace.hops) == ("delivered", d.node_id, 2)


def test_held_destinations_are_looked_up_in_a_fixed_order() -> None:
    # The order of the lookups started for frames held together is the order of their
    # queries and query ids: taken from a set's iteration (which follows the hash of
    # bytes, different in every process) it made one simulation seed give two reports.
    from node._mesh import MeshRuntime

    ids = sorted((crypto.Identity.generate().node_id for _ in range(12)), key=lambda n: n.raw)
    asked: list[crypto.NodeId] = []

    class Router:
        tree = object()

        def held(self, dst: crypto.NodeId, now: int, *, ours: bool) -> list[mesh.Action]:
            assert ours
            asked.append(dst)
            return []

    class Runtime:
        router = Router()

    given_order = [*reversed(ids), None, ids[3]]
    assert MeshRuntime._held(Runtime(), given_order, 0, ours=True) == []  # type: ignore[arg-type]
    assert asked == ids
