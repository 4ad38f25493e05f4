"""The CLI's client of the local API (node/_apiclient.py) against a stand-in for the
node's local API: idempotent sends and publications retried after a lost connection
(one frame, the first answer), the Unix socket preferred to TCP, and the policy
commands (block, unblock, allow, unallow, trust, untrust, policy)."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import crypto
import node._cli
from node._apiclient import ApiClient, Unconfirmed
from node._errors import NodeError, NotRunning
from tests.helpers import NodeFactory
from tests.node.test_cli import cli_ok


@dataclasses.dataclass
class FakeRequest:
    method: str
    path: str  # under /api/v1/, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclasses.dataclass
class FakeAnswer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: Any, status: int = 200, **headers: str) -> FakeAnswer:
        return cls(status, json.dumps(value).encode(), list(headers.items()))

    @classmethod
    def events(cls, *events: tuple[str, Any]) -> FakeAnswer:
        """A whole Server-Sent Events stream."""
        text = "".join(f"event: {kind}\ndata: {json.dumps(data)}\n\n" for kind, data in events)
        return cls(200, (": subscribed\n\n" + text).encode(), content_type="text/event-stream")


#: What the stand-in does with a request: answer it, or (None) read it and drop the
#: connection without a word, as a node does that dies or restarts mid-request.
Route = Callable[[FakeRequest], FakeAnswer | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def address_string(self) -> str:  # a Unix socket's peer has no address
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake: FakeNode = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        request = FakeRequest(
            self.command,
            url.path.removeprefix("/api/v1/"),
            urllib.parse.parse_qs(url.query),
            {name.lower(): value for name, value in self.headers.items()},
            body,
        )
        fake.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {fake.token}":
            answer: FakeAnswer | None = FakeAnswer.json({"error": "bad token"}, 401)
        else:
            route = fake.routes.get((request.method, request.path))
            answer = route(request) if route else FakeAnswer.json({"error": "no such call"}, 404)
        if answer is None:
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("content-type", answer.content_type)
        self.send_header("content-length", str(len(answer.body)))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_DELETE = _serve


class _TcpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeNode


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    fake: FakeNode


class FakeNode:
    """A stand-in for the local API of the node running for ``data_dir``: it writes
    ``api.json`` and ``api.token`` there, like a node, and answers with ``routes``
    (by method and path under /api/v1/), from a thread. With ``unix``, it listens on
    a Unix socket that ``api.json`` names (and its ``url`` goes nowhere)."""

    def __init__(self, data_dir: Path, *, unix: bool = False) -> None:
        self.data_dir = data_dir
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[FakeRequest] = []
        self.token = "token-1"
        self.server: _TcpServer | _UnixServer
        info: dict[str, Any]
        data_dir.mkdir(parents=True, exist_ok=True)
        if unix:
            path = data_dir / "api.sock"
            self.server = _UnixServer(str(path), _Handler)
            info = {"url": f"http://127.0.0.1:{_closed_port()}/api/v1", "socket": str(path)}
        else:
            tcp = _TcpServer(("127.0.0.1", 0), _Handler)
            self.server = tcp
            info = {"url": f"http://127.0.0.1:{tcp.server_address[1]}/api/v1"}
        self.server.fake = self
        (data_dir / "api.json").write_text(json.dumps(info))
        self.write_token(self.token)

    def write_token(self, token: str) -> None:
        """A new token, as a restarted node writes."""
        self.token = token
        (self.data_dir / "api.token").write_text(token)

    def __enter__(self) -> FakeNode:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeNode]:
    with FakeNode(tmp_path / "node") as node:
        yield node


class Result:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


def ptth(fake: FakeNode, *argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = node._cli.run(
        ["--data-dir", str(fake.data_dir), *argv], out=out, err=err, stdin=io.StringIO()
    )
    assert "Traceback" not in err.getvalue()
    return Result(status, out.getvalue(), err.getvalue())


FRAME_ID = "ab" * 16
NEXT_HOP = crypto.Identity.generate().node_id.text


class IdempotentSend:
    """The node's side of ``Idempotency-Key`` on ``POST send``, with connections that
    are dropped after the request was read (and done: the frame is in custody)."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.frames: list[bytes] = []
        self.answers: dict[str, tuple[bytes, FakeAnswer]] = {}

    def __call__(self, request: FakeRequest) -> FakeAnswer | None:
        key = request.headers["idempotency-key"]
        if key not in self.answers:
            self.frames.append(request.body)
            answer = FakeAnswer.json(
                {"id": FRAME_ID, "to": request.query["to"][0], "next_hop": NEXT_HOP, "held": False}
            )
            self.answers[key] = (request.body, answer)
        else:
            body, first = self.answers[key]
            if body != request.body:
                return FakeAnswer.json({"error": f"idempotency key {key} was for another"}, 422)
            answer = dataclasses.replace(first, headers=[("idempotent-replayed", "true")])
        if self.drops > 0:
            self.drops -= 1
            return None
        return answer


def test_send_after_a_dropped_connection_sends_once_and_prints_the_first_answer(
    fake: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = IdempotentSend(drops=1)
    fake.routes["POST", "send"] = send
    # The node restarts meanwhile: the retry must read its new token.
    real_sleep = time.sleep

    def restart(seconds: float) -> None:
        fake.write_token("token-2")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", restart)
    dst = crypto.Identity.generate().node_id.text
    result = ptth(fake, "send", dst, "hello")
    assert (result.status, result.err) == (0, "")
    assert result.out == f"id {FRAME_ID}  in custody, next hop {NEXT_HOP[:10]}\n"
    assert send.frames == [b"hello"]  # one logical send
    keys = [r.headers["idempotency-key"] for r in fake.requests]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(keys[0]) >= 16  # secrets.token_urlsafe(16)


def test_each_send_has_a_key_of_its_own(fake: FakeNode) -> None:
    send = IdempotentSend(drops=0)
    fake.routes["POST", "send"] = send
    dst = crypto.Identity.generate().node_id.text
    assert ptth(fake, "send", dst, "one").status == 0
    assert ptth(fake, "send", dst, "one").status == 0
    assert send.frames == [b"one", b"one"]  # two commands: two messages, as asked
    first, second = (r.headers["idempotency-key"] for r in fake.requests)
    assert first != second


def test_a_send_that_never_gets_an_answer_names_its_key_and_a_retry_is_safe(
    fake: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node._cli, "API_RETRY_FOR", 0.3)
    send = IdempotentSend(drops=1_000)
    fake.routes["POST", "send"] = send
    dst = crypto.Identity.generate().node_id.text
    result = ptth(fake, "send", dst, "hello")
    assert (result.status, result.out) == (1, "")
    (line,) = result.err.splitlines()
    keys = {r.headers["idempotency-key"] for r in fake.requests}
    assert len(fake.requests) >= 2
    (key,) = keys
    # Hex: the retry command below never reads the key as an option (a urlsafe key
    # could begin with "-").
    assert all(c in "0123456789abcdef" for c in key)
    assert len(key) == 32
    assert line.startswith("ptth: error: no answer from the node's local API at http://127.0.0.1:")
    assert line.endswith(
        ": it may or may not be in custody; retry safely with: "
        f"ptth send --idempotency-key {key} (and the same arguments)"
    )
    # The node is back: the retry the error told of gets the first answer, no new frame.
    send.drops = 0
    result = ptth(fake, "send", "--idempotency-key", key, dst, "hello")
    assert result.status == 0, result.err
    assert result.out == f"id {FRAME_ID}  in custody, next hop {NEXT_HOP[:10]}\n"
    assert result.err == f"done before with idempotency key {key}: this is its first answer\n"
    assert send.frames == [b"hello"]
    # The same key for another message: the node's 422, in its own words.
    result = ptth(fake, "send", "--idempotency-key", key, dst, "other")
    assert result.status == 1
    assert result.err == f"ptth: error: idempotency key {key} was for another\n"
    # ... also when waiting for a receipt (a 422 that is no trace is no drop).
    result = ptth(fake, "send", "--wait", "--idempotency-key", key, dst, "other")
    assert result.err == f"ptth: error: idempotency key {key} was for another\n"


def test_publish_after_a_dropped_connection_publishes_once(fake: FakeNode) -> None:
    published: list[tuple[str, bytes]] = []
    answers: dict[str, FakeAnswer] = {}

    def publish(request: FakeRequest) -> FakeAnswer | None:
        key = request.headers["idempotency-key"]
        if key in answers:
            return dataclasses.replace(answers[key], headers=[("idempotent-replayed", "true")])
        published.append((request.query["topic"][0], request.body))
        answers[key] = FakeAnswer.json(
            {"id": FRAME_ID, "topic": "news", "next_hops": [NEXT_HOP], "delivered_here": False}
        )
        return None if len(published) == 1 else answers[key]

    fake.routes["POST", "publish"] = publish
    result = ptth(fake, "publish", "news", "hello", "--idempotency-key", "my-key.1")
    assert (result.status, result.out) == (0, f"{FRAME_ID}\n")
    # The replay answered the command's own retry of a key it was given.
    assert result.err.splitlines() == [
        "done before with idempotency key my-key.1: this is its first answer",
        "in custody, to 1 neighbour",
    ]
    assert published == [("news", b"hello")]
    assert [r.headers["idempotency-key"] for r in fake.requests] == ["my-key.1", "my-key.1"]


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 256, "tab\there"])
def test_a_bad_idempotency_key_is_a_usage_error(fake: FakeNode, key: str) -> None:
    dst = crypto.Identity.generate().node_id.text
    for argv in (["send", dst, "x"], ["publish", "t", "x"]):
        result = ptth(fake, *argv, "--idempotency-key", key)
        assert result.status == 2
        (line,) = result.err.splitlines()
        assert "is not an idempotency key: 1..255 printable ASCII characters, no spaces" in line
    assert fake.requests == []


def test_the_client_retries_only_with_a_key(fake: FakeNode) -> None:
    send = IdempotentSend(drops=1)
    fake.routes["POST", "send"] = lambda r: None  # dropped, whatever it is
    with ApiClient(fake.data_dir, retry_for=0.2) as api:
        with pytest.raises(NodeError, match="lost the node's local API at ") as lost:
            api.send("x", b"no key", None)
        assert not isinstance(lost.value, Unconfirmed)
        assert len(fake.requests) == 1  # no key: not sent again (it may be a second frame)
        fake.routes["POST", "send"] = send
        answer = api.send("x", b"body", None, idempotency_key="k1")
        assert answer == {
            "id": FRAME_ID,
            "to": "x",
            "next_hop": NEXT_HOP,
            "held": False,
            "replayed": True,
        }
        fake.routes["POST", "send"] = lambda r: None
        with pytest.raises(Unconfirmed) as unconfirmed:
            api.send("x", b"body 2", None, idempotency_key="k2")
    assert unconfirmed.value.key == "k2"
    assert str(unconfirmed.value).endswith(
        "the request may or may not have been done: retry it with Idempotency-Key k2 "
        "(the node does it at most once per key within 24 h)"
    )
    assert send.frames == [b"body"]


# -- the Unix socket --------------------------------------------------------------------


STATUS: dict[str, Any] = {
    "node": NEXT_HOP,
    "name": None,
    "endpoints": [],
    "inbox": {"frames": 0, "bytes": 0},
    "queued": {"frames": 0, "bytes": 0},
    "neighbours": [],
    "routes": 0,
    "peers": [],
    "attachments": [],
    "relaying": [],
    "counters": dict.fromkeys(
        [
            "frames_accepted",
            "frames_duplicate",
            "frames_rejected",
            "requests_refused",
            "sent_accepted",
            "sent_duplicate",
            "sent_rejected",
            "send_retries",
        ],
        0,
    ),
}


def test_status_goes_through_the_unix_socket_when_there_is_one(tmp_path: Path) -> None:
    with FakeNode(tmp_path / "n", unix=True) as fake:
        fake.routes["GET", "status"] = lambda r: FakeAnswer.json(STATUS)
        with ApiClient(fake.data_dir) as api:
            assert api.socket == str(fake.data_dir / "api.sock")
        result = ptth(fake, "status")
        assert result.status == 0, result.err
        assert result.out.splitlines()[0] == f"node      {NEXT_HOP}"
        assert [r.path for r in fake.requests] == ["status"]
        assert fake.requests[0].headers["host"] == "ptth-local"
        # A socket named but gone (a node that died): the URL, which goes nowhere here.
        (fake.data_dir / "api.sock").unlink()
        with ApiClient(fake.data_dir) as api:
            assert api.socket is None
        result = ptth(fake, "status")
        assert result.status == 1
        assert result.err == (
            f"ptth: error: no node is running for {fake.data_dir} "
            f"(start one with 'ptth run --data-dir {fake.data_dir}')\n"
        )


def test_a_damaged_api_json_is_no_node_running(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text('["not", "an", "object"]')
    (tmp_path / "api.token").write_text("t")
    with pytest.raises(NotRunning):
        ApiClient(tmp_path)


def test_broken_json_from_the_node_is_one_line(fake: FakeNode) -> None:
    fake.routes["GET", "routes"] = lambda r: FakeAnswer(200, b"{nope")
    result = ptth(fake, "routes")
    assert (result.status, result.err) == (
        1,
        "ptth: error: the node answered 200 with JSON that does not parse\n",
    )


# -- block, unblock, allow, unallow, policy ------------------------------------------------


class Policy:
    """The node's side of /api/v1/policy."""

    def __init__(self, inbox: str = "anyone") -> None:
        self.value: dict[str, Any] = {
            "admission": "neighbours",
            "inbox": inbox,
            "blocked": [],
            "allowed": [],
            "trusted": [],
        }

    def get(self, request: FakeRequest) -> FakeAnswer:
        return FakeAnswer.json(self.value)

    def change(self, request: FakeRequest) -> FakeAnswer:
        node_id = json.loads(request.body)["node"]
        change = request.path.removeprefix("policy/")
        kind = change.removeprefix("un")
        listed = self.value[{"block": "blocked", "allow": "allowed", "trust": "trusted"}[kind]]
        adding = not change.startswith("un")
        changed = (node_id in listed) != adding
        if changed and adding:
            listed.append(node_id)
        elif changed:
            listed.remove(node_id)
        return FakeAnswer.json({**self.value, "changed": changed})


@pytest.fixture
def policy(fake: FakeNode) -> Policy:
    policy = Policy()
    fake.routes["GET", "policy"] = policy.get
    for change in ("block", "unblock", "allow", "unallow", "trust", "untrust"):
        fake.routes["POST", f"policy/{change}"] = policy.change
    return policy


def test_block_unblock_allow_unallow(fake: FakeNode, policy: Policy) -> None:
    x = crypto.Identity.generate().node_id.text

    def one_line(*argv: str) -> str:
        result = ptth(fake, *argv)
        assert (result.status, result.err) == (0, ""), result.err
        (line,) = result.out.splitlines()
        return line

    assert one_line("block", x) == (
        f"blocked {x}: its requests are refused, its frames no longer reach the inbox"
    )
    assert json.loads(fake.requests[-1].body) == {"node": x}
    assert one_line("block", x) == f"{x} was blocked already"
    assert one_line("allow", x) == f"allowed {x}, but it is blocked ('ptth unblock {x}')"
    assert one_line("unblock", x) == f"unblocked {x}: its frames reach the inbox again"
    assert one_line("unblock", x) == f"{x} was not blocked"
    assert one_line("allow", x) == (
        f"{x} was allowed already (the inbox takes anyone now: 'ptth run --inbox allow-list')"
    )
    assert one_line("unallow", x) == f"took {x} off the allow-list"
    assert one_line("unallow", x) == f"{x} was not on the allow-list"
    policy.value["inbox"] = "allow-list"
    assert one_line("allow", x) == f"allowed {x}: its frames reach the inbox"
    assert one_line("unallow", x) == (
        f"took {x} off the allow-list: its frames no longer reach the inbox"
    )
    one_line("block", x)
    assert one_line("unblock", x) == (
        f"unblocked {x}; the inbox takes only allowed nodes ('ptth allow {x}' too)"
    )
    trusted = (
        f"trusted {x}: its messages for other nodes go on without their origin's signature "
        "checked here (their destinations check it)"
    )
    assert one_line("trust", x) == trusted
    assert json.loads(fake.requests[-1].body) == {"node": x}
    assert one_line("trust", x) == f"{x} was trusted already"
    assert one_line("untrust", x) == f"untrusted {x}: every frame it hands over is checked again"
    assert one_line("untrust", x) == f"{x} was not trusted"
    one_line("block", x)
    assert one_line("trust", x) == f"{trusted}, but it is blocked ('ptth unblock {x}')"


def test_policy_table_and_json(fake: FakeNode, policy: Policy) -> None:
    x, y = sorted(crypto.Identity.generate().node_id.text for _ in range(2))
    policy.value.update(blocked=[x, y], allowed=[y], trusted=[x])
    result = ptth(fake, "policy")
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        "admission  neighbours  (frames only from peers, relays and nodes attached here)",
        "inbox      anyone  (messages from any node but blocked ones)",
        "blocked    2",
        f"  {x}",
        f"  {y}",
        "allowed    1",
        f"  {y}",
        "trusted    1",
        f"  {x}",
    ]
    assert json.loads(ptth(fake, "policy", "--json").out) == policy.value


def test_policy_usage_errors(fake: FakeNode, policy: Policy) -> None:
    for change in ("block", "unblock", "allow", "unallow", "trust", "untrust"):
        result = ptth(fake, change, "not-a-node")
        assert result.status == 2
        assert result.err == (
            f"ptth {change}: usage: argument NODE_ID: a node id is 52 characters of base32, "
            f"got 10 (see 'ptth {change} --help')\n"
        )
    # A node does not block itself (its id from the data directory's identity).
    init = ptth(fake, "init")
    assert init.status == 0, init.err
    result = ptth(fake, "block", init.out.strip())
    assert (result.status, result.err) == (
        2,
        "ptth: usage: that is this node's own id: a node does not block itself\n",
    )
    assert fake.requests == []


def test_policy_needs_a_running_node(tmp_path: Path) -> None:
    for argv in (["policy"], ["block", crypto.Identity.generate().node_id.text]):
        out, err = io.StringIO(), io.StringIO()
        status = node._cli.run(["--data-dir", str(tmp_path), *argv], out=out, err=err)
        assert status == 1
        assert err.getvalue().startswith(f"ptth: error: no node is running for {tmp_path} ")


def test_the_node_s_error_words_cannot_act_on_the_terminal(fake: FakeNode, policy: Policy) -> None:
    fake.routes["POST", "policy/block"] = lambda r: FakeAnswer.json(
        {"error": "no\r\x1b[2Kptth: ok \u202eevil"}, 409
    )
    result = ptth(fake, "block", crypto.Identity.generate().node_id.text)
    assert result.status == 1
    assert result.err == "ptth: error: no\\r\\x1b[2Kptth: ok \\u202eevil\n"


async def test_policy_commands_against_a_running_node(tcp_nodes: NodeFactory) -> None:
    a = await tcp_nodes.open("a")
    x = crypto.Identity.generate().node_id.text
    assert await cli_ok(a, "block", x) == [
        f"blocked {x}: its requests are refused, its frames no longer reach the inbox"
    ]
    assert await cli_ok(a, "allow", x) == [f"allowed {x}, but it is blocked ('ptth unblock {x}')"]
    policy = json.loads("\n".join(await cli_ok(a, "policy", "--json")))
    assert policy == {
        "admission": "neighbours",
        "inbox": "anyone",
        "blocked": [x],
        "allowed": [x],
        "trusted": [],
    }
    assert a.policy() == policy
    assert await cli_ok(a, "unblock", x) == [f"unblocked {x}: its frames reach the inbox again"]
    assert (await cli_ok(a, "policy"))[2:] == [
        "blocked    0",
        "allowed    1",
        f"  {x}",
        "trusted    0",
    ]
    await cli_ok(a, "trust", x)
    assert a.mesh.router.policy.unverified_from(crypto.NodeId.parse(x))
    assert json.loads("\n".join(await cli_ok(a, "policy", "--json")))["trusted"] == [x]
