"""Benchmark: CPU per request of the Flask app itself, /score against the empty route.

`bench_service.py` measures the real server, but on this shared two-core machine its
throughput moves by 1.5x from one run to the next, which hides changes of 5-10%. This
script takes the HTTP server and the kernel out: it builds the WSGI environ of each
request (the body already in memory, as the buffering worker hands it over) and calls the
app, timing each block of requests with `time.thread_time` (this thread's CPU). Blocks of
/score and of the empty route alternate, so a drift of the machine's speed reaches both.

Same app and configuration as the README's `risk serve` (in-memory state, SQLite decision
log with synchronous=NORMAL, the default world's profiles), the same request bodies as
`bench_service.py` (default-world events replayed in time order, fresh event ids), after a
warm-up that fills the online state.

Usage: python bench/bench_request_cpu.py [--events 20000] [--warmup 20000] [--block 500]
Prints CPU µs per request of each route (median over blocks), their difference (what
/score costs beyond the framework) and their ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_service import write_bodies
from flask import Flask

from risk_service import create_app


def environ(path: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app: Any, path: str, body: bytes) -> int:
    status: list[str] = []
    out = app(environ(path, body), lambda s, h, exc=None: status.append(s))
    for _ in out:
        pass
    getattr(out, "close", lambda: None)()
    return int(status[0][:3])


def fresh_bodies(data: Path, work: Path, count: int) -> list[bytes]:
    """``count`` /score bodies as `bench_service.py` sends them, each with a new event_id."""
    write_bodies(data, work / "bodies.jsonl", count)
    templates = (work / "bodies.jsonl").read_text().splitlines()
    run = f"{time.time_ns()}"
    return [t.replace("__ID__", f"{run}-{i}", 1).encode() for i, t in enumerate(templates)]


def bench_app(work: Path, data: Path, **config: Any) -> Flask:
    """The README's `risk serve` app (its decision log in ``work``, the world's profiles, no
    lateness limit), with ``config`` on top."""
    return create_app(
        {
            "DECISION_LOG_PATH": str(work / "decisions.sqlite"),
            "HASH_KEY": "bench-" + "k" * 32,
            "MAX_LATENESS_SECONDS": 10**9,
            "ACCOUNTS_FILE": str(data / "accounts.parquet"),
            **config,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--events", type=int, default=20_000, help="measured /score requests")
    parser.add_argument("--warmup", type=int, default=20_000, help="/score requests before")
    parser.add_argument("--block", type=int, default=500, help="requests per timed block")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-request-cpu-"))
    bodies = fresh_bodies(args.data, work, args.warmup + args.events)
    wsgi = bench_app(work, args.data, BENCH_EMPTY_ENDPOINT=True).wsgi_app
    for body in bodies[: args.warmup]:
        assert call(wsgi, "/score", body) == 200
    score_us: list[float] = []
    empty_us: list[float] = []
    measured = bodies[args.warmup :]
    for start in range(0, len(measured) - args.block + 1, args.block):
        block = measured[start : start + args.block]
        t0 = time.thread_time()
        for body in block:
            call(wsgi, "/_empty", body)
        t1 = time.thread_time()
        for body in block:
            call(wsgi, "/score", body)
        t2 = time.thread_time()
        empty_us.append((t1 - t0) / len(block) * 1e6)
        score_us.append((t2 - t1) / len(block) * 1e6)
    score, empty = statistics.median(score_us), statistics.median(empty_us)
    excess = [s - e for s, e in zip(score_us, empty_us, strict=True)]
    result = {
        "blocks": len(score_us),
        "block": args.block,
        "score_us": score,
        "empty_us": empty,
        "excess_us": statistics.median(excess),
        "excess_us_quartiles": statistics.quantiles(excess, n=4),
        "ratio": empty / score,
    }
    print(json.dumps(result, indent=2))
    print(
        f"| in process, CPU per request | /score {score:.0f} µs | empty {empty:.0f} µs | "
        f"excess {result['excess_us']:.0f} µs | ratio {result['ratio']:.2f} |"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
