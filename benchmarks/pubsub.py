"""Publish/subscribe: publish -> subscriber throughput over 1 and 3 hops beside the
Ed25519 verify rate, and the topic matcher (mesh._topics) beside a linear scan.

Sections (``--only NAME`` runs one; all run by default):

* **throughput**: real nodes in this process on loopback TCP, each with its durable
  SQLite store (in /dev/shm when there is one: the figures are then CPU-bound), in a
  line publisher -> ... -> subscriber of 1 and 3 hops. The subscriber holds a live
  subscription to ``bench.#``; the publisher publishes N publications of ``--body``
  bytes, one at a time and then ``--publishers`` (100) at once (each in custody when
  ``publish`` returns), while the relays filter and pass them on in batches. Printed:
  publications/s from the first publish to the last arrival, that rate as a ratio of
  this machine's Ed25519 verify rate (PyNaCl, one core), measured in the same run (every
  publication is verified once per hop), and beside it the same line and load point to
  point (``node.send`` to the far end, counted as it arrives in its inbox) with the
  ratio publish/send.

* **matcher**: 10,000 subscription patterns of realistic shapes (secure names
  ``~<node-id>.chirp`` and ``~<node-id>.#``, ``news.*.tech``, ``logs.<service>.#``,
  literals such as ``metrics.<host>.cpu``, and some ``#``-heavy ones such as
  ``#.error.#``) are put in a :class:`mesh._topics.TopicTrie`; then topics of the same
  shapes (some published under a subscribed secure name, some not) are matched against
  them two ways, in the same run:

  - the trie: ``TopicTrie.match`` on every topic;
  - the baseline, a linear scan: ``matches(pattern, topic)`` for every pattern. It costs
    about (patterns) times more per topic, so it is timed on fewer topics (``--linear``,
    the first ones of the same list) to keep the run short; rates are per topic, so
    they compare. A second linear scan with the patterns split once, and no validation
    per call (the private ``_match_words``), shows how much of the baseline is
    validation.

  Both give the same keys for every topic the linear scan covers (checked). Printed:
  topics matched per second for each, and the trie's rate as a multiple of each
  baseline's.

Usage: python benchmarks/pubsub.py [--only throughput|matcher] [--publications N]
       [--body BYTES] [--patterns N] [--topics N] [--linear N] [--seed S]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and this file would
# shadow the ``mesh`` package: take the directory off before importing ptth.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import itertools
import os
import random
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Callable

import nacl.signing
import trio

import crypto
from mesh._topics import TopicTrie, _match_words, matches
from node import Node, NodeConfig

#: Start-up, peering and the subscription's spread must take no longer than this (s).
SETUP_TIMEOUT = 60.0
WARM_UP = 100

SERVICES = ["api", "auth", "billing", "db", "cache", "queue", "web", "search", "mail"]
LEVELS = ["debug", "info", "warn", "error"]
REGIONS = ["eu", "us", "asia", "africa", "oceania"]
SECTIONS = ["tech", "sport", "science", "politics", "culture"]
METRICS = ["cpu", "mem", "disk", "net"]


def node_name(rng: random.Random) -> str:
    """A secure first word ``~<node-id>`` for a random node id."""
    return "~" + crypto.NodeId(rng.randbytes(32)).text


def make_patterns(rng: random.Random, count: int, nodes: list[str]) -> list[str]:
    """``count`` distinct subscription patterns of realistic shapes."""
    hosts = [f"host{index}" for index in range(count // 10 + 1)]
    shapes: list[Callable[[], str]] = [
        # what people follow: a node's chirps (secure names), most of the patterns
        lambda: f"{rng.choice(nodes)}.chirp",
        lambda: f"{rng.choice(nodes)}.chirp",
        lambda: f"{rng.choice(nodes)}.chirp",
        lambda: f"{rng.choice(nodes)}.#",
        lambda: f"news.*.{rng.choice(SECTIONS)}",
        lambda: f"news.{rng.choice(REGIONS)}.{rng.choice(SECTIONS)}",
        lambda: f"logs.{rng.choice(SERVICES)}.#",
        lambda: f"logs.{rng.choice(SERVICES)}.{rng.choice(LEVELS)}",
        lambda: f"logs.*.{rng.choice(LEVELS)}",
        lambda: f"metrics.{rng.choice(hosts)}.{rng.choice(METRICS)}",
        lambda: f"metrics.{rng.choice(hosts)}.#",
        lambda: f"metrics.*.{rng.choice(METRICS)}",
        # '#'-heavy
        lambda: f"#.{rng.choice(LEVELS)}",
        lambda: f"#.{rng.choice(SERVICES)}.#",
        lambda: f"*.#.{rng.choice(METRICS)}.#",
        lambda: f"logs.#.{rng.choice(SERVICES)}.#.{rng.choice(LEVELS)}",
    ]
    patterns: set[str] = set()
    while len(patterns) < count:
        patterns.add(rng.choice(shapes)())
    return sorted(patterns)


def make_topics(rng: random.Random, count: int, nodes: list[str]) -> list[str]:
    """``count`` published topics, of the shapes the patterns expect and some others."""
    strangers = [node_name(rng) for _ in range(100)]
    hosts = [f"host{index}" for index in range(2000)]
    shapes: list[Callable[[], str]] = [
        lambda: f"{rng.choice(nodes)}.chirp",
        lambda: f"{rng.choice(nodes)}.chirp.reply",
        lambda: f"{rng.choice(strangers)}.chirp",
        lambda: f"news.{rng.choice(REGIONS)}.{rng.choice(SECTIONS)}",
        lambda: f"logs.{rng.choice(SERVICES)}.{rng.choice(LEVELS)}",
        lambda: f"logs.{rng.choice(SERVICES)}.{rng.choice(SERVICES)}.{rng.choice(LEVELS)}",
        lambda: f"metrics.{rng.choice(hosts)}.{rng.choice(METRICS)}",
        lambda: ".".join(rng.choices(SERVICES + LEVELS + METRICS, k=rng.randint(4, 12))),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def matcher(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    nodes = [node_name(rng) for _ in range(max(1, args.patterns // 4))]
    patterns = make_patterns(rng, args.patterns, nodes)
    topics = make_topics(rng, args.topics, nodes)
    linear_topics = topics[: args.linear]
    print(
        f"matcher: {len(patterns)} patterns (keys = their indices), {len(topics)} topics "
        f"for the trie, the first {len(linear_topics)} of them for the linear scans"
    )

    started = time.perf_counter()
    trie: TopicTrie[int] = TopicTrie()
    for key, pattern in enumerate(patterns):
        trie.add(pattern, key)
    built = time.perf_counter() - started
    nodes_held = sum(1 for _ in trie._nodes())
    print(f"  trie built in {built * 1000:.1f} ms ({nodes_held} nodes)")

    started = time.perf_counter()
    trie_found = [trie.match(topic) for topic in topics]
    trie_seconds = time.perf_counter() - started
    trie_rate = rate(len(topics), trie_seconds)
    hits = sum(len(found) for found in trie_found)

    started = time.perf_counter()
    linear_found = [
        {key for key, pattern in enumerate(patterns) if matches(pattern, topic)}
        for topic in linear_topics
    ]
    linear_rate = rate(len(linear_topics), time.perf_counter() - started)

    split = [pattern.split(".") for pattern in patterns]
    started = time.perf_counter()
    bare_found = []
    for topic in linear_topics:
        words = topic.split(".")
        bare_found.append({key for key, tokens in enumerate(split) if _match_words(tokens, words)})
    bare_rate = rate(len(linear_topics), time.perf_counter() - started)

    for index, topic in enumerate(linear_topics):
        if not trie_found[index] == linear_found[index] == bare_found[index]:
            raise SystemExit(f"the trie and the linear scan disagree on {topic!r}: fix this")

    print(f"  matches per topic (mean)           {hits / len(topics):10.2f}")
    print(f"  trie                               {trie_rate:10.0f} topics/s")
    print(
        f"  linear scan, matches()             {linear_rate:10.1f} topics/s"
        f"   trie/linear {trie_rate / linear_rate:8.0f} x"
    )
    print(
        f"  linear scan, pre-split, no checks  {bare_rate:10.1f} topics/s"
        f"   trie/linear {trie_rate / bare_rate:8.0f} x"
    )
    per_pattern = 1e6 / (linear_rate * len(patterns))
    print(f"  (one matches() call: {per_pattern:.2f} us)")


def verify_rate(seconds: float = 1.0) -> float:
    """Ed25519 verifies per second (PyNaCl, 200-byte message)."""
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(os.urandom(200))
    verify = key.verify_key.verify
    number = 500
    elapsed = timeit.timeit(lambda: verify(signed), number=number)
    number = max(number, int(number * seconds / elapsed))
    return number / timeit.timeit(lambda: verify(signed), number=number)


@contextlib.asynccontextmanager
async def line(root: Path, hops: int) -> AsyncIterator[tuple[Node, Node]]:
    """A publisher and ``hops`` more nodes in a line, each peered with its neighbours."""
    config = NodeConfig(listen="127.0.0.1:0")
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Node.open(root / f"n{i}", config=config, rng=random.Random(i))
            )
            for i in range(hops + 1)
        ]
        for left, right in itertools.pairwise(nodes):
            await left.add_peer(right.address_token())
            await right.add_peer(left.address_token())
        yield nodes[0], nodes[-1]


async def publish_to_subscriber(
    root: Path, hops: int, count: int, body: bytes, tasks: int
) -> float:
    """Publications/s from a publisher to a subscriber ``hops`` away, ``tasks``
    publishing at once."""
    async with (
        line(root, hops) as (publisher, subscriber),
        subscriber.subscribe("bench.#") as subscription,
    ):
        with trio.fail_after(SETUP_TIMEOUT):
            while subscriber.node_id not in publisher.mesh.router.interests.subscribers(
                "bench.x", now=publisher.clock()
            ):
                await publisher.mesh.interests_changed.wait()

        async def publish(n: int) -> None:
            for i in range(n):
                await publisher.publish(f"bench.{i % 10}", body)

        await publish(WARM_UP)
        for _ in range(WARM_UP):
            await subscription.get()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for share in _shares(count, tasks):
                nursery.start_soon(publish, share)
            for _ in range(count):
                await subscription.get()
        elapsed = time.perf_counter() - started
        if subscription.dropped:
            raise SystemExit(f"the subscription dropped {subscription.dropped}: fix this")
        return count / elapsed


async def send_to_receiver(root: Path, hops: int, count: int, body: bytes, tasks: int) -> float:
    """The same line and load as :func:`publish_to_subscriber`, point to point: messages/s
    from ``node.send`` at one end to their arrival in the other's inbox."""
    async with line(root, hops) as (sender, receiver):
        with trio.fail_after(SETUP_TIMEOUT):
            while not any(r["destination"] == receiver.node_id.text for r in sender.routes()):  # noqa: ASYNC110
                await trio.sleep(0.01)  # no event says "a route appeared"

        async def send(n: int) -> None:
            for _ in range(n):
                await sender.send(receiver.node_id, body)

        async with contextlib.aclosing(receiver.inbox_pages(follow=True)) as pages:
            await send(WARM_UP)
            arrived = 0
            started = 0.0
            async with trio.open_nursery() as nursery:
                async for page in pages:
                    arrived += len(page)
                    if arrived == WARM_UP:
                        started = time.perf_counter()
                        for share in _shares(count, tasks):
                            nursery.start_soon(send, share)
                    if arrived >= WARM_UP + count:
                        break
        return count / (time.perf_counter() - started)


def _shares(count: int, tasks: int) -> list[int]:
    """``count`` split over ``tasks`` (at least one each, while there are any)."""
    tasks = max(1, min(tasks, count))
    return [count // tasks + (1 if i < count % tasks else 0) for i in range(tasks)]


def data_root() -> tuple[str, str]:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm), "/dev/shm (tmpfs: fsync is free, figures are CPU-bound)"
    default = tempfile.gettempdir()
    return default, f"{default} (no /dev/shm: fsync costs what this disk costs)"


def throughput(args: argparse.Namespace) -> None:
    where, words = data_root()
    body = os.urandom(args.body)
    verify = verify_rate()
    print(f"throughput: {args.publications} publications of {args.body} bytes; data in {words}")
    print(f"  Ed25519 verify (baseline, one core)  {verify:10.0f} /s")
    for tasks in sorted({1, args.publishers}):
        for hops in (1, 3):
            with tempfile.TemporaryDirectory(dir=where, prefix="ptth-bench-") as tmp:
                published = trio.run(
                    publish_to_subscriber, Path(tmp), hops, args.publications, body, tasks
                )
            with tempfile.TemporaryDirectory(dir=where, prefix="ptth-bench-") as tmp:
                sent = trio.run(send_to_receiver, Path(tmp), hops, args.publications, body, tasks)
            plural = "s" if hops > 1 else " "
            print(
                f"  {tasks:>3} at once, {hops} hop{plural}: publish -> subscriber "
                f"{published:7.0f} /s ({published / verify:.3f} x verify); send -> receiver "
                f"{sent:7.0f} /s; publish/send {published / sent:.2f}"
            )


SECTIONS_BY_NAME: dict[str, Callable[[argparse.Namespace], None]] = {
    "throughput": throughput,
    "matcher": matcher,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=sorted(SECTIONS_BY_NAME), action="append", help="run these sections"
    )
    parser.add_argument("--patterns", type=int, default=10_000, help="subscription patterns")
    parser.add_argument("--topics", type=int, default=20_000, help="topics for the trie")
    parser.add_argument(
        "--linear", type=int, default=100, help="topics for the linear scans (the first ones)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the pattern/topic maker")
    parser.add_argument(
        "--publications", type=int, default=2000, help="publications for the throughput"
    )
    parser.add_argument(
        "--publishers", type=int, default=100, help="tasks publishing (and sending) at once"
    )
    parser.add_argument("--body", type=int, default=200, help="bytes per publication")
    args = parser.parse_args()
    if args.patterns < 1 or args.topics < 1 or not 1 <= args.linear <= args.topics:
        parser.error("--patterns and --topics must be >= 1, --linear 1..topics")
    for name in args.only or list(SECTIONS_BY_NAME):
        SECTIONS_BY_NAME[name](args)


if __name__ == "__main__":
    main()
