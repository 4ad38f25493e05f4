"""The ``chirp`` scenario (toy Twitter over publish/subscribe) meets its bar: every post
reaches every follower's application exactly once, churn notwithstanding; the same seed
gives the same report; and a follower that was down while posts were made gets them
once it is back (its relay kept them).

The scenario runs call :func:`simulations.run_scenario` (their own ``trio.run``), so
they are plain tests; one run serves several tests.
"""

from __future__ import annotations

import functools

import trio
import trio.testing

from simulations import ChirpReport, Link, Report, SimNode, Simulation, chain, run_scenario

#: The small run: big enough for hops, NATed nodes and a crash or two.
NODES, DURATION, SEED = 14, 420.0, 1


@functools.cache
def small_run() -> Report:
    return run_scenario("chirp", nodes=NODES, seed=SEED, duration=DURATION)


def chirp_of(report: Report) -> ChirpReport:
    assert report.chirp is not None, report.to_text()
    return report.chirp


def test_every_post_reaches_every_follower_once() -> None:
    report = small_run()
    chirp = chirp_of(report)
    assert chirp.posts >= 10, report.to_text()
    assert chirp.expected >= 2 * chirp.posts  # each user follows 3 to 8 others
    assert chirp.duplicates == 0, report.to_text()
    assert chirp.delivery_ratio == 1.0, report.to_text()
    assert chirp.delivered == chirp.expected
    assert chirp.latency_p50 is not None
    assert chirp.latency_p50 <= (chirp.latency_p95 or 0) <= (chirp.latency_p99 or 0)
    assert chirp.interests_received > 0
    # The direct messages beside the posts are delivered too, and churn happened.
    assert report.duplicates == 0
    assert report.delivery_ratio == 1.0, report.to_text()
    assert any(event.endswith(" crashed") for event in report.events)
    assert not report.failed
    text = report.to_text()
    assert "posts       " in text
    assert "copies handed on" in text


def test_posts_cost_less_than_a_naive_flood() -> None:
    chirp = chirp_of(small_run())
    assert chirp.flood_minimum == chirp.posts * (NODES - 1)
    assert chirp.flood_naive > chirp.flood_minimum
    assert chirp.copies >= chirp.delivered  # each delivery took a copy at least
    assert chirp.copies < 0.5 * chirp.flood_naive


def test_posts_cost_less_than_the_least_flood() -> None:
    # Each copy names the followers it is for, so a post reaches each follower by one
    # path: fewer copies than even the least flood (a copy to every other node), and
    # under two per delivery (14 nodes, seed 1: 146 copies for 88 deliveries, against
    # 221 for the least flood).
    chirp = chirp_of(small_run())
    assert chirp.copies < chirp.flood_minimum
    assert chirp.copies < 2 * chirp.delivered


@functools.cache
def small_run_with_the_tree() -> Report:
    return run_scenario(
        "chirp", nodes=NODES, seed=SEED, duration=DURATION, tree=True, announce_radius=1
    )


def test_with_the_tree_interests_go_to_their_owners_only() -> None:
    # Each follow is a sub frame for ~<author>.chirp: with the tree it goes to the
    # author alone, as a message, where flooded it reaches every node, again from each
    # neighbour (14 nodes, seed 1: 4,412 received flooded, 195 addressed).
    report, flooded = small_run_with_the_tree(), chirp_of(small_run())
    chirp = chirp_of(report)
    assert chirp.posts >= 10, report.to_text()
    assert chirp.duplicates == 0, report.to_text()
    assert chirp.delivery_ratio == 1.0, report.to_text()
    assert report.delivery_ratio == 1.0, report.to_text()
    assert not report.failed
    assert 0 < chirp.interests_received < flooded.interests_received / 5


def test_the_same_seed_gives_the_same_report() -> None:
    first = run_scenario("chirp", nodes=8, seed=3, duration=180.0)
    again = run_scenario("chirp", nodes=8, seed=3, duration=180.0)
    assert first.chirp is not None
    assert again.deterministic() == first.deterministic()


def test_reports_of_other_scenarios_say_nothing_of_posts() -> None:
    report = run_scenario("chain", nodes=2, seed=1, duration=30.0)
    assert report.chirp is None
    assert "chirp" not in report.to_dict()
    assert "posts" not in report.to_text()


async def knows_follower(author: SimNode, follower: SimNode) -> None:
    """Wait until ``author``'s node knows ``follower`` follows it (posts made before
    would not go to it)."""
    while follower.node_id not in author.followers_known():
        await author.node.mesh.interests_changed.wait()


async def test_a_follower_down_while_posts_are_made_gets_them_after_restart(
    sim: Simulation, autojump_clock: trio.testing.MockClock
) -> None:
    sim.network.default_link = Link(latency=0.02)
    author, relay, follower = await sim.add_nodes(3)
    await sim.peer_all(chain([author, relay, follower]))
    await follower.follow(author)
    with trio.fail_after(60):
        await knows_follower(author, follower)
        await author.chirp("before")
        await follower.wait_posts(1)
    await follower.crash()
    for number in range(3):
        await author.chirp(f"while down #{number}")
        await sim.advance(10)
    assert [post.missing for post in sim.ledger.posts.values()] == [(), *[("n2",)] * 3]
    await sim.advance(60)  # long enough for anything in flight to land: nothing does
    assert len(follower.posts_received) == 1
    await follower.start()
    with trio.fail_after(120):
        await sim.wait_posts_delivered()
    received = follower.posts_received
    assert [post.body for post in received] == [
        b"before",
        *[f"while down #{number}".encode() for number in range(3)],
    ]
    assert [post.src for post in received] == ["n0"] * 4
    assert all(post.hops == 2 and not post.duplicate for post in received)
    assert sim.ledger.post_duplicates == 0
    chirp = sim.report().chirp
    assert chirp is not None
    assert (chirp.posts, chirp.expected, chirp.delivered, chirp.duplicates) == (4, 4, 4, 0)
    assert chirp.latency_max is not None
    assert chirp.latency_max > 60  # the posts made while it was down waited for it


async def followed_through_a_relay(sim: Simulation) -> tuple[SimNode, SimNode, SimNode]:
    """An author, a relay and a follower in a line; the follow made (not yet known)."""
    author, relay, follower = await sim.add_nodes(3)
    await sim.peer_all(chain([author, relay, follower]))
    await follower.follow(author)
    return author, relay, follower


async def test_the_report_tells_a_post_in_flight_from_a_lost_one(
    sim: Simulation, autojump_clock: trio.testing.MockClock
) -> None:
    author, relay, follower = await followed_through_a_relay(sim)
    with trio.fail_after(60):
        await knows_follower(author, follower)
    sim.partition([[author, relay], [follower]])
    await author.chirp("stuck at the relay")
    await sim.advance(30)
    report = sim.report()
    chirp = chirp_of(report)
    assert (chirp.expected, chirp.delivered, chirp.in_flight, chirp.lost) == (1, 0, 1, 0)
    assert not report.failed
    assert report.events[-1].endswith("by n0 not at n2 at the end; held at n1->n2")
    # The relay held the only copy (the author handed it over): without its store, the
    # post is gone, and the report says so.
    await relay.crash()
    await relay.start(keep_store=False)
    report = sim.report()
    chirp = chirp_of(report)
    assert (chirp.in_flight, chirp.lost) == (0, 1)
    assert report.failed
    assert report.events[-1].endswith("not at n2 at the end; held nowhere: lost")


async def test_the_report_tells_a_post_made_before_its_author_knew_a_follower(
    sim: Simulation, autojump_clock: trio.testing.MockClock
) -> None:
    author, _, follower = await followed_through_a_relay(sim)
    assert not author.followers_known()
    await author.chirp("before the follow arrived")
    with trio.fail_after(60):
        await knows_follower(author, follower)
        await author.chirp("after")
        (post,) = await follower.wait_posts(1)
    assert post.body == b"after"
    await sim.advance(30)
    report = sim.report()
    chirp = chirp_of(report)
    assert (chirp.expected, chirp.delivered, chirp.in_flight, chirp.lost, chirp.unsent) == (
        2,
        1,
        0,
        0,
        1,
    )
    assert not report.failed
    assert report.events[-1].endswith(
        "by n0 not at n2 at the end; posted before its author knew this follower"
    )
    assert "lost 0, posted before the follow reached the author 1, " in report.to_text()
