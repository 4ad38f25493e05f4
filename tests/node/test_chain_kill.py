"""Custody survives SIGKILL: a chain of five `ptth run` processes, the middle one killed
and restarted three times while a stream of messages crosses it.

n0 - n1 - n2 - n3 - n4, each peered only with its neighbours (`ptth peer add`, which
also tells the running node through its local API). n0's application sends a steady
stream to n4 through n0's local API, asking for receipts; meanwhile n2 is killed with
SIGKILL and restarted (same data directory, same port) three times. Every message whose
send was answered 200 (in n0's custody) must reach n4's application exactly once, and
its receipt must come back to n0.

Every wait is on a condition (a process's output, a node's API) with one overall
deadline; nothing sleeps to synchronise.

Also here: a node that comes back without the routes it had (killed before it saved
them) must get them from its neighbours at once, not at their next periodic announce.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from node import _cli as cli
from node._apiclient import ApiClient
from node._mesh import ROUTES_SAVE_DELAY
from tests.helpers import NodeFactory, peer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")

#: Messages in the stream.
MESSAGES = 300
#: The stream position (messages answered) at which n2 is killed, and restarted.
KILLS = (40, 120, 200)
RESTARTS = (70, 150, 230)
#: Everything (start-up, stream, delivery) must happen within this (s).
DEADLINE = 55.0
#: How often a condition on a process is checked (s).
POLL = 0.02

_T = TypeVar("_T")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def wait_for(self, what: str, condition: Callable[[], _T | None]) -> _T:
        """Poll ``condition`` until it returns a true value; fail at the deadline."""
        while True:
            value = condition()
            if value:
                return value
            if self.left() <= 0:
                pytest.fail(f"gave up waiting for {what}")
            time.sleep(POLL)


class Proc:
    """One incarnation of `ptth run` for a data directory (stderr goes to a log file)."""

    def __init__(
        self, data_dir: Path, listen: str, log: Path, deadline: Deadline, *options: str
    ) -> None:
        self.data_dir = data_dir
        self.log = log
        command = [sys.executable, "-m", "node", "--data-dir", str(data_dir), "run"]
        with log.open("ab") as log_file:  # the child has its own copy of the descriptor
            self.process = subprocess.Popen(
                [*command, "--listen", listen, *options],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        self.deadline = deadline
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._info: dict[str, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _take(self, timeout: float) -> bool:
        """Take one line of output, if one comes within ``timeout``; False if none."""
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if line is None:
            self.process.wait()
            pytest.fail(f"ptth run for {self.data_dir} ended early:\n{self.tail()}")
        key, _, value = line.strip().partition(" ")
        self._info[key] = value.strip()
        return True

    def ready(self) -> bool:
        """Has it printed its address token (its last line once it is serving)?"""
        while "address" not in self._info:
            if not self._take(0):
                return False
        return True

    def wait_ready(self) -> dict[str, str]:
        while "address" not in self._info:
            if not self._take(self.deadline.left()):
                pytest.fail(f"ptth run for {self.data_dir} did not start:\n{self.tail()}")
        return self._info

    def api(self) -> ApiClient:
        """A client of this incarnation's local API (its URL and token are fresh)."""
        self.wait_ready()
        return ApiClient(self.data_dir, timeout=10.0)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def _reap(self) -> None:
        self.process.wait()
        self._reader.join(timeout=10)  # it ends at the end of the output
        assert self.process.stdout is not None
        self.process.stdout.close()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def ptth(data_dir: Path, *args: str) -> str:
    """Run a `ptth` command (the CLI's own code, in this process: quicker than a new
    interpreter per command; a running node is told through its local API as usual)."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.run(["--data-dir", str(data_dir), *args], out=out, err=err)
    assert status == 0, err.getvalue()
    return out.getvalue()


def inbox(api: ApiClient) -> list[str]:
    """The bodies in the inbox (not acknowledged: each read sees them all)."""
    return [message["body"] for message in api.inbox(follow=False)]


def queued_frames(api: ApiClient) -> int:
    return sum(int(row["frames"]) for row in api.queues())


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list to put processes in; every one still running at the end is stopped."""
    spawned: list[Proc] = []
    try:
        yield spawned
    finally:
        for proc in spawned:
            proc.stop()


def has_route(routes: list[dict[str, Any]], dst: str) -> bool:
    return any(route["destination"] == dst for route in routes)


def test_middle_node_killed_three_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    deadline = Deadline(DEADLINE)
    with processes() as spawned, contextlib.ExitStack() as clients:
        procs = [
            Proc(tmp_path / f"n{i}", "127.0.0.1:0", tmp_path / f"n{i}.log", deadline)
            for i in range(5)
        ]
        spawned += procs
        info = [proc.wait_ready() for proc in procs]
        ids = [i["node"] for i in info]
        n2_port = info[2]["endpoint"].rsplit(":", 1)[1]
        for left, right in zip(range(4), range(1, 5), strict=True):
            ptth(procs[left].data_dir, "peer", "add", info[right]["address"])
            ptth(procs[right].data_dir, "peer", "add", info[left]["address"])
        first = clients.enter_context(procs[0].api())
        last = clients.enter_context(procs[4].api())
        deadline.wait_for("n0 to learn a route to n4", lambda: has_route(first.routes(), ids[4]))

        middle = procs[2]
        incarnations = [middle]

        def restart() -> None:
            nonlocal middle
            middle = Proc(middle.data_dir, f"127.0.0.1:{n2_port}", tmp_path / "n2.log", deadline)
            incarnations.append(middle)
            spawned.append(middle)

        def carrying() -> bool:
            """n2 is serving and has handed frames on since it (re)started."""
            if not middle.ready():
                return False
            with middle.api() as api:
                return int(api.status()["counters"]["frames_forwarded"]) > 0

        sent: dict[str, str] = {}  # body -> frame id, for every send answered 200
        for i in range(MESSAGES):
            if i in KILLS:
                deadline.wait_for("n2 to carry traffic", carrying)
                middle.kill()
            elif i in RESTARTS:
                restart()  # not waited for: the stream goes on while n2 boots
            body = f"message {i:04d}"
            response = first.client.post(
                "send", params={"to": ids[4], "receipt": "1"}, content=body.encode()
            )
            assert response.status_code == 200, response.text
            sent[body] = response.json()["id"]
        assert len(sent) == MESSAGES

        def all_delivered() -> list[str] | None:
            bodies = inbox(last)
            return bodies if set(bodies) >= set(sent) else None

        deadline.wait_for("every message to reach n4", all_delivered)

        # Every receipt comes back across the restarts: n0's trace says delivered.
        waiting = dict(sent)

        def receipts_back() -> bool:
            for body, frame_id in list(waiting.items()):
                if first.trace(frame_id)["state"] != "delivered":
                    return False
                del waiting[body]
            return True

        deadline.wait_for("every delivery receipt to reach n0", receipts_back)

        # Then wait until nothing is in flight anywhere (a frame leaves a queue only
        # once the next hop has answered), so a late duplicate would be in n4's inbox.
        apis = [
            first,
            *(clients.enter_context(p.api()) for p in (procs[1], middle, procs[3])),
            last,
        ]
        quiet_checks = 0

        def quiet() -> bool:
            nonlocal quiet_checks
            empty = all(queued_frames(api) == 0 for api in apis)
            quiet_checks = quiet_checks + 1 if empty else 0
            return quiet_checks >= 2  # twice in a row: nothing moved between two looks

        deadline.wait_for("every queue to drain", quiet)
        bodies = inbox(last)
        duplicates = {body: n for body, n in Counter(bodies).items() if n > 1}
        assert not duplicates, f"delivered more than once: {duplicates}"
        assert set(bodies) == set(sent), f"lost: {sorted(set(sent) - set(bodies))[:10]}"
        assert last.status()["inbox"]["frames"] == MESSAGES
        assert [p.process.returncode for p in incarnations[:-1]] == [-signal.SIGKILL] * 3


async def test_a_node_back_without_its_routes_is_answered_with_routes(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """A node killed within ROUTES_SAVE_DELAY of learning its routes comes back without
    them, and says hello to its neighbours: they must answer with their routes soon
    (here within 60 s), not only at their next periodic announce (up to 1.25 x the
    announce interval, 10 min by default, later). Its frames are held until then."""
    relay = await memory_nodes.open("r")
    other = await memory_nodes.open("h")
    await peer(relay, other)
    async with memory_nodes.session("d") as node:
        await peer(relay, node)
        with trio.fail_after(60):
            while not has_route(node.routes(), other.node_id.text):  # noqa: ASYNC110 - no event
                await trio.sleep(0.05)
    # What a SIGKILL a moment after learning them leaves: no saved routes.
    db = sqlite3.connect(memory_nodes.tmp_path / "d" / "store.sqlite3")
    try:
        with db:
            assert db.execute("DELETE FROM routes").rowcount > 0
    finally:
        db.close()
    async with memory_nodes.session("d") as node:
        sent = await node.send(other.node_id, b"after the crash", receipt=True)
        with trio.fail_after(60):
            trace = await node.delivered(sent.id)
        assert trace.state == "delivered", trace


async def test_a_node_stopped_right_after_learning_routes_has_saved_them(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """The routing table is saved a second after it changes, and at a graceful stop
    within that second too: the node starts again with the routes it had."""
    relay = await memory_nodes.open("r")
    other = await memory_nodes.open("h")
    await peer(relay, other)
    async with memory_nodes.session("d") as node:
        await peer(relay, node)
        with trio.fail_after(60):
            while not has_route(node.routes(), other.node_id.text):  # noqa: ASYNC110 - no event
                await trio.sleep(0.05)
        learned = trio.current_time()
    assert trio.current_time() - learned < ROUTES_SAVE_DELAY
    db = sqlite3.connect(memory_nodes.tmp_path / "d" / "store.sqlite3")
    try:
        saved = {row[0] for row in db.execute("SELECT dst FROM routes")}
    finally:
        db.close()
    assert other.node_id.raw in saved
