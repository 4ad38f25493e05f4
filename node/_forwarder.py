"""Per-neighbour forwarders: drain what is queued for one neighbour, in batches.

A :class:`Forwarder` runs for each neighbour. It sends, in one ``POST
/ptth/v1/frames``, the control frames waiting for the neighbour (announces: in memory,
not stored) and up to a batch of the frames the store holds for it, oldest first, with
up to :data:`WINDOW` such POSTs in flight. On
the neighbour's signed answer it hands each frame's result to its host (which deletes
what was taken and issues receipts for what was refused); on a failure (connection
error, 429, 503, a bad answer) it asks the host how long to back off and keeps
everything. It wakes when frames arrive for its neighbour (not before a back-off ends)
and at once when the neighbour is heard from. While the operator purges the
neighbour's queue it reads no batch, and a batch read across a purge is not sent
(:meth:`Forwarder.purging`).

Frames are handed to it as they are committed (:meth:`Forwarder.hand`: the rows the
store queued, as it would read them). Once a batch read from the store got everything
queued and nothing else changed the queue meanwhile, the forwarder knows every frame
waiting for its neighbour, and takes its batches from those handed over instead of
reading the store: at light load that saves a round trip to the store's thread and a
query on every hop's way. Anything else that queues frames for the neighbour, moves or
removes them (a reroute, a purge, frames kept after a failure) sends it back to reading
the store (:meth:`Forwarder.poke`, :meth:`Forwarder.invalidate`), and so does holding
more than :data:`MAX_HANDED` in memory.

A read takes the frames queued after the highest ``seq`` under way (the cursor), so
that frames in flight are not sent twice. Frames that come (back) into the queue with a
lower ``seq`` (those of a batch that failed or was kept for a retry, those a reroute
moved here: :meth:`Forwarder.rewind`) move the cursor back before them, and reads
skip the frames still in flight by their ``seq``. (Before, such frames waited until no
POST was under way, and were stranded if a read in between found the queue complete:
in a 300-node simulation, seven frames rerouted to a busy neighbour waited there for
the rest of the run.)

A frame the neighbour refused for want of room for its origin (``store-full``, its
origin's share of the neighbour's store) is kept, and that origin is *held back*
(:meth:`Forwarder.hold_back`): for a while no frame of it goes to this neighbour, reads
of the store skip it and frames of it handed over are left in the store, so the other
origins' frames go on; when the hold ends the queue is read again from its start.

:class:`FrameClient` is the HTTP side: one POST to one neighbour, trying its endpoints
in turn (starting with the one that answered last), with the request signed and the
answer's signature checked (RFC 9421; see :mod:`node._fabric`). It presents, in
``PTTH-Capability`` headers, the capabilities the node holds to have that neighbour
``store`` frames for others (:mod:`node._relay`): a relay that requires one refuses
them otherwise, frame by frame (``forbidden``), and its quota bounds what it holds.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import operator
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from typing import Final, Protocol

import trio

import crypto
import mesh
from node import _fabric
from node._errors import DeliveryFailed
from node._h1 import TRANSPORT_ERRORS, H1Client
from node._relay import presentable

__all__ = [
    "FRAMES_PATH",
    "MAX_HANDED",
    "MAX_HANDED_BYTES",
    "WINDOW",
    "Forwarder",
    "ForwarderHost",
    "FrameClient",
    "PostFailed",
]

log = logging.getLogger("ptth.node")

FRAMES_PATH: Final = "/ptth/v1/frames"
#: Frames per POST at most: past ~100 httpx's per-request cost stops mattering; 250
#: keeps a busy neighbour's requests few while the window keeps them overlapping
#: (measured: 20,000 frames one hop, 1,470/s at 100 and two in flight, 2,110/s at 250
#: and four).
BATCH_SIZE: Final = 250
#: Bytes of envelopes per POST: well under the server's 16 MiB body limit, so a batch
#: of large frames is never refused whole as too large; with the window, what one
#: neighbour's batches in flight hold at most.
BATCH_BYTES: Final = 1024 * 1024
#: Announces waiting for one neighbour: past this the oldest go (they are periodic).
MAX_CONTROL_FRAMES: Final = 2000
#: POSTs in flight to one neighbour at once: more than one keeps both nodes busy (a
#: batch is verified and committed there while the next ones are on their way), and
#: the neighbour verifies concurrent batches on its cores at once.
WINDOW: Final = 4
#: Frames queued beyond those in flight before a second (third...) POST goes: at light
#: load one request at a time carries whatever is there (each extra request costs both
#: nodes a commit and a signature, and slowed one send at a time from 2.9 to 6.4 ms
#: p50); under load the backlog opens the window.
EXTRA_AFTER: Final = 16
#: How long (s) a neighbour's refusals of frames for want of room for their origin
#: (``store-full``, frame by frame) hold back that origin's frames for it, at first;
#: doubled while it refuses them again, up to :data:`HOLD_BACK_MAX`.
HOLD_BACK: Final = 2.0
HOLD_BACK_MAX: Final = 60.0
#: Origins held back for one neighbour at most; past it, such refusals drop the frames
#: (with receipts), as every refusal does.
MAX_HELD_ORIGINS: Final = 1_000
#: Frames handed over (:meth:`Forwarder.hand`) kept in memory at most, and their
#: envelopes' bytes (what the window's batches hold at most); past either the forwarder
#: reads its batches from the store again (a neighbour that cannot keep up, large
#: frames): memory per neighbour stays bounded whatever is sent through this node.
MAX_HANDED: Final = 4 * BATCH_SIZE
MAX_HANDED_BYTES: Final = WINDOW * BATCH_BYTES


class PostFailed(Exception):
    """A POST did not get an answer to act on; ``retry_after`` is the peer's word (s)."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class FrameClient:
    """Posts batches of frames to neighbours over one pooled HTTP/1.1 client."""

    def __init__(
        self,
        client: H1Client,
        sign_request: Callable[[str, str, bytes], list[tuple[str, str]]],
        clock: Callable[[], int],
        on_request: Callable[[], None],
        wallet: mesh.Wallet | None = None,
    ) -> None:
        self.client = client
        self.sign_request = sign_request
        self.clock = clock
        self.on_request = on_request
        #: The capabilities the node holds (those for a neighbour's relay, to store).
        self.wallet = wallet
        self._preferred: dict[crypto.NodeId, str] = {}

    async def post(
        self, dst: crypto.NodeId, endpoints: Sequence[str], frames: Sequence[mesh.WireFrame]
    ) -> list[mesh.Result]:
        """POST ``frames`` to ``dst``, trying each endpoint once; return the results.

        Raises :class:`PostFailed` if no endpoint gave an answer to act on, and
        :class:`DeliveryFailed` if ``dst`` refused the whole request (4xx but 429).
        """
        body = mesh.encode_frames(frames)
        return await self.each_endpoint(
            dst, endpoints, lambda url: self._post_once(dst, url, body, len(frames))
        )

    async def each_endpoint(
        self,
        dst: crypto.NodeId,
        endpoints: Sequence[str],
        post_to: Callable[[str], Awaitable[list[mesh.Result]]],
    ) -> list[mesh.Result]:
        """``post_to`` the frames URL of each of ``dst``'s ``endpoints`` in turn, the one
        that answered last first, until one gives results (see :meth:`post`)."""
        preferred = self._preferred.get(dst)
        ordered = list(endpoints)
        if preferred in ordered:
            ordered.remove(preferred)
            ordered.insert(0, preferred)
        problems: list[str] = []
        retry_after: float | None = None
        for endpoint in ordered:
            url = endpoint.rstrip("/") + FRAMES_PATH
            try:
                results = await post_to(url)
            except PostFailed as failure:
                problems.append(failure.problem)
                if failure.retry_after is not None:
                    retry_after = max(retry_after or 0.0, failure.retry_after)
                continue
            self._preferred[dst] = endpoint
            return results
        raise PostFailed("; ".join(problems) or "no endpoints", retry_after)

    async def _post_once(
        self, dst: crypto.NodeId, url: str, body: bytes, count: int
    ) -> list[mesh.Result]:
        headers = [
            ("content-type", mesh.CONTENT_TYPE_FRAMES),
            *self.sign_request("POST", url, body),
        ]
        digest = headers[1][1]
        if self.wallet is not None:
            headers += presentable(self.wallet, crypto.Operation.STORE, dst)
        self.on_request()
        try:
            answer = await self.client.post(url, headers, body)
        except TRANSPORT_ERRORS as exc:
            raise PostFailed(f"{type(exc).__name__} from {url}: {exc}") from exc
        if answer.status in (429, 503):
            after = _retry_after(answer.header("retry-after"))
            raise PostFailed(f"{answer.status} from {url}: {answer.words}", after)
        if answer.status != 200:
            raise DeliveryFailed(f"{dst.short} refused the request: {answer.status} {answer.words}")
        try:
            _fabric.verify_response(
                200,
                answer.headers,
                answer.body,
                expected=dst,
                request_digest=digest,
                now=self.clock() // 1000,
            )
            return mesh.decode_results(answer.body, expected=count)
        except crypto.CryptoError as exc:
            # Not a receipt from dst: perhaps another node now holds that address.
            raise PostFailed(f"bad answer from {url}: {exc}") from exc


def _retry_after(value: str | None) -> float | None:
    # ASCII digits only: str.isdigit() also takes "²", which float() does not.
    text = "" if value is None else value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(text), 300.0)


class ForwarderHost(Protocol):
    """What a forwarder needs from the node."""

    frame_client: FrameClient

    def endpoints_of(self, node: crypto.NodeId) -> Sequence[str]: ...

    async def queued_for(
        self,
        node: crypto.NodeId,
        limit: int,
        *,
        after: int = 0,
        exclude: Collection[crypto.NodeId] = (),
    ) -> list[mesh.Queued]:
        """Up to ``limit`` frames queued for ``node`` with ``seq`` above ``after``,
        oldest first, none from the origins in ``exclude``."""
        ...

    def sendable(self, node: crypto.NodeId, queued: list[mesh.Queued]) -> list[mesh.Queued]:
        """Of frames handed over for ``node``, those to send (unexpired), ready to go
        as :meth:`queued_for` gives them."""
        ...

    async def handed_on(
        self,
        node: crypto.NodeId,
        control: Sequence[mesh.WireFrame],
        queued: Sequence[mesh.Queued],
        results: Sequence[mesh.Result],
    ) -> float | None:
        """Act on the results; return seconds to wait before the next batch, if any."""
        ...

    async def post_failed(self, node: crypto.NodeId, problem: str, after: float | None) -> float:
        """Note the failure; return the seconds to wait before trying again."""
        ...


class Forwarder:
    """Drains what is queued for ``node`` (see the module docstring).

    Up to ``window`` POSTs are in flight at once: while the neighbour verifies and
    commits one batch, the next is sealed, sent and read, so the two nodes work at the
    same time instead of taking turns. A batch takes what is queued when a slot is free
    (it does not wait to fill up), beyond the frames already in flight.
    """

    def __init__(self, host: ForwarderHost, node: crypto.NodeId, *, window: int = WINDOW) -> None:
        self.host = host
        self.node = node
        self.window = window
        self.control: list[mesh.WireFrame] = []
        self.control_dropped = 0
        self._data = trio.Event()  # frames arrived for the neighbour, or a slot freed
        self._now = trio.Event()  # try now, even during a back-off
        self.retry_at = -math.inf  # trio time of the next attempt after a failure
        self.in_flight = 0  # POSTs under way
        # Queued frames with a seq up to the cursor are all under way (in _flying).
        self._cursor = 0
        self._flying: set[int] = set()  # the seqs of the stored frames under way
        self._backlog = 0  # frames queued (as poked) and not yet taken into a batch
        # Frames handed over and not yet in a batch, oldest first; while _complete, all
        # those queued for the neighbour and not under way (see the module docstring).
        self._handed: list[mesh.Queued] = []
        self._handed_bytes = 0  # their envelopes' bytes
        self._complete = False
        self._reading = False  # a batch is being read from the store
        # The seqs the last few reads of the store returned: a frame handed over after
        # a read that got it (its commit and the read finished in the other order) is
        # not taken again.
        self._read_lately: collections.deque[frozenset[int]] = collections.deque(maxlen=4)
        self._changes = 0  # invalidations so far (a read across one is not complete)
        # Origins whose frames the neighbour had no room for: until when (trio time)
        # they are held back, and how long their last hold was (see hold_back()).
        self._held: dict[crypto.NodeId, float] = {}
        self._hold_seconds: dict[crypto.NodeId, float] = {}
        # Purges of the neighbour's queue begun (a batch read across one is not sent)
        # and under way (no batch is read meanwhile): see purging().
        self._purges = 0
        self._purging = 0
        #: Counters since start (announces not included): POSTs made and those that got
        #: no answer to act on; stored frames put in them (a retried frame counts each
        #: time), and of those answered, the ones the neighbour took (accepted, or had
        #: already) and the ones it refused.
        self.posts = 0
        self.posts_failed = 0
        self.frames_sent = 0
        self.frames_acknowledged = 0
        self.frames_refused = 0
        #: Batches of stored frames read from the store, and taken from those handed
        #: over (what saved a read).
        self.batches_read = 0
        self.batches_handed = 0

    def add_control(self, wires: Sequence[mesh.WireFrame]) -> None:
        """Queue announces (in memory); the oldest go past :data:`MAX_CONTROL_FRAMES`."""
        self.control.extend(wires)
        if len(self.control) > MAX_CONTROL_FRAMES:
            excess = len(self.control) - MAX_CONTROL_FRAMES
            self.control_dropped += excess
            del self.control[:excess]
        self._backlog += len(wires)
        self._data.set()

    def poke(self, count: int = 1) -> None:
        """``count`` frames were queued for the neighbour, not handed over: the next
        batch is read from the store."""
        self._backlog += count
        self.invalidate()

    def hand(self, queued: Sequence[mesh.Queued]) -> None:
        """Frames just queued for the neighbour, as committed (their rows, as the store
        reads them): sent from memory while the forwarder knows all that is queued."""
        self._backlog += len(queued)
        if self._complete:
            queued = [item for item in queued if not self._was_read(item.seq)]
        if self._complete or self._reading:
            self._handed += queued
            self._handed_bytes += sum(item.size for item in queued)
            if len(self._handed) > MAX_HANDED or self._handed_bytes > MAX_HANDED_BYTES:
                self.invalidate()
        self._data.set()

    def rewind(self, count: int = 1) -> None:
        """As :meth:`poke`, for frames that may have any ``seq`` (a reroute moved them
        into the neighbour's queue): the next batch is read from the start of the
        queue, skipping what is under way."""
        self._cursor = 0
        self.poke(count)

    def invalidate(self) -> None:
        """Frames queued for the neighbour changed other than by :meth:`hand` (queued,
        moved here or away, removed): read the next batch from the store."""
        if self._handed:
            # Those not sent yet are read again: from just before the oldest of them.
            self._cursor = min(self._cursor, min(item.seq for item in self._handed) - 1)
            self._keep_handed([])
        self._complete = False
        self._changes += 1
        self._data.set()

    def hold_back(self, queued: Sequence[mesh.Queued]) -> list[mesh.Queued]:
        """The neighbour had no room for these frames' origins (``store-full``, frame by
        frame): keep them, and send no frame of those origins for a while (:data:`HOLD_BACK`
        s, doubled while refused again, up to :data:`HOLD_BACK_MAX`), the other origins'
        going on meanwhile; then read them again. Return those it cannot hold (past
        :data:`MAX_HELD_ORIGINS` origins): the caller drops them."""
        now = trio.current_time()
        kept: list[mesh.Queued] = []
        dropped: list[mesh.Queued] = []
        for item in queued:
            origin = item.src
            if origin not in self._held and len(self._held) >= MAX_HELD_ORIGINS:
                dropped.append(item)
                continue
            if origin not in self._held or self._held[origin] <= now:
                last = self._hold_seconds.get(origin)
                seconds = HOLD_BACK if last is None else min(2 * last, HOLD_BACK_MAX)
                self._held[origin] = now + seconds
                self._hold_seconds[origin] = seconds
            kept.append(item)
        if kept:
            # Read again from before them (reads skip their origins while held).
            self._cursor = min(self._cursor, min(item.seq for item in kept) - 1)
            self.invalidate()
        return dropped

    def released(self, origins: Iterable[crypto.NodeId]) -> None:
        """The neighbour took frames of ``origins``: a later refusal of theirs starts from
        :data:`HOLD_BACK` again. (Nothing held lately: ``origins`` is not even read.)"""
        if not self._hold_seconds:
            return
        for origin in origins:
            if origin not in self._held:
                self._hold_seconds.pop(origin, None)

    def _holding(self) -> set[crypto.NodeId]:
        """The origins held back now; once a hold ends, the queue is read again from its
        start (its frames were skipped)."""
        if not self._held:
            return set()
        now = trio.current_time()
        ended = [origin for origin, until in self._held.items() if until <= now]
        for origin in ended:
            del self._held[origin]
        if ended:
            self._cursor = 0
            self.invalidate()
        if len(self._hold_seconds) > MAX_HELD_ORIGINS:
            self._hold_seconds = {o: self._hold_seconds[o] for o in self._held}
        return set(self._held)

    def nudge(self) -> None:
        """Look again (an address of the neighbour's was learned)."""
        self._data.set()

    def wake(self) -> None:
        """Try now: the neighbour was heard from (ends a back-off)."""
        self.retry_at = -math.inf
        self._now.set()
        self._data.set()

    @contextlib.contextmanager
    def purging(self) -> Iterator[None]:
        """Hold batches while the neighbour's queue is purged (``ptth queue purge``): no
        batch is read meanwhile, and one being read when it began is not sent (its
        frames may be gone). POSTs already under way go on: their frames have left."""
        self._purges += 1
        self._purging += 1
        self.invalidate()
        try:
            yield
        finally:
            self._purging -= 1
            self._backlog = 0  # what was poked for is gone; new frames poke again
            self.invalidate()

    async def run(self) -> None:
        async with trio.open_nursery() as posts:
            while True:
                if trio.current_time() < self.retry_at:
                    with trio.move_on_at(self.retry_at):
                        await self._now.wait()
                    self._now = trio.Event()
                    continue
                self._data = trio.Event()
                self._now = trio.Event()
                if self.in_flight < self.window and (
                    not self.in_flight or self._backlog >= EXTRA_AFTER
                ):
                    batch = await self._next_batch()
                    if batch is not None:
                        self.in_flight += 1
                        posts.start_soon(self._post, *batch)
                        continue
                # Frames held back for their origin go again when their hold ends.
                if self._held:
                    with trio.move_on_at(min(self._held.values())):
                        await self._data.wait()
                else:  # (no cancel scope to enter and leave: most waits, in a mesh)
                    await self._data.wait()

    async def _next_batch(
        self,
    ) -> tuple[Sequence[str], list[mesh.WireFrame], list[mesh.Queued]] | None:
        """What to send next, beyond what is in flight; None if there is nothing to send
        (or nowhere to)."""
        endpoints = self.host.endpoints_of(self.node)
        if not endpoints or self._purging:
            return None  # wait for an address to be learned, or a purge (both wake us)
        control = self.control[:BATCH_SIZE]
        limit = BATCH_SIZE - len(control)
        advance = True  # the cursor moves past this batch
        held = self._holding()
        if self._complete:
            queued = []
            if held:
                # Held back: left in the store, read again when their hold ends.
                self._keep_handed([item for item in self._handed if item.src not in held])
            if self._handed:
                # Commits may be reported out of their order.
                self._handed.sort(key=operator.attrgetter("seq"))
                queued = self.host.sendable(self.node, self._handed[:limit])
                self._keep_handed(self._handed[limit:])
                self.batches_handed += 1
        else:
            purges, changes = self._purges, self._changes
            self._keep_handed([])  # what is handed from now on is in this read, or newer
            self._reading = True
            after = self._cursor
            # Frames under way past the cursor (it was moved back) are read again and
            # skipped: ask for as many more.
            flying = {seq for seq in self._flying if seq > after}
            try:
                read = await self.host.queued_for(
                    self.node, limit + len(flying), after=after, exclude=held
                )
            finally:
                self._reading = False
            everything = len(read) < limit + len(flying)
            queued = [item for item in read if item.seq not in flying][:limit] if flying else read
            if self._purges != purges:
                self._keep_handed([])
                return None  # read across a purge: read again once it is done
            self.batches_read += 1
            self._read_lately.append(frozenset(item.seq for item in queued))
            # Changed while read: the cursor stays where the change put it (this batch's
            # frames, read again, are skipped as under way).
            advance = changes == self._changes
            if advance and everything and len(queued) < limit:
                # Everything queued (but the frames of origins held back, read again
                # when their hold ends): from now on what is handed over is all there
                # is (less what this read got, committed before it).
                self._keep_handed([item for item in self._handed if not self._was_read(item.seq)])
                self._complete = True
            else:
                self._keep_handed([])
        if not control and not queued:
            return None
        size = sum(len(wire.envelope) for wire in control)
        for index, item in enumerate(queued):
            size += item.size
            if size > BATCH_BYTES and index > 0:
                if self._complete:
                    self._keep_handed([*queued[index:], *self._handed])
                queued = queued[:index]  # the rest goes in the next batch
                break
        del self.control[: len(control)]
        if queued:
            self._flying.update(item.seq for item in queued)
            if advance:
                self._cursor = max(self._cursor, queued[-1].seq)
        if self._complete:
            self._backlog = len(self._handed)  # known exactly
        else:
            # This took all that was queued, unless the batch is full: then more may
            # be left behind, and the window stays open for it.
            full = len(control) + len(queued) >= BATCH_SIZE
            self._backlog = EXTRA_AFTER if full else 0
        return endpoints, control, queued

    def _landed(self, queued: Sequence[mesh.Queued], *, back: bool = False) -> None:
        """The stored frames of a batch are no longer under way; with ``back``, those
        still queued are to be read again: the cursor moves back before them."""
        self._flying.difference_update(item.seq for item in queued)
        if back and queued:
            self._cursor = min(self._cursor, min(item.seq for item in queued) - 1)
            self.invalidate()

    def _was_read(self, seq: int) -> bool:
        return any(seq in seqs for seqs in self._read_lately)

    def _keep_handed(self, queued: list[mesh.Queued]) -> None:
        self._handed = queued
        self._handed_bytes = sum(item.size for item in queued)

    async def _post(
        self,
        endpoints: Sequence[str],
        control: list[mesh.WireFrame],
        queued: list[mesh.Queued],
    ) -> None:
        try:
            await self._send(endpoints, control, queued)
        finally:
            self._landed(queued)
            self.in_flight -= 1
            if not self.in_flight:
                # Nothing under way: start again from the oldest frame still queued
                # (those of a failed batch are).
                self._cursor = 0
            self._data.set()

    async def _send(
        self,
        endpoints: Sequence[str],
        control: list[mesh.WireFrame],
        queued: list[mesh.Queued],
    ) -> None:
        frames = [*control, *(item.wire for item in queued)]
        self.posts += 1
        self.frames_sent += len(queued)
        try:
            results = await self.host.frame_client.post(self.node, endpoints, frames)
        except (PostFailed, DeliveryFailed) as failure:
            self.posts_failed += 1
            problem = failure.problem if isinstance(failure, PostFailed) else str(failure)
            after = failure.retry_after if isinstance(failure, PostFailed) else None
            # Announces are periodic: those that did not go are put back in front.
            self.control[:0] = control
            self._landed(queued, back=True)  # in the store, and only there: read again
            wait = await self.host.post_failed(self.node, problem, after)
            self.retry_at = max(self.retry_at, trio.current_time() + wait)
            return
        taken = sum(1 for result in results[len(control) :] if result.ok)
        self.frames_acknowledged += taken
        self.frames_refused += len(queued) - taken
        pause = await self.host.handed_on(self.node, control, queued, results[len(control) :])
        if pause is not None:
            self._landed(queued, back=True)  # those kept for a retry: read again
            self.retry_at = max(self.retry_at, trio.current_time() + pause)
        if control:
            for wire, result in zip(control, results[: len(control)], strict=True):
                if not result.ok:
                    log.debug("%s refused an announce: %s %s", self.node.short, result.code, wire)
