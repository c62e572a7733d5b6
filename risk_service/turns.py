"""One commit for the requests of one turn of the event loop (`risk serve` with one thread).

With one thread the worker answers every request in its event loop (`worker.serve_inline`),
so each decision paid a commit of its own: on SQLite ~85 µs of CPU, a tenth of a /score; on
PostgreSQL a round trip and an fsync, during which the worker sat idle. Now each request runs
in a greenlet (`RequestGreenlet`). When its rows reach a log (`GroupCommit.submit`) it parks:
its rows wait in the log's queue and the loop goes on with the other requests that were ready
in the same turn. At the end of the turn (`Turn.flush`) each log commits everything queued
in one transaction, and the parked requests resume, in the order they parked, and answer. An
answer still leaves only once its rows have committed; under load a turn holds every
connection that was ready (up to 8 with wrk's 8), at low load one request, which parks and
resumes at once.

The park point is `GroupCommit.submit`, entered with no lock held: a greenlet parked while
holding a lock would stop the next greenlet of the thread that wants it, and the thread with
it. Outside a request greenlet (a pool thread, a test, the backlog thread) `submit` commits
as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import greenlet

if TYPE_CHECKING:
    from risk_service.group_commit import GroupCommit

log = logging.getLogger("risk_service.turns")


class RequestGreenlet(greenlet.greenlet):
    """Answers requests in the event loop, one at a time; it may park once per commit it waits
    for. Kept for the next request once done (a new greenlet costs ~7 µs, a switch ~0.5)."""

    def __init__(self, turn: Turn) -> None:
        super().__init__(self._serve)
        self.turn = turn

    def _serve(self, request: Callable[[], Any]) -> None:
        while True:
            try:
                request()
            except Exception:  # the worker answers its own errors; this one is a bug there
                log.exception("a request failed in the event loop")
            self.turn.idle.append(self)
            request = self.parent.switch()

    def park(self, group: GroupCommit | None) -> None:
        """Wait for the end of the turn, when ``group`` commits what this request queued
        (None: wait for the turn's commits, of the others)."""
        self.turn.parked.append((self, group))
        self.parent.switch()


def wait_for_turn() -> bool:
    """For a request polling for a decision that another request may be about to log: in a
    request greenlet while others of the turn are parked, wait until the turn's commits are
    done (the awaited decision may be among them; a sleep would hold the whole loop, and them
    with it) and return True; else False, and the caller sleeps as it would in a thread."""
    current = greenlet.getcurrent()
    if not isinstance(current, RequestGreenlet) or not current.turn.parked:
        return False
    current.park(None)
    return True


class Turn:
    """The requests a turn of the loop parked, and the logs they wait for."""

    def __init__(self) -> None:
        self.parked: list[tuple[RequestGreenlet, GroupCommit | None]] = []
        self.idle: list[RequestGreenlet] = []
        self.largest = 0  # the most requests one commit has served

    def run(self, request: Callable[[], Any]) -> None:
        """Run ``request`` in a greenlet of its own; returns when it is done or parked. Only
        from the loop's own greenlet."""
        worker = self.idle.pop() if self.idle else RequestGreenlet(self)
        worker.switch(request)

    def flush(self) -> None:
        """Commit what the parked requests queued, one transaction a log, then resume them
        (a resumed request may park again, for another log: then again)."""
        while self.parked:
            parked, self.parked = self.parked, []
            self.largest = max(self.largest, len(parked))
            groups: dict[int, GroupCommit] = {}
            for _, group in parked:
                if group is not None:
                    groups.setdefault(id(group), group)
            for group in groups.values():
                try:
                    group.commit_queued()
                except Exception:  # then each parked request commits, or fails, on its own
                    log.exception("the commit of a turn of the event loop failed")
            for request, _ in parked:
                request.switch()
