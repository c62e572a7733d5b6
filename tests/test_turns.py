"""Requests of one turn of the event loop share a commit (risk_service/turns.py)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import greenlet

from risk_service.group_commit import GroupCommit, Pending
from risk_service.idempotency import Ready
from risk_service.turns import BESIDE_LIMIT, Turn, beside, wait_for_turn, wait_ready


class Log:
    """A GroupCommit whose commits are recorded (the rows of each)."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.batches: list[list[str]] = []
        self.events = events
        self.name = name
        self.group = GroupCommit(self._commit, max_batch=512, closed_error=RuntimeError)

    def _commit(self, batch: list[Pending]) -> None:
        self.batches.append([p.row[0] for p in batch])
        self.events.append(f"commit {self.name} {len(batch)}")
        for p in batch:
            p.done = True

    def append(self, row: str) -> None:
        self.group.submit([Pending((row,))])


def test_the_requests_of_a_turn_answer_after_one_commit_in_the_order_they_parked() -> None:
    events: list[str] = []
    log = Log("log", events)
    turn = Turn()

    def request(name: str) -> None:
        events.append(f"scored {name}")
        log.append(name)
        events.append(f"answered {name}")

    for name in ("a", "b", "c"):
        turn.run(lambda name=name: request(name))
    turn.run(lambda: events.append("empty route answered"))  # writes nothing: never parks
    assert log.batches == []  # nothing committed, so nothing answered yet
    assert [e for e in events if e.startswith("answered")] == []
    turn.flush()
    assert log.batches == [["a", "b", "c"]]
    assert events == [
        "scored a",
        "scored b",
        "scored c",
        "empty route answered",
        "commit log 3",
        "answered a",
        "answered b",
        "answered c",
    ]
    assert turn.largest == 3 and turn.parked == []
    turn.flush()  # an empty turn commits nothing
    assert log.batches == [["a", "b", "c"]]


def test_a_request_that_writes_to_two_logs_parks_twice_and_each_log_commits_once() -> None:
    events: list[str] = []
    decisions, labels = Log("decisions", events), Log("labels", events)
    turn = Turn()

    def request(name: str, label: bool) -> None:
        decisions.append(name)
        if label:
            labels.append(name)
        events.append(f"answered {name}")

    turn.run(lambda: request("x", True))
    turn.run(lambda: request("y", False))
    turn.flush()
    assert decisions.batches == [["x", "y"]] and labels.batches == [["x"]]
    assert events == [
        "commit decisions 2",
        "answered y",
        "commit labels 1",
        "answered x",
    ]


def test_outside_a_request_greenlet_a_write_commits_at_once() -> None:
    events: list[str] = []
    log = Log("log", events)
    log.append("thread")  # the test's own thread: no turn
    assert log.batches == [["thread"]]
    other = threading.Thread(target=lambda: log.append("pool"))
    other.start()
    other.join()
    plain = greenlet.greenlet(lambda: log.append("plain greenlet"))
    plain.switch()  # a greenlet that is no request of a turn does not park either
    assert log.batches == [["thread"], ["pool"], ["plain greenlet"]]


def two_requests_of_one_turn(commit: Callable[[list[Pending]], None]) -> list[str]:
    """Requests "a" and "b" submit a row each in one turn, which then flushes; what each saw
    (``name: error``)."""
    group = GroupCommit(commit, max_batch=512, closed_error=RuntimeError)
    seen: list[str] = []
    turn = Turn()

    def request(name: str) -> None:
        pending = Pending((name,))
        group.submit([pending])
        seen.append(f"{name}: {pending.error}")

    turn.run(lambda: request("a"))
    turn.run(lambda: request("b"))
    turn.flush()
    return seen


def test_a_failed_commit_reaches_every_request_of_the_turn() -> None:
    class Broken(Exception):
        pass

    def commit(batch: list[Pending]) -> None:
        for p in batch:
            p.error = Broken("disk full")
            p.done = True

    assert two_requests_of_one_turn(commit) == ["a: disk full", "b: disk full"]


def test_a_request_polling_for_a_twin_waits_for_the_turn_not_a_sleep() -> None:
    events: list[str] = []
    log = Log("log", events)
    turn = Turn()
    assert not wait_for_turn()  # outside a request greenlet: the caller sleeps

    def first() -> None:
        log.append("twin")
        events.append("first answered")

    def second() -> None:
        while "twin" not in [row for batch in log.batches for row in batch]:
            assert wait_for_turn()  # the first is parked: the turn's commit comes first
            events.append("second looked again")
        events.append("second answered")

    turn.run(first)
    turn.run(second)
    assert events == []
    turn.flush()
    assert events == [
        "commit log 1",
        "first answered",
        "second looked again",
        "second answered",
    ]

    def alone() -> None:
        events.append(f"alone waits: {wait_for_turn()}")

    turn.run(alone)  # nobody else parked: no turn to wait for, so it would sleep
    assert events[-1] == "alone waits: False"


def test_when_the_turns_commit_raises_its_requests_get_the_error_and_the_loop_goes_on() -> None:
    calls: list[int] = []

    def commit(batch: list[Pending]) -> None:
        calls.append(len(batch))
        raise RuntimeError("a bug in the commit")  # the rows are left unmarked

    answered = two_requests_of_one_turn(commit)  # the flush logs, not raises: the loop goes on
    assert answered == ["a: a bug in the commit", "b: a bug in the commit"]
    assert calls == [2]


class Loop:
    """The worker's method queue, as a turn sees it: callables deferred from any thread,
    run here by the test (the loop's thread) when it dispatches."""

    def __init__(self) -> None:
        self.deferred: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()

    def defer(self, callback: Callable[[], object]) -> None:
        self.deferred.put(callback)

    def dispatch(self, turn: Turn, timeout: float = 10.0) -> None:
        """Wait for one deferred callable, run it and every other one waiting, then end the
        turn, as `BufferingThreadWorker.wait_for_and_dispatch_events` does."""
        callbacks = [self.deferred.get(timeout=timeout)]
        while not self.deferred.empty():
            callbacks.append(self.deferred.get())
        for callback in callbacks:
            callback()
        turn.flush()


def test_a_call_beside_runs_on_the_helper_and_the_turn_answers_the_others_meanwhile() -> None:
    events: list[str] = []
    log = Log("log", events)
    loop = Loop()
    turn = Turn(loop.defer)
    release = threading.Event()
    threads: list[int] = []

    def slow_kernel(x: int) -> int:
        threads.append(threading.get_ident())
        assert release.wait(10)  # as a TreeSHAP kernel would, without the GIL
        return x * 2

    def flagged() -> None:
        events.append(f"reasons {beside(slow_kernel, 21)}")
        log.append("flagged")
        events.append("flagged answered")

    def approval(name: str) -> None:
        log.append(name)
        events.append(f"{name} answered")

    turn.run(flagged)
    turn.run(lambda: approval("a"))
    assert turn.beside == 1
    turn.flush()  # the turn does not wait for the call beside
    assert events == ["commit log 1", "a answered"]
    turn.run(lambda: approval("b"))  # a later turn goes on without it too
    turn.flush()
    assert events[-2:] == ["commit log 1", "b answered"]
    release.set()
    loop.dispatch(turn)  # the helper's end resumes the request, which commits with this turn
    assert events[-3:] == ["reasons 42", "commit log 1", "flagged answered"]
    assert log.batches == [["a"], ["b"], ["flagged"]]
    assert threads and threads[0] != threading.get_ident() and turn.beside == 0
    turn.close()


def test_a_call_beside_raises_its_error_in_the_request() -> None:
    loop, seen = Loop(), []
    turn = Turn(loop.defer)

    def broken() -> None:
        raise ValueError("a model error")

    def request() -> None:
        try:
            beside(broken)
        except ValueError as exc:
            seen.append(str(exc))

    turn.run(request)
    loop.dispatch(turn)
    assert seen == ["a model error"]
    turn.close()


def test_beside_runs_in_the_caller_outside_a_turn_without_a_loop_and_past_its_limit() -> None:
    here = threading.get_ident()
    assert beside(threading.get_ident) == here  # no request greenlet: a plain call
    seen: list[int] = []
    no_loop = Turn()  # RISK_REASONS_BESIDE=0: the turn has no way back into the loop
    no_loop.run(lambda: seen.append(beside(threading.get_ident)))
    assert seen == [here]
    loop, release = Loop(), threading.Event()
    turn = Turn(loop.defer)
    for _ in range(BESIDE_LIMIT):
        turn.run(lambda: seen.append(beside(lambda: release.wait(10) and threading.get_ident())))
    assert turn.beside == BESIDE_LIMIT and len(seen) == 1
    turn.run(lambda: seen.append(beside(threading.get_ident)))  # one too many: in the loop
    assert seen == [here, here]
    release.set()
    while turn.beside:
        loop.dispatch(turn)
    assert len(seen) == 2 + BESIDE_LIMIT and here not in seen[2:]
    turn.close()


def test_a_request_waiting_for_one_beside_parks_turn_after_turn_without_holding_the_loop() -> None:
    """A retry of an event whose first request is parked beside: the retry must not block
    the loop (the first could never resume), nor spin in the turn's end."""
    loop, events = Loop(), []
    turn = Turn(loop.defer)
    ready, release = Ready(), threading.Event()

    def first() -> None:
        beside(release.wait, 10)
        ready.set()
        events.append("first answered")

    def retry() -> None:
        events.append(f"retry: {wait_ready(ready, timeout=10)}")

    def poller() -> None:  # the Redis path's retry polls the log between turns
        waits = 0
        while not ready.is_set():
            assert wait_for_turn()  # one parked beside: a turn to wait for
            waits += 1
        events.append(f"poller looked {waits + 1} times")

    turn.run(first)
    turn.run(retry)
    turn.run(poller)
    for _ in range(3):
        turn.flush()  # turns without the first's end: each looks once, and returns
    assert events == [] and len(turn.parked) == 2
    release.set()
    loop.dispatch(turn)
    assert events == ["first answered", "retry: True", "poller looked 5 times"]
    assert turn.parked == [] and turn.beside == 0
    late = Ready()
    turn.run(lambda: events.append(f"gave up: {not wait_ready(late, timeout=0.05)}"))
    deadline = time.monotonic() + 10
    while events[-1] != "gave up: True" and time.monotonic() < deadline:
        time.sleep(0.01)
        turn.flush()
    assert events[-1] == "gave up: True"
    turn.close()
