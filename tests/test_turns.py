"""Requests of one turn of the event loop share a commit (risk_service/turns.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import greenlet

from risk_service.group_commit import GroupCommit, Pending
from risk_service.turns import Turn, wait_for_turn


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
