"""Benchmark: the in-memory feature state over a long replay, forgetting idle entities or not.

The scorer sweeps the in-memory store once a minute of event time (`MemoryStateStore.
forget_idle`, `features/expiry.py`); before 2026-12-03 it kept every entity ever seen.
This script replays the default world's events in time order through the online feature
engine (features, then the state update, as /score does), with fraud labels ingested at
their label_time, in a fresh process per mode, and prints what each process kept:

  forget  a sweep whenever event time passes the next minute, as the scorer does
  keep    no sweep (every entity's state kept for good)

For each: live states and dormant records per kind, the process's resident memory
growth over the replay (ru_maxrss), and the CPU per event; the garbage collector is set as
the service sets it (`service.tune_gc`: young collections only).

The default world's 10,000 accounts all stay active, so little goes idle. ``--churn-days D``
makes a population that churns: every D days of event time the accounts, devices,
instruments, IPs and payees are renamed (a new generation of entities), and the previous
ones go idle for good.

Usage: python bench/bench_state_memory.py [--events 400000] [--churn-days D]
       [--data data/default-world]
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from risk_service.features import MemoryStateStore, OnlineFeatureEngine
from risk_service.features.derived import to_ms
from risk_service.scoring import SWEEP_LIMIT, next_sweep_ms
from risk_service.service import tune_gc

CHURNED = ("account_id", "device_id", "instrument_id", "ip_address", "payee_account_id")


def run(data: Path, events: int, forget: bool, churn_days: float | None) -> dict[str, Any]:
    table = pd.read_parquet(data / "events.parquet")
    table = table.sort_values("timestamp", kind="stable").head(events)
    records = table.to_dict("records")
    if churn_days:
        start = to_ms(records[0]["timestamp"])
        for r in records:
            generation = f"~{int((to_ms(r['timestamp']) - start) // (churn_days * 86_400_000))}"
            for column in CHURNED:
                if isinstance(r.get(column), str):
                    r[column] += generation
    labels = [
        (to_ms(r["label_time"]), i)
        for i, r in enumerate(records)
        if r.get("is_fraud") == 1 and not pd.isna(r.get("label_time"))
    ]
    heapq.heapify(labels)
    del table
    store = MemoryStateStore()
    engine = OnlineFeatureEngine(store)
    tune_gc()  # the service's collector settings: young collections only
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sweep_at = -(2**62)
    started = time.process_time()
    for record in records:
        ms = to_ms(record["timestamp"])
        while labels and labels[0][0] < ms:
            label_ms, i = heapq.heappop(labels)
            engine.ingest_label(records[i], 1, label_ms)
        engine.process(record)
        if forget and ms >= sweep_at:
            sweep_at = next_sweep_ms(ms, engine.forget_idle(ms, SWEEP_LIMIT))
    cpu = time.process_time() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    days = (to_ms(records[-1]["timestamp"]) - to_ms(records[0]["timestamp"])) / 86_400_000
    return {
        "mode": "forget" if forget else "keep",
        "churn_days": churn_days,
        "events": len(records),
        "days": round(days, 1),
        "counts": store.counts(),
        "live_states": sum(live for live, _ in store.counts().values()),
        "dormant": sum(d for _, d in store.counts().values()),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "cpu_us_per_event": round(cpu / len(records) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--churn-days", type=float, default=None)
    parser.add_argument("--mode", choices=["forget", "keep"], help="one mode, in this process")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.data, args.events, args.mode == "forget", args.churn_days)))
        return
    churn = ["--churn-days", str(args.churn_days)] if args.churn_days else []
    results = []
    for mode in ("forget", "keep"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--events", str(args.events),
             "--data", str(args.data), *churn],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        print(json.dumps(r))
    for r in results:
        print(
            f"| {r['mode']} | {r['events']:,} events, {r['days']} days, "
            f"churn {r['churn_days'] or 'none'} | "
            f"{r['live_states']:,} live, {r['dormant']:,} dormant | "
            f"+{r['rss_growth_mb']} MB | {r['cpu_us_per_event']} µs/event |"
        )


if __name__ == "__main__":
    main()
