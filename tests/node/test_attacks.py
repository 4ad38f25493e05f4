"""Attacks on a real `ptth run`, as a hostile stranger on the same machine would make
them, each followed by honest traffic that must flow.

* An upload storm: 200 parallel POSTs of 16 MiB to ``/ptth/v1/frames``, unsigned and
  signed by strangers. Each is refused from its head (401, 403) before its body is read,
  so the node's peak RSS (``VmHWM``, printed for the record) stays far below the storm's
  3.2 GiB; then a peer's message is delivered.
* A connection flood: 600 idle or header-trickling connections from one address
  (127.0.0.2). The per-address cap refuses most; ``ptth status`` (on the operator's own
  Unix socket) answers, and a peer's message is delivered.
* A client that loses its connection (the node killed with SIGKILL while the send was
  in flight): retried with the same ``Idempotency-Key`` against the restarted node, it
  gets the first result, and the destination holds the message once.

Every wait is on a condition with one overall deadline; nothing sleeps to synchronise.
The memory figure is asserted against a bound (not a time), and printed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crypto
import mesh
from node._apiclient import ApiClient
from node._fabric import sign_request
from node._forwarder import FRAMES_PATH
from tests.node.test_chain_kill import Deadline, Proc, inbox, processes, ptth

pytestmark = pytest.mark.skipif(
    os.name != "posix" or not Path("/proc/self/status").exists(),
    reason="reads /proc/PID/status and uses SIGKILL (Linux)",
)

DEADLINE = 90.0
#: The upload storm: parallel uploads of this many bytes each.
UPLOADS = 200
UPLOAD_SIZE = 16 * 1024 * 1024
#: Peak RSS the node may reach during the storm: its body budget (64 MiB) and then some
#: for the interpreter and buffers; the storm itself is 3.2 GiB.
RSS_BOUND = 256 * 1024 * 1024
#: The connection flood.
FLOOD = 600


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")  # pragma: no cover


def endpoint_of(info: dict[str, str]) -> tuple[str, int]:
    host, _, port = info["endpoint"].removeprefix("http://").rpartition(":")
    return host, int(port)


@contextlib.contextmanager
def pair(tmp_path: Path, deadline: Deadline) -> Iterator[tuple[list[Proc], list[dict[str, str]]]]:
    """Two peered `ptth run` processes: the target and an honest peer."""
    with processes() as spawned:
        procs = [
            Proc(tmp_path / name, "127.0.0.1:0", tmp_path / f"{name}.log", deadline)
            for name in ("target", "honest")
        ]
        spawned += procs
        info = [proc.wait_ready() for proc in procs]
        ptth(procs[0].data_dir, "peer", "add", info[1]["address"])
        ptth(procs[1].data_dir, "peer", "add", info[0]["address"])
        yield spawned, info  # a process appended to it is stopped at the end too


def honest_send(honest: Proc, target_id: str, body: str) -> dict[str, object]:
    """The honest peer sends to the target and waits for the receipt."""
    with ApiClient(honest.data_dir, timeout=None) as api:
        answer = api.send(target_id, body.encode(), None, wait=True, timeout=30)
    assert answer.get("state") == "delivered", answer
    return dict(answer)


def upload(
    address: tuple[str, int], head: bytes, body: bytes, answers: list[bytes], lock: threading.Lock
) -> None:
    """Send a head and (as much as the server lets us of) a body; keep the answer."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # the server may close as soon as it answers
            sock.sendall(body)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    with lock:
        answers.append(data)


def frames_head(host: str, port: int, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [
        f"POST {FRAMES_PATH} HTTP/1.1",
        f"host: {host}:{port}",
        f"content-type: {mesh.CONTENT_TYPE_FRAMES}",
        f"content-length: {length}",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_an_upload_storm_is_refused_from_heads_and_memory_stays_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deadline = Deadline(DEADLINE)
    with pair(tmp_path, deadline) as (procs, info):
        target, honest = procs
        host, port = endpoint_of(info[0])
        body = b"\x00" * UPLOAD_SIZE
        heads = []
        for index in range(UPLOADS):
            if index % 2:
                heads.append(frames_head(host, port, [], UPLOAD_SIZE))  # unsigned
            else:  # signed by a fresh stranger: a valid signature, not a neighbour
                stranger = crypto.Identity.generate()
                url = f"http://{host}:{port}{FRAMES_PATH}"
                signed = sign_request(
                    stranger, "POST", url, body, now=int(time.time()), nonce=str(index)
                )
                heads.append(frames_head(host, port, signed, UPLOAD_SIZE))
        before = peak_rss(target.process.pid)
        answers: list[bytes] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(target=upload, args=((host, port), head, body, answers, lock))
            for head in heads
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(deadline.left(), 1))
        peak = peak_rss(target.process.pid)
        statuses = sorted({a.split(b" ", 2)[1].decode() for a in answers if a})
        with capsys.disabled():
            print(
                f"\nupload storm: {UPLOADS} x {UPLOAD_SIZE >> 20} MiB; node peak RSS "
                f"{before / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB after; "
                f"answers {statuses}"
            )
        assert len(answers) == UPLOADS
        assert set(statuses) <= {"401", "403"}, statuses
        assert peak < RSS_BOUND, f"peak RSS {peak} bytes"
        honest_send(honest, info[0]["node"], "after the storm")
        with ApiClient(target.data_dir) as api:
            assert inbox(api) == ["after the storm"]


def refused_busy(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has answered 503 (and closed)."""
    count = 0
    for sock in sockets:
        try:
            data = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:
            count += 1  # reset after the answer: refused too
            continue
        count += data.startswith(b"HTTP/1.1 503")
    return count


def test_a_connection_flood_from_one_address_leaves_room_for_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deadline = Deadline(DEADLINE)
    with pair(tmp_path, deadline) as (procs, info), contextlib.ExitStack() as held:
        target, honest = procs
        host, port = endpoint_of(info[0])
        flood = []
        for index in range(FLOOD):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.2", 0))
            sock.connect((host, port))
            if index % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a head that never ends
            flood.append(sock)
        deadline.wait_for(
            "the node to refuse the flood past its per-address cap",
            lambda: refused_busy(flood) >= FLOOD // 2,
        )
        started = time.monotonic()
        with ApiClient(target.data_dir) as api:
            assert api.status()["node"] == info[0]["node"]
        honest_send(honest, info[0]["node"], "through the flood")
        elapsed = time.monotonic() - started
        with ApiClient(target.data_dir) as api:
            assert inbox(api) == ["through the flood"]
        with capsys.disabled():
            print(
                f"\nconnection flood: {refused_busy(flood)} of {FLOOD} refused; status and "
                f"an honest send with its receipt took {elapsed:.2f} s"
            )


def test_a_send_retried_with_its_idempotency_key_after_a_kill_is_taken_once(
    tmp_path: Path,
) -> None:
    deadline = Deadline(DEADLINE)
    with pair(tmp_path, deadline) as (procs, info):
        target, honest = procs
        key = "retry-me-0001"
        with ApiClient(honest.data_dir) as api:
            first = api.send(info[0]["node"], b"once", None, idempotency_key=key)
        # The client saw nothing of that answer (as if the connection dropped): the node
        # is killed and comes back; the client retries with the same key.
        port = endpoint_of(info[1])[1]
        honest.kill()
        again = Proc(honest.data_dir, f"127.0.0.1:{port}", tmp_path / "honest.log", deadline)
        procs.append(again)
        again.wait_ready()
        with ApiClient(again.data_dir) as api:
            second = api.send(info[0]["node"], b"once", None, idempotency_key=key)
            assert second == {**first, "replayed": True}  # Idempotent-Replayed: true
            other = api.send(info[0]["node"], b"twice?", None, idempotency_key=key + "x")
            assert other["id"] != first["id"]
        with ApiClient(target.data_dir) as api:
            deadline.wait_for("both messages", lambda: len(inbox(api)) == 2)
            assert sorted(inbox(api)) == ["once", "twice?"]
