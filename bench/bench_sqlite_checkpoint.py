"""Benchmark: what SQLite's automatic WAL checkpoint costs the commit that runs it.

Appends decision rows through `SQLiteDecisionLog` (synchronous=NORMAL, as `risk serve`) one
at a time, as a one-thread server does, twice: with SQLite's automatic checkpoints inside the
commits (``checkpoint_interval_s=None``, as the log ran before 2026-12-03 and as the PostgreSQL
log's spools still run) and with the log's checkpoint thread (the service's default). Prints
the latency of one append: p50, p99, p99.9, max, and how many took over 5 ms.

Usage: python bench/bench_sqlite_checkpoint.py [--rows 6000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from risk_service.decision_log import CHECKPOINT_INTERVAL_S, DecisionRecord, SQLiteDecisionLog


def record(i: int) -> DecisionRecord:
    """A row of the size the service logs (~4 KB: request, response, 96 features)."""
    return DecisionRecord(
        event_id=f"ck-{i}-{time.time_ns()}",
        decision="approve",
        body_hash="b" * 64,
        request={"event": {"account_id": f"acct-{i}", "amount": 12.5, "note": "x" * 600}},
        features={f"feature_{j}": float(j) * 1.000001 for j in range(96)},
        response={"decision": "approve", "fraud": {"probability": 0.01, "score": 12}},
        model_versions={"fraud": "fraud-x", "credit": "credit-y"},
        policy_version="policy-z",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    for name, interval in (("in the commits", None), ("own thread", CHECKPOINT_INTERVAL_S)):
        log = SQLiteDecisionLog(
            work / f"{interval}.sqlite",
            b"bench-" + b"k" * 32,
            synchronous="NORMAL",
            checkpoint_interval_s=interval,
        )
        ms = []
        for i in range(args.rows):
            started = time.perf_counter()
            log.append(record(i))
            ms.append((time.perf_counter() - started) * 1000)
        log.close()
        lat = np.asarray(ms)
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
        print(
            f"| checkpoints {name} | {args.rows:,} appends | p50 {p50:.3f} ms | p99 {p99:.3f} ms "
            f"| p99.9 {p999:.2f} ms | max {lat.max():.1f} ms | over 5 ms: {(lat > 5).sum()} |"
        )


if __name__ == "__main__":
    main()
