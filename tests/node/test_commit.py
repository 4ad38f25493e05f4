"""Group commit (node._commit.GroupCommit): writes submitted while a commit is under way
go together in the next one; each caller gets its own write's outcome; cancellation
withdraws a write not yet taken and never strands the others.

The transaction runs through a ``run_blocking`` the tests hold at a gate, so what is
under way and what waits is decided by the test, not by thread timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import crypto
from mesh import MeshError, Outgoing, Quotas, Store, StoreFull, stored_charge
from node._commit import MAX_GROUP, GroupCommit

BOB = crypto.Identity(bytes(range(1, 33)))
ALICE = crypto.Identity(bytes(range(32)))
CAROL = crypto.Identity(bytes(range(2, 34)))
TS = 1_700_000_000_000
NOW = TS + 5


def own(n: int) -> Outgoing:
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=BOB.node_id, id=n.to_bytes(16, "big"), ts=TS,
        exp=TS + 60_000, hops=8, dst=ALICE.node_id, body=b"body",
    )  # fmt: skip
    return Outgoing.of(frame, frame.seal(BOB), hops=0, next_hop=CAROL.node_id)


class Gate:
    """A ``run_blocking`` that runs each transaction inline once the test lets it."""

    def __init__(self) -> None:
        self.arrived = 0  # transactions that reached the gate
        self.passes = 0  # transactions let through
        self._changed = trio.Event()

    async def __call__(self, work: Callable[[], Any]) -> Any:
        self.arrived += 1
        self._bump()
        while self.passes < self.arrived:
            await self._changed.wait()
        return work()

    def open(self, count: int = 1) -> None:
        self.passes += count
        self._bump()

    async def wait_arrived(self, count: int) -> None:
        while self.arrived < count:
            await self._changed.wait()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s.sqlite3", quotas=Quotas(total=100 * stored_charge(300))) as store:
        yield store


def queued(store: Store) -> list[int]:
    rows = store._db.execute("SELECT id FROM queue ORDER BY seq").fetchall()
    return [int.from_bytes(row[0], "big") for row in rows]


async def test_writes_made_during_a_commit_go_together_in_the_next(store: Store) -> None:
    gate = Gate()
    commits = GroupCommit(store, gate)
    results: dict[int, Any] = {}

    async def send(n: int) -> None:
        results[n] = await commits.run(store.enqueue_write([own(n)], now=NOW))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, 0)
        await gate.wait_arrived(1)  # the first leads, alone
        for n in range(1, 50):
            nursery.start_soon(send, n)
        await trio.testing.wait_all_tasks_blocked()
        gate.open()  # the first commits; the 49 others were waiting: one commit
        await gate.wait_arrived(2)
        gate.open()
    assert results == dict.fromkeys(range(50))
    assert (commits.commits, commits.writes) == (2, 50)
    assert sorted(queued(store)) == list(range(50))  # in the order they came


async def test_each_caller_gets_its_own_writes_outcome(store: Store) -> None:
    gate = Gate()
    commits = GroupCommit(store, gate)
    outcomes: dict[str, Any] = {}

    async def send(name: str, items: list[Outgoing]) -> None:
        try:
            outcomes[name] = await commits.run(store.enqueue_write(items, now=NOW))
        except MeshError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "lead", [own(0)])
        await gate.wait_arrived(1)
        nursery.start_soon(send, "fits", [own(n) for n in range(1, 60)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "too much", [own(n) for n in range(60, 120)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "again", [own(1)])
        await trio.testing.wait_all_tasks_blocked()
        gate.open(2)
    assert outcomes["lead"] is None
    assert outcomes["fits"] is None
    assert isinstance(outcomes["too much"], StoreFull)
    assert isinstance(outcomes["again"], MeshError)
    assert "queued already" in str(outcomes["again"])
    assert queued(store) == list(range(60))


async def test_a_cancelled_waiting_write_is_withdrawn(store: Store) -> None:
    gate = Gate()
    commits = GroupCommit(store, gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run, store.enqueue_write([own(0)], now=NOW))
        await gate.wait_arrived(1)
        scope = trio.CancelScope()

        async def cancelled() -> None:
            with scope:
                await commits.run(store.enqueue_write([own(1)], now=NOW))

        nursery.start_soon(cancelled)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(commits.run, store.enqueue_write([own(2)], now=NOW))
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.open(2)
    assert queued(store) == [0, 2]
    assert commits.writes == 2


async def test_a_cancelled_leader_finishes_its_commit_and_hands_on_the_lead(
    store: Store,
) -> None:
    gate = Gate()
    commits = GroupCommit(store, gate)
    done: list[int] = []

    async def send(n: int) -> None:
        await commits.run(store.enqueue_write([own(n)], now=NOW))
        done.append(n)

    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def lead() -> None:
            with leader:
                await send(0)

        nursery.start_soon(lead)
        await gate.wait_arrived(1)
        for n in (1, 2):
            nursery.start_soon(send, n)
        await trio.testing.wait_all_tasks_blocked()
        leader.cancel()  # mid-commit: the commit is shielded
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
        await gate.wait_arrived(2)  # the next in line leads and commits the others
        gate.open()
    assert sorted(queued(store)) == [0, 1, 2]
    # The leader's write was committed, so its call said so (the cancellation comes at
    # its next checkpoint); the others were committed by the next in line.
    assert sorted(done) == [0, 1, 2]
    assert commits.commits == 2


async def test_a_failed_transaction_fails_every_write_in_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    gate = Gate()
    commits = GroupCommit(store, gate)
    errors: list[BaseException] = []

    async def send(n: int) -> None:
        try:
            await commits.run(store.enqueue_write([own(n)], now=NOW))
        except MeshError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, 0)
        await gate.wait_arrived(1)
        for n in (1, 2, 3):
            nursery.start_soon(send, n)
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
        await gate.wait_arrived(2)
        store.close()  # the second transaction cannot commit
        gate.open()
    assert len(errors) == 3
    assert len({id(exc) for exc in errors}) == 3  # each raised its own copy
    assert all("failed" in str(exc) for exc in errors)


async def test_a_group_is_bounded(store: Store) -> None:
    store.quotas = Quotas()
    gate = Gate()
    commits = GroupCommit(store, gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.run, store.enqueue_write([own(0)], now=NOW))
        await gate.wait_arrived(1)
        for n in range(1, MAX_GROUP + 2):
            nursery.start_soon(commits.run, store.enqueue_write([own(n)], now=NOW))
        await trio.testing.wait_all_tasks_blocked()
        gate.open(3)
    assert commits.commits == 3  # 1, then MAX_GROUP, then the last one
    assert len(queued(store)) == MAX_GROUP + 2


async def test_a_lone_write_in_a_worker_thread(store: Store) -> None:
    commits = GroupCommit(store, trio.to_thread.run_sync)
    assert await commits.run(store.enqueue_write([own(7)], now=NOW)) is None
    assert queued(store) == [7]


async def test_a_cancelled_task_commits_nothing_more(store: Store) -> None:
    """A loop of writes in a cancelled scope ends at its next write, even when nobody
    else is committing (it would lead, and a shielded commit has no checkpoint)."""
    gate = Gate()
    gate.open(100)
    commits = GroupCommit(store, gate)
    written = []
    with trio.CancelScope() as scope:
        for n in range(3):
            if n == 1:
                scope.cancel()
            await commits.run(store.enqueue_write([own(n)], now=NOW))
            written.append(n)
    assert scope.cancelled_caught
    assert written == [0]
    assert queued(store) == [0]
