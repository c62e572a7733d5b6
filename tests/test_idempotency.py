"""`Ready`, the one-lock event an idempotency entry is finished with, and the TTL store."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np

from risk_service.idempotency import (
    SETTLED,
    AppliedLabels,
    IdempotencyEntry,
    MemoryIdempotencyStore,
    Ready,
    SettledFilter,
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


def test_entries_past_the_memory_window_settle_into_the_filter() -> None:
    store = MemoryIdempotencyStore(ttl_ms=10_000, memory_events=2)
    for i in range(4):
        store.put(f"e{i}", finished(f"e{i}", created_ms=i))
    assert len(store) == 4 and store.whole() == 2
    assert store.get("e0", 10) == SETTLED and store.get("e1", 10) == SETTLED  # read the log
    assert isinstance(store.get("e3", 10), IdempotencyEntry)
    assert store.get("never-scored", 10) is None  # (this one is not a false positive)
    # whole entries go at their TTL; the filter's partition (1/8 of the TTL wide) once every
    # event in it is past the TTL: until then the caller checks the logged creation time
    assert store.get("e2", 10_002) is None and store.whole() == 1
    assert store.get("e0", 11_249) == SETTLED
    assert store.get("e0", 11_250) is None and store.get("e3", 11_250) is None
    assert len(store) == 0


def test_the_settled_filter_has_no_false_negatives_and_few_false_positives() -> None:
    day = 86_400_000
    settled = SettledFilter(ttl_ms=7 * day)
    n = 300_000  # spread over a week: every partition grows past its first filter
    for i in range(n):
        settled.add(f"evt-{i}", i * (7 * day // n))
    assert all(settled.may_contain(f"evt-{i}") for i in range(0, n, 7))
    false = sum(settled.may_contain(f"new-{i}") for i in range(50_000))
    assert false < 0.02 * 50_000, false
    assert len(settled) == n
    assert settled.nbytes() < 3.0 * n  # ~1.2 bytes an event, plus the doubling's slack
    settled.expire(8 * day + 1)  # a week after the first partition closed: it goes
    assert not settled.may_contain("evt-0") and settled.may_contain(f"evt-{n - 1}")
    assert len(settled) < n


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
    assert store.get("done", 5) == SETTLED
    in_flight.ready.set()
    store.put("last", finished("last", 4))
    assert store.get("busy", 5) == SETTLED


def grown_bytes_per_event(store: MemoryIdempotencyStore, n: int, warm: int = 200) -> float:
    """Memory per event over ``n`` events after ``warm`` (traced too, so that what the window
    frees of them counts)."""
    tracemalloc.start()
    try:
        for i in range(warm + n):
            if i == warm:
                before = tracemalloc.get_traced_memory()[0]
            store.put(f"event-{i:08d}", finished(f"event-{i:08d}", 1000 + i))
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def test_a_settled_event_costs_a_few_bytes() -> None:
    settling = MemoryIdempotencyStore(ttl_ms=10**9, memory_events=100)
    keeping = MemoryIdempotencyStore(ttl_ms=10**9, memory_events=10**6)
    settled = grown_bytes_per_event(settling, 3_000)
    whole = grown_bytes_per_event(keeping, 3_000)
    assert settling.whole() == 100 and keeping.whole() == 3_200
    # whole, this test's entry is ~13 KB (a scored payment's ~10 KB); settled, its bits in the
    # filter (allocated for 65,536 events at the first settled one, during the warm-up)
    assert whole > 8_000, whole
    assert settled < 20, settled
