"""The ptth CLI: init, id, address, peer add/list/remove, and its one-line errors; send,
routes, queues, trace, publish and subscribe (live and named), subscriptions,
unsubscribe and chirp against a running node (on loopback TCP)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import crypto
import mesh
from node import Node, Post
from node._chirp import chirp_topic
from node._cli import build_parser, parse_duration, run
from tests.helpers import NodeFactory, chain, delivered, messages


class Result:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


def ptth(*argv: str | Path, stdin: str = "") -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = run([str(a) for a in argv], out=out, err=err, stdin=io.StringIO(stdin))
    return Result(status, out.getvalue(), err.getvalue())


def ok(*argv: str | Path, stdin: str = "") -> str:
    result = ptth(*argv, stdin=stdin)
    assert result.status == 0, result.err
    return result.out


def fails(*argv: str | Path, status: int = 1, stdin: str = "") -> str:
    result = ptth(*argv, stdin=stdin)
    assert result.status == status, (result.out, result.err)
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert "Traceback" not in result.err
    if status == 1:
        assert len(lines) == 1, result.err
    return lines[-1]


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    path = tmp_path / "alice"
    ok("--data-dir", path, "init")
    return path


@pytest.fixture
def bob(tmp_path: Path) -> Path:
    path = tmp_path / "bob"
    ok("init", "--data-dir", path)
    return path


def test_init_creates_once_and_prints_the_id(tmp_path: Path) -> None:
    path = tmp_path / "n"
    first = ptth("--data-dir", path, "init")
    assert first.status == 0
    assert "created identity" in first.err
    node_id = crypto.NodeId.parse(first.out.strip())
    key = path / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    again = ptth("--data-dir", path, "init")
    assert again.out.strip() == node_id.text
    assert again.err == ""
    assert key.read_bytes() == before
    assert ok("--data-dir", path, "id").strip() == node_id.text


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTTH_DATA_DIR", str(tmp_path / "env"))
    node_id = ok("init").strip()
    assert (tmp_path / "env" / "identity.key").exists()
    assert ok("--data-dir", tmp_path / "env", "id").strip() == node_id


def test_id_without_identity(tmp_path: Path) -> None:
    line = fails("--data-dir", tmp_path / "none", "id")
    assert line == f"ptth: error: no identity in {tmp_path / 'none'}: run 'ptth init " + (
        f"--data-dir {tmp_path / 'none'}' first"
    )


def test_insecure_key_file_refused(alice: Path) -> None:
    os.chmod(alice / "identity.key", 0o644)
    line = fails("--data-dir", alice, "id")
    assert "mode 0644" in line
    assert "chmod 600" in line


def test_address_seq_increases_and_is_reprinted(alice: Path) -> None:
    first = ok("--data-dir", alice, "address", "--endpoint", "http://127.0.0.1:8001").strip()
    second = ok(
        "--data-dir",
        alice,
        "address",
        "--endpoint",
        "http://127.0.0.1:8001",
        "--endpoint",
        "https://relay.example/n/x",
        "--name",
        "alice",
        "--expires-in",
        "1h",
    ).strip()
    a1 = crypto.parse_token(first, now=0)
    a2 = crypto.parse_token(second, now=0)
    assert (a1.record.seq, a2.record.seq) == (1, 2)
    assert a2.record.name == "alice"
    assert a2.record.endpoints == ("http://127.0.0.1:8001", "https://relay.example/n/x")
    assert ok("--data-dir", alice, "address").strip() == second


def test_address_errors(alice: Path) -> None:
    assert "no address yet" in fails("--data-dir", alice, "address")
    assert "must use http or https" in fails(
        "--data-dir", alice, "address", "--endpoint", "ftp://x"
    )
    assert "--name needs --endpoint" in fails(
        "--data-dir", alice, "address", "--name", "x", status=2
    )
    assert "not a duration" in fails(
        "--data-dir", alice, "address", "--endpoint", "http://h", "--expires-in", "3x", status=2
    )


def test_expired_own_address(alice: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok("--data-dir", alice, "address", "--endpoint", "http://h:1", "--expires-in", "1s")
    import node._cli

    real = node._cli._now_ms
    monkeypatch.setattr(node._cli, "_now_ms", lambda: real() + 10_000)
    assert "expired at" in fails("--data-dir", alice, "address")


def test_two_data_dirs_exchange_tokens(alice: Path, bob: Path, tmp_path: Path) -> None:
    alice_id = ok("--data-dir", alice, "id").strip()
    bob_id = ok("--data-dir", bob, "id").strip()
    token_a = ok(
        "--data-dir", alice, "address", "--endpoint", "http://127.0.0.1:8001", "--name", "al"
    )
    token_b = ok("--data-dir", bob, "address", "--endpoint", "http://127.0.0.1:8002")
    (tmp_path / "a.token").write_text(token_a)

    assert ok("--data-dir", bob, "peer", "add", f"@{tmp_path / 'a.token'}") == (
        f"added peer {alice_id} (al) seq 1\n"
    )
    assert ok("--data-dir", alice, "peer", "add", "-", stdin=token_b) == (
        f"added peer {bob_id} seq 1\n"
    )
    assert ok("--data-dir", bob, "peer", "add", token_a.strip()).startswith("already up to date")

    listing = ok("--data-dir", bob, "peer", "list").splitlines()
    assert len(listing) == 1
    assert listing[0].startswith(f"{alice_id}  al  seq 1  until ")
    assert listing[0].endswith("http://127.0.0.1:8001")

    # A newer record replaces the older; the older is then refused.
    newer = ok("--data-dir", alice, "address", "--endpoint", "http://127.0.0.1:9001")
    assert "seq 2" in ok("--data-dir", bob, "peer", "add", newer.strip())
    line = fails("--data-dir", bob, "peer", "add", token_a.strip())
    assert line == (
        f"ptth: error: not added: address for {alice_id[:10]} has seq 1, "
        "not newer than the held seq 2"
    )

    assert ok("--data-dir", bob, "peer", "remove", alice_id) == f"removed peer {alice_id}\n"
    assert ok("--data-dir", bob, "peer", "list") == ""
    assert "is not a known peer" in fails("--data-dir", bob, "peer", "remove", alice_id)


def test_tampered_and_malformed_tokens_refused(alice: Path, bob: Path) -> None:
    token = ok("--data-dir", alice, "address", "--endpoint", "http://127.0.0.1:8001").strip()
    middle = len(token) // 2
    flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    cases = {
        flipped: "",
        token[:-10]: "",
        "hello": "must start with 'ptth:'",
        "ptth:": "base64url",
        "ptth:!!!!": "base64url",
        "ptth:AAAA": "trailing bytes",
    }
    for bad, words in cases.items():
        line = fails("--data-dir", bob, "peer", "add", bad)
        assert line.startswith("ptth: error: "), line
        assert words in line
    assert ok("--data-dir", bob, "peer", "list") == ""


def test_own_token_refused(alice: Path) -> None:
    token = ok("--data-dir", alice, "address", "--endpoint", "http://127.0.0.1:8001").strip()
    assert "this node's own address" in fails("--data-dir", alice, "peer", "add", token)


def test_token_file_errors(alice: Path, tmp_path: Path) -> None:
    assert "cannot read token file" in fails("--data-dir", alice, "peer", "add", "@/nonexistent")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "is not text" in fails("--data-dir", alice, "peer", "add", f"@{binary}")


def test_bad_node_id_to_remove(alice: Path) -> None:
    line = fails("--data-dir", alice, "peer", "remove", "abc")
    assert line == "ptth: error: a node id is 52 characters of base32, got 3"


def test_usage_errors_exit_2(alice: Path) -> None:
    assert "required: COMMAND" in fails(status=2)
    assert "invalid choice" in fails("frobnicate", status=2)


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = fails("--data-dir", blocker / "sub", "init")
    assert line.startswith("ptth: error: cannot create data directory")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("1h30m", 5400)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "h", "1x", "0s", "1h 30m", "-1s"])
def test_parse_duration_refuses(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_console_script_runs(tmp_path: Path) -> None:
    # The installed entry point, as a user runs it (no output to wait on but its exit).
    exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
    assert exe is not None, "the ptth console script is not installed in this environment"
    done = subprocess.run(
        [exe, "--data-dir", str(tmp_path / "x"), "id"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith("ptth: error: no identity in ")
    assert "Traceback" not in done.stderr


# -- commands that talk to a running node (loopback TCP; the CLI in a worker thread) ----


async def cli(node: Node, *argv: str, stdin: str = "") -> Result:
    """Run ``ptth --data-dir DIR argv...`` against the running ``node``."""
    return await trio.to_thread.run_sync(
        functools.partial(ptth, "--data-dir", node.data.path, *argv, stdin=stdin)
    )


async def cli_ok(node: Node, *argv: str, stdin: str = "") -> list[str]:
    result = await cli(node, *argv, stdin=stdin)
    assert result.status == 0, result.err
    assert "Traceback" not in result.err
    return result.out.splitlines()


async def cli_fails(node: Node, *argv: str, status: int = 1) -> Result:
    result = await cli(node, *argv)
    assert result.status == status, (result.out, result.err)
    assert "Traceback" not in result.err
    if status == 1:
        assert len(result.err.strip().splitlines()) == 1, result.err
    return result


@pytest.fixture
async def trio_line(tcp_nodes: NodeFactory) -> tuple[Node, Node, Node]:
    """a - b - c on loopback TCP, a's route to c known (a message went there)."""
    a, b, c = [await tcp_nodes.open(name) for name in "abc"]
    await chain([a, b, c])
    with trio.fail_after(20):
        await delivered(a, c, b"warm-up")
    return a, b, c


async def test_send_prints_custody_then_delivery(trio_line: tuple[Node, Node, Node]) -> None:
    a, b, c = trio_line
    (line,) = await cli_ok(a, "send", c.node_id.text, "hello c")
    frame_id, _, rest = line.removeprefix("id ").partition("  ")
    assert len(bytes.fromhex(frame_id)) == crypto.FRAME_ID_SIZE
    assert rest == f"in custody, next hop {b.node_id.text[:10]}"
    first, second = await cli_ok(a, "send", "--wait", c.node_id.text, "again")
    assert first.endswith(f"in custody, next hop {b.node_id.text[:10]}")
    expected = rf"delivered to {c.node_id.text[:10]} after 2 hops in \d+ ms"
    assert re.fullmatch(expected, second), second
    with trio.fail_after(10):
        got = await messages(c, 3)
    assert [m.body for m in got] == [b"warm-up", b"hello c", b"again"]
    trace = await a.trace(bytes.fromhex(frame_id))
    assert trace is not None
    assert trace.receipt  # the CLI always asks for a receipt


async def test_send_to_nobody_known_is_held(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    nobody = crypto.Identity.generate().node_id.text
    (line,) = await cli_ok(a, "send", nobody, "x")
    assert re.fullmatch(r"id [0-9a-f]{32}  in custody, held: no route yet", line), line
    result = await cli_fails(a, "send", "--wait", "--timeout", "0.3", nobody, "x")
    assert re.fullmatch(r"id [0-9a-f]{32}  in custody, held: no route yet\n", result.out)
    assert result.err == ("ptth: error: no receipt within 0.3 s; the frame is still in the mesh\n")
    assert (await cli_fails(a, "send", "--timeout", "3", nobody, "x", status=2)).err == (
        "ptth: usage: --timeout needs --wait\n"
    )
    zero = await cli_fails(a, "send", "--wait", "--timeout", "0", nobody, "x", status=2)
    assert "is not a positive number of seconds" in zero.err.splitlines()[-1]
    assert "a node cannot send to itself" in (await cli_fails(a, "send", a.node_id.text, "x")).err


async def test_send_wait_for_a_dropped_frame_exits_1(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    b = await tcp_nodes.open("b", forward_policy="off")
    c = await tcp_nodes.open("c")
    await chain([a, b, c])
    result = await cli_fails(a, "send", "--wait", "--timeout", "20", c.node_id.text, "x")
    assert "in custody, " in result.out
    why = f"policy: refused by {b.node_id.short}: this node does not forward frames for others"
    assert result.err == f"ptth: error: dropped by {b.node_id.short}: {why}\n"


async def test_routes(trio_line: tuple[Node, Node, Node]) -> None:
    a, b, c = trio_line
    header, *rows = await cli_ok(a, "routes")
    assert header.split() == ["destination", "next", "hop", "hops", "age", "expires"]
    assert [row.split()[:3] for row in rows] == [
        [b.node_id.short, b.node_id.short, "1"],
        [c.node_id.short, b.node_id.short, "2"],
    ]
    assert all(re.fullmatch(r"\d+s|\d+m\d\ds", row.split()[3]) for row in rows)
    wide = await cli_ok(a, "routes", "--wide")
    assert [row.split()[:2] for row in wide[1:]] == [
        [b.node_id.text, b.node_id.text],
        [c.node_id.text, b.node_id.text],
    ]
    routes = json.loads("\n".join(await cli_ok(a, "routes", "--json")))
    assert [(r["destination"], r["hops"]) for r in routes] == [
        (b.node_id.text, 1),
        (c.node_id.text, 2),
    ]


async def test_queues(trio_line: tuple[Node, Node, Node]) -> None:
    a, b, _ = trio_line
    await a.send(crypto.Identity.generate().node_id, b"held")
    header, *rows = await cli_ok(a, "queues")
    assert header.split() == [
        *("next", "hop", "frames", "bytes", "oldest", "link"),
        *("next", "attempt", "announces", "last", "error"),
    ]
    assert len(rows) == 2
    # The held frame is charged what its row takes (mesh.stored_charge): < 1 KiB.
    assert re.fullmatch(r"\(held\) +1 +\d+ B +\d+s +- +- +0 +-", rows[0]), rows[0]
    assert re.fullmatch(rf"{b.node_id.short} +0 +0 B +- +up +- +\d+ +-", rows[1]), rows[1]
    queues = json.loads("\n".join(await cli_ok(a, "queues", "--json")))
    assert [(q["next_hop"], q["frames"], q["link"]) for q in queues] == [
        (None, 1, None),
        (b.node_id.text, 0, "up"),
    ]


async def test_trace(trio_line: tuple[Node, Node, Node]) -> None:
    a, b, c = trio_line
    with trio.fail_after(10):
        trace = await delivered(a, c, b"traced")
    lines = await cli_ok(a, "trace", trace.id.hex())
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    patterns = [
        rf"frame {trace.id.hex()} to {c.node_id.text}",
        rf"  {stamp}  taken into custody here",
        rf"  {stamp}  accepted by {b.node_id.text[:10]} \(signed receipt\)",
        rf"  {stamp}  delivered by {c.node_id.text[:10]} after 2 hops",
    ]
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    raw = json.loads("\n".join(await cli_ok(a, "trace", "--json", trace.id.hex())))
    assert (raw["state"], raw["hops"], raw["by"]) == ("delivered", 2, c.node_id.text)

    # Held here; and handed on without a receipt asked for.
    held = await a.send(crypto.Identity.generate().node_id, b"held")
    lines = await cli_ok(a, "trace", held.id.hex())
    assert lines[2:] == ["  held here: no route yet"]
    quiet = await a.send(c.node_id, b"no receipt")
    with trio.fail_after(10):
        await messages(c, 3)
        # A frame queued now goes in a's next batch to b, after a has committed b's
        # answer for the quiet one: its receipt means the quiet one is handed on.
        await delivered(a, c, b"loud")
    lines = await cli_ok(a, "trace", quiet.id.hex())
    assert lines[-1] == "  in the mesh; no receipt yet (no delivery receipt was asked for)"

    result = await cli_fails(a, "trace", "00" * 16)
    assert result.err == (f"ptth: error: this node sent no frame {'00' * 16} (or forgot it)\n")
    assert "is not hex" in (await cli_fails(a, "trace", "xyz")).err


async def test_peer_add_tells_the_running_node(tcp_nodes: NodeFactory) -> None:
    # b takes frames from any node: only a is told of the other here.
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b", admission="open")
    assert not a.mesh.router.is_neighbour(b.node_id)
    (line,) = await cli_ok(a, "peer", "add", b.address_token())
    assert line == f"added peer {b.node_id.text} (b) seq 1"
    # A neighbour at once: no waiting for the node's next look at its peer book.
    assert a.mesh.router.is_neighbour(b.node_id)
    sent = await a.send(b.node_id, b"hello")
    assert sent.next_hop == b.node_id
    with trio.fail_after(10):
        assert [m.body for m in await messages(b, 1)] == [b"hello"]


async def test_commands_need_a_running_node(alice: Path) -> None:
    for command in (["routes"], ["queues"], ["trace", "00"], ["send", "x" * 52, "y"]):
        line = fails("--data-dir", alice, *command)
        assert line == (
            f"ptth: error: no node is running for {alice} "
            f"(start one with 'ptth run --data-dir {alice}')"
        )


def test_run_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--forward", "open", "--announce-interval", "90s"])
    assert (args.forward, args.announce_interval) == ("open", 90)
    args = parser.parse_args(["run"])
    assert (args.forward, args.announce_interval) == ("neighbours", 600)
    assert "invalid choice: 'sometimes'" in fails("run", "--forward", "sometimes", status=2)
    assert "not a duration" in fails("run", "--announce-interval", "10", status=2)


async def test_trace_shows_a_delivery_claimed_by_another_node_as_ignored(
    tcp_nodes: NodeFactory,
) -> None:
    # a takes frames from any node that signs its requests (b is no neighbour of it).
    a, b = await tcp_nodes.open("a", admission="open"), await tcp_nodes.open("b")
    nobody = crypto.Identity.generate().node_id
    sent = await a.send(nobody, b"held", receipt=True)
    # b, which is not the destination, claims to have delivered it.
    now = b.clock()
    lie = crypto.Frame(
        kind=crypto.Kind.RCPT,
        src=b.node_id,
        id=os.urandom(crypto.FRAME_ID_SIZE),
        ts=now,
        exp=now + 60_000,
        hops=8,
        dst=a.node_id,
        ref=sent.id,
        st="delivered",
        n=1,
    ).seal(b.identity)
    url = a.endpoints[0] + "/ptth/v1/frames"
    body = mesh.encode_frames([mesh.WireFrame(0, lie)])
    headers = [("content-type", mesh.CONTENT_TYPE_FRAMES), *b.sign_request("POST", url, body)]
    response = await b.http_client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert mesh.decode_results(response.content, expected=1)[0].outcome is mesh.Outcome.ACCEPTED
    lines = await cli_ok(a, "trace", sent.id.hex())
    assert lines[2] == "  held here: no route yet"
    assert re.fullmatch(
        rf"  .* UTC  {b.node_id.text[:10]} claims delivery, but is not the destination: ignored",
        lines[3],
    ), lines
    trace = json.loads("\n".join(await cli_ok(a, "trace", "--json", sent.id.hex())))
    assert (trace["state"], trace["by"]) == ("held", None)


# -- publish and subscribe ----------------------------------------------------------------


async def learned(node: Node, topic: str, subscriber: Node) -> None:
    """Wait until ``node`` knows that ``subscriber`` wants ``topic``."""
    with trio.fail_after(20):
        while subscriber.node_id not in node.mesh.router.interests.subscribers(
            topic, now=node.clock()
        ):
            await node.mesh.interests_changed.wait()


async def test_publish_prints_the_frame_id(tcp_nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    await chain([a, b])
    result = await cli(a, "publish", "news.tech", "nobody yet")
    assert result.status == 0, result.err
    assert re.fullmatch(r"[0-9a-f]{32}\n", result.out), result.out
    assert result.err == "in custody, no subscriber known yet\n"
    async with b.subscribe("news.#") as subscription:
        await learned(a, "news.tech", b)
        result = await cli(a, "publish", "news.tech", "hello b")
        assert result.status == 0, result.err
        frame_id = result.out.strip()
        assert result.err == "in custody, to 1 neighbour\n"
        body = tmp_path / "body.bin"
        body.write_bytes(b"\x00\x01")
        result = await cli(
            a, "publish", "--ct", "application/x-thing", "--ttl", "90m", "news", f"@{body}"
        )
        assert result.status == 0, result.err
        with trio.fail_after(10):
            first, second = await subscription.get(), await subscription.get()
    assert (first.id.hex(), first.body, first.origin) == (frame_id, b"hello b", a.node_id)
    assert (second.id.hex(), second.body, second.ct) == (
        result.out.strip(),
        b"\x00\x01",
        "application/x-thing",
    )
    assert second.ts + 90 * 60 * 1000 > second.received


async def test_publish_errors_are_one_line(tcp_nodes: NodeFactory) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    result = await cli_fails(a, "publish", "news.*", "x")
    assert result.err == (
        "ptth: error: topic 'news.*': word 2 '*' is not one of words of A-Z a-z 0-9 _ - (1..64)\n"
    )
    result = await cli_fails(a, "publish", f"~{b.node_id.text}.chirp", "x")
    assert result.err.startswith(f"ptth: error: topic '~{b.node_id.text}.chirp' is ")
    assert f"{b.node_id.short}'s secure name" in result.err
    result = await cli_fails(a, "publish", "--ttl", "soon", "t", "x", status=2)
    assert "'soon' is not a positive number of seconds or a duration" in result.err
    assert "cannot read message file" in (await cli_fails(a, "publish", "t", "@/nonexistent")).err


@pytest.mark.parametrize("json_flag", [True, False])
async def test_subscribe_prints_publications_until_ctrl_c(
    tcp_nodes: NodeFactory, json_flag: bool
) -> None:
    a = await tcp_nodes.open("a")
    exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
    assert exe is not None, "the ptth console script is not installed in this environment"
    argv = [exe, "--data-dir", str(a.data.path), "subscribe", "news.#", "*.alerts"]
    if json_flag:
        argv.append("--json")
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(30):
            while not len(a.mesh.subscriptions):  # the CLI has subscribed
                await a.mesh.subscriptions.changed.wait()
            await a.publish("sport", b"not wanted")
            published = await a.publish("news.tech", b"hello", ct="text/plain")
            await a.publish("x.alerts", b"\xff", ct="image/png")
            while output.count(b"\n") < 2:
                chunk = await process.stdout.receive_some()
                assert chunk, f"ptth subscribe ended early: {process.poll()} {output!r}"
                output += chunk
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            status = await process.wait()
        errors = b""
        while chunk := await process.stderr.receive_some():
            errors += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
            errors = bytes(await process.stderr.receive_some())
            print(f"ptth subscribe printed {output!r}, and on stderr {errors!r}")
    assert (status, errors) == (0, b"")
    first, second = output.decode().splitlines()
    if json_flag:
        got = json.loads(first)
        assert got == {
            "topic": "news.tech",
            "origin": a.node_id.text,
            "id": published.id.hex(),
            "ts": got["ts"],
            "received": got["received"],
            "hops": 0,
            "ct": "text/plain",
            "body": "hello",
        }
        assert json.loads(second)["body_b64"] == "/w=="
    else:
        assert first == f"news.tech {a.node_id.short}: hello"
        assert second == f"x.alerts {a.node_id.short}: [1 bytes of image/png]"


def test_publish_and_subscribe_need_a_running_node(alice: Path) -> None:
    for command in (
        ["publish", "t", "x"],
        ["subscribe", "t"],
        ["subscribe", "--name", "x"],
        ["subscriptions"],
        ["unsubscribe", "x"],
        ["chirp", "post", "x"],
        ["chirp", "follow", "x"],
        ["chirp", "following"],
        ["chirp", "timeline"],
        ["chirp", "timeline", "--follow"],
    ):
        line = fails("--data-dir", alice, *command)
        assert line.startswith(f"ptth: error: no node is running for {alice} ")


# -- named subscriptions, and chirp ---------------------------------------------------------


class Command:
    """A `ptth` command run in its own process against a running node, ended (as a user
    does) with Ctrl-C."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, node: Node, *argv: str) -> AsyncIterator[Command]:
        exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
        assert exe is not None, "the ptth console script is not installed in this environment"
        process = await trio.lowlevel.open_process(
            [exe, "--data-dir", str(node.data.path), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        command = cls(process)
        try:
            yield command
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
                print(f"ptth {' '.join(argv)} printed {command.output!r}")

    async def lines(self, count: int) -> list[str]:
        """Every line printed so far, once there are ``count``."""
        assert self.process.stdout is not None
        with trio.fail_after(30):
            while self.output.count(b"\n") < count:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"ended early: {self.process.poll()} {self.output!r}"
                self.output += chunk
        return self.output.decode().splitlines()

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: its exit status and what it wrote on stderr."""
        assert self.process.stderr is not None
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            status = await self.process.wait()
        errors = b""
        while chunk := await self.process.stderr.receive_some():
            errors += chunk
        return status, errors.decode()


async def no_pending(node: Node, name: str, patterns: tuple[str, ...]) -> None:
    """Wait until nothing is pending for named subscription ``name`` (all acknowledged)."""
    with trio.fail_after(30):
        while True:
            async with node.subscribe(*patterns, name=name) as subscription:
                if not await subscription.pending():
                    return
            await trio.sleep(0.02)  # acknowledgements are not announced: look again


async def test_a_named_subscribe_prints_what_is_pending_and_acknowledges_it(
    tcp_nodes: NodeFactory,
) -> None:
    a = await tcp_nodes.open("a")
    async with a.subscribe("news.#", name="feed"):
        pass
    await a.publish("news.1", b"one")
    await a.publish("sport", b"not for feed")
    await a.publish("news.2", b"two", ct="text/plain")
    async with Command.run(a, "subscribe", "news.#", "--name", "feed") as command:
        assert await command.lines(2) == [
            f"news.1 {a.node_id.short}: one",
            f"news.2 {a.node_id.short}: two",
        ]
        await a.publish("news.3", b"three")
        assert (await command.lines(3))[2] == f"news.3 {a.node_id.short}: three"
        await no_pending(a, "feed", ("news.#",))
        assert await command.interrupt() == (0, "")
    # A second run (by its name alone) prints only what came since.
    last = await a.publish("news.4", b"four")
    async with Command.run(a, "subscribe", "--name", "feed", "--json") as command:
        (line,) = await command.lines(1)
        got = json.loads(line)
        assert (got["id"], got["body"], got["topic"]) == (last.id.hex(), "four", "news.4")
        assert got["seq"] > 0
        await no_pending(a, "feed", ("news.#",))
        assert await command.interrupt() == (0, "")
    assert [(s.name, s.patterns) for s in await a.subscriptions()] == [("feed", ("news.#",))]


async def test_subscriptions_and_unsubscribe(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    result = await cli(a, "subscriptions")
    assert (result.status, result.out) == (0, "")
    assert result.err == (
        "no named subscriptions (start one with 'ptth subscribe PATTERN --name NAME')\n"
    )
    async with a.subscribe("news.#", "*.alerts", name="feed"):
        pass
    header, line = await cli_ok(a, "subscriptions")
    assert header.split() == ["name", "patterns", "lease", "created"]
    assert re.fullmatch(
        r"feed  news\.# \*\.alerts  1h00m  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line
    ), line
    listing = json.loads("\n".join(await cli_ok(a, "subscriptions", "--json")))
    assert [(s["name"], s["patterns"], s["lease"]) for s in listing] == [
        ("feed", ["news.#", "*.alerts"], 3600)
    ]
    assert await cli_ok(a, "unsubscribe", "feed") == [
        "unsubscribed feed (what was pending for it is dropped)"
    ]
    assert await a.subscriptions() == []
    result = await cli_fails(a, "unsubscribe", "feed")
    assert result.err == (
        "ptth: error: this node has no subscription named 'feed' "
        "(list them with GET /api/v1/subscriptions or 'ptth subscriptions')\n"
    )
    result = await cli_fails(a, "unsubscribe", "a b")
    assert result.err.startswith("ptth: error: subscription name 'a b' must be 1..64 of ")
    result = await cli_fails(a, "subscribe", "t", "--name", "a/b")
    assert result.err.startswith("ptth: error: subscription name 'a/b' must be 1..64 of ")
    result = await cli_fails(a, "subscribe", "--name", "nothing")
    assert "has no subscription named 'nothing' (give its patterns" in result.err
    result = await cli_fails(a, "subscribe", status=2)
    assert result.err.endswith(
        "ptth: usage: say what to subscribe to: one PATTERN or more (or --name NAME alone "
        "to resume a named subscription)\n"
    )


@pytest.fixture
async def chirpers(tcp_nodes: NodeFactory) -> tuple[Node, Node]:
    """alice - bob on loopback TCP, bob following alice (through the CLI)."""
    alice, bob = await tcp_nodes.open("alice"), await tcp_nodes.open("bob")
    await chain([alice, bob])
    assert await cli_ok(bob, "chirp", "follow", alice.node_id.text) == [
        f"following {alice.node_id.text} (1 followed)"
    ]
    await learned(alice, chirp_topic(alice.node_id), bob)
    return alice, bob


async def timeline_of(node: Node, count: int) -> list[Post]:
    """Wait until ``node``'s timeline holds ``count`` posts; return it."""
    with trio.fail_after(20):
        while True:
            changed = node.mesh.inbox_changed  # before looking: no change is missed
            if len(posts := await node.chirp.timeline()) >= count:
                return posts
            await changed.wait()


def post_line(post: Post) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(post.ts / 1000))
    return f"{stamp} {post.author.short}: {post.text}"


async def test_chirp_post_follow_and_timeline(chirpers: tuple[Node, Node]) -> None:
    alice, bob = chirpers
    assert await cli_ok(bob, "chirp", "following") == [alice.node_id.text]
    result = await cli(alice, "chirp", "post", "hello bob")
    assert result.status == 0, result.err
    assert result.err == "posted, to 1 neighbour\n"
    (first_id,) = result.out.split()
    assert len(bytes.fromhex(first_id)) == crypto.FRAME_ID_SIZE
    (second_id,) = await cli_ok(alice, "chirp", "post", "-", stdin="from a pipe\n")
    posts = await timeline_of(bob, 2)
    assert [(p.id.hex(), p.text) for p in posts] == [
        (first_id, "hello bob"),
        (second_id, "from a pipe"),  # the pipe's last line break is not part of it
    ]
    assert await cli_ok(bob, "chirp", "timeline") == [post_line(p) for p in posts]
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {alice.node_id.short}: hello bob",
        post_line(posts[0]),
    )
    raw = [json.loads(line) for line in await cli_ok(bob, "chirp", "timeline", "--json")]
    assert [(p["author"], p["text"], p["id"]) for p in raw] == [
        (alice.node_id.text, "hello bob", first_id),
        (alice.node_id.text, "from a pipe", second_id),
    ]
    assert await cli_ok(alice, "chirp", "timeline") == []  # alice follows nobody

    assert await cli_ok(bob, "chirp", "unfollow", alice.node_id.text) == [
        f"unfollowed {alice.node_id.text} (0 followed)"
    ]
    assert await cli_ok(bob, "chirp", "timeline") == []
    result = await cli(bob, "chirp", "following")
    assert (result.status, result.out) == (0, "")
    assert result.err == "following nobody yet ('ptth chirp follow NODE_ID')\n"


async def test_chirp_errors_are_one_line(chirpers: tuple[Node, Node], tmp_path: Path) -> None:
    alice, bob = chirpers
    result = await cli_fails(bob, "chirp", "unfollow", crypto.Identity.generate().node_id.text)
    assert result.err.startswith("ptth: error: this node does not follow ")
    assert result.err.endswith(" (see 'ptth chirp following')\n")
    result = await cli_fails(alice, "chirp", "follow", alice.node_id.text)
    assert result.err == ("ptth: error: a node does not follow itself: give another node's id\n")
    result = await cli_fails(alice, "chirp", "follow", "nope")
    assert result.err == "ptth: error: bad node id: a node id is 52 characters of base32, got 4\n"
    assert (await cli_fails(alice, "chirp", "post", " ")).err == (
        "ptth: error: a post needs some text\n"
    )
    binary = tmp_path / "post.bin"
    binary.write_bytes(b"ok \xff")
    assert (await cli_fails(alice, "chirp", "post", f"@{binary}")).err == (
        "ptth: error: a post is UTF-8 text; byte 3 is not\n"
    )
    result = await cli_fails(alice, "chirp", "timeline", "--follow")
    assert result.err == (
        "ptth: error: this node follows nobody: follow someone first "
        "('ptth chirp follow NODE_ID')\n"
    )
    assert "invalid choice" in (await cli_fails(alice, "chirp", "retweet", status=2)).err


async def test_chirp_timeline_follow_prints_new_posts_until_ctrl_c(
    chirpers: tuple[Node, Node],
) -> None:
    alice, bob = chirpers
    await alice.chirp.post("old news")
    async with Command.run(bob, "chirp", "timeline", "--follow") as command:
        (old,) = await command.lines(1)
        await alice.chirp.post("fresh")
        new = (await command.lines(2))[1]
        assert await command.interrupt() == (0, "")
    assert [old, new] == [post_line(p) for p in await bob.chirp.timeline()]
    assert new.endswith(f" {alice.node_id.short}: fresh")
