"""``ptth expose``, ``ptth call`` and ``ptth cap url`` with real ``ptth run`` processes.

A web service (Python's http.server, on loopback) becomes object ``web`` of node n2,
which is reachable only through its relay n1; n0, peered with n1 alone, calls it with
``ptth call``: refused without a capability, answered with one, refused once it is
revoked; then through a capability URL, also by plain HTTP through the relay, until
the URL is revoked. The last test does the same across a real NAT (network
namespaces; root only, and it says why it skips).

Processes are waited on through the lines they print and the calls' own time-outs,
never with sleeps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from node import _cli as cli
from tests.node.test_nat import IN_IP, OUT_IP, Nat, run_node
from tests.node.test_nat import nat as nat  # the fixture (namespaces, skips without root)
from tests.node.test_nat import ptth as ns_ptth

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")


class Result:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


def ptth(data_dir: Path, *args: str) -> Result:
    """The CLI's own code, in this process (a running node is told through its API)."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.run(["--data-dir", str(data_dir), *args], out=out, err=err)
    return Result(status, out.getvalue(), err.getvalue())


def ok(data_dir: Path, *args: str) -> str:
    result = ptth(data_dir, *args)
    assert result.status == 0, result.err
    return result.out


def fails(data_dir: Path, *args: str, status: int = 1) -> str:
    """The one line a failing command prints."""
    result = ptth(data_dir, *args)
    assert result.status == status, (result.out, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@contextlib.contextmanager
def running(data_dir: Path, *options: str) -> Iterator[dict[str, str]]:
    """`ptth run` on loopback; what it prints (node, address, ...) once it serves."""
    command = [sys.executable, "-m", "node", "--data-dir", str(data_dir), "run"]
    process = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines: dict[str, str] = {}
        assert process.stdout is not None
        while "address" not in lines:  # its last line once it is serving
            line = process.stdout.readline()
            assert line, f"ptth run for {data_dir} ended early"
            key, _, value = line.strip().partition(" ")
            lines[key] = value.strip()
        yield lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


class _Service(BaseHTTPRequestHandler):
    """Answers every request with JSON saying what it got."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        answer = {
            "method": self.command,
            "path": self.path,
            "body": body.decode(),
            "caller": self.headers.get("ptth-caller"),
            "type": self.headers.get("content-type"),
        }
        data = json.dumps(answer).encode()
        self.send_response(404 if self.path.endswith("/missing") else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def web_service() -> Iterator[str]:
    """A web service on loopback; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/app/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_expose_and_call_through_a_relay(tmp_path: Path) -> None:
    n0, n1, n2 = (tmp_path / f"n{i}" for i in range(3))
    with web_service() as base, running(n1) as relay, contextlib.ExitStack() as stack:
        caller = stack.enter_context(running(n0))
        ok(n0, "peer", "add", relay["address"])
        ok(n1, "peer", "add", caller["address"])
        service = stack.enter_context(running(n2, "--relay", relay["address"]))
        target = f"{service['node']}/web"

        # Exposing: usage mistakes, then the object.
        assert "say which object" in fails(n2, "expose", "web", status=2)
        assert "say which object" in fails(n2, "expose", "--forward", base, status=2)
        assert "--list and --remove take nothing else" in fails(
            n2, "expose", "web", "--list", status=2
        )
        assert "is not an http(s) URL" in fails(n2, "expose", "web", "--forward", "ftp://x/")
        exposed = ptth(n2, "expose", "web", "--forward", base)
        assert exposed.status == 0, exposed.err
        assert exposed.out == f"exposed web: forwards to {base}\n"
        assert "callers need a capability: 'ptth cap grant" in exposed.err
        assert "is exposed already" in fails(n2, "expose", "web", "--inbox")
        listing = ok(n2, "expose", "--list", "--json")
        assert json.loads(listing) == [
            {"name": "web", "kind": "forward", "target": base, "open": False, "saved": True}
        ]

        # Calling: refused without a capability (this first call also waits for the
        # routes to form: its frame is held at n0 until one to n2 is known).
        line = fails(n0, "call", target, "GET /hello?x=1")
        assert line == (
            f"ptth: error: {service['node'][:10]}/web answered 403: calling 'web' needs a "
            f"capability from {service['node']} (call on object 'web' of "
            f"{service['node']}); none was presented"
        )
        token = ok(n2, "cap", "grant", "--to", caller["node"], "--op", "call", "--on", "web")
        token = token.strip()
        answer = json.loads(ok(n0, "call", target, "POST /echo", "ping", "--cap", token,
                               "--ct", "text/plain"))  # fmt: skip
        assert answer == {
            "method": "POST",
            "path": "/app/echo",
            "body": "ping",
            "caller": caller["node"],
            "type": "text/plain",
        }
        # A status the service answered that is not 2xx: one line, exit 1.
        line = fails(n0, "call", target, "GET /missing", "--cap", token)
        assert line == (
            f"ptth: error: {service['node'][:10]}/web answered 404: the web service of "
            "object 'web' answered 404"
        )
        assert "answered 404: no object 'nothing'" in fails(
            n0, "call", f"{service['node']}/nothing", "x"
        )
        assert "say which operation" in fails(n0, "call", target, status=2)
        assert "call NODE_ID/NAME or a capability URL" in fails(n0, "call", "web", "x", status=2)
        # Revoked (the running n2 is told at once): refused.
        cap_id = json.loads(ok(n2, "cap", "show", token, "--json"))[-1]["id"]
        ok(n2, "cap", "revoke", cap_id)
        line = fails(n0, "call", target, "GET /", "--cap", token)
        assert "answered 403: calling 'web': " in line
        assert "revoked" in line

        # A capability URL: the relay's form first, then n2's own.
        minted = ptth(n2, "cap", "url", "web")
        assert minted.status == 0, minted.err
        relayed, direct = minted.out.split()
        assert relayed.startswith(f"{relay['endpoint']}/n/{service['node']}/c/")
        assert direct.startswith(service["endpoint"] + "/c/")
        assert "shown once" in minted.err
        # ptth call with the URL: plain HTTP, no node of one's own needed.
        got = json.loads(ok(tmp_path / "nobody", "call", relayed + "/via/url?y=2"))
        assert (got["method"], got["path"], got["caller"]) == ("GET", "/app/via/url?y=2", None)
        got = json.loads(ok(tmp_path / "nobody", "call", relayed + "/put", "PUT", "data"))
        assert (got["method"], got["body"]) == ("PUT", "data")
        with httpx.Client(timeout=30) as client:
            response = client.delete(relayed + "/thing")
            assert response.status_code == 200
            assert response.json()["method"] == "DELETE"
            assert "ptth-" in response.headers["via"]
            (url,) = json.loads(ok(n2, "cap", "url", "--list", "--json"))
            assert url["object"] == "web"
            assert url["revoked"] is None
            assert ok(n2, "cap", "url", "--revoke", url["id"]) == (
                f"revoked capability URL {url['id']}\n"
            )
            gone = client.get(relayed + "/thing")
            assert gone.status_code == 404
            assert gone.text == "no such capability URL (unknown, or revoked)\n"
        line = fails(tmp_path / "nobody", "call", relayed)
        assert line == "ptth: error: 404: no such capability URL (unknown, or revoked)"
        assert "no capability URL 'nope' to revoke" in fails(n2, "cap", "url", "--revoke", "nope")
        assert "no object 'nope' is exposed here" in fails(n2, "cap", "url", "nope")

        assert ok(n2, "expose", "--remove", "web").startswith("removed object web")
        assert "no object 'web' is exposed here" in fails(n2, "expose", "--remove", "web")


def test_objects_need_a_running_node(tmp_path: Path) -> None:
    ok(tmp_path / "x", "init")
    assert "no node is running for" in fails(tmp_path / "x", "expose", "--list")
    assert "no node is running for" in fails(tmp_path / "x", "cap", "url", "--list")
    node_id = ok(tmp_path / "x", "id").strip()
    assert "no node is running for" in fails(tmp_path / "x", "call", f"{node_id}/web", "GET /")


# -- across a real NAT -------------------------------------------------------------------


_SERVICE = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = ("behind the NAT: " + self.path).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.mark.root
def test_a_call_reaches_a_web_service_behind_a_nat(nat: Nat, tmp_path: Path) -> None:
    relay_dir, caller_dir, inside_dir = tmp_path / "relay", tmp_path / "caller", tmp_path / "in"
    service = subprocess.Popen(
        ["ip", "netns", "exec", nat.inside, sys.executable, "-c", _SERVICE],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        port = int(service.stdout.readline())
        with run_node(
            nat.out, relay_dir, "--listen", "0.0.0.0:8470", "--public-url", f"http://{OUT_IP}:8470"
        ) as relay_token:
            (tmp_path / "relay.token").write_text(relay_token)
            with (
                run_node(
                    nat.inside, inside_dir,
                    "--listen", "0.0.0.0:8470", "--public-url", f"http://{IN_IP}:8470",
                    "--relay", f"@{tmp_path / 'relay.token'}", "-v",
                    wait_for="attached to relay",
                ) as inside_token,
                run_node(
                    nat.out, caller_dir, "--listen", "0.0.0.0:8471",
                    "--public-url", f"http://{OUT_IP}:8471",
                ) as caller_token,
            ):  # fmt: skip
                for ns, data, token in (
                    (nat.out, caller_dir, inside_token),
                    (nat.inside, inside_dir, caller_token),
                ):
                    added = ns_ptth(ns, data, "peer", "add", token)
                    assert added.returncode == 0, added.stderr
                inside_id = ns_ptth(nat.inside, inside_dir, "id").stdout.strip()
                caller_id = ns_ptth(nat.out, caller_dir, "id").stdout.strip()
                exposed = ns_ptth(
                    nat.inside,
                    inside_dir,
                    "expose",
                    "web",
                    "--forward",
                    f"http://127.0.0.1:{port}/",
                )
                assert exposed.returncode == 0, exposed.stderr
                token = ns_ptth(
                    nat.inside, inside_dir, "cap", "grant", "--to", caller_id, "--op", "call",
                    "--on", "web",
                ).stdout.strip()  # fmt: skip
                # Without the capability, and with one for another object: refused.
                other = ns_ptth(
                    nat.inside, inside_dir, "cap", "grant", "--to", caller_id, "--op", "call",
                    "--on", "other",
                ).stdout.strip()  # fmt: skip
                for cap in ((), ("--cap", other)):
                    refused = ns_ptth(
                        nat.out, caller_dir, "call", f"{inside_id}/web", "GET /", *cap
                    )
                    assert refused.returncode == 1
                    assert "answered 403: calling 'web'" in refused.stderr
                called = ns_ptth(
                    nat.out, caller_dir, "call", f"{inside_id}/web", "GET /hello", "--cap", token
                )
                assert called.returncode == 0, called.stderr
                assert called.stdout == "behind the NAT: /hello"
                # A capability URL through the relay, by plain HTTP from outside.
                minted = ns_ptth(nat.inside, inside_dir, "cap", "url", "web")
                assert minted.returncode == 0, minted.stderr
                relayed = minted.stdout.split()[0]
                assert relayed.startswith(f"http://{OUT_IP}:8470/n/{inside_id}/c/")
                fetched = ns_ptth(nat.out, caller_dir, "call", relayed + "/by-url")
                assert fetched.stdout == "behind the NAT: /by-url", fetched.stderr
                url_id = json.loads(
                    ns_ptth(nat.inside, inside_dir, "cap", "url", "--list", "--json").stdout
                )[0]["id"]
                ns_ptth(nat.inside, inside_dir, "cap", "url", "--revoke", url_id)
                revoked = ns_ptth(nat.out, caller_dir, "call", relayed + "/by-url")
                assert revoked.returncode == 1
                assert "404: no such capability URL" in revoked.stderr
    finally:
        service.kill()
        service.communicate()  # (closes its stdout too)
