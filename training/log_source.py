"""Reading a decision log for training: the decisions, the features the model saw, the labels.

Reads without the hash key (rows are already pseudonymised) and never writes:
SQLite is opened read-only, PostgreSQL is read through a server-side cursor in
chunks. Decisions still in a service's local spool are not seen until flushed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from risk_service import features as fs
from risk_service.decision_records import LABEL_COLUMNS
from training.datasets import DataError

# What training needs from each logged request's event (identifiers are keyed hashes).
EVENT_FIELDS = (
    "timestamp",
    "account_id",
    "event_type",
    "amount",
    "instrument_id",
    "funding_source",
    "merchant_id",
    "channel",
)
_QUERY = (
    "SELECT event_id, decision, {degraded}, fraud_probability, {features}, {request} "
    "FROM decisions ORDER BY seq"
)
_SQLITE_QUERY = _QUERY.format(degraded="degraded", features="features", request="request")
_PG_QUERY = _QUERY.format(
    degraded="degraded::int", features="features::text", request="request::text"
)
_LABELS_QUERY = f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels ORDER BY seq"


@dataclass
class LogContents:
    """Decisions in log order, their fraud feature vectors, and every label."""

    decisions: pd.DataFrame  # event_id, decision, degraded, fraud_probability, EVENT_FIELDS
    features: np.ndarray  # (n, len(FEATURE_NAMES)) float64, NaN where the log holds null
    complete: np.ndarray  # bool per row: every FEATURE_NAMES entry was logged
    labels: pd.DataFrame  # LABEL_COLUMNS
    source: str
    notes: list[str] = field(default_factory=list)


def parse_log_url(url: str, option: str = "--from-log") -> tuple[str, str]:
    """("sqlite", path) or ("postgresql", url); the forms of DECISION_LOG_URL, or a file path.
    ``option``: the argument the URL came from, for the error."""
    if url.startswith("sqlite:///"):
        return "sqlite", url[len("sqlite:///") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    if "://" not in url and Path(url).is_file():
        return "sqlite", url
    raise DataError(
        f"{option} {url!r}: expected sqlite:///PATH (sqlite:////ABSOLUTE/PATH), "
        "postgresql://HOST/DB, or an existing SQLite file"
    )


def read_log(url: str, *, connect_timeout_s: int = 10) -> LogContents:
    kind, target = parse_log_url(url)
    if kind == "sqlite":
        return _read_sqlite(Path(target))
    return _read_postgresql(target, connect_timeout_s)


def _read_sqlite(path: Path) -> LogContents:
    if not path.is_file():
        raise DataError(f"--from-log: no decision log at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "decisions" not in tables:
            raise DataError(f"--from-log: {path} is not a decision log (no decisions table)")
        contents = _collect(conn.execute(_SQLITE_QUERY), source=str(path))
        if "labels" in tables:
            contents.labels = _labels(conn.execute(_LABELS_QUERY).fetchall())
        else:
            contents.notes.append("the log predates labels (schema version 1): no feedback")
    finally:
        conn.close()
    return contents


def _read_postgresql(url: str, connect_timeout_s: int) -> LogContents:
    import psycopg

    from risk_service.decision_log_pg_conn import describe

    source = describe(url)
    try:
        conn = psycopg.connect(url, connect_timeout=connect_timeout_s, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DataError(f"--from-log: cannot connect to {source}: {exc}") from None
    try:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        }
        if "decisions" not in tables:
            raise DataError(f"--from-log: {source} has no decisions table (in its search_path)")
        with conn.transaction(), conn.cursor(name="risk_train_from_log") as cur:
            cur.itersize = 5000  # streamed: the log may not fit in memory as rows
            cur.execute(_PG_QUERY)
            contents = _collect(cur, source=source)
        if "labels" in tables:
            contents.labels = _labels(conn.execute(_LABELS_QUERY).fetchall())
        else:
            contents.notes.append("the log predates labels (schema version 1): no feedback")
    finally:
        conn.close()
    return contents


def _labels(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    for column in ("value", "label_time_ms", "received_at_ms"):
        frame[column] = frame[column].astype("int64")
    return frame


def _collect(rows: Iterable[tuple[Any, ...]], *, source: str) -> LogContents:
    names = fs.FEATURE_NAMES
    records: list[tuple[Any, ...]] = []
    vectors: list[list[Any]] = []
    complete: list[bool] = []
    for eid, decision, degraded, fp, features, request in rows:
        feats = orjson.loads(features)
        req = orjson.loads(request)
        event = req.get("event", req) if isinstance(req, dict) else {}
        vectors.append([feats.get(n) for n in names])
        complete.append(all(n in feats for n in names))
        fields = [event.get(f) for f in EVENT_FIELDS]
        records.append((eid, decision, bool(degraded), fp, *fields))
    columns = ["event_id", "decision", "degraded", "fraud_probability"]
    frame = pd.DataFrame.from_records(records, columns=columns + list(EVENT_FIELDS))
    matrix = np.array(vectors, dtype=np.float64).reshape(len(vectors), len(names))
    return LogContents(
        decisions=frame,
        features=matrix,
        complete=np.array(complete, dtype=bool),
        labels=pd.DataFrame(columns=list(LABEL_COLUMNS)),
        source=source,
    )


__all__ = ["EVENT_FIELDS", "LogContents", "parse_log_url", "read_log"]
