"""The decision log: every decision, durable before its response goes out, with no personal data.

``DecisionLog`` is the interface (the production issue backs it with
PostgreSQL); ``SQLiteDecisionLog`` is the embedded default.

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
returns only once its own batch has committed.

**Personal data.** Identifiers that could be personal (account, payee, device,
IP, instrument and merchant ids, wherever they appear in the request or
response) are stored as keyed hashes, HMAC-SHA256 with ``hash_key``, in hex
(``pseudonymise``); event ids are stored as sent (they are the idempotency key
and name no person). Locations are rounded to two decimals (about 1 km). The
log remembers a fingerprint of the key and refuses to open with another one, so
hashes made with two keys never mix in one log.

**Idempotency.** Appending an event_id that is already logged with the same
body hash is a no-op; with a different body hash it raises ``Conflict`` (409).
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from risk_service.errors import Conflict

SCHEMA_VERSION = 1
PERSONAL_FIELDS: frozenset[str] = frozenset(
    {"account_id", "payee_account_id", "device_id", "ip_address", "instrument_id", "merchant_id"}
)
LOCATION_FIELDS: frozenset[str] = frozenset(
    {"latitude", "longitude", "home_latitude", "home_longitude"}
)
LOCATION_DECIMALS = 2
MIN_KEY_BYTES = 16
_KEY_CHECK = b"risk-service decision log key check"
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class DecisionLogError(RuntimeError):
    """The log could not make a record durable (the decision must not be answered as logged)."""


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as the scoring core made it (identifiers in the clear; the log hashes them).

    ``request`` is the validated body, e.g. ``{"event": {...}, "account": {...},
    "explain": false}``. ``features`` maps names to values (NaN is stored as
    null). ``created_at_ms`` defaults to the time of the append. A record read
    back with ``get`` has its identifiers already replaced by their hashes.
    """

    event_id: str
    decision: str
    body_hash: str
    request: Mapping[str, Any]
    features: Mapping[str, float | None] = field(default_factory=dict)
    fraud_probability: float | None = None
    fraud_score: int | None = None
    credit_pd: float | None = None
    rules_fired: Sequence[Mapping[str, Any]] = ()
    reasons: Sequence[Mapping[str, Any]] = ()
    model_versions: Mapping[str, str | None] = field(default_factory=dict)
    policy_version: str = ""
    degraded: bool = False
    latency_ms: float = 0.0
    created_at_ms: int | None = None
    response: Mapping[str, Any] | None = None


class DecisionLog(Protocol):
    """Where decisions go; ``append`` is durable when it returns."""

    def append(self, record: DecisionRecord) -> None: ...

    def get(self, event_id: str) -> DecisionRecord | None: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class Pseudonymiser:
    """Keyed hashing of identifiers: HMAC-SHA256(hash_key, utf-8 value), lowercase hex."""

    def __init__(self, hash_key: bytes) -> None:
        if not isinstance(hash_key, bytes) or len(hash_key) < MIN_KEY_BYTES:
            raise ValueError(f"hash_key must be at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(hash_key, digestmod=hashlib.sha256)

    def __call__(self, value: str) -> str:
        mac = self._mac.copy()
        mac.update(value.encode("utf-8"))
        return mac.hexdigest()

    def scrub(self, obj: Any) -> Any:
        """A copy of ``obj`` with personal identifiers hashed and locations coarsened."""
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            for key, value in obj.items():
                if key in PERSONAL_FIELDS and isinstance(value, str):
                    out[key] = self(value)
                elif key in LOCATION_FIELDS and isinstance(value, float):
                    out[key] = round(value, LOCATION_DECIMALS)
                elif isinstance(value, (Mapping, list, tuple)):
                    out[key] = self.scrub(value)
                else:
                    out[key] = value
            return out
        if isinstance(obj, (list, tuple)):
            return [self.scrub(x) for x in obj]
        return obj


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
}
_COLUMNS = (
    "event_id, created_at_ms, account_hash, body_hash, decision, fraud_probability, "
    "fraud_score, credit_pd, degraded, latency_ms, policy_version, model_versions, "
    "rules_fired, reasons, features, request, response"
)
_INSERT = (
    f"INSERT INTO decisions ({_COLUMNS}) VALUES ({', '.join('?' * 17)}) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_SELECT = f"SELECT {_COLUMNS} FROM decisions WHERE event_id = ?"


class _Pending:
    """One append waiting for its batch to commit."""

    __slots__ = ("done", "error", "row")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.done = False
        self.error: Exception | None = None


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=_JSON_OPTS).decode()


class SQLiteDecisionLog:
    """The decision log in one SQLite file (WAL, group commit); safe to share across threads."""

    def __init__(
        self,
        path: str | Path,
        hash_key: bytes,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        busy_timeout_ms: int = 5000,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, EXTRA or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.pseudonymise = Pseudonymiser(hash_key)
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        self._closed = False
        self._read_lock = threading.Lock()
        self._writer = self._connect(synchronous, busy_timeout_ms)
        try:
            self._migrate(hash_key)
            self._reader = self._connect(synchronous, busy_timeout_ms)
        except BaseException:
            self._writer.close()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _connect(self, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise DecisionLogError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        return conn

    def _migrate(self, hash_key: bytes) -> None:
        """Create or upgrade the schema in one transaction; refuse a newer schema or another key."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = int(row[0] or 0)
            if version > SCHEMA_VERSION:
                raise DecisionLogError(
                    f"{self.path}: schema version {version} is newer than this code "
                    f"({SCHEMA_VERSION}); upgrade risk-service"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[v]:
                    conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (v,))
            check = hmac.new(hash_key, _KEY_CHECK, hashlib.sha256).hexdigest()[:16]
            stored = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            if stored is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (check,))
            elif stored[0] != check:
                raise DecisionLogError(
                    f"{self.path}: hash_key differs from the key this log was written with"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- writing -----------------------------------------------------------------------------
    def _row(self, r: DecisionRecord) -> tuple[Any, ...]:
        """The row to insert, built by the caller (hashing and JSON stay off the commit path)."""
        scrub = self.pseudonymise.scrub
        event = r.request.get("event", r.request)
        account = event.get("account_id") if isinstance(event, Mapping) else None
        created = r.created_at_ms if r.created_at_ms is not None else time.time_ns() // 1_000_000
        return (
            r.event_id,
            int(created),
            self.pseudonymise(account) if isinstance(account, str) else None,
            r.body_hash,
            r.decision,
            None if r.fraud_probability is None else float(r.fraud_probability),
            None if r.fraud_score is None else int(r.fraud_score),
            None if r.credit_pd is None else float(r.credit_pd),
            int(bool(r.degraded)),
            float(r.latency_ms),
            r.policy_version,
            _dumps(r.model_versions),
            _dumps(list(r.rules_fired)),
            _dumps(scrub(list(r.reasons))),
            _dumps(r.features),
            _dumps(scrub(r.request)),
            None if r.response is None else _dumps(scrub(r.response)),
        )

    def append(self, record: DecisionRecord) -> None:
        """Log one decision; returns once it is committed (see the module docstring)."""
        pending = _Pending(self._row(record))
        with self._cond:
            if self._closed:
                raise DecisionLogError("the decision log is closed")
            self._queue.append(pending)
        while True:
            with self._cond:
                while not pending.done and self._writing:
                    self._cond.wait()
                if pending.done:
                    break
                self._writing = True  # the leader: commit what is queued, oldest first
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if pending.error is not None:
            raise pending.error

    def _commit(self, batch: list[_Pending]) -> None:
        """One transaction, one fsync, for the whole batch; marks each pending done or failed."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in batch:
                if conn.execute(_INSERT, p.row).rowcount == 0:
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

    # -- reading -----------------------------------------------------------------------------
    def get(self, event_id: str) -> DecisionRecord | None:
        """The logged record (identifiers as their hashes), or None."""
        with self._read_lock:
            row = self._reader.execute(_SELECT, (event_id,)).fetchone()
        if row is None:
            return None
        (eid, created, _acct, body_hash, decision, fp, fs, cpd, degraded, latency, pv,
         mv, rules, reasons, features, request, response) = row  # fmt: skip
        return DecisionRecord(
            event_id=eid,
            decision=decision,
            body_hash=body_hash,
            request=orjson.loads(request),
            features=orjson.loads(features),
            fraud_probability=fp,
            fraud_score=fs,
            credit_pd=cpd,
            rules_fired=orjson.loads(rules),
            reasons=orjson.loads(reasons),
            model_versions=orjson.loads(mv),
            policy_version=pv,
            degraded=bool(degraded),
            latency_ms=latency,
            created_at_ms=created,
            response=None if response is None else orjson.loads(response),
        )

    def count(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM decisions").fetchone()[0])

    def close(self) -> None:
        """Refuse new appends, let a commit in progress finish, checkpoint and close."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._writing or self._queue:
                self._cond.wait()
        with self._read_lock:
            self._reader.close()
        self._writer.close()

    def __enter__(self) -> SQLiteDecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "LOCATION_FIELDS",
    "PERSONAL_FIELDS",
    "DecisionLog",
    "DecisionLogError",
    "DecisionRecord",
    "Pseudonymiser",
    "SQLiteDecisionLog",
]
