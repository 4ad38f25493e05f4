"""A durable subscription across a chain of real `ptth run` processes, through a SIGKILL.

n0 - n1 - n2, each peered only with its neighbours (`ptth peer add` both ways). n2's
application holds the durable subscription ``feed`` to ``news.#`` with `ptth subscribe
--name feed --json` (its own process, which acknowledges each publication once printed).
n0 publishes with `ptth publish`, matching (``news.x``) and not (``sport.y``):

* every matching one reaches n2's application exactly once; the others never cross n1
  (n1's counters: it received the matching ones only, and handed each on once);
* n2 is killed with SIGKILL; n0 publishes more, which wait in n1's queue for n2;
* n2 comes back (same data directory, same port) and its ``feed`` streams exactly those
  published meanwhile: what was printed before the kill was acknowledged, so it is not
  printed again, and nothing is lost or doubled.

Every wait is on a condition (a process's output, a node's API) with one overall
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node._apiclient import ApiClient
from tests.node.test_chain_kill import Deadline, Proc, processes, ptth

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")

#: Matching (and as many non-matching) publications before the kill, and while n2 is down.
BEFORE = 5
MEANWHILE = 5
#: Everything (start-up, publications, the kill, the restart) must happen within this (s).
DEADLINE = 40.0


class Feed:
    """`ptth subscribe news.# --name feed --json` for a data directory, in its own process:
    each line it prints is a publication (already acknowledged, or about to be)."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        deadline: Deadline,
        arguments: tuple[str, ...] = ("news.#", "--name", "feed"),
    ) -> None:
        command = [sys.executable, "-m", "node", "--data-dir", str(data_dir), "subscribe"]
        self.log = log
        with log.open("ab") as log_file:
            self.process = subprocess.Popen(
                [*command, *arguments, "--json"],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        self.deadline = deadline
        self.got: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _take(self, timeout: float) -> bool:
        """Take one printed publication, if one comes within ``timeout``; False if none
        (or the output ended)."""
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if line is None:
            self._lines.put(None)  # it stays ended
            return False
        self.got.append(json.loads(line))
        return True

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Every publication printed so far, once there are ``count``."""
        while len(self.got) < count:
            if not self._take(self.deadline.left()):
                pytest.fail(
                    f"ptth subscribe printed {len(self.got)} publications, not {count}:\n"
                    f"{self.log.read_text(errors='replace')}"
                )
        return self.got

    def interrupt(self) -> list[dict[str, Any]]:
        """Ctrl-C; it must exit 0. Everything it printed."""
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=max(self.deadline.left(), 1)) == 0, self.log.read_text()
        self._reader.join(timeout=10)
        while self._take(0):
            pass
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.got

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def feed(data_dir: Path, log: Path, deadline: Deadline) -> Iterator[Feed]:
    subscriber = Feed(data_dir, log, deadline)
    try:
        yield subscriber
    finally:
        subscriber.stop()


def queued_for(api: ApiClient, hop: str) -> int:
    return sum(int(row["frames"]) for row in api.queues() if row["next_hop"] == hop)


def publish(data_dir: Path, topic: str, body: str) -> str:
    """`ptth publish`; the frame id it prints."""
    return ptth(data_dir, "publish", topic, body).strip()


def test_a_durable_subscription_across_a_chain_and_a_kill(tmp_path: Path) -> None:
    deadline = Deadline(DEADLINE)
    with processes() as spawned, contextlib.ExitStack() as stack:
        procs = [
            Proc(tmp_path / f"n{i}", "127.0.0.1:0", tmp_path / f"n{i}.log", deadline)
            for i in range(3)
        ]
        spawned += procs
        info = [proc.wait_ready() for proc in procs]
        ids = [i["node"] for i in info]
        n2_port = info[2]["endpoint"].rsplit(":", 1)[1]
        for left, right in ((0, 1), (1, 2)):
            ptth(procs[left].data_dir, "peer", "add", info[right]["address"])
            ptth(procs[right].data_dir, "peer", "add", info[left]["address"])
        n0 = stack.enter_context(procs[0].api())
        n1 = stack.enter_context(procs[1].api())
        n2 = stack.enter_context(procs[2].api())

        subscriber = stack.enter_context(feed(procs[2].data_dir, tmp_path / "feed1.log", deadline))

        def interest_at_n0() -> str | None:
            """A probe goes toward n2 once n0 knows of its interest (one that goes
            nowhere is not kept: it never arrives)."""
            answer = n0.publish("news.probe", b"probe", None)
            return str(answer["id"]) if answer["next_hops"] == [ids[1]] else None

        probe = deadline.wait_for("n2's interest to reach n0", interest_at_n0)
        matching = [probe]
        for i in range(BEFORE):
            publish(procs[0].data_dir, "sport.y", f"sport {i}")
            matching.append(publish(procs[0].data_dir, "news.x", f"news {i}"))
        got = subscriber.wait_for(len(matching))
        assert [p["id"] for p in got] == matching  # in order, each once
        assert [p["body"] for p in got[1:]] == [f"news {i}" for i in range(BEFORE)]
        assert {(p["origin"], p["hops"]) for p in got} == {(ids[0], 2)}
        # Printed and acknowledged: nothing is pending at n2 any more.
        deadline.wait_for("n2 to hold nothing", lambda: n2.status()["inbox"]["frames"] == 0)
        counters = n1.status()["counters"]
        assert counters["publications_received"] == len(matching)  # no sport.y crossed n1
        assert counters["publications_forwarded"] == len(matching)
        assert n0.status()["counters"]["publications_forwarded"] == len(matching)
        assert subscriber.interrupt() == got

        n2.close()
        procs[2].kill()
        meanwhile = []
        for i in range(MEANWHILE):
            meanwhile.append(publish(procs[0].data_dir, "news.x", f"meanwhile {i}"))
            publish(procs[0].data_dir, "sport.y", f"sport meanwhile {i}")
        deadline.wait_for(
            "n1 to hold the publications for n2",
            lambda: queued_for(n1, ids[2]) == MEANWHILE,
        )

        back = Proc(procs[2].data_dir, f"127.0.0.1:{n2_port}", tmp_path / "n2.log", deadline)
        spawned.append(back)
        assert back.wait_ready()["node"] == ids[2]
        n2 = stack.enter_context(back.api())
        subscriber = stack.enter_context(feed(back.data_dir, tmp_path / "feed2.log", deadline))
        got = subscriber.wait_for(MEANWHILE)
        assert [p["id"] for p in got] == meanwhile
        assert [p["body"] for p in got] == [f"meanwhile {i}" for i in range(MEANWHILE)]

        # Then nothing more comes: n1 holds nothing for n2, and n2 nothing unprinted.
        quiet_checks = 0

        def quiet() -> bool:
            nonlocal quiet_checks
            empty = queued_for(n1, ids[2]) == 0 and n2.status()["inbox"]["frames"] == 0
            quiet_checks = quiet_checks + 1 if empty else 0
            return quiet_checks >= 2  # twice in a row: nothing moved between two looks

        deadline.wait_for("n1's queue for n2 to drain", quiet)
        printed = subscriber.interrupt()
        assert not {i: n for i, n in Counter(p["id"] for p in printed).items() if n > 1}
        assert [p["id"] for p in printed] == meanwhile
        counters = n1.status()["counters"]
        assert counters["publications_received"] == len(matching) + MEANWHILE
        assert counters["publications_forwarded"] == len(matching) + MEANWHILE
        assert procs[2].process.returncode == -signal.SIGKILL
