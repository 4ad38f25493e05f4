"""What a simulation measured: the ledger of messages and the report made from it.

The :class:`Ledger` is kept by the simulation's applications. A message is entered when
:meth:`SimNode.send` hands it to its node (the node has it in custody from then on);
each time an inbox consumer acknowledges a frame it is entered as delivered (so a frame
seen twice by applications is a duplicate; it must never happen); a drop receipt that
comes back to the origin (its trace settles with state ``dropped``) enters
it as dropped; a delivery receipt, as acknowledged. Latency is virtual receive time
minus the time the application sent it.

Each message ends the run in one state (:meth:`SentMessage.state`): ``delivered`` (the
destination's application got it; final, whatever else happens to other copies),
``expired`` (dropped because its lifetime ran out, or still undelivered past its
expiry), ``dropped`` (a drop receipt for another reason, or its origin lost the store
that held it), or ``pending`` (still in the mesh). ``drops`` counts the dropped by the
code their drop receipt began with (``expired`` is never among them: those are counted
as expired), such as ``no-route`` or ``lost``.

A :class:`Report` adds what the nodes and the network counted. Its figures:

* ``delivery_ratio``: delivered over the messages that did not expire; ``refused``:
  messages the origin's node would not take (its store full), not counted as sent;
  ``acknowledged``: messages whose delivery receipt came back to the origin (for those
  sent asking for one);
* ``hops_mean``, ``hops_max``: the hops each delivered message made (1: from a direct
  neighbour);
* ``http_requests``: frame POSTs the nodes made, every attempt (the nodes'
  ``statistics.send_requests``); ``http_bytes``: every byte any node wrote to the
  simulated network, requests and responses, heads and bodies (counted by the network);
* ``send_retries``: failed POSTs the forwarders retried; ``frames_forwarded``: frames
  handed on to a next hop (every hop counts, the first included); ``frames_dropped``:
  frames a node gave up on (refused by the next hop, or expired);
  ``duplicate_frames``: frames a node received again and answered "duplicate" (what
  exactly-once delivery absorbed);
* ``store_failures``: store calls that failed at any node (its database or disk, not
  a quota): never in a sound run, so any makes the run failed (:attr:`Report.failed`);
* ``announces_sent``: a node's own announces (to a new neighbour, and periodic);
  ``announces_received``: every announce copy a node took in (its neighbours' and the
  flooded ones); per node and hour in :attr:`Report.announces_sent_per_node_hour` and
  :attr:`Report.announces_received_per_node_hour`;
* everything but ``wall_seconds`` depends only on the scenario, its parameters and the
  seed.

Posts (publish/subscribe, the ``chirp`` scenario) have their own part of the ledger. A
post is entered when :meth:`SimNode.chirp` hands it to its author's node, with the
followers it has then (:class:`SentPost`); each time a follower's application takes it
from its ``chirp`` subscription (and acknowledges it), the arrival is entered: the first
for each (post, follower) is a delivery, a second one a duplicate (it must never
happen). A report of a run with posts has a :class:`ChirpReport` (``report.chirp``;
None otherwise, and then neither the text nor the JSON mention posts):

* ``expected``: (post, follower) pairs; ``delivered``: those that arrived;
  ``expired``: those that did not, past the post's expiry; ``delivery_ratio``: delivered
  over the pairs that did not expire; latency: from post to each first arrival;
* ``copies``: publication copies the nodes queued for a neighbour (the nodes'
  ``statistics.publications_forwarded``: every hop counts, the author's included; a
  copy retried counts once), beside what a flood would cost: ``flood_minimum``, posts
  x (nodes - 1), the least any flood sends (one copy into each other node), and
  ``flood_naive``, posts x directed links, what a flood that sends every post over
  every link once each way sends;
* ``interests_received``: ``sub``/``unsub`` copies the nodes took in (what the
  subscriptions cost the mesh), per node-hour in ``interests_received_per_node_hour``.

The ``revocation`` scenario's report has a :class:`RevocationReport`
(``report.revocation``, measured by ``simulations/_revocation.py``): how long the
revocation of a capability took to reach each node (percentiles over the nodes up
while it spread; those down then are counted apart, from their restart), what its flood
cost, and what became of the posts made under the capability it revoked (delegated
from it) before, while and after it spread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import trio

__all__ = [
    "ChirpReport",
    "Delivery",
    "Ledger",
    "Report",
    "RevocationReport",
    "SentMessage",
    "SentPost",
    "format_bytes",
    "format_duration",
    "parse_duration",
    "percentile",
]


#: How the reason of a drop for an expired frame begins (``code: words``).
_EXPIRED: Final = "expired"


@dataclasses.dataclass
class SentMessage:
    """A message an application sent through :meth:`SimNode.send`.

    Times are virtual seconds since the simulation opened; ``exp`` is when its frame
    expires. ``hops``: how many it made to the destination (once delivered).
    ``receipt``: the origin asked for a delivery receipt; ``acknowledged_at`` is when
    it came back. ``why`` says why it was dropped.
    """

    id: bytes
    src: str
    dst: str
    size: int
    sent_at: float
    exp: float = math.inf
    receipt: bool = False
    delivered_at: float | None = None
    hops: int | None = None
    dropped_at: float | None = None
    why: str | None = None
    acknowledged_at: float | None = None

    @property
    def latency(self) -> float | None:
        """Virtual seconds from send to the destination's application, if delivered."""
        return None if self.delivered_at is None else self.delivered_at - self.sent_at

    def state(self, now: float) -> str:
        """``delivered``, ``expired``, ``dropped`` or ``pending`` at virtual time ``now``
        (see the module docstring)."""
        if self.delivered_at is not None:
            return "delivered"
        if self.dropped_at is not None:
            return "expired" if (self.why or "").startswith(_EXPIRED) else "dropped"
        return "expired" if self.exp <= now else "pending"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A message as the destination's application saw it. ``src`` is a node name
    (None for a sender outside the simulation); ``latency`` is None for a message not
    sent with :meth:`SimNode.send`; ``hops``: how many it made (1: from a direct
    neighbour); ``duplicate``: its frame was delivered before."""

    id: bytes
    src: str | None
    dst: str
    body: bytes
    received_at: float
    latency: float | None
    hops: int
    duplicate: bool = False


@dataclasses.dataclass
class SentPost:
    """A post an application made through :meth:`SimNode.chirp`.

    Times are virtual seconds since the simulation opened; ``exp`` is when the post
    expires. ``followers``: the names of the nodes following ``author`` when it posted;
    ``arrivals``: when the post first reached each of them (its application);
    ``unknown``: those of them whose follow had not reached the author's node yet (the
    post does not go to them: a subscription counts from when the publisher knows it).
    """

    id: bytes
    author: str
    posted_at: float
    followers: tuple[str, ...]
    exp: float = math.inf
    arrivals: dict[str, float] = dataclasses.field(default_factory=dict)
    unknown: frozenset[str] = frozenset()

    @property
    def missing(self) -> tuple[str, ...]:
        """The followers it has not reached (yet)."""
        return tuple(name for name in self.followers if name not in self.arrivals)


class Ledger:
    """Every message sent and every delivery, every post and every arrival, for the
    report (see the module docstring)."""

    def __init__(self) -> None:
        self.messages: dict[bytes, SentMessage] = {}
        self.posts: dict[bytes, SentPost] = {}
        #: (post, follower) pairs expected and not arrived yet.
        self.posts_outstanding = 0
        #: Second arrivals of a post at one node's application.
        self.post_duplicates = 0
        self.deliveries = 0
        self.duplicates = 0
        #: Messages sent, neither delivered nor dropped.
        self.pending = 0
        #: Messages the origin's node refused to take (its store was full).
        self.refused = 0
        self._seen: set[bytes] = set()  # membership only: never iterated
        self._changed = trio.Event()

    def sent(self, message: SentMessage) -> None:
        self.messages[message.id] = message
        self.pending += 1
        self._wake()

    def delivered(self, frame_id: bytes, now: float, hops: int) -> tuple[SentMessage | None, bool]:
        """Enter a delivery to an application; return the message (None if it was not
        sent through the ledger) and whether its frame was delivered before."""
        self.deliveries += 1
        duplicate = frame_id in self._seen
        self._seen.add(frame_id)
        self.duplicates += duplicate
        message = self.messages.get(frame_id)
        if message is not None and message.delivered_at is None:
            message.delivered_at = now
            message.hops = hops
            self.pending -= message.dropped_at is None
        self._wake()
        return message, duplicate

    def dropped(self, message: SentMessage, now: float, why: str) -> None:
        """A drop receipt came back for ``message`` (a copy may still have arrived)."""
        if message.dropped_at is None:
            message.dropped_at = now
            message.why = why
            self.pending -= message.delivered_at is None
            self._wake()

    def acknowledged(self, message: SentMessage, now: float) -> None:
        """The delivery receipt of ``message`` came back to its origin."""
        if message.acknowledged_at is None:
            message.acknowledged_at = now
            self._wake()

    def posted(self, post: SentPost) -> None:
        self.posts[post.id] = post
        self.posts_outstanding += len(post.followers)
        self._wake()

    def post_arrived(self, post_id: bytes, follower: str, now: float) -> bool:
        """Enter an arrival of post ``post_id`` at ``follower``'s application; return
        whether it arrived there before (a duplicate). A post not entered with
        :meth:`posted` is not counted."""
        post = self.posts.get(post_id)
        if post is None:
            return False
        if follower in post.arrivals:
            self.post_duplicates += 1
            self._wake()
            return True
        post.arrivals[follower] = now
        self.posts_outstanding -= follower in post.followers
        self._wake()
        return False

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
class ChirpReport:
    """How posts fared (publish/subscribe): see the module docstring."""

    posts: int
    expected: int
    delivered: int
    expired: int
    #: (post, follower) pairs neither delivered nor expired at the end whose post some
    #: running node still held (queued for a next hop, or unread in the follower's
    #: subscription): in flight when the run stopped.
    in_flight: int
    #: Such pairs whose post no running node held any more, though its author knew
    #: the follower when it posted: lost.
    lost: int
    #: Such pairs whose author did not know yet, when it posted, that the follower
    #: followed it (the follow was on its way): the post never went to that follower.
    unsent: int
    duplicates: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    latency_max: float | None
    copies: int
    flood_minimum: int
    flood_naive: int
    interests_received: int
    interests_received_per_node_hour: float | None

    @property
    def delivery_ratio(self) -> float | None:
        """Delivered over the (post, follower) pairs that did not expire."""
        eligible = self.expected - self.expired
        return self.delivered / eligible if eligible else None

    @property
    def copies_per_post(self) -> float | None:
        return self.copies / self.posts if self.posts else None

    @property
    def copies_per_delivered(self) -> float | None:
        return self.copies / self.delivered if self.delivered else None

    @property
    def flood_share(self) -> float | None:
        """Copies over the least a flood would send (``flood_minimum``)."""
        return self.copies / self.flood_minimum if self.flood_minimum else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            delivery_ratio=self.delivery_ratio,
            copies_per_post=self.copies_per_post,
            copies_per_delivered=self.copies_per_delivered,
            flood_share=self.flood_share,
        )
        return data

    def lines(self) -> list[str]:
        """The report's lines about posts."""

        def ms(value: float | None) -> str:
            return "-" if value is None else format_duration(value)

        def ratio(value: float | None, digits: int = 2) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        per_post = self.flood_minimum / self.posts if self.posts else 0
        naive_per_post = self.flood_naive / self.posts if self.posts else 0
        return [
            f"posts       {self.posts} posted, {self.expected} expected (post x follower), "
            f"delivered {self.delivered} (ratio {ratio(self.delivery_ratio, 4)} of "
            f"non-expired), expired {self.expired}, in flight at the end "
            f"{self.in_flight}, lost {self.lost}, posted before the follow reached "
            f"the author {self.unsent}, duplicates {self.duplicates}",
            f"post lat.   p50 {ms(self.latency_p50)}, p95 {ms(self.latency_p95)}, "
            f"p99 {ms(self.latency_p99)}, max {ms(self.latency_max)}",
            f"pub/sub     {self.copies} copies handed on ({ratio(self.copies_per_post)} per "
            f"post, {ratio(self.copies_per_delivered)} per delivered); a flood: at least "
            f"{self.flood_minimum} ({per_post:.0f} per post), naive {self.flood_naive} "
            f"({naive_per_post:.0f} per post); copies/least flood "
            f"{ratio(self.flood_share, 3)}",
            f"interests   {self.interests_received} received "
            f"({ratio(self.interests_received_per_node_hour, 1)} per node-hour)",
        ]


@dataclasses.dataclass(frozen=True)
class RevocationReport:
    """How a revocation spread and what it stopped (the ``revocation`` scenario).

    Times are virtual seconds after the revocation was signed. Propagation is measured
    at each node when its mesh takes in the ``rev`` frame that is news to it (from then
    on it refuses the capability and everything delegated from it).
    """

    #: Nodes in the run, and those that knew of the revocation at the end (its signer
    #: included).
    nodes: int
    reached: int
    #: When it was signed, in virtual seconds since the simulation opened.
    revoked_at: float
    #: Nodes up throughout (the signer excluded) whose propagation time is measured,
    #: and its nearest-rank percentiles over those that learned it.
    measured: int
    propagation_p50: float | None
    propagation_p90: float | None
    propagation_p99: float | None
    propagation_max: float | None
    #: When the node holding the delegated capability learned it.
    holder_learned: float | None
    #: Nodes down while it spread (crashed just before, restarted after): how many,
    #: how many learned it, and the longest one took after its restart.
    absent: int
    absent_reached: int
    absent_after_restart_max: float | None
    #: When the last node learned it, absent ones included (None: some never did).
    everywhere: float | None
    #: ``rev`` copies the nodes took in (duplicates included: each one a neighbour
    #: sent), those that were not news, and the most copies one node sent.
    copies: int
    duplicate_copies: int
    most_sent: int
    #: Nodes subscribed to the owner's feed (``~<owner>.feed.#``).
    subscribers: int
    #: The holder's posts before the revocation, and their (post, subscriber)
    #: deliveries of those expected.
    posts_before: int
    delivered_before: int
    expected_before: int
    #: Its posts while the revocation spread (until :attr:`everywhere`): those its own
    #: node took, those its node refused, and the deliveries of them.
    posts_during: int
    refused_during: int
    delivered_during: int
    #: Its posts once every node knew (its own node refused each), and the deliveries
    #: of them (must be 0).
    posts_after: int
    delivered_after: int
    #: Posts its node refused that the holder then handed straight to a neighbour (as
    #: a holder ignoring the revocation would), and those the neighbour refused.
    forced: int
    forced_refused: int
    #: Deliveries of its posts to subscribers that knew of the revocation already (must
    #: be 0: each node checks every publication it takes in).
    delivered_knowing: int
    #: Drop receipts (``forbidden``) that came back to the holder for its posts.
    drop_receipts: int

    @property
    def failed(self) -> bool:
        """Some node never learned it, or a post the mesh knew to be revoked got through."""
        return self.reached < self.nodes or bool(self.delivered_after or self.delivered_knowing)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        """The report's lines about the revocation."""

        def ms(value: float | None) -> str:
            return "-" if value is None else format_duration(value)

        absent = (
            f"; {self.absent_reached}/{self.absent} nodes down while it spread learned it "
            f"at most {ms(self.absent_after_restart_max)} after restarting"
            if self.absent
            else ""
        )
        per_node = self.copies / self.nodes if self.nodes else 0.0
        return [
            f"revocation  signed at {format_duration(self.revoked_at)}, known to "
            f"{self.reached}/{self.nodes} nodes; everywhere after {ms(self.everywhere)}",
            f"propagation {self.measured} nodes up: p50 {ms(self.propagation_p50)}, p90 "
            f"{ms(self.propagation_p90)}, p99 {ms(self.propagation_p99)}, max "
            f"{ms(self.propagation_max)}; the holder after {ms(self.holder_learned)}{absent}",
            f"rev copies  {self.copies} taken in ({per_node:.2f} per node), "
            f"{self.duplicate_copies} duplicates; at most {self.most_sent} sent by one node",
            f"cap posts   {self.subscribers} subscribers; before: {self.posts_before} posts, "
            f"{self.delivered_before}/{self.expected_before} deliveries; while spreading: "
            f"{self.posts_during} taken, {self.refused_during} refused by the holder's node, "
            f"{self.delivered_during} deliveries; after: {self.posts_after} posts, "
            f"{self.delivered_after} deliveries",
            f"refusals    {self.forced} posts forced on a neighbour, {self.forced_refused} "
            f"refused there; {self.drop_receipts} drop receipts to the holder; "
            f"{self.delivered_knowing} deliveries to subscribers that knew",
        ]


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
    dropped: int
    expired: int
    pending: int
    refused: int
    duplicates: int
    acknowledged: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    latency_max: float | None
    hops_mean: float | None
    hops_max: int | None
    http_requests: int
    http_bytes: int
    connections: int
    send_retries: int
    frames_forwarded: int
    frames_dropped: int
    duplicate_frames: int
    announces_sent: int
    announces_received: int
    segments_lost: int
    syns_dropped: int
    resets: int
    dials_refused: int
    dials_unanswered: int
    #: Store calls that failed at any node (the database or its disk; not a quota). A
    #: simulation's stores should never fail: the run's figures are then worthless.
    store_failures: int = 0
    events: tuple[str, ...] = ()
    #: The dropped messages by why (the code their drop receipt began with).
    drops: dict[str, int] = dataclasses.field(default_factory=dict)
    #: How posts fared, for a run with posts (None otherwise).
    chirp: ChirpReport | None = None
    #: How a revocation spread, for the ``revocation`` scenario (None otherwise).
    revocation: RevocationReport | None = None
    #: How much of each node ran: ``full`` (HTTP) or ``engine`` (simulations/_engine.py).
    fidelity: str = "full"

    @property
    def failed(self) -> bool:
        """Applications saw duplicates (messages or posts), a post was lost (no
        running node held it any more, undelivered and not expired), or a revocation
        failed (:attr:`RevocationReport.failed`), or a node's store failed (its
        database or disk, e.g. the run's data directory was deleted under it)."""
        chirp = self.chirp
        revocation = self.revocation
        return bool(
            self.duplicates
            or self.store_failures
            or (chirp is not None and (chirp.duplicates or chirp.lost))
            or (revocation is not None and revocation.failed)
        )

    @property
    def undelivered(self) -> int:
        return self.sent - self.delivered

    @property
    def delivery_ratio(self) -> float | None:
        """Delivered over the messages that did not expire."""
        eligible = self.sent - self.expired
        return self.delivered / eligible if eligible else None

    @property
    def delivered_per_wall_second(self) -> float | None:
        """Messages delivered per second of wall time: how fast the simulator ran."""
        return round(self.delivered / self.wall_seconds, 1) if self.wall_seconds > 0 else None

    @property
    def requests_per_delivered(self) -> float | None:
        return self.http_requests / self.delivered if self.delivered else None

    @property
    def bytes_per_delivered(self) -> float | None:
        return self.http_bytes / self.delivered if self.delivered else None

    def _per_node_hour(self, count: int) -> float | None:
        if not self.nodes or self.virtual_seconds <= 0:
            return None
        return round(count / self.nodes / (self.virtual_seconds / 3600), 3)

    @property
    def announces_sent_per_node_hour(self) -> float | None:
        return self._per_node_hour(self.announces_sent)

    @property
    def announces_received_per_node_hour(self) -> float | None:
        return self._per_node_hour(self.announces_received)

    def to_dict(self) -> dict[str, Any]:
        """Every field and derived figure, for JSON."""
        data = dataclasses.asdict(self)
        data["events"] = list(self.events)
        del data["chirp"]
        if self.chirp is not None:  # other runs' reports say nothing of posts
            data["chirp"] = self.chirp.to_dict()
        del data["revocation"]
        if self.revocation is not None:
            data["revocation"] = self.revocation.to_dict()
        data.update(
            undelivered=self.undelivered,
            delivered_per_wall_second=self.delivered_per_wall_second,
            delivery_ratio=self.delivery_ratio,
            requests_per_delivered=self.requests_per_delivered,
            bytes_per_delivered=self.bytes_per_delivered,
            announces_sent_per_node_hour=self.announces_sent_per_node_hour,
            announces_received_per_node_hour=self.announces_received_per_node_hour,
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def deterministic(self) -> dict[str, Any]:
        """:meth:`to_dict` without the wall time: equal for equal seeds."""
        data = self.to_dict()
        del data["wall_seconds"], data["delivered_per_wall_second"]
        return data

    def _why_dropped(self) -> str:
        """`` (no-route 2, lost 1)``: the drops by code, most first; empty for none."""
        if not self.drops:
            return ""
        ranked = sorted(self.drops.items(), key=lambda item: (-item[1], item[0]))
        return " (" + ", ".join(f"{code} {count}" for code, count in ranked) + ")"

    def to_text(self) -> str:
        """The report for people, one topic a line."""

        def ms(value: float | None) -> str:
            return "-" if value is None else format_duration(value)

        def ratio(value: float | None, digits: int = 2) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        speed = self.virtual_seconds / self.wall_seconds if self.wall_seconds > 0 else math.inf
        rate = self.delivered_per_wall_second
        per_message = self.bytes_per_delivered
        lines = [
            f"scenario    {self.scenario}: {self.nodes} nodes, seed {self.seed}, "
            f"{self.fidelity} fidelity",
            f"time        {format_duration(self.virtual_seconds)} virtual in "
            f"{self.wall_seconds:.2f} s wall ({speed:,.0f}x), "
            f"{'-' if rate is None else f'{rate:,.0f}'} delivered per wall second",
            f"messages    sent {self.sent}, delivered {self.delivered} "
            f"(ratio {ratio(self.delivery_ratio, 4)} of non-expired), dropped {self.dropped}"
            f"{self._why_dropped()}, "
            f"expired {self.expired}, pending {self.pending}, refused {self.refused}, "
            f"duplicates {self.duplicates}, receipts back {self.acknowledged}",
            f"latency     p50 {ms(self.latency_p50)}, p95 {ms(self.latency_p95)}, "
            f"p99 {ms(self.latency_p99)}, max {ms(self.latency_max)}",
            f"hops        mean {ratio(self.hops_mean)}, max {self.hops_max or '-'} per delivered",
            f"http        {self.http_requests} requests "
            f"({ratio(self.requests_per_delivered)} per delivered), "
            f"{format_bytes(self.http_bytes)} "
            f"({'-' if per_message is None else format_bytes(per_message)} per delivered), "
            f"{self.connections} connections",
            f"mesh        {self.frames_forwarded} frames forwarded, {self.frames_dropped} "
            f"dropped, {self.duplicate_frames} duplicate frames, {self.send_retries} retries"
            f"{f', {self.store_failures} STORE FAILURES' if self.store_failures else ''}",
            f"announces   {self.announces_sent} sent "
            f"({ratio(self.announces_sent_per_node_hour, 1)} per node-hour), "
            f"{self.announces_received} received "
            f"({ratio(self.announces_received_per_node_hour, 1)} per node-hour)",
            f"network     {self.segments_lost} segments lost, {self.syns_dropped} SYNs "
            f"dropped by partitions or NAT, {self.resets} resets, "
            f"{self.dials_refused} dials refused, {self.dials_unanswered} unanswered",
        ]
        if self.chirp is not None:
            lines += self.chirp.lines()
        if self.revocation is not None:
            lines += self.revocation.lines()
        shown = self.events if len(self.events) <= 10 else self.events[:9]
        lines += [f"event       {event}" for event in shown]
        if len(shown) < len(self.events):
            lines.append(f"event       ... and {len(self.events) - len(shown)} more (--json)")
        if self.duplicates:
            lines.append(f"FAIL        applications saw {self.duplicates} duplicates")
        if self.chirp is not None and self.chirp.duplicates:
            lines.append(f"FAIL        followers saw {self.chirp.duplicates} duplicate posts")
        revocation = self.revocation
        if revocation is not None and revocation.reached < revocation.nodes:
            lines.append(
                f"FAIL        {revocation.nodes - revocation.reached} nodes never learned "
                "of the revocation"
            )
        if revocation is not None and (revocation.delivered_after or revocation.delivered_knowing):
            lines.append(
                f"FAIL        {revocation.delivered_after + revocation.delivered_knowing} "
                "deliveries of posts under a revoked capability"
            )
        return "\n".join(lines)
