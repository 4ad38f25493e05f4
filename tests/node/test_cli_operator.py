"""The operator's CLI: ``ptth status`` (an overview of tables), ``ptth neighbours``,
``ptth queue purge`` (and the node side of a purge: the local API's endpoints, the
mesh runtime, the forwarder), the tables and units they print (node/_tables.py), and
``ptth run --log-format`` / ``--log-level``. Bad input is answered precisely: a wrong
token, an unknown or malformed next hop, no terminal to confirm on, a log format that
does not exist."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import crypto
import mesh
from mesh._store import PURGED
from node import Node, Request
from node._api import ROUTE_SAMPLE, LocalApi
from node._cli import _JsonFormatter, _logging, build_parser, run
from node._forwarder import Forwarder, ForwarderHost
from node._tables import (
    Column,
    human_age,
    human_bytes,
    human_count,
    human_rate,
    render,
    short_id,
)
from tests.helpers import NodeFactory, delivered, peer
from tests.node.test_cli import Result, cli, cli_fails, cli_ok, ptth
from tests.node.test_run import ptth_exe

# -- node/_tables.py ----------------------------------------------------------------------


def test_a_table_aligns_its_columns_and_right_aligns_numbers() -> None:
    lines = render(
        [Column("name"), Column("frames", right=True), Column("note")],
        [["alpha", "1", "x"], ["b", "12,345", ""]],
    )
    assert lines == [
        "name   frames  note",
        "alpha       1  x",
        "b      12,345",
    ]
    assert render([Column("a")], [], indent=2) == ["  a"]


def test_a_table_cuts_long_cells_unless_wide() -> None:
    columns = [Column("error", limit=8), Column("n", right=True)]
    assert render(columns, [["connection refused", "1"]]) == [
        "error     n",
        "conne...  1",
    ]
    assert render(columns, [["connection refused", "1"]], wide=True)[1] == ("connection refused  1")


def test_a_table_escapes_what_came_from_the_network_and_stays_aligned() -> None:
    lines = render([Column("name"), Column("x")], [["e\x1b[2Jve", "1"], ["日本", "2"]])
    assert lines == [
        "name        x",
        "e\\x1b[2Jve  1",
        "日本        2",
    ]
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        render([Column("a"), Column("b")], [["only one"]])


def test_short_ids() -> None:
    node_id = crypto.Identity.generate().node_id.text
    assert short_id(node_id) == node_id[:10]
    assert short_id(node_id, wide=True) == node_id
    # What is not a node id is not cut: nothing odd is hidden.
    assert short_id(node_id + "\x1b") == node_id + "\x1b"
    assert short_id(None) == short_id("") == "-"


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024, "10 KiB"),
        (3 * 1024**2 + 200 * 1024, "3.2 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (2000 * 1024**4, "2000 TiB"),
    ],
)
def test_human_bytes(count: int | None, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (-3, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3725, "1h02m"),
        (90_000, "1d01h"),
    ],
)
def test_human_age(seconds: float | None, shown: str) -> None:
    assert human_age(seconds) == shown


def test_human_counts_and_rates() -> None:
    assert (human_count(None), human_count(0), human_count(1_234_567)) == ("-", "0", "1,234,567")
    rates = [None, -1.0, 0, 0.0004, 0.0066, 0.42, 3.5, 12.3, 1234.6]
    assert [human_rate(r) for r in rates] == [
        *("-", "-", "0", "<0.001", "0.0066", "0.42", "3.5", "12", "1,235")
    ]


# -- the forwarder while its neighbour's queue is purged -------------------------------

NEIGHBOUR = crypto.Identity(bytes(range(5, 37))).node_id


def queued(seq: int) -> mesh.Queued:
    return mesh.Queued(
        seq=seq, src=NEIGHBOUR, id=seq.to_bytes(16, "big"), kind=crypto.Kind.MSG,
        dst=NEIGHBOUR, exp=2**40, hops=0, next_hop=NEIGHBOUR, came_from=None, queued=0,
        size=300, envelope=b"e" * 300,
    )  # fmt: skip


class Client:
    """Takes every POST: all frames accepted."""

    def __init__(self) -> None:
        self.posted: list[list[mesh.WireFrame]] = []

    async def post(
        self, dst: crypto.NodeId, endpoints: Sequence[str], frames: Sequence[mesh.WireFrame]
    ) -> list[mesh.Result]:
        self.posted.append(list(frames))
        return [mesh.Result(mesh.Outcome.ACCEPTED)] * len(frames)


class Host:
    """A forwarder's host whose store holds ``rows``; a read can be held half-way."""

    def __init__(self, rows: list[mesh.Queued]) -> None:
        self.rows = rows
        self.frame_client = Client()
        self.reads = 0
        self.hold_next_read = False
        self.reading = trio.Event()  # a held read has taken its rows
        self.release = trio.Event()  # ... and may return them

    def endpoints_of(self, node: crypto.NodeId) -> Sequence[str]:
        return ("http://neighbour:8470",)

    async def queued_for(
        self,
        node: crypto.NodeId,
        limit: int,
        *,
        after: int = 0,
        exclude: Collection[crypto.NodeId] = (),
    ) -> list[mesh.Queued]:
        rows = [row for row in self.rows if row.seq > after and row.src not in exclude][:limit]
        self.reads += 1
        if self.hold_next_read:
            self.hold_next_read = False
            self.reading.set()
            await self.release.wait()
        return rows

    def sendable(self, node: crypto.NodeId, queued: list[mesh.Queued]) -> list[mesh.Queued]:
        return queued

    async def handed_on(
        self,
        node: crypto.NodeId,
        control: Sequence[mesh.WireFrame],
        queued: Sequence[mesh.Queued],
        results: Sequence[mesh.Result],
    ) -> float | None:
        taken = {item.seq for item in queued}
        self.rows = [row for row in self.rows if row.seq not in taken]
        return None

    async def post_failed(self, node: crypto.NodeId, problem: str, after: float | None) -> float:
        raise AssertionError(problem)  # pragma: no cover - the client never fails


async def test_a_batch_read_across_a_purge_is_not_sent() -> None:
    host = Host([queued(1), queued(2)])
    host.hold_next_read = True
    forwarder = Forwarder(cast("ForwarderHost", host), NEIGHBOUR)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forwarder.run)
        forwarder.poke(2)
        await host.reading.wait()  # it has read frames 1 and 2 ...
        with forwarder.purging():
            host.rows = []  # ... which the operator purges now
        host.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert host.reads == 2  # it read again, and found nothing
        assert host.frame_client.posted == []
        # What comes next goes as usual.
        host.rows = [queued(3)]
        forwarder.poke()
        await trio.testing.wait_all_tasks_blocked()
        assert [[wire.envelope for wire in post] for post in host.frame_client.posted] == [
            [queued(3).envelope]
        ]
        nursery.cancel_scope.cancel()


async def test_no_batch_is_read_while_a_purge_is_under_way() -> None:
    host = Host([])
    forwarder = Forwarder(cast("ForwarderHost", host), NEIGHBOUR)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forwarder.run)
        await trio.testing.wait_all_tasks_blocked()
        reads = host.reads
        with forwarder.purging():
            host.rows = [queued(1)]  # a frame queued while the purge runs
            forwarder.poke()
            await trio.testing.wait_all_tasks_blocked()
            assert host.reads == reads
        # Once the purge is done, the forwarder reads again at once.
        await trio.testing.wait_all_tasks_blocked()
        assert host.reads > reads
        assert [[wire.envelope for wire in post] for post in host.frame_client.posted] == [
            [queued(1).envelope]
        ]
        nursery.cancel_scope.cancel()


# -- the node side: the mesh runtime and the local API ---------------------------------


async def gone_neighbour(
    node: Node, name: str | None = "gone", endpoint: str = "http://127.0.0.1:9"
) -> crypto.NodeId:
    """A neighbour of ``node`` at an address where nobody answers: what is sent to it
    stays queued (its link backs off)."""
    identity = crypto.Identity.generate()
    address = crypto.sign_address(
        identity, seq=1, endpoints=(endpoint,), exp=node.clock() + 3_600_000, name=name
    )
    await node.add_peer_address(address)
    return identity.node_id


async def call(node: Node, method: str, path: str, *, token: str | None = None) -> Any:
    """``method /api/v1/path`` to ``node``'s local API: (status, JSON)."""
    request = Request(
        method,
        f"/api/v1/{path}",
        [("authorization", f"Bearer {token or node.api_token}")],
        b"",
        "127.0.0.1:5555",
    )
    response = await LocalApi(node).handle(request)
    return response.status, json.loads(response.body)


async def test_a_purge_settles_this_nodes_own_frames_as_dropped(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    gone = await gone_neighbour(a, endpoint="http://nobody:1")
    sent = [await a.send(gone, f"m{n}".encode(), receipt=True) for n in range(3)]
    assert {s.next_hop for s in sent} == {gone}
    traces: list[mesh.Trace] = []

    async def wait_for_the_outcome() -> None:
        traces.append(await a.delivered(sent[0].id))

    (charged,) = [q.bytes for q in a.store.queues() if q.next_hop == gone]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_the_outcome)
        await trio.testing.wait_all_tasks_blocked()
        assert await a.purge_queue(gone) == (3, charged)
    (trace,) = traces
    assert (trace.state, trace.by, trace.why) == ("dropped", a.node_id, PURGED)
    assert a.store.statistics().queued_frames == 0
    # The forwarder goes on: a frame sent now is queued (and tried) as before.
    again = await a.send(gone, b"later")
    assert again.next_hop == gone
    assert a.store.statistics().queued_frames == 1


async def test_the_api_purges_a_queue_and_answers_bad_next_hops_precisely(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")
    gone = await gone_neighbour(a, endpoint="http://nobody:1")
    for n in range(2):
        await a.send(gone, b"x" * n)
    await a.send(crypto.Identity.generate().node_id, b"held")
    (charged,) = [q.bytes for q in a.store.queues() if q.next_hop == gone]

    assert await call(a, "POST", f"queues/{gone.text}/purge") == (
        200,
        {"next_hop": gone.text, "frames": 2, "bytes": charged},
    )
    # Again: the queue is there (gone is a neighbour), with nothing in it.
    assert await call(a, "POST", f"queues/{gone.text}/purge") == (
        200,
        {"next_hop": gone.text, "frames": 0, "bytes": 0},
    )
    status, answer = await call(a, "POST", "queues/held/purge")
    assert (status, answer["next_hop"], answer["frames"]) == (200, None, 1)

    stranger = crypto.Identity.generate().node_id.text
    assert await call(a, "POST", f"queues/{stranger}/purge") == (
        404,
        {
            "error": f"this node has no queue for {stranger}: it is no neighbour and nothing "
            "is queued for it (see GET /api/v1/queues or 'ptth queues')"
        },
    )
    assert await call(a, "POST", "queues/abc/purge") == (
        400,
        {
            "error": "bad next hop 'abc': a node id is 52 characters of base32, got 3 (give "
            "a node id, or 'held' for the frames held with no route)"
        },
    )
    assert await call(a, "GET", f"queues/{gone.text}/purge") == (
        404,
        {"error": f"no such API call: GET /api/v1/queues/{gone.text}/purge"},
    )
    assert await call(a, "POST", f"queues/{gone.text}/drop") == (
        404,
        {"error": f"no such API call: POST /api/v1/queues/{gone.text}/drop"},
    )
    assert await call(a, "POST", "queues/held/purge", token="wrong") == (
        401,
        {"error": "missing or wrong bearer token (see api.token in the data dir)"},
    )


async def test_the_api_status_and_neighbours(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    gone = await gone_neighbour(a, endpoint="http://nobody:1")
    await a.send(gone, b"waits")
    async with a.subscribe("news.#", name="feed"):
        pass
    status, answer = await call(a, "GET", "status")
    assert status == 200
    assert answer["node"] == a.node_id.text
    assert answer["uptime"] == 0  # the API was made just now
    assert answer["routes"] == len(answer["route_sample"]) <= ROUTE_SAMPLE
    assert {q["next_hop"] for q in answer["queues"]} == {b.node_id.text, gone.text}
    assert [s["name"] for s in answer["subscriptions"]] == ["feed"]
    by_node = {n["node"]: n for n in answer["neighbours"]}
    assert (by_node[b.node_id.text]["name"], by_node[gone.text]["name"]) == ("b", "gone")
    assert by_node[b.node_id.text]["queued"] == {"frames": 0, "bytes": 0}
    assert by_node[gone.text]["queued"]["frames"] == 1
    status, neighbours = await call(a, "GET", "neighbours")
    assert status == 200
    assert neighbours == answer["neighbours"]


# -- the CLI against running nodes (loopback TCP) --------------------------------------


def sections(lines: list[str]) -> dict[str, list[str]]:
    """``ptth status``'s sections: the title of each (after a blank line), its lines;
    the node's own lines under ""."""
    found: dict[str, list[str]] = {"": []}
    title = ""
    for index, line in enumerate(lines):
        if index and not lines[index - 1]:
            title = line
            found[title] = []
        elif line:
            found[title].append(line)
    return found


async def test_status_of_two_peered_nodes(tcp_nodes: NodeFactory) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    await peer(a, b)
    with trio.fail_after(20):
        await delivered(a, b, b"hello")
    async with a.subscribe("news.#", "*.alerts", name="feed"):
        pass
    lines = await cli_ok(a, "status")
    parts = sections(lines)
    assert parts[""][:2] == [f"node      {a.node_id.text} (a)", f"endpoint  {a.endpoints[0]}"]
    assert re.fullmatch(r"uptime    \d+s", parts[""][2])
    assert re.fullmatch(r"inbox     \d+ messages?, \d+(\.\d)? (B|KiB)", parts[""][3])
    assert parts[""][4] == "queued    0 frames, 0 B"

    header, row = parts["neighbours: 1 (1 up)"]
    assert header.split()[:4] == ["node", "name", "roles", "link"]
    assert row.split()[:4] == [b.node_id.short, "b", "peer", "up"]
    header, row = parts["routes: 1 destination"]
    assert row.split()[:3] == [b.node_id.short, b.node_id.short, "1"]
    assert parts["queues: nothing queued"] == []
    header, row = parts["subscriptions: 1 named"]
    assert row.split()[:4] == ["feed", "news.#", "*.alerts", "1h00m"]
    header, row = parts["peers: 1"]
    assert row.split() == [b.node_id.short, "b", "1", "valid", b.endpoints[0]]
    counters = parts["counters: since start, per second on average"]
    assert counters[0].split() == ["counter", "total", "per", "second"]
    totals = {row.split()[0]: row.split()[1] for row in counters[1:]}
    assert totals["sent_accepted"] == "1"
    assert int(totals["frames_accepted"]) >= 1  # the receipt, and b's announces

    wide = await cli_ok(a, "status", "--wide")
    assert any(line.startswith(f"  {b.node_id.text}  b  ") for line in wide)

    raw = json.loads("\n".join(await cli_ok(a, "status", "--json")))
    assert raw["node"] == a.node_id.text
    assert isinstance(raw["uptime"], float | int)
    assert [(n["node"], n["name"], n["queued"]) for n in raw["neighbours"]] == [
        (b.node_id.text, "b", {"frames": 0, "bytes": 0})
    ]
    assert [r["destination"] for r in raw["route_sample"]] == [b.node_id.text]
    assert [s["patterns"] for s in raw["subscriptions"]] == [["news.#", "*.alerts"]]

    rates = sections(await cli_ok(a, "status", "--rates", "0.2"))
    (title,) = [title for title in rates if title.startswith("counters:")]
    assert re.fullmatch(r"counters: since start, per second over the last \d+\.\d s", title)


async def test_status_rates_is_a_number_of_seconds(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    result = await cli_fails(a, "status", "--rates", "soon", status=2)
    assert result.err.strip().endswith(
        "'soon' is not a positive number of seconds (see 'ptth status --help')"
    )


async def test_neighbours(tcp_nodes: NodeFactory) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    assert await cli_ok(a, "neighbours") == [
        "no neighbours (add a peer with 'ptth peer add TOKEN', or run with --relay)"
    ]
    await peer(a, b)
    gone = await gone_neighbour(a)
    await a.send(gone, b"waits")
    header, *rows = await cli_ok(a, "neighbours")
    assert header.split() == [
        *("node", "name", "roles", "link", "heard", "last", "ok", "failures", "queued"),
        *("bytes", "next", "attempt", "last", "error"),
    ]
    by_node = {row.split()[0]: row.split() for row in rows}
    assert by_node[b.node_id.short][1:4] == ["b", "peer", "up"]
    assert by_node[gone.short][1:3] == ["gone", "peer"]
    listing = json.loads("\n".join(await cli_ok(a, "neighbours", "--json")))
    queued = {n["node"]: n["queued"]["frames"] for n in listing}
    assert queued == {b.node_id.text: 0, gone.text: 1}


class Terminal(io.StringIO):
    """Stdin that is a terminal, with the operator's answer typed in."""

    def isatty(self) -> bool:
        return True


async def purge_on_a_terminal(node: Node, answer: str, *argv: str) -> Result:
    def purge() -> Result:
        out, err = io.StringIO(), io.StringIO()
        argv_all = ["--data-dir", str(node.data.path), "queue", "purge", *argv]
        status = run(argv_all, out=out, err=err, stdin=Terminal(answer))
        return Result(status, out.getvalue(), err.getvalue())

    return await trio.to_thread.run_sync(purge)


async def test_queue_purge_asks_on_a_terminal_and_refuses_without_one(
    tcp_nodes: NodeFactory,
) -> None:
    a = await tcp_nodes.open("a")
    gone = await gone_neighbour(a)
    sent = [await a.send(gone, f"m{n}".encode(), receipt=True) for n in range(3)]
    (queue,) = [q for q in a.store.queues() if q.next_hop == gone]
    what = f"3 frames ({human_bytes(queue.bytes)}) queued for {gone.short} (gone)"

    result = await cli_fails(a, "queue", "purge", "gone", status=2)
    assert result.err == (
        f"ptth: usage: stdin is not a terminal, so nobody can be asked to purge {what}: "
        "add --yes to purge without asking\n"
    )
    result = await purge_on_a_terminal(a, "n\n", gone.short)
    assert (result.status, result.out) == (1, "")
    assert result.err == (
        f"purge {what}? [y/N] ptth: error: not purged (the answer was 'n', not yes)\n"
    )
    result = await purge_on_a_terminal(a, "", gone.text)
    assert result.err.endswith("ptth: error: not purged (no answer, not yes)\n")
    assert a.store.statistics().queued_frames == 3

    result = await purge_on_a_terminal(a, "y\n", "gone")
    assert (result.status, result.err) == (0, f"purge {what}? [y/N] ")
    assert result.out == f"purged {what}\n"
    assert a.store.statistics().queued_frames == 0
    trace = await a.trace(sent[0].id)
    assert trace is not None
    assert (trace.state, trace.why) == ("dropped", PURGED)
    lines = await cli_ok(a, "trace", sent[0].id.hex())
    assert lines[-1].endswith(f"dropped at {a.node_id.short}: {PURGED}")

    assert await cli_ok(a, "queue", "purge", "gone") == [
        f"nothing queued for {gone.short} (gone): nothing to purge"
    ]


async def test_queue_purge_with_yes_by_id_prefix_name_or_held(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    gone = await gone_neighbour(a, name=None)
    await a.send(gone, b"one")
    (line,) = await cli_ok(a, "queue", "purge", gone.text[:4], "--yes")
    assert re.fullmatch(rf"purged 1 frame \(\d+ B\) queued for {gone.short}", line), line
    await a.send(gone, b"two")
    (line,) = await cli_ok(a, "queue", "purge", "-y", gone.text)
    assert line.startswith("purged 1 frame (")
    await a.send(crypto.Identity.generate().node_id, b"nobody knows the way")
    (line,) = await cli_ok(a, "queue", "purge", "held", "--yes")
    assert re.fullmatch(r"purged 1 frame \(\d+ B\) held here \(no route yet\)", line), line
    assert await cli_ok(a, "queue", "purge", "held", "--yes") == [
        "nothing held here (no route yet): nothing to purge"
    ]


async def test_queue_purge_of_what_is_no_next_hop(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    twins = [await gone_neighbour(a, name="twin") for _ in range(2)]
    stranger = crypto.Identity.generate().node_id.text
    result = await cli_fails(a, "queue", "purge", stranger, "--yes")
    assert result.err == (
        f"ptth: error: this node has no queue for {stranger}: it is no neighbour and nothing "
        "is queued for it (see 'ptth queues')\n"
    )
    result = await cli_fails(a, "queue", "purge", "no such!", "--yes")
    assert result.err == (
        "ptth: error: no next hop is 'no such!': give a node id, a prefix of one or a "
        "peer's name from 'ptth queues' or 'ptth neighbours', or 'held'\n"
    )
    result = await cli_fails(a, "queue", "purge", "twin", "--yes")
    first, second = sorted(twin.text for twin in twins)
    assert result.err == (
        f"ptth: error: 'twin' could be {first[:10]} (twin), {second[:10]} (twin): give more "
        "of the id\n"
    )
    result = await cli_fails(a, "queue", "purge", "", "--yes", status=2)
    assert result.err.startswith("ptth: usage: say whose queue: NEXT_HOP is a node id")
    result = await cli_fails(a, "queue", status=2)
    assert "required: COMMAND" in result.err


async def test_a_wrong_token_is_one_line(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    token = a.data.path / "api.token"
    right = token.read_text()
    token.write_text("wrong\n")
    try:
        for argv in (["status"], ["neighbours"], ["queue", "purge", "held", "--yes"]):
            result = await cli_fails(a, *argv)
            assert result.err == (
                "ptth: error: missing or wrong bearer token (see api.token in the data dir)\n"
            ), argv
    finally:
        token.write_text(right)
    assert (await cli(a, "status")).status == 0


async def test_the_views_need_a_running_node(tmp_path: Path) -> None:
    for argv in (["status"], ["neighbours"], ["queue", "purge", "held", "--yes"]):
        result = ptth("--data-dir", tmp_path, *argv)
        assert (result.status, result.err) == (
            1,
            f"ptth: error: no node is running for {tmp_path} "
            f"(start one with 'ptth run --data-dir {tmp_path}')\n",
        )


# -- ptth run --log-format, --log-level --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_a_log_option_that_does_not_exist_is_one_line(argv: list[str], words: str) -> None:
    result = ptth("run", *argv)
    assert (result.status, result.out) == (2, "")
    (line,) = result.err.splitlines()
    assert line.startswith("ptth run: usage: ")
    assert words in line


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("PTTH_LOG_FORMAT", "xml", "ptth: usage: $PTTH_LOG_FORMAT is 'xml', not one of text, json"),
        (
            "PTTH_LOG_LEVEL",
            "loud",
            "ptth: usage: $PTTH_LOG_LEVEL is 'loud', not one of debug, info, warning, error",
        ),
    ],
)
def test_a_bad_log_setting_in_the_environment_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, line: str
) -> None:
    monkeypatch.setenv(name, value)
    result = ptth("--data-dir", tmp_path, "run")
    assert (result.status, result.out, result.err) == (2, "", line + "\n")
    assert not (tmp_path / "identity.key").exists()  # nothing started


def levels(argv: list[str]) -> tuple[int, int, type[logging.Formatter]]:
    """The levels of the node's and the CLI's loggers, and the formatter, that
    ``ptth run argv`` logs with."""
    args = build_parser().parse_args(["run", *argv])
    node, cli_logger = logging.getLogger("ptth"), logging.getLogger("ptth.cli")
    with _logging(args, io.StringIO()):
        (handler,) = node.handlers
        assert handler.formatter is not None
        return node.level, cli_logger.level, type(handler.formatter)


def test_log_level_and_format_from_options_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PTTH_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PTTH_LOG_FORMAT", raising=False)
    text = levels([])[2]
    assert levels([]) == (logging.WARNING, logging.INFO, text)
    assert levels(["-v"])[:2] == (logging.INFO, logging.INFO)
    assert levels(["-vv"])[:2] == (logging.DEBUG, logging.DEBUG)
    # The start and stop lines stay, whatever the level.
    assert levels(["--log-level", "error"])[:2] == (logging.ERROR, logging.INFO)
    assert levels(["--log-level", "debug"])[:2] == (logging.DEBUG, logging.DEBUG)
    assert levels(["--log-format", "json"])[2] is _JsonFormatter
    monkeypatch.setenv("PTTH_LOG_LEVEL", "Info")
    monkeypatch.setenv("PTTH_LOG_FORMAT", "json")
    assert levels([]) == (logging.INFO, logging.INFO, _JsonFormatter)
    # Options beat the environment: -v, --log-level and --log-format.
    assert levels(["-vv"])[:2] == (logging.DEBUG, logging.DEBUG)
    assert levels(["--log-level", "warning"])[0] == logging.WARNING
    assert levels(["--log-format", "text"])[2] is text


def test_a_json_log_line() -> None:
    record = logging.LogRecord(
        "ptth.node", logging.WARNING, "x", 1, "dropped: %s", ("\x1b[2J",), None
    )
    record.next_hop = "abc"
    record.frames = 3
    record.at = Path("/p")  # not JSON: as its repr
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = _JsonFormatter().format(record)
    assert "\n" not in line
    assert line.isascii()
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("ts"))
    assert entry.pop("exc").endswith("ValueError: bad")
    assert entry == {
        "level": "warning",
        "logger": "ptth.node",
        "message": "dropped: \x1b[2J",
        "next_hop": "abc",
        "frames": 3,
        "at": repr(Path("/p")),
    }


@pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")
@pytest.mark.parametrize("by", ["option", "environment"])
def test_ptth_run_logs_json_lines(tmp_path: Path, by: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTTH_LOG_")}
    options = ["--log-format", "json", "--log-level", "debug"]
    if by == "environment":
        env.update(PTTH_LOG_FORMAT="json", PTTH_LOG_LEVEL="debug")
        options = []
    command = [ptth_exe(), "--data-dir", str(tmp_path), "run", "--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        while True:  # the address line is the last it prints once it is serving
            line = process.stdout.readline()
            assert line, f"ptth run ended early: {process.communicate()[1]}"
            if line.startswith("address"):
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert {"debug", "info"} <= {entry["level"] for entry in entries}
    assert entries[-1]["logger"] == "ptth.cli"
    assert entries[-1]["message"] == "stopped"
