"""The local API on listeners of its own: a Unix socket in the data directory and a
loopback TCP port, never the public listener; the CLI finds it whatever ``--listen``
says; ``--api-listen`` refuses an address that faces the network. The end of the file
runs a node on a non-loopback address in a network namespace and manages it with the
CLI (skips without root)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import trio

from node import MemoryNetwork, Node, NodeError, make_transport
from node._cli import run
from tests.helpers import NodeFactory, delivered, peer
from tests.node.test_nat import OUT_IP, Nat, ptth, run_node
from tests.node.test_nat import nat as nat  # the fixture (namespaces, skips without root)


def cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run([str(a) for a in argv], out=out, err=err, stdin=io.StringIO(""))
    return status, out.getvalue(), err.getvalue()


async def test_the_api_is_not_served_on_the_public_listener(
    pair: tuple[Node, Node, MemoryNetwork],
) -> None:
    a, _, network = pair
    auth = {"authorization": f"Bearer {a.api_token}"}
    async with httpx.AsyncClient(transport=make_transport(network)) as client:
        public = await client.get(f"{a.endpoints[-1]}/api/v1/status", headers=auth)
        assert public.status_code == 404
        assert "not served on the node's public address" in public.text
        assert a.api_url is not None
        assert a.api_url.startswith("http://127.0.0.1:")
        assert not a.api_url.startswith(a.endpoints[-1])
        local = await client.get(f"{a.api_url}/status", headers=auth)
        assert local.status_code == 200
        assert local.json()["node"] == a.node_id.text
        # The API listener serves the API, /metrics and the dashboard, nothing of the
        # fabric: frames go to the public address only.
        base = a.api_url.removesuffix("/api/v1")
        address = await client.get(f"{base}/ptth/v1/address")
        assert address.status_code == 404


@pytest.mark.parametrize("address", ["198.18.0.1:0", "0.0.0.0:0", "[::]:0", "example.org:0"])
async def test_an_api_listener_facing_the_network_is_refused(
    memory_nodes: NodeFactory, address: str
) -> None:
    with pytest.raises(NodeError, match="is not a loopback address"):
        await memory_nodes.open("a", api_listen=address)


async def test_a_bad_api_or_metrics_address_fails_before_anything_starts(
    memory_nodes: NodeFactory,
) -> None:
    with pytest.raises(NodeError, match=r"--api-listen '127\.0\.0\.1' is not HOST:PORT"):
        await memory_nodes.open("a", api_listen="127.0.0.1")
    with pytest.raises(NodeError, match=r"--metrics-listen 'x:y' is not HOST:PORT"):
        await memory_nodes.open("b", metrics_listen="x:y")


async def test_no_tcp_api_listener(memory_nodes: NodeFactory) -> None:
    node = await memory_nodes.open("a", api_listen=None)
    assert node.api_url is None
    info = json.loads((node.data.path / "api.json").read_text())
    assert "url" not in info  # and no socket either: an in-memory node has none


async def test_the_api_listener_port_is_taken(memory_nodes: NodeFactory) -> None:
    await memory_nodes.open("a", api_listen="127.0.0.1:9000")
    with pytest.raises(NodeError, match=r"cannot listen on 127\.0\.0\.1:9000 \(--api-listen\)"):
        await memory_nodes.open("b", api_listen="127.0.0.1:9000")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0.0.0.0:8471", "is not a loopback address"),
        ("198.18.0.1:8471", "is not a loopback address"),
        ("localhost", "is not HOST:PORT"),
    ],
)
def test_cli_refuses_an_api_listener_facing_the_network(
    tmp_path: Path, value: str, words: str
) -> None:
    status, out, err = cli("--data-dir", tmp_path / "n", "run", "--api-listen", value)
    assert status == 2
    assert out == ""
    assert words in err.strip().splitlines()[-1]


async def test_cli_through_the_socket_alone(tcp_nodes: NodeFactory) -> None:
    """``--api-listen none``: the CLI manages the node through DIR/api.sock."""
    node = await tcp_nodes.open("a", api_listen=None)
    assert node.api_url is None
    assert node.api_socket is not None
    info = json.loads((node.data.path / "api.json").read_text())
    assert info == {"pid": info["pid"], "node": node.node_id.text, "socket": str(node.api_socket)}
    status, out, err = await trio_cli("--data-dir", node.data.path, "status", "--json")
    assert status == 0, err
    assert json.loads(out)["node"] == node.node_id.text


async def trio_cli(*argv: str | Path) -> tuple[int, str, str]:
    return await trio.to_thread.run_sync(lambda: cli(*argv))


async def test_metrics_listener_serves_metrics_without_a_token(
    memory_nodes: NodeFactory,
) -> None:
    a = await memory_nodes.open("a", metrics_listen="metrics.a:9100")
    b = await memory_nodes.open("b")
    await peer(a, b)
    await delivered(a, b, b"counted")
    assert a.metrics_url == "http://metrics.a:9100/metrics"
    network = memory_nodes.network
    assert isinstance(network, MemoryNetwork)
    async with httpx.AsyncClient(transport=make_transport(network)) as client:
        scraped = await client.get(a.metrics_url)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "ptth_" in scraped.text
        other = await client.get("http://metrics.a:9100/api/v1/status")
        assert other.status_code == 404
        assert "only /metrics" in other.text
        # On the API listener /metrics needs the token, like the API.
        assert a.api_url is not None
        base = a.api_url.removesuffix("/api/v1")
        assert (await client.get(f"{base}/metrics")).status_code == 401
        token = {"authorization": f"Bearer {a.api_token}"}
        assert (await client.get(f"{base}/metrics", headers=token)).status_code == 200
    info = json.loads((a.data.path / "api.json").read_text())
    assert info["metrics"] == a.metrics_url


def test_a_node_on_a_lan_address_is_managed_by_the_cli(nat: Nat, tmp_path: Path) -> None:
    """The issue's case: ``ptth run --listen`` on a non-loopback address (here in a
    network namespace of the test's own) and every CLI command works: the CLI reaches the
    API through its own listener, not the public one."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with (
        run_node(nat.out, a_dir, "--listen", f"{OUT_IP}:7101") as a_token,
        run_node(nat.out, b_dir, "--listen", f"{OUT_IP}:7102") as b_token,
    ):
        status = ptth(nat.out, a_dir, "status", "--json")
        assert status.returncode == 0, status.stderr
        overview = json.loads(status.stdout)
        assert overview["endpoints"] == [f"http://{OUT_IP}:7101"]
        for data_dir, token in ((a_dir, b_token), (b_dir, a_token)):
            added = ptth(nat.out, data_dir, "peer", "add", token)
            assert added.returncode == 0, added.stderr
        b_id = ptth(nat.out, b_dir, "id").stdout.strip()
        sent = ptth(nat.out, a_dir, "send", b_id, "over the LAN", "--wait")
        assert sent.returncode == 0, sent.stderr
        inbox = ptth(nat.out, b_dir, "inbox", "--json")
        assert inbox.returncode == 0, inbox.stderr
        assert [json.loads(line)["body"] for line in inbox.stdout.splitlines()] == ["over the LAN"]
        for command in ("routes", "queues", "subscriptions"):
            done = ptth(nat.out, a_dir, command)
            assert done.returncode == 0, (command, done.stderr)
        # Without the Unix socket too: the loopback TCP listener in the namespace.
        (a_dir / "api.sock").unlink()
        status = ptth(nat.out, a_dir, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["node"] == overview["node"]
