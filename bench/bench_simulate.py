"""Times the default synthetic world (10 000 accounts x 120 days) end to end, files included.

Run: python bench/bench_simulate.py [--accounts N] [--days D] [--fmt parquet|csv]
Prints events per second and a Markdown table row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from training.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fmt", default="parquet", choices=["parquet", "csv"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = simulate(
            Path(tmp), accounts=args.accounts, days=args.days, seed=args.seed, fmt=args.fmt
        )
        seconds = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
    events = manifest["rows"]["events"]
    print(f"{events:,} events in {seconds:.1f} s = {events / seconds:,.0f} events/s")
    print(f"fraud rate {manifest['fraud_rate']:.4f}, default rate {manifest['default_rate']:.3f}")
    print(f"scenarios {manifest['scenarios']}")
    print()
    print("| benchmark | accounts x days | events | seconds | events/s | output MB | machine |")
    print("|---|---|---|---|---|---|---|")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU, Python {platform.python_version()}"
    print(
        f"| simulate ({args.fmt}) | {args.accounts} x {args.days} | {events:,} | {seconds:.1f} "
        f"| {events / seconds:,.0f} | {size_mb:.0f} | {machine} |"
    )


if __name__ == "__main__":
    main()
