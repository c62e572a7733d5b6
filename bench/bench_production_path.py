"""Benchmark: where the CPU of one POST /score goes on the production stores, in one thread.

bench_service.py --production measures the service over HTTP on a shared 2-core machine, where
waiting for a core blurs every wall-clock time. CPU time is much less affected, so this script
replays default-world events through the Flask test client of an app on the machine's Redis
and PostgreSQL (a fresh key prefix and schema, removed after; profiles loaded as in
bench_service.py), one request at a time, and times each part of the request path with the
thread's CPU clock (and the wall clock, for the round trips): Redis begin, the extra MGET of
the account's payee state, features and state update, Redis commit, TreeSHAP reasons, the
PostgreSQL append and the access-log line. The same run with the SQLite decision log gives the
PostgreSQL append's share by difference.

Then it compares, on real decision rows, the client CPU of the decision log's INSERT
(``INSERT ... SELECT FROM unnest(text arrays)``, whose array dumper escapes every quote of the
JSON columns with a Python-level regex callback) with two alternatives: the rows as plain
parameters (``executemany`` in a transaction, which psycopg pipelines into one round trip),
and the same single statement with each JSON column sent as one JSON array text
(``jsonb_array_elements`` zipped with the other columns' ``unnest`` by ``ROWS FROM``: nothing
to escape); the last one's stored rows are checked identical to the service's.

Usage: python bench/bench_production_path.py [--requests 3000] [--warmup 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import production_stores
from bench_service import write_bodies

HASH_KEY = "bench-" + "k" * 32
CPU: dict[str, list[tuple[float, float]]] = defaultdict(list)


def timed(owner: Any, name: str, label: str) -> None:
    """Record the thread CPU and wall time of every call of owner.name under `label`."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            CPU[label].append((time.thread_time() - cpu, time.perf_counter() - wall))

    setattr(owner, name, wrapper)


def instrument() -> None:
    from risk_service import decision_log_pg, logs, redis_state, scoring
    from risk_service.features import online

    timed(redis_state.RedisState, "begin", "Redis begin (MGET)")
    timed(redis_state.RedisState, "fetch_into", "Redis extra MGET (payee state of the account)")
    timed(online.OnlineFeatureEngine, "process", "features + state update (blobs decoded)")
    timed(redis_state.RedisState, "commit", "Redis commit (blobs encoded, Lua script)")
    timed(scoring.Scorer, "_fraud_reasons", "TreeSHAP reasons")
    timed(decision_log_pg.PostgresDecisionLog, "append", "PostgreSQL append")
    timed(logs, "access", "access log line")


def replay(
    stores: production_stores.ProductionStores, log: str, bodies: list[str], warm: int, work: Path
):
    """CPU per request (ms) after `warm` requests, and the parts' totals; CPU is cleared."""
    from risk_service import create_app

    config = {
        **{k[len("RISK_") :]: v for k, v in stores.env().items()},
        "STATE_TIMEOUT_MS": 2000.0,  # one thread, no deadline pressure: nothing degrades
        "DECISION_LOG_PATH": str(work / log / "decisions.sqlite"),
        "HASH_KEY": HASH_KEY,
        "MAX_LATENESS_SECONDS": 10**9,
        "RELOAD_INTERVAL_SECONDS": 0,
    }
    if log == "sqlite":
        del config["DECISION_LOG_URL"]
    app = create_app(config)
    client = app.test_client()
    per_request: list[float] = []
    with contextlib.redirect_stderr(io.StringIO()):  # the access log: counted, not shown
        for i, body in enumerate(bodies):
            if i == warm:
                CPU.clear()
            started = time.thread_time()
            response = client.post(
                "/score", data=body.replace("__ID__", f"{log}-{i}"), content_type="application/json"
            )
            if i >= warm:
                per_request.append(time.thread_time() - started)
            if response.status_code != 200:
                sys.exit(f"/score answered {response.status_code}: {response.data[:300]!r}")
    app.extensions["risk"].log.close()
    n = len(per_request)
    parts = {
        label: {
            "calls_per_request": len(calls) / n,
            "cpu_ms_per_request": 1000 * sum(c for c, _ in calls) / n,
            "wall_ms_per_call_p50": 1000 * statistics.median(w for _, w in calls),
        }
        for label, calls in CPU.items()
    }
    CPU.clear()
    return {
        "cpu_ms_mean": 1000 * statistics.mean(per_request),
        "cpu_ms_p50": 1000 * statistics.median(per_request),
        "parts": parts,
    }


def insert_variants(stores: production_stores.ProductionStores, rows: int) -> dict[str, Any]:
    """Client CPU per row of the log's INSERT, as the service sends it and as plain parameters."""
    import psycopg

    from risk_service.decision_log_pg_sql import _TYPES, INSERT_DECISIONS, decision_arrays
    from risk_service.decision_records import DECISION_COLUMNS, dumps

    conn = psycopg.connect(stores.pg_url, autocommit=True)
    stored = conn.execute(
        f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions ORDER BY seq DESC LIMIT %s", (rows,)
    ).fetchall()
    json_cols = [i for i, c in enumerate(DECISION_COLUMNS) if _TYPES[c] == "jsonb"]
    as_text = [
        tuple(dumps(v) if i in json_cols and v is not None else v for i, v in enumerate(r))
        for r in stored
    ]
    params = ", ".join(f"%s::{_TYPES[c]}" for c in DECISION_COLUMNS)
    plain = (
        f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES ({params}) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )
    # one statement as now, but each JSON column travels as one JSON array text (no escaping)
    # and is zipped with the other columns' arrays by ROWS FROM
    sources = ", ".join(
        "jsonb_array_elements(%s::jsonb)" if i in json_cols else f"unnest(%s::{_TYPES[c]}[])"
        for i, c in enumerate(DECISION_COLUMNS)
    )
    names = [f"c{i}" for i in range(len(DECISION_COLUMNS))]
    picks = ", ".join(
        f"NULLIF({n}, 'null'::jsonb)" if i in json_cols else n for i, n in enumerate(names)
    )
    zipped = (
        f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) SELECT {picks} "
        f"FROM ROWS FROM ({sources}) AS r({', '.join(names)}) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )

    def json_arrays(chunk: list[tuple[Any, ...]]) -> list[Any]:
        columns = decision_arrays(chunk)
        for i in json_cols:
            columns[i] = "[" + ",".join("null" if v is None else v for v in columns[i]) + "]"
        return columns

    out: dict[str, Any] = {}
    variants = (
        "unnest arrays (the service)",
        "executemany in a transaction",
        "one statement, JSON columns as JSON arrays",
    )
    for batch in (1, 4):
        for variant in variants:
            cpu: list[float] = []
            wall: list[float] = []
            for start in range(0, len(as_text) - batch + 1, batch):
                chunk = [
                    (f"variant-{batch}-{len(out)}-{start + k}", *r[1:])
                    for k, r in enumerate(as_text[start : start + batch])
                ]
                c0, w0 = time.thread_time(), time.perf_counter()
                if variant == variants[0]:
                    conn.execute(INSERT_DECISIONS, decision_arrays(chunk)).fetchall()
                elif variant == variants[1]:
                    with conn.transaction():
                        conn.cursor().executemany(plain, chunk, returning=True)
                else:
                    conn.execute(zipped, json_arrays(chunk)).fetchall()
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - w0)
            out[f"batch {batch}: {variant}"] = {
                "client_cpu_ms_per_row": 1000 * sum(cpu) / (len(cpu) * batch),
                "wall_ms_per_batch_p50": 1000 * statistics.median(wall),
            }
    cols = ", ".join(c for c in DECISION_COLUMNS if c != "event_id")
    same = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT {cols} FROM decisions WHERE event_id LIKE 'variant-1-0-%' "
        f"EXCEPT SELECT {cols} FROM decisions WHERE event_id LIKE 'variant-1-2-%') d"
    ).fetchone()
    if same is None or same[0] != 0:
        sys.exit("the JSON-array variant stored other rows than the service's statement")
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per log")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before measuring")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-path-"))
    write_bodies(args.data, work / "bodies.jsonl", 2 * (args.warmup + args.requests))
    bodies = (work / "bodies.jsonl").read_text().splitlines()
    half = args.warmup + args.requests
    instrument()
    stores = production_stores.ProductionStores()
    try:
        stores.load_profiles(args.data / "accounts.parquet", HASH_KEY.encode())
        # each log gets its own stretch of the stream: both warm the state the same way
        pg = replay(stores, "pg", bodies[:half], args.warmup, work)
        sqlite = replay(stores, "sqlite", bodies[half:], args.warmup, work)
        variants = insert_variants(stores, 400)
    finally:
        stores.close()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"/score CPU per request, one thread: PostgreSQL log {pg['cpu_ms_mean']:.3f} ms mean, "
        f"SQLite log {sqlite['cpu_ms_mean']:.3f} ms mean"
    )
    print("| part | calls per request | CPU per request | wall per call, p50 |")
    print("|---|---|---|---|")
    for label, part in pg["parts"].items():
        print(
            f"| {label} | {part['calls_per_request']:.2f} | {part['cpu_ms_per_request']:.3f} ms "
            f"| {part['wall_ms_per_call_p50']:.3f} ms |"
        )
    print("| decision-log INSERT | client CPU per row | wall per batch, p50 |")
    print("|---|---|---|")
    for label, v in variants.items():
        print(
            f"| {label} | {v['client_cpu_ms_per_row']:.3f} ms "
            f"| {v['wall_ms_per_batch_p50']:.3f} ms |"
        )


if __name__ == "__main__":
    main()
