"""``ptth cap``: grant, delegate, show, revoke and list capabilities, with the node's
identity from its data directory (no running node needed), and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crypto
import mesh
from tests.node.test_cli import fails, ok, ptth


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    path = tmp_path / "alice"
    ok("--data-dir", path, "init")
    return path


@pytest.fixture
def bob(tmp_path: Path) -> Path:
    path = tmp_path / "bob"
    ok("--data-dir", path, "init")
    return path


def node_id(path: Path) -> str:
    return ok("--data-dir", path, "id").strip()


def grant(alice: Path, *args: str) -> str:
    return ok("--data-dir", alice, "cap", "grant", *args).strip()


def test_grant_prints_a_token_for_this_nodes_topics(alice: Path, bob: Path) -> None:
    result = ptth(
        "--data-dir", alice, "cap", "grant", "--to", node_id(bob), "--op", "publish",
        "--on", "news.#", "--expires", "7d", "--uses", "10",
    )  # fmt: skip
    assert result.status == 0, result.err
    token = result.out.strip()
    capability = crypto.parse_capability(token)
    assert capability.issuer == crypto.NodeId.parse(node_id(alice))
    assert capability.subject == crypto.NodeId.parse(node_id(bob))
    assert capability.ops == {crypto.Operation.PUBLISH}
    assert capability.target.pattern == "news.#"
    assert capability.caveats.uses == 10
    assert capability.caveats.exp is not None
    assert f"granted capability {capability.id_text}" in result.err
    verified = crypto.verify(
        token,
        now=capability.issued,
        owner=capability.issuer,
        operation="publish",
        target=crypto.Target.topic(capability.issuer, "news.tech"),
        presenter=capability.subject,
    )
    assert verified.capability == capability


def test_grant_of_each_kind(alice: Path) -> None:
    inbox = crypto.parse_capability(grant(alice, "--to", "anyone", "--op", "send"))
    assert inbox.target.kind is crypto.ObjectKind.INBOX
    assert inbox.subject is None
    relay = crypto.parse_capability(
        grant(alice, "--to", "anyone", "--op", "attach", "--op", "store", "--quota", "1000")
    )
    assert relay.target.kind is crypto.ObjectKind.RELAY
    assert relay.caveats.quota == 1000
    named = crypto.parse_capability(grant(alice, "--to", "anyone", "--op", "call", "--on", "q"))
    assert named.target.name == "q"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--op", "publish"], "--op publish needs --on with a topic pattern"),
        (["--op", "call"], "--op call needs --on with an object name"),
        (["--op", "send", "--on", "x"], "leave out --on"),
        (["--op", "send", "--op", "publish", "--on", "x"], "not of one kind of object"),
        (["--op", "send", "--quota", "5"], "--quota goes with --op store"),
        (["--op", "fly"], "invalid choice: 'fly'"),
        (["--op", "send", "--uses", "0"], "'0' is not a positive whole number"),
        (["--op", "send", "--expires", "soon"], "is not a duration"),
    ],
)
def test_grant_usage_mistakes(alice: Path, args: list[str], message: str) -> None:
    line = fails("--data-dir", alice, "cap", "grant", "--to", "anyone", *args, status=2)
    assert message in line


def test_grant_refusals(alice: Path, tmp_path: Path) -> None:
    line = fails("--data-dir", alice, "cap", "grant", "--to", "bob", "--op", "send", status=2)
    assert "or 'anyone'" in line
    line = fails(
        "--data-dir", alice, "cap", "grant", "--to", "anyone", "--op", "publish", "--on", "a..b"
    )
    assert line.startswith("ptth: error: pattern 'a..b'")
    other = crypto.Identity.generate().node_id.text
    line = fails(
        "--data-dir", alice, "cap", "grant", "--to", "anyone", "--op", "publish",
        "--on", f"~{other}.#",
    )  # fmt: skip
    assert "secure name" in line
    line = fails(
        "--data-dir", tmp_path / "nobody", "cap", "grant", "--to", "anyone", "--op", "send"
    )
    assert "no identity" in line


def test_delegate_narrows_and_refuses_to_widen(alice: Path, bob: Path, tmp_path: Path) -> None:
    token = grant(
        alice, "--to", node_id(bob), "--op", "publish", "--op", "subscribe", "--on", "news.#",
        "--expires", "7d", "--uses", "10",
    )  # fmt: skip
    child_token = ok(
        "--data-dir", bob, "cap", "delegate", token, "--to", "anyone", "--op", "publish",
        "--on", "news.tech.*", "--expires", "1d",
    ).strip()  # fmt: skip
    child = crypto.parse_capability(child_token)
    assert child.depth == 2
    assert child.ops == {crypto.Operation.PUBLISH}
    assert child.caveats.uses == 10  # inherited
    assert child.issuer == crypto.NodeId.parse(node_id(bob))
    # From stdin and inheriting everything.
    same = crypto.parse_capability(
        ok("--data-dir", bob, "cap", "delegate", "-", "--to", "anyone", stdin=token).strip()
    )
    assert same.ops == {crypto.Operation.PUBLISH, crypto.Operation.SUBSCRIBE}
    assert same.target == crypto.parse_capability(token).target

    def refused(*args: str, where: Path = bob) -> str:
        return fails("--data-dir", where, "cap", "delegate", token, "--to", "anyone", *args)

    assert "expires" in refused("--expires", "30d")
    assert "uses (11 uses) is over its parent's (10 uses)" in refused("--uses", "11")
    assert "is not within" in refused("--on", "sport.#")
    assert "its parent is for" in refused(where=alice)
    assert refused("--uses", "99").startswith("ptth: error: not delegated: capability link 2")
    line = fails("--data-dir", bob, "cap", "delegate", token, "--to", "anyone", "--op", "send")
    assert "a topic has no operation send" in line


def test_show_explains_a_chain(alice: Path, bob: Path) -> None:
    token = grant(alice, "--to", node_id(bob), "--op", "publish", "--on", "news.#", "--uses", "3")
    child = ok("--data-dir", bob, "cap", "delegate", token, "--to", "anyone").strip()
    shown = ok("--data-dir", bob, "cap", "show", child)
    assert "who:     anyone holding it" in shown
    assert "may:     publish" in shown
    assert f"on:      topics 'news.#' of {node_id(alice)}" in shown
    assert "limit:   no expiry" in shown
    assert "limit:   3 uses" in shown
    assert "state:   valid" in shown
    assert "chain (2 links, the root first):" in shown
    assert f"link 1: {node_id(bob)} may publish" in shown
    assert f"signed by {node_id(alice)}" in shown
    links = json.loads(ok("cap", "show", "--json", child, "--data-dir", bob))
    assert [link["issuer"] for link in links] == [node_id(alice), node_id(bob)]
    assert links[1]["subject"] is None
    assert links[0]["caveats"] == {"uses": 3}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("ptth:abc", "not a capability token"),
        ("ptthcap:AAAA", "capability token"),
        ("ptthcap:a!b", "outside base64url"),
    ],
)
def test_bad_tokens_are_one_line_errors(alice: Path, token: str, message: str) -> None:
    assert message in fails("--data-dir", alice, "cap", "show", token)
    assert message in fails("--data-dir", alice, "cap", "delegate", token, "--to", "anyone")


def test_a_tampered_token_is_refused(alice: Path) -> None:
    token = grant(alice, "--to", "anyone", "--op", "send")
    body = token.removeprefix("ptthcap:")
    flipped = body[:-5] + ("A" if body[-5] != "A" else "B") + body[-4:]
    line = fails("--data-dir", alice, "cap", "show", "ptthcap:" + flipped)
    assert line.startswith("ptth: error: capability token: signature does not verify")


def test_revoke_and_list(alice: Path, bob: Path) -> None:
    token = grant(alice, "--to", node_id(bob), "--op", "publish", "--on", "news.#")
    capability = crypto.parse_capability(token)
    grant(alice, "--to", "anyone", "--op", "send", "--expires", "1h")
    child = ok("--data-dir", bob, "cap", "delegate", token, "--to", "anyone").strip()
    listed = ok("--data-dir", alice, "cap", "list")
    assert "granted (2 capabilities):" in listed
    assert capability.id_text in listed
    assert listed.count(" valid") == 2
    assert ok("--data-dir", alice, "cap", "revoke", capability.id_text) == (
        f"revoked capability {capability.id_text}\n"
    )
    assert ok("--data-dir", alice, "cap", "revoke", token).startswith("already revoked:")
    listed = ok("--data-dir", alice, "cap", "list", "--wide")
    assert "revoked" in listed
    assert f"by {node_id(alice)}" in listed
    data = json.loads(ok("--data-dir", alice, "cap", "list", "--json"))
    states = {item["id"]: item["revoked"] for item in data["granted"]}
    assert states[capability.id_text] is True
    assert data["revocations"][0]["id"] == capability.id_text
    # The revocation is in the store (it survives restarts: it is a table) and makes
    # the delegated child fail too, where the revocation is known.
    assert "state:   revoked (a link above it)" in ok("--data-dir", alice, "cap", "show", child)
    with mesh.CapabilityBook(alice / "store.sqlite3") as book:
        revoked = book.revocations()
    with pytest.raises(crypto.Revoked, match="link 1 of 2"):
        crypto.verify(
            child,
            now=capability.issued,
            owner=capability.issuer,
            operation="publish",
            target=crypto.Target.topic(capability.issuer, "news.x"),
            presenter=None,
            revoked=revoked,
        )
    # Bob knows of no revocation: to him the child still looks valid (no propagation yet).
    assert "state:   valid" in ok("--data-dir", bob, "cap", "show", child)


def test_revoke_refusals(alice: Path, bob: Path) -> None:
    token = grant(alice, "--to", node_id(bob), "--op", "publish", "--on", "news.#")
    capability = crypto.parse_capability(token)
    line = fails("--data-dir", bob, "cap", "revoke", capability.id_text)
    assert "this node granted no capability" in line
    line = fails("--data-dir", bob, "cap", "revoke", token)
    assert "neither issued capability" in line
    line = fails("--data-dir", alice, "cap", "revoke", "xyz", status=2)
    assert "neither a capability id (32 hex digits) nor a ptthcap: token" in line
    line = fails("--data-dir", alice, "cap", "revoke", "ptthcap:AAAA")
    assert "capability token" in line


def test_a_named_revoker_may_revoke(alice: Path, bob: Path) -> None:
    token = grant(alice, "--to", "anyone", "--op", "send", "--revoker", node_id(bob))
    assert ok("--data-dir", bob, "cap", "revoke", token).startswith("revoked capability")
    assert "revocations held (1 revocation)" in ok("--data-dir", bob, "cap", "list")


def test_list_with_nothing(alice: Path) -> None:
    assert ok("--data-dir", alice, "cap", "list") == "granted: none\n"
