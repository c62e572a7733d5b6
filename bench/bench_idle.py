"""Benchmark: what a pause before a request costs, in process (the machine, not the service).

Latency runs at a few hundred requests a second came out slower than at a thousand on these
machines (docs/benchmarks.md, "A pause costs"). This script asks the machine directly: the
README's app (as `bench_request_cpu.py` builds it: no HTTP server, no kernel in the way) gets
one request, then a pause, then the next, and each request's CPU time (its thread's clock)
and wall time are recorded. The pause either sleeps (the core may idle) or spins in a loop
that touches almost no memory (the core stays busy with this thread). If requests after a
pause cost more CPU than back to back, something evicted what they use while the thread
waited: on a shared host, other tenants' work in the caches the core shares.

First, the wake-ups alone: two processes pass a byte back and forth over a socket pair, a
pause between round trips, so a slow hand-over between processes (a core that takes long to
wake) shows apart from the requests' own cost.

Both routes are timed: /score (features, models, policy, the decision log) and the empty
route (Flask and the WSGI call alone). Pauses take turns round after round, so a drift of the
machine reaches them all.

Usage: python bench/bench_idle.py [--pauses-ms 0 1 5 20] [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_request_cpu import bench_app, call, fresh_bodies


def pause(seconds: float, *, spin: bool) -> None:
    if not spin:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def round_trips(pauses_ms: list[float], count: int = 1000) -> dict[str, float]:
    """Median µs of a one-byte round trip to a forked process, per pause before it."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo: blocks in recv, as a worker or scoring process waits
        ours.close()
        while data := theirs.recv(64):
            theirs.send(data)
        os._exit(0)
    theirs.close()
    medians = {}
    try:
        for pause_ms in pauses_ms:
            times = []
            for _ in range(count):
                time.sleep(pause_ms / 1000)
                start = time.perf_counter_ns()
                ours.send(b"x")
                ours.recv(64)
                times.append((time.perf_counter_ns() - start) / 1000)
            medians[f"{pause_ms:g} ms"] = statistics.median(times)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    return medians


def timed(wsgi: Any, path: str, body: bytes) -> tuple[float, float]:
    """CPU and wall µs of one request."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    status = call(wsgi, path, body)
    wall, cpu = time.perf_counter_ns() - wall, time.thread_time_ns() - cpu
    if status != 200:
        raise RuntimeError(f"{path} answered {status}")
    return cpu / 1000, wall / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--pauses-ms", type=float, nargs="+", default=[0.0, 1.0, 5.0, 20.0])
    parser.add_argument("--requests", type=int, default=300, help="per pause, route and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20_000, help="/score requests before")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    trips = round_trips(args.pauses_ms)
    print("| pause before a round trip | " + " | ".join(trips) + " |")
    print("|---|" + "---|" * len(trips))
    print(
        "| socket pair round trip, median µs | "
        + " | ".join(f"{v:.0f}" for v in trips.values())
        + " |\n"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    modes = [("sleep", False), ("spin", True)]
    per_round = len(args.pauses_ms) * len(modes) * args.requests
    bodies = iter(fresh_bodies(args.data, work, args.warmup + args.rounds * per_round))
    wsgi = bench_app(work, args.data, BENCH_EMPTY_ENDPOINT=True, ACCESS_LOG=False).wsgi_app
    for _ in range(args.warmup):
        call(wsgi, "/score", next(bodies))
    samples: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        settings = [(p, name, spin) for p in args.pauses_ms for name, spin in modes]
        settings = settings[r % len(settings) :] + settings[: r % len(settings)]
        for pause_ms, name, spin in settings:
            key = f"{pause_ms:g} ms {name}"
            got = samples.setdefault(key, {"score_cpu": [], "score_wall": [], "empty_cpu": []})
            for _ in range(args.requests):
                body = next(bodies)
                pause(pause_ms / 1000, spin=spin)
                cpu, wall = timed(wsgi, "/score", body)
                got["score_cpu"].append(cpu)
                got["score_wall"].append(wall)
                pause(pause_ms / 1000, spin=spin)
                got["empty_cpu"].append(timed(wsgi, "/_empty", body)[0])
    summary = {
        key: {name: statistics.median(values) for name, values in got.items()}
        for key, got in samples.items()
    }
    base = summary[f"{min(args.pauses_ms):g} ms sleep"]
    print(
        "| pause before each request | /score CPU µs, median | /score wall µs | x back to back "
        "| empty route CPU µs | x back to back |"
    )
    print("|---|---|---|---|---|---|")
    for key, med in summary.items():
        print(
            f"| {key} | {med['score_cpu']:.0f} | {med['score_wall']:.0f} | "
            f"{med['score_cpu'] / base['score_cpu']:.2f} | {med['empty_cpu']:.0f} | "
            f"{med['empty_cpu'] / base['empty_cpu']:.2f} |"
        )
    if args.out:
        results = {"round_trips_us": trips, "summary": summary, "samples": samples}
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
