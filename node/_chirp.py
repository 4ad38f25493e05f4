"""Chirp, the toy Twitter: a thin layer over publish/subscribe.

AMQP's asymmetric bindings make "follow" natural, and the mesh keeps the model:

* a post is a publication to ``~<author>.chirp``: a secure name, so only the author can
  post there (every relay refuses anyone else's);
* following X adds ``~<X>.chirp`` to this node's named subscription ``chirp``, so the
  follows are kept in the store and survive restarts;
* the timeline is what that subscription holds: the posts of the nodes followed, oldest
  first (by their authors' time), each once, including what came while this node was
  down (its relays kept it). Reading the timeline does not consume it: posts stay until
  they expire (:data:`POST_TTL` after they were written).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import Final, Protocol

import crypto
import mesh
from node._errors import NodeError
from node._message import Publication, Published
from node._pubsub import DurableSubscription

__all__ = ["MAX_POST_LENGTH", "POST_TTL", "SUBSCRIPTION", "Chirp", "Post", "chirp_topic"]

#: The named subscription that holds the follows and the timeline.
SUBSCRIPTION: Final = "chirp"
#: How long a post lives (s): the timeline shows a week.
POST_TTL: Final = 7 * 24 * 3600.0
#: Longest post, in characters.
MAX_POST_LENGTH: Final = 1000
_CT: Final = "text/plain; charset=utf-8"


def chirp_topic(author: crypto.NodeId) -> str:
    """The topic ``author`` posts to."""
    return f"~{author.text}.chirp"


@dataclasses.dataclass(frozen=True)
class Post:
    """A post on the timeline."""

    author: crypto.NodeId
    text: str
    ts: int
    id: bytes
    received: int

    @classmethod
    def of(cls, publication: Publication) -> Post:
        return cls(
            author=publication.origin,
            text=publication.body.decode("utf-8", "replace"),
            ts=publication.ts,
            id=publication.id,
            received=publication.received,
        )


class ChirpHost(Protocol):
    """What chirp needs from the node."""

    identity: crypto.Identity

    async def publish(
        self, topic: str, body: bytes, *, ct: str | None = None, ttl: float | None = None
    ) -> Published: ...

    def subscribe(
        self, *patterns: str, name: str
    ) -> contextlib.AbstractAsyncContextManager[DurableSubscription]: ...

    async def unsubscribe(self, name: str) -> bool: ...

    async def subscriptions(self) -> list[mesh.SavedSubscription]: ...


class Chirp:
    """One node's chirp: post, follow, unfollow, following, timeline."""

    def __init__(self, node: ChirpHost) -> None:
        self.node = node

    async def post(self, text: str) -> Published:
        """Post ``text`` (up to :data:`MAX_POST_LENGTH` characters) to our followers."""
        if not text.strip():
            raise crypto.Malformed("a post needs some text")
        if len(text) > MAX_POST_LENGTH:
            raise crypto.Malformed(
                f"a post is at most {MAX_POST_LENGTH} characters; this one has {len(text)}"
            )
        me = self.node.identity.node_id
        return await self.node.publish(chirp_topic(me), text.encode("utf-8"), ct=_CT, ttl=POST_TTL)

    async def following(self) -> list[crypto.NodeId]:
        """The nodes followed, in the order they were followed."""
        for saved in await self.node.subscriptions():
            if saved.name == SUBSCRIPTION:
                return [_author(pattern) for pattern in saved.patterns]
        return []

    async def follow(self, who: crypto.NodeId | str) -> list[crypto.NodeId]:
        """Follow ``who`` (a node id); return who is followed now."""
        author = crypto.NodeId.parse(who) if isinstance(who, str) else who
        if author == self.node.identity.node_id:
            raise NodeError("a node does not follow itself: its posts are its own")
        followed = await self.following()
        if author not in followed:
            followed.append(author)
            await self._keep(followed)
        return followed

    async def unfollow(self, who: crypto.NodeId | str) -> bool:
        """Stop following ``who``; return whether it was followed."""
        author = crypto.NodeId.parse(who) if isinstance(who, str) else who
        followed = await self.following()
        if author not in followed:
            return False
        followed.remove(author)
        if followed:
            await self._keep(followed)
        else:
            await self.node.unsubscribe(SUBSCRIPTION)
        return True

    async def _keep(self, followed: Sequence[crypto.NodeId]) -> None:
        async with self.node.subscribe(*map(chirp_topic, followed), name=SUBSCRIPTION):
            pass

    async def timeline(self) -> list[Post]:
        """The posts of the nodes followed, oldest first, each once."""
        followed = await self.following()
        if not followed:
            return []
        async with self.node.subscribe(*map(chirp_topic, followed), name=SUBSCRIPTION) as sub:
            pending = await sub.pending()
        return _ordered(pending, followed)

    async def watch(self) -> AsyncGenerator[Post, None]:
        """The timeline, then each new post as it comes (until cancelled)."""
        followed = await self.following()
        if not followed:
            raise NodeError("follow someone first ('ptth chirp follow NODE_ID')")
        async with self.node.subscribe(*map(chirp_topic, followed), name=SUBSCRIPTION) as sub:
            backlog = await sub.pending()
            for post in _ordered(backlog, followed):
                yield post
            seen = {p.seq for p in backlog}
            while True:
                publication = await sub.get()
                if publication.seq not in seen and publication.origin in followed:
                    yield Post.of(publication)


def _author(pattern: str) -> crypto.NodeId:
    owner = mesh.secure_owner(pattern)
    assert owner is not None  # the subscription holds chirp topics only
    return owner


def _ordered(publications: Sequence[Publication], followed: Sequence[crypto.NodeId]) -> list[Post]:
    # Posts of nodes no longer followed wait out their expiry in the store; not shown.
    wanted = set(followed)
    posts = {(p.origin, p.id): Post.of(p) for p in publications if p.origin in wanted}
    return sorted(posts.values(), key=lambda post: (post.ts, post.id))
