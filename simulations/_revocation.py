"""Watching a capability's revocation spread over the mesh (the ``revocation`` scenario).

The cast: an owner grants ``publish`` on its feed (``~<owner>.feed.#``) to an issuer,
which delegates a narrower capability (``~<owner>.feed.<holder>``, a day's lifetime) to
a holder; some nodes subscribe to the whole feed. The holder posts every
:data:`POST_INTERVAL` s on a grid anchored half an interval off the revocation; at the
revocation time the owner revokes the *issuer's* capability (the parent: the holder's,
delegated from it, dies with it), and the holder posts once more at that very moment
(a post racing the revocation). A few NATed nodes are down while it spreads (crashed
:data:`ABSENT_LEAD` s before, restarted up to :data:`ABSENT_FOR` s after): they hear of
it in the greeting of a neighbour when they come back.

What :class:`RevocationWatch` measures, without sleeping to find out: each running
node is observed (its runtime's ``on_revocation`` hook, set again after each start),
so the virtual time at which a node takes in the ``rev`` frame that is news to it is
its learning time, and each copy taken in is counted, with the neighbour that sent it.
The holder's node is observed for the drop receipts that come back for its posts (its
``on_intake``), and every subscriber's application enters the posts it reads. When the
holder's node refuses a post (it knows of the revocation), the holder hands the signed
post straight to a neighbour, as a holder ignoring the revocation would: the neighbour
must refuse it too. :meth:`RevocationWatch.report` makes the report's
:class:`~simulations.RevocationReport`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Final

import trio

import crypto
import mesh
from node import Node, NodeError
from node._forwarder import PostFailed
from simulations._report import RevocationReport, percentile
from simulations._simulation import SimNode, Simulation

__all__ = [
    "ABSENT_FOR",
    "ABSENT_LEAD",
    "ABSENT_PER",
    "DELEGATED_LIFETIME",
    "POST_INTERVAL",
    "SUBSCRIBERS_PER",
    "RevocationWatch",
]

#: Seconds between two posts of the holder.
POST_INTERVAL: Final = 10.0
#: One node in this many subscribes to the feed (at least two do).
SUBSCRIBERS_PER: Final = 10
#: One node in this many (NATed ones, neither subscriber nor cast) is down while the
#: revocation spreads (at least one, if there is one to spare): crashed this many
#: seconds before it, restarted at most this many seconds after.
ABSENT_PER: Final = 40
ABSENT_LEAD: Final = 2.0
ABSENT_FOR: Final = 60.0
#: The delegated capability's lifetime (s): narrower than its parent's (unlimited).
DELEGATED_LIFETIME: Final = 24 * 3600
_FORBIDDEN: Final = f"{mesh.Reason.FORBIDDEN}:"


@dataclasses.dataclass
class _Post:
    """One post of the holder: when, whether its node took it, what became of it."""

    id: bytes
    at: float
    taken: bool
    forced: bool = False
    forced_refused: bool = False
    #: Subscriber name -> virtual time its application read the post.
    deliveries: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Of those, the subscribers whose node knew of the revocation when it took it in.
    knowing: set[str] = dataclasses.field(default_factory=set)


class RevocationWatch:
    """The cast of the ``revocation`` scenario and what it measures (module docstring).

    ``revoke_at``: the planned virtual time of the revocation (posts are on a grid
    anchored there). The capabilities are signed at construction.
    """

    def __init__(
        self,
        sim: Simulation,
        *,
        owner: SimNode,
        issuer: SimNode,
        holder: SimNode,
        subscribers: Sequence[SimNode],
        absent: Sequence[SimNode],
        revoke_at: float,
    ) -> None:
        self.sim = sim
        self.owner = owner
        self.issuer = issuer
        self.holder = holder
        self.subscribers = list(subscribers)
        self.absent = list(absent)
        self.revoke_at = revoke_at
        self.pattern = f"~{owner.node_id.text}.feed.#"
        self.topic = f"~{owner.node_id.text}.feed.{holder.name}"
        rng = sim.rng("revocation", "caps")
        now = sim.clock_ms()
        self.granted = crypto.grant(
            owner.node.identity,
            crypto.Target.topic(owner.node_id, self.pattern),
            [crypto.Operation.PUBLISH],
            subject=issuer.node_id,
            now=now,
            cap_id=rng.randbytes(crypto.CAPABILITY_ID_SIZE),
        )
        self.delegated = crypto.delegate(
            issuer.node.identity,
            self.granted,
            subject=holder.node_id,
            now=now,
            cap_id=rng.randbytes(crypto.CAPABILITY_ID_SIZE),
            target=crypto.Target.topic(owner.node_id, self.topic),
            caveats=crypto.Caveats(exp=now + DELEGATED_LIFETIME * 1000),
        )
        self.revocation: crypto.Revocation | None = None
        self.revoked_at: float | None = None
        #: Node name -> virtual time it learned of the revocation, and its clock then.
        self.learned: dict[str, float] = {}
        self.learned_ms: dict[str, int] = {}
        #: Absent node name -> virtual time it was started again.
        self.restarted: dict[str, float] = {}
        #: ``rev`` copies taken in, by the node that took it and by the one that sent it.
        self.taken_in: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.posts: dict[bytes, _Post] = {}
        #: Forbidden drop receipts for the holder's posts: (post id, refusing node).
        self.receipts: set[tuple[bytes, crypto.NodeId]] = set()
        self._neighbour_turn = 0
        self._changed = trio.Event()

    # -- observing the nodes ------------------------------------------------------------

    def attach(self, sim_node: SimNode) -> None:
        """Observe ``sim_node``'s running node (again after each start)."""
        node = sim_node.node
        node.mesh.on_revocation = functools.partial(self._took_in, sim_node)
        if sim_node is self.holder:
            self._watch_receipts(node)
        # Learned while it was not observed (while it started): from now, then.
        if sim_node.name not in self.learned and node.revoked(self.delegated) is not None:
            self._learned(sim_node, node.clock())

    def _took_in(
        self,
        sim_node: SimNode,
        revocation: crypto.Revocation | None,
        sender: crypto.NodeId,
        now: int,
    ) -> None:
        self.taken_in[sim_node.name] += 1
        neighbour = self.sim.by_id(sender)
        self.sent[neighbour.name if neighbour is not None else sender.short] += 1
        if revocation is None:
            self.duplicates += 1
        elif revocation.cap_id == self.granted.id:
            self._learned(sim_node, now)

    def _learned(self, sim_node: SimNode, now_ms: int) -> None:
        if sim_node.name not in self.learned:
            self.learned[sim_node.name] = self.sim.now
            self.learned_ms[sim_node.name] = now_ms
            self._changed.set()
            self._changed = trio.Event()

    async def wait_learned(self, *nodes: SimNode) -> None:
        """Wait until each of ``nodes`` has learned of the revocation (bound it with
        ``trio.fail_after``)."""
        while any(node.name not in self.learned for node in nodes):
            await self._changed.wait()

    def _watch_receipts(self, node: Node) -> None:
        before = node.mesh.on_intake
        holder = self.holder.node_id

        def on_intake(intake: mesh.Intake, now: int) -> None:
            if before is not None:
                before(intake, now)
            frame = intake.admitted.frame
            if (
                frame.kind is crypto.Kind.RCPT
                and frame.dst == holder
                and frame.ref in self.posts
                and frame.st == "dropped"
                and (frame.why or "").startswith(_FORBIDDEN)
            ):
                self.receipts.add((frame.ref, frame.src))

        node.mesh.on_intake = on_intake

    # -- the cast's actions -------------------------------------------------------------

    def holder_knows_subscribers(self) -> bool:
        """The holder's node knows every subscriber's interest, and a way to it."""
        router = self.holder.node.mesh.router
        now = self.holder.node.clock()
        interested = router.interests.subscribers(self.topic, now=now)
        return all(
            sub.node_id in interested and router.next_hop(sub.node_id, now) is not None
            for sub in self.subscribers
        )

    async def read_feed(self, subscriber: SimNode) -> None:
        """Be ``subscriber``'s application: read the feed, enter each post of the
        holder's. Runs until cancelled (the subscriber must stay up)."""
        node = subscriber.node
        async with node.subscribe(self.pattern) as feed:
            async for publication in feed:
                post = self.posts.get(publication.id)
                if post is None or subscriber.name in post.deliveries:
                    continue
                post.deliveries[subscriber.name] = self.sim.now
                knew = self.learned_ms.get(subscriber.name)
                if knew is not None and publication.received > knew:
                    post.knowing.add(subscriber.name)

    async def revoke(self) -> None:
        """The owner revokes the issuer's capability (and with it the holder's)."""
        self.revoked_at = self.sim.now
        self._learned(self.owner, self.owner.node.clock())
        self.revocation = await self.owner.node.revoke(self.granted)
        self.sim.log(
            f"{self.owner.name} revoked the capability of {self.issuer.name} "
            f"(delegated to {self.holder.name})"
        )

    async def revoke_in_absence(self, until: float) -> None:
        """Crash the absent nodes :data:`ABSENT_LEAD` s before ``revoke_at``, revoke
        then (the holder posts at that moment too), and start them again
        :data:`ABSENT_FOR` s later (at most a third of the time left until ``until``),
        observed from their start."""
        await self.sim.advance_to(self.revoke_at - ABSENT_LEAD)
        for node in self.absent:
            if node.up:
                await node.crash()
        await self.sim.advance_to(self.revoke_at)
        await self.revoke()
        # A post at the very moment of the revocation races it through the mesh.
        await self.post(f"{self.holder.name} racing".encode())
        await self.sim.advance_to(
            self.revoke_at + min(ABSENT_FOR, max(0.0, until - self.revoke_at) / 3)
        )
        for node in self.absent:
            if not node.up:
                await node.start()
                self.restarted[node.name] = self.sim.now
                self.attach(node)

    async def post_until(self, until: float) -> None:
        """Post every :data:`POST_INTERVAL` s, at ``revoke_at + (k + 1/2) x interval``,
        from now until ``until``."""
        step = math.ceil((self.sim.now - self.revoke_at) / POST_INTERVAL - 0.5)
        number = 0
        while (when := self.revoke_at + (step + 0.5) * POST_INTERVAL) < until:
            await self.sim.advance_to(when)
            await self.post(f"{self.holder.name} #{number}".encode())
            step += 1
            number += 1

    async def post(self, body: bytes) -> None:
        """One post of the holder's with the delegated capability. Refused by its own
        node, it is handed straight to a neighbour (the next one up, in turn)."""
        node = self.holder.node
        try:
            published = await node.publish(self.topic, body, cap=self.delegated)
        except NodeError:
            pass
        else:
            self.posts[published.id] = _Post(published.id, self.sim.now, taken=True)
            return
        now = node.clock()
        frame = crypto.Frame(
            kind=crypto.Kind.PUB,
            src=node.identity.node_id,
            id=node.mesh.new_id(),
            ts=now,
            exp=now + int(node.mesh.config.frame_ttl * 1000),
            hops=node.mesh.config.hops,
            topic=self.topic,
            body=body,
            cap=self.delegated.envelope,
        )
        post = self.posts[frame.id] = _Post(frame.id, self.sim.now, taken=False)
        neighbour = self._next_neighbour()
        if neighbour is None:
            return
        post.forced = True
        try:
            [result] = await self.holder.post(
                neighbour, [mesh.WireFrame(0, frame.seal(node.identity))]
            )
        except (PostFailed, NodeError):  # not answered: it did not get through either
            return
        post.forced_refused = result.code is mesh.Reason.FORBIDDEN

    def _next_neighbour(self) -> SimNode | None:
        """The holder's public neighbours that are up, in turn (None: none is)."""
        names = sorted(
            other
            for pair in self.sim.peerings
            if self.holder.name in pair
            for other in pair
            if other != self.holder.name
        )
        candidates = [
            self.sim.nodes[name]
            for name in names
            if not self.sim.nodes[name].nat and self.sim.nodes[name].up
        ]
        if not candidates:
            return None
        self._neighbour_turn += 1
        return candidates[self._neighbour_turn % len(candidates)]

    # -- the report ---------------------------------------------------------------------

    def report(self) -> RevocationReport:
        """What was measured so far."""
        revoked_at = self.revoked_at if self.revoked_at is not None else math.inf
        after = {name: when - revoked_at for name, when in self.learned.items()}
        absent = {node.name for node in self.absent}
        measured = [
            name for name in self.sim.nodes if name not in absent and name != self.owner.name
        ]
        times = [after[name] for name in measured if name in after]
        nodes = len(self.sim.nodes)
        everywhere = max(after.values()) if len(after) == nodes and after else None
        settled = revoked_at + everywhere if everywhere is not None else math.inf
        restart_delays = [
            self.learned[name] - self.restarted[name]
            for name in absent
            if name in self.learned and name in self.restarted
        ]
        posts = sorted(self.posts.values(), key=lambda post: post.at)
        before = [post for post in posts if post.at < revoked_at]
        during = [post for post in posts if revoked_at <= post.at < settled]
        later = [post for post in posts if post.at >= settled]
        return RevocationReport(
            nodes=nodes,
            reached=len(self.learned),
            revoked_at=round(self.revoked_at if self.revoked_at is not None else 0.0, 6),
            measured=len(measured),
            propagation_p50=_rounded(percentile(times, 0.50)),
            propagation_p90=_rounded(percentile(times, 0.90)),
            propagation_p99=_rounded(percentile(times, 0.99)),
            propagation_max=_rounded(max(times, default=None)),
            holder_learned=_rounded(after.get(self.holder.name)),
            absent=len(absent),
            absent_reached=sum(1 for name in absent if name in self.learned),
            absent_after_restart_max=_rounded(max(restart_delays, default=None)),
            everywhere=_rounded(everywhere),
            copies=sum(self.taken_in.values()),
            duplicate_copies=self.duplicates,
            most_sent=max(self.sent.values(), default=0),
            subscribers=len(self.subscribers),
            posts_before=len(before),
            delivered_before=sum(len(post.deliveries) for post in before),
            expected_before=len(before) * len(self.subscribers),
            posts_during=sum(1 for post in during if post.taken),
            refused_during=sum(1 for post in during if not post.taken),
            delivered_during=sum(len(post.deliveries) for post in during),
            posts_after=len(later),
            delivered_after=sum(len(post.deliveries) for post in later),
            forced=sum(1 for post in posts if post.forced),
            forced_refused=sum(1 for post in posts if post.forced_refused),
            delivered_knowing=sum(len(post.knowing) for post in posts),
            drop_receipts=len(self.receipts),
        )


def _rounded(value: float | None) -> float | None:
    # Virtual times are sums of floats: round away the last bits so reports compare.
    return None if value is None else round(value, 6)
