"""Idempotency records: the same event_id returns the stored decision and is never counted twice.

A record is written in the same critical section as the event's state update,
so no reader can see one without the other. Records expire after a TTL
(7 days by default), oldest first.

Two tiers, because a whole entry (the answer, the event, the feature vectors, the log
record: ~10 KB) kept for 7 days would grow the process by gigabytes an hour under load.
The newest ``memory_events`` entries stay whole: a retry gets its answer from memory,
approval reasons on request, and a label its entities. Older ones, once logged, are
*settled*: the decision log has everything about them (the body hash, the answer, the
entities a label needs), so memory keeps only enough to know when to look there, a
time-partitioned Bloom filter of their event_ids (`SettledFilter`, 1.2-2 bytes an event:
75-120 MB for 100 payments/s over 7 days, where a dict of their body hashes took ~40 GB). A
new event_id that the filter mistakes for a settled one (about 1 in 100) costs one read of
the log, which finds nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

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

    def mark_logged(self) -> None:
        """The decision is durable in the log: the record and the features by name, which only
        the append needed, go now. The entry stays in the memory window for `memory_events`
        more requests, and kept whole it held about a quarter of the process (max RSS after
        58,000 requests 1,091 MB, 825 without them: docs/benchmarks.md)."""
        self.logged = True
        self.record = None
        self.features = {}


class SettledFilter:
    """The event_ids settled within the TTL, as a time-partitioned Bloom filter: no false
    negatives, about one false positive in a hundred, 1.2-2 bytes an event.

    An event is added to the partition of its creation time (``span`` = TTL / 8 wide); a
    partition is dropped once every event in it is past the TTL, so an event is recognised
    for at least the TTL and at most one span longer (the caller checks the logged creation
    time). A partition starts sized by the last one's count and adds a filter twice as large
    whenever its newest fills up, so it adapts to the traffic without settings.
    """

    PARTITIONS = 8
    HASHES = 7  # bit positions per event: ~1% false positives at design load
    BITS_PER_EVENT = 9.6
    MIN_CAPACITY = 1 << 16

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.span_ms = max(1, -(-ttl_ms // self.PARTITIONS))
        self._parts: dict[int, list[_Bloom]] = {}  # creation-time bucket -> its filters
        self._all: tuple[_Bloom, ...] = ()  # every filter, for lookups
        self._last_count = 0
        self._next_expiry_ms = 1 << 62  # when the oldest partition is all past the TTL

    def add(self, event_id: str, created_ms: int) -> None:
        bucket = created_ms // self.span_ms
        blooms = self._parts.get(bucket)
        if blooms is None:
            capacity = max(self.MIN_CAPACITY, self._last_count)
            blooms = self._parts[bucket] = [_Bloom(capacity, self.BITS_PER_EVENT, self.HASHES)]
            self._all = (*self._all, blooms[-1])
            self._next_expiry_ms = min(self._next_expiry_ms, self._expiry_ms(bucket))
        elif blooms[-1].full():
            blooms.append(_Bloom(2 * blooms[-1].capacity, self.BITS_PER_EVENT, self.HASHES))
            self._all = (*self._all, blooms[-1])
        blooms[-1].add(*_digest(event_id))

    def may_contain(self, event_id: str) -> bool:
        if not self._all:
            return False
        h1, h2 = _digest(event_id)
        return any(b.may_contain(h1, h2) for b in self._all)

    def expire(self, now_ms: int) -> None:
        """Drop the partitions whose every event is past the TTL (called per request: at
        once until the oldest can go)."""
        if now_ms < self._next_expiry_ms:
            return
        for bucket in [b for b in self._parts if self._expiry_ms(b) <= now_ms]:
            self._last_count = sum(b.count for b in self._parts.pop(bucket))
        self._all = tuple(b for blooms in self._parts.values() for b in blooms)
        self._next_expiry_ms = min(map(self._expiry_ms, self._parts), default=1 << 62)

    def _expiry_ms(self, bucket: int) -> int:
        return (bucket + 1) * self.span_ms + self.ttl_ms

    def __len__(self) -> int:
        """Events added to the partitions kept (some may be past the TTL by up to a span)."""
        return sum(b.count for blooms in self._parts.values() for b in blooms)

    def nbytes(self) -> int:
        return sum(len(b.bits) for blooms in self._parts.values() for b in blooms)


def _digest(event_id: str) -> tuple[int, int]:
    """Two 32-bit hashes of an event_id (double hashing: position i is h1 + i h2)."""
    h = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
    return h & 0xFFFFFFFF, (h >> 32) | 1


class _Bloom:
    """One Bloom filter: ``capacity`` events, positions by double hashing of a 64-bit digest."""

    __slots__ = ("bits", "capacity", "count", "hashes", "m")

    def __init__(self, capacity: int, bits_per_event: float, hashes: int) -> None:
        self.capacity = capacity
        self.m = max(64, int(capacity * bits_per_event) // 8 * 8)
        self.bits = bytearray(self.m // 8)
        self.hashes = hashes
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.capacity

    def add(self, h1: int, h2: int) -> None:
        m, bits = self.m, self.bits
        for i in range(self.hashes):
            p = (h1 + i * h2) % m
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def may_contain(self, h1: int, h2: int) -> bool:
        m, bits = self.m, self.bits
        for i in range(self.hashes):
            p = (h1 + i * h2) % m
            if not bits[p >> 3] >> (p & 7) & 1:
                return False  # a new event: usually at the first or second position
        return True


SETTLED: Literal["settled"] = "settled"
"""What `MemoryIdempotencyStore.get` returns for an event_id that may have been settled: the
caller reads the decision log (about 1% of new events are false positives)."""


class MemoryIdempotencyStore:
    """event_id -> entry, expiring `ttl_ms` after creation (by wall-clock arrival order); the
    newest `memory_events` entries whole, older logged ones settled (`SettledFilter`)."""

    def __init__(self, ttl_ms: int, *, memory_events: int = 50_000) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"idempotency TTL must be > 0 ms, got {ttl_ms}")
        if memory_events < 1:
            raise ValueError(f"idempotency memory_events must be >= 1, got {memory_events}")
        self.ttl_ms = ttl_ms
        self.memory_events = memory_events
        self._entries: OrderedDict[str, IdempotencyEntry] = OrderedDict()  # oldest first
        self._settled = SettledFilter(ttl_ms)

    def get(self, event_id: str, now_ms: int) -> IdempotencyEntry | Literal["settled"] | None:
        """The whole entry; `SETTLED` if the event may be past the memory window (read the
        decision log: it is there if it was scored within the TTL); or None."""
        self._expire(now_ms)
        entry = self._entries.get(event_id)
        if entry is not None:
            return entry
        return SETTLED if self._settled.may_contain(event_id) else None

    def put(self, event_id: str, entry: IdempotencyEntry) -> None:
        self._entries[event_id] = entry
        if len(self._entries) > self.memory_events:
            self._settle()

    def _settle(self) -> None:
        """Settle the oldest whole entries beyond the window. One still being scored, or not
        logged yet (its append failed, and a retry will make it), stays whole for now."""
        entries = self._entries
        for _ in range(len(entries) - self.memory_events):
            event_id, entry = entries.popitem(last=False)
            if not (entry.ready.is_set() and entry.logged):
                entries[event_id] = entry  # looked at again once the window moves on
                continue
            self._settled.add(event_id, entry.created_ms)

    def _expire(self, now_ms: int) -> None:
        entries = self._entries
        while entries:
            event_id, entry = next(iter(entries.items()))
            if entry.created_ms + self.ttl_ms > now_ms:
                break
            del entries[event_id]
        self._settled.expire(now_ms)

    def recall(self, event_id: str, created_ms: int) -> None:
        """An event scored by an earlier process (the log has it): recognised as settled."""
        self._settled.add(event_id, created_ms)

    def __len__(self) -> int:
        return len(self._entries) + len(self._settled)

    def whole(self) -> int:
        """How many entries are whole (in the memory window)."""
        return len(self._entries)

    def settled_bytes(self) -> int:
        """Memory of the settled tier's filters."""
        return self._settled.nbytes()


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
