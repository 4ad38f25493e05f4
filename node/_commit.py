"""Group commit: many tasks' store writes in one transaction, one fsync for them all.

Each ``node.send`` (or publish) is durable when it returns, so each costs a commit; a
commit waits for the disk (``synchronous=FULL``), and SQLite makes one at a time. Run
one by one, 3,000 concurrent sends are 3,000 commits in a row. :class:`GroupCommit`
runs the writes submitted while a commit is under way together in the next one
(:meth:`mesh.Store.write_group`): under load a commit carries hundreds of writes, and a
lone write still goes at once (nothing waits for company).

No task of its own: the first task to find nobody committing leads, committing batch
after batch until its own write is done, then hands the lead to the oldest write still
waiting. A cancelled task's write is withdrawn if it was not taken yet (nothing of it is
committed); once taken it is committed or not as the batch goes, as a cancelled
``trio.to_thread.run_sync`` would.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

import trio

import mesh

__all__ = ["MAX_GROUP", "GroupCommit", "RunBlocking"]

_T = TypeVar("_T")

#: Runs a blocking call of the store's: ``trio.to_thread.run_sync``, or inline.
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]

#: Writes in one transaction at most: bounds how long one commit holds the store's lock.
MAX_GROUP: Final = 500


class _Ticket(Generic[_T]):
    __slots__ = ("finished", "lead", "outcome", "taken", "wake", "write")

    def __init__(self, write: mesh.Write[_T]) -> None:
        self.write = write
        self.wake = trio.Event()  # set when finished, or to lead
        self.taken = False  # in a batch being committed
        self.finished = False  # outcome is its result or exception
        self.lead = False  # woken to lead
        self.outcome: Any = None


class GroupCommit:
    """Runs :class:`mesh.Write` s of a store in groups (see the module docstring).

    ``run_blocking`` runs the transaction (a worker thread; inline in a simulation).
    """

    def __init__(self, store: mesh.Store, run_blocking: RunBlocking) -> None:
        self.store = store
        self.run_blocking = run_blocking
        self._waiting: collections.deque[_Ticket[Any]] = collections.deque()
        self._leading = False
        #: Transactions committed, and the writes in them.
        self.commits = 0
        self.writes = 0

    async def run(self, write: mesh.Write[_T]) -> _T:
        """Run ``write`` (with whatever else is waiting); return its result or raise
        what it raised (:class:`mesh.StoreFull`, :class:`mesh.MeshError`).

        A task already cancelled is refused at once (:class:`trio.Cancelled`), nothing
        of its write committed. Without that check, a cancelled task that found nobody
        committing led a shielded commit and returned without a checkpoint: a loop of
        ``node.send`` calls never saw its cancellation (Ctrl-C went unheard while it
        sent on)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        ticket: _Ticket[_T] = _Ticket(write)
        self._waiting.append(ticket)
        if self._leading:
            try:
                await ticket.wake.wait()
            except trio.Cancelled:
                if not ticket.finished and not ticket.taken:
                    self._waiting.remove(ticket)  # withdrawn: nothing of it committed
                    if ticket.lead:
                        self._hand_over()
                raise
            if ticket.finished:
                return self._result(ticket)
        self._leading = True
        try:
            while not ticket.finished:
                await self._commit_some()
        finally:
            self._hand_over()
        return self._result(ticket)

    async def _commit_some(self) -> None:
        batch: list[_Ticket[Any]] = []
        while self._waiting and len(batch) < MAX_GROUP:
            ticket = self._waiting.popleft()
            ticket.taken = True
            batch.append(ticket)
        writes = [ticket.write for ticket in batch]
        outcomes: list[Any]
        try:
            # Shielded: the batch holds other tasks' writes too, and one commit is short.
            with trio.CancelScope(shield=True):
                outcomes = await self.run_blocking(lambda: self.store.write_group(writes))
        except Exception as exc:  # the transaction failed: none of them stands
            outcomes = [_own_copy(exc) for _ in batch]
        except BaseException:
            for ticket in batch:
                self._finish(ticket, mesh.MeshError("the store write was interrupted"))
            raise
        self.commits += 1
        self.writes += len(batch)
        for ticket, outcome in zip(batch, outcomes, strict=True):
            self._finish(ticket, outcome)

    @staticmethod
    def _finish(ticket: _Ticket[Any], outcome: Any) -> None:
        ticket.outcome = outcome
        ticket.finished = True
        ticket.wake.set()

    def _hand_over(self) -> None:
        """Stop leading; wake the oldest waiting write's task to lead, if any."""
        self._leading = False
        if self._waiting:
            first = self._waiting[0]
            first.lead = True
            self._leading = True
            first.wake.set()

    @staticmethod
    def _result(ticket: _Ticket[_T]) -> _T:
        outcome = ticket.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        result: _T = outcome
        return result


def _own_copy(exc: Exception) -> Exception:
    """A copy of ``exc`` for one task to raise (each gets its own traceback)."""
    clone = copy.copy(exc)
    clone.__traceback__ = None
    clone.__cause__ = exc
    return clone
