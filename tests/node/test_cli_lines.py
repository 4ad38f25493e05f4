"""``ptth send --lines NODE_ID``: each line of stdin a message, sent in batches through
``POST /api/v1/send/batch``; one id (or JSON object) printed per message. Against a
running node (loopback TCP), and against a stand-in for its local API for how batches
are cut, their idempotency keys, retries, refusals and errors."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
import trio

import crypto
import node._cli
from node._apiclient import batch_line
from node._cli import BATCH_BYTES, EXIT_BROKEN_PIPE, LINES_PER_BATCH
from tests.helpers import NodeFactory, messages, peer
from tests.node.test_cli import cli, cli_ok
from tests.node.test_cli_api import FakeAnswer, FakeNode, FakeRequest
from tests.node.test_cli_errors import ClosedPipe, ptth_exe

DST = crypto.Identity.generate().node_id.text
NEXT_HOP = crypto.Identity.generate().node_id.text


class Batches:
    """The node's side of ``POST send/batch``: each batch taken once per idempotency
    key (the first answer replayed after), frame ids counted from 1. ``refuse(n,
    messages)`` may answer batch n instead; ``drops`` answers are lost (the connection
    dropped after the batch was taken)."""

    def __init__(self) -> None:
        self.taken: list[list[dict[str, Any]]] = []
        self.keys: list[str] = []  # of each request, retries too
        self.answers: dict[str, tuple[bytes, FakeAnswer]] = {}
        self.refuse: Callable[[int, list[dict[str, Any]]], FakeAnswer | None] | None = None
        self.drops = 0
        self.frames = 0

    @property
    def bodies(self) -> list[str]:
        return [m["body"] for batch in self.taken for m in batch]

    def __call__(self, request: FakeRequest) -> FakeAnswer | None:
        assert request.headers["content-type"] == "application/x-ndjson"
        key = request.headers["idempotency-key"]
        self.keys.append(key)
        if key in self.answers:
            body, first = self.answers[key]
            if body != request.body:
                return FakeAnswer.json({"error": f"key {key} was for another batch"}, 422)
            answer = dataclasses.replace(first, headers=[("idempotent-replayed", "true")])
        else:
            batch = [json.loads(line) for line in request.body.splitlines()]
            refusal = self.refuse(len(self.taken) + 1, batch) if self.refuse else None
            if refusal is not None:
                return refusal
            self.taken.append(batch)
            sent = []
            for message in batch:
                self.frames += 1
                sent.append(
                    {"id": f"{self.frames:032x}", "to": message["to"], "next_hop": NEXT_HOP}
                    | {"held": False}
                )
            answer = FakeAnswer.json({"sent": sent})
            self.answers[key] = (request.body, answer)
        if self.drops > 0:
            self.drops -= 1
            return None
        return answer


@pytest.fixture
def batches(tmp_path: Path) -> Iterator[tuple[FakeNode, Batches]]:
    with FakeNode(tmp_path / "node") as fake:
        batches = Batches()
        fake.routes["POST", "send/batch"] = batches
        yield fake, batches


@dataclasses.dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def ids(self) -> list[str]:
        return self.out.splitlines()


def send_lines(
    fake: FakeNode, stdin: str | TextIO, *argv: str, out: io.StringIO | None = None
) -> Result:
    """``ptth send --lines DST argv...`` with ``stdin`` (text, or a stream)."""
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), "send", "--lines", DST, *argv],
        out=out,
        err=err,
        stdin=io.StringIO(stdin) if isinstance(stdin, str) else stdin,
    )
    assert "Traceback" not in err.getvalue()
    return Result(status, out.getvalue(), err.getvalue())


def ids(first: int, last: int) -> list[str]:
    """The ids the stand-in gives frames first..last."""
    return [f"{n:032x}" for n in range(first, last + 1)]


# -- against a running node ---------------------------------------------------------------


async def test_each_line_is_a_message(tcp_nodes: NodeFactory) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    await peer(a, b)
    stdin = "one\ntwo \u00e9\r\n\n\tlast without a line break"
    printed = await cli_ok(a, "send", "--lines", "--ct", "text/plain", b.node_id.text, stdin=stdin)
    assert len(printed) == 4
    with trio.fail_after(30):
        received = await messages(b, 4)
    # Each printed id is its line's (the mesh may deliver two batches in either order).
    assert {m.id.hex(): (m.body, m.ct) for m in received} == {
        printed[0]: (b"one", "text/plain"),
        printed[1]: ("two \u00e9".encode(), "text/plain"),
        printed[2]: (b"", "text/plain"),
        printed[3]: (b"\tlast without a line break", "text/plain"),
    }
    # As 'ptth send': each asks for a delivery receipt, so 'ptth trace' can tell.
    with trio.fail_after(30):
        trace = await a.delivered(bytes.fromhex(printed[3]))
    assert (trace.state, trace.receipt) == ("delivered", True)


async def test_json_output_and_a_held_message(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    nobody = crypto.Identity.generate().node_id.text
    result = await cli(a, "send", "--lines", "--json", nobody, stdin="x\ny\n")
    assert (result.status, result.err) == (0, "")
    first, second = (json.loads(line) for line in result.out.splitlines())
    assert first == {
        "line": 1,
        "id": first["id"],
        "to": nobody,
        "next_hop": None,
        "held": True,
    }
    assert second["line"] == 2
    assert a.store.statistics().queued_frames == 2


async def test_a_slow_producer_s_lines_go_at_once_and_ctrl_c_ends_it(
    tcp_nodes: NodeFactory,
) -> None:
    # A real process reading a pipe, as under `tail -f`: each line is sent as soon as
    # it is read (its id comes back before the next is written), and Ctrl-C is exit 130.
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    await peer(a, b)
    process = await trio.lowlevel.open_process(
        [ptth_exe(), "--data-dir", str(a.data.path), "send", "--lines", b.node_id.text],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    output = b""
    try:
        for number in (1, 2):
            await process.stdin.send_all(f"line {number}\n".encode())
            with trio.fail_after(30):
                while output.count(b"\n") < number:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"ended early: {process.poll()} {output!r}"
                    output += chunk
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            status = await process.wait()
        errors = b""
        while chunk := await process.stderr.receive_some():
            errors += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
            print(f"ptth send --lines printed {output!r}")
    assert (status, errors) == (130, b"ptth: interrupted\n")  # no "Fatal Python error"
    with trio.fail_after(30):
        received = await messages(b, 2)
    first, second = output.decode().split()
    assert {m.id.hex(): m.body for m in received} == {first: b"line 1", second: b"line 2"}


async def test_the_node_s_refusal_names_the_input_line(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    other = crypto.Identity.generate().node_id.text
    result = await cli(a, "send", "--lines", "--ct", "no type", other, stdin="x\n")
    assert (result.status, result.out) == (1, "")
    assert result.err.startswith("ptth: error: line 1: frame ct 'no type' is not a content type")
    assert result.err.endswith(": nothing was sent\n")
    result = await cli(a, "send", "--lines", a.node_id.text, stdin="x\n")
    assert (result.status, result.err) == (
        2,
        "ptth: usage: that is this node's own id: a node does not send to itself\n",
    )
    assert a.store.statistics().queued_frames == 0


# -- how batches are cut (against a stand-in) -----------------------------------------------


def test_batches_are_cut_by_count_with_a_key_of_their_own(
    batches: tuple[FakeNode, Batches],
) -> None:
    fake, taken = batches
    count = 2 * LINES_PER_BATCH + 500
    stdin = "".join(f"m{i}\n" for i in range(count))
    result = send_lines(fake, stdin, "--idempotency-key", "run-1")
    assert (result.status, result.err) == (0, "")
    assert result.ids == ids(1, count)
    assert [len(batch) for batch in taken.taken] == [LINES_PER_BATCH, LINES_PER_BATCH, 500]
    assert taken.bodies == [f"m{i}" for i in range(count)]
    assert all(m == {"to": DST, "body": m["body"], "receipt": True} for m in taken.taken[0])
    assert taken.keys == ["run-1:1", "run-1:2", "run-1:3"]


def test_batches_are_cut_by_size(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    line = "x" * 100_000  # ten and a bit fit in BATCH_BYTES
    result = send_lines(fake, f"{line}\n" * 25, "--idempotency-key", "k")
    assert result.status == 0, result.err
    per_batch = BATCH_BYTES // len(batch_line({"to": DST, "body": line, "receipt": True}))
    assert per_batch == 10
    assert [len(batch) for batch in taken.taken] == [per_batch, per_batch, 25 - 2 * per_batch]
    requests = [r for r in fake.requests if r.path == "send/batch"]
    assert all(len(r.body) <= BATCH_BYTES for r in requests)


def test_without_a_key_each_batch_has_a_fresh_one(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    stdin = "".join(f"m{i}\n" for i in range(LINES_PER_BATCH + 1))
    assert send_lines(fake, stdin).status == 0
    assert send_lines(fake, stdin).status == 0
    assert len(taken.bodies) == 2 * (LINES_PER_BATCH + 1)  # two runs: sent twice, as asked
    assert len(set(taken.keys)) == len(taken.keys) >= 4


def test_a_rerun_with_the_same_key_sends_nothing_twice(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    stdin = "".join(f"m{i}\n" for i in range(LINES_PER_BATCH + 10))
    first = send_lines(fake, stdin, "--idempotency-key", "nightly")
    assert first.status == 0, first.err
    again = send_lines(fake, stdin, "--idempotency-key", "nightly")
    assert (again.status, again.ids) == (0, first.ids)
    assert again.err.splitlines() == [
        f"lines 1-{LINES_PER_BATCH} were sent before with idempotency key nightly:1: these "
        "are their first ids",
        f"lines {LINES_PER_BATCH + 1}-{LINES_PER_BATCH + 10} were sent before with "
        "idempotency key nightly:2: these are their first ids",
    ]
    assert len(taken.bodies) == LINES_PER_BATCH + 10
    # More input under the same key: what was sent is replayed, the rest is new ...
    longer = stdin + "".join(f"n{i}\n" for i in range(5))
    more = send_lines(fake, longer, "--idempotency-key", "nightly")
    assert more.status == 1
    # ... unless a batch differs: the node refuses the key, and nothing more is sent.
    assert more.err.splitlines()[-1] == (
        "ptth: error: key nightly:2 was for another batch: "
        f"lines 1-{LINES_PER_BATCH} are in custody, line {LINES_PER_BATCH + 1} on not sent"
    )
    assert len(taken.bodies) == LINES_PER_BATCH + 10


def test_a_lost_answer_is_retried_with_the_batch_s_key(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    taken.drops = 1
    result = send_lines(fake, "a\nb\n")
    assert (result.status, result.err) == (0, "")
    assert result.ids == ids(1, 2)
    assert taken.bodies == ["a", "b"]  # taken once
    first, second = taken.keys
    assert first == second


@pytest.mark.parametrize("key", [None, "mine"])
def test_no_answer_at_all_says_which_lines_are_in_doubt(
    batches: tuple[FakeNode, Batches], monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    fake, taken = batches
    monkeypatch.setattr(node._cli, "API_RETRY_FOR", 0.2)

    def second_batch_never_answered(request: FakeRequest) -> FakeAnswer | None:
        answer = taken(request)
        return answer if len(taken.taken) == 1 else None

    fake.routes["POST", "send/batch"] = second_batch_never_answered
    stdin = "".join(f"m{i}\n" for i in range(LINES_PER_BATCH + 3))
    result = send_lines(fake, stdin, *(["--idempotency-key", key] if key else []))
    assert result.status == 1
    assert result.ids == ids(1, LINES_PER_BATCH)
    (line,) = result.err.splitlines()
    assert line.startswith("ptth: error: no answer from the node's local API at http://127.0.0.1:")
    advice = (
        "; run again with the same input and --idempotency-key mine: what is in custody is "
        "not sent again"
        if key
        else " (with --idempotency-key, running again with the same input is safe)"
    )
    assert line.endswith(
        f": lines {LINES_PER_BATCH + 1}-{LINES_PER_BATCH + 3} may or may not be in custody; "
        f"lines 1-{LINES_PER_BATCH} are in custody; line {LINES_PER_BATCH + 4} on not sent" + advice
    )
    retries = taken.keys[1:]
    assert len(retries) >= 2
    assert len(set(retries)) == 1  # the second batch, again and again with its key


def test_a_refusal_mid_way_says_what_is_in_custody(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    taken.refuse = lambda n, batch: (
        FakeAnswer.json({"error": "store full"}, 429, **{"retry-after": "30"}) if n == 2 else None
    )
    stdin = "".join(f"m{i}\n" for i in range(LINES_PER_BATCH + 3))
    result = send_lines(fake, stdin, "--idempotency-key", "k")
    assert result.status == 1
    assert result.ids == ids(1, LINES_PER_BATCH)  # what is in custody is printed
    assert result.err == (
        f"ptth: error: store full: lines 1-{LINES_PER_BATCH} are in custody, "
        f"line {LINES_PER_BATCH + 1} on not sent\n"
    )


def test_the_node_s_line_number_becomes_the_input_s(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    taken.refuse = lambda n, batch: (
        FakeAnswer.json({"error": "line 3: too odd"}, 400) if n == 2 else None
    )
    stdin = "".join(f"m{i}\n" for i in range(LINES_PER_BATCH + 5))
    result = send_lines(fake, stdin, "--idempotency-key", "k")
    assert result.err == (
        f"ptth: error: line {LINES_PER_BATCH + 3}: too odd: lines 1-{LINES_PER_BATCH} are "
        f"in custody, line {LINES_PER_BATCH + 1} on not sent\n"
    )


def test_a_line_that_is_not_utf8_stops_after_the_lines_before(
    batches: tuple[FakeNode, Batches], tmp_path: Path
) -> None:
    fake, taken = batches
    path = tmp_path / "input"
    path.write_bytes(b"fine\n\xc3\xa9 too\nbad \xff here\nnever\n")
    with path.open(encoding="utf-8") as stdin:  # a file descriptor: read as bytes
        result = send_lines(fake, stdin)
    assert result.status == 1
    assert result.ids == ids(1, 2)
    assert result.err == (
        "ptth: error: line 3 is not UTF-8 text (byte 5): lines 1-2 are in custody, "
        "line 3 on not sent\n"
    )
    assert taken.bodies == ["fine", "\u00e9 too"]


def test_a_line_longer_than_a_message_may_be(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    long = "x" * (crypto.MAX_BODY_SIZE + 2)
    for stdin, sent in ((f"ok\n{long}\nnever\n", ["ok"]), (f"{long}", [])):
        result = send_lines(fake, stdin)
        assert result.status == 1
        first = len(sent) + 1
        done = "line 1 is in custody, line 2 on not sent" if sent else "nothing was sent"
        assert result.err == (
            f"ptth: error: line {first} is over {crypto.MAX_BODY_SIZE} bytes, the most a "
            f"message may carry: {done}\n"
        )
    assert taken.bodies == ["ok"]
    # The longest body there may be still goes (with a "\r\n" line break, too).
    longest = "y" * crypto.MAX_BODY_SIZE
    assert send_lines(fake, f"{longest}\r\n").status == 0
    assert taken.bodies[-1] == longest


def test_empty_input_sends_nothing(batches: tuple[FakeNode, Batches]) -> None:
    fake, taken = batches
    result = send_lines(fake, "")
    assert result == Result(0, "", "")
    assert taken.keys == []


def test_verbose_says_how_many_and_how_fast(batches: tuple[FakeNode, Batches]) -> None:
    fake, _ = batches
    result = send_lines(fake, "a\nb\nc\n", "-v", "--idempotency-key", "k")
    assert result.status == 0
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d sent 3 messages in 1 batch in \d+\.\d\d s \(\d+/s\)\n", result.err
    ), result.err


def test_a_closed_stdout_is_141(batches: tuple[FakeNode, Batches]) -> None:
    fake, _ = batches
    err = io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), "send", "--lines", DST],
        out=ClosedPipe(),
        err=err,
        stdin=io.StringIO("a\n"),
    )
    assert (status, err.getvalue()) == (EXIT_BROKEN_PIPE, "")


class Trickle(io.StringIO):
    """Stdin that gives one line per read, as a slow producer's pipe does."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = list(lines)

    def read(self, size: int | None = -1) -> str:
        return self.lines.pop(0) if self.lines else ""


def test_with_a_key_batches_do_not_depend_on_how_stdin_trickles(
    batches: tuple[FakeNode, Batches],
) -> None:
    # The same input must make the same batches, so that a rerun under the same key
    # is safe: only count, size and the end of input cut them, not an idle stdin.
    fake, taken = batches
    lines = [f"m{i}\n" for i in range(30)]
    result = send_lines(fake, Trickle(lines), "--idempotency-key", "k")
    assert result.status == 0, result.err
    assert [len(batch) for batch in taken.taken] == [30]
    assert send_lines(fake, "".join(lines), "--idempotency-key", "k").status == 0
    assert len(taken.bodies) == 30  # the rerun was a replay


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--lines", DST, "text"], "with --lines the messages come from stdin, one a line"),
        (["--lines", "--wait", DST], "--wait is for one message"),
        (["--lines", "--timeout", "3", DST], "--timeout needs --wait"),
        ([DST, "text", "--json"], "--json is for --lines"),
        ([DST], "say what to send: TEXT, @FILE or - (stdin), or --lines"),
        (["--lines", "nope"], "NODE_ID: a node id is 52 characters of base32, got 4"),
        (
            ["--lines", "--idempotency-key", "k" * 250, DST],
            "with --lines the idempotency key gets ':<batch number>' appended: give at most 244",
        ),
    ],
)
def test_usage_mistakes(batches: tuple[FakeNode, Batches], argv: list[str], words: str) -> None:
    fake, _ = batches
    out, err = io.StringIO(), io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), "send", *argv], out=out, err=err, stdin=io.StringIO()
    )
    assert status == 2
    (line,) = err.getvalue().splitlines()
    assert line.startswith("ptth: usage: ")
    assert words in line
    assert fake.requests == []


def test_no_node_running(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(tmp_path), "send", "--lines", DST],
        out=out,
        err=err,
        stdin=io.StringIO("a\n"),
    )
    assert (status, out.getvalue()) == (1, "")
    assert err.getvalue() == (
        f"ptth: error: no node is running for {tmp_path} "
        f"(start one with 'ptth run --data-dir {tmp_path}')\n"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_progress_while_ids_go_to_a_file(
    batches: tuple[FakeNode, Batches],
) -> None:
    fake, _ = batches
    count = LINES_PER_BATCH * 2 + 5
    err = _Terminal()
    out = io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), "send", "--lines", DST, "--idempotency-key", "k"],
        out=out,
        err=err,
        stdin=io.StringIO("".join(f"{n}\n" for n in range(count))),
    )
    assert status == 0
    assert out.getvalue().splitlines() == ids(1, count)
    shown = re.findall(r"\r([\d,]+) in custody \([\d,]+/s\)", err.getvalue())
    assert shown == [f"{LINES_PER_BATCH:,}", f"{LINES_PER_BATCH * 2:,}", f"{count:,}"]
    assert err.getvalue().endswith("\n")


def test_no_progress_when_the_ids_go_to_the_terminal(batches: tuple[FakeNode, Batches]) -> None:
    fake, _ = batches
    err, out = _Terminal(), _Terminal()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), "send", "--lines", DST],
        out=out,
        err=err,
        stdin=io.StringIO("a\nb\n"),
    )
    assert status == 0
    assert "in custody" not in err.getvalue()
