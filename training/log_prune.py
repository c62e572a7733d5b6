"""Pruning the decision log: decisions older than a retention, with their labels, in small steps.

The log keeps every decision until pruned, and a decision row is ~5 KB: at 100 payments a
second that is ~40 GB a day. `risk log prune --log URL --older-than-days N` deletes the
decisions appended (``created_at_ms``) more than N days ago, and their labels, oldest first,
in batches of a few hundred rows, each one short transaction followed by a pause, so a
service writing the same log (SQLite has one writer at a time) waits at most one batch.

A decision pruned before its label arrives leaves the label nothing to attach to (POST
/feedback answers 404 and ``risk train --from-log`` cannot use it): chargebacks come within
weeks and credit outcomes after a performance window of months, so a retention under
``MIN_DAYS`` needs ``force``.

Space: SQLite keeps the freed pages in its file and reuses them for new decisions, so the
file stops growing at the retention's size (``VACUUM``, with the service stopped, shrinks
it); PostgreSQL's autovacuum does the same for its tables. Decisions still in a service's
local spool (PostgreSQL away) are pruned once flushed, by a later run; the PostgreSQL log's
``decision_conflicts`` (rare, kept for a human) are left alone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.datasets import DataError
from training.log_source import parse_log_url

DAY_MS = 86_400_000
MIN_DAYS = 180  # longer than a chargeback window (45 days) and a credit performance window (90)
DEFAULT_BATCH = 500
DEFAULT_PAUSE_S = 0.02


@dataclass(frozen=True)
class PruneResult:
    """What a prune deleted (or, with ``dry_run``, would delete) and what is left."""

    source: str
    cutoff_ms: int  # decisions appended before this instant
    decisions: int
    labels: int
    kept: int  # decisions left in the log
    oldest_kept_ms: int | None
    dry_run: bool
    seconds: float


class _Log:
    """The few statements pruning needs, on one connection (SQLite or PostgreSQL)."""

    def __init__(self, conn: Any, mark: str, source: str) -> None:
        self.conn = conn
        self.mark = mark  # the driver's parameter placeholder
        self.source = source

    def _sql(self, text: str) -> str:
        return text.replace("?", self.mark)

    def one(self, text: str, *params: Any) -> Any:
        return self.conn.execute(self._sql(text), params).fetchone()[0]

    def batch(self, after_seq: int, cutoff_ms: int, limit: int) -> list[tuple[int, str]]:
        """The next decisions before the cut-off in log order (seq), after ``after_seq``."""
        rows = self.conn.execute(
            self._sql(
                "SELECT seq, event_id FROM decisions WHERE seq > ? AND created_at_ms < ? "
                "ORDER BY seq LIMIT ?"
            ),
            (after_seq, cutoff_ms, limit),
        ).fetchall()
        return [(int(seq), str(event_id)) for seq, event_id in rows]

    def delete(self, seqs: Sequence[int], event_ids: Sequence[str], labels: bool) -> int:
        """Delete the decisions and their labels in one transaction; returns labels deleted."""
        marks = ", ".join([self.mark] * len(seqs))
        deleted = 0
        self.begin()
        try:
            if labels:
                cur = self.conn.execute(
                    f"DELETE FROM labels WHERE event_id IN ({marks})", tuple(event_ids)
                )
                deleted = int(cur.rowcount)
            self.conn.execute(f"DELETE FROM decisions WHERE seq IN ({marks})", tuple(seqs))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return deleted

    def begin(self) -> None:
        # SQLite: take the write lock now (waiting up to busy_timeout), not midway
        self.conn.execute("BEGIN IMMEDIATE" if self.mark == "?" else "BEGIN")


def prune_log(
    url: str,
    *,
    older_than_days: float,
    now_ms: int | None = None,
    batch: int = DEFAULT_BATCH,
    pause_s: float = DEFAULT_PAUSE_S,
    dry_run: bool = False,
    force: bool = False,
    connect_timeout_s: int = 10,
) -> PruneResult:
    """Delete the decisions appended more than ``older_than_days`` before ``now_ms`` (default:
    now), and their labels; see the module docstring. Raises DataError for a retention under
    ``MIN_DAYS`` without ``force``, or a source that is not a decision log."""
    if not older_than_days > 0:
        raise DataError(f"--older-than-days must be > 0, got {older_than_days}")
    if older_than_days < MIN_DAYS and not force:
        raise DataError(
            f"--older-than-days {older_than_days:g} is under {MIN_DAYS}: labels (chargebacks, "
            "credit outcomes) may still come for those decisions and would find nothing; "
            "add --force to prune them anyway"
        )
    if batch < 1:
        raise DataError(f"--batch must be >= 1, got {batch}")
    started = time.perf_counter()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff_ms = now - int(older_than_days * DAY_MS)
    log = _open(url, connect_timeout_s)
    try:
        return _prune(log, cutoff_ms, batch, pause_s, dry_run, started)
    finally:
        log.conn.close()


def _prune(
    log: _Log, cutoff_ms: int, batch: int, pause_s: float, dry_run: bool, started: float
) -> PruneResult:
    has_labels = bool(log.one(_HAS_TABLE[log.mark], "labels"))
    decisions = labels = 0
    if dry_run:
        old = "SELECT count(*) FROM decisions WHERE created_at_ms < ?"
        decisions = int(log.one(old, cutoff_ms))
        if has_labels:
            labels = int(
                log.one(
                    "SELECT count(*) FROM labels WHERE event_id IN "
                    "(SELECT event_id FROM decisions WHERE created_at_ms < ?)",
                    cutoff_ms,
                )
            )
    else:
        after = 0
        while rows := log.batch(after, cutoff_ms, batch):
            labels += log.delete([s for s, _ in rows], [e for _, e in rows], has_labels)
            decisions += len(rows)
            after = rows[-1][0]
            if len(rows) == batch and pause_s > 0:
                time.sleep(pause_s)  # the service's commits go first
    total = int(log.one("SELECT count(*) FROM decisions"))
    kept = total - decisions if dry_run else total
    oldest = log.one(
        "SELECT min(created_at_ms) FROM decisions"
        + (" WHERE created_at_ms >= ?" if dry_run else ""),
        *((cutoff_ms,) if dry_run else ()),
    )
    return PruneResult(
        source=log.source,
        cutoff_ms=cutoff_ms,
        decisions=decisions,
        labels=labels,
        kept=kept,
        oldest_kept_ms=None if oldest is None else int(oldest),
        dry_run=dry_run,
        seconds=time.perf_counter() - started,
    )


_HAS_TABLE = {
    "?": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
    "%s": "SELECT count(*) FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND table_name = %s",
}


def _open(url: str, connect_timeout_s: int) -> _Log:
    kind, target = parse_log_url(url, "--log")
    if kind == "sqlite":
        path = Path(target)
        if not path.is_file():
            raise DataError(f"--log: no decision log at {path}")
        conn = sqlite3.connect(path, isolation_level=None, timeout=connect_timeout_s)
        log = _Log(conn, "?", str(path))
    else:
        import psycopg

        from risk_service.decision_log_pg_conn import describe

        source = describe(target)
        try:
            pg = psycopg.connect(target, connect_timeout=connect_timeout_s, autocommit=True)
        except psycopg.OperationalError as exc:
            raise DataError(f"--log: cannot connect to {source}: {exc}") from None
        log = _Log(pg, "%s", source)
    if not log.one(_HAS_TABLE[log.mark], "decisions"):
        log.conn.close()
        raise DataError(f"--log: {log.source} is not a decision log (no decisions table)")
    return log
