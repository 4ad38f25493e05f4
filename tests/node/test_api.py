"""The local API: bearer token, send, inbox as Server-Sent Events, ack, status."""

from __future__ import annotations

import json

import httpx
import pytest

import crypto
from node import MemoryNetwork, Node, make_transport
from node._api import _is_local
from tests.helpers import NodeFactory, peer


def api(node: Node, network: MemoryNetwork, *, token: str | None = None) -> httpx.AsyncClient:
    assert node.api_url is not None
    return httpx.AsyncClient(
        transport=make_transport(network),
        base_url=node.api_url + "/",
        headers={"authorization": f"Bearer {token or node.api_token}"},
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


@pytest.fixture
async def pair(memory_nodes: NodeFactory) -> tuple[Node, Node, MemoryNetwork]:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    peer(a, b)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    return a, b, memory_nodes.network


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
        assert sent["to"] == b.node_id.text
        assert sent["result"] == "accepted"
        response = await client.post("send", params={"to": b.node_id.text}, content=b"\xff\x00")
        assert response.status_code == 200

    async with api(b, network) as client:
        response = await client.get("inbox", params={"follow": "0"})
        assert response.headers["content-type"] == "text/event-stream"
        messages = sse_messages(response.text)
        assert [m.get("body") for m in messages] == ["hi b", None]
        assert messages[0]["ct"] == "text/plain"
        assert messages[0]["id"] == sent["id"]
        assert messages[0]["src"] == a.node_id.text
        assert messages[1]["body_b64"] == "/wA="
        assert response.text.rstrip().endswith("event: end\ndata: {}")

        response = await client.post("inbox/ack", json={"ids": [sent["id"], "00" * 16]})
        assert response.json() == {"acked": 1}
        response = await client.get("inbox", params={"follow": "0"})
        assert len(sse_messages(response.text)) == 1

        status = (await client.get("status")).json()
        assert status["node"] == b.node_id.text
        assert status["inbox"]["frames"] == 1
        assert status["counters"]["frames_accepted"] == 2
        assert [p["node"] for p in status["peers"]] == [a.node_id.text]
        assert crypto.parse_token(status["address"], now=b.clock()).node == b.node_id


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({}, 400, "?to=NODE_ID"),
        ({"to": "nope"}, 400, "bad node id"),
        ({"to": "a" * 52}, 404, "no address known"),
    ],
)
async def test_send_errors(
    pair: tuple[Node, Node, MemoryNetwork], params: dict[str, str], status: int, words: str
) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post("send", params=params, content=b"x")
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_send_oversized_body(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, b, network = pair
    async with api(a, network) as client:
        response = await client.post(
            "send", params={"to": b.node_id.text}, content=b"x" * (crypto.MAX_BODY_SIZE + 1)
        )
    assert response.status_code == 413
    assert f"limit {crypto.MAX_BODY_SIZE}" in response.json()["error"]


async def test_bad_ack_body_and_unknown_call(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    async with api(a, network) as client:
        response = await client.post("inbox/ack", content=b"[1, 2]")
        assert response.status_code == 400
        assert '{"ids"' in response.json()["error"]
        response = await client.get("nothing")
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
