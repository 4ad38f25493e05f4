"""``POST /api/v1/send/batch``: many messages in one request, as NDJSON or as a CBOR
sequence, taken into custody in one store transaction (all or none): the answer in
order, a bad line refused by number with nothing taken, the count limit (413), a full
store (429), Idempotency-Key replays and mismatches, and the messages delivered."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import crypto
import mesh
import node._api
from node import MemoryNetwork, Node, Request
from node._api import MAX_BATCH, LocalApi, _BadBatch, _batch_items, _batch_message
from tests.helpers import NodeFactory, messages
from tests.node.test_api import api

NDJSON = {"content-type": "application/x-ndjson"}
CBOR_SEQ = {"content-type": "application/cbor-seq"}


def ndjson(*items: Any) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def cbor_seq(*items: Any) -> bytes:
    return b"".join(cbor2.dumps(item) for item in items)


async def post_batch(
    node: Node, network: MemoryNetwork, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    async with api(node, network) as client:
        return await client.post("send/batch", content=body, headers=headers)


async def test_ndjson_batch_into_custody_and_delivered(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    nobody = crypto.Identity.generate().node_id
    body = (
        ndjson(
            {"to": b.node_id.text, "body": "one", "ct": "text/plain"},
            {"to": nobody.text, "body": "held"},
            {"to": b.node_id.text, "body_b64": base64.b64encode(b"\xff\x00").decode()},
        )
        + b"\n   \n"  # blank lines are skipped
        + b'{"to": "%s", "body": "four", "receipt": true, "ttl": 60}\r\n' % b.node_id.text.encode()
    )
    response = await post_batch(a, network, body, NDJSON)
    assert response.status_code == 200, response.text
    sent = response.json()["sent"]
    assert [(s["to"], s["next_hop"], s["held"]) for s in sent] == [
        (b.node_id.text, b.node_id.text, False),
        (nobody.text, None, True),
        (b.node_id.text, b.node_id.text, False),
        (b.node_id.text, b.node_id.text, False),
    ]
    assert len({s["id"] for s in sent}) == 4
    with trio.fail_after(30):
        received = await messages(b, 3)
    assert {m.id.hex(): (m.body, m.ct, m.src) for m in received} == {
        sent[0]["id"]: (b"one", "text/plain", a.node_id),
        sent[2]["id"]: (b"\xff\x00", None, a.node_id),
        sent[3]["id"]: (b"four", None, a.node_id),
    }
    # "receipt": true asks for a delivery receipt; "ttl" is the frame's lifetime.
    with trio.fail_after(30):
        trace = await a.delivered(bytes.fromhex(sent[3]["id"]))
    assert (trace.state, trace.receipt, trace.exp - trace.created) == ("delivered", True, 60_000)
    held = await a.trace(bytes.fromhex(sent[1]["id"]))
    assert held is not None
    assert (held.state, held.receipt) == ("held", False)


async def test_cbor_sequence_batch(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    bodies = [b"\x00binary\xff", b"", b"text in CBOR"]
    body = cbor_seq(
        {"to": b.node_id.text, "body": bodies[0], "ct": "application/octet-stream"},
        {"to": b.node_id.text, "body": bodies[1]},
        {"to": b.node_id.text, "body": "text in CBOR", "receipt": False},
    )
    response = await post_batch(a, network, body, {"content-type": "application/cbor-seq; x=1"})
    assert response.status_code == 200, response.text
    sent = response.json()["sent"]
    with trio.fail_after(30):
        received = await messages(b, 3)
    assert {m.id.hex(): (m.body, m.ct) for m in received} == {
        s["id"]: (body, ct)
        for s, body, ct in zip(sent, bodies, ["application/octet-stream", None, None], strict=True)
    }


async def test_the_answer_is_in_the_order_of_the_batch(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    nobody = crypto.Identity.generate().node_id
    count = 1_000
    to = [b.node_id if i % 3 else nobody for i in range(count)]
    body = ndjson(*({"to": to[i].text, "body": f"m{i}"} for i in range(count)))
    response = await post_batch(a, network, body, NDJSON)
    assert response.status_code == 200, response.text
    sent = response.json()["sent"]
    assert [(s["to"], s["held"]) for s in sent] == [(dst.text, dst == nobody) for dst in to]
    # Each id is the frame of its line (the mesh may deliver them in another order:
    # a forwarder has more than one request in flight).
    with trio.fail_after(60):
        received = await messages(b, count - len([dst for dst in to if dst == nobody]))
    assert {m.id.hex(): m.body for m in received} == {
        s["id"]: f"m{i}".encode() for i, s in enumerate(sent) if not s["held"]
    }


def bad_lines(b: str, a: str) -> list[tuple[bytes, str]]:
    """(line 3 of a batch, the words of its refusal)."""
    too_big = "x" * (crypto.MAX_BODY_SIZE + 1)
    return [
        (b"{not json", "line 3: not JSON: Expecting property name enclosed in double quotes"),
        (b'["a", "list"]', 'line 3: a message is an object like {"to": NODE_ID'),
        (b"\xff\xfe", "line 3: not UTF-8 text"),
        (json.dumps({"to": b, "body": "x", "colour": "red"}).encode(), "unknown field 'colour'"),
        (json.dumps({"body": "x"}).encode(), 'line 3: say who it is for: "to": NODE_ID'),
        (json.dumps({"to": "nope", "body": "x"}).encode(), "line 3: bad node id: "),
        (json.dumps({"to": a, "body": "x"}).encode(), "line 3: a node cannot send to itself"),
        (json.dumps({"to": b}).encode(), 'line 3: give the body once: "body"'),
        (json.dumps({"to": b, "body": "x", "body_b64": "eA=="}).encode(), "give the body once"),
        (json.dumps({"to": b, "body": 7}).encode(), '"body" must be text'),
        (json.dumps({"to": b, "body_b64": "!!"}).encode(), 'line 3: "body_b64" is not base64'),
        (json.dumps({"to": b, "body": "\ud800"}).encode(), "lone surrogate"),
        (json.dumps({"to": b, "body": "x", "ct": 5}).encode(), '"ct" must be a content type'),
        (json.dumps({"to": b, "body": "x", "ct": "not a type"}).encode(), "line 3: frame ct"),
        (json.dumps({"to": b, "body": "x", "ct": "y" * 10**6}).encode(), "line 3: frame ct 'yyy"),
        (
            json.dumps({"to": b, "body": "x", "a": 1, "b": 2, "c": 3, "d": 4}).encode(),
            "unknown field 'a', 'b', 'c' and 1 more (a message has body, body_b64, ct, ",
        ),
        (json.dumps({"to": b, "body": "x", "receipt": "yes"}).encode(), '"receipt" must be'),
        (json.dumps({"to": b, "body": "x", "ttl": 0}).encode(), '"ttl" must be a positive'),
        (json.dumps({"to": b, "body": "x", "ttl": True}).encode(), '"ttl" must be a positive'),
        (json.dumps({"to": b, "body": "x", "ttl": 1e9}).encode(), '"ttl" must be a positive'),
        (
            json.dumps({"to": b, "body": too_big}).encode(),
            f"line 3: frame body is {crypto.MAX_BODY_SIZE + 1} bytes",
        ),
    ]


@pytest.mark.parametrize("case", range(len(bad_lines("b", "a"))))
async def test_a_bad_line_refuses_the_whole_batch_by_its_number(
    pair: tuple[Node, Node, MemoryNetwork], case: int
) -> None:
    a, b, network = pair
    line, words = bad_lines(b.node_id.text, a.node_id.text)[case]
    good = json.dumps({"to": b.node_id.text, "body": "fine"}).encode()
    body = b"\n".join([good, good, line, good]) + b"\n"
    response = await post_batch(a, network, body, NDJSON)
    assert response.status_code == 400
    error = response.json()["error"]
    assert words in error
    assert len(error) <= 300  # however long what it quotes
    assert a.store.statistics().queued_frames == 0  # nothing taken, not even lines 1-2


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (b"\xff", "item 2: not valid CBOR: "),
        (b"\x62a", "item 2: not valid CBOR: "),  # ends early
        (cbor_seq([1, 2]), "item 2: a message is an object"),
        (cbor_seq(cbor2.CBORTag(1, 0)), "item 2: not valid CBOR: CBOR tag 1"),
        (cbor_seq({"to": "x"}), "item 2: bad node id: "),
    ],
)
async def test_a_bad_cbor_item_refuses_the_whole_batch(
    pair: tuple[Node, Node, MemoryNetwork], items: bytes, words: str
) -> None:
    a, b, network = pair
    body = cbor_seq({"to": b.node_id.text, "body": b"fine"}) + items
    response = await post_batch(a, network, body, CBOR_SEQ)
    assert response.status_code == 400
    assert response.json()["error"].startswith(words), response.text
    assert a.store.statistics().queued_frames == 0


async def test_the_count_limit_is_413(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, b, network = pair
    one = {"to": b.node_id.text, "body": "x"}
    for body, headers in (
        (ndjson(*[one] * (MAX_BATCH + 1)), NDJSON),
        (cbor_seq(*[one] * (MAX_BATCH + 1)), CBOR_SEQ),
    ):
        response = await post_batch(a, network, body, headers)
        assert response.status_code == 413
        assert f"more than {MAX_BATCH} messages in one batch: split it" in response.json()["error"]
    assert a.store.statistics().queued_frames == 0


async def test_a_batch_of_the_limit_is_taken(
    pair: tuple[Node, Node, MemoryNetwork], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, network = pair
    monkeypatch.setattr(node._api, "MAX_BATCH", 3)
    one = {"to": b.node_id.text, "body": "x"}
    response = await post_batch(a, network, ndjson(one, one, one), NDJSON)
    assert response.status_code == 200, response.text
    response = await post_batch(a, network, ndjson(one, one, one, one), NDJSON)
    assert response.status_code == 413
    assert response.json()["error"] == (
        "more than 3 messages in one batch: split it (line 4 is message 4)"
    )


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"", NDJSON, 400, "the batch holds no messages"),
        (b"\n \n", NDJSON, 400, "the batch holds no messages"),
        (b"", CBOR_SEQ, 400, "the batch holds no messages"),
        (b"{}", {}, 415, "say which with Content-Type, not 'none'"),
        (b"{}", {"content-type": "application/json"}, 415, "not 'application/json'"),
        (b"{}", {**NDJSON, "idempotency-key": "has space"}, 400, "Idempotency-Key must be"),
    ],
)
async def test_batch_refusals(
    pair: tuple[Node, Node, MemoryNetwork],
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    a, _, network = pair
    response = await post_batch(a, network, body, headers)
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_a_full_store_is_429_and_takes_nothing(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a", quotas=mesh.Quotas(total=2000))
    assert isinstance(memory_nodes.network, MemoryNetwork)
    nobody = crypto.Identity.generate().node_id  # held: it stays in a's queue
    one = {"to": nobody.text, "body": "x" * 1000}
    response = await post_batch(a, memory_nodes.network, ndjson(one, one), NDJSON)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    error = response.json()["error"]
    assert "2000" in error
    assert error.endswith("none of the 2 messages was taken")
    assert a.store.statistics().queued_frames == 0
    # One fits: the refused batch took no room.
    response = await post_batch(a, memory_nodes.network, ndjson(one), NDJSON)
    assert response.status_code == 200, response.text


async def test_idempotency_key_replays_the_first_answer(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    nobody = crypto.Identity.generate().node_id  # held: what was taken stays countable
    items = [{"to": nobody.text, "body": f"m{i}"} for i in range(3)]
    keyed = {**NDJSON, "idempotency-key": "batch-1"}
    first = await post_batch(a, network, ndjson(*items), keyed)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    again = await post_batch(a, network, ndjson(*items), keyed)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # Another body, or the same messages in the other format: the key is taken.
    for body, headers in (
        (ndjson(*items[:2]), keyed),
        (cbor_seq(*items), {**CBOR_SEQ, "idempotency-key": "batch-1"}),
    ):
        other = await post_batch(a, network, body, headers)
        assert other.status_code == 422
        assert other.json()["error"] == (
            "Idempotency-Key 'batch-1' was used for a different request in the last 24 h: "
            "use a new key for a new request"
        )
    assert a.store.statistics().queued_frames == 3
    # A refused batch records nothing: its key is free for the corrected batch.
    bad = {**NDJSON, "idempotency-key": "batch-2"}
    response = await post_batch(a, network, ndjson(items[0], {"to": "x"}), bad)
    assert response.status_code == 400
    response = await post_batch(a, network, ndjson(items[0]), bad)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    assert a.store.statistics().queued_frames == 4


async def test_idempotency_key_survives_a_restart(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    running = await memory_nodes.start("a")
    network = memory_nodes.network
    assert isinstance(network, MemoryNetwork)
    nobody = crypto.Identity.generate().node_id
    body = ndjson({"to": nobody.text, "body": "once"}, {"to": nobody.text, "body": "twice?"})
    keyed = {**NDJSON, "idempotency-key": "k"}
    first = await post_batch(running.node, network, body, keyed)
    assert first.status_code == 200, first.text
    await running.stop()
    a = await memory_nodes.open("a")
    again = await post_batch(a, network, body, keyed)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert a.store.statistics().queued_frames == 2


async def test_a_stopped_node_is_503(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    running = await memory_nodes.start("a")
    await running.stop()
    node = running.node
    other = crypto.Identity.generate().node_id
    request = Request(
        "POST",
        "/api/v1/send/batch",
        [("authorization", f"Bearer {node.api_token}"), ("content-type", NDJSON["content-type"])],
        ndjson({"to": other.text, "body": "x"}),
        "memory",
    )
    response = await LocalApi(node).handle(request)
    assert response.status == 503
    assert json.loads(response.body) == {"error": "node is not running"}


# -- the parser alone: any input is a batch or a precise refusal -------------------------

OWN = crypto.Identity.generate().node_id
OTHER = crypto.Identity.generate().node_id


def parse(media: str, body: bytes) -> list[Any] | _BadBatch:
    """The checked messages of a batch body, or the refusal."""
    try:
        return [_batch_message(*item, OWN) for item in _batch_items(media, body)]
    except _BadBatch as exc:
        return exc


@given(st.binary(max_size=400))
def test_any_bytes_are_a_batch_or_a_refusal(body: bytes) -> None:
    for media in ("application/x-ndjson", "application/cbor-seq"):
        parsed = parse(media, body)
        if isinstance(parsed, _BadBatch):
            assert parsed.status == 400
            assert str(parsed).startswith(("line ", "item "))


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else any value."""
    return st.integers(0, 3).flatmap(lambda n: values if n == 0 else good)


fields = st.fixed_dictionaries(
    {
        "to": mostly(st.sampled_from([OTHER.text, OTHER.text, OTHER.text, OWN.text, "x"])),
        "body": mostly(st.text(max_size=20) | st.binary(max_size=20)),
    },
    optional={
        "body_b64": st.sampled_from(["", "eA==", "!"]) | values,
        "ct": mostly(st.sampled_from(["text/plain", "x y"])),
        "receipt": mostly(st.booleans()),
        "ttl": mostly(st.floats(0, 2 * 86400) | st.integers(-1, 2 * 86400)),
        "extra": values,
    },
)


@given(st.lists(fields, max_size=4))
def test_any_messages_are_taken_or_refused_by_item(items: list[dict[str, Any]]) -> None:
    parsed = parse("application/cbor-seq", cbor_seq(*items))
    if isinstance(parsed, _BadBatch):
        assert parsed.status == 400
        assert str(parsed).startswith("item ")
        return
    assert [w.where for w in parsed] == [f"item {i}" for i in range(1, len(items) + 1)]
    assert all(w.dst == OTHER for w in parsed)
