"""`ptth run` as a user runs it: two nodes in two processes, peered by tokens.

This is the README's walk-through: each process is waited on through its own output
(the line that prints its address token), never with sleeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def ptth_exe() -> str:
    exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
    assert exe is not None, "the ptth console script is not installed in this environment"
    return exe


def ptth(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [ptth_exe(), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


class Running:
    def __init__(self, process: subprocess.Popen[str], lines: dict[str, str]) -> None:
        self.process = process
        self.lines = lines


@contextlib.contextmanager
def running_node(data_dir: Path, *options: str) -> Iterator[Running]:
    process = subprocess.Popen(
        [ptth_exe(), "--data-dir", str(data_dir), "run", "--listen", "127.0.0.1:0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: dict[str, str] = {}
        assert process.stdout is not None
        while "address" not in lines:  # the last line it prints once it is serving
            line = process.stdout.readline()
            assert line, f"ptth run ended early: {process.communicate()[1]}"
            key, _, value = line.strip().partition(" ")
            lines[key] = value.strip()
        yield Running(process, lines)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "stopped" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")
def test_two_processes_send_and_receive(tmp_path: Path) -> None:
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    with running_node(alice_dir) as alice, running_node(bob_dir) as bob:
        alice_id, bob_id = alice.lines["node"], bob.lines["node"]
        assert ptth(alice_dir, "id").stdout.strip() == alice_id
        # `ptth address` prints the running node's token.
        assert ptth(alice_dir, "address").stdout.strip() == alice.lines["address"]
        ptth(bob_dir, "peer", "add", alice.lines["address"])
        ptth(alice_dir, "peer", "add", bob.lines["address"])

        sent = ptth(alice_dir, "send", "--wait", "--timeout", "30", bob_id, "hello from alice")
        custody, delivery = sent.stdout.splitlines()
        assert re.fullmatch(rf"id [0-9a-f]{{32}}  in custody, next hop {bob_id[:10]}", custody)
        assert re.fullmatch(rf"delivered to {bob_id[:10]} after 1 hops in \d+ ms", delivery)

        inbox = ptth(bob_dir, "inbox").stdout.splitlines()
        assert len(inbox) == 1
        assert inbox[0].endswith(f"from {alice_id}: hello from alice")
        assert ptth(bob_dir, "inbox").stdout == ""  # shown once

        status = ptth(bob_dir, "status").stdout
        assert f"node      {bob_id}" in status
        assert "inbox     0 messages, 0 B" in status
        assert "\npeers: 1\n" in status
        assert re.search(r"^  frames_accepted +[1-9]", status, re.M)
        assert re.search(r"^  frames_rejected +0 ", status, re.M)

        routes = ptth(alice_dir, "routes").stdout.splitlines()
        assert [line.split()[:3] for line in routes[1:]] == [[bob_id[:10], bob_id[:10], "1"]]

        # A node nobody knows: held in custody, not an error.
        unknown = ptth(alice_dir, "send", "a" * 52, "x")
        assert unknown.stdout.endswith("  in custody, held: no route yet\n")

        again = subprocess.run(
            [ptth_exe(), "--data-dir", str(alice_dir), "run", "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert again.stderr.strip().endswith(f"a node is already running for {alice_dir}")

    stopped = ptth(bob_dir, "status", check=False)
    assert stopped.returncode == 1
    assert stopped.stderr.strip() == (
        f"ptth: error: no node is running for {bob_dir} "
        f"(start one with 'ptth run --data-dir {bob_dir}')"
    )


@pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")
def test_forward_off_refuses_transit(tmp_path: Path) -> None:
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with (
        running_node(a_dir) as a,
        running_node(b_dir, "--forward", "off", "--announce-interval", "1h") as b,
        running_node(c_dir, "--forward", "open", "--announce-interval", "10m") as c,
    ):
        ptth(a_dir, "peer", "add", b.lines["address"])
        ptth(b_dir, "peer", "add", a.lines["address"])
        ptth(b_dir, "peer", "add", c.lines["address"])
        ptth(c_dir, "peer", "add", b.lines["address"])
        # b passes announces on (c's reaches a), but no frames: a's frame for c is refused.
        refused = ptth(
            a_dir, "send", "--wait", "--timeout", "30", c.lines["node"], "for c", check=False
        )
        assert refused.returncode == 1, refused.stderr
        b_short = b.lines["node"][:10]
        assert refused.stderr == (
            f"ptth: error: dropped by {b_short}: policy: refused by {b_short}: "
            "this node does not forward frames for others\n"
        )


def test_listen_address_in_use(tmp_path: Path) -> None:
    with running_node(tmp_path / "a") as a:
        port = a.lines["endpoint"].rsplit(":", 1)[1]
        clash = ptth(tmp_path / "b", "run", "--listen", f"127.0.0.1:{port}", check=False)
        assert clash.returncode == 1
        assert (
            clash.stderr.strip()
            .splitlines()[-1]
            .startswith(f"ptth: error: cannot listen on 127.0.0.1:{port} (--listen):")
        )


def test_bad_listen_and_public_url(tmp_path: Path) -> None:
    bad = ptth(tmp_path / "a", "run", "--listen", "nonsense", check=False)
    assert bad.returncode == 2  # a usage mistake
    assert "is not HOST:PORT" in bad.stderr
    bad = ptth(tmp_path / "a", "run", "--public-url", "ftp://x", check=False)
    assert bad.returncode == 2
    assert "must use http or https" in bad.stderr
