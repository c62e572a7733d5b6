"""Degraded events waiting for Redis: answered and logged already, their state update follows.

When the shared store is down, an event is answered degraded and logged, but it
cannot update the velocities. Rather than lose it from the state, the process
keeps it here (bounded: the oldest are dropped first, and counted) and a
background thread applies it once Redis answers again, as a transaction whose
idempotency record is the degraded answer: a retry then answers what was
logged, and an event a retry already scored is not applied twice. Applied
late, such events count as late events do (docs/architecture.md).

With a file (`backlog_file.py`, in the spool directory) every entry is also durable before
the decision is logged (a retry that finds the logged answer answers it without scoring, so
an entry made after the append was lost with a worker killed in between), so a worker killed
during an outage loses nothing: the next process
to look adopts its entries (at start, then every ``adopt_s``). Entries carry identifiers
only as the state store's keyed hashes.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from risk_service.backlog_file import BacklogFile
from risk_service.features.derived import is_missing
from risk_service.features.spec import ID_COLUMNS

log = logging.getLogger("risk_service.backlog")


@dataclass(frozen=True)
class DegradedEvent:
    """What applying an event answered degraded needs: the event and inline account with
    their identifiers as keyed hashes, the idempotency record (the degraded answer) and the
    hashed entity ids (kind -> hash) whose states it changes."""

    event_id: str
    kind: str
    event: dict[str, Any]
    account: dict[str, Any] | None
    record: bytes
    ids: dict[str, str]

    @classmethod
    def hashed(
        cls,
        request: Any,
        record: bytes,
        ids: Mapping[str, str],
        key_hash: Callable[[str], str],
    ) -> DegradedEvent:
        """From a validated ScoreRequest: identifiers replaced by ``key_hash`` of them."""
        event = dict(request.event)
        for column in ID_COLUMNS:
            if column in event and not is_missing(event[column]):
                event[column] = key_hash(str(event[column]))
        account = None
        if request.account is not None:
            account = {
                **request.account,
                "account_id": key_hash(str(request.account["account_id"])),
            }
        return cls(request.event_id, request.kind, event, account, record, dict(ids))

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "kind": self.kind,
                "event": self.event,
                "account": self.account,
                "record": base64.b64encode(self.record).decode(),
                "ids": self.ids,
            },
            default=str,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DegradedEvent:
        d = orjson.loads(data)
        record = base64.b64decode(d["record"])
        return cls(d["event_id"], d["kind"], d["event"], d["account"], record, d["ids"])


class Backlog:
    """event_id -> DegradedEvent, applied oldest first by one daemon thread."""

    def __init__(
        self,
        apply: Callable[[DegradedEvent], str],
        *,
        file: BacklogFile | None = None,
        max_events: int = 50_000,
        retry_s: float = 0.25,
        adopt_s: float = 5.0,
    ) -> None:
        self._apply = apply
        self.file = file
        self.max_events = max_events
        self.retry_s = retry_s
        self.adopt_s = adopt_s
        self._items: OrderedDict[str, DegradedEvent] = OrderedDict()
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

    def add(self, item: DegradedEvent) -> bool:
        """Keep one event (durably first, with a file) and wake the applying thread; False when
        it was kept already (another request of this process for the same event_id)."""
        if item.event_id in self._items:
            return False
        if self.file is not None:
            self.file.add(item.event_id, item.to_bytes())
        self._keep([item])
        return True

    def discard(self, event_id: str) -> None:
        """Forget an event kept by a request that then failed (409, log error): not answered,
        so not counted either (unless the applying thread took it meanwhile)."""
        with self._lock:
            self._items.pop(event_id, None)
        if self.file is not None:
            self.file.remove(event_id)

    def adopt(self) -> int:
        """Take the entries of dead processes' backlog files; returns how many."""
        if self.file is None:
            return 0
        items = [DegradedEvent.from_bytes(entry) for _, entry in self.file.adopt_orphans()]
        self._keep(items)
        return len(items)

    def start(self) -> None:
        """Adopt what dead processes left, and run the applying thread from now on."""
        self.adopt()
        with self._lock:
            self._start_thread()

    def _keep(self, items: list[DegradedEvent]) -> None:
        if not items:
            return
        with self._lock:
            for item in items:
                if item.event_id in self._items:
                    continue
                self._items[item.event_id] = item
            while len(self._items) > self.max_events:
                dropped, _ = self._items.popitem(last=False)
                if self.file is not None:
                    self.file.remove(dropped)
                self.dropped += 1
            self._start_thread()
        self._wake.set()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
            self._thread.start()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the backlog is empty (tests, shutdown); True if it is."""
        end = time.monotonic() + timeout
        while self._items and time.monotonic() < end:
            self._wake.set()
            time.sleep(0.02)
        return not self._items

    def stop(self) -> None:
        """Stop applying; with a file, what is left stays in it for the next process."""
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2.0)
        if self.file is not None:
            self.file.close()
            self.file = None

    def _run(self) -> None:
        next_adopt = time.monotonic() + self.adopt_s
        while not self._stop:
            if time.monotonic() >= next_adopt:
                next_adopt = time.monotonic() + self.adopt_s
                try:
                    self.adopt()
                except Exception:  # a file system hiccup must not stop the applying
                    log.exception("backlog: adopting orphan files failed")
            with self._lock:
                head = next(iter(self._items.values()), None)
            if head is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._apply(head)
            except Exception as exc:  # Redis still down: wait, then try the same event again
                log.debug("backlog: %s not applied yet: %s", head.event_id, exc)
                self._wake.wait(self.retry_s)
                self._wake.clear()
                continue
            with self._lock:
                self._items.pop(head.event_id, None)
                self.applied += 1
            file = self.file
            if file is not None:
                file.remove(head.event_id)
