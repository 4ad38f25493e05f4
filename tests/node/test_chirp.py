"""Chirp, the toy Twitter, on the in-memory network in virtual time: posts reach
followers only, follows survive restarts, the timeline includes what came while the
follower was down, oldest first and each once."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

import crypto
from node import Node, NodeError, Post
from node._chirp import MAX_POST_LENGTH, chirp_topic
from tests.helpers import NodeFactory, chain, peer


async def knows(node: Node, topic: str, subscriber: Node) -> None:
    with trio.fail_after(60):
        while subscriber.node_id not in node.mesh.router.interests.subscribers(
            topic, now=node.clock()
        ):
            await node.mesh.interests_changed.wait()


async def timeline_of(node: Node, count: int) -> list[Post]:
    """Wait until ``node``'s timeline holds ``count`` posts; return it."""
    with trio.fail_after(60):
        while True:
            changed = node.mesh.inbox_changed  # before reading: no change slips between
            if len(posts := await node.chirp.timeline()) >= count:
                return posts
            await changed.wait()


async def test_posts_reach_followers_in_order(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    alice, relay, bob, carol = [await memory_nodes.open(n) for n in ("alice", "r", "bob", "carol")]
    await chain([alice, relay, bob])
    await peer(relay, carol)
    assert await bob.chirp.follow(alice.node_id.text) == [alice.node_id]
    await knows(alice, chirp_topic(alice.node_id), bob)
    await alice.chirp.post("first")
    await trio.sleep(1)  # the posts' own times are what orders the timeline
    await alice.chirp.post("second")
    await carol.chirp.post("carol is not followed")
    posts = await timeline_of(bob, 2)
    assert [(p.author, p.text) for p in posts] == [
        (alice.node_id, "first"),
        (alice.node_id, "second"),
    ]
    assert await bob.chirp.timeline() == posts  # reading does not consume
    assert await carol.chirp.timeline() == []


async def test_follows_survive_a_restart_and_the_timeline_fills_meanwhile(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    alice, relay = [await memory_nodes.open(n) for n in ("alice", "r")]
    follower = await memory_nodes.start("bob")
    await chain([alice, relay, follower.node])
    await follower.node.chirp.follow(alice.node_id)
    await knows(alice, chirp_topic(alice.node_id), follower.node)
    await alice.chirp.post("before")
    await timeline_of(follower.node, 1)
    await follower.stop()
    await alice.chirp.post("while bob was down")
    bob = await memory_nodes.open("bob")
    assert await bob.chirp.following() == [alice.node_id]
    posts = await timeline_of(bob, 2)
    assert [p.text for p in posts] == ["before", "while bob was down"]


async def test_unfollow_stops_new_posts_and_hides_old_ones(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = [await memory_nodes.open(n) for n in ("alice", "bob")]
    await peer(alice, bob)
    await bob.chirp.follow(alice.node_id)
    await knows(alice, chirp_topic(alice.node_id), bob)
    await alice.chirp.post("hello")
    await timeline_of(bob, 1)
    assert await bob.chirp.unfollow(alice.node_id)
    assert not await bob.chirp.unfollow(alice.node_id)
    assert await bob.chirp.following() == []
    assert await bob.chirp.timeline() == []
    published = await alice.chirp.post("nobody listens")
    with trio.fail_after(60):
        while published.next_hops:  # until alice hears of the unsubscription
            await alice.mesh.interests_changed.wait()
            published = await alice.chirp.post("nobody listens")


async def test_watch_gives_the_timeline_then_new_posts(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = [await memory_nodes.open(n) for n in ("alice", "bob")]
    await peer(alice, bob)
    with pytest.raises(NodeError, match="follow someone first"):
        await anext(bob.chirp.watch())
    await bob.chirp.follow(alice.node_id)
    await knows(alice, chirp_topic(alice.node_id), bob)
    await alice.chirp.post("old")
    await timeline_of(bob, 1)
    seen = []
    with trio.fail_after(60):
        async with contextlib.aclosing(bob.chirp.watch()) as watching:
            async for post in watching:
                seen.append(post.text)
                if post.text == "old":
                    await alice.chirp.post("new")
                else:
                    break
    assert seen == ["old", "new"]


async def test_bad_posts_and_follows(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    alice = await memory_nodes.open("alice")
    with pytest.raises(crypto.Malformed, match="some text"):
        await alice.chirp.post("  ")
    with pytest.raises(crypto.Malformed, match=f"at most {MAX_POST_LENGTH}"):
        await alice.chirp.post("x" * (MAX_POST_LENGTH + 1))
    with pytest.raises(NodeError, match="itself"):
        await alice.chirp.follow(alice.node_id)
    with pytest.raises(crypto.Malformed):
        await alice.chirp.follow("not-a-node-id")
    # Nobody else can post as alice: the topic is her secure name.
    other = await memory_nodes.open("other")
    with pytest.raises(NodeError, match="secure name"):
        await other.publish(chirp_topic(alice.node_id), b"forged")
