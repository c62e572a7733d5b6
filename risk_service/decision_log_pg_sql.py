"""The PostgreSQL decision log's schema, migrations and statements.

The same versions and columns as the SQLite log (``decision_log._MIGRATIONS``),
in PostgreSQL types: jsonb for JSON, double precision, bigint milliseconds,
boolean. Rows travel as ``decision_records`` tuples and are inserted a batch at a
time as one ``INSERT ... SELECT FROM unnest(arrays)`` statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from risk_service.decision_records import (
    DECISION_COLUMNS,
    JSON_COLUMNS,
    LABEL_COLUMNS,
    SCHEMA_VERSION,
    migrate,
)

_DECISIONS_V1 = """(
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL {unique},
    created_at_ms bigint NOT NULL,
    account_hash text,
    body_hash text NOT NULL,
    decision text NOT NULL,
    fraud_probability double precision,
    fraud_score integer,
    credit_pd double precision,
    degraded boolean NOT NULL,
    latency_ms double precision NOT NULL,
    policy_version text NOT NULL,
    model_versions jsonb NOT NULL,
    rules_fired jsonb NOT NULL,
    reasons jsonb NOT NULL,
    features jsonb NOT NULL,
    request jsonb NOT NULL,
    response jsonb
)"""
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE decisions " + _DECISIONS_V1.format(unique="UNIQUE"),
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    ),
    2: (
        "ALTER TABLE decisions ADD COLUMN shadow jsonb",
        """CREATE TABLE labels (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text NOT NULL,
            label text NOT NULL,
            value smallint NOT NULL,
            label_time_ms bigint NOT NULL,
            source text NOT NULL,
            received_at_ms bigint NOT NULL,
            UNIQUE (event_id, label, value, label_time_ms, source)
        )""",
        # Spooled decisions that met another body for their event_id when flushed (only
        # possible if PostgreSQL was away at append time): kept for a human, never dropped.
        "CREATE TABLE decision_conflicts " + _DECISIONS_V1.format(unique=""),
        "ALTER TABLE decision_conflicts ADD COLUMN shadow jsonb",
        "ALTER TABLE decision_conflicts ADD COLUMN detected_at timestamptz NOT NULL DEFAULT now()",
    ),
}

_TYPES = {
    "event_id": "text",
    "created_at_ms": "bigint",
    "account_hash": "text",
    "body_hash": "text",
    "decision": "text",
    "fraud_probability": "float8",
    "fraud_score": "int",
    "credit_pd": "float8",
    "degraded": "bool",
    "latency_ms": "float8",
    "policy_version": "text",
    **{c: "jsonb" for c in JSON_COLUMNS},
}
_LABEL_TYPES = ("text", "text", "smallint", "bigint", "text", "bigint")
_COLS = ", ".join(DECISION_COLUMNS)
# A batch in one statement: one array per column, zipped by ROWS FROM. The JSON columns
# travel as one JSON-array text each (jsonb_array_elements), not as text[] arrays: psycopg
# escapes every quote inside a text[] element in Python (~0.3 ms of GIL per row here),
# while a plain text parameter goes as it is. JSON null comes back as SQL NULL.
_JSON_INDEX = frozenset(i for i, c in enumerate(DECISION_COLUMNS) if c in JSON_COLUMNS)
_SOURCES = ", ".join(
    "jsonb_array_elements(%s::jsonb)" if i in _JSON_INDEX else f"unnest(%s::{_TYPES[c]}[])"
    for i, c in enumerate(DECISION_COLUMNS)
)
_NAMES = [f"c{i}" for i in range(len(DECISION_COLUMNS))]
_PICKS = ", ".join(
    f"NULLIF({n}, 'null'::jsonb)" if i in _JSON_INDEX else n for i, n in enumerate(_NAMES)
)
_ZIPPED = f"SELECT {_PICKS} FROM ROWS FROM ({_SOURCES}) AS r({', '.join(_NAMES)})"
INSERT_DECISIONS = (
    f"INSERT INTO decisions ({_COLS}) {_ZIPPED} "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
# a row kept aside once stays once: a flush repeated after a crash (PostgreSQL committed, the
# spool not yet emptied) offers the same spooled rows, creation instant included, again
INSERT_CONFLICTS = (
    f"INSERT INTO decision_conflicts ({_COLS}) SELECT * FROM ({_ZIPPED}) AS n({_COLS}) "
    "WHERE NOT EXISTS (SELECT 1 FROM decision_conflicts c WHERE c.event_id = n.event_id "
    "AND c.created_at_ms = n.created_at_ms AND c.body_hash = n.body_hash "
    "AND c.decision = n.decision AND c.degraded = n.degraded)"
)
INSERT_LABELS = (
    f"INSERT INTO labels ({', '.join(LABEL_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _LABEL_TYPES)
    + ") ON CONFLICT DO NOTHING"
)
# Read back in the SQLite row shape: JSON as text, the flag as 0/1.
_READ_COLS = ", ".join(
    f"{c}::text" if c in JSON_COLUMNS else "degraded::int" if c == "degraded" else c
    for c in DECISION_COLUMNS
)
SELECT_DECISION = f"SELECT {_READ_COLS} FROM decisions WHERE event_id = %s"
# the other acknowledged answers of an event (same body): see move_rows
SELECT_OTHER_ANSWERS = (
    f"SELECT {_READ_COLS} FROM decision_conflicts c WHERE event_id = %s AND body_hash = "
    "(SELECT body_hash FROM decisions d WHERE d.event_id = c.event_id) ORDER BY detected_at"
)
SELECT_DECISIONS_FROM = (
    f"SELECT seq, {_READ_COLS} FROM decisions WHERE seq > %s ORDER BY seq LIMIT %s"
)
# what a spooled decision is compared with when its event_id is taken: the request and its answer
STORED_ANSWERS = (
    "SELECT event_id, body_hash, decision, degraded FROM decisions WHERE event_id = ANY(%s)"
)
SELECT_LABELS = (
    f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels WHERE event_id = %s "
    "ORDER BY label_time_ms, received_at_ms, seq"
)
SELECT_ALL_LABELS = f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels ORDER BY seq"
COUNT = "SELECT count(*) FROM decisions"
COUNT_AMONG = "SELECT count(*) FROM decisions WHERE event_id = ANY(%s)"
_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.risk_decision_log'))"


def decision_arrays(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Rows (DECISION_COLUMNS order) as one parameter per column: arrays, the flag as a
    boolean, each JSON column as one JSON-array text."""
    columns: list[Any] = [list(c) for c in zip(*rows, strict=True)]
    flag = DECISION_COLUMNS.index("degraded")
    columns[flag] = [bool(v) for v in columns[flag]]
    for i in _JSON_INDEX:  # JSON texts already: joined into one JSON array, not re-encoded
        columns[i] = "[" + ",".join("null" if v is None else v for v in columns[i]) + "]"
    return columns


def label_arrays(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)]


def prepare_schema(
    conn: psycopg.Connection[Any], hash_key: bytes, timeout_s: float, *, where: str
) -> None:
    """Create or migrate the schema and check the key, in one transaction.

    An advisory lock serialises workers starting together; the schema version
    table is created under it, so none of them races another's DDL.
    """
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
        conn.execute(_LOCK)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        migrate(conn, hash_key, MIGRATIONS, where=where, param="%s")


def _answer(row: Sequence[Any]) -> tuple[Any, ...]:
    """(body_hash, decision, degraded) of a decision row in DECISION_COLUMNS order."""
    return (row[3], row[4], bool(row[8]))


def insert_decisions(
    conn: psycopg.Connection[Any], decisions: Sequence[tuple[Any, ...]]
) -> list[tuple[int, tuple[Any, ...] | None]]:
    """Insert decision rows (an event_id logged already is left as it is); returns, for each
    row not inserted, its index and the stored ``_answer`` of its event_id (None if none is
    stored). A row is not inserted when its event_id was logged before, or came earlier in
    ``decisions`` (that one is inserted, the later one compared with it)."""
    if not decisions:
        return []
    cur = conn.execute(INSERT_DECISIONS, decision_arrays(decisions))
    inserted = {r[0] for r in cur.fetchall()}
    rest: list[int] = []
    for i, row in enumerate(decisions):
        if row[0] in inserted:
            inserted.discard(row[0])  # the first of its event_id in the batch went in
        else:
            rest.append(i)
    if not rest:
        return []
    ids = list({decisions[i][0] for i in rest})
    stored = {s[0]: (s[1], s[2], bool(s[3])) for s in conn.execute(STORED_ANSWERS, (ids,))}
    return [(i, stored.get(decisions[i][0])) for i in rest]


def move_rows(
    conn: psycopg.Connection[Any],
    decisions: Sequence[tuple[Any, ...]],
    labels: Sequence[tuple[Any, ...]],
) -> list[str]:
    """Spooled rows into PostgreSQL in one transaction; returns the event_ids kept aside.

    A decision already there with the same body and answer is a no-op (a flush repeated
    after a crash). One there with another body, or with the same body and another answer,
    goes to ``decision_conflicts``, never lost: the latter is a retry that was answered while
    neither Redis (idempotency) nor PostgreSQL (the log) could say the event was known, e.g.
    degraded on one worker while another worker's answer waited in its spool.
    """
    other: list[tuple[Any, ...]] = []
    with conn.transaction():
        for i, stored in insert_decisions(conn, decisions):
            row = decisions[i]
            if stored is not None and stored != _answer(row):
                other.append(row)
        if other:
            conn.execute(INSERT_CONFLICTS, decision_arrays(other))
        if labels:
            conn.execute(INSERT_LABELS, label_arrays(labels))
    return [r[0] for r in other]


__all__ = [
    "COUNT",
    "COUNT_AMONG",
    "INSERT_CONFLICTS",
    "INSERT_DECISIONS",
    "INSERT_LABELS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SELECT_ALL_LABELS",
    "SELECT_DECISION",
    "SELECT_DECISIONS_FROM",
    "SELECT_LABELS",
    "SELECT_OTHER_ANSWERS",
    "STORED_ANSWERS",
    "decision_arrays",
    "insert_decisions",
    "label_arrays",
    "move_rows",
    "prepare_schema",
]
