"""The ``revocation`` scenario: a capability delegated to a third node works until the
owner revokes its parent, then fails everywhere once the revocation has spread; every
node learns it (one that was down, when it comes back), and the report's figures hold
together and repeat for a seed.

The scenario runs call :func:`simulations.run_scenario` (their own ``trio.run``), so
they are plain tests; one run serves several tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import trio
import trio.testing

import crypto
from simulations import Report, RevocationReport, Simulation, chain, run_scenario
from simulations._revocation import RevocationWatch

#: The small run: hops, NATed nodes, a node down while the revocation spreads.
NODES, DURATION, SEED = 20, 180.0, 1


@functools.cache
def small_run() -> Report:
    return run_scenario("revocation", nodes=NODES, seed=SEED, duration=DURATION)


def revocation_of(report: Report) -> RevocationReport:
    assert report.revocation is not None, report.to_text()
    return report.revocation


def test_every_node_learns_the_revocation() -> None:
    report = small_run()
    rev = revocation_of(report)
    assert (rev.nodes, rev.reached) == (NODES, NODES), report.to_text()
    assert rev.absent >= 1
    assert rev.absent_reached == rev.absent
    assert rev.measured == NODES - 1 - rev.absent  # neither the owner nor the absent
    assert rev.revoked_at == pytest.approx(0.4 * DURATION)
    assert rev.copies >= NODES - 1  # each node took in at least the copy that was news
    assert 0 < rev.duplicate_copies < rev.copies
    assert rev.most_sent >= 1
    assert not report.failed, report.to_text()


def test_the_percentiles_hold_together() -> None:
    rev = revocation_of(small_run())
    assert rev.propagation_p50 is not None
    assert rev.propagation_p90 is not None
    assert rev.propagation_p99 is not None
    assert rev.propagation_max is not None
    assert 0 < rev.propagation_p50 <= rev.propagation_p90 <= rev.propagation_p99
    assert rev.propagation_p99 <= rev.propagation_max
    assert rev.holder_learned is not None
    assert 0 < rev.holder_learned <= rev.propagation_max
    # The absent node learned it only after it was back: the last of all.
    assert rev.everywhere is not None
    assert rev.everywhere > rev.propagation_max
    assert rev.absent_after_restart_max is not None
    assert rev.absent_after_restart_max > 0


def test_the_delegated_capability_works_until_revoked_then_fails_everywhere() -> None:
    report = small_run()
    rev = revocation_of(report)
    # Before: every post reached every subscriber.
    assert rev.subscribers >= 2
    assert rev.posts_before >= 3
    assert rev.delivered_before == rev.expected_before == rev.posts_before * rev.subscribers
    # Once the holder's node knows, it refuses to publish; handed straight to a
    # neighbour that knows, a post is refused there and a drop receipt comes back.
    assert rev.refused_during >= 1
    assert rev.posts_after >= 1
    assert rev.forced >= rev.posts_after
    assert rev.forced_refused >= rev.posts_after
    assert rev.drop_receipts >= 1
    # Nothing posted once every node knew reached anyone, nor reached a subscriber
    # whose node knew.
    assert rev.delivered_after == 0, report.to_text()
    assert rev.delivered_knowing == 0, report.to_text()


def test_the_report_shows_it() -> None:
    report = small_run()
    text = report.to_text()
    assert f"known to {NODES}/{NODES} nodes" in text
    assert "propagation " in text
    assert "rev copies  " in text
    data = json.loads(report.to_json())
    assert data["revocation"] == dataclasses.asdict(revocation_of(report))
    assert "revocation" not in run_scenario("chain", nodes=3, seed=1, duration=60.0).to_dict()


def test_a_revocation_that_failed_fails_the_run() -> None:
    report = small_run()
    rev = revocation_of(report)
    for change in ({"reached": NODES - 1}, {"delivered_after": 1}, {"delivered_knowing": 1}):
        broken = dataclasses.replace(report, revocation=dataclasses.replace(rev, **change))
        assert broken.failed
        assert "FAIL" in broken.to_text()


def test_the_same_seed_gives_the_same_report() -> None:
    first = run_scenario("revocation", nodes=8, seed=3, duration=150.0)
    again = run_scenario("revocation", nodes=8, seed=3, duration=150.0)
    assert first.revocation is not None
    assert again.deterministic() == first.deterministic()


async def test_a_node_down_while_it_spreads_learns_it_when_back(
    autojump_clock: trio.testing.MockClock, sim: Simulation
) -> None:
    owner, issuer, holder = await sim.add_nodes(3)
    await sim.peer_all(chain([owner, issuer, holder]))
    watch = RevocationWatch(
        sim,
        owner=owner,
        issuer=issuer,
        holder=holder,
        subscribers=[],
        absent=[holder],
        revoke_at=sim.now,
    )
    for node in (owner, issuer, holder):
        watch.attach(node)
    await holder.crash()
    await watch.revoke()
    with trio.fail_after(30):
        await watch.wait_learned(issuer)
    # The issuer restarts too: the copy it still meant to send the holder is gone
    # with it, so what it knows of the revocation is what it kept in its store.
    await issuer.restart()
    watch.attach(issuer)
    assert holder.name not in watch.learned
    await holder.start()
    assert holder.node.revoked(watch.delegated) is None
    watch.attach(holder)
    with trio.fail_after(30):
        await watch.wait_learned(holder)  # from the issuer's greeting
    revocation = holder.node.revoked(watch.delegated)
    assert revocation is not None
    assert revocation.cap_id == watch.granted.id  # the parent's, not its own
    assert revocation.signer == owner.node_id
    with pytest.raises(crypto.Revoked):
        crypto.verify(
            watch.delegated,
            now=holder.node.clock(),
            owner=owner.node_id,
            operation=crypto.Operation.PUBLISH,
            target=crypto.Target.topic(owner.node_id, watch.topic),
            presenter=holder.node_id,
            revoked=holder.node.mesh.router.authority.revoked,
        )
