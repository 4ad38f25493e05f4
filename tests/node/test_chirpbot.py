"""The chirp bot's words (node/_chirpbot.py): commands, aliases, answers; no server."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

import crypto
from node._chirpbot import (
    COMMANDS,
    MIN_PREFIX,
    TIMELINE_LENGTH,
    Chirped,
    Command,
    Known,
    help_text,
    label,
    parse_command,
    relay_text,
    resolve,
    timeline_text,
)


def node(seed: int) -> crypto.NodeId:
    return crypto.NodeId(bytes([seed]) * 32)


ALICE, BOB, CAROL = node(1), node(2), node(3)
KNOWN = [Known(ALICE, "alice"), Known(BOB, "Bob"), Known(CAROL)]


def test_commands_are_parsed() -> None:
    assert parse_command("follow alice") == Command("follow", "alice")
    assert parse_command("  FOLLOW   alice  ") == Command("follow", "alice")
    assert parse_command("unfollow bob") == Command("unfollow", "bob")
    assert parse_command("following") == Command("following")
    assert parse_command("post hello,  world ") == Command("post", "hello,  world")
    assert parse_command("timeline") == Command("timeline")
    assert parse_command("help") == Command("help")
    assert parse_command("help me") == Command("help", problem="help takes nothing after it")


def test_what_is_no_command_is_help_with_the_reason() -> None:
    assert parse_command("dance") == Command("help", problem="unknown command 'dance'")
    assert parse_command("   ") == Command("help", problem="an empty message is no command")
    assert parse_command("follow") == Command("help", problem="follow needs a node id or alias")
    assert parse_command("post  ") == Command("help", problem="post needs some text")
    assert parse_command("timeline please") == Command(
        "help", problem="timeline takes nothing after it"
    )
    long = parse_command("x" * 500)
    assert long.verb == "help"
    assert len(long.problem) < 80


@given(st.text(max_size=300))
def test_any_line_is_a_command_or_help(line: str) -> None:
    command = parse_command(line)
    assert command.verb in COMMANDS
    if command.problem:
        assert command.verb == "help"
    else:
        assert line.split()[0].lower() == command.verb
        assert command.argument == line.strip()[len(command.verb) :].strip()


def test_help_lists_every_command_and_says_the_problem_first() -> None:
    text = help_text("ptth.example")
    for verb in COMMANDS:
        assert f"\n{verb} " in text
    assert "chirp@ptth.example" in text
    assert help_text("ptth.example", "unknown command 'dance'").startswith(
        "Unknown command 'dance'. I am the chirp bot of ptth.example."
    )


def test_aliases_resolve_by_id_name_or_prefix() -> None:
    assert resolve(CAROL.text, []) == CAROL  # a full id needs no knowing
    assert resolve("alice", KNOWN) == ALICE
    assert resolve("BOB", KNOWN) == BOB  # names fold case
    assert resolve(CAROL.short, KNOWN) == CAROL
    assert resolve(CAROL.text[:MIN_PREFIX], KNOWN) == CAROL
    assert resolve(CAROL.text[:MIN_PREFIX].upper(), KNOWN) == CAROL


def test_unknown_and_ambiguous_aliases_are_answered_precisely() -> None:
    bad = resolve("!" * 52, KNOWN)
    assert isinstance(bad, str)
    assert bad.startswith("'" + "!" * 52 + "' is no node id: a node id uses only a-z and 2-7")
    unknown = resolve("dave", KNOWN)
    assert unknown == (
        "no node I know is called 'dave': give its 52-character id, the name of one of my "
        f"peers, or at least {MIN_PREFIX} characters of the id of one of them or of a node "
        "you follow"
    )
    short = resolve("ab", [Known(ALICE)])
    assert isinstance(short, str)
    assert short.startswith("no node is called 'ab'")
    twins = [Known(ALICE, "twin"), Known(BOB, "Twin")]
    ambiguous = resolve("twin", twins)
    assert isinstance(ambiguous, str)
    assert ambiguous.startswith("'twin' names 2 nodes (")
    assert f"twin ({ALICE.short})" in ambiguous
    assert f"Twin ({BOB.short})" in ambiguous
    # Two ids with a common prefix: ambiguous until enough of it is given.
    first, other = crypto.NodeId(bytes(31) + b"\x01"), crypto.NodeId(bytes(31) + b"\x02")
    common = _common(first.text, other.text)
    assert len(common) > MIN_PREFIX
    twins_by_id = [Known(first), Known(other)]
    assert resolve(common, twins_by_id) == (
        f"'{common}' names 2 nodes ({first.short}, {other.short}): give more of the id"
    )
    assert resolve(first.text[: len(common) + 1], twins_by_id) == first


def _common(a: str, b: str) -> str:
    length = 0
    while a[length] == b[length]:
        length += 1
    return a[:length]


def test_labels_and_relayed_chirps() -> None:
    assert label(ALICE, KNOWN) == f"alice ({ALICE.short})"
    assert label(CAROL, KNOWN) == CAROL.short
    assert relay_text(Chirped(BOB, "hi", 0), KNOWN) == f"Bob ({BOB.short}): hi"


def test_the_timeline_is_the_newest_oldest_first_each_once() -> None:
    assert timeline_text([], KNOWN, 0) == "You follow nobody: 'follow NODE' first."
    assert timeline_text([], KNOWN, 1).startswith("No chirps yet")
    chirps = [Chirped(ALICE, f"post {i}", 1_700_000_000_000 + i * 60_000) for i in range(30)]
    text = timeline_text([*reversed(chirps), chirps[-1]], KNOWN, 1)
    lines = text.splitlines()
    assert lines[0] == f"The last {TIMELINE_LENGTH} chirps:"
    assert len(lines) == 1 + TIMELINE_LENGTH
    assert lines[1].endswith(f"alice ({ALICE.short}): post 10")
    assert lines[-1] == f"[2023-11-14 22:42] alice ({ALICE.short}): post 29"
    one = timeline_text([Chirped(CAROL, "solo", 2**62)], KNOWN, 1)
    assert one == f"The last chirp:\n[?] {CAROL.short}: solo"
