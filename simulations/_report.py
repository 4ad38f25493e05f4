"""What a simulation measured: the ledger of messages and the report made from it.

The :class:`Ledger` is kept by the simulation's applications: a message is entered when
:meth:`SimNode.send` creates its frame, and each time an inbox consumer acknowledges a
frame (so a frame seen twice by applications is a duplicate; it must never happen).
Latency is virtual receive time minus the time the application asked to send.

A :class:`Report` adds what the nodes and the network counted. Its figures:

* ``http_requests``: frame POSTs the nodes made, every attempt (the nodes'
  ``statistics.send_requests``); ``http_bytes``: every byte any node wrote to the
  simulated network, requests and responses, heads and bodies (counted by the network);
* ``send_retries``: the nodes' own retries (``statistics.send_retries``);
  ``resends``: the applications' resends of a frame the node gave up on;
  ``duplicate_frames``: frames a node received again and answered "duplicate" (what
  exactly-once delivery absorbed);
* everything but ``wall_seconds`` depends only on the scenario, its parameters and the
  seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import trio

__all__ = [
    "Delivery",
    "Ledger",
    "Report",
    "SentMessage",
    "format_bytes",
    "format_duration",
    "parse_duration",
    "percentile",
]


@dataclasses.dataclass
class SentMessage:
    """A message an application sent through :meth:`SimNode.send`."""

    id: bytes
    src: str
    dst: str
    size: int
    sent_at: float
    accepted_at: float | None = None
    delivered_at: float | None = None
    resends: int = 0
    failed: bool = False

    @property
    def latency(self) -> float | None:
        """Virtual seconds from send to the destination's application, if delivered."""
        return None if self.delivered_at is None else self.delivered_at - self.sent_at


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A message as the destination's application saw it. ``src`` is a node name
    (None for a sender outside the simulation); ``latency`` is None for a message not
    sent with :meth:`SimNode.send`; ``duplicate``: its frame was delivered before."""

    id: bytes
    src: str | None
    dst: str
    body: bytes
    received_at: float
    latency: float | None
    hops: int
    duplicate: bool = False


class Ledger:
    """Every message sent and every delivery, for the report (see the module docstring)."""

    def __init__(self) -> None:
        self.messages: dict[bytes, SentMessage] = {}
        self.deliveries = 0
        self.duplicates = 0
        self.resends = 0
        #: Messages sent, neither delivered nor given up.
        self.pending = 0
        self._seen: set[bytes] = set()  # membership only: never iterated
        self._changed = trio.Event()

    def sent(self, message: SentMessage) -> None:
        self.messages[message.id] = message
        self.pending += 1
        self._wake()

    def delivered(self, frame_id: bytes, now: float) -> tuple[SentMessage | None, bool]:
        """Enter a delivery to an application; return the message (None if it was not
        sent through the ledger) and whether its frame was delivered before."""
        self.deliveries += 1
        duplicate = frame_id in self._seen
        self._seen.add(frame_id)
        self.duplicates += duplicate
        message = self.messages.get(frame_id)
        if message is not None and message.delivered_at is None:
            message.delivered_at = now
            self.pending -= not message.failed
        self._wake()
        return message, duplicate

    def failed(self, message: SentMessage) -> None:
        """The sender gave up on ``message`` (it may still arrive)."""
        if not message.failed:
            message.failed = True
            self.pending -= message.delivered_at is None
            self._wake()

    def resent(self, message: SentMessage) -> None:
        message.resends += 1
        self.resends += 1

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (``fraction`` in (0, 1]); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``1h``, ``1h30m``, ``1.5h``.

    Raises :class:`ValueError` for anything else, or for a duration that is not
    positive.
    """
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 10m, 1h or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"duration {text!r} is not positive")
    return total


def format_duration(seconds: float) -> str:
    """``1h00m00s``, ``10m00s``, ``4.50 s``, ``38.2 ms``."""
    if seconds >= 60:
        whole = round(seconds)
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def format_bytes(size: float) -> str:
    """``512 B``, ``1.5 kB``, ``12.3 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Report:
    """How the mesh behaved in one simulation run (see the module docstring)."""

    scenario: str
    nodes: int
    seed: int
    virtual_seconds: float
    wall_seconds: float
    sent: int
    delivered: int
    failed: int
    duplicates: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    latency_max: float | None
    http_requests: int
    http_bytes: int
    connections: int
    send_retries: int
    send_failures: int
    resends: int
    duplicate_frames: int
    segments_lost: int
    syns_dropped: int
    resets: int
    dials_refused: int
    dials_unanswered: int
    events: tuple[str, ...] = ()

    @property
    def undelivered(self) -> int:
        return self.sent - self.delivered

    @property
    def delivery_ratio(self) -> float | None:
        return self.delivered / self.sent if self.sent else None

    @property
    def requests_per_delivered(self) -> float | None:
        return self.http_requests / self.delivered if self.delivered else None

    @property
    def bytes_per_delivered(self) -> float | None:
        return self.http_bytes / self.delivered if self.delivered else None

    def to_dict(self) -> dict[str, Any]:
        """Every field and derived figure, for JSON."""
        data = dataclasses.asdict(self)
        data["events"] = list(self.events)
        data.update(
            undelivered=self.undelivered,
            delivery_ratio=self.delivery_ratio,
            requests_per_delivered=self.requests_per_delivered,
            bytes_per_delivered=self.bytes_per_delivered,
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def deterministic(self) -> dict[str, Any]:
        """:meth:`to_dict` without the wall time: equal for equal seeds."""
        data = self.to_dict()
        del data["wall_seconds"]
        return data

    def to_text(self) -> str:
        """The report for people, one topic a line."""

        def ms(value: float | None) -> str:
            return "-" if value is None else format_duration(value)

        def ratio(value: float | None, digits: int = 2) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        speed = self.virtual_seconds / self.wall_seconds if self.wall_seconds > 0 else math.inf
        per_message = self.bytes_per_delivered
        lines = [
            f"scenario    {self.scenario}: {self.nodes} nodes, seed {self.seed}",
            f"time        {format_duration(self.virtual_seconds)} virtual in "
            f"{self.wall_seconds:.2f} s wall ({speed:,.0f}x)",
            f"messages    sent {self.sent}, delivered {self.delivered} "
            f"(ratio {ratio(self.delivery_ratio, 4)}), undelivered {self.undelivered}, "
            f"failed {self.failed}, duplicates {self.duplicates}",
            f"latency     p50 {ms(self.latency_p50)}, p95 {ms(self.latency_p95)}, "
            f"p99 {ms(self.latency_p99)}, max {ms(self.latency_max)}",
            f"http        {self.http_requests} requests "
            f"({ratio(self.requests_per_delivered)} per delivered), "
            f"{format_bytes(self.http_bytes)} "
            f"({'-' if per_message is None else format_bytes(per_message)} per delivered), "
            f"{self.connections} connections",
            f"recovery    {self.send_retries} node retries, {self.resends} app resends, "
            f"{self.send_failures} send failures, {self.duplicate_frames} duplicate frames",
            f"network     {self.segments_lost} segments lost, {self.syns_dropped} SYNs "
            f"dropped by partitions or NAT, {self.resets} resets, "
            f"{self.dials_refused} dials refused, {self.dials_unanswered} unanswered",
        ]
        shown = self.events if len(self.events) <= 10 else self.events[:9]
        lines += [f"event       {event}" for event in shown]
        if len(shown) < len(self.events):
            lines.append(f"event       ... and {len(self.events) - len(shown)} more (--json)")
        if self.duplicates:
            lines.append(f"FAIL        applications saw {self.duplicates} duplicates")
        return "\n".join(lines)
