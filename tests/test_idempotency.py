"""`Ready`, the one-lock event an idempotency entry is finished with, and the TTL store."""

from __future__ import annotations

import threading
import time

from risk_service.idempotency import IdempotencyEntry, MemoryIdempotencyStore, Ready


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
