"""The decision log on PostgreSQL, shared by every worker, with a local spool for outages.

**Durability.** ``append`` (and ``add_label``) returns only once the row is
committed in PostgreSQL (with the server's ``synchronous_commit``, on by default),
or, when PostgreSQL fails or has not confirmed the commit within ``hedge_ms``, once it
is committed in this process's spool file (SQLite, ``synchronous=FULL``; see
``decision_log_spool``). A write that outlives its hedge goes on (on the writer
thread) and may land: its rows are then in both until the flush finds them there.
A background thread moves spooled rows to PostgreSQL when it answers again
(``ON CONFLICT (event_id) DO NOTHING``, then deleted from the spool, so a crash between
the two only repeats a no-op) and, at start and every ``adopt_interval_s``, adopts spool
files left by dead processes.

**Time bounds.** A hung server cannot hold a request: the server cancels a
statement after ``timeout_ms`` (``-c statement_timeout``), connecting gives up after
``connect_timeout`` (libpq's minimum is 2 s, so reconnection happens in the
background thread, never on the request path), and a watchdog shuts the socket
down when a call outlives ``timeout_ms`` (a stopped server or a lost network,
where no statement timeout can fire). A commit whose answer was lost that way
may be in PostgreSQL *and* in the spool until the next flush (never lost, never
duplicated in PostgreSQL; ``count`` counts it once), and so may a hedged one.

**Slow, not down.** A server slower than ``hedge_ms`` but within ``timeout_ms`` is not a
failure: the batch goes to the spool as well, and for ``slow_cooldown_s`` every batch goes
straight there (no request waits for PostgreSQL meanwhile); then one batch tries it again.

**Circuit breaker.** After ``breaker_failures`` consecutive failures appends go
straight to the spool for ``breaker_cooldown_s``; then one reconnection is tried,
and the next batch's success closes the breaker.

**Group commit.** Leader/follower as in ``SQLiteDecisionLog``: concurrent appends
share one statement (``INSERT ... SELECT FROM unnest(arrays)``: one round trip and
one commit per batch). Measured against this machine's PostgreSQL 15 over TCP on
127.0.0.1 (fsync on, 2 CPUs, one of them busy with another process; 4,000 appends
of a typical record; ``python tests/test_decision_log_pg.py``, three runs):

=========  ===============  =========  ========  ========
threads    appends/s        mean ms    p50 ms    p99 ms
=========  ===============  =========  ========  ========
1          1,050 - 1,150    0.9        0.8-0.9   1.3-2.0
8          2,500 - 2,750    2.6-2.8    2.7-3.0   6.2-7.3
=========  ===============  =========  ========  ========

A connection per thread without batching (a pool) did worse: 8 connections gave
1,700 appends/s at 4.6 ms mean, as each commit waits for its own WAL flush.

**Conflicts** are as in SQLite: the same event_id with another body hash raises
``Conflict`` (409), with the same body it is a no-op. A spooled decision can only
meet a different body in PostgreSQL when it is flushed; it is then kept in
``decision_conflicts`` (and logged) rather than dropped, and so is one with the same body
and another answer (decision or degraded flag): a retry answered while the first answer
waited in another worker's spool and Redis could not tell either.

**Reads.** ``get`` and ``labels`` look in this process's spool (``get`` also, read-only,
in the live spool files of the other processes on this host), then in PostgreSQL
(another host's spooled rows become visible once its worker flushes them); ``count``
adds both. When PostgreSQL cannot answer within the timeout they raise
``DecisionLogError`` rather than give half an answer (``get`` still answers from the
spool). A failed read counts towards the breaker like a failed write, and the reader's
connection is made at start or by the background thread, never by a read. Readiness
should look at ``status()``: with the spool the service keeps answering, durably, while
PostgreSQL is away.

**Start.** The schema is created or migrated under an advisory lock. A server
that is unreachable at start is not fatal (the log starts on its spool and
connects later); another key or a newer schema is (``DecisionLogError``). Open
the log in each worker after the fork (the flock and the threads are per process).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from risk_service import metrics
from risk_service.decision_log_pg_conn import Watchdog, describe, first_line, pg_conninfo
from risk_service.decision_log_pg_sql import (
    COUNT,
    COUNT_AMONG,
    INSERT_LABELS,
    SELECT_DECISION,
    SELECT_LABELS,
    SELECT_OTHER_ANSWERS,
    insert_decisions,
    label_arrays,
    move_rows,
    prepare_schema,
)
from risk_service.decision_log_spool import SpoolDir
from risk_service.decision_records import (
    DECISION,
    LABEL,
    DecisionLogError,
    DecisionRecord,
    Pseudonymiser,
    decision_row,
    label_from_row,
    label_row,
    record_from_row,
)
from risk_service.errors import Conflict
from risk_service.group_commit import GroupCommit, Pending
from risk_service.labels import LabelRecord, sort_labels

log = logging.getLogger("risk_service.decision_log")
T = TypeVar("T")
Row = tuple[Any, ...]
MIGRATION_TIMEOUT_S = 60.0
_FAILURES = (psycopg.Error, OSError)


def storable(event_id: str) -> bool:
    """Whether PostgreSQL can hold this event_id: its text cannot hold NUL, so no decision has
    one (`/score` refuses it), and asking would fail every time (a 503, not the 404 it is)."""
    return "\x00" not in event_id


class PostgresDecisionLog:
    """The decision log in PostgreSQL (psycopg 3), spooling locally when it is away."""

    def __init__(
        self,
        url: str,
        hash_key: bytes,
        *,
        spool_path: str | Path,
        timeout_ms: int = 1000,
        hedge_ms: float | None = None,
        slow_cooldown_s: float = 1.0,
        max_batch: int = 512,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 5.0,
        flush_interval_s: float = 0.5,
        flush_batch: int = 500,
        adopt_interval_s: float = 30.0,
    ) -> None:
        if timeout_ms <= 0 or max_batch < 1 or breaker_failures < 1 or flush_batch < 1:
            raise ValueError(
                "timeout_ms, max_batch, breaker_failures and flush_batch must be positive"
            )
        self.pseudonymise = Pseudonymiser(hash_key)
        self.url = describe(url)
        self._key = hash_key
        self._conninfo = pg_conninfo(url, timeout_ms)
        self._timeout_s = timeout_ms / 1000
        # how long an append waits for PostgreSQL before the spool takes its batch, the write
        # going on meanwhile (see _commit); None: until the write ends (the timeout's watchdog
        # ends it)
        if hedge_ms is not None and hedge_ms <= 0:
            raise ValueError("hedge_ms must be positive")
        self._hedge_s = hedge_ms / 1000 if hedge_ms is not None and hedge_ms < timeout_ms else None
        self._slow_cooldown_s = slow_cooldown_s
        # Flushing is off the request path and moves up to flush_batch rows at once: it gets
        # far longer than an append, or a big batch on a busy server could never get through.
        self._flush_timeout_s = max(10 * self._timeout_s, 5.0)
        self._breaker_failures = breaker_failures
        self._cooldown_s = breaker_cooldown_s
        self._flush_interval_s = flush_interval_s
        self._flush_batch = flush_batch
        self._adopt_interval_s = adopt_interval_s
        self._cond = threading.Condition()  # the write queue, and the breaker's state below
        self._group = GroupCommit(
            lambda batch: self._commit(batch),  # late-bound: tests count batches
            max_batch=max_batch,
            closed_error=lambda: DecisionLogError("the decision log is closed"),
            cond=self._cond,
        )
        self._failures = 0
        self._open_until = 0.0
        self._slow_until = 0.0  # after a hedged write: batches go to the spool until then
        self._inflight: _Write | None = None  # the write the writer thread is doing
        self._jobs: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self.last_error: str | None = None
        self.fatal: str | None = None  # another key or a newer schema: never write there
        self._conn: psycopg.Connection[Any] | None = None
        self._read_lock = threading.Lock()
        self._reader: psycopg.Connection[Any] | None = None
        self._reader_stale = False  # the writer failed since the reader connected
        self._flush_lock = threading.Lock()  # a flush step is atomic for count()
        self._flush_conn: psycopg.Connection[Any] | None = None
        self._kick = threading.Event()
        self._stopping = False
        self.spool = SpoolDir(spool_path, hash_key)
        self._watchdog = Watchdog(tick_s=max(0.005, self._timeout_s / 4))
        try:
            self.spool.adopt_orphans()
            self._conn = self._connect(prepare=True)
        except DecisionLogError:
            self._watchdog.close()
            self.spool.close()
            raise
        except _FAILURES as exc:
            self._note_failure(exc)
            log.warning("decision log %s unreachable at start, spooling: %s", self.url, exc)
        else:
            self._connect_reader()
        self._flusher = threading.Thread(
            target=self._run_flusher, name="decision-log-flusher", daemon=True
        )
        self._flusher.start()
        self._writer = threading.Thread(
            target=self._run_writer, name="decision-log-writer", daemon=True
        )
        self._writer.start()

    # -- connections and the breaker -----------------------------------------------------------
    def _connect(self, *, prepare: bool) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        if prepare:
            try:
                with self._watchdog.guard(conn, MIGRATION_TIMEOUT_S):
                    prepare_schema(conn, self._key, MIGRATION_TIMEOUT_S, where=self.url)
            except BaseException:
                conn.close()
                raise
        return conn

    def _note_failure(self, exc: BaseException) -> None:
        with self._cond:
            self._failures += 1
            self.last_error = first_line(exc)
            if self._failures >= self._breaker_failures:
                self._open_until = time.monotonic() + self._cooldown_s

    def _breaker_open(self) -> bool:
        return time.monotonic() < self._open_until

    def _drop_writer(self, conn: psycopg.Connection[Any], exc: BaseException) -> None:
        with self._cond:
            if self._conn is conn:
                self._conn = None
        conn.close()
        self._reader_stale = True  # the server is likely gone for it too: reconnect both
        self._note_failure(exc)
        log.warning("decision log %s failed, spooling: %s", self.url, first_line(exc))
        self._kick.set()

    # -- writing -------------------------------------------------------------------------------
    def append(self, record: DecisionRecord) -> bool:
        """Log one decision; returns once it is committed in PostgreSQL or in the spool: True,
        or False when PostgreSQL already held its event_id with the same body."""
        pending = Pending(decision_row(self.pseudonymise, record))
        self._submit(pending)
        return not pending.existed

    def add_label(self, label: LabelRecord) -> None:
        """Keep one label; durable on return; a label already kept is a no-op."""
        self._submit(Pending(label_row(label), LABEL))

    def _submit(self, pending: Pending) -> None:
        self._group.submit([pending])
        if pending.error is not None:
            raise pending.error

    def _commit(self, batch: list[Pending]) -> None:
        """PostgreSQL if it is there and answers within the hedge, else the spool; marks
        every pending done.

        The write itself runs on the writer thread. When it takes longer than the hedge (a
        slow server, not a dead one: that is the timeout's and the watchdog's), the batch
        is committed in the spool too and its requests go on; the write may still land, and
        the flush then finds those rows in PostgreSQL (a no-op). For the cool-down after a
        hedge, batches go to the spool straight away: a slow PostgreSQL delays no payment by
        more than one hedge, where each commit used to wait for it (bench/faults.py,
        postgres-slow)."""
        try:
            conn = self._conn
            if (
                conn is not None
                and self.fatal is None
                and not self._breaker_open()
                and self._inflight is None
                and time.monotonic() >= self._slow_until
            ):
                job = _Write(conn, [(p.kind, p.row) for p in batch])
                self._inflight = job
                self._jobs.put(job)
                if job.finished.wait(self._hedge_s):
                    if job.outcomes is not None:
                        for p, (existed, error) in zip(batch, job.outcomes, strict=True):
                            p.existed, p.error = existed, error
                        return
                else:
                    self._slow_until = time.monotonic() + self._slow_cooldown_s
                    metrics.store_error("postgres", "hedge")
                    log.warning(
                        "decision log %s slower than %.0f ms: spooling for %.1f s",
                        self.url,
                        (self._hedge_s or 0.0) * 1000,
                        self._slow_cooldown_s,
                    )
            started = time.perf_counter()
            errors = self.spool.own.log.submit_rows([(p.kind, p.row) for p in batch])
            metrics.observe_store("spool", "commit", time.perf_counter() - started)
            for p, error in zip(batch, errors, strict=True):
                p.error = error
            self._kick.set()
        except BaseException:
            for p in batch:
                p.error = DecisionLogError("decision log write interrupted")
            raise
        finally:
            for p in batch:
                p.done = True

    def _run_writer(self) -> None:
        """Do each write _commit hands over, one at a time, on the writer connection."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            started = time.perf_counter()
            try:
                with self._watchdog.guard(job.conn, self._timeout_s):
                    job.outcomes = self._write(job.conn, job.rows)
            except _FAILURES as exc:
                metrics.store_error("postgres", "commit")
                self._drop_writer(job.conn, exc)
            except Exception:  # a bug: the batch goes to the spool, the writer lives on
                log.exception("decision log write")
            else:
                metrics.observe_store("postgres", "commit", time.perf_counter() - started)
                with self._cond:
                    self._failures = 0
            finally:
                self._inflight = None
                job.finished.set()

    def _write(
        self, conn: psycopg.Connection[Any], rows: list[tuple[str, Row]]
    ) -> list[tuple[bool, Exception | None]]:
        """One statement per kind (one transaction when both); then (existed, 409) per row:
        existed when the event_id was logged already, a Conflict when with another body."""
        decisions = [r for kind, r in rows if kind == DECISION]
        labels = [r for kind, r in rows if kind == LABEL]
        with conn.transaction() if decisions and labels else _nothing():
            not_inserted = insert_decisions(conn, decisions)
            if labels:
                conn.execute(INSERT_LABELS, label_arrays(labels))
        outcomes: list[tuple[bool, Exception | None]] = [(False, None)] * len(rows)
        at = [i for i, (kind, _) in enumerate(rows) if kind == DECISION]  # decisions -> rows
        for j, stored in not_inserted:
            row = decisions[j]
            # existed: the caller answers what was logged (scoring_shared._answer)
            conflict = None
            if stored is not None and stored[0] != row[3]:
                conflict = Conflict(
                    f"event_id {row[0]!r} is already logged with a different body",
                    field="event_id",
                )
            outcomes[at[j]] = (True, conflict)
        return outcomes

    # -- the background flusher ----------------------------------------------------------------
    def _run_flusher(self) -> None:
        next_adopt = time.monotonic() + self._adopt_interval_s
        while True:
            self._kick.wait(self._flush_interval_s)
            self._kick.clear()
            stopping = self._stopping
            try:
                if not stopping:
                    self._reconnect_if_due()
                self._flush(stopping)
                if not stopping and time.monotonic() >= next_adopt:
                    next_adopt = time.monotonic() + self._adopt_interval_s
                    self.spool.adopt_orphans()
            except Exception:  # the flusher must outlive any one failure; it retries
                log.exception("decision log flusher")
            if stopping:
                return

    def _reconnect_if_due(self) -> None:
        if self.fatal is not None or self._breaker_open():
            return
        if self._conn is not None:
            self._connect_reader()  # a no-op while the reader is connected and not stale
            return
        try:
            conn = self._connect(prepare=True)
        except DecisionLogError as exc:
            self.fatal = str(exc)
            log.error("decision log %s refused, everything stays in the spool: %s", self.url, exc)
            return
        except _FAILURES as exc:
            self._note_failure(exc)
            return
        with self._cond:
            if self._conn is None and not self._group.closed:
                self._conn, conn = conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.close()
        log.info("decision log %s reachable again", self.url)
        self._connect_reader()

    def _connect_reader(self) -> None:
        """The reader's connection, at start or from the flusher: connecting can take libpq's
        2 s minimum, which a request (a retry reading the log) must never wait for."""
        if self._reader is not None and not self._reader_stale:
            return
        try:
            reader: psycopg.Connection[Any] | None = self._connect(prepare=False)
        except _FAILURES as exc:
            self._note_failure(exc)
            return
        with self._read_lock:
            if not self._stopping:
                self._reader, reader = reader, self._reader
                self._reader_stale = False
        if reader is not None:
            reader.close()

    def _flush_connection(self, stopping: bool) -> psycopg.Connection[Any] | None:
        if self._flush_conn is None and not stopping and self._conn is not None:
            try:
                self._flush_conn = self._connect(prepare=False)
            except _FAILURES as exc:
                self.last_error = first_line(exc)
        return self._flush_conn

    def _flush(self, stopping: bool) -> None:
        """Move every spool file's rows to PostgreSQL, chunk by chunk; retire emptied orphans."""
        deadline = time.monotonic() + 2 * self._timeout_s  # bounds the final flush in close()
        for spool in self.spool.files():
            while True:
                decisions, labels = spool.log.oldest(self._flush_batch)
                if not decisions and not labels:
                    if spool is not self.spool.own:
                        self.spool.retire(spool)
                    break
                conn = self._flush_connection(stopping)
                if (
                    conn is None
                    or self.fatal is not None
                    or (stopping and time.monotonic() > deadline)
                ):
                    return
                try:
                    with self._flush_lock:
                        with self._watchdog.guard(conn, self._flush_timeout_s):
                            other = move_rows(
                                conn, [r for _, r in decisions], [r for _, r in labels]
                            )
                        spool.log.forget([s for s, _ in decisions], [s for s, _ in labels])
                    if other:
                        log.error(
                            "%d spooled decisions met another body or answer for their "
                            "event_id in %s; kept in decision_conflicts: %s",
                            len(other),
                            self.url,
                            other[:10],
                        )
                except _FAILURES as exc:
                    self._flush_conn = None
                    conn.close()
                    self.last_error = first_line(exc)
                    return

    # -- reading -------------------------------------------------------------------------------
    def _read(self, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run a query on the reader connection within the timeout, or raise DecisionLogError."""
        if self.fatal is not None:
            raise DecisionLogError(self.fatal)
        if self._breaker_open():
            raise DecisionLogError(
                f"decision log {self.url} unavailable (circuit breaker open): {self.last_error}"
            )
        if not self._read_lock.acquire(timeout=self._timeout_s):
            raise DecisionLogError(f"decision log {self.url}: reader busy beyond the timeout")
        try:
            reader = self._reader
            if reader is not None and self._reader_stale:
                self._reader = None
                reader.close()
                reader = None
            if reader is None:  # the flusher reconnects it (never a request: up to 2 s)
                self._kick.set()
                raise DecisionLogError(
                    f"decision log {self.url} not connected, reconnecting: {self.last_error}"
                )
            with self._watchdog.guard(reader, self._timeout_s):
                return query(reader)
        except _FAILURES as exc:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            metrics.store_error("postgres", "read")
            self._note_failure(exc)  # a server too slow to read from is too slow to write to
            raise DecisionLogError(f"decision log {self.url} read failed: {exc}") from exc
        finally:
            self._read_lock.release()

    def get(self, event_id: str) -> DecisionRecord | None:
        """The logged record (identifiers as their hashes), or None; spool first, then PG."""
        found = self.spool.get(event_id)
        if found is not None or not storable(event_id):
            return found
        row = self._read(lambda c: c.execute(SELECT_DECISION, (event_id,)).fetchone())
        return None if row is None else record_from_row(row)

    def other_answers(self, event_id: str) -> list[DecisionRecord]:
        """Other acknowledged answers to the same request, kept in ``decision_conflicts``: a
        retry answered while neither Redis nor PostgreSQL knew the event (move_rows)."""
        if not storable(event_id):
            return []
        rows = self._read(lambda c: c.execute(SELECT_OTHER_ANSWERS, (event_id,)).fetchall())
        return [record_from_row(r) for r in rows]

    def labels(self, event_id: str) -> list[LabelRecord]:
        """Every label kept for the event (PostgreSQL and spool), by label then receipt time."""
        if not storable(event_id):
            return []
        rows = self._read(lambda c: c.execute(SELECT_LABELS, (event_id,)).fetchall())
        merged: dict[tuple[str, str, int, int, str], LabelRecord] = {}
        for label in [label_from_row(r) for r in rows] + self.spool.labels(event_id):
            kept = merged.get(label.key())
            if kept is None or label.received_at_ms < kept.received_at_ms:
                merged[label.key()] = label
        return sort_labels(merged.values())

    def count(self) -> int:
        """Decisions in PostgreSQL plus those in the spool only (a hedged or cut-off commit
        that landed is in both until the flush: counted once); raises DecisionLogError past
        the timeout. For tests and benchmarks: it reads every spooled event_id."""
        if not self._flush_lock.acquire(timeout=self._timeout_s):
            raise DecisionLogError(f"decision log {self.url}: a flush step outlived the timeout")
        try:
            spooled = list(self.spool.event_ids())

            def both(c: psycopg.Connection[Any]) -> tuple[int, int]:
                stored = c.execute(COUNT).fetchone()
                landed = c.execute(COUNT_AMONG, (spooled,)).fetchone() if spooled else (0,)
                return int(stored[0]) if stored else 0, int(landed[0]) if landed else 0

            stored, landed = self._read(both)
            return stored + len(spooled) - landed
        finally:
            self._flush_lock.release()

    def recent(self, since_ms: int, limit: int) -> list[tuple[str, int]]:
        """(event_id, created_at_ms) of the decisions created since ``since_ms`` that reached
        PostgreSQL (not those still in a spool), newest first, at most ``limit``."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT event_id, created_at_ms FROM decisions ORDER BY seq DESC LIMIT %s",
                (limit,),
            ).fetchall()
        )
        return [(str(e), int(t)) for e, t in rows if int(t) >= since_ms]

    def status(self) -> dict[str, Any]:
        """For /ready and metrics: connected, breaker state, rows waiting in the spool."""
        with self._cond:
            failures, connected = self._failures, self._conn is not None
        if self._breaker_open():
            breaker = "open"
        elif failures >= self._breaker_failures:
            breaker = "half_open"
        else:
            breaker = "closed"
        return {
            "backend": "postgresql",
            "url": self.url,
            "connected": connected,
            "breaker": breaker,
            "consecutive_failures": failures,
            "spooled": self.spool.spooled(),
            "spool_files": len(self.spool.files()),
            "last_error": self.last_error,
            "error": self.fatal,
        }

    def close(self) -> None:
        """Refuse new rows, finish the commit in progress, flush what can be, release all."""
        if not self._group.close():
            return
        self._stopping = True
        self._jobs.put(None)
        self._writer.join()
        self._kick.set()
        self._flusher.join()
        with self._read_lock:
            for conn in (self._conn, self._reader, self._flush_conn):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = self._flush_conn = None
        self._watchdog.close()
        self.spool.close()

    def __enter__(self) -> PostgresDecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Write:
    """One batch for the writer thread: its rows, and what became of them."""

    __slots__ = ("conn", "finished", "outcomes", "rows")

    def __init__(self, conn: psycopg.Connection[Any], rows: list[tuple[str, Row]]) -> None:
        self.conn = conn
        self.rows = rows
        self.finished = threading.Event()
        # (existed, error) per row once written; None: not written (failed)
        self.outcomes: list[tuple[bool, Exception | None]] | None = None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


__all__ = ["PostgresDecisionLog"]
