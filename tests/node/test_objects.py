"""Objects (node/_objects.py): calls over the mesh, in virtual time on the memory network.

Calls across two hops with the frames' custody, capabilities (none, wrong, right,
revoked), unknown objects, bad calls, duplicates, forged replies, time-outs, drops,
floods, events, the node's own calls, the built-in kinds (a web service on the memory
network, the inbox, a topic, a queue) and capability URLs, also through a relay.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import crypto
import mesh
import node._objects
from node import (
    Answer,
    CallFailed,
    CallRequest,
    CallTimeout,
    MemoryNetwork,
    Node,
    NodeError,
    ObjectSpec,
    Request,
    Response,
    Server,
    make_transport,
)
from tests.helpers import NodeFactory, chain, drain, peer


async def echo(request: CallRequest) -> Answer:
    return Answer(request.body.upper(), ct="text/plain")


@pytest.fixture
async def line(memory_nodes: NodeFactory) -> tuple[Node, Node, Node]:
    """a - b - c: a reaches c only through b."""
    a, b, c = [await memory_nodes.open(name) for name in "abc"]
    await chain([a, b, c])
    return a, b, c


def grant(owner: Node, holder: Node | None, name: str, **caveats: int) -> crypto.Capability:
    return crypto.grant(
        owner.identity,
        crypto.Target.named(owner.node_id, name),
        [crypto.Operation.CALL],
        subject=None if holder is None else holder.node_id,
        now=owner.clock(),
        cap_id=secrets.token_bytes(crypto.CAPABILITY_ID_SIZE),
        caveats=crypto.Caveats(**caveats),
    )


def call_frame(caller: Node, callee: Node, body: bytes, *, ttl: float = 60.0) -> bytes:
    """A call frame from ``caller`` to ``callee``, sealed by hand."""
    now = caller.clock()
    return crypto.Frame(
        kind=crypto.Kind.MSG,
        src=caller.node_id,
        id=secrets.token_bytes(crypto.FRAME_ID_SIZE),
        ts=now,
        exp=now + int(ttl * 1000),
        hops=8,
        dst=callee.node_id,
        body=body,
        ct=mesh.CALL_CONTENT_TYPE,
    ).seal(caller.identity)


def watch_calls(node: Node) -> list[crypto.Frame]:
    """Record each call and reply ``node`` takes (on top of its objects)."""
    seen: list[crypto.Frame] = []
    inner = node.mesh.on_call
    assert inner is not None

    def record(admitted: mesh.Admitted, now: int) -> None:
        seen.append(admitted.frame)
        inner(admitted, now)

    node.mesh.on_call = record
    return seen


async def learned(node: Node, topic: str) -> None:
    """Wait until ``node`` knows of a subscriber of another node to ``topic``."""
    while not node.mesh.router.interests.subscribers(topic, now=node.clock()) - {node.node_id}:
        await node.mesh.interests_changed.wait()


# -- calls over the mesh -----------------------------------------------------------------


async def test_a_call_over_two_hops_and_its_reply(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = line
    seen: list[CallRequest] = []

    async def handler(request: CallRequest) -> Answer:
        seen.append(request)
        return Answer(request.body[::-1], ct="text/plain")

    forwarded = b.statistics.frames_forwarded
    with c.expose("rev", handler, open=True):
        with trio.fail_after(60):
            reply = await a.call(c.node_id.text, "rev", "reverse", b"abc", ct="text/x")
    assert (reply.status, reply.body, reply.ct, reply.why) == (200, b"cba", "text/plain", None)
    (request,) = seen
    assert (request.caller, request.object, request.op, request.body, request.ct) == (
        a.node_id, "rev", "reverse", b"abc", "text/x"
    )  # fmt: skip
    assert request.hops == 2  # a -> b -> c
    assert request.capability is None  # an open object
    # Both frames went through b, in its custody (its count moves once the next hop
    # has answered its POST: wait until nothing moves); neither reached an inbox.
    await trio.testing.wait_all_tasks_blocked()
    assert b.statistics.frames_forwarded >= forwarded + 2
    assert await drain(a) == []
    assert await drain(c) == []
    assert c.objects.statistics.calls_answered == 1


async def test_no_such_object_is_404(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    with trio.fail_after(60), pytest.raises(CallFailed) as failed:
        await a.call(c.node_id, "nothing", "x")
    assert failed.value.status == 404
    assert failed.value.why == f"no object 'nothing' on {c.node_id.short}"
    assert str(failed.value) == f"{c.node_id.short}/nothing: 404 {failed.value.why}"


async def test_a_capability_is_needed_and_checked(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = line
    seen: list[CallRequest] = []

    async def handler(request: CallRequest) -> bytes:
        seen.append(request)
        return b"done"

    c.expose("guarded", handler)
    with trio.fail_after(120):
        with pytest.raises(CallFailed) as none:
            await a.call(c.node_id, "guarded", "go")
        assert none.value.status == 403
        assert none.value.why == (
            f"calling 'guarded' needs a capability from {c.node_id.text} (call on object "
            f"'guarded' of {c.node_id.text}); none was presented"
        )
        wrong = [
            (grant(c, a, "other"), "capability designates object 'other' of"),  # another object
            (grant(c, b, "guarded"), f"is for {b.node_id.short}, presented by "),
            (grant(a, a, "guarded"), f"capability's root is issued by {a.node_id.short}"),
        ]
        for capability, words in wrong:
            with pytest.raises(CallFailed) as refused:
                await a.call(c.node_id, "guarded", "go", cap=capability)
            assert refused.value.status == 403, refused.value
            assert refused.value.why.startswith("calling 'guarded': "), refused.value.why
            assert words in refused.value.why
        assert seen == []
        right = grant(c, a, "guarded")
        reply = await a.call(c.node_id, "guarded", "go", cap=right.token)
        assert reply.body == b"done"
        assert seen[-1].capability is not None
        assert seen[-1].capability.capability == right
        # Held by the node (as --cap does), it is presented on its own.
        a.hold(right)
        assert (await a.call(c.node_id, "guarded", "go")).body == b"done"
        # The node itself always may.
        assert (await c.call(c.node_id, "guarded", "go")).body == b"done"


async def test_a_revoked_capability_is_refused(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    c.expose("guarded", echo)
    capability = grant(c, a, "guarded")
    with trio.fail_after(120):
        assert (await a.call(c.node_id, "guarded", "x", b"ok", cap=capability)).body == b"OK"
        revocation = crypto.Revocation.sign(c.identity, capability.id, now=c.clock())
        assert c.mesh.router.authority.learn(revocation)
        with pytest.raises(CallFailed) as refused:
            await a.call(c.node_id, "guarded", "x", b"no", cap=capability)
    assert refused.value.status == 403
    assert "revoked" in refused.value.why
    assert capability.id_text in refused.value.why


async def test_uses_are_counted_by_the_object(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    c.expose("guarded", echo)
    capability = grant(c, a, "guarded", uses=2)
    with trio.fail_after(120):
        for _ in range(2):
            await a.call(c.node_id, "guarded", "x", cap=capability)
        with pytest.raises(CallFailed) as refused:
            await a.call(c.node_id, "guarded", "x", cap=capability)
    assert refused.value.status == 403
    assert "has been used its 2 times" in refused.value.why


async def test_a_bad_call_is_400(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    replies = watch_calls(a)
    got = trio.Event()
    inner = a.mesh.on_call
    assert inner is not None

    def signal(admitted: mesh.Admitted, now: int) -> None:
        inner(admitted, now)
        got.set()

    a.mesh.on_call = signal
    bad = mesh.Call("x", "y").encode()[:-1] + b"\xff"  # not CBOR any more
    await a.send_sealed([(crypto.Frame.open(envelope), envelope)
                         for envelope in [call_frame(a, c, bad)]])  # fmt: skip
    with trio.fail_after(60):
        await got.wait()
    (frame,) = replies
    reply = mesh.Reply.decode(frame.body or b"")
    assert reply.status == 400
    assert reply.why is not None
    assert reply.why.startswith("bad call: call is not valid CBOR")
    assert a.objects.statistics.replies_ignored == 1  # no call of a's waited for it


async def test_a_duplicate_call_runs_its_handler_once(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    runs: list[bytes] = []
    ran = trio.Event()

    async def handler(request: CallRequest) -> bytes:
        runs.append(request.id)
        ran.set()
        return b""

    c.expose("once", handler, open=True)
    envelope = call_frame(a, c, mesh.Call("once", "go").encode())
    wire = mesh.WireFrame(0, envelope)
    results = await c.mesh.receive([wire, wire], a.node_id, c.clock())
    assert [r.outcome for r in results] == [mesh.Outcome.ACCEPTED, mesh.Outcome.DUPLICATE]
    with trio.fail_after(10):
        await ran.wait()
    (again,) = await c.mesh.receive([wire], a.node_id, c.clock())
    assert again.outcome is mesh.Outcome.DUPLICATE
    await trio.testing.wait_all_tasks_blocked()
    assert len(runs) == 1
    assert c.objects.statistics.calls_received == 1
    assert await drain(c) == []


async def test_a_forged_reply_is_ignored(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = line
    release = trio.Event()
    started = trio.Event()

    async def slow(request: CallRequest) -> bytes:
        started.set()
        await release.wait()
        return b"genuine"

    c.expose("slow", slow, open=True)
    async with trio.open_nursery() as nursery:
        result: list[mesh.Reply] = []

        async def call() -> None:
            result.append(await a.call(c.node_id, "slow", "go"))

        nursery.start_soon(call)
        with trio.fail_after(60):
            await started.wait()
        (call_id,) = a.objects._pending
        # b, which carried the call, forges a reply: a takes replies only from c.
        now = b.clock()
        forged = crypto.Frame(
            kind=crypto.Kind.MSG,
            src=b.node_id,
            id=secrets.token_bytes(crypto.FRAME_ID_SIZE),
            ts=now,
            exp=now + 60_000,
            hops=8,
            dst=a.node_id,
            body=mesh.Reply(call_id, 200, b"forged").encode(),
            ct=mesh.REPLY_CONTENT_TYPE,
        ).seal(b.identity)
        (taken,) = await a.mesh.receive([mesh.WireFrame(0, forged)], b.node_id, a.clock())
        assert taken.outcome is mesh.Outcome.ACCEPTED
        assert a.objects.statistics.replies_ignored == 1
        assert result == []  # still waiting
        release.set()
    (reply,) = result
    assert reply.body == b"genuine"


async def test_no_reply_in_time_is_a_timeout(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line

    async def never(request: CallRequest) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    c.expose("never", never, open=True)
    with pytest.raises(CallTimeout) as timed_out:
        await a.call(c.node_id, "never", "x", timeout=5)
    assert timed_out.value.status == 504
    assert f"no reply from {c.node_id.short} within 5 s" in str(timed_out.value)
    assert a.objects.statistics.calls_timed_out == 1
    assert a.objects._pending == {}


async def test_a_call_dropped_on_the_way_fails_at_once(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = line
    c.expose("echo", echo, open=True)
    assert await c.change_policy("block", a.node_id)
    start = trio.current_time()
    with pytest.raises(CallFailed) as failed:
        await a.call(c.node_id, "echo", "x", timeout=600)
    assert trio.current_time() - start < 600  # the drop receipt, not the time-out
    assert failed.value.status == 502
    assert failed.value.why == (
        f"the call was dropped by {b.node_id.short}: blocked: refused by {c.node_id.short}: "
        f"node {a.node_id.short} is blocked at its destination"
    )


async def test_a_flood_of_calls_is_bounded(
    line: tuple[Node, Node, Node],
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _, c = line
    monkeypatch.setattr(node._objects, "MAX_RUNNING", 3)
    release = trio.Event()
    running = 0
    most = 0

    async def held(request: CallRequest) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return b"ok"

    c.expose("held", held, open=True)
    outcomes: list[int] = []
    refused = trio.Event()

    async def call() -> None:
        try:
            outcomes.append((await a.call(c.node_id, "held", "x")).status)
        except CallFailed as exc:
            outcomes.append(exc.status)
        if len(outcomes) == 5:
            refused.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(call)
            await refused.wait()  # the five past the limit are answered at once
            assert outcomes == [503] * 5
            release.set()
    assert sorted(outcomes) == [200, 200, 200, 503, 503, 503, 503, 503]
    assert most == 3
    assert c.objects.statistics.calls_busy == 5


async def test_calls_waiting_for_replies_are_bounded(
    line: tuple[Node, Node, Node],
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _, c = line
    monkeypatch.setattr(node._objects, "MAX_PENDING_CALLS", 2)
    release = trio.Event()

    async def held(request: CallRequest) -> bytes:
        await release.wait()
        return b"ok"

    c.expose("held", held, open=True)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(a.call, c.node_id, "held", "x")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(CallFailed) as refused:
            await a.call(c.node_id, "held", "x")
        assert refused.value.status == 503
        assert "2 calls waiting for replies, its limit" in refused.value.why
        release.set()


async def test_errors_a_handler_answers(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line

    async def picky(request: CallRequest) -> Answer | bytes:
        if request.op == "raise":
            raise CallFailed(409, "not now")
        if request.op == "crash":
            raise RuntimeError("secret details")
        if request.op == "answer":
            return Answer(b"teapot", status=418, why="short and stout")
        return "not bytes"  # type: ignore[return-value]

    c.expose("picky", picky, open=True)
    with trio.fail_after(120):
        for op, status, why in [
            ("raise", 409, "not now"),
            ("crash", 500, "the handler of object 'picky' failed; see its log"),
            ("answer", 418, "short and stout"),
            ("other", 500, "the handler of object 'picky' failed"),
        ]:
            with pytest.raises(CallFailed) as failed:
                await a.call(c.node_id, "picky", op)
            assert (failed.value.status, failed.value.why) == (status, why)
    assert failed.value.reply is not None


async def test_bad_calls_are_refused_before_they_leave(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    with pytest.raises(crypto.Malformed, match=r"object name 'a\.b' is not"):
        await a.call(c.node_id, "a.b", "x")
    with pytest.raises(crypto.Malformed, match="call op ' x' is not"):
        await a.call(c.node_id, "ok", " x")
    with pytest.raises(crypto.TooLarge, match="call body is"):
        await a.call(c.node_id, "ok", "x", b"x" * (mesh.MAX_CALL_BODY + 1))
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        await a.call(c.node_id, "ok", "x", timeout=0)
    with pytest.raises(crypto.Malformed, match="not a capability token"):
        await a.call(c.node_id, "ok", "x", cap="nonsense")


async def test_own_objects_are_called_without_the_network(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    a = await memory_nodes.open("a")  # no neighbours at all
    seen: list[CallRequest] = []

    async def handler(request: CallRequest) -> bytes:
        seen.append(request)
        return b"here"

    with a.expose("mine", handler):  # not open: the node itself may all the same
        assert (await a.call(a.node_id, "mine", "x")).body == b"here"
    assert seen[0].caller == a.node_id
    with pytest.raises(CallFailed) as gone:  # withdrawn with the block
        await a.call(a.node_id, "mine", "x")
    assert gone.value.status == 404


async def test_names_are_unique_and_events_are_publications(
    line: tuple[Node, Node, Node],
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _, c = line
    exposed = c.expose("thing", echo)
    with pytest.raises(Exception, match="object 'thing' is exposed already"):
        c.expose("thing", echo)
    assert exposed.events == f"~{c.node_id.text}.obj.thing.#"
    async with a.subscribe(exposed.events) as subscription:
        with trio.fail_after(60):
            await learned(c, f"~{c.node_id.text}.obj.thing.changed")
            published = await exposed.emit("changed", b"v2")
            publication = await subscription.get()
    assert publication.topic == f"~{c.node_id.text}.obj.thing.changed"
    assert (publication.origin, publication.body, publication.id) == (
        c.node_id, b"v2", published.id
    )  # fmt: skip
    with pytest.raises(crypto.Malformed):
        await exposed.emit("bad word!")
    exposed.close()
    exposed.close()  # idempotent
    assert exposed.closed


# -- built-in objects ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def web_service(
    network: MemoryNetwork, handler: Callable[[Request], Any], host: str = "svc"
) -> AsyncIterator[list[Request]]:
    """A web service on the memory network at ``http://svc:80``; yields the requests."""
    seen: list[Request] = []

    async def handle(request: Request) -> Response:
        seen.append(request)
        result: Response = await handler(request)
        return result

    server = Server(handle)
    listeners = await network.open_listeners(host, 80)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        yield seen
        nursery.cancel_scope.cancel()


async def hello(request: Request) -> Response:
    if request.path.endswith("/slow"):
        await trio.sleep(3600)
    body = f"{request.method} {request.target} {request.body.decode()}".encode()
    return Response(201, [("content-type", "text/x-hello"), ("x-extra", "1")], body)


def network_of(factory: NodeFactory) -> MemoryNetwork:
    assert isinstance(factory.network, MemoryNetwork)
    return factory.network


async def test_a_forward_object_calls_a_web_service(
    memory_nodes: NodeFactory,
    line: tuple[Node, Node, Node],
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _, c = line
    async with web_service(network_of(memory_nodes), hello) as seen:
        spec = ObjectSpec("web", "forward", "http://svc:80/base/", open=True)
        await c.objects.expose_builtin(spec)
        with trio.fail_after(120):
            reply = await a.call(c.node_id, "web", "POST /hi?x=1", b"body", ct="text/plain")
            assert (reply.status, reply.body, reply.ct) == (
                201, b"POST /base/hi?x=1 body", "text/x-hello"
            )  # fmt: skip
            request = seen[-1]
            assert request.header("ptth-caller") == a.node_id.text
            assert request.header("content-type") == "text/plain"
            assert request.header("via") == f"1.1 ptth-{c.node_id.short}"
            assert (await a.call(c.node_id, "web", "GET")).body == b"GET /base/ "
            for op, words in [
                ("GET /../etc/passwd", "steps out of the object's base URL"),
                ("GET /a/%2e%2E/b", "steps out of the object's base URL"),
                ("GET /a%2fb", "steps out of the object's base URL"),
                ("GET //elsewhere.example/x", ""),
                ("get /", "the operation is an HTTP method and a path"),
                ("GET x", "the operation is an HTTP method and a path"),
            ]:
                if not words:  # stays on the service's origin: a path there
                    reply = await a.call(c.node_id, "web", op)
                    assert reply.body == b"GET /base//elsewhere.example/x "
                    continue
                with pytest.raises(CallFailed) as refused:
                    await a.call(c.node_id, "web", op)
                assert refused.value.status == 400, op
                assert words in refused.value.why, op
            monkeypatch.setattr(node._objects, "FORWARD_TIMEOUT", 2.0)
            with pytest.raises(CallFailed) as slow:
                await a.call(c.node_id, "web", "GET /slow")
            assert (slow.value.status, slow.value.why) == (
                504, "the web service of object 'web' did not answer within 2 s"
            )  # fmt: skip
    with trio.fail_after(120), pytest.raises(CallFailed) as down:
        await a.call(c.node_id, "web", "GET /")
    assert down.value.status == 502
    assert down.value.why.startswith("cannot reach the web service of object 'web'")


async def test_built_in_objects_are_kept_across_restarts(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    running = await memory_nodes.start("c")
    c = running.node
    await c.objects.expose_builtin(ObjectSpec("in", "inbox"))
    await c.objects.expose_builtin(ObjectSpec("news", "topic", "news.x", open=True))
    with pytest.raises(Exception, match="object 'in' is exposed already"):
        await c.objects.expose_builtin(ObjectSpec("in", "inbox"))
    with pytest.raises(Exception, match="no named subscription 'nope' here"):
        await c.objects.expose_builtin(ObjectSpec("q", "queue", "nope"))
    await running.stop()
    c = await memory_nodes.open("c")
    kept = {exposed.name: exposed.spec for exposed in c.objects}
    assert kept == {
        "in": ObjectSpec("in", "inbox"),
        "news": ObjectSpec("news", "topic", "news.x", open=True),
    }
    assert await c.objects.remove("in")
    assert not await c.objects.remove("in")
    assert (c.data.path / "objects.json").read_text().count('"name"') == 1


async def test_a_bad_objects_file_stops_the_start(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    path = memory_nodes.tmp_path / "c"
    path.mkdir()
    (path / "objects.json").write_text('{"objects": [{"name": "x", "kind": "bomb"}]}')
    # Read before anything starts (as policy.json is): a NodeError, nothing running.
    with pytest.raises(NodeError) as failed:
        async with memory_nodes.session("c"):
            pass  # pragma: no cover - refused before
    assert str(failed.value) == (
        f"{path / 'objects.json'}: object kind 'bomb' is not one of forward, inbox, topic, "
        "queue; fix or remove it"
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (("x", "bomb", None), "object kind 'bomb' is not one of"),
        (("x", "inbox", "y"), "an inbox object stands for nothing else"),
        (("x", "forward", None), "a forward object needs its base URL"),
        (("x", "forward", "ftp://h/"), "is not an http(s) URL with a host"),
        (("x", "forward", "http://h/?q=1"), "may have no query, fragment or user"),
        (("x", "topic", "a.*"), "is not one of"),
        (("x.y", "inbox", None), "object name 'x.y' is not"),
    ],
)
def test_bad_object_specs(spec: tuple[str, str, str | None], words: str) -> None:
    with pytest.raises(crypto.Malformed, match=words.replace("(", r"\(").replace(")", r"\)")):
        ObjectSpec(*spec)


async def test_inbox_topic_and_queue_objects(
    line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    await c.objects.expose_builtin(ObjectSpec("in", "inbox", open=True))
    await c.objects.expose_builtin(ObjectSpec("news", "topic", "news.x", open=True))
    async with c.subscribe("work.#", name="jobs"):
        pass
    await c.objects.expose_builtin(ObjectSpec("jobs", "queue", "jobs", open=True))
    with trio.fail_after(120):
        reply = await a.call(c.node_id, "in", "send", b"hello", ct="text/plain")
        (message,) = [m async for m in c.inbox(follow=False)]
        assert (message.src, message.body, message.ct) == (a.node_id, b"hello", "text/plain")
        assert reply.body == message.id.hex().encode()
        with pytest.raises(CallFailed) as wrong:
            await a.call(c.node_id, "in", "get")
        assert wrong.value.why == (
            "object 'in' (send to the inbox) takes operation 'send', not 'get'"
        )

        async with a.subscribe("news.#") as subscription:
            await learned(c, "news.x")
            reply = await a.call(c.node_id, "news", "publish", b"extra")
            publication = await subscription.get()
        assert (publication.origin, publication.topic, publication.body) == (
            c.node_id, "news.x", b"extra"
        )  # fmt: skip
        assert reply.body == publication.id.hex().encode()

        for body in (b"first", b"second"):
            await c.publish("work.1", body)
        got = [(await a.call(c.node_id, "jobs", "get")).body for _ in range(2)]
        assert got == [b"first", b"second"]
        empty = await a.call(c.node_id, "jobs", "get")
        assert (empty.status, empty.body) == (204, b"")
    assert c.store.subscription_pending("jobs") == []


# -- capability URLs -----------------------------------------------------------------------


def visitor(network: MemoryNetwork) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=make_transport(network), timeout=None)


async def test_capability_urls(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = network_of(memory_nodes)
    c = await memory_nodes.open("c")
    async with web_service(network, hello), visitor(network) as client:
        await c.objects.expose_builtin(ObjectSpec("web", "forward", "http://svc:80/base"))
        await c.objects.expose_builtin(ObjectSpec("in", "inbox"))
        web = await c.objects.mint_url("web")
        (url,) = web.urls
        secret = url.rpartition("/c/")[2]
        assert url == f"{c.endpoints[0]}/c/{secret}"
        assert len(secret) == 43  # 32 bytes of base64url
        response = await client.put(
            f"{url}/a/b?x=1",
            content=b"data",
            headers={"ptth-caller": "forged", "connection": "x-drop", "x-drop": "1"},
        )
        assert (response.status_code, response.text) == (201, "PUT /base/a/b?x=1 data")
        assert response.headers["x-extra"] == "1"
        assert response.headers["content-type"] == "text/x-hello"
        escape = await client.get(f"{url}/%2e%2e/secret")
        assert escape.status_code == 400
        assert "steps out of the object's base URL" in escape.text

        minted = await c.objects.mint_url("in")
        inbox = minted.urls[0]
        sent = await client.post(inbox, content=b"by url", headers={"ptth-operation": "send"})
        assert sent.status_code == 200, sent.text
        (message,) = [m async for m in c.inbox(follow=False)]
        assert (message.src, message.body) == (c.node_id, b"by url")
        for method, headers, status, words in [
            ("POST", {}, 400, "say which operation with header ptth-operation: OP"),
            ("GET", {}, 405, "call the object with POST"),
            ("POST", {"ptth-operation": "get"}, 400, "takes operation 'send', not 'get'"),
        ]:
            answer = await client.request(method, inbox, headers=headers)
            assert (answer.status_code, words in answer.text) == (status, True), answer.text
        assert (await client.post(inbox + "/x")).status_code == 404

        for bad in (f"{c.endpoints[0]}/c/{'A' * 43}", f"{c.endpoints[0]}/c/short"):
            unknown = await client.get(bad)
            assert unknown.status_code == 404
            assert unknown.text == "no such capability URL (unknown, or revoked)\n"
        listed = {item.id: item for item in await c.objects.urls()}
        assert set(listed) == {web.id, minted.id}
        assert listed[web.id].revoked is None
        assert await c.objects.revoke_url(web.id)
        assert not await c.objects.revoke_url(web.id)
        assert (await client.get(url)).status_code == 404
        revoked = {item.id: item.revoked for item in await c.objects.urls()}
        assert revoked[web.id] is not None
        assert revoked[minted.id] is None
        # Removing an object revokes its URLs: exposed again, the old URL stays dead.
        assert await c.objects.remove("in")
        await c.objects.expose_builtin(ObjectSpec("in", "inbox"))
        again = await client.post(inbox, headers={"ptth-operation": "send"})
        assert again.status_code == 404
        with pytest.raises(Exception, match="no object 'nope' is exposed here"):
            await c.objects.mint_url("nope")


async def test_a_capability_url_through_a_relay(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = network_of(memory_nodes)
    relay = await memory_nodes.open("relay")
    nat = await memory_nodes.open("nat", relays=(relay.address_token(),))
    (link,) = nat.links
    with trio.fail_after(60):
        await link.wait_connected(1)
    async with web_service(network, hello), visitor(network) as client:
        await nat.objects.expose_builtin(ObjectSpec("web", "forward", "http://svc:80/"))
        relayed, direct = (await nat.objects.mint_url("web")).urls
        assert relayed.startswith(f"{relay.endpoints[0]}/n/{nat.node_id.text}/c/")
        assert direct.startswith(nat.endpoints[-1])
        response = await client.get(relayed + "/through?relay=1")
        assert (response.status_code, response.text) == (201, "GET /through?relay=1 ")
        assert f"ptth-{relay.node_id.short}" in response.headers["via"]


async def test_calls_to_a_node_behind_a_relay(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await memory_nodes.open("nat", relays=(relay.address_token(),))
    (link,) = nat.links
    caller = await memory_nodes.open("caller")
    await peer(caller, relay)
    with trio.fail_after(60):
        await link.wait_connected(1)
    nat.expose("echo", echo, open=True)
    with trio.fail_after(120):
        reply = await caller.call(nat.node_id, "echo", "x", b"behind nat")
    assert reply.body == b"BEHIND NAT"


# -- the local API -----------------------------------------------------------------------


async def test_the_local_api(
    memory_nodes: NodeFactory, line: tuple[Node, Node, Node], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, c = line
    c.expose("echo", echo, open=True)

    async def never(request: CallRequest) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    c.expose("never", never, open=True)
    assert a.api_url is not None
    api = a.api_url
    target = {"to": c.node_id.text, "object": "echo", "op": "shout"}
    async with visitor(network_of(memory_nodes)) as client:
        client.headers["authorization"] = f"Bearer {a.api_token}"
        with trio.fail_after(120):
            reply = await client.post(f"{api}/call", params=target, content=b"hi")
            assert reply.status_code == 200
            assert reply.json() == {"status": 200, "ct": "text/plain", "why": None, "body": "HI"}
            missing = await client.post(f"{api}/call", params={**target, "object": "nope"})
            assert missing.status_code == 200
            assert missing.json()["status"] == 404
            assert missing.json()["error"] == (
                f"{c.node_id.short}/nope: 404 no object 'nope' on {c.node_id.short}"
            )
            slow = {**target, "object": "never", "timeout": "3"}
            timed_out = await client.post(f"{api}/call", params=slow)
            assert timed_out.status_code == 504
            assert "no reply from" in timed_out.json()["error"]
        for params, headers, status, words in [
            ({"to": c.node_id.text}, {}, 400, "say what to call, once each"),
            ({**target, "timeout": "soon"}, {}, 400, "timeout must be a positive number"),
            ({**target, "to": "x"}, {}, 400, "a node id is 52 characters"),
            ({**target, "op": " "}, {}, 400, "call op ' ' is not"),
            (target, {"ptth-cap": "nonsense"}, 400, "not a capability token"),
        ]:
            answer = await client.post(f"{api}/call", params=params, headers=headers)
            assert (answer.status_code, words in answer.json()["error"]) == (status, True), (
                answer.text
            )

        # c's objects, through c's API.
        assert c.api_url is not None
        api = c.api_url
        client.headers["authorization"] = f"Bearer {c.api_token}"
        assert (await client.get(f"{api}/objects")).json() == [
            {"name": n, "kind": "program", "target": None, "open": True, "saved": False}
            for n in ("echo", "never")
        ]
        for body, status, words in [
            (b"[", 400, "bad request body"),
            (b"[]", 400, "bad request body: not a JSON object"),
            (b'{"name": "x", "kind": "bomb"}', 400, "object kind 'bomb' is not one of"),
            (b'{"name": "x", "kind": "inbox", "size": 1}', 400, "nothing else"),
            (b'{"name": "echo", "kind": "inbox"}', 409, "object 'echo' is exposed already"),
            (b'{"name": "q", "kind": "queue", "target": "no"}', 404, "no named subscription"),
        ]:
            answer = await client.post(f"{api}/objects", content=body)
            assert (answer.status_code, words in answer.json()["error"]) == (status, True), (
                answer.text
            )
        made = await client.post(f"{api}/objects", json={"name": "in", "kind": "inbox"})
        assert made.json() == {
            "name": "in", "kind": "inbox", "target": None, "open": False, "saved": True
        }  # fmt: skip
        minted = (await client.post(f"{api}/cap-urls", json={"object": "in"})).json()
        assert set(minted) == {"id", "object", "created", "revoked", "urls"}
        (listed,) = (await client.get(f"{api}/cap-urls")).json()
        assert listed == {k: v for k, v in minted.items() if k != "urls"}
        unknown = await client.post(f"{api}/cap-urls", json={"object": "nope"})
        assert (unknown.status_code, unknown.json()["error"]) == (
            404, "no object 'nope' is exposed here"
        )  # fmt: skip
        assert (await client.post(f"{api}/cap-urls", json={})).status_code == 400
        assert (await client.delete(f"{api}/cap-urls/{minted['id']}")).json() == {
            "id": minted["id"], "revoked": True
        }  # fmt: skip
        assert (await client.delete(f"{api}/cap-urls/{minted['id']}")).status_code == 404
        assert (await client.delete(f"{api}/objects/in")).json() == {"name": "in", "removed": True}
        assert (await client.delete(f"{api}/objects/in")).status_code == 404
        assert (await client.put(f"{api}/objects")).status_code == 404
