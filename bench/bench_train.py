"""Benchmark: `risk train` on the default world (10,000 accounts, 120 days, seed 0).

Usage: python bench/bench_train.py [--data DIR]   (simulates the default world into DIR if absent)
Prints the wall time of each stage and a Markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from risk_service import features as fs
from training.simulate import simulate
from training.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    args = parser.parse_args()
    if not (args.data / "events.parquet").is_file():
        start = time.perf_counter()
        simulate(args.data)
        print(f"simulated the default world in {time.perf_counter() - start:.1f} s")
    events = pd.read_parquet(args.data / "events.parquet")
    accounts = pd.read_parquet(args.data / "accounts.parquet")
    start = time.perf_counter()
    fs.compute_offline_features(events, accounts)
    features_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_training(
            data_dir=args.data,
            models_dir=Path(tmp) / "models",
            reports_dir=Path(tmp) / "reports",
            seed=0,
        )
        train_s = time.perf_counter() - start
    cores = os.cpu_count()
    print(
        f"offline features: {len(events):,} events in {features_s:.1f} s "
        f"({len(events) / features_s:,.0f} events/s)"
    )
    print(f"risk train (default world, end to end): {train_s:.1f} s on {cores} cores")
    print(f"| offline features, {len(events):,} events | {features_s:.1f} s | < 30 s |")
    print(f"| risk train, default world | {train_s:.1f} s | < 180 s |")


if __name__ == "__main__":
    main()
