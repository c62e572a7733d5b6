"""`Ready`, the one-lock event an idempotency entry is finished with, and the TTL store."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np

from risk_service.idempotency import (
    AppliedLabels,
    IdempotencyEntry,
    MemoryIdempotencyStore,
    Ready,
    Settled,
)


def test_ready_wakes_every_waiter_and_times_out_before_it_is_set() -> None:
    ready = Ready()
    assert not ready.is_set()
    started = time.monotonic()
    assert ready.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(ready.wait(5.0))) for _ in range(8)]
    for t in waiters:
        t.start()
    time.sleep(0.05)
    assert woken == []  # all still waiting
    ready.set()
    ready.set()  # a second set is a no-op
    for t in waiters:
        t.join(timeout=5)
    assert woken == [True] * 8 and ready.is_set()
    assert ready.wait(0.0) is True  # set: at once, and again


def test_entries_expire_after_their_ttl_oldest_first() -> None:
    store = MemoryIdempotencyStore(ttl_ms=1000)
    for i, created in enumerate((0, 500, 900)):
        store.put(f"e{i}", IdempotencyEntry(f"h{i}", {}, None, {}, created))
    assert store.get("e0", 999) is not None and len(store) == 3
    assert store.get("e0", 1000) is None and len(store) == 2
    assert store.get("e1", 1499) is not None
    assert store.get("e2", 1500) is not None and store.get("e1", 1500) is None


def finished(event_id: str, created_ms: int, *, logged: bool = True) -> IdempotencyEntry:
    """An entry as the scorer leaves it once answered: a realistic payload, ready, logged."""
    entry = IdempotencyEntry(
        body_hash=f"hash-{event_id}",
        response={"decision": "approve", "fraud": {"probability": 0.01, "reasons": []}},
        record=None,
        event={"event_id": event_id, "account_id": f"a-{event_id}", "merchant_id": "m-1"},
        created_ms=created_ms,
        x=np.arange(96, dtype=np.float64),
        features={f"f{i}": float(i) for i in range(96)},
        logged=logged,
    )
    entry.ready.set()
    return entry


def test_entries_past_the_memory_window_are_settled_to_their_hash() -> None:
    store = MemoryIdempotencyStore(ttl_ms=10_000, memory_events=2)
    for i in range(4):
        store.put(f"e{i}", finished(f"e{i}", created_ms=i))
    assert len(store) == 4 and store.whole() == 2
    settled = store.get("e0", 10)
    assert isinstance(settled, Settled)
    assert settled.body_hash == "hash-e0" and settled.created_ms == 0
    assert settled == Settled(0, "hash-e0")  # nothing of the event: a label reads the log
    assert isinstance(store.get("e3", 10), IdempotencyEntry)
    # the TTL reaches settled records too, oldest first
    assert store.get("e0", 10_000) is None and store.get("e1", 10_000) is not None
    assert len(store) == 3


def test_applied_labels_are_remembered_for_their_ttl_in_arrival_order() -> None:
    applied = AppliedLabels(ttl_ms=1_000)
    applied.add("a", 0)
    applied.add("b", 600)
    assert applied.seen("a", 999) and applied.seen("b", 999) and not applied.seen("c", 999)
    assert not applied.seen("a", 1_000) and applied.seen("b", 1_000) and len(applied) == 1
    applied.add("a", 1_200)  # applied again once forgotten: remembered from then on
    assert applied.seen("a", 2_100) and not applied.seen("b", 2_100)
    assert not applied.seen("a", 2_200) and len(applied) == 0


def test_an_entry_still_being_scored_or_not_logged_stays_whole() -> None:
    store = MemoryIdempotencyStore(ttl_ms=10_000, memory_events=1)
    in_flight = finished("busy", 0)
    in_flight.ready = Ready()  # not answered yet
    store.put("busy", in_flight)
    store.put("unlogged", finished("unlogged", 1, logged=False))
    store.put("done", finished("done", 2))
    store.put("next", finished("next", 3))
    assert store.get("busy", 5) is in_flight
    assert isinstance(store.get("unlogged", 5), IdempotencyEntry)
    assert isinstance(store.get("done", 5), Settled)
    in_flight.ready.set()
    store.put("last", finished("last", 4))
    assert isinstance(store.get("busy", 5), Settled)


def grown_bytes_per_event(store: MemoryIdempotencyStore, n: int) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            store.put(f"event-{i:08d}", finished(f"event-{i:08d}", 1000 + i))
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def test_a_settled_event_costs_under_a_kilobyte() -> None:
    settling = MemoryIdempotencyStore(ttl_ms=10**9, memory_events=100)
    keeping = MemoryIdempotencyStore(ttl_ms=10**9, memory_events=10**6)
    for store in (settling, keeping):
        for i in range(200):  # past the window first
            store.put(f"warm-{i}", finished(f"warm-{i}", i))
    settled = grown_bytes_per_event(settling, 3_000)
    whole = grown_bytes_per_event(keeping, 3_000)
    assert settling.whole() == 100 and keeping.whole() == 3_200
    # whole, this test's entry is ~13 KB (a scored payment's ~10 KB); settled ~650 bytes: the
    # event_id, the body hash, the tuple, their slots in the dict and the expiry queue
    assert whole > 8_000, whole
    assert settled < 800, settled
