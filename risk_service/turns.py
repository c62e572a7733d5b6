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

**Work beside the loop** (`beside`, ``RISK_REASONS_BESIDE``). TreeSHAP reasons cost a
non-approve decision 1-2 ms in a kernel that lets go of the GIL: a fifth of the loop's time
under wrk, while the second core sat idle. A request greenlet hands such a call to a helper
thread and parks; the loop goes on serving the other requests, and their turns commit and
answer without it. When the call is done, the helper asks the loop (through the worker's
thread-safe method queue) to resume the greenlet, which logs its decision with the turn it
resumes in. A request waiting for one parked beside (a retry of the same event) parks for the
next turn instead of blocking the loop (`wait_ready`, `wait_for_turn`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import greenlet

if TYPE_CHECKING:
    from risk_service.group_commit import GroupCommit

log = logging.getLogger("risk_service.turns")

# Requests parked beside at once, at most; past it the loop computes the call itself (the
# helper is one thread: a longer queue would only add to these requests' latency).
BESIDE_LIMIT = 4
T = TypeVar("T")


class Waitable(Protocol):
    """`idempotency.Ready`'s contract: set once, waited on with a timeout."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


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
    if not isinstance(current, RequestGreenlet):
        return False
    if not current.turn.parked and not current.turn.beside:
        return False
    current.park(None)
    return True


def wait_ready(ready: Waitable, timeout: float) -> bool:
    """``ready.wait(timeout)``, but in a request greenlet the request parks turn after turn
    until it is set: the request that sets it may be parked beside in this same loop, which a
    blocking wait would hold."""
    current = greenlet.getcurrent()
    if ready.is_set() or not isinstance(current, RequestGreenlet):
        return ready.wait(timeout)
    deadline = time.monotonic() + timeout
    while not ready.is_set():
        if time.monotonic() >= deadline:
            return False
        current.park(None)
    return True


def beside(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``; in a request greenlet of a loop that allows it, on the loop's helper
    thread while the loop serves other requests (for calls that let go of the GIL and take
    long enough to repay two hand-offs, ~1 ms). Returns its result or raises its error."""
    current = greenlet.getcurrent()
    if isinstance(current, RequestGreenlet):
        turn = current.turn
        if turn.defer is not None and turn.beside < BESIDE_LIMIT:
            return turn.run_beside(current, call, args)
    return call(*args)


class Turn:
    """The requests a turn of the loop parked, and the logs they wait for."""

    def __init__(self, defer: Callable[..., None] | None = None) -> None:
        """``defer``: runs a callable in the loop's thread on its next turn, from any thread
        (gunicorn's method queue); None: `beside` calls run in the request itself."""
        self.parked: list[tuple[RequestGreenlet, GroupCommit | None]] = []
        self.idle: list[RequestGreenlet] = []
        self.largest = 0  # the most requests one commit has served
        self.defer = defer
        self.beside = 0  # requests parked on a call of the helper thread
        self._helper: ThreadPoolExecutor | None = None

    def run_beside(self, request: RequestGreenlet, call: Callable[..., T], args: Any) -> T:
        """Run ``call`` on the helper thread; ``request`` parks until the loop resumes it."""
        assert self.defer is not None
        defer = self.defer
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="risk-beside")
        try:
            future = self._helper.submit(call, *args)
        except RuntimeError:  # shut down: the worker is stopping
            return call(*args)
        self.beside += 1
        try:
            future.add_done_callback(lambda _: defer(request.switch))
            request.parent.switch()
        finally:
            self.beside -= 1
        return future.result(timeout=0)

    def close(self) -> None:
        """Stop the helper thread (after the calls it was given)."""
        if self._helper is not None:
            self._helper.shutdown(wait=True)

    def run(self, request: Callable[[], Any]) -> None:
        """Run ``request`` in a greenlet of its own; returns when it is done or parked. Only
        from the loop's own greenlet."""
        worker = self.idle.pop() if self.idle else RequestGreenlet(self)
        worker.switch(request)

    def flush(self) -> None:
        """Commit what the parked requests queued, one transaction a log, then resume them
        (a resumed request may park again, for another log: then again). Requests waiting
        for others' commits resume after them; one that parks again only to wait (none of the
        parked has anything to commit) waits for the next turn: the request it waits for is
        beside, and its end comes through the loop."""
        first = True
        while self.parked:
            parked, self.parked = self.parked, []
            if not first and all(group is None for _, group in parked):
                self.parked = parked
                return
            first = False
            parked.sort(key=lambda item: item[1] is None)  # stable: else in order of parking
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
