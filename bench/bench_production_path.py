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

(Until 2026-11 it also compared three ways of sending the log's INSERT; the service now uses
the cheapest, JSON columns as JSON-array text: docs/benchmarks.md, finding 2.)

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
    timed(redis_state.RedisState, "fetch_into", "Redis extra MGET (a state not prefetched)")
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


if __name__ == "__main__":
    main()
