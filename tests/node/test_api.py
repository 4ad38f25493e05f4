"""The local API: bearer token, send (custody, receipts, waiting), inbox as Server-Sent
Events, ack, status, routes, queues, trace, peers; publish, and subscribe as Server-Sent
Events; named subscriptions (streamed, acknowledged, listed, ended); chirp."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import crypto
import mesh
from node import MemoryNetwork, Node, Request, make_transport
from node._api import KEEPALIVE, LocalApi, _is_local
from node._chirp import chirp_topic
from tests.helpers import NodeFactory, messages, peer


def api(node: Node, network: MemoryNetwork, *, token: str | None = None) -> httpx.AsyncClient:
    assert node.api_url is not None
    return httpx.AsyncClient(
        transport=make_transport(network),
        base_url=node.api_url + "/",
        headers={"authorization": f"Bearer {token or node.api_token}"},
        timeout=None,  # calls that wait are bounded by the tests (virtual time)
    )


def sse_messages(text: str) -> list[dict[str, object]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields.get("event") == "message":
            events.append(json.loads(fields["data"]))
    return events


async def test_token_required(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    async with api(a, network, token="wrong") as client:
        response = await client.get("status")
    assert response.status_code == 401
    assert "bearer token" in response.json()["error"]
    async with httpx.AsyncClient(transport=make_transport(network)) as client:
        assert a.api_url is not None
        response = await client.get(a.api_url + "/status")
    assert response.status_code == 401


async def test_a_get_may_carry_the_token_in_the_query_as_eventsource_must(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    assert a.api_url is not None
    async with httpx.AsyncClient(transport=make_transport(network)) as client:
        response = await client.get(a.api_url + "/status", params={"access_token": a.api_token})
        assert response.status_code == 200, response.text
        assert response.json()["node"] == a.node_id.text
        wrong = await client.get(a.api_url + "/status", params={"access_token": "wrong"})
        assert wrong.status_code == 401
        # Not for calls that change something: those need the header.
        posted = await client.post(
            a.api_url + "/publish", params={"topic": "t", "access_token": a.api_token}
        )
        assert posted.status_code == 401


async def test_send_inbox_ack_status(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, b, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "send",
            params={"to": b.node_id.text},
            content=b"hi b",
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 200, response.text
        sent = response.json()
        assert sent == {
            "id": sent["id"],
            "to": b.node_id.text,
            "next_hop": b.node_id.text,
            "held": False,
        }
        response = await client.post("send", params={"to": b.node_id.text}, content=b"\xff\x00")
        assert response.status_code == 200
    with trio.fail_after(10):
        await messages(b, 2)

    async with api(b, network) as client:
        response = await client.get("inbox", params={"follow": "0"})
        assert response.headers["content-type"] == "text/event-stream"
        received = sse_messages(response.text)
        assert [m.get("body") for m in received] == ["hi b", None]
        assert received[0]["ct"] == "text/plain"
        assert received[0]["id"] == sent["id"]
        assert received[0]["src"] == a.node_id.text
        assert received[0]["hops"] == 1
        assert received[1]["body_b64"] == "/wA="
        assert response.text.rstrip().endswith("event: end\ndata: {}")

        # By origin and id, as "SRC:ID"; an id nobody sent acknowledges nothing.
        response = await client.post(
            "inbox/ack", json={"ids": [f"{a.node_id.text}:{sent['id']}", "00" * 16]}
        )
        assert response.json() == {"acked": 1}
        response = await client.get("inbox", params={"follow": "0"})
        (left,) = sse_messages(response.text)
        # A bare id still works (whoever sent it).
        response = await client.post("inbox/ack", json={"ids": [left["id"]]})
        assert response.json() == {"acked": 1}

        status = (await client.get("status")).json()
        assert status["node"] == b.node_id.text
        assert status["inbox"]["frames"] == 0
        assert [p["node"] for p in status["peers"]] == [a.node_id.text]
        assert [(n["node"], n["roles"], n["state"]) for n in status["neighbours"]] == [
            (a.node_id.text, ["peer"], "up")
        ]
        assert status["routes"] == 1  # to a, from a's announce
        assert status["queued"] == {"frames": 0, "bytes": 0}
        assert status["counters"]["frames_accepted"] >= 2
        assert crypto.parse_token(status["address"], now=b.clock()).node == b.node_id


async def test_an_ack_by_origin_leaves_the_same_id_from_another_origin(
    memory_nodes: NodeFactory,
) -> None:
    a, b, x = [await memory_nodes.open(name) for name in "abx"]
    await peer(a, b)
    await peer(x, b)
    frame = a.new_frame(b.node_id, b"from a")
    await a.send_sealed([(frame, frame.seal(a.identity))])
    copy = dataclasses.replace(x.new_frame(b.node_id, b"from x"), id=frame.id)
    await x.send_sealed([(copy, copy.seal(x.identity))])
    with trio.fail_after(10):
        await messages(b, 2)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    async with api(b, memory_nodes.network) as client:
        response = await client.post(
            "inbox/ack", json={"ids": [f"{x.node_id.text}:{frame.id.hex()}"]}
        )
        assert response.json() == {"acked": 1}
        response = await client.get("inbox", params={"follow": "0"})
        assert [(m["src"], m["body"]) for m in sse_messages(response.text)] == [
            (a.node_id.text, "from a")
        ]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({}, 400, "?to=NODE_ID"),
        ({"to": "nope"}, 400, "bad node id"),
        ({"wait": "1", "timeout": "0"}, 400, "timeout must be a positive number of seconds"),
        ({"wait": "1", "timeout": "soon"}, 400, "not 'soon'"),
        ({"wait": "1", "timeout": "-3"}, 400, "not '-3'"),
    ],
)
async def test_send_errors(
    pair: tuple[Node, Node, MemoryNetwork], params: dict[str, str], status: int, words: str
) -> None:
    a, b, network = pair
    if "wait" in params:
        params = {"to": b.node_id.text, **params}
    async with api(a, network) as client:
        response = await client.post("send", params=params, content=b"x")
    assert response.status_code == status
    assert words in response.json()["error"]
    assert a.store.statistics().queued_frames == 0


async def test_send_to_itself_is_400(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post("send", params={"to": a.node_id.text}, content=b"x")
    assert response.status_code == 400
    assert "cannot send to itself" in response.json()["error"]


async def test_send_oversized_body(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, b, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "send", params={"to": b.node_id.text}, content=b"x" * (crypto.MAX_BODY_SIZE + 1)
        )
    assert response.status_code == 413
    assert f"limit {crypto.MAX_BODY_SIZE}" in response.json()["error"]


async def test_send_to_nobody_known_is_held(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    nobody = crypto.Identity.generate().node_id
    async with api(a, network) as client:
        response = await client.post("send", params={"to": nobody.text, "receipt": "1"})
        assert response.status_code == 200
        sent = response.json()
        assert (sent["to"], sent["next_hop"], sent["held"]) == (nobody.text, None, True)
        trace = (await client.get(f"trace/{sent['id']}")).json()
        assert (trace["state"], trace["receipt_asked"], trace["next_hop"]) == ("held", True, None)
        queues = (await client.get("queues")).json()
    (held,) = [q for q in queues if q["next_hop"] is None]
    assert (held["frames"], held["link"], held["roles"]) == (1, None, [])
    assert held["bytes"] > 0


async def test_send_and_wait_for_the_receipt(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "send", params={"to": b.node_id.text, "wait": "1", "timeout": "30"}, content=b"w"
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["state"], answer["hops"], answer["by"], answer["held"]) == (
        "delivered",
        1,
        b.node_id.text,
        False,
    )
    assert answer["next_hop"] == b.node_id.text
    assert answer["receipt_asked"] is True
    assert [r["state"] for r in answer["receipts"]] == ["delivered"]


async def test_send_and_wait_times_out_with_504(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    nobody = crypto.Identity.generate().node_id
    async with api(a, network) as client:
        start = trio.current_time()
        response = await client.post(
            "send", params={"to": nobody.text, "wait": "1", "timeout": "7.5"}, content=b"w"
        )
        assert trio.current_time() - start == pytest.approx(7.5)
        assert response.status_code == 504
        answer = response.json()
        assert answer["error"] == "no receipt within 7.5 s; the frame is still in the mesh"
        assert (answer["state"], answer["held"]) == ("waiting", True)
        # Still in custody: its trace says so.
        trace = (await client.get(f"trace/{answer['id']}")).json()
        assert trace["state"] == "held"


async def test_send_and_wait_for_a_drop_is_422(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    b = await memory_nodes.open("b", forward_policy="off")
    c = await memory_nodes.open("c")
    await peer(a, b)
    await peer(b, c)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    async with api(a, memory_nodes.network) as client:
        # Held until c's announce comes through b, then refused by b.
        with trio.fail_after(60):
            response = await client.post(
                "send", params={"to": c.node_id.text, "wait": "1"}, content=b"w"
            )
    assert response.status_code == 422
    answer = response.json()
    why = f"policy: refused by {b.node_id.short}: this node does not forward frames for others"
    assert answer["error"] == f"dropped by {b.node_id.short}: {why}"
    assert (answer["state"], answer["by"], answer["why"]) == ("dropped", b.node_id.text, why)


async def test_routes_queues_and_trace(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await peer(a, b)
    await peer(b, c)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    async with api(a, memory_nodes.network) as client:
        with trio.fail_after(60):
            response = await client.post(
                "send", params={"to": c.node_id.text, "wait": "1"}, content=b"two hops"
            )
        assert response.status_code == 200, response.text
        frame_id = response.json()["id"]

        routes = (await client.get("routes")).json()
        assert [(r["destination"], r["next_hop"], r["hops"], r["direct"]) for r in routes] == [
            (b.node_id.text, b.node_id.text, 1, True),
            (c.node_id.text, b.node_id.text, 2, False),
        ]
        assert routes[0]["age"] >= 0  # learned from b's own announce
        assert routes[1]["age"] >= 0
        assert routes[1]["expires_in"] > 0

        queues = (await client.get("queues")).json()
        assert [(q["next_hop"], q["frames"], q["link"], q["roles"]) for q in queues] == [
            (b.node_id.text, 0, "up", ["peer"])
        ]
        assert queues[0]["next_attempt_in"] is None

        trace = (await client.get(f"trace/{frame_id}")).json()
        assert trace["id"] == frame_id
        assert (trace["to"], trace["state"], trace["hops"], trace["by"]) == (
            c.node_id.text,
            "delivered",
            2,
            c.node_id.text,
        )
        assert trace["first_hop"] == b.node_id.text
        assert trace["created"] <= trace["first_accepted"] <= trace["settled_at"]
        assert trace["expires"] > trace["created"]
        (receipt,) = trace["receipts"]
        assert (receipt["by"], receipt["state"], receipt["hops"]) == (
            c.node_id.text,
            "delivered",
            2,
        )

        response = await client.get(f"trace/{'00' * 16}")
        assert response.status_code == 404
        assert "sent no frame 0000" in response.json()["error"]
        response = await client.get("trace/xyz")
        assert response.status_code == 400
        assert "'xyz' is not hex" in response.json()["error"]


async def test_add_a_peer_through_the_api(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # Only a peers with b here: b takes frames from anyone (admission open).
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b", admission="open")
    assert isinstance(memory_nodes.network, MemoryNetwork)
    async with api(a, memory_nodes.network) as client:
        response = await client.post("peers", content=b.address_token().encode() + b"\n")
        assert response.status_code == 200, response.text
        record = b.address.record if b.address else None
        assert record is not None
        assert response.json() == {"node": b.node_id.text, "seq": record.seq}
        # A neighbour at once: frames go straight to it.
        response = await client.post("send", params={"to": b.node_id.text}, content=b"hi")
        assert response.json()["next_hop"] == b.node_id.text
        assert a.peer_address(b.node_id) is not None

        for body, words in [
            (b"nonsense", "not added: "),
            (b"\xff\xfe", "must be an address token"),
            (a.address_token().encode(), "this node's own address"),
        ]:
            response = await client.post("peers", content=body)
            assert response.status_code == 400
            assert words in response.json()["error"]
    with trio.fail_after(10):
        assert [m.body for m in await messages(b, 1)] == [b"hi"]


async def test_bad_ack_body_and_unknown_call(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post("inbox/ack", content=b"[1, 2]")
        assert response.status_code == 400
        assert '{"ids"' in response.json()["error"]
        response = await client.post("inbox/ack", json={"ids": ["nobody:00"]})
        assert response.status_code == 400
        response = await client.post("inbox/ack", json={"ids": ["zz"]})
        assert response.status_code == 400
        response = await client.get("nothing")
        assert response.status_code == 404
        response = await client.get("send")
        assert response.status_code == 404


async def test_follow_streams_new_messages(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, b, network = pair
    async with api(b, network) as client, client.stream("GET", "inbox") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == ": ptth inbox"
        await a.send(b.node_id, b"live")
        seen = []
        async for line in lines:
            seen.append(line)
            if line.startswith("data: "):
                break
        assert json.loads(seen[-1].removeprefix("data: "))["body"] == "live"


@pytest.mark.parametrize(
    ("peer_name", "local"),
    [("127.0.0.1:5000", True), ("[::1]:5000", True), ("10.0.0.7:5000", False), ("memory", True)],
)
def test_loopback_rule(peer_name: str, local: bool) -> None:
    assert _is_local(peer_name) is local


async def test_send_past_the_store_quota_is_429(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a", quotas=mesh.Quotas(total=2000))
    assert isinstance(memory_nodes.network, MemoryNetwork)
    nobody = crypto.Identity.generate().node_id  # held: it stays in a's queue
    async with api(a, memory_nodes.network) as client:
        response = await client.post("send", params={"to": nobody.text}, content=b"x" * 1000)
        assert response.status_code == 200, response.text
        response = await client.post("send", params={"to": nobody.text}, content=b"x" * 1000)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert "2000" in response.json()["error"]
    assert a.store.statistics().queued_frames == 1
    with pytest.raises(mesh.StoreFull):
        await a.send(nobody, b"x" * 1000)


# -- publish/subscribe ------------------------------------------------------------------


async def learned(node: Node, topic: str, subscriber: Node) -> None:
    """Wait until ``node`` knows that ``subscriber`` wants ``topic``."""
    with trio.fail_after(60):
        while subscriber.node_id not in node.mesh.router.interests.subscribers(
            topic, now=node.clock()
        ):
            await node.mesh.interests_changed.wait()


async def unsubscribed(node: Node) -> None:
    """Wait until ``node`` holds no live subscription."""
    with trio.fail_after(60):
        while len(node.mesh.subscriptions):
            await node.mesh.subscriptions.changed.wait()


async def next_event(lines: AsyncIterator[str]) -> dict[str, str]:
    """The fields of the next Server-Sent Event (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if fields:
                return fields
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended; last fields {fields}")


async def test_publish_and_subscribe_through_the_api(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    async with api(a, network) as client_a, api(b, network) as client_b:
        async with client_b.stream(
            "GET", "subscribe", params=[("pattern", "news.#"), ("pattern", "*.alerts")]
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "text/event-stream"
            lines = stream.aiter_lines()
            # The first line comes once the subscription is live.
            assert await anext(lines) == ": ptth subscribe news.# *.alerts"
            assert len(b.mesh.subscriptions) == 1
            await learned(a, "news.tech", b)
            response = await client_a.post(
                "publish",
                params={"topic": "news.tech"},
                content=b"hi b",
                headers={"content-type": "text/plain"},
            )
            assert response.status_code == 200, response.text
            published = response.json()
            assert published == {
                "id": published["id"],
                "topic": "news.tech",
                "next_hops": [b.node_id.text],
                "delivered_here": False,
            }
            response = await client_a.post(
                "publish", params={"topic": "x.alerts", "ttl": "60"}, content=b"\xff\x00"
            )
            assert response.status_code == 200, response.text
            binary_id = response.json()["id"]

            event = await next_event(lines)
            assert (event["event"], event["id"]) == ("publication", published["id"])
            got = json.loads(event["data"])
            assert got == {
                "topic": "news.tech",
                "origin": a.node_id.text,
                "id": published["id"],
                "ts": got["ts"],
                "received": got["received"],
                "hops": 1,
                "ct": "text/plain",
                "body": "hi b",
            }
            assert got["ts"] <= got["received"]
            event = await next_event(lines)
            got = json.loads(event["data"])
            assert (got["id"], got["topic"], got["ct"]) == (binary_id, "x.alerts", None)
            assert got["body_b64"] == "/wA="
            assert "body" not in got
        # The client left: the node notices (its next write fails) and unsubscribes.
        await unsubscribed(b)
        assert b.mesh.subscriptions.advertised == set()
        # Nobody wants it any more, once a has heard.
        response = await client_a.post("publish", params={"topic": "sport"}, content=b"x")
        assert response.json()["next_hops"] == []


async def test_a_publication_reaches_a_subscription_on_the_same_node(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    async with (
        api(a, network) as client,
        client.stream("GET", "subscribe", params={"pattern": "t"}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": ptth subscribe t"
        response = await client.post("publish", params={"topic": "t"}, content=b"to me")
        assert response.json()["delivered_here"] is True
        got = json.loads((await next_event(lines))["data"])
        assert (got["body"], got["hops"], got["origin"]) == ("to me", 0, a.node_id.text)


async def test_a_quiet_subscription_stream_is_kept_alive(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    async with (
        api(a, network) as client,
        client.stream("GET", "subscribe", params={"pattern": "t"}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": ptth subscribe t"
        assert await anext(lines) == ""
        start = trio.current_time()
        assert await anext(lines) == ": keep-alive"
        assert trio.current_time() - start == pytest.approx(KEEPALIVE)
        assert len(a.mesh.subscriptions) == 1


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "?topic=TOPIC"),
        ({"topic": "a.*"}, "topic 'a.*': word 2 '*' is not one of"),
        ({"topic": ""}, "?topic=TOPIC"),  # an empty value is no value
        ({"topic": "~nobody.x"}, "must be ~<node-id>"),
        ({"topic": "t", "ttl": "0"}, "ttl must be a positive number of seconds up to"),
        ({"topic": "t", "ttl": "soon"}, "not 'soon'"),
        ({"topic": "t", "ttl": "inf"}, "not 'inf'"),
        ({"topic": "t", "ttl": str(10**9)}, f"not '{10**9}'"),
    ],
)
async def test_publish_errors(
    pair: tuple[Node, Node, MemoryNetwork], params: dict[str, str], words: str
) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post("publish", params=params, content=b"x")
    assert response.status_code == 400
    assert words in response.json()["error"]


async def test_publish_a_bad_content_type_or_an_oversized_body(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "publish", params={"topic": "t"}, content=b"x", headers={"content-type": "x" * 200}
        )
        assert response.status_code == 400
        assert "is not a content type" in response.json()["error"]
        response = await client.post(
            "publish", params={"topic": "t"}, content=b"x" * (crypto.MAX_BODY_SIZE + 1)
        )
    assert response.status_code == 413
    assert f"limit {crypto.MAX_BODY_SIZE}" in response.json()["error"]


async def test_publish_under_another_nodes_secure_name_is_403(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, b, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "publish", params={"topic": f"~{b.node_id.text}.chirp"}, content=b"forged"
        )
        assert response.status_code == 403
        error = response.json()["error"]
        assert f"{b.node_id.short}'s secure name" in error
        assert f"ours is ~{a.node_id.text}" in error
        response = await client.post(
            "publish", params={"topic": f"~{a.node_id.text}.chirp"}, content=b"mine"
        )
        assert response.status_code == 200, response.text


async def test_publish_past_the_store_quota_is_429(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a", quotas=mesh.Quotas(total=2000))
    b = await memory_nodes.open("b")
    await peer(a, b)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    async with b.subscribe("t"):
        await learned(a, "t", b)
        await a.send(crypto.Identity.generate().node_id, b"x" * 1000)  # held: it stays
        async with api(a, memory_nodes.network) as client:
            response = await client.post("publish", params={"topic": "t"}, content=b"x" * 1000)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert "2000" in response.json()["error"]


async def test_publish_on_a_stopped_node_is_503(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    running = await memory_nodes.start("a")
    await running.stop()
    node = running.node
    # The server is gone with the node: call its API handler directly.
    request = Request(
        "POST",
        "/api/v1/publish?topic=t",
        [("authorization", f"Bearer {node.api_token}")],
        b"x",
        "memory",
    )
    response = await LocalApi(node).handle(request)
    assert response.status == 503
    assert json.loads(response.body) == {"error": "node is not running"}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ((), "?pattern=P"),
        ((("pattern", "a.#x"),), "pattern 'a.#x': word 2 '#x' is not one of"),
        ((("pattern", "ok"), ("pattern", "a..b")), "pattern 'a..b'"),
    ],
)
async def test_subscribe_errors(
    pair: tuple[Node, Node, MemoryNetwork],
    params: tuple[tuple[str, str], ...],
    words: str,
) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.get("subscribe", params=params)
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert len(a.mesh.subscriptions) == 0


# -- named (durable) subscriptions ------------------------------------------------------


async def take_publications(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    """The next ``count`` publication events: their data, checking that each event's id is
    its seq."""
    got = []
    for _ in range(count):
        event = await next_event(lines)
        assert event["event"] == "publication", event
        data = json.loads(event["data"])
        assert event["id"] == str(data["seq"])
        got.append(data)
    return got


async def test_a_named_subscription_streams_what_is_pending_until_acknowledged(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    async with api(a, network) as client_a, api(b, network) as client_b:
        params = (("pattern", "news.#"), ("name", "feed"))
        async with client_b.stream("GET", "subscribe", params=params) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": ptth subscribe news.# as feed"
            await learned(a, "news.x", b)
            ids = []
            for i in range(3):
                response = await client_a.post(
                    "publish", params={"topic": f"news.{i}"}, content=f"n{i}".encode()
                )
                assert response.json()["next_hops"] == [b.node_id.text]
                ids.append(response.json()["id"])
            first = await take_publications(lines, 3)
        assert [(p["topic"], p["body"], p["id"]) for p in first] == [
            (f"news.{i}", f"n{i}", ids[i]) for i in range(3)
        ]
        assert first[0]["origin"] == a.node_id.text
        seqs = [p["seq"] for p in first]
        assert seqs == sorted(seqs)
        # The stream ended: the subscription stays, and nothing was acknowledged.
        assert b.mesh.subscriptions.advertised == {"news.#"}
        response = await client_b.post("subscriptions/feed/ack", json={"seqs": seqs[:2]})
        assert response.json() == {"acked": 2}
        response = await client_b.post("subscriptions/feed/ack", json={"seqs": seqs[:1]})
        assert response.json() == {"acked": 0}  # not pending any more

        # Streamed again (its name alone: the patterns it has): only what is not
        # acknowledged, then what comes.
        async with client_b.stream("GET", "subscribe", params={"name": "feed"}) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": ptth subscribe news.# as feed"
            [again] = await take_publications(lines, 1)
            assert (again["seq"], again["body"]) == (seqs[2], "n2")
            await client_a.post("publish", params={"topic": "news"}, content=b"later")
            [later] = await take_publications(lines, 1)
            assert later["body"] == "later"
            assert later["seq"] > seqs[2]
            response = await client_b.post(
                "subscriptions/feed/ack", json={"seqs": [seqs[2], later["seq"]]}
            )
            assert response.json() == {"acked": 2}
        async with client_b.stream("GET", "subscribe", params={"name": "feed"}) as stream:
            lines = stream.aiter_lines()
            await anext(lines)
            await client_a.post("publish", params={"topic": "news"}, content=b"newest")
            [newest] = await take_publications(lines, 1)
            assert newest["body"] == "newest"  # the first event: nothing else was pending
        listing = (await client_b.get("subscriptions")).json()
        assert listing == [
            {
                "name": "feed",
                "patterns": ["news.#"],
                "lease": b.mesh.subscriptions.lease_ms / 1000,
                "created": listing[0]["created"],
            }
        ]
        assert listing[0]["created"] <= b.clock()


async def test_acknowledge_what_was_streamed_before_a_restart(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    subscriber = await memory_nodes.start("b")
    b = subscriber.node
    assert isinstance(memory_nodes.network, MemoryNetwork)
    network = memory_nodes.network
    async with b.subscribe("t", name="keep"):
        pass
    await b.publish("t", b"one")
    await b.publish("t", b"two")
    async with (
        api(b, network) as client,
        client.stream("GET", "subscribe", params={"name": "keep"}) as stream,
    ):
        lines = stream.aiter_lines()
        await anext(lines)
        streamed = await take_publications(lines, 2)
    await subscriber.stop()
    b = await memory_nodes.open("b")  # another API: it streamed nothing yet
    async with api(b, network) as client:
        response = await client.post("subscriptions/keep/ack", json={"seqs": [streamed[0]["seq"]]})
        assert response.json() == {"acked": 1}
    async with b.subscribe("t", name="keep") as sub:
        assert [p.body for p in await sub.pending()] == [b"two"]


async def test_a_quiet_named_subscription_stream_is_kept_alive_and_loses_nothing(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    async with (
        api(a, network) as client,
        client.stream("GET", "subscribe", params={"pattern": "t", "name": "n"}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": ptth subscribe t as n"
        assert await anext(lines) == ""
        start = trio.current_time()
        assert await anext(lines) == ": keep-alive"
        assert trio.current_time() - start == pytest.approx(KEEPALIVE)
        await client.post("publish", params={"topic": "t"}, content=b"after a pause")
        [got] = await take_publications(lines, 1)
        assert got["body"] == "after a pause"


async def test_unsubscribe_through_the_api(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    async with b.subscribe("x.*", name="gone"):
        pass
    await learned(a, "x.1", b)
    async with api(b, network) as client:
        response = await client.delete("subscriptions/gone")
        assert response.status_code == 200, response.text
        assert response.json() == {"name": "gone", "removed": True}
        assert (await client.get("subscriptions")).json() == []
        response = await client.delete("subscriptions/gone")
    assert response.status_code == 404
    assert response.json()["error"] == (
        "this node has no subscription named 'gone' "
        "(list them with GET /api/v1/subscriptions or 'ptth subscriptions')"
    )
    assert b.mesh.subscriptions.advertised == set()


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "words"),
    [
        ("GET", "subscribe", {"name": "no spaces"}, None, 400, "subscription name 'no spaces'"),
        ("GET", "subscribe", [("name", "a"), ("name", "b")], None, 400, "not 2 times"),
        ("GET", "subscribe", {"name": "nobody"}, None, 404, "no subscription named 'nobody'"),
        ("GET", "subscribe", {"name": "x", "pattern": "a..b"}, None, 400, "pattern 'a..b'"),
        ("POST", "subscriptions/nobody/ack", {}, {"seqs": [1]}, 404, "named 'nobody'"),
        ("POST", "subscriptions/a%20b/ack", {}, {"seqs": [1]}, 400, "subscription name 'a b'"),
        ("POST", "subscriptions/feed/ack", {}, {"ids": [1]}, 400, '{"seqs": [seq'),
        ("POST", "subscriptions/feed/ack", {}, {"seqs": [0]}, 400, "got [0]"),
        ("POST", "subscriptions/feed/ack", {}, {"seqs": ["1"]}, 400, "got ['1']"),
        ("POST", "subscriptions/feed/ack", {}, {"seqs": [True]}, 400, "got [True]"),
        ("POST", "subscriptions/feed/ack", {}, [1], 400, '{"seqs": [seq'),
        # A dot is a name, not a step up the path.
        ("DELETE", "subscriptions/%2E%2E", {}, None, 404, "named '..'"),
        ("DELETE", "subscriptions/a%2Fb", {}, None, 400, "subscription name 'a/b'"),
        ("PUT", "subscriptions/feed", {}, None, 404, "no such API call"),
        ("POST", "subscriptions/feed/nack", {}, None, 404, "no such API call"),
    ],
)
async def test_named_subscription_errors(
    pair: tuple[Node, Node, MemoryNetwork],
    method: str,
    path: str,
    params: Any,
    body: Any,
    status: int,
    words: str,
) -> None:
    a, _, network = pair
    async with a.subscribe("t", name="feed"):
        pass
    async with api(a, network) as client:
        response = await client.request(method, path, params=params, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert [s.name for s in await a.subscriptions()] == ["feed"]


async def test_subscription_calls_on_a_stopped_node_are_503(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    running = await memory_nodes.start("a")
    node = running.node
    async with node.subscribe("t", name="feed"):
        pass
    await running.stop()
    auth = [("authorization", f"Bearer {node.api_token}")]
    handler = LocalApi(node).handle
    for method, target, body in [
        ("DELETE", "/api/v1/subscriptions/feed", b""),
        ("POST", "/api/v1/subscriptions/feed/ack", b'{"seqs": [1]}'),
        ("POST", "/api/v1/chirp/post", b"hello"),
        ("POST", f"/api/v1/chirp/follow?node={crypto.Identity.generate().node_id.text}", b""),
    ]:
        response = await handler(Request(method, target, auth, body, "memory"))
        assert response.status == 503, (target, response.body)
        error = json.loads(response.body)["error"]
        assert "not running" in error or "closed database" in error, (target, error)


# -- chirp ------------------------------------------------------------------------------


async def test_chirp_through_the_api(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, network = pair
    async with api(alice, network) as to_alice, api(bob, network) as to_bob:
        assert (await to_bob.get("chirp/following")).json() == {"following": []}
        assert (await to_bob.get("chirp/timeline")).json() == []
        response = await to_bob.post("chirp/follow", params={"node": alice.node_id.text})
        assert response.json() == {"following": [alice.node_id.text]}
        assert (await to_bob.get("chirp/following")).json() == {"following": [alice.node_id.text]}
        await learned(alice, chirp_topic(alice.node_id), bob)
        response = await to_alice.post("chirp/post", content="first ✓".encode())
        assert response.status_code == 200, response.text
        posted = response.json()
        assert posted == {
            "id": posted["id"],
            "topic": chirp_topic(alice.node_id),
            "next_hops": [bob.node_id.text],
        }
        with trio.fail_after(60):
            while True:
                changed = bob.mesh.inbox_changed  # before looking: no change is missed
                if timeline := (await to_bob.get("chirp/timeline")).json():
                    break
                await changed.wait()
        assert timeline == [
            {
                "author": alice.node_id.text,
                "text": "first ✓",
                "ts": timeline[0]["ts"],
                "id": posted["id"],
                "received": timeline[0]["received"],
            }
        ]
        assert timeline[0]["ts"] <= timeline[0]["received"]

        # Followed: the timeline, then new posts, then a keep-alive when quiet.
        async with to_bob.stream("GET", "chirp/timeline", params={"follow": "1"}) as stream:
            assert stream.headers["content-type"] == "text/event-stream"
            lines = stream.aiter_lines()
            assert await anext(lines) == ": ptth chirp timeline"
            event = await next_event(lines)
            assert (event["event"], event["id"]) == ("post", posted["id"])
            assert json.loads(event["data"]) == timeline[0]
            await trio.sleep(1)  # the next post is a second younger
            second = (await to_alice.post("chirp/post", content=b"second")).json()
            event = await next_event(lines)
            got = json.loads(event["data"])
            assert (event["event"], got["id"], got["text"]) == ("post", second["id"], "second")
            assert got["ts"] > timeline[0]["ts"]
            start = trio.current_time()
            assert await anext(lines) == ": keep-alive"
            assert trio.current_time() - start == pytest.approx(KEEPALIVE)
        assert [p["text"] for p in (await to_bob.get("chirp/timeline")).json()] == [
            "first ✓",
            "second",
        ]

        response = await to_bob.post("chirp/unfollow", params={"node": alice.node_id.text})
        assert response.json() == {"unfollowed": True, "following": []}
        response = await to_bob.post("chirp/unfollow", params={"node": alice.node_id.text})
        assert response.json() == {"unfollowed": False, "following": []}
        assert (await to_bob.get("chirp/timeline")).json() == []


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "words"),
    [
        ("POST", "chirp/follow", {}, b"", 400, "?node=NODE_ID"),
        ("POST", "chirp/follow", {"node": "nope"}, b"", 400, "bad node id: "),
        ("POST", "chirp/follow", {"node": "SELF"}, b"", 400, "does not follow itself"),
        ("POST", "chirp/unfollow", {"node": "nope"}, b"", 400, "bad node id"),
        ("POST", "chirp/post", {}, b"  ", 400, "a post needs some text"),
        ("POST", "chirp/post", {}, b"\xff", 400, "UTF-8"),
        ("POST", "chirp/post", {}, b"x" * 1001, 400, "at most 1000 characters; this one has 1001"),
        ("GET", "chirp/timeline", {"follow": "1"}, b"", 409, "follow someone first"),
        ("GET", "chirp/post", {}, b"", 404, "no such API call"),
        ("POST", "chirp/retweet", {}, b"", 404, "no such API call"),
    ],
)
async def test_chirp_errors(
    pair: tuple[Node, Node, MemoryNetwork],
    method: str,
    path: str,
    params: dict[str, str],
    body: bytes,
    status: int,
    words: str,
) -> None:
    a, _, network = pair
    if params.get("node") == "SELF":
        params = {"node": a.node_id.text}
    async with api(a, network) as client:
        response = await client.request(method, path, params=params, content=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert await a.subscriptions() == []
