"""The CLI's exit statuses and one-line errors: a damaged store, the errors of every
layer (alone or in trio's exception groups), usage mistakes caught while parsing,
stdout closed early, --version, and what -v logs."""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import crypto
import mesh
import node._cli as node_cli
from node._cli import Cli
from node._errors import NodeError
from tests.node.test_cli_api import FakeAnswer, FakeNode


class Result:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


def ptth(*argv: str | Path) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = node_cli.run([str(a) for a in argv], out=out, err=err, stdin=io.StringIO())
    assert "Traceback" not in err.getvalue()
    return Result(status, out.getvalue(), err.getvalue())


def one_line(result: Result, status: int) -> str:
    assert result.status == status, (result.out, result.err)
    (line,) = result.err.splitlines()
    return line


def ptth_exe() -> str:
    exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
    assert exe is not None, "the ptth console script is not installed in this environment"
    return exe


# -- the store ------------------------------------------------------------------------------


def test_a_damaged_store_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    assert ptth("--data-dir", tmp_path, "init").status == 0
    store = tmp_path / "store.sqlite3"
    store.write_bytes(b"this is no SQLite database, it is what is left of one" * 100)
    line = one_line(ptth("--data-dir", tmp_path, "run", "--listen", "127.0.0.1:0"), 1)
    assert line == (
        f"ptth: error: store {store} is damaged: file is not a database; move it aside "
        f"(mv {store} {store}.damaged) and run again: the node starts with an empty store "
        "(what the old one held stays in the file)"
    )


def test_a_store_of_a_newer_ptth_is_its_own_words(tmp_path: Path) -> None:
    assert ptth("--data-dir", tmp_path, "init").status == 0
    store = tmp_path / "store.sqlite3"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', 999)")
    db.close()
    line = one_line(ptth("--data-dir", tmp_path, "run", "--listen", "127.0.0.1:0"), 1)
    assert line.startswith(f"ptth: error: store {store} has schema 999; this ptth reads up to ")
    assert line.endswith("run that ptth, or move the file away to start afresh")


# -- every layer's errors, alone or grouped --------------------------------------------------


def _raises(exc: BaseException) -> Callable[[Cli], None]:
    def handler(cli: Cli) -> None:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "line", "status"),
    [
        (NodeError("node words"), "ptth: error: node words", 1),
        (mesh.StoreFull("store full: retry later"), "ptth: error: store full: retry later", 1),
        (crypto.Malformed("bad token"), "ptth: error: bad token", 1),
        (
            PermissionError(13, "Permission denied", "/data/identity.key"),
            "ptth: error: Permission denied: /data/identity.key",
            1,
        ),
        (
            BaseExceptionGroup("", [trio.Cancelled._create(), mesh.MeshError("in a group")]),
            "ptth: error: in a group",
            1,
        ),
        (
            ExceptionGroup("", [ExceptionGroup("", [OSError(28, "No space left on device")])]),
            "ptth: error: No space left on device",
            1,
        ),
        (BaseExceptionGroup("", [KeyboardInterrupt()]), "ptth: interrupted", 130),
        (node_cli.UsageError("wrong"), "ptth: usage: wrong", 2),
        (NodeError("\x1b[2Jquoted\r"), "ptth: error: \\x1b[2Jquoted\\r", 1),
    ],
)
def test_errors_of_every_layer_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    line: str,
    status: int,
) -> None:
    monkeypatch.setattr(Cli, "cmd_id", _raises(exc))
    assert one_line(ptth("--data-dir", tmp_path, "id"), status) == line


@pytest.mark.parametrize(
    "exc",
    [KeyError("a bug"), ExceptionGroup("", [NodeError("known"), ZeroDivisionError("bug")])],
)
def test_a_bug_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    monkeypatch.setattr(Cli, "cmd_id", _raises(exc))
    with pytest.raises(type(exc)):
        node_cli.run(["--data-dir", str(tmp_path), "id"], out=io.StringIO(), err=io.StringIO())


def test_a_data_directory_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ptth("--data-dir", tmp_path, "init").status == 0
    real_open = os.open

    def denied(path: str | os.PathLike[str], *args: int, **kwargs: int) -> int:
        if str(path).endswith("identity.key"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", denied)
        for command in (["id"], ["run", "--listen", "127.0.0.1:0"], ["address"]):
            line = one_line(ptth("--data-dir", tmp_path, *command), 1)
            assert line == (
                f"ptth: error: cannot read key file {tmp_path / 'identity.key'}: Permission denied"
            )
        fresh = tmp_path / "fresh"
        for command in (["init"], ["run", "--listen", "127.0.0.1:0"]):
            line = one_line(ptth("--data-dir", fresh, *command), 1)
            assert line == (
                f"ptth: error: cannot create key file {fresh / 'identity.key'}: Permission denied"
            )


def test_a_data_directory_that_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ptth("--data-dir", tmp_path, "init").status == 0

    def denied(*args: object, dir: object = None, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(dir))

    token = crypto.sign_address(
        crypto.Identity.generate(), endpoints=["http://h"], seq=1, exp=2**42
    ).token
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    line = one_line(ptth("--data-dir", tmp_path, "address", "--endpoint", "http://h"), 1)
    assert line == f"ptth: error: Permission denied: {tmp_path}"
    line = one_line(ptth("--data-dir", tmp_path, "peer", "add", token), 1)
    assert line == f"ptth: error: Permission denied: {tmp_path / 'peers'}"


# -- usage mistakes: exit 2 before anything starts -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--listen", "127.0.0.1:99999"], "argument --listen: '127.0.0.1:99999' is not HOST:PORT"),
        (["--listen", "nohost"], "argument --listen: 'nohost' is not HOST:PORT"),
        (["--listen", ":8470"], "argument --listen: ':8470' is not HOST:PORT"),
        (["--listen", "h:port"], "argument --listen: 'h:port' is not HOST:PORT"),
        (["--listen", "[::1:80"], "argument --listen: '[::1:80' is not HOST:PORT"),
        (["--public-url", "notaurl"], "argument --public-url: endpoint 'notaurl' must use http"),
        (["--public-url", "ftp://h"], "argument --public-url: endpoint 'ftp://h' must use http"),
        (["--public-url", "http://"], "argument --public-url: endpoint 'http://' has no host"),
        (
            ["--public-url", "http://h:99999"],
            "argument --public-url: endpoint 'http://h:99999' is not",
        ),
        (["--admission", "all"], "argument --admission: invalid choice: 'all'"),
        (["--inbox", "friends"], "argument --inbox: invalid choice: 'friends'"),
    ],
)
def test_run_usage_mistakes_exit_2_before_anything_starts(
    tmp_path: Path, argv: list[str], words: str
) -> None:
    line = one_line(ptth("--data-dir", tmp_path / "d", "run", *argv), 2)
    assert line.startswith(f"ptth run: usage: {words}"), line
    assert line.endswith(" (see 'ptth run --help')")
    assert not (tmp_path / "d").exists()  # nothing started, nothing created


def test_run_options_that_parse(tmp_path: Path) -> None:
    parser = node_cli.build_parser()
    args = parser.parse_args(
        [
            "run",
            "--listen",
            "[::1]:0",
            "--public-url",
            "https://example.org:8443/ptth",
            "--admission",
            "open",
            "--inbox",
            "allow-list",
        ]
    )
    assert (args.listen, args.public_url) == ("[::1]:0", "https://example.org:8443/ptth")
    assert (args.admission, args.inbox_policy) == ("open", "allow-list")
    args = parser.parse_args(["run"])
    assert (args.listen, args.public_url, args.admission, args.inbox_policy) == (
        "127.0.0.1:8470",
        None,
        "neighbours",
        "anyone",
    )


def test_version() -> None:
    result = ptth("--version")
    assert (result.status, result.err) == (0, "")
    assert result.out == f"ptth {importlib.metadata.version('ptth')}\n"
    assert result.out == "ptth 0.1.0\n"


# -- stdout closed early ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["id"], ["peer", "list"]])
def test_a_closed_stdout_ends_quietly(tmp_path: Path, argv: list[str]) -> None:
    assert ptth("--data-dir", tmp_path, "init").status == 0
    for _ in range(50):  # enough lines for peer list not to fit a pipe's buffer
        identity = crypto.Identity.generate()
        token = crypto.sign_address(
            identity, endpoints=["http://127.0.0.1:1"], seq=1, exp=2**42
        ).token
        assert ptth("--data-dir", tmp_path, "peer", "add", token).status == 0
    read, write = os.pipe()
    os.close(read)  # whoever reads has gone (as `| head -1` has, after one line)
    try:
        done = subprocess.run(
            [ptth_exe(), "--data-dir", str(tmp_path), *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write)
    assert done.stderr == b""  # no "Broken pipe", no traceback
    # argparse swallows the error of writing --help itself: that one ends with 0.
    assert done.returncode == (0 if argv == ["--help"] else node_cli.EXIT_BROKEN_PIPE)


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_whose_reader_goes_ends_quietly(tmp_path: Path) -> None:
    with FakeNode(tmp_path / "n") as fake:
        fake.routes["GET", "inbox"] = lambda r: FakeAnswer.events(
            ("message", {"id": "00", "src": "x", "received": 0, "body": "hi", "ct": None})
        )
        err = io.StringIO()
        status = node_cli.run(
            ["--data-dir", str(fake.data_dir), "inbox", "--follow"], out=ClosedPipe(), err=err
        )
    assert (status, err.getvalue()) == (node_cli.EXIT_BROKEN_PIPE, "")
    assert [r.path for r in fake.requests] == ["inbox"]  # not acknowledged: not printed


# -- what -v logs ---------------------------------------------------------------------------


async def run_node_briefly(data_dir: Path, *verbose: str) -> str:
    """``ptth run`` until it has printed its address, then Ctrl-C: what it logged."""
    process = await trio.lowlevel.open_process(
        [ptth_exe(), "--data-dir", str(data_dir), "run", "--listen", "127.0.0.1:0", *verbose],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"address  ptth:" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"ptth run ended early: {output!r}"
                output += chunk
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
        errors = b""
        while chunk := await process.stderr.receive_some():
            errors += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return errors.decode()


async def test_verbose_logs_what_it_says(tmp_path: Path) -> None:
    quiet = await run_node_briefly(tmp_path / "quiet")
    assert "running; Ctrl-C to stop" in quiet
    assert "stopped" in quiet
    assert "signed address record" not in quiet  # the node's info: -v
    info = await run_node_briefly(tmp_path / "info", "-v")
    assert "signed address record seq 1: http://127.0.0.1:" in info
    assert "NodeConfig(" not in info  # debug: -vv
    debug = await run_node_briefly(tmp_path / "debug", "-vv")
    assert "signed address record seq 1: http://127.0.0.1:" in debug
    assert "NodeConfig(listen='127.0.0.1:0'" in debug
    assert "local API at http://127.0.0.1:" in debug


def test_verbose_shows_the_cli_s_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_cli, "API_RETRY_FOR", 0.2)
    dst = crypto.Identity.generate().node_id.text
    with FakeNode(tmp_path / "n") as fake:
        fake.routes["POST", "send"] = lambda r: None
        quiet = ptth("--data-dir", fake.data_dir, "send", dst, "x")
        loud = ptth("--data-dir", fake.data_dir, "-v", "send", dst, "x")
    assert len(quiet.err.splitlines()) == 1
    *notes, last = loud.err.splitlines()
    assert notes
    assert all("trying again in" in note and "same Idempotency-Key" in note for note in notes)
    assert last.startswith("ptth: error: no answer from the node's local API")
