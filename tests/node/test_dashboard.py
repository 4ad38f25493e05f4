"""The web dashboard without a browser (node/_dashboard.py): the pages and their headers,
404 and 405, path traversal refused, the pages' own rules (no inline code, no markup
from data), the overview with and without the token, its stream changing when a message
arrives, one store read per second however many pages watch, the throughput history,
recent frames with their trace, and ``ptth dashboard``.

The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import urllib.parse
import webbrowser
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import crypto
import mesh
from node import MemoryNetwork, Node, Request, make_transport
from node._dashboard import (
    CONTENT_SECURITY_POLICY,
    HISTORY,
    OVERVIEW_PATH,
    RECENT,
    ROUTES_SHOWN,
    SAMPLE_INTERVAL,
    read_files,
)
from tests.helpers import NodeFactory, delivered, messages
from tests.node.test_cli import cli_fails, cli_ok, ptth

# -- the pages ----------------------------------------------------------------------------

PAGES = {
    "/": ("text/html; charset=utf-8", b"<title>ptth \xc2\xb7 overview</title>"),
    "/chirp": ("text/html; charset=utf-8", b"<title>ptth \xc2\xb7 chirp</title>"),
    "/dashboard.css": ("text/css; charset=utf-8", b"prefers-color-scheme: dark"),
    "/dashboard.js": ("text/javascript; charset=utf-8", b"/api/v1/overview"),
    "/chirp.js": ("text/javascript; charset=utf-8", b"/api/v1/chirp/timeline"),
    "/common.js": ("text/javascript; charset=utf-8", b"history.replaceState"),
    "/favicon.svg": ("image/svg+xml", b"<svg"),
}


def page_request(path: str, method: str = "GET") -> Request:
    return Request(method, path, [("host", "127.0.0.1")], b"", "127.0.0.1:5000")


def api_root(node: Node) -> str:
    assert node.api_url is not None
    return node.api_url.removesuffix("/api/v1")


@contextlib.asynccontextmanager
async def browser_client(network: MemoryNetwork) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=make_transport(network), timeout=None) as client:
        yield client


async def test_pages_are_served_with_their_types_and_a_strict_policy(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    async with browser_client(network) as client:
        for path, (content_type, excerpt) in PAGES.items():
            response = await client.get(api_root(a) + path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"] == content_type
            assert excerpt in response.content, path
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cache-control"] == "no-cache"
        head = await client.head(api_root(a) + "/")
        assert head.status_code == 200
        assert head.headers["content-type"] == "text/html; charset=utf-8"
        assert head.content == b""
    policy = dict(
        part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";") if part.strip()
    )
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/%2e%2e/",
        "/..%2fpyproject.toml",
        "/dashboard/index.html",
        "//etc/passwd",
        "/index.html/..",
        "/./index.html",
        "/INDEX.HTML",
        "/_dashboard.py",
        "/__init__.py",
        "/chirp/",
        "/nothing",
        "/.",
    ],
)
async def test_nothing_but_the_dashboards_files_is_served(
    pair: tuple[Node, Node, MemoryNetwork], path: str
) -> None:
    a, _, _ = pair
    response = await a.dashboard.handle(page_request(path))
    assert response.status == 404
    assert f"no such resource: {path}".encode() in response.body
    assert ("x-content-type-options", "nosniff") in response.headers


async def test_traversal_through_the_api_listener_is_404(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    async with browser_client(network) as client:
        for path in ("/%2e%2e/pyproject.toml", "/%2E%2E/%2E%2E/etc/passwd", "/node/_node.py"):
            response = await client.get(api_root(a) + path)
            assert response.status_code == 404, path
            assert "no such resource" in response.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_pages_take_get_and_head_only(
    pair: tuple[Node, Node, MemoryNetwork], method: str
) -> None:
    a, _, _ = pair
    for path in ("/", "/chirp", "/nothing"):
        response = await a.dashboard.handle(page_request(path, method))
        assert response.status == 405
        assert ("allow", "GET, HEAD") in response.headers
        assert method.encode() in response.body


async def test_the_public_listener_serves_no_dashboard(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    async with browser_client(network) as client:
        for path in ("/", "/chirp", "/dashboard.js", OVERVIEW_PATH):
            response = await client.get(a.endpoints[-1] + path)
            assert response.status_code == 404, path
            assert b"<html" not in response.content


def test_the_package_holds_the_pages_and_they_keep_the_policy() -> None:
    files = read_files()
    assert set(files) >= {"index.html", "chirp.html", "dashboard.css", "dashboard.js"}
    assert {"chirp.js", "common.js", "favicon.svg"} <= set(files)
    for name in ("index.html", "chirp.html"):
        html = files[name].decode("utf-8")
        # Everything a page loads is one of the files, by an absolute path.
        for reference in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert reference in ("/", "/chirp") or reference[1:] in files, (name, reference)
        # Nothing the policy would refuse: no inline script, handler or style.
        for script in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in script, (name, script)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), name
        assert not re.search(r"\son[a-z]+\s*=", html), name
        assert "style=" not in html, name
        assert "<style" not in html, name
        assert "javascript:" not in html, name
    for name in ("common.js", "dashboard.js", "chirp.js"):
        script = files[name].decode("utf-8")
        # Data from the network becomes text nodes, never markup.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, (name, sink)


# -- the overview ----------------------------------------------------------------------


async def test_the_overview_needs_the_token(pair: tuple[Node, Node, MemoryNetwork]) -> None:
    a, _, network = pair
    url = api_root(a) + OVERVIEW_PATH
    async with browser_client(network) as client:
        response = await client.get(url)
        assert response.status_code == 401
        assert "bearer token" in response.json()["error"]
        wrong = await client.get(url, headers={"authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        wrong = await client.get(url, params={"access_token": "wrong", "follow": "1"})
        assert wrong.status_code == 401
        response = await client.get(url, headers={"authorization": f"Bearer {a.api_token}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        overview = response.json()
        # As an EventSource must: the token in the query of a GET.
        response = await client.get(url, params={"access_token": a.api_token})
        assert response.status_code == 200
        posted = await client.post(url, headers={"authorization": f"Bearer {a.api_token}"})
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET"
    assert overview["node"] == a.node_id.text
    assert overview["name"] == "a"
    assert overview["endpoints"] == list(a.endpoints)
    assert overview["neighbours"]["count"] == 1
    (link,) = overview["neighbours"]["rows"]
    assert link["node"] == pair[1].node_id.text
    assert link["name"] == "b"
    assert set(overview) >= {
        "uptime",
        "routes",
        "queues",
        "subscriptions",
        "attachments",
        "relaying",
        "counters",
        "throughput",
        "recent",
        "rates",
        "queued",
        "inbox",
    }


async def test_the_overview_answers_only_this_machine(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, _ = pair
    headers = [("authorization", f"Bearer {a.api_token}")]
    stranger = Request("GET", OVERVIEW_PATH, headers, b"", "203.0.113.9:40000")
    assert (await a.dashboard.overview(stranger)).status == 403
    relayed = Request("GET", OVERVIEW_PATH, headers, b"", "127.0.0.1:1", relayed=True)
    assert (await a.dashboard.overview(relayed)).status == 403
    local = Request("GET", OVERVIEW_PATH, headers, b"", "127.0.0.1:1")
    assert (await a.dashboard.overview(local)).status == 200


async def overviews(client: httpx.AsyncClient, node: Node) -> AsyncGenerator[dict[str, Any], None]:
    """The ``overview`` events of ``node``'s stream, as they come."""
    url = api_root(node) + OVERVIEW_PATH
    params = {"follow": "1", "access_token": node.api_token}
    async with client.stream("GET", url, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if event.get("event") == "overview":
                    yield json.loads(event["data"])
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value


async def test_the_stream_changes_when_a_message_arrives(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, network = pair
    async with browser_client(network) as client:
        stream = overviews(client, a)
        first = await anext(stream)
        assert first["node"] == a.node_id.text
        assert first["recent"]["received"] == []
        with trio.fail_after(60):
            sent = await b.send(a.node_id, b"hello dashboard")
            async for overview in stream:
                received = overview["recent"]["received"]
                if received:
                    break
        await stream.aclose()
    (frame,) = [f for f in received if f["kind"] == "msg"]
    assert frame["id"] == sent.id.hex()
    assert frame["src"] == b.node_id.text
    assert frame["from"] == b.node_id.text
    assert frame["what"] == "delivered"
    assert frame["hops"] == 1
    assert frame["size"] == len(b"hello dashboard")
    assert overview["counters"]["frames_accepted"] > first["counters"]["frames_accepted"]
    assert overview["inbox"]["frames"] == 1


async def test_a_store_that_fails_is_a_503_and_a_problem_event(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    calls = 0

    def broken() -> mesh.StoreStatistics:
        nonlocal calls
        calls += 1
        raise mesh.MeshError("disk I/O error")

    a.store.statistics = broken  # type: ignore[method-assign]
    url = api_root(a) + OVERVIEW_PATH
    async with browser_client(network) as client:
        response = await client.get(url, headers={"authorization": f"Bearer {a.api_token}"})
        assert response.status_code == 503
        assert "disk I/O error" in response.json()["error"]
        params = {"follow": "1", "access_token": a.api_token}
        async with client.stream("GET", url, params=params) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            async for line in lines:
                if line == "event: problem":
                    break
            data = json.loads((await anext(lines)).removeprefix("data: "))
    assert "disk I/O error" in data["error"]
    assert calls == 1  # the failure is kept for a second, not asked again at once


async def test_many_pages_share_one_store_read_a_second(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, network = pair
    seconds = 20
    counts = [0] * 6

    async def watch(index: int) -> None:
        async for _ in overviews(client, a):
            counts[index] += 1

    async with browser_client(network) as client:
        before = a.dashboard.reads
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for index in range(len(counts)):
                    nursery.start_soon(watch, index)
    reads = a.dashboard.reads - before
    assert all(counts), counts  # each page got the overview
    assert 1 <= reads <= seconds + 1, reads


async def test_store_reads_run_off_the_event_loop(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    await delivered(a, b, b"so that there is a trace to read")
    inside = 0
    reads: list[str] = []

    def through(run: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(function: Callable[[], Any]) -> Any:
            nonlocal inside
            inside += 1
            try:
                return await run(function)
            finally:
                inside -= 1

        return wrapped

    def watched(name: str) -> None:
        method = getattr(a.store, name)

        @functools.wraps(method)
        def check(*args: Any, **kwargs: Any) -> Any:
            assert inside, f"store.{name} was called on the event loop"
            reads.append(name)
            return method(*args, **kwargs)

        setattr(a.store, name, check)

    a.run_blocking = through(a.run_blocking)
    a.run_store = through(a.run_store)
    a.mesh.run_blocking = through(a.mesh.run_blocking)
    a.mesh.run_store = through(a.mesh.run_store)
    for name in ("statistics", "trace", "queues", "subscriptions"):
        watched(name)
    await a.dashboard.read()
    assert {"statistics", "trace", "queues", "subscriptions"} <= set(reads)


async def test_the_throughput_history_counts_frames_and_stays_bounded(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    await trio.sleep(SAMPLE_INTERVAL * 2)
    before = a.statistics.frames_accepted
    frames = [b.new_frame(a.node_id, bytes([i])) for i in range(20)]
    await b.send_sealed([(frame, frame.seal(b.identity)) for frame in frames])
    with trio.fail_after(60):
        await messages(a, len(frames))
    assert a.statistics.frames_accepted >= before + len(frames)
    await trio.sleep(SAMPLE_INTERVAL * 2)  # two more samples: the last one counts them all
    points = a.dashboard.throughput()
    assert points
    # The rates, times the sampling interval, add up to what the counters moved.
    counted = sum(rate * SAMPLE_INTERVAL for _, rate, _ in points)
    assert counted == pytest.approx(a.statistics.frames_accepted, abs=0.5)
    times = [at for at, _, _ in points]
    assert times == sorted(times)
    assert all(
        later - earlier == pytest.approx(SAMPLE_INTERVAL * 1000, abs=1)
        for earlier, later in itertools.pairwise(times)
    )
    outs = sum(rate * SAMPLE_INTERVAL for _, _, rate in points)
    assert outs == pytest.approx(a.statistics.sent_accepted + a.statistics.sent_duplicate, abs=0.5)
    await trio.sleep(HISTORY * 1.5)
    assert len(a.dashboard.throughput()) <= HISTORY / SAMPLE_INTERVAL


async def test_recent_frames_show_their_trace_and_stay_bounded(
    pair: tuple[Node, Node, MemoryNetwork], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, _ = pair
    trace = await delivered(a, b, b"traced")
    nobody = crypto.Identity.generate().node_id
    held = await a.send(nobody, b"no route")
    published = await a.publish("news.tech", b"story")
    recent = (await a.dashboard.read())["recent"]
    newest, middle, oldest = recent["sent"][:3]
    assert newest == {
        "id": published.id.hex(),
        "kind": "pub",
        "to": "news.tech",
        "size": 5,
        "at": newest["at"],
        "state": "published",
        "hops": None,
        "next_hop": None,
        "by": None,
        "why": None,
    }
    assert middle["id"] == held.id.hex()
    assert middle["state"] == "held"
    assert middle["to"] == nobody.text
    assert oldest["id"] == trace.id.hex()
    assert oldest["state"] == "delivered"
    assert oldest["hops"] == 1
    assert oldest["to"] == b.node_id.text
    # b got the message; a got b's receipt.
    assert [f["what"] for f in (await b.dashboard.read())["recent"]["received"]][-1:] == [
        "delivered"
    ]
    assert "receipt" in [f["what"] for f in recent["received"]]
    for index in range(RECENT + 10):
        await a.send(nobody, f"{index}".encode())
    recent = (await a.dashboard.read())["recent"]
    assert len(recent["sent"]) == RECENT
    assert recent["sent"][0]["size"] == len(f"{RECENT + 9}")


async def test_routes_are_bounded(memory_nodes: NodeFactory) -> None:
    a = await memory_nodes.open("a")
    rows = [
        {"destination": str(n), "next_hop": "x", "hops": 2, "age": 0, "expires_in": 1}
        for n in range(ROUTES_SHOWN * 3)
    ]
    a.routes = lambda: rows  # type: ignore[method-assign]
    overview = await a.dashboard.read()
    assert overview["routes"]["count"] == ROUTES_SHOWN * 3
    assert overview["routes"]["rows"] == rows[:ROUTES_SHOWN]


# -- ptth dashboard -------------------------------------------------------------------------


async def test_ptth_dashboard_prints_the_link(
    tcp_nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await tcp_nodes.open("a")
    assert a.api_url is not None
    root = a.api_url.removesuffix("/api/v1")
    assert await cli_ok(a, "dashboard") == [f"{root}/#token={a.api_token}"]
    assert await cli_ok(a, "dashboard", "--chirp") == [f"{root}/chirp#token={a.api_token}"]
    opened: list[str] = []

    def open_url(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", open_url)
    assert await cli_ok(a, "dashboard", "--open") == opened
    # The link works: the page, then the overview with the token it carries.
    parts = urllib.parse.urlsplit(opened[0])
    token = urllib.parse.parse_qs(parts.fragment)["token"][0]
    async with httpx.AsyncClient(trust_env=False) as client:
        page = await client.get(f"{root}/")
        overview = await client.get(
            f"{root}{OVERVIEW_PATH}", headers={"authorization": f"Bearer {token}"}
        )
    assert page.status_code == 200
    assert overview.json()["node"] == a.node_id.text


async def test_ptth_dashboard_refusals(
    tcp_nodes: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_only = await tcp_nodes.open("s", api_listen=None)
    result = await cli_fails(socket_only, "dashboard")
    assert "--api-listen" in result.err
    monkeypatch.setattr(webbrowser, "open", lambda url: False)
    a = await tcp_nodes.open("a")
    result = await cli_fails(a, "dashboard", "--open")
    assert result.out.startswith("http://127.0.0.1:")  # the link, to open by hand
    assert "found no browser" in result.err
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    result = await trio.to_thread.run_sync(
        functools.partial(ptth, "--data-dir", nobody, "dashboard")
    )
    assert result.status == 1
    assert "no node is running" in result.err
