"""A relay that requires a capability to attach, in real processes (``ptth run``).

``ptth run --require-cap attach`` on the relay; a node without ``--cap`` is refused
(its log and ``ptth status`` say why, in the relay's words), a node given the token of
``ptth cap grant --to NODE --op attach`` by the relay attaches and is reached through
it (``ptth send --wait``). Each process is waited on through its own output, never
with sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.test_run import ptth, ptth_exe, running_node


@contextlib.contextmanager
def logging_node(data_dir: Path, *options: str, wait_for: str) -> Iterator[str]:
    """``ptth run``; yield the first line of its log that holds ``wait_for``."""
    process = subprocess.Popen(
        [ptth_exe(), "--data-dir", str(data_dir), "run", "--listen", "127.0.0.1:0",
         *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        while True:
            line = process.stderr.readline()
            assert line, f"ptth run ended before logging {wait_for!r}"
            if wait_for in line:
                break
        yield line.strip()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")
def test_a_relay_that_requires_a_capability_to_attach(tmp_path: Path) -> None:
    relay_dir, sender_dir = tmp_path / "relay", tmp_path / "sender"
    holder_dir, stranger_dir = tmp_path / "holder", tmp_path / "stranger"
    for data_dir in (holder_dir, stranger_dir):
        ptth(data_dir, "init")
    holder_id = ptth(holder_dir, "id").stdout.strip()
    with running_node(relay_dir, "--relay-policy", "open", "--require-cap", "attach") as relay:
        relay_id = relay.lines["node"]
        token_file = tmp_path / "relay.token"
        token_file.write_text(relay.lines["address"])
        words = (
            f"attaching to this relay needs a capability from {relay_id} "
            f"(attach on the relay of {relay_id}); none was presented"
        )

        # Without a capability: refused, and its log (a warning: shown without -v) and
        # its status say why.
        with logging_node(
            stranger_dir, "--relay", f"@{token_file}", wait_for="refused the attach"
        ) as line:
            assert line.endswith(f"refused the attach: 403 relay: {words}"), line
            status = json.loads(ptth(stranger_dir, "status", "--json").stdout)
            (attachment,) = status["attachments"]
            assert attachment["connections"] == 0
            assert attachment["last_error"].endswith(f"refused the attach: 403 relay: {words}")

        # With the relay's capability: attached, and reached through the relay.
        cap = ptth(relay_dir, "cap", "grant", "--to", holder_id, "--op", "attach").stdout.strip()
        with (
            logging_node(
                holder_dir, "--relay", f"@{token_file}", "--cap", cap, "-v",
                wait_for="attached to relay",
            ) as line,
            running_node(sender_dir) as sender,
        ):  # fmt: skip
            assert f"attached to relay {relay_id[:10]} (upgrade)" in line, line
            holder_token = ptth(holder_dir, "address").stdout.strip()
            ptth(sender_dir, "peer", "add", holder_token)
            ptth(holder_dir, "peer", "add", sender.lines["address"])
            sent = ptth(sender_dir, "send", "--wait", "--timeout", "30", holder_id, "hello")
            custody, delivery = sent.stdout.splitlines()
            assert custody.endswith(f"in custody, next hop {holder_id[:10]}"), custody
            assert re.fullmatch(rf"delivered to {holder_id[:10]} after 1 hops in \d+ ms", delivery)
            assert ptth(holder_dir, "inbox").stdout.strip().endswith(": hello")
            # It came through the relay: the relay served a request for the holder.
            relaying = json.loads(ptth(relay_dir, "status", "--json").stdout)["relaying"]
            (entry,) = relaying
            assert entry["node"] == holder_id
            assert entry["requests"] >= 1
