"""Group commit: concurrent writers share one transaction (and one fsync) per batch.

The first submitter to find no commit in progress becomes the leader: it takes
what is queued (oldest first, up to ``max_batch`` rows), runs ``commit`` on it and
wakes the others; rows that arrived during that commit wait and form the next
batch. There is no background thread, so a lone writer pays no hand-off, and each
submitter returns only once its own rows have committed (or failed: ``error``).
Both decision logs (SQLite and PostgreSQL) write this way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import greenlet

from risk_service import metrics
from risk_service.decision_records import DECISION
from risk_service.turns import RequestGreenlet


class Pending:
    """One row (a decision or a label) waiting for its batch to commit."""

    __slots__ = ("done", "error", "existed", "kind", "row")

    def __init__(self, row: tuple[Any, ...], kind: str = DECISION) -> None:
        self.row = row
        self.kind = kind
        self.done = False
        self.existed = False  # the event_id was logged already (same body: a no-op)
        self.error: Exception | None = None


class GroupCommit:
    """The queue and the leader hand-off; ``commit(batch)`` must mark every row ``done``.

    ``cond`` may be shared with the owner (the PostgreSQL log guards its breaker
    state with the same condition).
    """

    def __init__(
        self,
        commit: Callable[[list[Pending]], None],
        *,
        max_batch: int,
        closed_error: Callable[[], Exception],
        cond: threading.Condition | None = None,
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._closed_error = closed_error
        self.cond = cond or threading.Condition()
        self._queue: list[Pending] = []
        self._writing = False
        self.closed = False

    def submit(self, pendings: list[Pending]) -> None:
        """Queue rows and return once their batches have committed (errors stay on the rows)."""
        if not pendings:
            return
        last = pendings[-1]  # batches are taken oldest first: the last done means all done
        with self.cond:
            if self.closed:
                raise self._closed_error()
            self._queue.extend(pendings)
        current = greenlet.getcurrent()
        if isinstance(current, RequestGreenlet):  # in the event loop: commit with its turn
            current.park(self)
        self._wait_for(last)

    def commit_queued(self) -> None:
        """Commit every row queued so far (the end of a turn of the event loop, `turns.py`)."""
        with self.cond:
            if not self._queue:
                return
            last = self._queue[-1]
        self._wait_for(last)

    def _wait_for(self, last: Pending) -> None:
        """Return once ``last`` has committed: as the leader, or after the leader's batch."""
        while True:
            with self.cond:
                while not last.done and self._writing:
                    self.cond.wait()
                if last.done:
                    return
                self._writing = True  # the leader: commit what is queued, oldest first
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                metrics.log_commit(len(batch))
                self._commit(batch)
            except Exception as exc:  # a commit must mark its rows; if it broke off, they fail
                for p in batch:
                    if not p.done:
                        p.error, p.done = exc, True
                raise
            finally:
                with self.cond:
                    self._writing = False
                    self.cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the writer between batches (e.g. to delete flushed rows)."""
        with self.cond:
            while self._writing:
                self.cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self.cond:
                self._writing = False
                self.cond.notify_all()

    def close(self) -> bool:
        """Refuse new rows and wait for queued ones; False if it was closed already."""
        with self.cond:
            if self.closed:
                return False
            self.closed = True
            while self._writing or self._queue:
                self.cond.wait()
        return True
