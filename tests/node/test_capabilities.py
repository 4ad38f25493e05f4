"""Capabilities enforced by running nodes, in virtual time on the in-memory network:
publishing under another's secure name with a delegated capability until it is revoked,
revocations flooded, kept across restarts and greeted to a node that was away, and the
inbox and subscription requirements.

Waits are on events (a publication, a revocation learned, a receipt), bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import secrets

import pytest
import trio
import trio.testing

import crypto
import mesh
from node import Node, NodeError
from tests.helpers import NodeFactory, Stranger, chain, peer
from tests.node.test_pubsub import knows, settle, take


async def learns(node: Node, capability: crypto.Capability) -> crypto.Revocation:
    """Wait until ``node`` knows a revocation of ``capability`` (or a link above it)."""
    with trio.fail_after(60):
        while (revocation := node.revoked(capability)) is None:
            await node.mesh.revocations_changed.wait()
    return revocation


def new_id() -> bytes:
    return secrets.token_bytes(crypto.CAPABILITY_ID_SIZE)


def feed_caps(owner: Node, holder: Node, user: Node) -> tuple[crypto.Capability, crypto.Capability]:
    """``owner`` lets ``holder`` publish under ``~owner.feed.#``; ``holder`` delegates
    ``~owner.feed.c`` to ``user``."""
    feed = f"~{owner.node_id.text}.feed"
    parent = crypto.grant(
        owner.identity,
        crypto.Target.topic(owner.node_id, f"{feed}.#"),
        ["publish"],
        subject=holder.node_id,
        now=owner.clock(),
        cap_id=new_id(),
    )
    child = crypto.delegate(
        holder.identity,
        parent,
        subject=user.node_id,
        now=owner.clock(),
        cap_id=new_id(),
        target=crypto.Target.topic(owner.node_id, f"{feed}.c"),
    )
    return parent, child


async def test_a_delegated_capability_publishes_under_a_secure_name_until_it_is_revoked(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    owner, relay, user, reader, holder = [
        await memory_nodes.open(name) for name in ("owner", "relay", "user", "reader", "holder")
    ]
    await chain([user, relay, owner, reader])
    await peer(holder, relay)
    parent, child = feed_caps(owner, holder, user)
    topic = f"~{owner.node_id.text}.feed.c"
    async with reader.subscribe(f"~{owner.node_id.text}.feed.#") as sub:
        await knows(user, topic, reader)
        published = await user.publish(topic, b"one", cap=child)
        (got,) = await take(sub, 1)
        assert (got.origin, got.id, got.body) == (user.node_id, published.id, b"one")

        # Without it, or outside what it designates, the user's own node refuses at once.
        with pytest.raises(NodeError, match="secure name: only that node, or a holder"):
            await user.publish(topic, b"no capability")
        with pytest.raises(NodeError, match="not topics"):
            await user.publish(f"~{owner.node_id.text}.feed.other", b"wider", cap=child)

        revocation = await owner.revoke(parent)
        assert revocation.cap_id == parent.id
        for node in (relay, user, reader, holder):
            assert (await learns(node, child)).cap_id == parent.id
        with pytest.raises(NodeError, match="was revoked by its issuer"):
            await user.publish(topic, b"after", cap=child)

        # A publisher that did not hear of it is refused at the first hop.
        frame = crypto.Frame(
            kind=crypto.Kind.PUB,
            src=user.node_id,
            id=new_id(),
            ts=relay.clock(),
            exp=relay.clock() + 60_000,
            hops=8,
            topic=topic,
            body=b"by hand",
            cap=child.envelope,
        )
        (result,) = await Stranger(memory_nodes.network, user.identity).post(  # type: ignore[arg-type]
            relay, [frame.seal(user.identity)]
        )
        assert result.code is mesh.Reason.FORBIDDEN
        assert "capability link 1 of 2" in result.words
        assert "was revoked by its issuer" in result.words
        await settle()
        assert sub._receive.statistics().current_buffer_used == 0  # nothing more came


async def test_a_revocation_is_kept_across_a_restart_and_greeted_to_a_node_that_was_away(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    owner = await memory_nodes.open("owner")
    relay_run = await memory_nodes.start("relay")
    away_run = await memory_nodes.start("away")
    await chain([owner, relay_run.node, away_run.node])
    parent, child = feed_caps(owner, relay_run.node, away_run.node)
    await away_run.stop()
    await owner.revoke(parent)
    await learns(relay_run.node, child)

    # The relay restarts: it knows the revocation from its store at once.
    await relay_run.stop()
    relay = await memory_nodes.open("relay")
    assert relay.revoked(child) is not None
    assert relay.capabilities()["revocations"] == 1

    # The node that was away hears of it when it comes back and greets its neighbour.
    away = await memory_nodes.open("away")
    assert away.revoked(child) is None
    assert (await learns(away, child)).signer == owner.node_id


async def test_an_inbox_that_requires_a_capability_takes_only_holders(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    owner = await memory_nodes.open("owner", requirements=mesh.Requirements(send=True))
    relay, sender = [await memory_nodes.open(name) for name in ("relay", "sender")]
    await chain([sender, relay, owner])
    sent = await sender.send(owner.node_id, b"let me in", receipt=True)
    with trio.fail_after(60):
        trace = await sender.delivered(sent.id)
    assert trace.state == "dropped"
    assert trace.why is not None
    # The relay reports its next hop's refusal, in the destination's words.
    assert trace.by == relay.node_id
    short = owner.node_id.short
    assert trace.why.startswith(f"forbidden: refused by {short}: sending to {short}'s inbox needs")
    assert "none was presented" in trace.why

    grant = crypto.grant(
        owner.identity,
        crypto.Target.inbox(owner.node_id),
        ["send"],
        subject=sender.node_id,
        now=owner.clock(),
        cap_id=new_id(),
    )
    sender.hold(grant.token)  # presented from now on, to owner's inbox only
    sent = await sender.send(owner.node_id, b"with a capability", receipt=True)
    with trio.fail_after(60):
        trace = await sender.delivered(sent.id)
    assert trace.state == "delivered"
    # Another holder of the token is not its subject.
    stranger = await memory_nodes.open("stranger")
    await peer(stranger, relay)
    sent = await stranger.send(owner.node_id, b"borrowed", receipt=True, cap=grant)
    with trio.fail_after(60):
        trace = await stranger.delivered(sent.id)
    assert trace.state == "dropped"
    assert trace.why is not None
    assert f"presented by {stranger.node_id.short}" in trace.why


async def test_a_relay_that_requires_a_capability_to_subscribe_filters_without_one(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    publisher = await memory_nodes.open("publisher")
    relay = await memory_nodes.open(
        "relay", requirements=mesh.Requirements(subscribe=("secret.#",))
    )
    reader = await memory_nodes.open("reader")
    await chain([publisher, relay, reader])
    async with reader.subscribe("secret.#", "news.#") as sub:
        await knows(publisher, "news.x", reader)
        await settle()
        # The relay took news.# and refused secret.#: the publisher never heard of it.
        assert reader.node_id not in publisher.mesh.router.interests.subscribers(
            "secret.x", now=publisher.clock()
        )
        assert relay.statistics.rejected_by_reason["forbidden"] >= 1
        grant = crypto.grant(
            relay.identity,
            crypto.Target.topic(relay.node_id, "secret.#"),
            ["subscribe"],
            subject=reader.node_id,
            now=relay.clock(),
            cap_id=new_id(),
        )
        reader.hold(grant)  # the reader states its subscriptions again, with it
        await knows(publisher, "secret.x", reader)
        await publisher.publish("secret.x", b"for holders")
        (got,) = await take(sub, 1)
        assert got.body == b"for holders"
