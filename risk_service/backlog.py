"""Degraded events waiting for Redis: answered and logged already, their state update follows.

When the shared store is down, an event is answered degraded and logged, but it
cannot update the velocities. Rather than lose it from the state, the process
keeps it here (bounded: the oldest are dropped first, and counted) and a
background thread applies it once Redis answers again, as a transaction whose
idempotency record is the degraded answer: a retry then answers what was
logged, and an event a retry already scored is not applied twice. Applied
late, such events count as late events do (docs/architecture.md). The backlog
is in memory: a worker killed during an outage loses its backlog (the
decisions themselves are in the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("risk_service.backlog")


class Backlog:
    """event_id -> (request, record, ids), applied oldest first by one daemon thread."""

    def __init__(
        self,
        apply: Callable[[Any, bytes, dict[str, str]], str],
        *,
        max_events: int = 50_000,
        retry_s: float = 0.25,
    ) -> None:
        self._apply = apply
        self.max_events = max_events
        self.retry_s = retry_s
        self._items: OrderedDict[str, tuple[Any, bytes, dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.applied = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def pending(self, event_id: str) -> bool:
        return event_id in self._items

    def add(self, request: Any, record: bytes, ids: dict[str, str]) -> None:
        with self._lock:
            if request.event_id in self._items:
                return
            self._items[request.event_id] = (request, record, ids)
            while len(self._items) > self.max_events:
                self._items.popitem(last=False)
                self.dropped += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
                self._thread.start()
        self._wake.set()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the backlog is empty (tests, shutdown); True if it is."""
        end = time.monotonic() + timeout
        while self._items and time.monotonic() < end:
            self._wake.set()
            time.sleep(0.02)
        return not self._items

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                head = next(iter(self._items.items()), None)
            if head is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            event_id, (request, record, ids) = head
            try:
                self._apply(request, record, ids)
            except Exception as exc:  # Redis still down: wait, then try the same event again
                log.debug("backlog: %s not applied yet: %s", event_id, exc)
                self._wake.wait(self.retry_s)
                self._wake.clear()
                continue
            with self._lock:
                self._items.pop(event_id, None)
                self.applied += 1
