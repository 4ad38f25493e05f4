"""The chirp bot's words: command parsing, aliases and answers, pure (no I/O).

The XMPP gateway (:mod:`node._xmpp`) serves one JID, ``chirp@DOMAIN`` (:data:`BOT`),
that takes these commands in chat and relays the chirps of the nodes a user follows;
this module decides what a line of chat means and what the bot says back, so that it
is tested without an XMPP server.

Aliases: a node is named by its 52-character id, by the name in its address record
when this node holds one (its peers), or by a prefix of its id of at least
:data:`MIN_PREFIX` characters (the short id that answers show is its first 10) among
the nodes this node knows: its peers and the nodes the user follows. A name is matched
before id prefixes, case-insensitively.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from typing import Final

import crypto

__all__ = [
    "BOT",
    "COMMANDS",
    "MIN_PREFIX",
    "TIMELINE_LENGTH",
    "Chirped",
    "Command",
    "Known",
    "help_text",
    "label",
    "parse_command",
    "relay_text",
    "resolve",
    "timeline_text",
]

#: The bot's localpart: ``chirp@DOMAIN`` is the bot, never a topic JID.
BOT: Final = "chirp"
#: Chirps the ``timeline`` answer shows, at most (the newest).
TIMELINE_LENGTH: Final = 20
#: The shortest id prefix taken as an alias.
MIN_PREFIX: Final = 4
#: The commands, in the order help lists them.
COMMANDS: Final = ("follow", "unfollow", "following", "post", "timeline", "help")
_NEEDS_ARGUMENT: Final = frozenset({"follow", "unfollow", "post"})


@dataclasses.dataclass(frozen=True)
class Command:
    """A line of chat: ``verb`` one of :data:`COMMANDS`, ``argument`` the rest
    (stripped). ``problem``: why the line is not a command (then ``verb`` is help)."""

    verb: str
    argument: str = ""
    problem: str = ""


@dataclasses.dataclass(frozen=True)
class Known:
    """A node an alias may name: its id and the name its address record gives."""

    node: crypto.NodeId
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Chirped:
    """A chirp as the bot shows it."""

    author: crypto.NodeId
    text: str
    ts: int  # ms since the epoch, the author's clock


def parse_command(line: str) -> Command:
    """What ``line`` asks. An unknown or incomplete command is help, with the problem."""
    words = line.split(None, 1)
    verb = words[0].lower() if words else ""
    argument = words[1].strip() if len(words) > 1 else ""
    if not verb:
        return Command("help", problem="an empty message is no command")
    if verb not in COMMANDS:
        shown = verb if len(verb) <= 40 else verb[:40] + "…"
        return Command("help", problem=f"unknown command {shown!r}")
    if verb in _NEEDS_ARGUMENT and not argument:
        what = "some text" if verb == "post" else "a node id or alias"
        return Command("help", problem=f"{verb} needs {what}")
    if verb not in _NEEDS_ARGUMENT and argument:
        return Command("help", problem=f"{verb} takes nothing after it")
    return Command(verb, argument)


def help_text(domain: str, problem: str = "") -> str:
    """The help answer (``problem`` first, when a line was no command)."""
    lines = [f"{problem[:1].upper()}{problem[1:]}. " if problem else ""]
    lines[0] += f"I am the chirp bot of {domain}. Commands:"
    lines += [
        "follow NODE — get NODE's chirps here (NODE: its id, a peer's name, or a short id)",
        "unfollow NODE — stop getting them",
        "following — who you follow",
        "post TEXT — chirp TEXT as this node (for users its operator allows)",
        f"timeline — the last {TIMELINE_LENGTH} chirps of the nodes you follow",
        "help — this",
        f"Chirps come while you are online: add {BOT}@{domain} as a contact and let it "
        "see your presence.",
    ]
    return "\n".join(lines)


def label(node: crypto.NodeId, known: Iterable[Known]) -> str:
    """How answers name ``node``: its name and short id, or the short id."""
    for entry in known:
        if entry.node == node and entry.name:
            return f"{entry.name} ({node.short})"
    return node.short


def resolve(alias: str, known: Sequence[Known]) -> crypto.NodeId | str:
    """The node ``alias`` names, or the words that say why it names none (or several)."""
    alias = alias.strip()
    if len(alias) == crypto.NODE_ID_TEXT_LENGTH:
        try:
            return crypto.NodeId.parse(alias)
        except crypto.Malformed as exc:
            return f"{alias!r} is no node id: {exc}"
    folded = alias.casefold()
    named = {k.node for k in known if k.name is not None and k.name.casefold() == folded}
    if not named and len(alias) >= MIN_PREFIX:
        named = {k.node for k in known if k.node.text.startswith(folded)}
    if len(named) == 1:
        return next(iter(named))
    shown = alias if len(alias) <= 60 else alias[:60] + "…"
    if named:
        which = ", ".join(sorted(label(node, known) for node in named))
        return f"{shown!r} names {len(named)} nodes ({which}): give more of the id"
    if len(alias) < MIN_PREFIX and not any(k.name for k in known):
        return (
            f"no node is called {shown!r}: give its 52-character id "
            f"(or at least {MIN_PREFIX} characters of the id of a node I know)"
        )
    return (
        f"no node I know is called {shown!r}: give its 52-character id, the name of "
        f"one of my peers, or at least {MIN_PREFIX} characters of the id of one of "
        "them or of a node you follow"
    )


def relay_text(chirp: Chirped, known: Iterable[Known]) -> str:
    """A relayed chirp: who, then what."""
    return f"{label(chirp.author, known)}: {chirp.text}"


def timeline_text(chirps: Sequence[Chirped], known: Sequence[Known], following: int) -> str:
    """The ``timeline`` answer: the newest :data:`TIMELINE_LENGTH`, oldest first."""
    if not following:
        return "You follow nobody: 'follow NODE' first."
    ordered = sorted({(c.author, c.ts, c.text): c for c in chirps}.values(), key=_when)
    shown = ordered[-TIMELINE_LENGTH:]
    if not shown:
        return "No chirps yet from the nodes you follow (since this node started)."
    lines = [f"The last {len(shown)} chirps:" if len(shown) > 1 else "The last chirp:"]
    lines += [f"{_time(c.ts)} {relay_text(c, known)}" for c in shown]
    return "\n".join(lines)


def _when(chirp: Chirped) -> tuple[int, str]:
    return chirp.ts, chirp.author.text


def _time(ts: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "[?]"
    return moment.strftime("[%Y-%m-%d %H:%M]")
