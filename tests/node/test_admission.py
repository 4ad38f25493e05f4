"""Admission policy end to end, on the in-memory network in virtual time: who may hand a
node frames (decided from the request's head), block lists, the allow-list, and that
the lists survive a restart.

Every refusal is checked for its status and words, and each test ends with honest
traffic flowing.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

import crypto
import mesh
from node import MemoryNetwork, NodeError, make_transport
from node._fabric import sign_request
from node._forwarder import FRAMES_PATH
from tests.helpers import NodeFactory, Stranger, chain, delivered, drain, peer


def network_of(factory: NodeFactory) -> MemoryNetwork:
    assert isinstance(factory.network, MemoryNetwork)
    return factory.network


async def test_a_stranger_is_refused_from_the_head_and_neighbours_go_on(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    stranger = Stranger(network_of(memory_nodes))
    response = await stranger.post_raw(b, [stranger.frame(b.node_id, b.clock())])
    assert response.status_code == 403
    assert response.text.strip() == (
        f"node {stranger.identity.node_id.short} is not a neighbour of this node: this "
        "node takes frames only from its peers, relays and attached nodes (peer with it, "
        "or run this node with --admission open)"
    )
    assert b.store.statistics().inbox_frames == 0
    with trio.fail_after(30):
        await delivered(a, b, b"honest")
    assert await drain(b) == [b"honest"]


async def test_open_admission_takes_a_strangers_frames(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    b = await memory_nodes.open("b", admission="open")
    stranger = Stranger(network_of(memory_nodes))
    response = await stranger.post_raw(b, [stranger.frame(b.node_id, b.clock(), body=b"hi")])
    assert response.status_code == 200
    (result,) = mesh.decode_results(response.content, expected=1)
    assert result.outcome is mesh.Outcome.ACCEPTED
    assert await drain(b) == [b"hi"]


async def test_a_bad_signature_is_refused_before_the_body(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    b = await memory_nodes.open("b", admission="open")
    url = b.endpoints[0] + FRAMES_PATH
    async with httpx.AsyncClient(transport=make_transport(network_of(memory_nodes))) as client:
        response = await client.post(
            url, content=b"\x00" * 1000, headers={"content-type": mesh.CONTENT_TYPE_FRAMES}
        )
    assert response.status_code == 401
    assert response.text.startswith("request not authenticated: ")


async def test_a_body_that_does_not_match_its_signed_digest_is_refused(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    b = await memory_nodes.open("b", admission="open")
    stranger = Stranger(network_of(memory_nodes))
    url = b.endpoints[0] + FRAMES_PATH
    body = mesh.encode_frames([mesh.WireFrame(0, stranger.frame(b.node_id, b.clock()))])
    headers = [
        ("content-type", mesh.CONTENT_TYPE_FRAMES),
        *sign_request(stranger.identity, "POST", url, body, now=b.clock() // 1000),
    ]
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    async with httpx.AsyncClient(transport=make_transport(network_of(memory_nodes))) as client:
        response = await client.post(url, content=tampered, headers=headers)
    assert response.status_code == 401
    assert response.text.strip() == (
        f"request not authenticated: Content-Digest sha-256 does not match the "
        f"{len(tampered)}-byte body"
    )
    assert b.store.statistics().inbox_frames == 0


async def test_a_blocked_neighbour_is_refused_and_unblocking_lets_it_back(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    assert await b.change_policy("block", a.node_id) is True
    assert await b.change_policy("block", a.node_id) is False
    assert b.policy()["blocked"] == [a.node_id.text]
    sent = await a.send(b.node_id, b"while blocked", receipt=True)
    # a's requests get 403: its frames stay queued at a (a whole-request refusal is
    # retried with back-off), nothing reaches b.
    await trio.sleep(5)
    await trio.testing.wait_all_tasks_blocked()
    assert b.store.statistics().inbox_frames == 0
    assert b.statistics.requests_refused >= 1
    assert a.store.statistics().queued_frames >= 1
    assert await b.change_policy("unblock", a.node_id) is True
    with trio.fail_after(120):
        trace = await a.delivered(sent.id)
    assert trace.state == "delivered"
    assert await drain(b) == [b"while blocked"]


async def test_a_blocked_origin_gets_a_drop_receipt_across_hops(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # a - b - c: c blocks a; b (not blocked) carries a's frame and is told no.
    a, b, c = [await memory_nodes.open(n) for n in "abc"]
    await chain([a, b, c])
    await c.change_policy("block", a.node_id)
    with trio.fail_after(60):
        trace = await a.delivered((await a.send(c.node_id, b"no", receipt=True)).id)
    assert (trace.state, trace.by) == ("dropped", b.node_id)
    assert trace.why == (
        f"blocked: refused by {c.node_id.short}: node {a.node_id.short} is blocked at "
        "its destination"
    )
    # b's own traffic to c flows.
    with trio.fail_after(60):
        await delivered(b, c, b"from b")
    assert await drain(c) == [b"from b"]


async def test_the_allow_list_admits_only_allowed_origins(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    c = await memory_nodes.open("c", inbox_policy="allow-list")
    await chain([a, b, c])
    await c.change_policy("allow", b.node_id)
    with trio.fail_after(60):
        trace = await a.delivered((await a.send(c.node_id, b"from a", receipt=True)).id)
        await delivered(b, c, b"from b")
    assert trace.state == "dropped"
    assert trace.why is not None
    assert trace.why.endswith(
        f"the destination takes frames only from nodes it allows; {a.node_id.short} is not one"
    )
    assert await drain(c) == [b"from b"]


async def test_publications_from_a_blocked_origin_are_not_delivered(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # a - c - b: b blocks a; c carries a's publication to b, which keeps it from its
    # subscriber (and c's own publication reaches it).
    a, b, c = [await memory_nodes.open(n) for n in "abc"]
    await chain([a, c, b])
    await b.change_policy("block", a.node_id)
    async with b.subscribe("news.#") as subscription:
        await trio.sleep(5)  # virtual: the interest reaches a and c
        await trio.testing.wait_all_tasks_blocked()
        assert (await a.publish("news.a", b"blocked news")).next_hops == (c.node_id,)
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        await c.publish("news.c", b"news")
        with trio.fail_after(60):
            publication = await subscription.__anext__()
        await trio.testing.wait_all_tasks_blocked()
    assert (publication.topic, publication.body) == ("news.c", b"news")
    assert b.statistics.publications_received == 2
    assert b.statistics.publications_delivered == 1


async def test_the_lists_survive_a_restart_and_a_damaged_file_is_named(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    someone = crypto.Identity.generate().node_id
    async with memory_nodes.session("b") as b:
        await b.change_policy("block", someone)
        await b.change_policy("allow", someone)
        await b.change_policy("trust", someone)
    async with memory_nodes.session("b") as b:
        assert b.policy() == {
            "admission": "neighbours",
            "inbox": "anyone",
            "blocked": [someone.text],
            "allowed": [someone.text],
            "trusted": [someone.text],
        }
    path = memory_nodes.tmp_path / "b" / "policy.json"
    path.write_text(json.dumps({"blocked": ["not-a-node-id"]}))
    with pytest.raises(NodeError, match=r"policy\.json: .*not-a-node-id"):
        async with memory_nodes.session("b"):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("admission", "everyone", "admission 'everyone' is not one of neighbours, open"),
        ("inbox_policy", "some", "inbox policy 'some' is not one of anyone, allow-list"),
    ],
)
async def test_a_bad_policy_setting_fails_before_anything_starts(
    memory_nodes: NodeFactory, setting: str, value: str, words: str
) -> None:
    with pytest.raises(NodeError, match=words):
        async with memory_nodes.session("x", **{setting: value}):
            pass  # pragma: no cover


async def test_a_flood_of_empty_frames_stops_at_the_origins_share_and_others_flow(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The attack: empty-body frames from a throw-away identity to a node that takes
    # anyone's (admission open). Each is charged what it stores, so the flood stops at
    # the origin's share of the inbox; another origin still delivers.
    quota = 4 * 1024 * 1024
    b = await memory_nodes.open("b", admission="open", max_inbox_bytes=quota)
    a = await memory_nodes.open("a")
    await peer(a, b)
    flooder = Stranger(network_of(memory_nodes))
    share = quota // mesh.INBOX_ORIGIN_SHARE
    accepted = refused = 0
    words = ""
    for _ in range(20):
        now = b.clock()
        batch = [
            flooder.frame(b.node_id, now, body=b"") for _ in range(mesh.MAX_FRAMES_PER_REQUEST)
        ]
        response = await flooder.post_raw(b, batch)
        assert response.status_code == 200, response.text
        for result in mesh.decode_results(response.content, expected=len(batch)):
            if result.ok:
                accepted += 1
            else:
                assert result.code is mesh.Reason.STORE_FULL
                refused += 1
                words = result.words
    charge = mesh.stored_charge(len(flooder.frame(b.node_id, b.clock(), body=b"")))
    assert accepted == share // charge
    assert refused == 20 * mesh.MAX_FRAMES_PER_REQUEST - accepted
    assert words.startswith(f"inbox holds {accepted * charge} bytes from ")
    assert b.store.statistics().inbox_bytes == accepted * charge <= share
    with trio.fail_after(30):
        await delivered(a, b, b"honest")
