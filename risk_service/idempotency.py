"""Idempotency records: the same event_id returns the stored decision and is never counted twice.

A record is written in the same critical section as the event's state update,
so no reader can see one without the other. Records expire after a TTL
(7 days by default), oldest first, which bounds memory.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

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
    labels: set[str] = field(default_factory=set)  # labels already applied to the state
    ready: Ready = field(default_factory=Ready)


class MemoryIdempotencyStore:
    """event_id -> entry, expiring `ttl_ms` after creation (by wall-clock arrival order)."""

    def __init__(self, ttl_ms: int) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"idempotency TTL must be > 0 ms, got {ttl_ms}")
        self.ttl_ms = ttl_ms
        self._entries: dict[str, IdempotencyEntry] = {}
        self._order: deque[tuple[int, str]] = deque()

    def get(self, event_id: str, now_ms: int) -> IdempotencyEntry | None:
        self._expire(now_ms)
        return self._entries.get(event_id)

    def put(self, event_id: str, entry: IdempotencyEntry) -> None:
        self._entries[event_id] = entry
        self._order.append((entry.created_ms, event_id))

    def _expire(self, now_ms: int) -> None:
        order, entries = self._order, self._entries
        while order and order[0][0] + self.ttl_ms <= now_ms:
            _, event_id = order.popleft()
            entry = entries.get(event_id)
            if entry is not None and entry.created_ms + self.ttl_ms <= now_ms:
                del entries[event_id]

    def __len__(self) -> int:
        return len(self._entries)
