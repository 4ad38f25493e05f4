"""The ptth CLI: init, id, address, peer add/list/remove, and its one-line errors."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import crypto
from node._cli import parse_duration, run


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
