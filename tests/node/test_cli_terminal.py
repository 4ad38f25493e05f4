"""Terminal safety: what the CLI prints for a human never carries a control character
that came from the network (node/_terminal.py's for_terminal, on every line); --raw
writes bodies exactly, --json as JSON."""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st

import crypto
import node._cli as node_cli
from node import Node
from node._terminal import for_terminal
from tests.helpers import NodeFactory, chain, messages
from tests.node.test_cli_api import STATUS, FakeAnswer, FakeNode, ptth

_ESCAPE = re.compile(r"\\(?:([\\nrt])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")
_NAMED = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def read_back(shown: str) -> str:
    """The text :func:`for_terminal` was given, from what it returned (what a reader
    does in their head); an escape it never writes is an error."""
    out, at = [], 0
    for found in _ESCAPE.finditer(shown):
        assert "\\" not in shown[at : found.start()], shown
        out.append(shown[at : found.start()])
        name, *codes = found.groups()
        out.append(_NAMED[name] if name else chr(int(next(c for c in codes if c), 16)))
        at = found.end()
    assert "\\" not in shown[at:], shown
    out.append(shown[at:])
    return "".join(out)


def unsafe(text: str) -> list[str]:
    """Controls, format characters (bidi), surrogates, line and paragraph separators."""
    return [c for c in text if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}]


#: Any character (lone surrogates too: JSON can carry them), the risky ones often.
_ANY = st.one_of(
    st.characters(exclude_categories=()), st.sampled_from("\\\r\n\t\x1b\x7f\x85\u202e\u2067")
)


@given(st.text(_ANY))
@example("\r\x1b[2K2026-01-01 00:00:00 UTC  from forged: hi")
@example("\x7f\x80\x9b\x85\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
@example("\ufeff\u200b\u200d\u00ad\u2028\u2029\U000e0001\ud800\udfff")
@example("a\\x1b b\\\\ \\u202e")
def test_for_terminal_leaves_no_control_character_and_reads_back(text: str) -> None:
    shown = for_terminal(text)
    assert unsafe(shown) == []
    shown.encode("utf-8")  # even lone surrogates are gone: any terminal can take it
    assert read_back(shown) == text


@given(st.text(st.characters(exclude_categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Cn"])))
@example("Grüße, 日本語, Ελληνικά, עברית, 🙂 and a\u00a0no-break space")
def test_printable_text_is_shown_as_it_is(text: str) -> None:
    assert for_terminal(text) == text.replace("\\", "\\\\")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\rb", "a\\rb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("line\nnext\tcol", "line\\nnext\\tcol"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("C:\\dir", "C:\\\\dir"),
        ("café 🙂", "café 🙂"),
    ],
)
def test_for_terminal_examples(text: str, shown: str) -> None:
    assert for_terminal(text) == shown


# -- the commands --------------------------------------------------------------------------

EVIL = "ok\r\x1b[2K2026-01-01 00:00:00 UTC  from someone-else: \u202etrust me\x07"
EVIL_SHOWN = "ok\\r\\x1b[2K2026-01-01 00:00:00 UTC  from someone-else: \\u202etrust me\\x07"


def no_control_characters(text: str) -> None:
    for line in text.splitlines():
        assert unsafe(line) == [], line


async def cli(node: Node, *argv: str, out: io.TextIOBase) -> tuple[int, str]:
    """Run ``ptth --data-dir DIR argv...`` against the running ``node`` (in a worker
    thread), its stdout into ``out``: the exit status and stderr."""
    err = io.StringIO()
    run = functools.partial(
        node_cli.run,
        ["--data-dir", str(node.data.path), *argv],
        out=out,  # type: ignore[arg-type]
        err=err,
        stdin=io.StringIO(),
    )
    status = await trio.to_thread.run_sync(run)
    return status, err.getvalue()


async def test_inbox_shows_a_forged_line_as_escapes(tcp_nodes: NodeFactory) -> None:
    a, b = await tcp_nodes.open("a"), await tcp_nodes.open("b")
    await chain([a, b])
    bodies = [EVIL.encode(), b"\x00\xffbinary\x1b", b"exact \r\n bytes"]
    for body in bodies:
        await a.send(b.node_id, body)
    with trio.fail_after(20):
        await messages(b, len(bodies))

    # --json leaves nothing raw (and acknowledges, like every inbox run).
    out = io.StringIO()
    assert await cli(b, "inbox", "--json", out=out) == (0, "")
    raw = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["body"] if "body" in m else base64.b64decode(m["body_b64"]) for m in raw] == [
        EVIL,
        bodies[1],
        "exact \r\n bytes",
    ]
    assert out.getvalue().isascii()
    no_control_characters(out.getvalue())

    # The human lines: one per message, escapes for what would act on the terminal.
    for body in bodies:
        await a.send(b.node_id, body)
    with trio.fail_after(20):
        await messages(b, len(bodies))
    out = io.StringIO()
    assert await cli(b, "inbox", out=out) == (0, "")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(f"  from {a.node_id.text}: {EVIL_SHOWN}"), lines
    assert lines[1].endswith(f"  from {a.node_id.text}: [9 bytes of binary]"), lines
    assert lines[2].endswith(f"  from {a.node_id.text}: exact \\r\\n bytes"), lines
    no_control_characters(out.getvalue())

    # --raw: the exact bytes, nothing added.
    for body in bodies[1:]:
        await a.send(b.node_id, body)
    with trio.fail_after(20):
        await messages(b, 2)
    binary = io.BytesIO()
    wrapper = io.TextIOWrapper(binary, encoding="utf-8")
    assert await cli(b, "inbox", "--raw", out=wrapper) == (0, "")
    wrapper.flush()
    assert binary.getvalue() == bodies[1] + bodies[2]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeNode]:
    with FakeNode(tmp_path / "node") as fake_node:
        yield fake_node


def test_json_and_raw_are_one_or_the_other(fake: FakeNode) -> None:
    for argv in (["inbox"], ["subscribe", "t"], ["chirp", "timeline"]):
        result = ptth(fake, *argv, "--json", "--raw")
        assert result.status == 2
        assert "not allowed with argument" in result.err
    assert fake.requests == []


NODE = crypto.Identity.generate().node_id.text
PUBLICATION = {
    "topic": "news",
    "origin": NODE,
    "id": "cd" * 16,
    "ts": 1_700_000_000_000,
    "received": 1_700_000_000_000,
    "hops": 1,
    "ct": "text/plain",
    "body": EVIL,
}
POST = {"author": NODE, "text": EVIL, "ts": 1_700_000_000_000, "id": "ef" * 16, "received": 1}


def test_subscribe_shows_escapes_or_the_exact_bytes(fake: FakeNode) -> None:
    binary = {**PUBLICATION, "ct": "x/\x1b[2J"}
    del binary["body"]
    binary["body_b64"] = base64.b64encode(b"\x1b\xff").decode()
    fake.routes["GET", "subscribe"] = lambda r: FakeAnswer.events(
        ("publication", PUBLICATION), ("publication", binary), ("end", {})
    )
    result = ptth(fake, "subscribe", "news")
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        f"news {NODE[:10]}: {EVIL_SHOWN}",
        f"news {NODE[:10]}: [2 bytes of x/\\x1b[2J]",
    ]
    assert json.loads(ptth(fake, "subscribe", "news", "--json").out.splitlines()[0]) == (
        PUBLICATION
    )
    out = io.BytesIO()
    wrapper = io.TextIOWrapper(out, encoding="utf-8")
    status = node_cli.run(
        ["--data-dir", str(fake.data_dir), "subscribe", "news", "--raw"],
        out=wrapper,
        err=io.StringIO(),
    )
    wrapper.flush()
    assert (status, out.getvalue()) == (0, EVIL.encode() + b"\x1b\xff")


def test_chirp_timeline_shows_escapes_or_the_exact_text(fake: FakeNode) -> None:
    fake.routes["GET", "chirp/timeline"] = lambda r: FakeAnswer.json([POST, POST])
    result = ptth(fake, "chirp", "timeline")
    assert result.status == 0, result.err
    assert result.out.splitlines() == [f"2023-11-14 22:13:20 {NODE[:10]}: {EVIL_SHOWN}"] * 2
    result = ptth(fake, "chirp", "timeline", "--raw")
    assert result.out == EVIL * 2


def test_every_view_of_the_node_escapes_what_came_from_the_network(fake: FakeNode) -> None:
    status = {
        **STATUS,
        "name": "n\x1b]0;title\x07",
        "endpoints": ["http://h\r"],
        "peers": [{"node": NODE, "name": "\u202eeve", "endpoints": ["x\n"], "expired": False}],
        "neighbours": [{"state": "up\x1b[8m"}],
        "attachments": [
            {
                "relay": NODE,
                "endpoint": "http://relay",
                "mode": "upgrade",
                "connections": 1,
                "lease": 60,
                "last_activity": None,
                "last_error": "refused: \x1b[2Jgone",
            }
        ],
    }
    trace = {
        "id": "00" * 16,
        "to": NODE,
        "created": 0,
        "state": "dropped",
        "next_hop": None,
        "first_hop": None,
        "first_accepted": None,
        "receipt_asked": True,
        "receipts": [{"by": NODE, "state": "dropped", "why": "full\r\x1b[1Afake", "at": 0}],
    }
    queue = {
        "next_hop": NODE,
        "frames": 1,
        "bytes": 1,
        "oldest_age": 1.0,
        "link": "down",
        "next_attempt_in": 1.0,
        "last_error": "\x9b31mno",
    }
    route = {"destination": NODE + "\x1b", "next_hop": NODE, "hops": 1, "age": None}
    fake.routes["GET", "status"] = lambda r: FakeAnswer.json(status)
    fake.routes["GET", "trace/" + "00" * 16] = lambda r: FakeAnswer.json(trace)
    fake.routes["GET", "queues"] = lambda r: FakeAnswer.json([queue])
    fake.routes["GET", "routes"] = lambda r: FakeAnswer.json([route])
    for argv, words in [
        (["status"], ["n\\x1b]0;title\\x07", "\\u202eeve", "refused: \\x1b[2Jgone"]),
        (["trace", "00" * 16], ["full\\r\\x1b[1Afake"]),
        (["queues"], ["\\x9b31mno"]),
        (["routes"], [NODE + "\\x1b"]),
    ]:
        result = ptth(fake, *argv)
        assert result.status == 0, (argv, result.err)
        no_control_characters(result.out)
        for shown in words:
            assert shown in result.out, (argv, shown, result.out)
        as_json = ptth(fake, *argv, "--json").out
        assert as_json.isascii()
        no_control_characters(as_json)


def test_the_logs_escape_what_they_quote() -> None:
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(node_cli._TerminalFormatter("%(message)s"))
    record = logging.LogRecord("ptth.node", logging.INFO, "x", 1, "dropped: %s", ("\x1b[2J",), None)
    handler.emit(record)
    assert err.getvalue() == "dropped: \\x1b[2J\n"
