"""Capabilities between real `ptth run` processes: user - relay - owner, each peered only
with its neighbours, the owner's application reading with `ptth subscribe`.

* The relay requires a capability to publish on ``alerts.#`` (``--require-cap``): the
  user's publication without one is refused at that first hop (the relay counts it, the
  user gets a drop receipt, the owner never sees it); with one granted by the relay
  (``ptth publish --cap``) it is delivered.
* The owner lets the relay publish under its secure name (``ptth cap grant``), the relay
  delegates that to the user (``ptth cap delegate``): the user's posts arrive until the
  owner revokes the parent (``ptth cap revoke`` on the running node), the revocation
  reaches every node, and then the user's own node refuses (403, one line).

Every wait is on a condition with one overall deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from node import _cli as cli
from tests.node.test_chain_kill import Deadline, Proc, processes, ptth
from tests.node.test_pubsub_processes import Feed

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX processes")

DEADLINE = 40.0


def fails(data_dir: Path, *args: str) -> str:
    """Run a `ptth` command that must fail; its one line on stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.run(["--data-dir", str(data_dir), *args], out=out, err=err)
    assert status != 0, out.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_capabilities_between_processes(tmp_path: Path) -> None:
    deadline = Deadline(DEADLINE)
    with processes() as spawned, contextlib.ExitStack() as stack:
        names = ("user", "relay", "owner")
        options = {"relay": ("--require-cap", "publish=alerts.#")}
        procs = {
            name: Proc(
                tmp_path / name, "127.0.0.1:0", tmp_path / f"{name}.log", deadline,
                *options.get(name, ()),
            )
            for name in names
        }  # fmt: skip
        spawned += procs.values()
        info = {name: proc.wait_ready() for name, proc in procs.items()}
        ids = {name: i["node"] for name, i in info.items()}
        for left, right in (("user", "relay"), ("relay", "owner")):
            ptth(procs[left].data_dir, "peer", "add", info[right]["address"])
            ptth(procs[right].data_dir, "peer", "add", info[left]["address"])
        api = {name: stack.enter_context(proc.api()) for name, proc in procs.items()}
        feed = f"~{ids['owner']}.feed"
        reader = Feed(procs["owner"].data_dir, tmp_path / "reader.log", deadline,
                      ("alerts.#", f"{feed}.#", "probe.#"))  # fmt: skip
        stack.callback(reader.stop)

        def interest_at_user() -> bool:
            """A probe goes toward the relay once the user knows the owner's interest (one
            that goes nowhere is not kept: it never arrives)."""
            answer = api["user"].publish("probe.x", b"probe", None)
            return bool(answer["next_hops"] == [ids["relay"]])

        deadline.wait_for("the owner's interest to reach the user", interest_at_user)
        reader.wait_for(1)

        # -- a topic restricted at the first hop -------------------------------------
        ptth(procs["user"].data_dir, "publish", "alerts.fire", "no capability")
        deadline.wait_for(
            "the relay to refuse it and the user to hear why",
            lambda: (
                api["relay"].status()["rejected"].get("forbidden", 0) >= 1
                and api["user"].status()["counters"]["receipts_received_dropped"] >= 1
            ),
        )
        token = ptth(
            procs["relay"].data_dir, "cap", "grant", "--to", ids["user"], "--op", "publish",
            "--on", "alerts.#", "--expires", "1h",
        ).strip()  # fmt: skip
        sent = ptth(procs["user"].data_dir, "publish", "alerts.fire", "authorised", "--cap", token)
        got = reader.wait_for(2)[-1]
        assert (got["topic"], got["body"], got["origin"], got["id"]) == (
            "alerts.fire", "authorised", ids["user"], sent.strip(),
        )  # fmt: skip

        # -- a delegated capability, until revoked -------------------------------------
        parent = ptth(
            procs["owner"].data_dir, "cap", "grant", "--to", ids["relay"], "--op", "publish",
            "--on", f"{feed}.#",
        ).strip()  # fmt: skip
        child = ptth(
            procs["relay"].data_dir, "cap", "delegate", parent, "--to", ids["user"],
            "--on", f"{feed}.user",
        ).strip()  # fmt: skip
        ptth(procs["user"].data_dir, "publish", f"{feed}.user", "delegated", "--cap", child)
        got = reader.wait_for(3)[-1]
        assert (got["topic"], got["body"]) == (f"{feed}.user", "delegated")
        parent_id = json.loads(ptth(procs["owner"].data_dir, "cap", "show", parent, "--json"))[0][
            "id"
        ]
        revoked = ptth(procs["owner"].data_dir, "cap", "revoke", parent_id)
        assert revoked.strip() == f"revoked capability {parent_id}"
        deadline.wait_for(
            "every node to learn the revocation",
            lambda: all(a.capabilities()["revocations"] == 1 for a in api.values()),
        )
        line = fails(procs["user"].data_dir, "publish", f"{feed}.user", "after", "--cap", child)
        assert "was revoked by its issuer" in line, line
        assert "capability link 1 of 2" in line, line

        printed = reader.interrupt()
        bodies = [p["body"] for p in printed if p["topic"] != "probe.x"]
        assert bodies == ["authorised", "delegated"]  # "no capability" and "after" never came
