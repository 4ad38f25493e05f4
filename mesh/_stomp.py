"""STOMP 1.2 (and 1.0, 1.1) for the node's STOMP gateway, sans-IO (docs/architecture.md,
"The STOMP gateway"; the protocol is stomp.github.io/stomp-specification-1.2.html).

Two parts, neither doing I/O nor reading a clock:

* The frame codec. :class:`Decoder` takes bytes as they come (``feed(data)`` returns
  the frames completed so far, in any fragmentation down to one byte at a time):
  end-of-lines between frames are heart-beats, skipped (and counted); a frame is a
  command line, header lines, a blank line, a body and a NUL. A ``content-length``
  header (its first occurrence) says how many body bytes to read, NULs included, and a
  NUL must follow them; without one the body ends at the first NUL. Lines end in LF or
  CR LF, in every version. Header names and values are UTF-8, unescaped (``\\r``,
  ``\\n``, ``\\c``, ``\\\\``; in 1.1 not ``\\r``; in 1.0 nothing is escaped, nor in
  ``CONNECT`` and ``CONNECTED`` frames); an undefined escape is an error. Headers are
  never trimmed. Only ``SEND``, ``MESSAGE`` and ``ERROR`` may have a body. Every size
  is bounded (:class:`Limits`: header count, header line, body, whole frame), checked as
  the bytes arrive, so a client cannot make the decoder hold more than one frame's
  limit. Anything wrong raises :class:`StompError` with the words the ``ERROR`` frame
  carries. :func:`encode` is the reverse: escaping as the version says, and a
  ``content-length`` on every frame that may have a body.
* One connection's protocol state, :class:`Session`: ``receive(frame)`` returns what
  the driver is to do (:data:`Action` s, in order): reply with a frame, take a message
  into custody, start or end a subscription, acknowledge or give back messages, close.
  It negotiates the version (1.0 to 1.2: the highest in ``accept-version``; none means
  1.0) and the heart-beats (the two intervals of the spec), checks ``login`` and
  ``passcode`` against the users it was given (in constant time), keeps the
  subscriptions by id with their ack mode and the messages each was sent and has not
  acknowledged (``client``: an ACK or NACK covers that message and every earlier one
  of its subscription; ``client-individual``: that one), and buffers the ``SEND``,
  ``ACK`` and ``NACK`` frames of each transaction until ``COMMIT`` (``ABORT`` drops
  them). Errors become an ``ERROR`` frame and a close.

Destinations (:class:`Destination`): ``/topic/<topic>`` (a pattern when subscribing),
``/queue/<name>`` (a named subscription of the node: subscribed to, not sent to) and
``/node/<node-id>`` (``/node/me``: the node's own inbox, subscribed to).
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

import crypto

__all__ = [
    "CLIENT_COMMANDS",
    "SERVER_COMMANDS",
    "VERSIONS",
    "Ack",
    "AckMode",
    "Action",
    "Close",
    "Decoder",
    "Destination",
    "Frame",
    "Limits",
    "Nack",
    "Reply",
    "Send",
    "Session",
    "SessionLimits",
    "StompError",
    "Subscribe",
    "Unsubscribe",
    "encode",
    "negotiate_heartbeat",
    "parse_destination",
]

#: The versions this server speaks, lowest first.
VERSIONS: Final = ("1.0", "1.1", "1.2")
CLIENT_COMMANDS: Final = frozenset(
    {
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "ACK",
        "NACK",
        "DISCONNECT",
        "CONNECT",
        "STOMP",
    }
)
SERVER_COMMANDS: Final = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
_COMMANDS: Final = CLIENT_COMMANDS | SERVER_COMMANDS
#: The frames that may carry a body.
_WITH_BODY: Final = frozenset({"SEND", "MESSAGE", "ERROR"})
#: The frames whose headers are never escaped (to stay compatible with STOMP 1.0).
_UNESCAPED: Final = frozenset({"CONNECT", "CONNECTED"})
#: What the content type of a message may be (a ptth frame's ``ct``).
_CONTENT_TYPE: Final = re.compile(r"[!-~]+(?:; ?[!-~]+)*")
_MAX_CONTENT_TYPE: Final = 127
_EOLS: Final = re.compile(rb"(?:\r?\n)+")
_LENGTH: Final = re.compile(r"[0-9]{1,10}")
_HEARTBEAT: Final = re.compile(r"([0-9]{1,9}),([0-9]{1,9})")
_ESCAPES: Final = {
    "1.1": {"n": "\n", "c": ":", "\\": "\\"},
    "1.2": {"r": "\r", "n": "\n", "c": ":", "\\": "\\"},
}
_ESCAPE_RE: Final = re.compile(r"\\(.?)", re.DOTALL)
_OCTET_STREAM: Final = "application/octet-stream"


class StompError(Exception):
    """A protocol error: ``message`` is the short description the ``ERROR`` frame's
    ``message`` header carries, ``detail`` (optional) its body."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Frame:
    """A STOMP frame: a command, headers in order (repeats kept), a body."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header ``name``: its first occurrence (the spec: the first
        wins; later ones are history), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one frame may be. Past any of them the decoder raises :class:`StompError`."""

    #: Header lines in one frame.
    max_headers: int = 64
    #: Bytes in one header line (or the command line), without its end-of-line.
    max_header_line: int = 8 * 1024
    #: Bytes of a body: what a ptth message can carry.
    max_body: int = crypto.MAX_BODY_SIZE
    #: Bytes of a whole frame: its head (command and headers) and body.
    max_frame: int = crypto.MAX_BODY_SIZE + 64 * 1024

    def __post_init__(self) -> None:
        if min(self.max_headers, self.max_header_line, self.max_body, self.max_frame) < 1:
            raise ValueError(f"every STOMP limit must be at least 1: {self}")


# -- the codec ----------------------------------------------------------------------------


def _unescape(text: str, version: str) -> str:
    table = _ESCAPES.get(version)
    if table is None or "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        found = table.get(match.group(1))
        if found is None:
            escape = "\\" + match.group(1)
            raise StompError(
                "malformed frame received",
                f"undefined escape sequence {escape!r} in a header (STOMP {version} "
                "defines " + ", ".join(repr("\\" + key) for key in table) + ")",
            )
        return found

    return _ESCAPE_RE.sub(replace, text)


def _escape(text: str, version: str, *, name: bool) -> str:
    if version in _ESCAPES:
        text = text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
        if version == "1.2":
            text = text.replace("\r", "\\r")
        return text
    if "\n" in text or (name and ":" in text):
        raise ValueError(f"header {text!r} cannot be written unescaped (STOMP 1.0, CONNECTED)")
    return text


def encode(frame: Frame, version: str = "1.2") -> bytes:
    """The bytes of ``frame`` for a session of ``version``: headers escaped as it says
    (never in ``CONNECT`` and ``CONNECTED``), and the body's ``content-length`` on every
    frame that may have one (any given is replaced). Raises ValueError for a body on a
    frame that may have none, or a header that cannot be written unescaped."""
    mode = "1.0" if frame.command in _UNESCAPED else version
    headers = list(frame.headers)
    if frame.command in _WITH_BODY:
        headers = [(k, v) for k, v in headers if k != "content-length"]
        headers.append(("content-length", str(len(frame.body))))
    elif frame.body:
        raise ValueError(f"a {frame.command} frame has no body")
    lines = [frame.command]
    for name, value in headers:
        lines.append(f"{_escape(name, mode, name=True)}:{_escape(value, mode, name=False)}")
    head = ("\n".join(lines) + "\n\n").encode("utf-8")
    return head + frame.body + b"\0"


@dataclasses.dataclass
class _Head:
    command: str
    headers: tuple[tuple[str, str], ...]
    size: int  # bytes of the head, with its blank line
    length: int | None  # the content-length, if given


class Decoder:
    """Bytes in, frames out (see the module docstring). ``version`` says how headers
    are unescaped: set it to the session's version once it is negotiated. A ``CONNECT``
    (or ``STOMP``) frame is never escaped, and ends what one :meth:`feed` returns: the
    frames after it wait for the next call (``feed(b"")``, once ``version`` is set)."""

    def __init__(self, limits: Limits | None = None, *, version: str = "1.2") -> None:
        self.limits = limits or Limits()
        self.version = version
        #: End-of-lines received between frames (heart-beats).
        self.heartbeats = 0
        self._buffer = bytearray()
        self._pos = 0  # where the next frame (or the current one's head) starts
        self._scan = 0  # where the search for the end of the head goes on
        self._lines = 0  # lines of the current head seen so far
        self._head: _Head | None = None
        self._body_scan = 0  # where the search for the body's NUL goes on
        self._broken: StompError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a frame returned."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Take ``data``; return the frames it completes, in order. Raises
        :class:`StompError` for malformed or oversized input (and again on any later
        call: the stream cannot be resynchronised)."""
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
                if frame.command in ("CONNECT", "STOMP"):
                    break  # what follows is unescaped as the version agreed says
        except StompError as exc:
            self._broken = exc
            raise
        if self._pos:
            # Drop what was consumed (once per feed: cheap however many frames came).
            del self._buffer[: self._pos]
            self._scan -= self._pos
            self._body_scan -= self._pos
            self._pos = 0
        return frames

    def _next(self) -> Frame | None:
        if self._head is None:
            if not self._skip_heartbeats():
                return None
            head = self._read_head()
            if head is None:
                return None
            self._head = head
            self._body_scan = self._pos + head.size
        return self._read_body(self._head)

    def _skip_heartbeats(self) -> bool:
        """Skip end-of-lines before a frame; False if the buffer holds nothing more (or
        only a CR that may be the start of one)."""
        buffer = self._buffer
        if self._scan <= self._pos:
            match = _EOLS.match(buffer, self._pos)
            if match is not None:
                self.heartbeats += buffer.count(b"\n", self._pos, match.end())
                self._pos = match.end()
            self._scan = self._pos
            self._lines = 0
        remaining = len(buffer) - self._pos
        return remaining > 0 and not (remaining == 1 and buffer[self._pos] == 0x0D)

    def _read_head(self) -> _Head | None:
        """Parse the head if it is all here; else check what is here against the limits
        and wait for more."""
        limits = self.limits
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scan)
            if end < 0:
                if self._lines == 0:
                    self._check_command_start(bytes(buffer[self._scan :]))
                if len(buffer) - self._scan > limits.max_header_line + 1:
                    raise self._line_too_long()
                if len(buffer) - self._pos > limits.max_frame:
                    raise self._frame_too_large(len(buffer) - self._pos)
                return None
            line_length = end - self._scan
            if line_length and buffer[end - 1] == 0x0D:
                line_length -= 1
            if line_length > limits.max_header_line:
                raise self._line_too_long()
            self._scan = end + 1
            if line_length == 0 and self._lines > 0:
                break  # the blank line: the head is complete
            self._lines += 1
            if self._lines > limits.max_headers + 1:
                raise StompError(
                    "too many headers",
                    f"a frame may have at most {limits.max_headers} headers",
                )
            if end + 1 - self._pos > limits.max_frame:
                raise self._frame_too_large(end + 1 - self._pos)
        size = self._scan - self._pos
        raw = bytes(buffer[self._pos : self._scan])
        return self._parse_head(raw, size)

    @staticmethod
    def _check_command_start(partial: bytes) -> None:
        """Refuse at once a command line that can be no command (say, a TLS hello or
        an HTTP request), rather than wait for the rest of it."""
        text = partial[:-1] if partial.endswith(b"\r") else partial
        if not any(command.encode().startswith(text) for command in _COMMANDS):
            raise StompError(
                "unknown command",
                f"{_clip(text.decode('utf-8', 'replace'))!r} is the start of no STOMP command",
            )

    def _line_too_long(self) -> StompError:
        return StompError(
            "header line too long",
            f"a command or header line may be at most {self.limits.max_header_line} bytes",
        )

    def _frame_too_large(self, size: int) -> StompError:
        return StompError(
            "frame too large",
            f"a frame (head and body) may be at most {self.limits.max_frame} bytes; "
            f"this one has at least {size}",
        )

    def _parse_head(self, raw: bytes, size: int) -> _Head:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StompError(
                "malformed frame received",
                f"the command and headers must be UTF-8 (byte {exc.start} is not)",
            ) from None
        lines = text.split("\n")[:-2]  # without the blank line and what follows it
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        command = lines[0]
        if command not in CLIENT_COMMANDS and command not in SERVER_COMMANDS:
            raise StompError(
                "unknown command",
                f"{_clip(command)!r} is not a STOMP command (expected one of "
                + ", ".join(sorted(CLIENT_COMMANDS))
                + ")",
            )
        version = "1.0" if command in _UNESCAPED else self.version
        headers: list[tuple[str, str]] = []
        length: int | None = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise StompError(
                    "malformed frame received",
                    f"header line {_clip(line)!r} of a {command} frame has no ':'",
                )
            name = _unescape(name, version)
            value = _unescape(value, version)
            if not name:
                raise StompError(
                    "malformed frame received",
                    f"a header of a {command} frame has an empty name",
                )
            if name == "content-length" and length is None:
                if not _LENGTH.fullmatch(value):
                    raise StompError(
                        "malformed frame received",
                        f"content-length {_clip(value)!r} is not a number of bytes",
                    )
                length = int(value)
                if length > self.limits.max_body:
                    raise self._body_too_large(length)
            headers.append((name, value))
        if length is not None and command not in _WITH_BODY and length > 0:
            raise StompError(
                "malformed frame received", f"a {command} frame has no body (content-length)"
            )
        return _Head(command, tuple(headers), size, length)

    def _body_too_large(self, size: int) -> StompError:
        return StompError(
            "body too large",
            f"a body may be at most {self.limits.max_body} bytes (what a ptth message "
            f"carries); this one has {'at least ' if size > self.limits.max_body + 1 else ''}"
            f"{size}",
        )

    def _read_body(self, head: _Head) -> Frame | None:
        buffer = self._buffer
        start = self._pos + head.size
        if head.length is not None:
            end = start + head.length
            if len(buffer) <= end:
                return None
            if buffer[end] != 0:
                raise StompError(
                    "malformed frame received",
                    f"a {head.command} frame's body of content-length {head.length} is not "
                    "followed by a NUL",
                )
        else:
            end = buffer.find(b"\0", self._body_scan)
            if end < 0:
                self._body_scan = len(buffer)
                held = len(buffer) - start
                if held > self.limits.max_body:
                    raise self._body_too_large(held)
                if len(buffer) - self._pos > self.limits.max_frame:
                    raise self._frame_too_large(len(buffer) - self._pos)
                return None
        body = bytes(buffer[start:end])
        if head.size + len(body) > self.limits.max_frame:
            raise self._frame_too_large(head.size + len(body))
        if body and head.command not in _WITH_BODY:
            raise StompError("malformed frame received", f"a {head.command} frame has no body")
        self._pos = end + 1
        self._scan = self._pos
        self._lines = 0
        self._head = None
        return Frame(head.command, head.headers, body)


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[:size] + "..."


# -- destinations ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where a frame goes: ``kind`` is ``topic``, ``queue`` or ``node``; ``name`` the
    topic (or pattern), the queue's name, or the node id (``me`` for this node)."""

    kind: str
    name: str

    @property
    def text(self) -> str:
        return f"/{self.kind}/{self.name}"


#: What a named subscription may be called (node._pubsub.validate_name's rule).
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HINT: Final = "/topic/<topic>, /queue/<name> or /node/<node-id>"


def parse_destination(text: str, *, subscribe: bool, local: crypto.NodeId) -> Destination:
    """Parse a ``destination`` header of a SEND (``subscribe`` False) or a SUBSCRIBE;
    raise :class:`StompError` saying what is wrong. ``local`` is this node's id."""
    kind, sep, name = text.removeprefix("/").partition("/")
    if not sep or kind not in ("topic", "queue", "node"):
        raise StompError("unknown destination", f"{_clip(text)!r}: use {_HINT}")
    try:
        if kind == "topic":
            if subscribe:
                crypto.validate_pattern(name)
            else:
                crypto.validate_topic(name)
            return Destination(kind, name)
        if kind == "queue":
            if not _QUEUE_NAME.fullmatch(name):
                raise crypto.Malformed(
                    f"queue name {_clip(name)!r} must be 1..64 of A-Z a-z 0-9 _ . -"
                )
            if not subscribe:
                raise StompError(
                    "cannot send to a queue",
                    f"{text!r} is a named subscription of this node: it is read, not "
                    "written. SEND to /topic/<topic> (a queue gets what its patterns "
                    "match) or to /node/<node-id>",
                )
            return Destination(kind, name)
        if name == "me" or name == local.text:
            if not subscribe:
                raise StompError(
                    "cannot send to this node", f"{text!r} is this node: send to another node"
                )
            return Destination(kind, local.text)
        node = crypto.NodeId.parse(name)
    except crypto.Malformed as exc:
        raise StompError("bad destination", str(exc)) from None
    if subscribe:
        raise StompError(
            "cannot read another node's inbox",
            f"{text!r}: SUBSCRIBE to /node/me reads this node's inbox; other nodes' are theirs",
        )
    return Destination(kind, node.text)


# -- what the driver does ---------------------------------------------------------------------


class AckMode(enum.Enum):
    """A subscription's acknowledgement mode."""

    AUTO = "auto"
    CLIENT = "client"
    INDIVIDUAL = "client-individual"


@dataclasses.dataclass(frozen=True)
class Reply:
    """Write this frame to the client."""

    frame: Frame


@dataclasses.dataclass(frozen=True)
class Close:
    """Close the connection (after writing what came before)."""

    #: Whether it ends in an error (an ERROR frame came before): linger, then close.
    error: bool = False


@dataclasses.dataclass(frozen=True)
class Send:
    """Take a message into custody: publish to a topic, or send to a node. A receipt
    asked for follows as a :class:`Reply` (after custody)."""

    destination: Destination
    body: bytes
    content_type: str | None
    #: The frame's receipt header, for an ERROR about it.
    receipt: str | None = None


@dataclasses.dataclass(frozen=True)
class Subscribe:
    """Start delivering ``destination`` to subscription ``id`` (a receipt asked for
    follows once it is in force)."""

    id: str
    destination: Destination
    ack: AckMode
    #: A queue's patterns (they replace its old ones); empty: keep those it has.
    patterns: tuple[str, ...] = ()
    #: Messages sent and not acknowledged at most (``client`` modes).
    prefetch: int = 0
    receipt: str | None = None


@dataclasses.dataclass(frozen=True)
class Unsubscribe:
    """End subscription ``id``; ``unsettled``: the keys of the messages it was sent and
    did not acknowledge (to be given to another reader)."""

    id: str
    unsettled: tuple[object, ...]


@dataclasses.dataclass(frozen=True)
class Ack:
    """The client is done with these messages of subscription ``id`` (their keys)."""

    id: str
    keys: tuple[object, ...]


@dataclasses.dataclass(frozen=True)
class Nack:
    """The client did not consume these messages of subscription ``id``: deliver them
    again (their keys)."""

    id: str
    keys: tuple[object, ...]


Action: TypeAlias = Reply | Close | Send | Subscribe | Unsubscribe | Ack | Nack


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """The heart-beat intervals (ms; 0 none) from the client's ``heart-beat`` (cx, cy)
    and the server's (sx, sy): (server to client, client to server). Each direction is
    the larger of what its sender can do and its receiver wants, if both are non-zero."""
    cx, cy = client
    sx, sy = server
    outgoing = 0 if sx == 0 or cy == 0 else max(sx, cy)
    incoming = 0 if cx == 0 or sy == 0 else max(cx, sy)
    return outgoing, incoming


@dataclasses.dataclass(frozen=True)
class SessionLimits:
    """What one connection may hold."""

    #: Subscriptions at once.
    max_subscriptions: int = 64
    #: Messages sent to a client-ack subscription and not acknowledged, unless its
    #: SUBSCRIBE asks for fewer (``prefetch-count``), and the most it may ask for.
    default_prefetch: int = 1_000
    max_prefetch: int = 10_000
    #: Transactions open at once.
    max_transactions: int = 16
    #: Frames buffered by one transaction, and body bytes by all of a connection's.
    max_transaction_frames: int = 1_000
    max_transaction_bytes: int = 4 * 1024 * 1024


@dataclasses.dataclass
class _Delivery:
    tag: str
    message_id: str
    key: object


@dataclasses.dataclass
class _Subscription:
    id: str
    destination: Destination
    ack: AckMode
    #: Messages sent and not settled, by ack tag, oldest first.
    pending: dict[str, _Delivery] = dataclasses.field(default_factory=dict)
    #: The same by message-id (for 1.0 and 1.1 ACKs).
    by_message: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Transaction:
    frames: list[Frame] = dataclasses.field(default_factory=list)


class Session:
    """One connection's protocol state (see the module docstring).

    ``local`` is this node's id; ``heartbeat`` the server's (sx, sy) in ms; ``users``
    the logins and their passcodes (None: no authentication); ``server`` what the
    ``CONNECTED`` frame's ``server`` header says; ``session`` its ``session`` header.
    """

    def __init__(
        self,
        *,
        local: crypto.NodeId,
        heartbeat: tuple[int, int] = (10_000, 10_000),
        users: Mapping[str, str] | None = None,
        server: str = "ptth",
        session: str = "",
        limits: SessionLimits | None = None,
    ) -> None:
        self.local = local
        self.server_heartbeat = heartbeat
        self.users = users
        self.server = server
        self.session = session
        self.limits = limits or SessionLimits()
        #: The negotiated version (None until CONNECTED).
        self.version: str | None = None
        #: The heart-beat intervals in ms: (server to client, client to server); 0 none.
        self.heartbeat = (0, 0)
        #: Who logged in (None: nobody said).
        self.login: str | None = None
        self.host: str | None = None
        #: Set once an ERROR or DISCONNECT ends the session.
        self.closed = False
        self._subscriptions: dict[str, _Subscription] = {}
        self._transactions: dict[str, _Transaction] = {}
        self._transaction_bytes = 0
        self._tags = 0

    @property
    def connected(self) -> bool:
        return self.version is not None

    # -- frames from the client --------------------------------------------------------

    def receive(self, frame: Frame) -> list[Action]:
        """What to do about ``frame`` from the client (an ERROR and a close for anything
        wrong; nothing once closed)."""
        if self.closed:
            return []
        receipt = frame.header("receipt") if frame.command not in ("CONNECT", "STOMP") else None
        try:
            return self._receive(frame, receipt)
        except StompError as exc:
            return self.error(exc.message, exc.detail, receipt=receipt)

    def _receive(self, frame: Frame, receipt: str | None) -> list[Action]:
        command = frame.command
        if command in ("CONNECT", "STOMP"):
            return self._connect(frame)
        if command in SERVER_COMMANDS:
            raise StompError("unexpected frame", f"{command} is a frame the server sends")
        if not self.connected:
            raise StompError("not connected", f"send CONNECT (or STOMP) first, not {command}")
        if command == "DISCONNECT":
            self.closed = True
            self._transactions.clear()
            return [*self._receipt(receipt), Close()]
        transaction = frame.header("transaction")
        if command in ("BEGIN", "COMMIT", "ABORT"):
            return [*self._transaction(command, transaction), *self._receipt(receipt)]
        if transaction is not None and command in ("SEND", "ACK", "NACK"):
            self._buffer(frame, transaction)
            return self._receipt(receipt)
        actions = self._apply(frame)
        return [*actions, *self._receipt(receipt)]

    def _apply(self, frame: Frame) -> list[Action]:
        """SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK (outside a transaction, or at COMMIT)."""
        command = frame.command
        if command == "SEND":
            return [self._send(frame)]
        if command == "SUBSCRIBE":
            return [self._subscribe(frame)]
        if command == "UNSUBSCRIBE":
            return [self._unsubscribe(frame)]
        if command in ("ACK", "NACK"):
            return self._settle(frame)
        raise AssertionError(command)  # pragma: no cover - every client command handled

    def _receipt(self, receipt: str | None) -> list[Action]:
        if receipt is None:
            return []
        return [Reply(self.receipt(receipt))]

    def receipt(self, receipt_id: str) -> Frame:
        """A RECEIPT frame for ``receipt_id``."""
        return Frame("RECEIPT", (("receipt-id", receipt_id),))

    def error(self, message: str, detail: str = "", *, receipt: str | None = None) -> list[Action]:
        """An ERROR frame saying ``message`` (and ``detail`` in its body), then a close;
        the session takes no more frames."""
        self.closed = True
        message = " ".join(message.split())  # one line, in any version
        headers = [("message", message)]
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        headers.append(("content-type", "text/plain"))
        body = (detail or message).encode("utf-8")
        return [Reply(Frame("ERROR", tuple(headers), body)), Close(error=True)]

    # -- CONNECT ------------------------------------------------------------------------

    def _connect(self, frame: Frame) -> list[Action]:
        if self.connected:
            raise StompError("already connected", f"a second {frame.command} frame")
        accepted = frame.header("accept-version")
        offered = ("1.0",) if accepted is None else tuple(v.strip() for v in accepted.split(","))
        common = [version for version in VERSIONS if version in offered]
        if not common:
            self.closed = True
            body = "Supported protocol versions are " + " ".join(VERSIONS)
            fields = (
                ("version", ",".join(VERSIONS)),
                ("message", "no common protocol version"),
                ("content-type", "text/plain"),
            )
            return [Reply(Frame("ERROR", fields, body.encode())), Close(error=True)]
        version = common[-1]
        # A 1.1 or 1.2 client names a virtual host; there is one, whatever the name (and
        # stock clients, stomp.py's STOMP frame for one, may leave it out).
        host = frame.header("host")
        client_heartbeat = (0, 0)
        text = frame.header("heart-beat")
        if text is not None and version != "1.0":
            match = _HEARTBEAT.fullmatch(text)
            if match is None:
                raise StompError(
                    "bad heart-beat header",
                    f"heart-beat {_clip(text)!r} must be two numbers of milliseconds, "
                    "e.g. 10000,10000",
                )
            client_heartbeat = (int(match.group(1)), int(match.group(2)))
        login = frame.header("login")
        if self.users is not None:
            self._authenticate(login, frame.header("passcode"))
        self.version = version
        self.login = login
        self.host = host
        headers: list[tuple[str, str]] = []
        if version != "1.0":
            self.heartbeat = negotiate_heartbeat(client_heartbeat, self.server_heartbeat)
            sx, sy = self.server_heartbeat
            headers += [("version", version), ("heart-beat", f"{sx},{sy}")]
        headers += [("session", self.session), ("server", self.server)]
        return [Reply(Frame("CONNECTED", tuple(headers)))]

    def _authenticate(self, login: str | None, passcode: str | None) -> None:
        assert self.users is not None
        expected = self.users.get(login or "")
        given = (passcode or "").encode("utf-8")
        # Compared whatever the login, in constant time: the answer's timing does not
        # tell whether a login exists.
        good = hmac.compare_digest(given, (expected or "\0 no such login").encode("utf-8"))
        if login is None or passcode is None or expected is None or not good:
            raise StompError(
                "access refused",
                "bad login or passcode (this node's STOMP users are in stomp.users in its "
                "data directory)",
            )

    # -- SEND -------------------------------------------------------------------------------

    def _send(self, frame: Frame) -> Send:
        destination = self._destination(frame, subscribe=False)
        content_type = frame.header("content-type")
        if content_type is not None and (
            len(content_type) > _MAX_CONTENT_TYPE or not _CONTENT_TYPE.fullmatch(content_type)
        ):
            raise StompError(
                "bad content-type",
                f"content-type {_clip(content_type)!r} must be a MIME type of at most "
                f"{_MAX_CONTENT_TYPE} printable ASCII characters",
            )
        return Send(destination, frame.body, content_type, frame.header("receipt"))

    def _destination(self, frame: Frame, *, subscribe: bool) -> Destination:
        text = frame.header("destination")
        if text is None:
            raise StompError("missing destination header", f"a {frame.command} frame needs one")
        return parse_destination(text, subscribe=subscribe, local=self.local)

    # -- SUBSCRIBE, UNSUBSCRIBE ------------------------------------------------------------

    def _subscribe(self, frame: Frame) -> Subscribe:
        destination = self._destination(frame, subscribe=True)
        sid = frame.header("id")
        if sid is None:
            if self.version != "1.0":
                raise StompError("missing id header", "a SUBSCRIBE frame needs an id")
            sid = destination.text  # STOMP 1.0: the id is optional
        if sid in self._subscriptions:
            raise StompError(
                "duplicate subscription id", f"subscription {_clip(sid)!r} exists already"
            )
        if len(self._subscriptions) >= self.limits.max_subscriptions:
            raise StompError(
                "too many subscriptions",
                f"a connection may hold at most {self.limits.max_subscriptions}",
            )
        ack_text = frame.header("ack") or "auto"
        try:
            ack = AckMode(ack_text)
        except ValueError:
            raise StompError(
                "bad ack header",
                f"ack {_clip(ack_text)!r} is not one of auto, client, client-individual",
            ) from None
        if ack is AckMode.INDIVIDUAL and self.version == "1.0":
            raise StompError("bad ack header", "client-individual is STOMP 1.1 and later")
        patterns = self._patterns(frame, destination)
        prefetch = self._prefetch(frame)
        self._subscriptions[sid] = _Subscription(sid, destination, ack)
        return Subscribe(sid, destination, ack, patterns, prefetch, frame.header("receipt"))

    def _patterns(self, frame: Frame, destination: Destination) -> tuple[str, ...]:
        text = frame.header("pattern")
        if text is None:
            return ()
        if destination.kind != "queue":
            raise StompError(
                "unexpected pattern header",
                "a pattern header binds a /queue/<name>; /topic/<pattern> names its own",
            )
        patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",")))
        try:
            for pattern in patterns:
                crypto.validate_pattern(pattern)
        except crypto.Malformed as exc:
            raise StompError("bad pattern header", str(exc)) from None
        return patterns

    def _prefetch(self, frame: Frame) -> int:
        text = frame.header("prefetch-count")
        limit = self.limits.max_prefetch
        if text is None:
            return min(self.limits.default_prefetch, limit)
        if not _LENGTH.fullmatch(text) or not 1 <= int(text) <= limit:
            raise StompError(
                "bad prefetch-count header", f"prefetch-count {_clip(text)!r} is not 1..{limit}"
            )
        return int(text)

    def _unsubscribe(self, frame: Frame) -> Unsubscribe:
        sid = frame.header("id")
        if sid is None and self.version == "1.0":
            sid = frame.header("destination")
        if sid is None:
            raise StompError("missing id header", "an UNSUBSCRIBE frame needs an id")
        subscription = self._subscriptions.pop(sid, None)
        if subscription is None:
            raise StompError("no such subscription", f"there is no subscription {_clip(sid)!r}")
        keys = tuple(delivery.key for delivery in subscription.pending.values())
        return Unsubscribe(sid, keys)

    # -- MESSAGE ---------------------------------------------------------------------------

    def message(
        self,
        subscription: str,
        *,
        message_id: str,
        destination: str,
        body: bytes,
        content_type: str | None,
        key: object,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Frame:
        """The MESSAGE frame sending a message to ``subscription``; with a client ack
        mode it is then pending (``key`` is what its :class:`Ack` or :class:`Nack`, or
        the :class:`Unsubscribe`, hands back). Raises KeyError for an unknown
        subscription."""
        state = self._subscriptions[subscription]
        fields = [
            ("subscription", subscription),
            ("message-id", message_id),
            ("destination", destination),
            ("content-type", content_type or _OCTET_STREAM),
        ]
        if state.ack is not AckMode.AUTO:
            self._tags += 1
            tag = str(self._tags)
            state.pending[tag] = _Delivery(tag, message_id, key)
            state.by_message[message_id] = tag
            if self.version == "1.2":
                fields.append(("ack", tag))
        fields += headers
        return Frame("MESSAGE", tuple(fields), body)

    def unacked(self, subscription: str) -> int:
        """Messages sent to ``subscription`` and not settled (0 if it is gone)."""
        state = self._subscriptions.get(subscription)
        return 0 if state is None else len(state.pending)

    def subscribed(self, subscription: str) -> bool:
        return subscription in self._subscriptions

    def unsettled(self) -> dict[str, tuple[Destination, tuple[object, ...]]]:
        """Per subscription: its destination and the keys of what it was sent and did
        not settle (what to give to another reader when the connection ends)."""
        return {
            sid: (state.destination, tuple(d.key for d in state.pending.values()))
            for sid, state in self._subscriptions.items()
            if state.pending
        }

    # -- ACK, NACK ---------------------------------------------------------------------------

    def _settle(self, frame: Frame) -> list[Action]:
        if frame.command == "NACK" and self.version == "1.0":
            raise StompError("unknown command", "NACK is STOMP 1.1 and later")
        found = self._find(frame)
        if found is None:
            return []  # settled before (an earlier cumulative ACK covered it)
        state, tag = found
        if state.ack is AckMode.CLIENT:
            tags = list(state.pending)
            covered = tags[: tags.index(tag) + 1]
        else:
            covered = [tag]
        keys = []
        for each in covered:
            delivery = state.pending.pop(each)
            state.by_message.pop(delivery.message_id, None)
            keys.append(delivery.key)
        kind = Ack if frame.command == "ACK" else Nack
        return [kind(state.id, tuple(keys))]

    def _find(self, frame: Frame) -> tuple[_Subscription, str] | None:
        """The subscription and ack tag an ACK or NACK names; None if that message was
        settled already; StompError if it names nothing ever sent."""
        command = frame.command
        if self.version == "1.2":
            tag = frame.header("id")
            if tag is None:
                raise StompError(
                    "missing id header",
                    f"a {command} frame needs the id of the message (its MESSAGE's ack header)",
                )
            for state in self._subscriptions.values():
                if tag in state.pending:
                    return state, tag
            if tag.isdigit() and 0 < int(tag) <= self._tags:
                return None
            raise StompError(
                "no such message", f"{command} id {_clip(tag)!r}: no message was sent with it"
            )
        message_id = frame.header("message-id")
        if message_id is None:
            raise StompError("missing message-id header", f"a {command} frame needs one")
        subscriptions = list(self._subscriptions.values())
        if self.version == "1.1":
            sid = frame.header("subscription")
            if sid is None:
                raise StompError("missing subscription header", f"a {command} frame needs one")
            named = self._subscriptions.get(sid)
            if named is None:
                raise StompError(
                    "no such subscription", f"{command}: there is no subscription {_clip(sid)!r}"
                )
            subscriptions = [named]
        for state in subscriptions:
            tag = state.by_message.get(message_id)
            if tag is not None:
                return state, tag
        return None

    # -- transactions --------------------------------------------------------------------------

    def _transaction(self, command: str, name: str | None) -> list[Action]:
        if name is None:
            raise StompError("missing transaction header", f"a {command} frame needs one")
        if command == "BEGIN":
            if name in self._transactions:
                raise StompError(
                    "transaction already begun", f"transaction {_clip(name)!r} is open already"
                )
            if len(self._transactions) >= self.limits.max_transactions:
                raise StompError(
                    "too many transactions",
                    f"a connection may have at most {self.limits.max_transactions} open",
                )
            self._transactions[name] = _Transaction()
            return []
        transaction = self._transactions.pop(name, None)
        if transaction is None:
            raise StompError(
                "no such transaction", f"{command}: transaction {_clip(name)!r} was not begun"
            )
        self._transaction_bytes -= sum(len(frame.body) for frame in transaction.frames)
        if command == "ABORT":
            return []
        actions: list[Action] = []
        for frame in transaction.frames:
            actions += self._apply(frame)
        return actions

    def _buffer(self, frame: Frame, name: str) -> None:
        transaction = self._transactions.get(name)
        if transaction is None:
            raise StompError(
                "no such transaction",
                f"{frame.command} in transaction {_clip(name)!r}, which was not begun",
            )
        # Checked now, so that the error is about this frame (and COMMIT cannot fail on
        # it); applied at COMMIT.
        if frame.command == "SEND":
            self._send(frame)
        else:
            if frame.command == "NACK" and self.version == "1.0":
                raise StompError("unknown command", "NACK is STOMP 1.1 and later")
            self._find(frame)
        limits = self.limits
        if len(transaction.frames) >= limits.max_transaction_frames:
            raise StompError(
                "transaction too large",
                f"a transaction may hold at most {limits.max_transaction_frames} frames",
            )
        if self._transaction_bytes + len(frame.body) > limits.max_transaction_bytes:
            raise StompError(
                "transaction too large",
                f"the open transactions of a connection may hold at most "
                f"{limits.max_transaction_bytes} bytes of messages",
            )
        self._transaction_bytes += len(frame.body)
        transaction.frames.append(frame)
