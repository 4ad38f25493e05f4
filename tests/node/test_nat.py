"""A real NAT: Linux network namespaces and an iptables MASQUERADE rule.

    ns "out"     198.51.100.1  relay (port 8470) and a sender (port 8471)
    ns "router"  198.51.100.2 | 192.0.2.1   forwards, MASQUERADEs towards "out"
    ns "in"      192.0.2.2     a node behind the NAT, attached to the relay

"out" has no route to 192.0.2.0/24: the inside node cannot be dialled; it dials out
through the NAT and the relay sends it requests back. Addresses are the documentation
ranges (RFC 5737), on the test's own namespaces only. Processes are waited on through
the lines they print, never with sleeps. Skips, with the reason, without root or tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

OUT_IP, ROUTER_OUT_IP, ROUTER_IN_IP, IN_IP = (
    "198.51.100.1",
    "198.51.100.2",
    "192.0.2.1",
    "192.0.2.2",
)


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it where it can)"
    probe = f"ptthprobe{os.getpid()}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"


class Nat:
    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.out, self.router, self.inside = f"ptout{tag}", f"ptrt{tag}", f"ptin{tag}"

    def up(self) -> None:
        for ns in (self.out, self.router, self.inside):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        tag = self.out[5:]
        po, pr, li, lr = f"po{tag}", f"pr{tag}", f"li{tag}", f"lr{tag}"
        sh(
            "ip",
            "link",
            "add",
            po,
            "netns",
            self.out,
            "type",
            "veth",
            "peer",
            pr,
            "netns",
            self.router,
        )
        sh(
            "ip",
            "link",
            "add",
            li,
            "netns",
            self.inside,
            "type",
            "veth",
            "peer",
            lr,
            "netns",
            self.router,
        )
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP}/24", "dev", po)
        sh("ip", "-n", self.router, "addr", "add", f"{ROUTER_OUT_IP}/24", "dev", pr)
        sh("ip", "-n", self.router, "addr", "add", f"{ROUTER_IN_IP}/24", "dev", lr)
        sh("ip", "-n", self.inside, "addr", "add", f"{IN_IP}/24", "dev", li)
        for ns, dev in ((self.out, po), (self.router, pr), (self.router, lr), (self.inside, li)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.inside, "route", "add", "default", "via", ROUTER_IN_IP)
        sh("ip", "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        sh(
            "ip", "netns", "exec", self.router,
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", pr, "-j", "MASQUERADE",
        )  # fmt: skip

    def down(self) -> None:
        for ns in (self.out, self.router, self.inside):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def nat() -> Iterator[Nat]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    network = Nat()
    try:
        network.up()
        yield network
    finally:
        network.down()


def ptth_exe() -> str:
    exe = shutil.which("ptth", path=str(Path(sys.executable).parent))
    assert exe is not None
    return exe


def ptth(ns: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, ptth_exe(), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def run_node(ns: str, data_dir: Path, *args: str, wait_for: str | None = None) -> Iterator[str]:
    """Run `ptth run` in ``ns``; yield its address token once it is serving.

    With ``wait_for``, also wait until a log line containing it appears on stderr.
    """
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, ptth_exe(), "--data-dir", str(data_dir), "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        token = None
        while token is None:
            line = process.stdout.readline()
            assert line, f"ptth run ended early: {process.communicate()[1]}"
            if line.startswith("address "):
                token = line.split(None, 1)[1].strip()
        if wait_for is not None:
            while True:
                line = process.stderr.readline()
                assert line, f"ptth run ended before {wait_for!r}"
                if wait_for in line:
                    break
        yield token
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_inside_node_is_unreachable_directly(nat: Nat) -> None:
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(3)\n"
        f"sys.exit(s.connect_ex(('{IN_IP}', 8470)))\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", nat.out, sys.executable, "-c", probe],
        capture_output=True,
        check=False,
    )
    assert done.returncode != 0  # no route from outside to the NATed network


@pytest.mark.parametrize("mode", ["upgrade", "long-poll"])
def test_send_to_a_node_behind_nat_through_the_relay(nat: Nat, tmp_path: Path, mode: str) -> None:
    relay_dir, sender_dir, inside_dir = tmp_path / "relay", tmp_path / "sender", tmp_path / "inside"
    with run_node(
        nat.out, relay_dir, "--listen", "0.0.0.0:8470", "--public-url", f"http://{OUT_IP}:8470"
    ) as relay_token:
        (tmp_path / "relay.token").write_text(relay_token)
        with (
            run_node(
                nat.inside,
                inside_dir,
                "--listen", "0.0.0.0:8470",
                "--public-url", f"http://{IN_IP}:8470",
                "--relay", f"@{tmp_path / 'relay.token'}",
                "--relay-mode", mode,
                "-v",  # (info logs: "attached to relay ... (<mode>)")
                wait_for=f"({mode})",
            ) as inside_token,
            run_node(
                nat.out, sender_dir, "--listen", "0.0.0.0:8471",
                "--public-url", f"http://{OUT_IP}:8471",
            ) as sender_token,
        ):  # fmt: skip
            added = ptth(nat.out, sender_dir, "peer", "add", inside_token)
            assert added.returncode == 0, added.stderr
            # Both ways (as two people would): the inside node takes frames from its
            # neighbours only, by default.
            added = ptth(nat.inside, inside_dir, "peer", "add", sender_token)
            assert added.returncode == 0, added.stderr
            inside_id = ptth(nat.inside, inside_dir, "id").stdout.strip()
            text = f"hello through NAT ({mode})"
            sent = ptth(nat.out, sender_dir, "send", inside_id, text)
            assert sent.returncode == 0, sent.stderr
            assert "in custody, next hop" in sent.stdout  # the inside node, via the relay
            # The sender's forwarder carries it on; look until it is there (bounded).
            received = ""
            deadline = time.monotonic() + 30
            while text not in received and time.monotonic() < deadline:
                inbox = ptth(nat.inside, inside_dir, "inbox")
                assert inbox.returncode == 0, inbox.stderr
                received += inbox.stdout
            assert received.strip().endswith(text)
            status = ptth(nat.inside, inside_dir, "status").stdout
            _, attached = status.split("\nattached to relays: 1\n", 1)
            assert attached.splitlines()[1].split()[2] == mode, status
