"""Benchmark: pauses and memory of a long-running embedded service, in process.

Throughput hides what a long run does to the tail: garbage-collector pauses that grow
with the online state, and memory that grows with every remembered event. This script
calls the WSGI app directly (as `bench_request_cpu.py`), one /score after another, and
reports the wall time of each request (p50 ... max) and every garbage collection (its
generation and pause, through `gc.callbacks`). With --memory it reports instead the memory
the process keeps per request (`tracemalloc` over the measured requests, after the warm-up;
tracemalloc slows every allocation, so that run's latencies are not comparable).

Configurations, each in a fresh process so that they do not share a heap:
  --gc tuned     the service's `tune_gc` (the default)
  --gc python    CPython's own thresholds, nothing frozen
  --gc previous  the settings before 2026-12-03's change: (50000, 50, 100000), frozen
  --memory-events N   IDEMPOTENCY_MEMORY_EVENTS (default: the service's)

Usage: python bench/bench_pauses.py [--warmup 20000] [--events 40000] [--gc tuned] [--memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench_request_cpu import bench_app, call, fresh_bodies

from risk_service.config import DEFAULTS
from risk_service.service import tune_gc


def set_gc(mode: str) -> None:
    if mode == "tuned":
        tune_gc()
    elif mode == "previous":
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100_000)
    elif mode != "python":
        raise SystemExit(f"--gc must be tuned, python or previous, not {mode!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--gc", default="tuned")
    parser.add_argument(
        "--memory-events", type=int, default=int(DEFAULTS["IDEMPOTENCY_MEMORY_EVENTS"])
    )
    parser.add_argument("--memory", action="store_true", help="bytes kept per request")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pauses-"))
    bodies = fresh_bodies(args.data, work, args.warmup + args.events)
    app = bench_app(
        work,
        args.data,
        GC_TUNING=False,  # set below, per --gc
        ACCESS_LOG=False,
        IDEMPOTENCY_MEMORY_EVENTS=args.memory_events,
    )
    logging.disable(logging.WARNING)
    gc.collect()
    gc.set_threshold(700, 10, 10)
    set_gc(args.gc)
    wsgi = app.wsgi_app
    for body in bodies[: args.warmup]:
        call(wsgi, "/score", body)
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - began[0]) * 1e3))

    if args.memory:
        tracemalloc.start()
    held_before = tracemalloc.get_traced_memory()[0]
    gc.callbacks.append(on_gc)
    latency_ms: list[float] = []
    for body in bodies[args.warmup :]:
        t0 = time.perf_counter()
        call(wsgi, "/score", body)
        latency_ms.append((time.perf_counter() - t0) * 1e3)
    gc.callbacks.remove(on_gc)
    held = tracemalloc.get_traced_memory()[0] - held_before
    latency_ms.sort()

    def q(p: float) -> float:
        return latency_ms[min(len(latency_ms) - 1, int(p * len(latency_ms)))]

    by_generation = {
        g: [p for gen, p in pauses if gen == g] for g in sorted({g for g, _ in pauses})
    }
    result = {
        "gc": args.gc,
        "memory_events": args.memory_events,
        "requests": len(latency_ms),
        "latency_ms": {
            "p50": q(0.5),
            "p99": q(0.99),
            "p99.9": q(0.999),
            "max": latency_ms[-1],
        },
        "collections": {
            str(g): {"count": len(ps), "max_ms": max(ps), "total_ms": sum(ps)}
            for g, ps in by_generation.items()
        },
        "gc_ms_per_request": sum(p for _, p in pauses) / len(latency_ms),
        "kept_bytes_per_request": held / len(latency_ms) if args.memory else None,
    }
    print(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    worst = max((max(ps) for ps in by_generation.values()), default=0.0)
    kept = result["kept_bytes_per_request"]
    print(
        f"| {args.gc}, {args.memory_events:,} whole | {lat['p50']:.2f} / {lat['p99']:.2f} / "
        f"{lat['p99.9']:.2f} / {lat['max']:.1f} ms | "
        + ", ".join(f"gen{g} {len(ps)}" for g, ps in by_generation.items())
        + f" | {worst:.1f} ms | {result['gc_ms_per_request'] * 1e3:.0f} µs | "
        + ("-" if kept is None else f"{kept / 1024:.1f} KB")
        + " |"
    )


if __name__ == "__main__":
    main()
