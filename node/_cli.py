"""The ``ptth`` command line.

Every command takes ``--data-dir`` (default ``$PTTH_DATA_DIR``, else the per-user data
directory) and ``-v`` (more logs on stderr). Errors are one line on stderr and a
non-zero exit status: 1 for a failure, 2 for a usage mistake, 130 after Ctrl-C, 141
when whoever read stdout stopped reading (``ptth status | head -1``). No tracebacks.

What came from the network (message bodies, topics, posts, names, reasons) is printed
through :func:`node._terminal.for_terminal`: its control characters show as escapes
and never act on the terminal. ``--raw`` writes bodies as they are, ``--json`` as JSON.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import io
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

import httpx
import trio

import crypto
import mesh
from node._apiclient import (
    IDEMPOTENCY_KEY_MAX,
    RETRY_FOR,
    ApiClient,
    Unconfirmed,
    batch_line,
    validate_idempotency_key,
)
from node._attach import RelayMode
from node._datadir import DataDir, default_data_dir
from node._errors import NodeError, NotRunning, leaves
from node._node import Node, NodeConfig
from node._relay import RelayConfig
from node._stomp import StompConfig
from node._tables import Column, human_age, human_bytes, human_count, human_rate, render, short_id
from node._terminal import for_terminal
from node._xmpp import XmppConfig

__all__ = ["main"]

log = logging.getLogger("ptth.cli")

DEFAULT_ADDRESS_LIFETIME: Final = "30d"
#: ``ptth run --log-format``, and the environment variable that sets its default.
LOG_FORMATS: Final = ("text", "json")
LOG_FORMAT_ENV: Final = "PTTH_LOG_FORMAT"
#: ``ptth run --log-level``, and the environment variable that sets its default.
LOG_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOG_LEVEL_ENV: Final = "PTTH_LOG_LEVEL"
#: How long ``ptth send`` and ``ptth publish`` retry after losing the node's local API
#: (s), with the same idempotency key: long enough for the node to restart.
API_RETRY_FOR: Final = RETRY_FOR
#: The exit status after stdout was closed early (128 + SIGPIPE, what a shell shows
#: for a program a closed pipe ended).
EXIT_BROKEN_PIPE: Final = 141
#: ``ptth send --lines`` sends a batch once it holds this many lines ...
LINES_PER_BATCH: Final = 1_000
#: ... or would pass this many bytes of NDJSON with the next line (a line with the
#: largest body a message may carry still goes, alone): a request the node answers in
#: well under a second, far below its body limit (16 MiB).
BATCH_BYTES: Final = 1024 * 1024
#: How much of stdin one read takes at most; a read returns what is there, so a slow
#: producer's lines are not held back waiting for more.
_READ_SIZE: Final = 64 * 1024
#: Reads of stdin held ahead of what is being sent: what ``--lines`` keeps in memory
#: besides the batch in flight is bounded by this many reads (and one line).
_READ_AHEAD: Final = 4
#: The longest ``--idempotency-key`` with ``--lines``: ``:<batch number>`` is appended.
_LINES_KEY_MAX: Final = IDEMPOTENCY_KEY_MAX - 11
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


def parse_duration(text: str) -> int:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or ``"1h30m"`` -> seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 45s, 90m, 12h, 30d or 1h30m"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _ttl(text: str) -> float:
    """A publication's lifetime: seconds (``300``) or a duration (``90m``, ``1h30m``)."""
    try:
        return _positive_seconds(text)
    except argparse.ArgumentTypeError:
        try:
            return float(parse_duration(text))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive number of seconds or a duration like 90m or 12h"
            ) from None


def _api_listen_address(text: str) -> str | None:
    """``--api-listen``: a loopback HOST:PORT, or ``none``."""
    if text.lower() == "none":
        return None
    address = _listen_address(text)
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
    if not loopback:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a loopback address: the local API never faces the network "
            "(e.g. 127.0.0.1:8471 or [::1]:8471; --metrics-listen serves /metrics "
            "elsewhere)"
        )
    return address


def _listen_address(text: str) -> str:
    """``--listen``: HOST:PORT (``[v6]:PORT`` too), the port 0..65535."""
    host, sep, port = text.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    if (
        not sep
        or not bare
        or not port.isascii()
        or not port.isdigit()
        or int(port) > 65535
        or (host.startswith("[") != host.endswith("]"))
        or any(c.isspace() or c in "/[]" for c in bare)
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT with a port 0..65535 (e.g. 127.0.0.1:8470, "
            "0.0.0.0:8470 or [::1]:8470)"
        )
    return text


def _public_url(text: str) -> str:
    """``--public-url``: http(s)://host[:port][/path]."""
    try:
        return crypto.validate_endpoint(text)
    except crypto.Malformed as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (give http(s)://HOST[:PORT][/PATH], e.g. http://203.0.113.7:8470)"
        ) from None


def _node_id(text: str) -> str:
    """A node id argument, checked here so that a mistake is a usage error."""
    try:
        return crypto.NodeId.parse(text).text
    except crypto.CryptoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _new_key() -> str:
    """A fresh idempotency key: 128 random bits in hex, so that the retry command an
    error prints (``--idempotency-key KEY``) never reads as an option (a urlsafe key
    may begin with ``-``)."""
    return secrets.token_hex(16)


def _idempotency_key(text: str) -> str:
    try:
        return validate_idempotency_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    try:
        return importlib.metadata.version("ptth")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_token_argument(argument: str, stdin: TextIO) -> str:
    if argument == "-":
        return stdin.read()
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise NodeError(f"cannot read token file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise NodeError(f"token file {path} is not text") from exc
    return argument


def _read_body_argument(argument: str, stdin: TextIO) -> bytes:
    if argument == "-":
        return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise NodeError(f"cannot read message file {path}: {exc.strerror}") from exc
    return argument.encode("utf-8")


def _body_bytes(item: dict[str, Any]) -> bytes:
    """The exact bytes of a message's or publication's body (``body`` or ``body_b64``)."""
    if "body" in item:
        return str(item["body"]).encode("utf-8", "surrogatepass")
    return base64.b64decode(item["body_b64"])


def _lines(first: int, last: int) -> str:
    """``line 4`` or ``lines 4-9``."""
    return f"line {first}" if first == last else f"lines {first}-{last}"


def _in_custody(first: int) -> str:
    """``lines 1-<first - 1> are in custody`` (line ``first`` is where it stopped)."""
    return f"{_lines(1, first - 1)} {'is' if first == 2 else 'are'} in custody"


def _sent_before(first: int) -> str:
    """What ``ptth send --lines`` had done when it stopped at line ``first``."""
    if first == 1:
        return "nothing was sent"
    return f"{_in_custody(first)}, line {first} on not sent"


@dataclasses.dataclass
class _LineBatch:
    """The lines of stdin ``ptth send --lines`` has made messages of and not sent yet."""

    first: int = 1  # the number of the first line in it (1-based)
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    size: int = 0  # bytes of NDJSON

    @property
    def last(self) -> int:
        return self.first + len(self.messages) - 1

    def full_with(self, size: int) -> bool:
        """Is there no room for one more line of ``size`` bytes?"""
        return bool(self.messages) and (
            len(self.messages) >= LINES_PER_BATCH or self.size + size > BATCH_BYTES
        )


@dataclasses.dataclass(frozen=True)
class _Unreadable:
    """Stdin cannot go on (a line longer than a message may be): sent after the lines
    before it, so that those are sent first."""

    words: str


def _no_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _too_long(number: int) -> _Unreadable:
    return _Unreadable(
        f"line {number} is over {crypto.MAX_BODY_SIZE} bytes, the most a message may carry"
    )


def _format_time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


_STORE_FILE: Final = "store.sqlite3"
#: The operations of each kind of object, as ``ptth cap grant --op`` picks the kind.
_CAP_KINDS: Final = {
    crypto.ObjectKind.TOPIC: {"publish", "subscribe"},
    crypto.ObjectKind.INBOX: {"send"},
    crypto.ObjectKind.RELAY: {"attach", "store"},
    crypto.ObjectKind.OBJECT: {"call"},
}


def _requirements(given: Sequence[str]) -> mesh.Requirements:
    """``--require-cap`` values: publish=PATTERN, subscribe=PATTERN, send, attach, store."""
    publish: list[str] = []
    subscribe: list[str] = []
    flags: set[str] = set()
    for value in given:
        what, has_pattern, pattern = value.partition("=")
        if what in ("publish", "subscribe"):
            if not has_pattern or not pattern:
                raise UsageError(f"--require-cap {what} needs a pattern: {what}=PATTERN")
            try:
                crypto.validate_pattern(pattern)
            except crypto.Malformed as exc:
                raise UsageError(f"--require-cap {value}: {exc}") from exc
            (publish if what == "publish" else subscribe).append(pattern)
        elif what in ("send", "attach", "store") and not has_pattern:
            flags.add(what)
        else:
            raise UsageError(
                f"--require-cap {value!r}: say publish=PATTERN, subscribe=PATTERN, send, "
                "attach or store"
            )
    return mesh.Requirements(
        publish=tuple(publish),
        subscribe=tuple(subscribe),
        send="send" in flags,
        attach="attach" in flags,
        store="store" in flags,
    )


def _cap_subject(text: str) -> crypto.NodeId | None:
    """``--to``: a node id, or ``anyone`` (None: whoever holds the token)."""
    return None if text == "anyone" else crypto.NodeId.parse(text)


def _cap_to(text: str) -> str:
    if text == "anyone":
        return text
    try:
        return crypto.NodeId.parse(text).text
    except crypto.CryptoError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'anyone')") from None


def _cap_id(text: str) -> bytes:
    """A capability id: 32 hex digits."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != crypto.CAPABILITY_ID_SIZE or len(text) != 2 * crypto.CAPABILITY_ID_SIZE:
        raise UsageError(
            f"{text[:80]!r} is neither a capability id (32 hex digits) nor a ptthcap: token"
        )
    return raw


def _count(text: str) -> int:
    """A positive whole number (``--uses``, ``--rate``)."""
    if not text.isdigit() or int(text) < 1 or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _byte_count(text: str) -> int:
    """A number of bytes (``--quota``), e.g. ``1048576``."""
    if not text.isdigit() or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes")
    return int(text)


def _cap_state(capability: crypto.Capability, now: int, revoked: crypto.RevocationSet) -> str:
    """``valid``, ``expired``, ``not valid yet`` or ``revoked``, for the whole chain
    (as far as this node knows of revocations)."""
    for link in capability.chain:
        if revoked.revoking(link) is not None:
            return "revoked" if link is capability else "revoked (a link above it)"
    for link in capability.chain:
        caveats = link.caveats
        if caveats.exp is not None and now >= caveats.exp:
            return "expired"
        if caveats.nbf is not None and now < caveats.nbf:
            return "not valid yet"
    return "valid"


def _cap_json(capability: crypto.Capability) -> dict[str, Any]:
    target = capability.target
    caveats = dataclasses.asdict(capability.caveats)
    return {
        "id": capability.id_text,
        "issuer": capability.issuer.text,
        "issued": capability.issued,
        "subject": None if capability.subject is None else capability.subject.text,
        "ops": sorted(capability.ops),
        "object": {
            "kind": str(target.kind),
            "node": target.node.text,
            "pattern": target.pattern,
            "name": target.name,
        },
        "caveats": {name: value for name, value in caveats.items() if value is not None},
        "revoker": None if capability.revoker is None else capability.revoker.text,
    }


def _message_line(message: dict[str, Any]) -> str:
    """``<received, UTC>  from <sender's id>: text`` (or what the bytes are)."""
    if "body" in message:
        text = message["body"]
    else:
        size = len(base64.b64decode(message["body_b64"]))
        text = f"[{size} bytes of {message['ct'] or 'binary'}]"
    return f"{_format_time(message['received'])}  from {message['src']}: {text}"


def _post_bytes(post: dict[str, Any]) -> bytes:
    return str(post["text"]).encode("utf-8", "surrogatepass")


def _post_line(post: dict[str, Any]) -> str:
    """``2026-12-02 03:04:05 <author's short id>: text`` (the time is UTC)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(post["ts"] / 1000))
    return f"{stamp} {post['author'][:10]}: {post['text']}"


def _publication_line(publication: dict[str, Any]) -> str:
    if "body" in publication:
        text = publication["body"]
    else:
        size = len(base64.b64decode(publication["body_b64"]))
        text = f"[{size} bytes of {publication['ct'] or 'binary'}]"
    return f"{publication['topic']} {publication['origin'][:10]}: {text}"


#: What each admission and inbox policy means, for ``ptth policy``.
_ADMISSION: Final = collections.defaultdict(
    lambda: "?",
    neighbours="frames only from peers, relays and nodes attached here",
    open="frames from any node that signs its requests",
)
_INBOX: Final = collections.defaultdict(
    lambda: "?",
    anyone="messages from any node but blocked ones",
    **{"allow-list": "messages only from allowed nodes"},
)


def _policy_change_line(change: str, node_id: str, policy: dict[str, Any]) -> str:
    """What ``ptth block`` (``unblock``, ``allow``, ``unallow``, ``trust``, ``untrust``)
    did, in one line."""
    changed = policy.get("changed", True)
    allow_list = policy["inbox"] == "allow-list"
    if change == "trust":
        if not changed:
            return f"{node_id} was trusted already"
        line = (
            f"trusted {node_id}: its messages for other nodes go on without their origin's "
            "signature checked here (their destinations check it)"
        )
        if node_id in policy["blocked"]:
            return f"{line}, but it is blocked ('ptth unblock {node_id}')"
        return line
    if change == "untrust":
        if not changed:
            return f"{node_id} was not trusted"
        return f"untrusted {node_id}: every frame it hands over is checked again"
    if change == "block":
        if not changed:
            return f"{node_id} was blocked already"
        return f"blocked {node_id}: its requests are refused, its frames no longer reach the inbox"
    if change == "unblock":
        if not changed:
            return f"{node_id} was not blocked"
        if allow_list and node_id not in policy["allowed"]:
            return (
                f"unblocked {node_id}; the inbox takes only allowed nodes "
                f"('ptth allow {node_id}' too)"
            )
        return f"unblocked {node_id}: its frames reach the inbox again"
    if change == "allow":
        line = f"allowed {node_id}" if changed else f"{node_id} was allowed already"
        if node_id in policy["blocked"]:
            return f"{line}, but it is blocked ('ptth unblock {node_id}')"
        if not allow_list:
            return f"{line} (the inbox takes anyone now: 'ptth run --inbox allow-list')"
        return f"{line}: its frames reach the inbox"
    if not changed:
        return f"{node_id} was not on the allow-list"
    if allow_list:
        return f"took {node_id} off the allow-list: its frames no longer reach the inbox"
    return f"took {node_id} off the allow-list"


def _store_problem(exc: mesh.MeshError) -> NodeError | mesh.MeshError:
    """A store that SQLite cannot read (not a database, malformed) as what to do."""
    cause = exc.__cause__
    found = re.fullmatch(r"store (.+) failed: (.*)", str(exc), re.DOTALL)
    # Not its subclasses: OperationalError is a locked, unreadable or full file.
    damaged = type(cause) is sqlite3.DatabaseError
    if found is None or not damaged:
        return exc
    path, problem = found.groups()
    return NodeError(
        f"store {path} is damaged: {problem}; move it aside (mv {path} {path}.damaged) "
        "and run again: the node starts with an empty store (what the old one held "
        "stays in the file)"
    )


# -- the operator's views: JSON of the local API as tables ----------------------------------


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def _ago(now: int, then: Any) -> str:
    """How long ago ``then`` (ms since the epoch) was, or ``-``."""
    return human_age((now - then) / 1000) if isinstance(then, int | float) else "-"


def _in(seconds: Any) -> str:
    """``in 3.5s`` for a number of seconds ahead, or ``-``."""
    if not isinstance(seconds, int | float):
        return "-"
    return f"in {seconds:.1f}s" if seconds < 60 else f"in {human_age(seconds)}"


def _many(count: int, word: str) -> str:
    """``1 frame``, ``1,234 frames``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


#: A cut last error keeps this many characters, unless --wide.
_ERROR_WIDTH: Final = 48


def _neighbour_table(
    neighbours: Sequence[dict[str, Any]], *, now: int, wide: bool, indent: int = 0
) -> list[str]:
    """``GET neighbours`` (or status' ``neighbours``): a row each."""
    columns = [
        Column("node"),
        Column("name", limit=16),
        Column("roles"),
        Column("link"),
        Column("heard", right=True),
        Column("last ok", right=True),
        Column("failures", right=True),
        Column("queued", right=True),
        Column("bytes", right=True),
        Column("next attempt"),
        Column("last error", limit=_ERROR_WIDTH),
    ]
    rows = []
    for link in neighbours:
        queued = link.get("queued") or {}
        attempt = link.get("next_attempt")
        rows.append(
            [
                short_id(link.get("node"), wide=wide),
                _text(link.get("name")),
                ",".join(link.get("roles") or []) or "-",
                _text(link.get("state")),
                _ago(now, link.get("last_heard")),
                _ago(now, link.get("last_ok")),
                human_count(link.get("failures")),
                human_count(queued.get("frames")),
                human_bytes(queued.get("bytes")),
                _in((attempt - now) / 1000) if isinstance(attempt, int) and attempt > now else "-",
                _text(link.get("last_error") if link.get("state") != "up" else None),
            ]
        )
    return render(columns, rows, wide=wide, indent=indent)


#: How many characters of a node id NodeId.short shows.
_SHORT_ID: Final = len(crypto.NodeId(bytes(32)).short)


def _short(node: object) -> str:
    """A node id as given in an answer, shortened for display as NodeId.short is."""
    return str(node)[:_SHORT_ID]


def _route_table(routes: Sequence[dict[str, Any]], *, wide: bool, indent: int = 0) -> list[str]:
    """``GET routes``: a row each."""
    columns = [
        Column("destination"),
        Column("next hop"),
        Column("hops", right=True),
        Column("age", right=True),
        Column("expires", right=True),
    ]
    rows = [
        [
            short_id(route.get("destination"), wide=wide),
            short_id(route.get("next_hop"), wide=wide),
            human_count(route.get("hops")),
            "direct" if route.get("age") is None else human_age(route["age"]),
            "-" if route.get("expires_in") is None else f"in {human_age(route['expires_in'])}",
        ]
        for route in routes
    ]
    return render(columns, rows, wide=wide, indent=indent)


def _queue_table(queues: Sequence[dict[str, Any]], *, wide: bool, indent: int = 0) -> list[str]:
    """``GET queues``: a row per next hop (``(held)``: no route yet)."""
    columns = [
        Column("next hop"),
        Column("frames", right=True),
        Column("bytes", right=True),
        Column("oldest", right=True),
        Column("link"),
        Column("next attempt"),
        Column("announces", right=True),
        Column("last error", limit=_ERROR_WIDTH),
    ]
    rows = [
        [
            "(held)" if queue.get("next_hop") is None else short_id(queue["next_hop"], wide=wide),
            human_count(queue.get("frames")),
            human_bytes(queue.get("bytes")),
            human_age(queue.get("oldest_age")),
            _text(queue.get("link")),
            _in(queue.get("next_attempt_in")),
            human_count(queue.get("announces_waiting", 0)),
            _text(queue.get("last_error") if queue.get("link") != "up" else None),
        ]
        for queue in queues
    ]
    return render(columns, rows, wide=wide, indent=indent)


def _subscription_table(
    subscriptions: Sequence[dict[str, Any]], *, wide: bool, indent: int = 0
) -> list[str]:
    """``GET subscriptions``: a row per named subscription."""
    columns = [
        Column("name"),
        Column("patterns", limit=40),
        Column("lease", right=True),
        Column("created"),
    ]
    rows = [
        [
            _text(sub.get("name")),
            " ".join(sub.get("patterns") or []) or "-",
            human_age(sub.get("lease")),
            "-" if sub.get("created") is None else _format_time(sub["created"]),
        ]
        for sub in subscriptions
    ]
    return render(columns, rows, wide=wide, indent=indent)


def _attachment_table(
    attachments: Sequence[dict[str, Any]], *, now: int, wide: bool, indent: int = 0
) -> list[str]:
    """Status' ``attachments``: the relays this node is attached to."""
    columns = [
        Column("relay"),
        Column("endpoint", limit=40),
        Column("mode"),
        Column("connections", right=True),
        Column("lease", right=True),
        Column("last activity", right=True),
        Column("last error", limit=_ERROR_WIDTH),
    ]
    rows = [
        [
            short_id(link.get("relay"), wide=wide),
            _text(link.get("endpoint")),
            _text(link.get("mode")),
            human_count(link.get("connections")),
            human_age(link.get("lease")),
            _ago(now, link.get("last_activity")) if link.get("last_activity") else "never",
            _text(link.get("last_error")),
        ]
        for link in attachments
    ]
    return render(columns, rows, wide=wide, indent=indent)


def _relaying_table(
    relaying: Sequence[dict[str, Any]], *, wide: bool, indent: int = 0
) -> list[str]:
    """Status' ``relaying``: the nodes attached to this one as their relay."""
    columns = [
        Column("node"),
        Column("mode"),
        Column("connections", right=True),
        Column("requests", right=True),
        Column("idle", right=True),
    ]
    rows = [
        [
            short_id(entry.get("node"), wide=wide),
            "long-poll" if entry.get("polling") else "upgrade",
            human_count(entry.get("connections")),
            human_count(entry.get("requests")),
            human_age(entry.get("idle_for")),
        ]
        for entry in relaying
    ]
    return render(columns, rows, wide=wide, indent=indent)


def _peer_table(peers: Sequence[dict[str, Any]], *, wide: bool, indent: int = 0) -> list[str]:
    """Status' ``peers``: the address records in the peer book."""
    columns = [
        Column("node"),
        Column("name", limit=16),
        Column("seq", right=True),
        Column("address"),
        Column("endpoints", limit=60),
    ]
    rows = [
        [
            short_id(peer.get("node"), wide=wide),
            _text(peer.get("name")),
            human_count(peer.get("seq")),
            "expired" if peer.get("expired") else "valid",
            " ".join(peer.get("endpoints") or []) or "-",
        ]
        for peer in peers
    ]
    return render(columns, rows, wide=wide, indent=indent)


#: The counters ``ptth status`` always shows (others when they are not 0; ``--json``
#: has them all): what comes in, what goes out, what is lost.
_MAIN_COUNTERS: Final[tuple[str, ...]] = (
    "frames_accepted",
    "frames_duplicate",
    "frames_rejected",
    "frames_forwarded",
    "frames_held",
    "frames_dropped",
    "sent_accepted",
    "sent_rejected",
    "send_retries",
    "publications_received",
    "publications_delivered",
    "requests_refused",
)


def _counter_table(
    counters: dict[str, Any], seconds: float | None, before: dict[str, Any] | None
) -> list[str]:
    """The node's counters: the total since start, and per second: over ``seconds``
    since ``before`` (an earlier reading), or on average over ``seconds`` of uptime
    (``before`` None), or none."""
    columns = [Column("counter"), Column("total", right=True), Column("per second", right=True)]
    names = [name for name in _MAIN_COUNTERS if name in counters]
    names += sorted(
        name
        for name, value in counters.items()
        if name not in _MAIN_COUNTERS and isinstance(value, int) and value
    )
    rows = []
    for name in names:
        total = counters[name]
        if not isinstance(total, int):
            continue
        rate: float | None = None
        if seconds:
            start = 0 if before is None else before.get(name, 0)
            rate = (total - start) / seconds if isinstance(start, int) else None
        rows.append([name, human_count(total), human_rate(rate)])
    return render(columns, rows, indent=2)


def _span(before: dict[str, Any], after: dict[str, Any], elapsed: float) -> float:
    """Seconds between two status readings: by the node's uptime when both have it
    (what its counters count in), else as the CLI measured them."""
    start, end = before.get("uptime"), after.get("uptime")
    if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
        return float(end - start)
    return max(elapsed, 1e-3)


def _resolve_next_hop(
    wanted: str, queues: Sequence[dict[str, Any]], neighbours: Sequence[dict[str, Any]]
) -> str | None:
    """The next hop ``wanted`` names: ``held`` (None), a node id, or the one next hop
    with a queue whose id starts with it or whose peer name it is. Raises NodeError for
    none or several."""
    if wanted == "held":
        return None
    with contextlib.suppress(crypto.CryptoError):
        return crypto.NodeId.parse(wanted).text
    hops = {queue["next_hop"] for queue in queues if queue.get("next_hop")}
    hops |= {link["node"] for link in neighbours if link.get("node")}
    names = {link["node"]: link.get("name") for link in neighbours if link.get("node")}
    found = sorted(hop for hop in hops if hop.startswith(wanted) or names.get(hop) == wanted)
    if not found:
        raise NodeError(
            f"no next hop is {wanted!r}: give a node id, a prefix of one or a peer's name "
            "from 'ptth queues' or 'ptth neighbours', or 'held'"
        )
    if len(found) > 1:
        some = ", ".join(_hop_name(hop, neighbours) for hop in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise NodeError(f"{wanted!r} could be {some}{more}: give more of the id")
    hop: str = found[0]
    return hop


def _hop_name(hop: str, neighbours: Sequence[dict[str, Any]]) -> str:
    """``2ebq7xkzpl``, or ``2ebq7xkzpl (bob)`` for a neighbour with a name."""
    name = next((link.get("name") for link in neighbours if link.get("node") == hop), None)
    return f"{short_id(hop)} ({name})" if name else short_id(hop)


def _queue_words(hop: str | None, neighbours: Sequence[dict[str, Any]]) -> str:
    """``queued for 2ebq7xkzpl (bob)``, or ``held here (no route yet)`` for None."""
    return "held here (no route yet)" if hop is None else f"queued for {_hop_name(hop, neighbours)}"


class Cli:
    """The commands, with their output streams (so tests can call them directly)."""

    def __init__(
        self, args: argparse.Namespace, *, out: TextIO, err: TextIO, stdin: TextIO
    ) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.stdin = stdin
        self.data = DataDir(getattr(args, "data_dir", None) or default_data_dir())

    def say(self, text: str = "") -> None:
        """Print a line for a human: what came from the network in it cannot act on the
        terminal (see :func:`for_terminal`)."""
        print(for_terminal(text), file=self.out)

    def note(self, text: str) -> None:
        """A line on stderr, for a human."""
        print(for_terminal(text), file=self.err)

    def show_lines(self, lines: Sequence[str]) -> None:
        """Print the lines of a table as they are: :func:`node._tables.render` made each
        cell safe for a terminal already (escaping again would double backslashes)."""
        for line in lines:
            print(line, file=self.out)

    def say_json(self, value: Any, *, indent: int | None = None) -> None:
        """Print ``value`` as JSON (ASCII: its control characters are escaped)."""
        separators = (",", ":") if indent is None else None
        print(json.dumps(value, indent=indent, separators=separators), file=self.out)

    def write_raw(self, data: bytes) -> None:
        """Write ``data`` to stdout as it is (``--raw``: for pipes and files)."""
        self.out.flush()
        buffer = getattr(self.out, "buffer", None)
        if buffer is None:  # a text-only stream (tests)
            self.out.write(data.decode("utf-8", "surrogateescape"))
            self.out.flush()
            return
        buffer.write(data)
        buffer.flush()

    def show(
        self,
        item: dict[str, Any],
        line: Callable[[dict[str, Any]], str],
        body: Callable[[dict[str, Any]], bytes] = _body_bytes,
    ) -> None:
        """One message, publication or post: its ``body`` with ``--raw``, JSON with
        ``--json``, else a ``line`` for a human."""
        if getattr(self.args, "raw", False):
            self.write_raw(body(item))
        elif getattr(self.args, "json", False):
            self.say_json(item)
        else:
            self.say(line(item))
        self.out.flush()

    def cmd_init(self) -> None:
        identity, created = self.data.init()
        if created:
            self.note(f"created identity in {self.data.path}")
        self.say(identity.node_id.text)

    def cmd_id(self) -> None:
        self.say(self.data.identity().node_id.text)

    def cmd_address(self) -> None:
        identity = self.data.identity()
        if self.args.endpoint:
            exp = _now_ms() + self.args.expires_in * 1000
            signed = self.data.sign_address(
                identity, self.args.endpoint, exp=exp, name=self.args.name
            )
            self.say(signed.token)
            return
        if self.args.name is not None:
            raise UsageError("--name needs --endpoint (it is part of a new address record)")
        address = self._running_address() or self.data.own_address()
        if address is None:
            raise NodeError(
                "this node has no address yet: sign one with 'ptth address --endpoint URL'"
            )
        if address.record.exp <= _now_ms():
            raise NodeError(
                f"this node's address (seq {address.record.seq}) expired at "
                f"{_format_time(address.record.exp)}: sign a new one with --endpoint"
            )
        self.say(address.token)

    def _running_address(self) -> crypto.SignedAddress | None:
        try:
            with ApiClient(self.data.path) as api:
                token = api.status()["address"]
        except NotRunning:
            return None
        return crypto.parse_token(token, now=_now_ms())

    def cmd_run(self) -> None:
        relays = tuple(_read_token_argument(token, self.stdin).strip() for token in self.args.relay)
        config = NodeConfig(
            listen=self.args.listen,
            api_listen=self.args.api_listen,
            metrics_listen=self.args.metrics_listen,
            stomp=self.args.stomp,
            stomp_config=StompConfig(allow_remote=self.args.stomp_allow_remote),
            xmpp=self._xmpp_config(),
            xmpp_secret_file=self.args.xmpp_secret_file,
            public_url=self.args.public_url,
            name=self.args.name,
            relays=relays,
            relay_mode=self.args.relay_mode,
            relay=RelayConfig(policy=self.args.relay_policy),
            forward_policy=self.args.forward,
            tree=self.args.tree,
            announce_radius=self.args.announce_radius,
            admission=self.args.admission,
            inbox_policy=self.args.inbox_policy,
            announce_interval=float(self.args.announce_interval),
            requirements=_requirements(self.args.require_caps),
            caps=tuple(_read_token_argument(token, self.stdin).strip() for token in self.args.caps),
        )
        log.debug("%s", config)
        trio.run(self._run_node, config)

    def _xmpp_config(self) -> XmppConfig | None:
        given = (self.args.xmpp_component, self.args.xmpp_domain, self.args.xmpp_secret_file)
        if all(value is None for value in given) and not self.args.xmpp_publishers:
            return None
        if None in given:
            raise NodeError("--xmpp-component, --xmpp-domain and --xmpp-secret-file go together")
        publishers = tuple(
            p.strip() for p in ",".join(self.args.xmpp_publishers).split(",") if p.strip()
        )
        return XmppConfig(
            component=self.args.xmpp_component,
            domain=self.args.xmpp_domain,
            publishers=publishers,
        )

    async def _run_node(self, config: NodeConfig) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with Node.open(self.data.path, config=config) as node:
                self.say(f"node     {node.node_id.text}")
                for endpoint in node.endpoints:
                    self.say(f"endpoint {endpoint}")
                self.say(f"address  {node.address_token()}")
                if node.api_url is not None:
                    self.say(f"api      {node.api_url}")
                if node.api_socket is not None:
                    self.say(f"socket   {node.api_socket}")
                if node.metrics_url is not None:
                    self.say(f"metrics  {node.metrics_url}")
                if node.stomp_address is not None:
                    self.say(f"stomp    {node.stomp_address}")
                if config.xmpp is not None:
                    self.say(f"xmpp     {config.xmpp.domain} via {config.xmpp.component}")
                self.out.flush()
                log.info(
                    "ptth node %s running; Ctrl-C to stop ('ptth dashboard' opens its dashboard)",
                    node.node_id.short,
                )
                log.debug("local API at %s", node.api_url or node.api_socket)
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    break
        log.info("stopped")

    @contextlib.contextmanager
    def _idempotent(self, command: str) -> Iterator[str]:
        """This invocation's idempotency key (``--idempotency-key``, else a new one):
        the ApiClient's retries after a lost connection repeat it, so the node sends
        one frame at most; and if no answer ever comes, the error says how to retry."""
        key: str = self.args.idempotency_key or _new_key()
        try:
            yield key
        except Unconfirmed as exc:
            raise NodeError(
                f"{exc.reason}: it may or may not be in custody; retry safely with: "
                f"ptth {command} --idempotency-key {key} (and the same arguments)"
            ) from exc

    def _replayed(self, answer: dict[str, Any], key: str) -> None:
        # A key of the command's own is replayed only to its own retry: nothing to say.
        if answer.get("replayed") and self.args.idempotency_key is not None:
            self.note(f"done before with idempotency key {key}: this is its first answer")

    def cmd_send(self) -> None:
        if self.args.timeout is not None and not self.args.wait:
            raise UsageError("--timeout needs --wait")
        if self.args.cap is not None:
            with ApiClient(self.data.path) as api:
                self._hold_cap(api)
        if self.args.lines:
            self._check_lines_usage()
            trio.run(self._send_lines)
            return
        if self.args.message is None:
            raise UsageError(
                "say what to send: TEXT, @FILE or - (stdin), or --lines to send each line "
                "of stdin as a message"
            )
        if self.args.json:
            raise UsageError("--json is for --lines (one JSON object per message sent)")
        body = _read_body_argument(self.args.message, self.stdin)
        started = time.monotonic()
        with (
            self._idempotent("send") as key,
            ApiClient(self.data.path, timeout=None, retry_for=API_RETRY_FOR) as api,
        ):
            answer = api.send(
                self.args.node_id,
                body,
                self.args.content_type,
                wait=self.args.wait,
                timeout=self.args.timeout,
                idempotency_key=key,
            )
        self._replayed(answer, key)
        where = "held: no route yet" if answer["held"] else f"next hop {answer['next_hop'][:10]}"
        self.say(f"id {answer['id']}  in custody, {where}")
        if not self.args.wait:
            return
        latency = time.monotonic() - started
        state = answer.get("state")
        if state == "delivered":
            self.say(
                f"delivered to {answer['to'][:10]} after {answer['hops']} hops"
                f" in {latency * 1000:.0f} ms"
            )
            return
        raise NodeError(answer.get("error") or f"not delivered ({state})")

    # -- ptth send --lines ----------------------------------------------------------------

    def _check_lines_usage(self) -> None:
        if self.args.message is not None:
            raise UsageError(
                "with --lines the messages come from stdin, one a line: give no TEXT "
                f"(got {self.args.message[:40]!r})"
            )
        if self.args.wait:
            raise UsageError(
                "--wait is for one message; with --lines, 'ptth trace ID' shows where each is"
            )
        try:
            crypto.NodeId.parse(self.args.node_id)
        except crypto.CryptoError as exc:
            raise UsageError(f"NODE_ID: {exc}") from None
        if self.args.node_id == self._own_id():
            raise UsageError("that is this node's own id: a node does not send to itself")
        key = self.args.idempotency_key
        if key is not None and len(key) > _LINES_KEY_MAX:
            raise UsageError(
                f"with --lines the idempotency key gets ':<batch number>' appended: give "
                f"at most {_LINES_KEY_MAX} characters, not {len(key)}"
            )

    def _stdin_reader(self) -> Callable[[], bytes]:
        """A blocking read of what stdin has now (at most :data:`_READ_SIZE` bytes; b""
        at its end), for a worker thread. From the file descriptor, not through Python's
        buffered reader: a thread left blocked in a read (Ctrl-C) then holds no lock that
        the interpreter needs when it exits."""
        try:
            fd = self.stdin.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None  # io.UnsupportedOperation is an OSError and a ValueError
        if fd is not None:
            return functools.partial(os.read, fd, _READ_SIZE)
        text = self.stdin  # a text-only stream (tests): its text as UTF-8

        def read() -> bytes:
            return text.read(_READ_SIZE).encode("utf-8", "surrogateescape")

        return read

    async def _read_lines(self, lines: trio.MemorySendChannel[list[bytes] | _Unreadable]) -> None:
        """Read stdin in a worker thread and pass on its lines (without their line
        breaks, ``\n`` or ``\r\n``) as soon as each read ends: a slow producer's line
        goes on at once. A last line without a line break counts too."""
        read = self._stdin_reader()
        longest = crypto.MAX_BODY_SIZE + 1  # a body, and a "\r"
        number = 0  # lines passed on
        async with lines:
            pending: list[bytes] = []  # the start of a line still being read
            pending_size = 0
            while True:
                chunk = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
                if not chunk:
                    if pending_size:  # a last line without a line break
                        await lines.send([_no_cr(b"".join(pending))])
                    return
                *complete, rest = chunk.split(b"\n")
                if complete:
                    complete[0] = b"".join([*pending, complete[0]])
                    pending, pending_size = [], 0
                    too_long = next(
                        (i for i, line in enumerate(complete) if len(line) > longest), None
                    )
                    if too_long is not None:
                        await lines.send([_no_cr(line) for line in complete[:too_long]])
                        await lines.send(_too_long(number + too_long + 1))
                        return
                    number += len(complete)
                    await lines.send([_no_cr(line) for line in complete])
                pending.append(rest)
                pending_size += len(rest)
                if pending_size > longest:
                    await lines.send(_too_long(number + 1))
                    return

    async def _send_lines(self) -> None:
        """``ptth send --lines``: each line of stdin a message to NODE_ID, in batches of
        one request each; print each message's id as its batch is in custody.

        A batch goes when it is full (:data:`LINES_PER_BATCH` lines or
        :data:`BATCH_BYTES`), at the end of stdin, and, without ``--idempotency-key``,
        as soon as stdin has nothing more to give right now (so ``tail -f`` lines go at
        once, while a fast producer fills batches: lines pile up while one is sent).
        With ``--idempotency-key K`` batches are cut by count and size only, the same
        for the same input, and batch n carries key ``K:n``: a rerun of the same input
        takes nothing twice. Without one, each batch has a fresh key of its own (its
        retries after a lost connection are safe; a rerun is not)."""
        explicit = self.args.idempotency_key
        base = explicit or _new_key()
        idle_flush = explicit is None
        # Progress on a terminal's stderr, rewritten in place after each batch, when the
        # ids go elsewhere (a file, a pipe): a long send shows how far it is.
        progress = _is_terminal(self.err) and not _is_terminal(self.out)
        started = time.monotonic()
        batches = held = 0
        batch = _LineBatch()
        send, receive = trio.open_memory_channel[list[bytes] | _Unreadable](_READ_AHEAD)
        with ApiClient(self.data.path, timeout=None, retry_for=API_RETRY_FOR) as api:

            async def flush() -> None:
                nonlocal batch, batches, held
                if not batch.messages:
                    return
                batches += 1
                answer = await self._send_batch(api, batch, f"{base}:{batches}")
                held += sum(1 for sent in answer["sent"] if sent["held"])
                if progress:
                    elapsed = max(time.monotonic() - started, 1e-9)
                    print(
                        f"\r{batch.last:,} in custody ({batch.last / elapsed:,.0f}/s)",
                        end="",
                        file=self.err,
                        flush=True,
                    )
                batch = _LineBatch(first=batch.last + 1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_lines, send)
                async with receive:
                    while True:
                        try:
                            if batch.messages and idle_flush:
                                try:
                                    item = receive.receive_nowait()
                                except trio.WouldBlock:
                                    await flush()  # stdin has nothing more for now
                                    continue
                            else:
                                item = await receive.receive()
                        except trio.EndOfChannel:
                            break
                        if isinstance(item, _Unreadable):
                            await flush()
                            raise NodeError(f"{item.words}: {_sent_before(batch.first)}")
                        for raw in item:
                            number = batch.last + 1
                            try:
                                text = raw.decode("utf-8")
                            except UnicodeDecodeError as exc:
                                await flush()
                                raise NodeError(
                                    f"line {number} is not UTF-8 text (byte {exc.start + 1}): "
                                    f"{_sent_before(number)}"
                                ) from None
                            message: dict[str, Any] = {"to": self.args.node_id, "body": text}
                            if self.args.content_type:
                                message["ct"] = self.args.content_type
                            # As 'ptth send' does: 'ptth trace ID' can tell of delivery.
                            message["receipt"] = True
                            size = len(batch_line(message))
                            if batch.full_with(size):
                                await flush()
                            batch.messages.append(message)
                            batch.size += size
                await flush()
        if progress and batches:
            print(file=self.err)  # end the progress line
        elapsed = time.monotonic() - started
        count = batch.first - 1
        log.info(
            "sent %d message%s in %d batch%s in %.2f s (%.0f/s)%s",
            count,
            "" if count == 1 else "s",
            batches,
            "" if batches == 1 else "es",
            elapsed,
            count / elapsed if elapsed > 0 else 0,
            f"; {held} held here: no route yet" if held else "",
        )

    async def _send_batch(self, api: ApiClient, batch: _LineBatch, key: str) -> Any:
        """Send one batch (in a worker thread: the client blocks) and print its ids."""
        lines = _lines(batch.first, batch.last)
        started = time.monotonic()
        try:
            answer = await trio.to_thread.run_sync(
                functools.partial(api.send_batch, batch.messages, idempotency_key=key),
                abandon_on_cancel=True,
            )
        except Unconfirmed as exc:
            if self.args.idempotency_key is not None:
                advice = (
                    "; run again with the same input and --idempotency-key "
                    f"{self.args.idempotency_key}: what is in custody is not sent again"
                )
            else:
                advice = " (with --idempotency-key, running again with the same input is safe)"
            done = "" if batch.first == 1 else f"; {_in_custody(batch.first)}"
            raise NodeError(
                f"{exc.reason}: {lines} may or may not be in custody{done}; line "
                f"{batch.last + 1} on not sent{advice}"
            ) from exc
        except NodeError as exc:  # the node's refusal: nothing of the batch was taken
            words = re.sub(
                r"^line (\d+):",
                lambda found: f"line {batch.first + int(found[1]) - 1}:",
                str(exc),
            )
            raise NodeError(f"{words}: {_sent_before(batch.first)}") from exc
        log.debug(
            "%s (%d bytes) in custody in %.0f ms",
            lines,
            batch.size,
            (time.monotonic() - started) * 1000,
        )
        if answer.get("replayed") and self.args.idempotency_key is not None:
            self.note(
                f"{lines} were sent before with idempotency key {key}: these are their first ids"
            )
        for number, sent in enumerate(answer["sent"], batch.first):
            if self.args.json:
                self.say_json({"line": number, **sent})
            else:
                self.say(sent["id"])
        self.out.flush()
        return answer

    def _hold_cap(self, api: ApiClient) -> None:
        """``--cap``: the running node holds it (and presents it where it applies)."""
        if self.args.cap is None:
            return
        token = _read_token_argument(self.args.cap, self.stdin).strip()
        try:
            crypto.parse_capability(token)
        except crypto.CryptoError as exc:
            raise UsageError(f"--cap: {exc}") from exc
        api.hold_capability(token)

    def cmd_publish(self) -> None:
        body = _read_body_argument(self.args.message, self.stdin)
        with (
            self._idempotent("publish") as key,
            ApiClient(self.data.path, timeout=None, retry_for=API_RETRY_FOR) as api,
        ):
            self._hold_cap(api)
            answer = api.publish(
                self.args.topic, body, self.args.content_type, self.args.ttl, idempotency_key=key
            )
        self._replayed(answer, key)
        self.say(answer["id"])
        hops = len(answer["next_hops"])
        where = [f"to {hops} neighbour{'s' if hops != 1 else ''}"] if hops else []
        if answer["delivered_here"]:
            where.append("to a subscription here")
        note = " and ".join(where) if where else "no subscriber known yet"
        self.note(f"in custody, {note}")

    def cmd_subscribe(self) -> None:
        name = self.args.name
        if not self.args.patterns and name is None:
            raise UsageError(
                "say what to subscribe to: one PATTERN or more (or --name NAME alone to "
                "resume a named subscription)"
            )
        try:
            with ApiClient(self.data.path, timeout=None) as api:
                self._hold_cap(api)
            with (
                ApiClient(self.data.path, timeout=None) as api,
                contextlib.closing(api.subscribe(self.args.patterns, name=name)) as publications,
            ):
                for publication in publications:
                    self.show(publication, _publication_line)
                    if name is not None:
                        # Printed: done with it, the next run does not print it again.
                        api.ack_subscription(name, [publication["seq"]])
        except KeyboardInterrupt:
            # Ctrl-C is how a subscription ends: leaving unsubscribes (a named one
            # stays, and what comes for it waits for the next run).
            return

    def cmd_subscriptions(self) -> None:
        with ApiClient(self.data.path) as api:
            subscriptions = api.subscriptions()
        if self.args.json:
            self.say_json(subscriptions, indent=2)
            return
        if not subscriptions:
            self.note(
                "no named subscriptions (start one with 'ptth subscribe PATTERN --name NAME')"
            )
            return
        self.show_lines(_subscription_table(subscriptions, wide=self.args.wide))

    def cmd_unsubscribe(self) -> None:
        with ApiClient(self.data.path) as api:
            api.unsubscribe(self.args.name)
        self.say(f"unsubscribed {self.args.name} (what was pending for it is dropped)")

    def cmd_chirp_post(self) -> None:
        body = _read_body_argument(self.args.text, self.stdin)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NodeError(f"a post is UTF-8 text; byte {exc.start} is not") from None
        if self.args.text == "-" or self.args.text.startswith("@"):
            text = text.removesuffix("\n")  # a file's or a pipe's last line break
        with ApiClient(self.data.path) as api:
            answer = api.chirp_post(text)
        self.say(answer["id"])
        hops = len(answer["next_hops"])
        note = f"to {hops} neighbour{'s' if hops != 1 else ''}" if hops else "no follower known yet"
        self.note(f"posted, {note}")

    def cmd_chirp_follow(self) -> None:
        with ApiClient(self.data.path) as api:
            following = api.chirp_follow(self.args.node_id)
        self.say(f"following {self.args.node_id} ({len(following)} followed)")

    def cmd_chirp_unfollow(self) -> None:
        with ApiClient(self.data.path) as api:
            answer = api.chirp_unfollow(self.args.node_id)
        if not answer["unfollowed"]:
            raise NodeError(
                f"this node does not follow {self.args.node_id} (see 'ptth chirp following')"
            )
        self.say(f"unfollowed {self.args.node_id} ({len(answer['following'])} followed)")

    def cmd_chirp_following(self) -> None:
        with ApiClient(self.data.path) as api:
            following = api.chirp_following()
        if not following:
            self.note("following nobody yet ('ptth chirp follow NODE_ID')")
        for node_id in following:
            self.say(node_id)

    def cmd_chirp_timeline(self) -> None:
        def show(post: dict[str, Any]) -> None:
            self.show(post, _post_line, _post_bytes)

        if not self.args.follow:
            with ApiClient(self.data.path) as api:
                for post in api.chirp_timeline():
                    show(post)
            return
        try:
            with (
                ApiClient(self.data.path, timeout=None) as api,
                contextlib.closing(api.chirp_watch()) as posts,
            ):
                for post in posts:
                    show(post)
        except KeyboardInterrupt:
            return  # Ctrl-C is how following the timeline ends

    def cmd_routes(self) -> None:
        with ApiClient(self.data.path) as api:
            routes = api.routes()
        if self.args.json:
            self.say_json(routes, indent=2)
            return
        if not routes:
            self.say("no routes yet (peer with a node, or wait for announces)")
            return
        self.show_lines(_route_table(routes, wide=self.args.wide))

    def cmd_queues(self) -> None:
        with ApiClient(self.data.path) as api:
            queues = api.queues()
        if self.args.json:
            self.say_json(queues, indent=2)
            return
        if not queues:
            self.say("nothing queued, no neighbours")
            return
        self.show_lines(_queue_table(queues, wide=self.args.wide))

    def cmd_neighbours(self) -> None:
        with ApiClient(self.data.path) as api:
            neighbours = api.neighbours()
        if self.args.json:
            self.say_json(neighbours, indent=2)
            return
        if not neighbours:
            self.say("no neighbours (add a peer with 'ptth peer add TOKEN', or run with --relay)")
            return
        self.show_lines(_neighbour_table(neighbours, now=_now_ms(), wide=self.args.wide))

    def cmd_queue_purge(self) -> None:
        """``ptth queue purge NEXT_HOP``: what is queued for it, confirmed, dropped."""
        wanted: str = self.args.next_hop
        if not wanted:
            raise UsageError(
                "say whose queue: NEXT_HOP is a node id, a prefix of one, a name or 'held'"
            )
        with ApiClient(self.data.path, timeout=None) as api:
            queues = api.queues()
            neighbours = api.neighbours()
            hop = _resolve_next_hop(wanted, queues, neighbours)
            where = _queue_words(hop, neighbours)
            row = next((queue for queue in queues if queue["next_hop"] == hop), None)
            if row is None:
                if hop is not None:
                    raise NodeError(
                        f"this node has no queue for {hop}: it is no neighbour and nothing is "
                        "queued for it (see 'ptth queues')"
                    )
                row = {"frames": 0, "bytes": 0}
            if not row["frames"]:
                self.say(f"nothing {where}: nothing to purge")
                return
            what = f"{_many(row['frames'], 'frame')} ({human_bytes(row['bytes'])}) {where}"
            if not self.args.yes:
                self._confirm(f"purge {what}?")
            elif _is_terminal(self.err):
                self.note(f"purging {what} ...")
            answer = api.purge_queue(hop)
        purged = f"{_many(answer['frames'], 'frame')} ({human_bytes(answer['bytes'])})"
        self.say(f"purged {purged} {where}")

    def _confirm(self, question: str) -> None:
        """Ask ``question`` on a terminal; return if the answer is yes. Raises
        UsageError without a terminal (a script says ``--yes``), NodeError for no."""
        if not _is_terminal(self.stdin):
            raise UsageError(
                f"stdin is not a terminal, so nobody can be asked to {question[:-1]}: "
                "add --yes to purge without asking"
            )
        print(f"{for_terminal(question)} [y/N] ", end="", file=self.err, flush=True)
        reply = self.stdin.readline().strip()
        if reply.lower() not in ("y", "yes"):
            said = f"the answer was {reply[:20]!r}" if reply else "no answer"
            raise NodeError(f"not purged ({said}, not yes)")

    def cmd_trace(self) -> None:
        with ApiClient(self.data.path) as api:
            trace = api.trace(self.args.frame_id)
        if self.args.json:
            self.say_json(trace, indent=2)
            return
        self.say(f"frame {trace['id']} to {trace['to']}")
        self.say(f"  {_format_time(trace['created'])}  taken into custody here")
        if trace["state"] == "held":
            self.say("  held here: no route yet")
        elif trace["state"] == "queued":
            self.say(f"  queued here for {trace['next_hop'][:10]}")
        if trace["first_hop"]:
            self.say(
                f"  {_format_time(trace['first_accepted'])}  accepted by"
                f" {trace['first_hop'][:10]} (signed receipt)"
            )
        for receipt in trace["receipts"]:
            if receipt["state"] == "delivered" and receipt["by"] != trace["to"]:
                # Only the destination can deliver: the node keeps such a receipt, and
                # ignores it (the frame's state is not changed by it).
                self.say(
                    f"  {_format_time(receipt['at'])}  {receipt['by'][:10]} claims delivery,"
                    " but is not the destination: ignored"
                )
            elif receipt["state"] == "delivered":
                self.say(
                    f"  {_format_time(receipt['at'])}  delivered by {receipt['by'][:10]}"
                    f" after {receipt['hops']} hops"
                )
            else:
                self.say(
                    f"  {_format_time(receipt['at'])}  dropped at {receipt['by'][:10]}:"
                    f" {receipt['why']}"
                )
        if trace["state"] == "forwarded" and not trace["receipts"]:
            tail = "" if trace["receipt_asked"] else " (no delivery receipt was asked for)"
            self.say(f"  in the mesh; no receipt yet{tail}")

    def cmd_inbox(self) -> None:
        with ApiClient(self.data.path) as api:
            for message in api.inbox(follow=self.args.follow):
                self.show(message, _message_line)
                # Printed: done with it, the next run does not print it again.
                api.ack([f"{message['src']}:{message['id']}"])

    def cmd_status(self) -> None:
        interval: float | None = self.args.rates
        with ApiClient(self.data.path) as api:
            before = None
            started = time.monotonic()
            if interval is not None:
                before = api.status()
                if _is_terminal(self.err):
                    self.note(f"measuring rates over {interval:g} s ...")
                time.sleep(interval)  # what --rates measures over, not a wait for an event
            status = api.status()
            elapsed = time.monotonic() - started
        if self.args.json:
            self.say_json(status, indent=2)
            return
        wide: bool = self.args.wide
        now = _now_ms()
        name = f" ({status['name']})" if status.get("name") else ""
        self.say(f"node      {status['node']}{name}")
        for endpoint in status.get("endpoints", []):
            self.say(f"endpoint  {endpoint}")
        if status.get("uptime") is not None:
            self.say(f"uptime    {human_age(status['uptime'])}")
        inbox, queued = status.get("inbox", {}), status.get("queued", {})
        self.say(
            f"inbox     {_many(inbox.get('frames', 0), 'message')}, "
            f"{human_bytes(inbox.get('bytes'))}"
        )
        self.say(
            f"queued    {_many(queued.get('frames', 0), 'frame')}, "
            f"{human_bytes(queued.get('bytes'))}"
        )

        neighbours = status.get("neighbours", [])
        states = collections.Counter(str(link.get("state")) for link in neighbours)
        summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        self._section(
            f"neighbours: {len(neighbours)}" + (f" ({summary})" if summary else ""),
            _neighbour_table(neighbours, now=now, wide=wide, indent=2) if neighbours else [],
        )
        routes = status.get("routes")
        sample = status.get("route_sample")
        if isinstance(routes, int):
            more = ""
            if sample and routes > len(sample):
                more = f", the first {len(sample)} ('ptth routes' lists all)"
            self._section(
                f"routes: {_many(routes, 'destination')}{more}",
                _route_table(sample, wide=wide, indent=2) if sample else [],
            )
        tree = status.get("tree")
        if isinstance(tree, dict):
            if tree.get("root") is None:
                self.say("tree      no place yet (no neighbour has offered one)")
            elif tree.get("parent") is None:
                self.say(f"tree      the root, {_short(tree['root'])}")
            else:
                self.say(
                    f"tree      depth {tree.get('depth')} under root {_short(tree['root'])},"
                    f" parent {_short(tree['parent'])}"
                )
        if "queues" in status:
            queues = [queue for queue in status["queues"] if queue.get("frames")]
            self._section(
                f"queues: {_many(len(queues), 'next hop')} with frames queued"
                if queues
                else "queues: nothing queued",
                _queue_table(queues, wide=wide, indent=2) if queues else [],
            )
        attachments = status.get("attachments", [])
        if attachments:
            self._section(
                f"attached to relays: {len(attachments)}",
                _attachment_table(attachments, now=now, wide=wide, indent=2),
            )
        relaying = status.get("relaying", [])
        if relaying:
            self._section(
                f"relaying for: {_many(len(relaying), 'node')}",
                _relaying_table(relaying, wide=wide, indent=2),
            )
        if "subscriptions" in status:
            subscriptions = status["subscriptions"]
            self._section(
                f"subscriptions: {len(subscriptions)} named",
                _subscription_table(subscriptions, wide=wide, indent=2) if subscriptions else [],
            )
        peers = status.get("peers", [])
        self._section(
            f"peers: {len(peers)}", _peer_table(peers, wide=wide, indent=2) if peers else []
        )
        counters = status.get("counters", {})
        if before is None:
            uptime = status.get("uptime")
            self._section(
                "counters: since start" + (", per second on average" if uptime else ""),
                _counter_table(counters, uptime or None, None),
            )
        else:
            span = _span(before, status, elapsed)
            self._section(
                f"counters: since start, per second over the last {span:.1f} s",
                _counter_table(counters, span, before.get("counters", {})),
            )

    def _section(self, title: str, lines: list[str]) -> None:
        """A blank line, the section's title, and its table (indented)."""
        self.say()
        self.say(title)
        self.show_lines(lines)

    def cmd_dashboard(self) -> None:
        """Print the link to the running node's dashboard (token in the fragment, which
        the browser keeps to itself); ``--open`` opens it in a browser."""
        with ApiClient(self.data.path) as api:
            api.status()  # the node answers: api.json and api.token are its own
        info = json.loads((self.data.path / "api.json").read_text(encoding="utf-8"))
        token = (self.data.path / "api.token").read_text(encoding="ascii").strip()
        url = info.get("url")
        if not isinstance(url, str):
            raise NodeError(
                "this node serves its API on its Unix socket only (ptth run --api-listen "
                "none), where a browser cannot go: restart it with --api-listen "
                "127.0.0.1:PORT (or without the option)"
            )
        base = url.removesuffix("/").removesuffix("/api/v1")
        link = f"{base}/{'chirp' if self.args.chirp else ''}#token={token}"
        self.say(link)
        if self.args.open:
            import webbrowser  # only for --open: it reads the environment at import

            if not webbrowser.open(link):
                raise NodeError("found no browser to open: open the link above yourself")

    def cmd_policy(self) -> None:
        with ApiClient(self.data.path) as api:
            policy = api.policy()
        if self.args.json:
            self.say_json(policy, indent=2)
            return
        self.say(f"admission  {policy['admission']}  ({_ADMISSION[policy['admission']]})")
        self.say(f"inbox      {policy['inbox']}  ({_INBOX[policy['inbox']]})")
        for kind in ("blocked", "allowed", "trusted"):
            self.say(f"{kind:<11}{len(policy[kind])}")
            for node_id in policy[kind]:
                self.say(f"  {node_id}")

    def cmd_policy_change(self) -> None:
        change: str = self.args.change
        node_id: str = self.args.node_id
        if change == "block" and node_id == self._own_id():
            raise UsageError("that is this node's own id: a node does not block itself")
        with ApiClient(self.data.path) as api:
            policy = api.change_policy(change, node_id)
        self.say(_policy_change_line(change, node_id, policy))

    def _own_id(self) -> str | None:
        try:
            return self.data.identity().node_id.text
        except (NodeError, crypto.CryptoError):
            return None  # no identity (yet): no node running either, as will be said

    def cmd_peer_add(self) -> None:
        identity = self.data.identity()
        text = _read_token_argument(self.args.token, self.stdin)
        address = crypto.parse_token(text, now=_now_ms())
        if address.node == identity.node_id:
            raise NodeError("that token is this node's own address; add another node's token")
        try:
            added = self.data.peers.add(address, now=_now_ms())
        except crypto.Stale as exc:
            raise NodeError(f"not added: {exc}") from exc
        # A running node makes it a neighbour and greets it at once (else within its
        # next tick, when it rescans the peers).
        with contextlib.suppress(NotRunning), ApiClient(self.data.path) as api:
            api.add_peer(address.token)
        record = address.record
        label = f" ({record.name})" if record.name else ""
        verb = "added" if added else "already up to date:"
        self.say(f"{verb} peer {record.node.text}{label} seq {record.seq}")

    def cmd_peer_list(self) -> None:
        now = _now_ms()
        for address in self.data.peers:
            record = address.record
            state = "expired" if record.exp <= now else f"until {_format_time(record.exp)}"
            name = record.name or "-"
            endpoints = " ".join(record.endpoints)
            self.say(f"{record.node.text}  {name}  seq {record.seq}  {state}  {endpoints}")

    def cmd_peer_remove(self) -> None:
        node = crypto.NodeId.parse(self.args.node_id)
        self.data.peers.remove(node)
        self.say(f"removed peer {node.text}")

    # -- capabilities -----------------------------------------------------------------

    def _capability_book(self) -> mesh.CapabilityBook:
        """The capability tables of this node's store (the directory must exist)."""
        if not self.data.path.is_dir():
            raise NodeError(
                f"no data directory {self.data.path}: run 'ptth init --data-dir "
                f"{self.data.path}' first"
            )
        return mesh.CapabilityBook(self.data.path / _STORE_FILE)

    def _cap_target(
        self, identity: crypto.Identity, ops: Sequence[str], on: str | None
    ) -> crypto.Target:
        """The object ``--op`` and ``--on`` designate, owned by ``identity``."""
        kinds = {kind for kind, allowed in _CAP_KINDS.items() if set(ops) & allowed}
        if len(kinds) != 1:
            raise UsageError(
                f"operations {', '.join(ops)} are not of one kind of object: "
                "publish/subscribe (a topic), send (the inbox), attach/store (the relay) "
                "or call (a named object)"
            )
        (kind,) = kinds
        if kind in (crypto.ObjectKind.TOPIC, crypto.ObjectKind.OBJECT) and on is None:
            what = "a topic pattern" if kind is crypto.ObjectKind.TOPIC else "an object name"
            raise UsageError(f"--op {ops[0]} needs --on with {what}")
        if kind in (crypto.ObjectKind.INBOX, crypto.ObjectKind.RELAY) and on is not None:
            raise UsageError(f"--op {ops[0]} acts on this node's {kind}: leave out --on")
        node = identity.node_id
        if kind is crypto.ObjectKind.TOPIC:
            assert on is not None
            return crypto.Target.topic(node, on)
        if kind is crypto.ObjectKind.OBJECT:
            assert on is not None
            return crypto.Target.named(node, on)
        return crypto.Target(kind, node)

    def _cap_caveats(self, now: int) -> dict[str, int | None]:
        """The limits given on the command line (None: not given)."""
        args = self.args
        return {
            "exp": None if args.expires is None else now + args.expires * 1000,
            "uses": args.uses,
            "rate": args.rate,
            "quota": args.quota,
        }

    def cmd_cap_grant(self) -> None:
        identity = self.data.identity()
        now = _now_ms()
        ops = sorted(set(self.args.op))
        target = self._cap_target(identity, ops, self.args.on)
        if self.args.quota is not None and crypto.Operation.STORE not in ops:
            raise UsageError("--quota goes with --op store")
        revoker = None if self.args.revoker is None else crypto.NodeId.parse(self.args.revoker)
        capability = crypto.grant(
            identity,
            target,
            ops,
            subject=_cap_subject(self.args.to),
            now=now,
            cap_id=secrets.token_bytes(crypto.CAPABILITY_ID_SIZE),
            caveats=crypto.Caveats().narrowed(**self._cap_caveats(now)),
            revoker=revoker,
        )
        with self._capability_book() as book:
            book.record_grant(capability)
        self.note(f"granted capability {capability.id_text}")
        self.say(capability.token)

    def cmd_cap_delegate(self) -> None:
        identity = self.data.identity()
        parent = crypto.parse_capability(_read_token_argument(self.args.token, self.stdin))
        now = _now_ms()
        if self.args.quota is not None and crypto.Operation.STORE not in (
            self.args.op or parent.ops
        ):
            raise UsageError("--quota goes with --op store")
        ops = None if not self.args.op else sorted(set(self.args.op))
        target = None
        if self.args.on is not None:
            owner = parent.target.node
            if parent.target.kind is crypto.ObjectKind.TOPIC:
                target = crypto.Target.topic(owner, self.args.on)
            elif parent.target.kind is crypto.ObjectKind.OBJECT:
                target = crypto.Target.named(owner, self.args.on)
            else:
                raise UsageError(f"the capability is for a {parent.target.kind}: leave out --on")
        try:
            capability = crypto.delegate(
                identity,
                parent,
                subject=_cap_subject(self.args.to),
                now=now,
                cap_id=secrets.token_bytes(crypto.CAPABILITY_ID_SIZE),
                target=target,
                ops=ops,
                caveats=parent.caveats.narrowed(**self._cap_caveats(now)),
            )
        except crypto.CapabilityRefused as exc:
            raise NodeError(f"not delegated: {exc}") from exc
        with self._capability_book() as book:
            book.record_grant(capability)
        self.note(f"delegated capability {capability.id_text}")
        self.say(capability.token)

    def cmd_cap_show(self) -> None:
        capability = crypto.parse_capability(_read_token_argument(self.args.token, self.stdin))
        now = _now_ms()
        if self.args.json:
            self.say_json([_cap_json(link) for link in capability.chain], indent=2)
            return
        revoked = crypto.RevocationSet()
        if (self.data.path / _STORE_FILE).exists():
            with self._capability_book() as book:
                revoked = book.revocations()
        leaf = capability
        who = "anyone holding it" if leaf.subject is None else leaf.subject.text
        self.say(f"capability {leaf.id_text}")
        self.say(f"  who:     {who}")
        self.say(f"  may:     {', '.join(sorted(leaf.ops))}")
        self.say(f"  on:      {leaf.target.describe()}")
        self.say(f"  owner:   {leaf.owner.text}")
        for line in leaf.limits():
            self.say(f"  limit:   {line}")
        self.say(f"  state:   {_cap_state(leaf, now, revoked)}")
        self.say(f"chain ({_many(leaf.depth, 'link')}, the root first):")
        for line in leaf.describe():
            self.say(f"  {line}")

    def cmd_cap_revoke(self) -> None:
        identity = self.data.identity()
        argument = _read_token_argument(self.args.id, self.stdin).strip()
        with self._capability_book() as book:
            if argument.startswith(crypto.CAPABILITY_TOKEN_PREFIX):
                capability = crypto.parse_capability(argument)
                if identity.node_id not in (capability.issuer, capability.revoker):
                    raise NodeError(
                        f"this node neither issued capability {capability.id_text} nor is "
                        "named its revoker: a revocation by it would change nothing"
                    )
                cap_id = capability.id
            else:
                cap_id = _cap_id(argument)
                if book.grant(cap_id) is None:
                    raise NodeError(
                        f"this node granted no capability {argument}: give the token "
                        "instead if this node is named its revoker (see 'ptth cap list')"
                    )
            revocation = crypto.Revocation.sign(identity, cap_id, now=_now_ms())
            try:
                # A running node keeps it, enforces it at once and floods it to the mesh.
                with ApiClient(self.data.path) as api:
                    added = bool(api.revoke(revocation.envelope)["added"])
                where = "; the node floods it to the mesh"
            except NotRunning:
                added = book.add_revocation(revocation)
                where = "; the node floods it to its neighbours when it next runs"
        verb = "revoked" if added else "already revoked:"
        self.say(f"{verb} capability {cap_id.hex()}")
        self.note(f"kept in {self.data.path / 'store.sqlite3'}{where}")

    def cmd_cap_list(self) -> None:
        now = _now_ms()
        with self._capability_book() as book:
            grants = book.grants()
            revocations = book.revocation_list()
        if self.args.json:
            self.say_json(
                {
                    "granted": [
                        {**_cap_json(g.capability), "revoked": g.revoked is not None}
                        for g in grants
                    ],
                    "revocations": [
                        {"id": r.id_text, "signer": r.signer.text, "ts": r.ts} for r in revocations
                    ],
                },
                indent=2,
            )
            return
        columns = [
            Column("ID"),
            Column("TO", limit=10),
            Column("MAY"),
            Column("ON", limit=40),
            Column("UNTIL"),
            Column("STATE"),
        ]
        rows = []
        for item in grants:
            cap = item.capability
            rows.append(
                [
                    cap.id_text,
                    "anyone" if cap.subject is None else cap.subject.text,
                    ",".join(sorted(cap.ops)),
                    cap.target.pattern or cap.target.name or str(cap.target.kind),
                    "-" if cap.caveats.exp is None else _format_time(cap.caveats.exp),
                    _cap_state(cap, now, crypto.RevocationSet(filter(None, [item.revoked]))),
                ]
            )
        if not rows:
            self.say("granted: none")
        else:
            plural = "capability" if len(rows) == 1 else "capabilities"
            self.say(f"granted ({len(rows)} {plural}):")
            self.show_lines(render(columns, rows, wide=self.args.wide, indent=2))
        if revocations:
            self.say(f"revocations held ({_many(len(revocations), 'revocation')}):")
            for revocation in revocations:
                self.say(
                    f"  {revocation.id_text}  by {revocation.signer.text}  at "
                    f"{_format_time(revocation.ts)}"
                )

    # -- objects, calls and capability URLs (node/_objects.py) ---------------------------

    def cmd_expose(self) -> None:
        args = self.args
        kinds = {
            "forward": args.forward,
            "inbox": args.inbox or None,
            "topic": args.topic,
            "queue": args.queue,
        }
        chosen = [kind for kind, value in kinds.items() if value is not None]
        if args.list or args.remove is not None:
            if args.name is not None or chosen or args.open:
                raise UsageError("--list and --remove take nothing else")
            with ApiClient(self.data.path) as api:
                if args.remove is not None:
                    api.remove_object(args.remove)
                    self.say(f"removed object {args.remove} (its capability URLs are revoked)")
                    return
                objects = api.objects()
            if args.json:
                self.say_json(objects, indent=2)
            elif not objects:
                self.note("no objects exposed (expose one with 'ptth expose NAME --forward URL')")
            else:
                columns = [Column("NAME"), Column("KIND"), Column("TARGET", limit=50),
                           Column("WHO MAY CALL"), Column("KEPT")]  # fmt: skip
                rows = [
                    [
                        item["name"],
                        item["kind"],
                        item["target"] or "-",
                        "anyone" if item["open"] else "capability holders",
                        "yes" if item["saved"] else "no (its program's)",
                    ]
                    for item in objects
                ]
                self.show_lines(render(columns, rows, wide=args.wide))
            return
        if args.name is None or len(chosen) != 1:
            raise UsageError(
                "say which object: ptth expose NAME --forward URL | --inbox | --topic TOPIC | "
                "--queue SUBSCRIPTION [--open] (or --list, or --remove NAME)"
            )
        (kind,) = chosen
        target = None if kind == "inbox" else kinds[kind]
        with ApiClient(self.data.path) as api:
            exposed = api.expose(args.name, kind, target, open=args.open)
        what = {
            "forward": f"forwards to {target}",
            "inbox": "sends to the inbox",
            "topic": f"publishes on {target}",
            "queue": f"gets from subscription {target}",
        }
        self.say(f"exposed {exposed['name']}: {what[kind]}")
        if args.open:
            self.note("open: anyone who can reach this node may call it")
        else:
            self.note(
                f"callers need a capability: 'ptth cap grant --to NODE_ID --op call --on "
                f"{exposed['name']}' (or a capability URL: 'ptth cap url {exposed['name']}')"
            )

    def cmd_call(self) -> None:
        args = self.args
        target: str = args.target
        if target.startswith(("http://", "https://")):
            self._call_url(target)
            return
        node_id, slash, name = target.partition("/")
        if not slash or not name:
            raise UsageError(f"call NODE_ID/NAME or a capability URL, not {target[:80]!r}")
        crypto.NodeId.parse(node_id)  # a clear error before the node is asked
        if args.operation is None:
            raise UsageError("say which operation: ptth call NODE_ID/NAME OPERATION [BODY]")
        body = b"" if args.body is None else _read_body_argument(args.body, self.stdin)
        cap = None if args.cap is None else _read_token_argument(args.cap, self.stdin).strip()
        with ApiClient(self.data.path, timeout=args.timeout + 10) as api:
            reply = api.call(
                node_id, name, args.operation, body, ct=args.content_type, cap=cap,
                timeout=args.timeout,
            )  # fmt: skip
        status = int(reply["status"])
        if not 200 <= status < 300:
            why = reply.get("why") or "(no reason given)"
            raise NodeError(f"{short_id(node_id)}/{name} answered {status}: {why}")
        self._write_body(_body_bytes(reply))

    def _call_url(self, url: str) -> None:
        """``ptth call URL [OPERATION] [BODY]``: plain HTTP to a capability URL. An HTTP
        method (GET, POST, ...) is sent as such (a forwarded web service); another
        operation is ``POST`` with ``ptth-operation``. No operation: GET, or POST with a
        body."""
        args = self.args
        if args.cap is not None:
            raise UsageError("a capability URL is its own authority: leave out --cap")
        body = b"" if args.body is None else _read_body_argument(args.body, self.stdin)
        operation = args.operation
        headers = {"content-type": args.content_type} if args.content_type else {}
        if operation is None:
            method = "POST" if body else "GET"
        elif re.fullmatch(r"[A-Z]{1,16}", operation):
            method = operation
        else:
            method = "POST"
            headers["ptth-operation"] = operation
        try:
            with httpx.Client(timeout=args.timeout) as client:
                response = client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise NodeError(f"{url[:80]}: no answer within {args.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise NodeError(f"{url[:80]}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            why = response.headers.get("ptth-why") or response.text.strip()[:300]
            raise NodeError(f"{response.status_code}: {why or response.reason_phrase}")
        self._write_body(response.content)

    def _write_body(self, body: bytes) -> None:
        """A reply's body: as it is, or on a terminal as text whose control characters
        cannot act on it."""
        if _is_terminal(self.out) and not self.args.raw:
            self.say(body.decode("utf-8", "replace").rstrip("\n"))
        else:
            self.write_raw(body)

    def cmd_cap_url(self) -> None:
        args = self.args
        if args.list or args.revoke is not None:
            if args.name is not None:
                raise UsageError("--list and --revoke take no object name")
            with ApiClient(self.data.path) as api:
                if args.revoke is not None:
                    api.revoke_url(args.revoke)
                    self.say(f"revoked capability URL {args.revoke}")
                    return
                urls = api.cap_urls()
            if args.json:
                self.say_json(urls, indent=2)
            elif not urls:
                self.note("no capability URLs (mint one with 'ptth cap url NAME')")
            else:
                columns = [Column("ID"), Column("OBJECT"), Column("CREATED"), Column("STATE")]
                rows = [
                    [
                        item["id"],
                        item["object"],
                        _format_time(item["created"]),
                        "valid" if item["revoked"] is None
                        else f"revoked {_format_time(item['revoked'])}",
                    ]
                    for item in urls
                ]  # fmt: skip
                self.show_lines(render(columns, rows, wide=args.wide))
            return
        if args.name is None:
            raise UsageError("say which object: ptth cap url NAME (or --list, or --revoke ID)")
        with ApiClient(self.data.path) as api:
            minted = api.mint_url(args.name)
        if args.json:
            self.say_json(minted, indent=2)
            return
        for url in minted["urls"]:
            self.say(url)
        self.note(
            f"capability URL {minted['id']} for {minted['object']}: "
            "whoever holds it may use the object; shown once (only a digest is kept); "
            f"revoke it with 'ptth cap url --revoke {minted['id']}'"
        )


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (exit status 2), saying where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: usage: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    # --data-dir is accepted before and after the command; the copy on the commands
    # must not default, or it would overwrite a value given before the command.
    common = _Parser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the node's data directory (default: $PTTH_DATA_DIR, else a per-user directory)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logs on stderr: -v what the node does (ptth run: links, retries, drops, "
        "refused requests, relays) and the CLI's retries; -vv also debug details (the "
        "configuration, each batch of frames taken, each local API request)",
    )
    parser = _Parser(
        prog="ptth",
        description="ptth: a peer-to-peer relay mesh of signed messages over HTTP.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ptth {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[Cli], None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    command("init", Cli.cmd_init, "create this node's identity if absent; print its node id")
    command("id", Cli.cmd_id, "print this node's id")
    address = command(
        "address",
        Cli.cmd_address,
        "sign a new address record with --endpoint, or print the current address token",
    )
    address.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        help="an http(s) URL where this node can be reached (repeatable)",
    )
    address.add_argument("--name", help="a display name to put in the record")
    address.add_argument(
        "--expires-in",
        type=parse_duration,
        default=parse_duration(DEFAULT_ADDRESS_LIFETIME),
        metavar="DURATION",
        help=f"how long the record is valid (default {DEFAULT_ADDRESS_LIFETIME})",
    )

    run = command(
        "run", Cli.cmd_run, "run a node in the foreground (creates its identity if absent)"
    )
    run.add_argument(
        "--listen",
        type=_listen_address,
        default=NodeConfig.listen,
        metavar="HOST:PORT",
        help="where to accept HTTP (default %(default)s; port 0 picks a free port)",
    )
    run.add_argument(
        "--api-listen",
        type=_api_listen_address,
        default=NodeConfig.api_listen,
        metavar="HOST:PORT",
        help="the local API's and the dashboard's TCP listener, on loopback only "
        "(default %(default)s: a free port, named by api.json in the data directory; "
        "'none': only the Unix socket DIR/api.sock)",
    )
    run.add_argument(
        "--stomp",
        type=_listen_address,
        metavar="HOST:PORT",
        help="also serve STOMP 1.2 here, for any STOMP client (e.g. 127.0.0.1:61613; "
        "loopback only unless --stomp-allow-remote; default: no STOMP)",
    )
    run.add_argument(
        "--stomp-allow-remote",
        action="store_true",
        help="let --stomp listen on a non-loopback address (clients must then log in "
        "with a login:passcode line of DIR/stomp.users)",
    )
    run.add_argument(
        "--xmpp-component",
        metavar="HOST:PORT",
        help="run an XMPP gateway: connect to this XMPP server's component port "
        "(XEP-0114, e.g. 127.0.0.1:5347) as --xmpp-domain; default: no XMPP",
    )
    run.add_argument(
        "--xmpp-domain",
        metavar="DOMAIN",
        help="the component's domain, as the XMPP server's config names it (topic JIDs "
        "are TOPIC@DOMAIN)",
    )
    run.add_argument(
        "--xmpp-secret-file",
        metavar="FILE",
        help="a file whose first line is the component secret the XMPP server has",
    )
    run.add_argument(
        "--xmpp-publishers",
        action="append",
        default=[],
        metavar="JIDS",
        help="who may publish by messaging a topic JID: comma-separated bare JIDs, "
        "@domain (its users) or * (anyone); repeatable; default: nobody",
    )
    run.add_argument(
        "--metrics-listen",
        type=_listen_address,
        metavar="HOST:PORT",
        help="also serve /metrics here, without a token, for a Prometheus server "
        "(default: only on the API listener, with the token)",
    )
    run.add_argument(
        "--public-url",
        type=_public_url,
        metavar="URL",
        help="the URL other nodes reach this one at (default: http://HOST:PORT of --listen)",
    )
    run.add_argument("--name", help="a display name for this node's address record")
    run.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="TOKEN",
        help="stay reachable through this relay (its address token, or @FILE); repeatable",
    )
    run.add_argument(
        "--cap",
        dest="caps",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a capability to present where it applies (to a relay that requires one to "
        "attach or store, on publications, subscriptions and messages it allows): a "
        "ptthcap: token or @FILE; repeatable",
    )
    run.add_argument(
        "--require-cap",
        dest="require_caps",
        action="append",
        default=[],
        metavar="WHAT",
        help="require a capability from this node for: publish=PATTERN (publishing on "
        "matching topics), subscribe=PATTERN (subscriptions reaching into them), send "
        "(writing to this node's inbox), attach (attaching to it as a relay), store "
        "(having it hold frames for others); repeatable; default: nothing required",
    )
    run.add_argument(
        "--relay-mode",
        choices=[m.value for m in RelayMode],
        default=RelayMode.AUTO.value,
        help="attach with PTTH Upgrade, long-poll, or auto (Upgrade, else long-poll)",
    )
    run.add_argument(
        "--relay-policy",
        choices=["open", "peers", "off"],
        default="open",
        help="who may attach to this node as their relay (default %(default)s)",
    )
    run.add_argument(
        "--forward",
        choices=["neighbours", "open", "off"],
        default=NodeConfig.forward_policy,
        help="whose frames this node forwards: its neighbours (peers, relays, nodes "
        "attached to it), anyone, or nobody (default %(default)s)",
    )
    run.add_argument(
        "--tree",
        action="store_true",
        help="build the spanning tree with the neighbours and take part in the DHT of "
        "coordinates: frames for nodes no route is known to go greedily by their coordinates",
    )
    run.add_argument(
        "--announce-radius",
        type=int,
        metavar="HOPS",
        help="with --tree: how many hops this node's announces go (default: as far as the hop "
        "limit); nodes farther off are reached by their coordinates",
    )
    run.add_argument(
        "--admission",
        choices=["neighbours", "open"],
        default=NodeConfig.admission,
        help="who may hand this node frames: its neighbours (peers, relays, nodes attached "
        "to it) or any node that signs its requests (default %(default)s)",
    )
    run.add_argument(
        "--inbox",
        dest="inbox_policy",
        choices=["anyone", "allow-list"],
        default=NodeConfig.inbox_policy,
        help="whose messages reach the inbox: anyone but blocked nodes, or only the nodes "
        "allowed with 'ptth allow' (default %(default)s)",
    )
    run.add_argument(
        "--announce-interval",
        type=parse_duration,
        default=int(NodeConfig.announce_interval),
        metavar="DURATION",
        help="how often this node announces itself to the mesh (default 10m)",
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="logs on stderr as text lines, or as JSON, one object a line (ts, level, "
        f"logger, message and any extra fields) (default: ${LOG_FORMAT_ENV}, else text)",
    )
    run.add_argument(
        "--log-level",
        choices=list(LOG_LEVELS),
        help="the least level logged (default: as -v says, else ${LOG_LEVEL_ENV}, else "
        "warning; the node's start and stop lines are always logged)",
    )

    send = command(
        "send",
        Cli.cmd_send,
        "send a message to any node of the mesh; returns once it is in durable custody",
    )
    send.add_argument("node_id", metavar="NODE_ID")
    send.add_argument(
        "message",
        nargs="?",
        metavar="TEXT|@FILE|-",
        help="the message, @FILE, or - for stdin (none with --lines)",
    )
    send.add_argument("--content-type", "--ct", dest="content_type", metavar="TYPE")
    cap_help = (
        "a capability to present (a ptthcap: token or @FILE): the node holds it for the "
        "rest of its run and presents it wherever it applies"
    )
    send.add_argument("--cap", metavar="TOKEN", help=cap_help)
    send.add_argument(
        "--lines",
        action="store_true",
        help="send each line of stdin (UTF-8 text, its line break stripped) as a message, "
        f"in batches (up to {LINES_PER_BATCH} lines or {BATCH_BYTES >> 20} MiB, sooner "
        "when stdin is idle); print each message's id as it is in custody",
    )
    send.add_argument(
        "--json",
        action="store_true",
        help="with --lines: print a JSON object per message (line, id, to, next_hop, held)",
    )
    send.add_argument(
        "--wait", action="store_true", help="wait for the delivery receipt (exit 1 if dropped)"
    )
    send.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1; the frame stays in the mesh)",
    )
    idempotency_help = (
        "send it at most once per KEY (1..255 printable ASCII characters, no spaces) "
        "within 24 h: a repeat prints the first answer (default: a new key, which the "
        "command's own retries reuse; the error after a lost connection names it)"
    )
    send.add_argument(
        "--idempotency-key",
        type=_idempotency_key,
        metavar="KEY",
        help=idempotency_help
        + "; with --lines, batch n uses KEY:n and batches are cut by count and size only, "
        "so running again with the same input sends nothing twice",
    )

    publish = command(
        "publish",
        Cli.cmd_publish,
        "publish a message to a topic, for every node subscribed to a matching pattern; "
        "returns once it is in durable custody and prints its frame id",
    )
    publish.add_argument(
        "topic",
        metavar="TOPIC",
        help="dot-separated words, e.g. news.tech (no wildcards); ~<your node id>.x is "
        "a secure name only this node may publish under",
    )
    publish.add_argument(
        "message", metavar="TEXT|@FILE|-", help="the message, @FILE, or - for stdin"
    )
    publish.add_argument(
        "--content-type", "--ct", dest="content_type", metavar="TYPE", help="e.g. text/plain"
    )
    publish.add_argument("--cap", metavar="TOKEN", help=cap_help)
    publish.add_argument(
        "--ttl",
        type=_ttl,
        metavar="DURATION",
        help="how long the mesh keeps it for subscribers not reached yet: seconds, or "
        "like 90m or 12h (default: the node's frame lifetime)",
    )
    publish.add_argument(
        "--idempotency-key",
        type=_idempotency_key,
        metavar="KEY",
        help=idempotency_help.replace("send it", "publish it"),
    )
    subscribe = command(
        "subscribe",
        Cli.cmd_subscribe,
        "print each publication whose topic matches a pattern, one line each, until Ctrl-C; "
        "with --name, a durable subscription: what came meanwhile is printed first",
    )
    subscribe.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="a topic pattern: dot-separated words, '*' for one word, '#' for zero or more "
        "(e.g. news.# or *.alerts); with --name, none means the patterns it has",
    )
    subscribe.add_argument(
        "--name",
        metavar="NAME",
        help="a durable subscription (1..64 of A-Z a-z 0-9 _ . -): it stays after Ctrl-C "
        "and a restart, and what it matches waits for the next run; each publication is "
        "acknowledged once printed (end it with 'ptth unsubscribe NAME')",
    )
    subscribe.add_argument("--cap", metavar="TOKEN", help=cap_help)
    _output_options(subscribe, "publication")
    subscriptions = command(
        "subscriptions", Cli.cmd_subscriptions, "list this node's named (durable) subscriptions"
    )
    _view_options(subscriptions)
    unsubscribe = command(
        "unsubscribe",
        Cli.cmd_unsubscribe,
        "end a named subscription: withdrawn from the mesh, what was pending for it dropped",
    )
    unsubscribe.add_argument("name", metavar="NAME")

    routes = command("routes", Cli.cmd_routes, "show the routes the running node holds")
    _view_options(routes)
    queues = command("queues", Cli.cmd_queues, "show what the running node holds for each next hop")
    _view_options(queues)
    neighbours = command(
        "neighbours",
        Cli.cmd_neighbours,
        "show the running node's neighbours: link state, when last heard, what is queued",
    )
    _view_options(neighbours)
    queue = commands.add_parser(
        "queue", help="act on what the running node holds for a next hop", parents=[common]
    )
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    purge_help = (
        "drop every frame queued for a next hop (its origins are not told; this node's own "
        "messages are traced as dropped); asks first"
    )
    purge = queue_commands.add_parser(
        "purge", help=purge_help, description=purge_help, parents=[common]
    )
    purge.set_defaults(handler=Cli.cmd_queue_purge)
    purge.add_argument(
        "next_hop",
        metavar="NEXT_HOP",
        help="a node id, a prefix of one or a peer's name (as 'ptth queues' and 'ptth "
        "neighbours' show them), or 'held' for the frames held with no route yet",
    )
    purge.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="do not ask (without it, a purge with no terminal to ask on is refused)",
    )
    trace = command("trace", Cli.cmd_trace, "show where a frame this node sent is known to be")
    trace.add_argument("frame_id", metavar="FRAME_ID", help="the id 'ptth send' printed")
    trace.add_argument("--json", action="store_true", help="print the raw JSON")

    inbox = command("inbox", Cli.cmd_inbox, "print received messages (and acknowledge them)")
    inbox.add_argument("-f", "--follow", action="store_true", help="keep waiting for more")
    _output_options(inbox, "message")

    status = command(
        "status",
        Cli.cmd_status,
        "an overview of the running node: itself, its neighbours, routes, queues, "
        "attachments, subscriptions, peers and counters",
    )
    _view_options(status)
    status.add_argument(
        "--rates",
        nargs="?",
        type=_positive_seconds,
        const=1.0,
        metavar="S",
        help="show the counters per second over the next S seconds (default 1) instead "
        "of on average since start: two readings, S seconds apart",
    )
    dashboard = command(
        "dashboard",
        Cli.cmd_dashboard,
        "print the link to the running node's web dashboard (with its access token: keep "
        "it to yourself); it opens on this machine only",
    )
    dashboard.add_argument("--open", action="store_true", help="open it in a web browser too")
    dashboard.add_argument(
        "--chirp", action="store_true", help="link to the chirp page instead of the overview"
    )

    for change, does in (
        ("block", "refuse a node: its requests get 403, its frames do not reach the inbox"),
        ("unblock", "take a node off the block list"),
        (
            "allow",
            "put a node on the allow-list: with 'ptth run --inbox allow-list' only the "
            "nodes on it reach the inbox",
        ),
        ("unallow", "take a node off the allow-list"),
        (
            "trust",
            "trust a neighbour: the messages it hands over for other nodes are passed on "
            "without their origin's signature checked here (faster; their destinations "
            "still check it)",
        ),
        ("untrust", "take a node off the trust list: its frames are checked again"),
    ):
        sub = command(
            change, Cli.cmd_policy_change, f"{does}; the running node keeps it across restarts"
        )
        sub.set_defaults(change=change)
        sub.add_argument("node_id", type=_node_id, metavar="NODE_ID")
    policy = command(
        "policy",
        Cli.cmd_policy,
        "show the running node's admission and inbox policy, and whom it blocks and allows",
    )
    policy.add_argument("--json", action="store_true", help="print the raw JSON")

    peer = commands.add_parser("peer", help="manage the peers this node knows", parents=[common])
    peer_commands = peer.add_subparsers(dest="peer_command", required=True, metavar="COMMAND")

    def peer_command(
        name: str, handler: Callable[[Cli], None], help: str
    ) -> argparse.ArgumentParser:
        sub = peer_commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add = peer_command("add", Cli.cmd_peer_add, "verify and store a peer's address token")
    add.add_argument("token", metavar="TOKEN", help="the token, @FILE to read it, - for stdin")
    peer_command("list", Cli.cmd_peer_list, "list known peers")
    remove = peer_command("remove", Cli.cmd_peer_remove, "forget a peer")
    remove.add_argument("node_id", metavar="NODE_ID")

    cap = commands.add_parser(
        "cap",
        help="capabilities: grant, delegate, show, revoke and list signed tokens",
        description="capabilities: signed tokens that let a node (or anyone holding one) "
        "publish, subscribe, send, attach, store or call; delegated only narrower; "
        "revocable (not enforced yet: see the README)",
        parents=[common],
    )
    cap_commands = cap.add_subparsers(dest="cap_command", required=True, metavar="COMMAND")

    def cap_command(
        name: str, handler: Callable[[Cli], None], help: str
    ) -> argparse.ArgumentParser:
        sub = cap_commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    def cap_options(sub: argparse.ArgumentParser, *, inherit: bool) -> None:
        kept = " (default: the parent's)" if inherit else ""
        sub.add_argument(
            "--to",
            required=True,
            type=_cap_to,
            metavar="NODE_ID|anyone",
            help="who may use it: a node id, or anyone holding the token",
        )
        sub.add_argument(
            "--op",
            action="append",
            required=not inherit,
            choices=[str(op) for op in crypto.Operation],
            help=f"an operation it allows (repeat for more){kept}",
        )
        sub.add_argument(
            "--on",
            metavar="PATTERN|NAME",
            help="the topic pattern (publish, subscribe) or object name (call) it is for" + kept,
        )
        sub.add_argument(
            "--expires",
            type=parse_duration,
            metavar="DURATION",
            help=f"valid for this long, e.g. 7d or 12h{kept or ' (default: no expiry)'}",
        )
        sub.add_argument("--uses", type=_count, metavar="N", help=f"at most N uses{kept}")
        sub.add_argument("--rate", type=_count, metavar="N", help=f"at most N uses a minute{kept}")
        sub.add_argument(
            "--quota", type=_byte_count, metavar="BYTES", help=f"most bytes stored (store){kept}"
        )

    grant = cap_command(
        "grant",
        Cli.cmd_cap_grant,
        "sign a capability on this node's topics, inbox, relay or objects; print its token",
    )
    cap_options(grant, inherit=False)
    grant.add_argument(
        "--revoker", type=_node_id, metavar="NODE_ID", help="a node that may revoke it too"
    )
    delegate = cap_command(
        "delegate",
        Cli.cmd_cap_delegate,
        "sign a narrower capability from one this node holds; print its token",
    )
    delegate.add_argument("token", metavar="TOKEN", help="the token, @FILE to read it, - for stdin")
    cap_options(delegate, inherit=True)
    show = cap_command(
        "show", Cli.cmd_cap_show, "explain a capability token: who, what, on what, until when"
    )
    show.add_argument("token", metavar="TOKEN", help="the token, @FILE to read it, - for stdin")
    show.add_argument("--json", action="store_true", help="print the chain as JSON")
    revoke = cap_command(
        "revoke",
        Cli.cmd_cap_revoke,
        "record a signed revocation of a capability this node granted (or may revoke)",
    )
    revoke.add_argument(
        "id", metavar="ID|TOKEN", help="the capability's id (see 'ptth cap list') or its token"
    )
    cap_list = cap_command(
        "list", Cli.cmd_cap_list, "list the capabilities this node granted and the revocations held"
    )
    _view_options(cap_list)
    cap_url = cap_command(
        "url",
        Cli.cmd_cap_url,
        "mint a capability URL for an object of the running node (print it: the relay "
        "forms first), list them (--list) or revoke one (--revoke ID)",
    )
    cap_url.add_argument("name", nargs="?", metavar="NAME", help="the object to mint one for")
    cap_url.add_argument("--list", action="store_true", help="list the URLs minted")
    cap_url.add_argument("--revoke", metavar="ID", help="revoke the URL with this id")
    _view_options(cap_url)

    chirp = commands.add_parser(
        "chirp",
        help="a toy Twitter over publish/subscribe: post, follow, read the timeline",
        description="a toy Twitter over publish/subscribe: a post goes to the nodes that "
        "follow this one; the timeline holds the posts of the nodes this one follows",
        parents=[common],
    )
    chirp_commands = chirp.add_subparsers(dest="chirp_command", required=True, metavar="COMMAND")

    def chirp_command(
        name: str, handler: Callable[[Cli], None], help: str
    ) -> argparse.ArgumentParser:
        sub = chirp_commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    post = chirp_command(
        "post", Cli.cmd_chirp_post, "post to this node's followers; prints the post's id"
    )
    post.add_argument("text", metavar="TEXT|@FILE|-", help="the post, @FILE, or - for stdin")
    follow = chirp_command(
        "follow", Cli.cmd_chirp_follow, "follow a node: its posts come to the timeline"
    )
    follow.add_argument("node_id", metavar="NODE_ID")
    unfollow = chirp_command("unfollow", Cli.cmd_chirp_unfollow, "stop following a node")
    unfollow.add_argument("node_id", metavar="NODE_ID")
    chirp_command("following", Cli.cmd_chirp_following, "list the nodes followed, one a line")
    timeline = chirp_command(
        "timeline",
        Cli.cmd_chirp_timeline,
        "print the posts of the nodes followed, oldest first: time (UTC), author, text",
    )
    timeline.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new posts as they come, until Ctrl-C",
    )
    _output_options(timeline, "post")

    expose = command(
        "expose",
        Cli.cmd_expose,
        "expose an object of the running node that others call through the mesh: a local "
        "web service (--forward), the inbox, a topic or a named subscription (--queue); "
        "kept across restarts",
    )
    expose.add_argument("name", nargs="?", metavar="NAME", help="the object's name")
    exposed_kinds = expose.add_mutually_exclusive_group()
    exposed_kinds.add_argument(
        "--forward",
        metavar="URL",
        help="a web service (e.g. http://127.0.0.1:8000/): a call's operation is an HTTP "
        "method and a path under it ('GET /hello?x=1')",
    )
    exposed_kinds.add_argument(
        "--inbox", action="store_true", help="the inbox: operation 'send' puts the body there"
    )
    exposed_kinds.add_argument(
        "--topic", metavar="TOPIC", help="operation 'publish': this node publishes on TOPIC"
    )
    exposed_kinds.add_argument(
        "--queue",
        metavar="SUBSCRIPTION",
        help="operation 'get': the next publication of this named subscription",
    )
    exposed_kinds.add_argument("--list", action="store_true", help="list the objects exposed")
    exposed_kinds.add_argument("--remove", metavar="NAME", help="withdraw an object for good")
    expose.add_argument(
        "--open",
        action="store_true",
        help="anyone may call it (default: only holders of a call capability on it)",
    )
    _view_options(expose)

    call = command(
        "call",
        Cli.cmd_call,
        "call an operation on an object of any node (NODE_ID/NAME), or through a capability "
        "URL; print the reply's body (an error status: one line on stderr, exit 1)",
    )
    call.add_argument(
        "target", metavar="NODE_ID/NAME|URL", help="the object, or a capability URL (…/c/…)"
    )
    call.add_argument(
        "operation",
        nargs="?",
        metavar="OPERATION",
        help="e.g. 'GET /hello' for a web service, send, publish, get (for a URL: an HTTP "
        "method, or an operation sent as POST with ptth-operation)",
    )
    call.add_argument("body", nargs="?", metavar="BODY|@FILE|-", help="the body (default none)")
    call.add_argument("--ct", dest="content_type", metavar="TYPE", help="the body's content type")
    call.add_argument(
        "--cap", metavar="TOKEN", help="the capability to present (a ptthcap: token or @FILE)"
    )
    call.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="give up after S seconds without a reply (default 30; also the call's lifetime)",
    )
    call.add_argument(
        "--raw", action="store_true", help="write the body as it is, also to a terminal"
    )
    return parser


def _view_options(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--wide`` for a command that shows a table of the node's state."""
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="show node ids whole and long cells uncut (default: ids as their first 10 characters)",
    )


def _output_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json`` and ``--raw`` for a command that prints bodies from the network."""
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_true", help=f"print each {what} as a JSON object, one a line"
    )
    formats.add_argument(
        "--raw",
        action="store_true",
        help=f"write each {what}'s body as it is, nothing added (for pipes and files; a "
        "terminal gets its control characters as they are)",
    )


class _TerminalFormatter(logging.Formatter):
    """Log lines whose words (which may quote the network) cannot act on the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = for_terminal(record.message)
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: ``ts`` (ISO 8601, UTC, ms), ``level``,
    ``logger``, ``message``, the fields given with ``extra=``, and ``exc`` (the
    traceback) if there is one. ASCII only: control characters are escaped, so what a
    message quotes from the network cannot act on the terminal either."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=repr, separators=(",", ":"))


#: What every log record has: anything else came with ``extra=``.
_RECORD_ATTRIBUTES: Final = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"]
)


def _log_setting(flag: str | None, env: str, allowed: Sequence[str]) -> str | None:
    """A ``ptth run`` log option: the flag, else the environment variable ``env``
    (UsageError if it says something else than ``allowed``), else None."""
    if flag is not None:
        return flag
    value = os.environ.get(env, "").strip().lower()
    if not value:
        return None
    if value not in allowed:
        raise UsageError(f"${env} is {value[:40]!r}, not one of {', '.join(allowed)}")
    return value


@contextlib.contextmanager
def _logging(args: argparse.Namespace, err: TextIO) -> Iterator[None]:
    """Logs on ``err`` for this command, as ``-v`` (or ``ptth run --log-level``) asks.

    ``ptth run``: warnings, and its own start and stop lines; ``-v`` what the node
    does (info); ``-vv`` debug too; ``--log-level`` (or ``$PTTH_LOG_LEVEL`` without
    ``-v``) says the level outright, and ``--log-format json`` (``$PTTH_LOG_FORMAT``)
    makes each line a JSON object. Other commands: nothing; ``-v`` the CLI's own notes
    (retries); ``-vv`` debug too, and each request to the local API.
    """
    verbosity: int = getattr(args, "verbose", 0)
    node = args.handler is Cli.cmd_run
    if not node and verbosity == 0:
        yield
        return
    levels: dict[str, int] = {"ptth.cli": logging.DEBUG if verbosity >= 2 else logging.INFO}
    formatter: logging.Formatter = _TerminalFormatter("%(asctime)s %(message)s", "%H:%M:%S")
    if node:
        levels["ptth"] = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
        named = None  # -v says it, unless --log-level does
        if args.log_level is not None or verbosity == 0:
            named = _log_setting(args.log_level, LOG_LEVEL_ENV, list(LOG_LEVELS))
        if named is not None:
            levels["ptth"] = LOG_LEVELS[named]
            levels["ptth.cli"] = min(LOG_LEVELS[named], logging.INFO)  # start and stop
        if _log_setting(args.log_format, LOG_FORMAT_ENV, LOG_FORMATS) == "json":
            formatter = _JsonFormatter()
    elif verbosity >= 2:
        levels["httpx"] = logging.INFO  # one line per request
    # The node's loggers all live under "ptth"; others only the CLI's own (in a test the
    # same process runs nodes whose logs are not this command's).
    tops = ["ptth"] if node else ["ptth.cli", "httpx"]
    handler = logging.StreamHandler(err)
    handler.setFormatter(formatter)
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for name in tops:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in tops:
            logging.getLogger(name).removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _failure(exc: BaseException) -> tuple[int, str | None] | None:
    """The exit status and the line to print for ``exc`` (an error the CLI expects,
    alone or in a group), or None for a bug (whose traceback is then worth seeing)."""
    errors = [leaf for leaf in leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    if any(isinstance(leaf, BrokenPipeError) for leaf in errors):
        return EXIT_BROKEN_PIPE, None  # whoever read stdout has gone: nothing to say
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in errors):
        return 130, "ptth: interrupted"
    known = (UsageError, NodeError, crypto.CryptoError, mesh.MeshError, OSError)
    if not errors or not all(isinstance(leaf, known) for leaf in errors):
        return None
    first = errors[0]
    if isinstance(first, UsageError):
        return 2, f"ptth: usage: {first}"
    if isinstance(first, mesh.MeshError):
        first = _store_problem(first)
    if isinstance(first, OSError):
        where = f": {first.filename}" if first.filename else ""
        return 1, f"ptth: error: {first.strerror or first}{where}"
    return 1, f"ptth: error: {first}"


def _discard_stdout(out: TextIO) -> None:
    """Point ``out``'s file descriptor at /dev/null: what is still buffered for a reader
    that has gone is dropped quietly at exit (no "Broken pipe" traceback)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = out.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def run(
    argv: Sequence[str],
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO = sys.stdin,
) -> int:
    """Run the CLI with ``argv`` (without the program name); return the exit status."""
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
        with _logging(args, err):
            args.handler(Cli(args, out=out, err=err, stdin=stdin))
    except SystemExit as exc:  # argparse has printed usage, help or the version
        return exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:
        failure = _failure(exc)
        if failure is None:
            raise
        status, line = failure
        if status == EXIT_BROKEN_PIPE:
            _discard_stdout(out)
        if line is not None:
            with contextlib.suppress(OSError):
                print(for_terminal(line), file=err)
        return status
    return 0


def main() -> None:
    """Console entry point."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or pipe that cannot encode some character gets an escape for it,
        # not a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    status = run(sys.argv[1:])
    try:
        sys.stdout.flush()  # what is still buffered, while a broken pipe can be caught
    except BrokenPipeError:
        _discard_stdout(sys.stdout)
        status = EXIT_BROKEN_PIPE
    sys.exit(status)
