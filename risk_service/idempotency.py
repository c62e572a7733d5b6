"""Idempotency records: the same event_id returns the stored decision and is never counted twice.

A record is written in the same critical section as the event's state update,
so no reader can see one without the other. Records expire after a TTL
(7 days by default), oldest first.

Two tiers, because a whole entry (the answer, the event, the feature vectors, the log
record: ~10 KB) kept for 7 days would grow the process by gigabytes an hour under load.
The newest ``memory_events`` entries stay whole: a retry gets its answer from memory,
approval reasons on request, and a label its entities. Older ones, once logged, are
*settled*: only what recognises a retry (the body hash; the answer is read back from
the decision log), a few hundred bytes, in tuples the garbage collector does not track. A
label for a settled event finds its entities in the decision log (`Scorer.ingest_label`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from risk_service.decision_log import DecisionRecord


class Ready:
    """Set once, waited on by any number of threads: `threading.Event`'s contract for what
    this module needs, on one lock (an Event builds a Condition and two locks, ~3 µs, for
    every scored event; a concurrent duplicate that waits is rare)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()  # held until `set`

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """True once set (at once if it is), False if ``timeout`` seconds passed first."""
        if self._set:
            return True
        if self._lock.acquire(timeout=timeout):
            self._lock.release()  # for the next waiter
            return True
        return self._set


@dataclass
class IdempotencyEntry:
    """One scored event: its answer, its log record, and what a retry or a label needs."""

    body_hash: str
    response: dict[str, Any]
    record: DecisionRecord | None  # built once reasons are known, before `ready` is set
    event: dict[str, Any]  # kept for label ingestion by event_id; never logged in the clear
    created_ms: int
    x: Any = None  # the fraud feature vector, for reasons asked for on a retry
    reasons_complete: bool = True
    features: dict[str, float | None] = field(default_factory=dict)
    models: Any = None  # the models that scored it (a hot swap must not mix versions)
    credit_x: Any = None  # credit features, when adverse-action reasons are due
    logged: bool = False
    ready: Ready = field(default_factory=Ready)


class Settled(NamedTuple):
    """A scored, logged event past the memory window (see the module docstring)."""

    created_ms: int
    body_hash: str


class MemoryIdempotencyStore:
    """event_id -> entry, expiring `ttl_ms` after creation (by wall-clock arrival order); the
    newest `memory_events` entries whole, older logged ones `Settled`."""

    def __init__(self, ttl_ms: int, *, memory_events: int = 50_000) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"idempotency TTL must be > 0 ms, got {ttl_ms}")
        if memory_events < 1:
            raise ValueError(f"idempotency memory_events must be >= 1, got {memory_events}")
        self.ttl_ms = ttl_ms
        self.memory_events = memory_events
        self._entries: dict[str, IdempotencyEntry] = {}
        self._settled: dict[str, Settled] = {}
        self._order: deque[tuple[int, str]] = deque()  # every record, oldest first
        self._whole: deque[str] = deque()  # the whole entries, oldest first

    def get(self, event_id: str, now_ms: int) -> IdempotencyEntry | Settled | None:
        self._expire(now_ms)
        entry = self._entries.get(event_id)
        return entry if entry is not None else self._settled.get(event_id)

    def put(self, event_id: str, entry: IdempotencyEntry) -> None:
        self._entries[event_id] = entry
        self._order.append((entry.created_ms, event_id))
        self._whole.append(event_id)
        if len(self._whole) > self.memory_events:
            self._settle()

    def _settle(self) -> None:
        """Settle the oldest whole entries beyond the window. One still being scored, or not
        logged yet (its append failed, and a retry will make it), stays whole for now."""
        whole, entries = self._whole, self._entries
        for _ in range(len(whole) - self.memory_events):
            event_id = whole.popleft()
            entry = entries.get(event_id)
            if entry is None:  # expired
                continue
            if not (entry.ready.is_set() and entry.logged):
                whole.append(event_id)  # looked at again once the window moves on
                continue
            del entries[event_id]
            self._settled[event_id] = Settled(entry.created_ms, entry.body_hash)

    def _expire(self, now_ms: int) -> None:
        order, entries, settled = self._order, self._entries, self._settled
        while order and order[0][0] + self.ttl_ms <= now_ms:
            created_ms, event_id = order.popleft()
            entry = entries.get(event_id)
            if entry is not None and entry.created_ms == created_ms:
                del entries[event_id]
            elif (old := settled.get(event_id)) is not None and old.created_ms == created_ms:
                del settled[event_id]

    def __len__(self) -> int:
        return len(self._entries) + len(self._settled)

    def whole(self) -> int:
        """How many entries are whole (in the memory window)."""
        return len(self._entries)


class AppliedLabels:
    """The events whose fraud label reached the state, each remembered for ``ttl_ms`` after
    (wall clock): a label is applied once, whether it finds its event's idempotency record
    or, past it, the decision log. Fraud labels are rare (about one event in 200), so this
    stays small; the TTL is how long a label can still count in a feature
    (`features.expiry.LABEL_HORIZON_MS`), as for the label keys on Redis."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._applied: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def seen(self, event_id: str, now_ms: int) -> bool:
        order, applied = self._order, self._applied
        while order and order[0][0] + self.ttl_ms <= now_ms:
            at, old = order.popleft()
            if applied.get(old) == at:
                del applied[old]
        return event_id in applied

    def add(self, event_id: str, now_ms: int) -> None:
        self._applied[event_id] = now_ms
        self._order.append((now_ms, event_id))

    def __len__(self) -> int:
        return len(self._applied)
