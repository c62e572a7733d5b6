"""The decision log: every decision, durable before its response goes out, with no personal data.

``DecisionLog`` is the interface; ``SQLiteDecisionLog`` is the embedded default and
``decision_log_pg.PostgresDecisionLog`` the shared one (``open_decision_log`` picks one
from a URL). Besides decisions the log keeps feedback labels (``risk_service.labels``),
so that ``risk train --from-log`` can rebuild a training set from what was decided
and what was learnt since.

**Durability.** ``append`` returns only after the record's transaction has
committed. The database is in WAL mode; with ``synchronous="FULL"`` (the
default) the WAL is fsynced at every commit, so an acknowledged decision
survives a crash of the process *and* of the operating system or a power loss.
With ``synchronous="NORMAL"`` it survives a process crash (the WAL write has
reached the OS) but the last commits may be lost on power loss.

**Group commit.** Concurrent appends share one transaction and one fsync: the
first appender to find no commit in progress becomes the leader, takes every
queued record, writes them in one transaction and wakes the others; appends
that arrived during that commit wait and form the next batch. There is no
background thread, so a lone append pays no hand-off. Each append still
returns only once its own batch has committed. A one-thread worker batches the
requests of one turn of its event loop the same way (`risk_service/turns.py`).

**Checkpoints.** SQLite copies the WAL back into the database file every 1,000 pages
(about 250 decisions), in whichever commit crosses that mark, and that checkpoint syncs the
file: measured at 5-9 ms, during which a one-thread server answers nobody. The log turns
SQLite's automatic checkpoints off on its writer and runs a PASSIVE checkpoint every
``checkpoint_interval_s`` from a thread of its own, on its own connection; a PASSIVE
checkpoint never blocks the writer, and the thread waits for I/O without the GIL. Durability
is unchanged: a commit is durable once in the WAL, checkpointed or not.

**A bounded WAL.** SQLite writes the WAL from its start again only when a write transaction
begins with every frame copied back and no reader on the WAL. Under steady traffic a PASSIVE
checkpoint never sees that moment (a commit always lands while it runs), so the WAL grew by
every decision's pages for as long as traffic lasted: 18 KB a decision, 350 MB after 20,000
(2026-12-04), unbounded on a busy day, and appends slowed as it grew. Each round of the thread
now repeats the PASSIVE checkpoint until a pass finds no new frame, and when the WAL still
holds more than ``RESTART_FRAMES`` it runs a RESTART checkpoint: little is left to copy by
then, so it holds new writers back for ~0.5 ms, and the next commit starts the WAL over.
``journal_size_limit`` then gives back the disk of a WAL that a burst grew. So the WAL holds
about one ``checkpoint_interval_s`` of decisions (`tests/test_decision_log.py`).

**Personal data.** Identifiers that could be personal (account, payee, device,
IP, instrument and merchant ids, wherever they appear in the request or
response) are stored as keyed hashes, HMAC-SHA256 with ``hash_key``, in hex
(``pseudonymise``); event ids are stored as sent (they are the idempotency key
and name no person). Locations are rounded to two decimals (about 1 km). The
log remembers a fingerprint of the key and refuses to open with another one, so
hashes made with two keys never mix in one log.

**Idempotency.** Appending an event_id that is already logged with the same
body hash is a no-op; with a different body hash it raises ``Conflict`` (409).
Adding a label that is already there (``LabelRecord.key``) is a no-op.

**Schema.** ``schema_version`` holds the version; opening a file of an older version
migrates it in place in one transaction (version 2 added ``decisions.shadow`` and the
``labels`` table).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from risk_service.decision_records import (
    DECISION_COLUMNS,
    LABEL,
    LABEL_COLUMNS,
    LOCATION_FIELDS,
    PERSONAL_FIELDS,
    SCHEMA_VERSION,
    DecisionLogError,
    DecisionRecord,
    Pseudonymiser,
    decision_row,
    label_from_row,
    label_row,
    migrate,
    record_from_row,
)
from risk_service.errors import Conflict
from risk_service.group_commit import GroupCommit, Pending
from risk_service.labels import LabelRecord, sort_labels


class DecisionLog(Protocol):
    """Where decisions and their labels go; ``append`` and ``add_label`` are durable on return."""

    def append(self, record: DecisionRecord) -> bool: ...

    def get(self, event_id: str) -> DecisionRecord | None: ...

    def add_label(self, label: LabelRecord) -> None: ...

    def labels(self, event_id: str) -> list[LabelRecord]: ...

    def other_answers(self, event_id: str) -> list[DecisionRecord]: ...

    def count(self) -> int: ...

    def recent(self, since_ms: int, limit: int) -> list[tuple[str, int]]: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # Only the event_id index: every secondary index costs each append ~20 us; seq is
        # already in commit order. Add indexes (account_hash, ...) in a later migration.
        """CREATE TABLE decisions (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            created_at_ms INTEGER NOT NULL,
            account_hash TEXT,
            body_hash TEXT NOT NULL,
            decision TEXT NOT NULL,
            fraud_probability REAL,
            fraud_score INTEGER,
            credit_pd REAL,
            degraded INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            policy_version TEXT NOT NULL,
            model_versions TEXT NOT NULL,
            rules_fired TEXT NOT NULL,
            reasons TEXT NOT NULL,
            features TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    2: (
        "ALTER TABLE decisions ADD COLUMN shadow TEXT",
        # The unique key is LabelRecord.key(): a redelivered label is the same label.
        """CREATE TABLE labels (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            label TEXT NOT NULL,
            value INTEGER NOT NULL,
            label_time_ms INTEGER NOT NULL,
            source TEXT NOT NULL,
            received_at_ms INTEGER NOT NULL,
            UNIQUE (event_id, label, value, label_time_ms, source)
        )""",
    ),
}
RECENT_SLACK_MS = 60_000  # `recent` reads this far past its start: log order ~ creation order
# Column order of a decision row, shared by every backend (and by `risk train --from-log`).
_COLUMNS = ", ".join(DECISION_COLUMNS)
_INSERT = (
    f"INSERT INTO decisions ({_COLUMNS}) VALUES ({', '.join('?' * len(DECISION_COLUMNS))}) "
    "ON CONFLICT (event_id) DO NOTHING"
)
SELECT_DECISION = f"SELECT {_COLUMNS} FROM decisions WHERE event_id = ?"
_LABEL_COLUMNS = ", ".join(LABEL_COLUMNS)
_INSERT_LABEL = (
    f"INSERT INTO labels ({_LABEL_COLUMNS}) VALUES ({', '.join('?' * len(LABEL_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
_SELECT_LABELS = (
    f"SELECT {_LABEL_COLUMNS} FROM labels WHERE event_id = ? "
    "ORDER BY label_time_ms, received_at_ms, seq"
)


CHECKPOINT_INTERVAL_S = 1.0  # the service's log: the WAL holds about a second of decisions
PASSIVE_PASSES = 20  # PASSIVE checkpoints a round, at most, to catch up with the commits
RESTART_FRAMES = 4096  # WAL frames (16 MB of 4 KB pages) over which a round restarts the WAL
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # a larger WAL file is cut to this when it restarts
log = logging.getLogger("risk_service.decision_log")


class SQLiteDecisionLog:
    """The decision log in one SQLite file (WAL, group commit); safe to share across threads.

    The PostgreSQL log also uses one as its local spool, through ``submit_rows``,
    ``oldest`` and ``forget``.
    """

    def __init__(
        self,
        path: str | Path,
        hash_key: bytes,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        busy_timeout_ms: int = 5000,
        checkpoint_interval_s: float | None = None,
    ) -> None:
        """``checkpoint_interval_s``: checkpoint from a thread of the log's own that often (see
        the module docstring); None leaves SQLite's automatic checkpoints in the commits."""
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, EXTRA or NORMAL, got {synchronous!r}")
        if checkpoint_interval_s is not None and not checkpoint_interval_s > 0:
            raise ValueError(f"checkpoint_interval_s must be > 0, got {checkpoint_interval_s}")
        self.path = Path(path)
        self.pseudonymise = Pseudonymiser(hash_key)
        self._group = GroupCommit(
            lambda batch: self._commit(batch),  # late-bound: tests count batches
            max_batch=max_batch,
            closed_error=lambda: DecisionLogError("the decision log is closed"),
        )
        self._read_lock = threading.Lock()
        self._writer = self._connect(synchronous, busy_timeout_ms)
        try:
            self._migrate(hash_key)
            self._reader = self._connect(synchronous, busy_timeout_ms)
        except BaseException:
            self._writer.close()
            raise
        self.checkpoints = 0  # done by the checkpoint thread
        self.wal_restarts = 0  # RESTART checkpoints among them
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        if checkpoint_interval_s is not None:
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_every,
                args=(checkpoint_interval_s, self._connect(synchronous, busy_timeout_ms)),
                name="decision-log-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()

    # -- opening -----------------------------------------------------------------------------
    def _connect(self, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DecisionLogError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, hash_key: bytes) -> None:
        """Create or upgrade the schema in one transaction; refuse a newer schema or another key."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            migrate(conn, hash_key, _MIGRATIONS, where=str(self.path), param="?")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- writing -----------------------------------------------------------------------------
    def _row(self, r: DecisionRecord) -> tuple[Any, ...]:
        return decision_row(self.pseudonymise, r)

    def append(self, record: DecisionRecord) -> bool:
        """Log one decision; returns once it is committed (see the module docstring): True,
        or False when its event_id was logged already with the same body (nothing written)."""
        pending = Pending(self._row(record))
        self._submit([pending])
        if pending.error is not None:
            raise pending.error
        return not pending.existed

    def add_label(self, label: LabelRecord) -> None:
        """Keep one label; returns once it is committed. A label already kept is a no-op."""
        pending = Pending(label_row(label), LABEL)
        self._submit([pending])
        if pending.error is not None:
            raise pending.error

    def submit_rows(self, rows: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Exception | None]:
        """Commit prebuilt ``(DECISION | LABEL, row)`` pairs; the error of each (None: kept)."""
        pendings = [Pending(row, kind) for kind, row in rows]
        self._submit(pendings)
        return [p.error for p in pendings]

    def _submit(self, pendings: list[Pending]) -> None:
        """Queue rows and wait until their batches have committed (group_commit.py)."""
        self._group.submit(pendings)

    def _commit(self, batch: list[Pending]) -> None:
        """One transaction, one fsync, for the whole batch; marks each pending done or failed."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in batch:
                if p.kind == LABEL:
                    conn.execute(_INSERT_LABEL, p.row)
                elif conn.execute(_INSERT, p.row).rowcount == 0:
                    p.existed = True
                    stored = conn.execute(
                        "SELECT body_hash FROM decisions WHERE event_id = ?", (p.row[0],)
                    ).fetchone()
                    if stored is not None and stored[0] != p.row[3]:
                        p.error = Conflict(
                            f"event_id {p.row[0]!r} is already logged with a different body",
                            field="event_id",
                        )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for p in batch:
                p.error = DecisionLogError(f"decision log write failed: {exc}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for p in batch:
                p.error = DecisionLogError("decision log write interrupted")
            raise
        finally:
            for p in batch:
                p.done = True

    def forget(self, decision_seqs: Sequence[int], label_seqs: Sequence[int]) -> None:
        """Delete rows by seq (the spool, once they are safe elsewhere); waits for the writer."""
        with self._group.exclusive():
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table, seqs in (("decisions", decision_seqs), ("labels", label_seqs)):
                    conn.executemany(f"DELETE FROM {table} WHERE seq = ?", [(s,) for s in seqs])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _checkpoint_every(self, interval_s: float, conn: sqlite3.Connection) -> None:
        """The checkpoint thread: a round of checkpoints per interval until the log closes."""
        try:
            while not self._stop_checkpoints.wait(interval_s):
                try:
                    self._checkpoint_round(conn)
                except sqlite3.Error:  # e.g. the disk is full: the commits will say so
                    log.warning("decision log checkpoint failed", exc_info=True)
        finally:
            conn.close()

    def _checkpoint_round(self, conn: sqlite3.Connection) -> None:
        """PASSIVE checkpoints until one finds no new frame (never blocking the writer), then
        a RESTART if the WAL still holds over ``RESTART_FRAMES`` (see the module docstring)."""
        seen = -1
        for _ in range(PASSIVE_PASSES):
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            if frames == seen and copied >= frames:
                break  # a whole pass without a commit: the next one may start the WAL over
            seen = frames
        if frames > RESTART_FRAMES:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.checkpoints += 1
            self.wal_restarts += 1

    # -- reading -----------------------------------------------------------------------------
    def get(self, event_id: str) -> DecisionRecord | None:
        """The logged record (identifiers as their hashes), or None."""
        with self._read_lock:
            row = self._reader.execute(SELECT_DECISION, (event_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def other_answers(self, event_id: str) -> list[DecisionRecord]:
        """None here: one process answers every request, so a retry is always recognised
        (the PostgreSQL log can hold some, `PostgresDecisionLog.other_answers`)."""
        return []

    def labels(self, event_id: str) -> list[LabelRecord]:
        """Every label kept for the event, by label time then receipt time."""
        with self._read_lock:
            rows = self._reader.execute(_SELECT_LABELS, (event_id,)).fetchall()
        return sort_labels(label_from_row(r) for r in rows)

    def oldest(
        self, limit: int
    ) -> tuple[list[tuple[int, tuple[Any, ...]]], list[tuple[int, tuple[Any, ...]]]]:
        """Up to ``limit`` decision rows and label rows, oldest first, each with its seq."""
        with self._read_lock:
            decisions = self._reader.execute(
                f"SELECT seq, {_COLUMNS} FROM decisions ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            labels = self._reader.execute(
                f"SELECT seq, {_LABEL_COLUMNS} FROM labels ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(r[0], tuple(r[1:])) for r in decisions], [(r[0], tuple(r[1:])) for r in labels]

    def count(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM decisions").fetchone()[0])

    def event_ids(self) -> list[str]:
        """The event_id of every logged decision (a spool's, to count it against PostgreSQL)."""
        with self._read_lock:
            return [r[0] for r in self._reader.execute("SELECT event_id FROM decisions")]

    def recent(self, since_ms: int, limit: int) -> list[tuple[str, int]]:
        """(event_id, created_at_ms) of the decisions created since ``since_ms``, newest first,
        at most ``limit``: read backwards in log order (appends follow creation within
        seconds), stopping a minute before ``since_ms``."""
        out: list[tuple[str, int]] = []
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT event_id, created_at_ms FROM decisions ORDER BY seq DESC LIMIT ?", (limit,)
            )
            for event_id, created_ms in rows:
                if created_ms < since_ms - RECENT_SLACK_MS:
                    break
                if created_ms >= since_ms:
                    out.append((str(event_id), int(created_ms)))
        return out

    def count_labels(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM labels").fetchone()[0])

    def status(self) -> dict[str, Any]:
        """For /ready and metrics: the backend; nothing is ever spooled here."""
        return {"backend": "sqlite", "path": str(self.path), "spooled": 0}

    def close(self) -> None:
        """Refuse new appends, let a commit in progress finish, checkpoint and close."""
        if not self._group.close():
            return
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
        with self._read_lock:
            self._reader.close()
        self._writer.close()  # the last connection: SQLite checkpoints what is left

    def __enter__(self) -> SQLiteDecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_spool_dir(path: str | Path) -> Path:
    """Where local durable files go when DECISION_LOG_SPOOL_DIR is not set: beside the log."""
    return Path(path).parent / "spool"


def open_decision_log(
    url: str | None,
    *,
    path: str | Path,
    hash_key: bytes,
    synchronous: str = "FULL",
    spool_dir: str | Path | None = None,
    timeout_ms: int = 1000,
    hedge_ms: float | None = None,
) -> DecisionLog:
    """The log a configuration names (DECISION_LOG_URL, _PATH, _SYNC, _SPOOL_DIR, _TIMEOUT_MS,
    _HEDGE_MS).

    ``url`` None or empty: SQLite at ``path``; ``sqlite:///relative`` or
    ``sqlite:////absolute``: SQLite there; ``postgresql://...`` or ``postgres://...``:
    PostgreSQL, spooling to ``spool_dir`` (default: ``spool/`` beside ``path``).
    """
    if not url:
        target = Path(path)
    elif url.startswith("sqlite:///"):
        target = Path(url[len("sqlite:///") :])
        if not str(target):
            raise ValueError("DECISION_LOG_URL sqlite:/// needs a file path after the slashes")
    elif url.startswith(("postgresql://", "postgres://")):
        from risk_service.decision_log_pg import PostgresDecisionLog

        spool = Path(spool_dir) if spool_dir else default_spool_dir(path)
        return PostgresDecisionLog(
            url, hash_key, spool_path=spool, timeout_ms=timeout_ms, hedge_ms=hedge_ms
        )
    else:
        scheme = url.split(":", 1)[0]
        raise ValueError(
            f"DECISION_LOG_URL scheme {scheme!r} is not supported: use sqlite:///PATH or "
            "postgresql://..."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteDecisionLog(
        target, hash_key, synchronous=synchronous, checkpoint_interval_s=CHECKPOINT_INTERVAL_S
    )


__all__ = [
    "DECISION_COLUMNS",
    "LABEL_COLUMNS",
    "LOCATION_FIELDS",
    "PERSONAL_FIELDS",
    "SCHEMA_VERSION",
    "DecisionLog",
    "DecisionLogError",
    "DecisionRecord",
    "LabelRecord",
    "Pseudonymiser",
    "SQLiteDecisionLog",
    "open_decision_log",
]
