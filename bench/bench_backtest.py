"""Benchmark: `risk backtest` end to end in one process, against replaying the same events
through the online path (OnlineFeatureEngine.process + fraud model + policy, per event).

The online replay is timed on the first `--sample` events and extrapolated to all of them.
Prints Markdown rows for docs/benchmarks.md.

Usage: python bench/bench_backtest.py [--data data/default-world] [--sample 20000] [--reasons]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from risk_service.features import OnlineFeatureEngine
from risk_service.policy import default_policy_path
from risk_service.scores import decide
from risk_service.scoring import FeatureView
from training.backtest import load_candidates, run_backtest
from training.backtest_scoring import FRAUD_INDEX, request_events


def online_seconds_per_event(data: Path, sample: int) -> float:
    """Per-event cost of features + state update, fraud model and policy, on the service's
    objects (single-row prediction, as on the request path)."""
    events = pd.read_parquet(data / "events.parquet").head(sample)
    accounts = pd.read_parquet(data / "accounts.parquet")
    candidate = load_candidates(Path("models"), [], [default_policy_path()], [])[0]
    engine = OnlineFeatureEngine()
    for row in accounts.to_dict(orient="records"):
        engine.ingest_profile(row)
    batch = request_events(events)
    started = time.perf_counter()
    for event in batch:
        x = engine.process(event)
        p = float(candidate.fraud.predict_proba(x.reshape(1, -1))[0])
        candidate.policy.evaluate(
            event, FeatureView(x, FRAUD_INDEX), decide(p, candidate.fraud.thresholds)
        )
    return (time.perf_counter() - started) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--reasons", action="store_true", help="include TreeSHAP reasons")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = run_backtest(
            data_dir=args.data, models_dir=Path("models"), out_dir=Path(out), reasons=args.reasons
        )
        seconds = time.perf_counter() - started
    n = len(run.events)
    per_event = online_seconds_per_event(args.data, args.sample)
    online = per_event * n
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items())
    what = "with reasons" if args.reasons else "without reasons"
    print("| what | events | seconds | events/s | online replay (extrapolated) | speed-up |")
    print("|---|---|---|---|---|---|")
    print(
        f"| `risk backtest`, one process, {what} ({steps}) | {n:,} | {seconds:.1f} | "
        f"{n / seconds:,.0f} | {online:.0f} s ({per_event * 1e6:.0f} µs/event on "
        f"{args.sample:,}) | {online / seconds:.1f}x |"
    )


if __name__ == "__main__":
    main()
