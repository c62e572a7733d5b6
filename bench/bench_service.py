"""Benchmark: POST /score against an empty JSON endpoint on the same gunicorn server, with wrk.

Starts `risk serve` (the README's configuration: one gunicorn worker, gthread,
the embedded in-memory state and SQLite decision log, the default world's
account profiles loaded) with the benchmark-only `/_empty` route enabled, then
loads both routes from the same machine with wrk (Debian package `wrk`). Every
request is a distinct event: real default-world events replayed with a fresh
event_id and the current time, so the decision mix is realistic. The empty
endpoint gets the same bodies, so the ratio isolates the server's work.

Usage: python bench/bench_service.py [--threads 4] [--seconds 10] [--rounds 2]
Prints throughput of each route, the ratio, and latency at about 1,000 req/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LUA = r"""
-- Replays real default-world events in time order (profiles loaded in the server),
-- each request a distinct event with a fresh event_id. The empty endpoint gets the
-- same bodies.
local counter = 0
thread_id = 0  -- global: setup() sets it per thread
local bodies = {}
local runs = 0
local rate_delay = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local headers = {["Content-Type"] = "application/json"}
function setup(thread)
  -- a fresh id space per wrk run: Lua's default random seed is the same every run
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  runs = runs + 1
  thread:set("thread_id", os.time() * 1000 + math.random(0, 999) + runs)
end
function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
  counter = tonumber(os.getenv("BENCH_OFFSET") or "0")
end
function delay()
  return rate_delay
end
function request()
  counter = counter + 1
  local body = bodies[counter % #bodies + 1]
  body = body:gsub("__ID__", thread_id .. "-" .. counter, 1)
  return wrk.format("POST", nil, headers, body)
end
"""


def write_bodies(data: Path, path: Path, count: int) -> None:
    """Request bodies of `count` consecutive default-world events, in time order.

    Their timestamps keep their real spacing, shifted so the last one is an hour
    ago: velocities and the decision mix are those of the simulated traffic, not
    of a million events squeezed into seconds."""
    import pandas as pd

    events = pd.read_parquet(data / "events.parquet")
    events = events.iloc[len(events) // 2 : len(events) // 2 + count]
    shift = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1) - events["timestamp"].max()
    stamps = (events["timestamp"] + shift).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    labels = ["is_fraud", "label_time", "fraud_scenario", "event_id", "timestamp"]
    with path.open("w") as handle:
        rows = events.drop(columns=labels).to_dict(orient="records")
        for stamp, row in zip(stamps, rows, strict=True):
            body = {k: v for k, v in row.items() if v is not None and v == v}
            body = {"event_id": "__ID__", "timestamp": stamp, **body}
            handle.write(json.dumps(body) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not become ready")


OFFSET = {"score": 0}


def run_wrk(url: str, script: Path, *, connections: int, seconds: int, delay_ms: int = 0) -> dict:
    """One wrk run; /score runs continue the event stream where the previous one stopped."""
    env = {**os.environ, "BENCH_DELAY_MS": str(delay_ms), "BENCH_OFFSET": str(OFFSET["score"])}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if url.endswith("/score"):
        OFFSET["score"] += done
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(label: str) -> float:
        match = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def decision_mix(log_path: Path, after: int) -> dict[str, int]:
    """Decisions made after the warm-up (the log's seq is the arrival order)."""
    import sqlite3

    with sqlite3.connect(log_path) as conn:
        query = "SELECT decision, COUNT(*) FROM decisions WHERE seq > ? GROUP BY 1"
        return dict(conn.execute(query, (after,)).fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=30, help="seconds of warm-up traffic")
    parser.add_argument("--models", default="models")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--bodies", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    script = work / "events.lua"
    script.write_text(LUA)
    bodies = work / "bodies.jsonl"
    write_bodies(args.data, bodies, args.bodies)
    os.environ["BENCH_BODIES"] = str(bodies)
    port = free_port()
    env = {
        **os.environ,
        "RISK_BENCH_EMPTY_ENDPOINT": "true",
        "RISK_DECISION_LOG_PATH": str(work / "decisions.sqlite"),
        "RISK_HASH_KEY": "bench-" + "k" * 32,
        "RISK_MAX_LATENESS_SECONDS": str(10**9),
        "RISK_ACCOUNTS_FILE": str(args.data / "accounts.parquet"),
    }
    command = [
        sys.executable,
        "-m",
        "training.cli",
        "serve",
        "--quiet",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--models",
        args.models,
    ]
    server = subprocess.Popen(command, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        # warm up: the first events of the stream fill the online state (cold state is all "new")
        run_wrk(url + "/score", script, connections=args.connections, seconds=args.warmup)
        warm_events = OFFSET["score"]
        rounds = []
        for _ in range(args.rounds):
            empty = run_wrk(
                url + "/_empty", script, connections=args.connections, seconds=args.seconds
            )
            score = run_wrk(
                url + "/score", script, connections=args.connections, seconds=args.seconds
            )
            rounds.append({"empty": empty, "score": score, "ratio": score["rps"] / empty["rps"]})
        # ~1,000 req/s: 4 connections, each pausing ~3 ms between requests
        paced = run_wrk(url + "/score", script, connections=4, seconds=args.seconds, delay_ms=3)
        paced_empty = run_wrk(
            url + "/_empty", script, connections=4, seconds=args.seconds, delay_ms=3
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    mix = decision_mix(work / "decisions.sqlite", after=warm_events)
    result = {
        "config": {
            "workers": 1,
            "threads": args.threads,
            "connections": args.connections,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
        },
        "rounds": rounds,
        "paced": {"score": paced, "empty": paced_empty},
        "decision_mix": mix,
    }
    print(json.dumps(result, indent=2))
    best = max(rounds, key=lambda r: r["ratio"])
    worst = min(rounds, key=lambda r: r["ratio"])
    print(
        f"| /score vs empty, 1 worker x {args.threads} threads | "
        f"{rounds[-1]['score']['rps']:,.0f} vs {rounds[-1]['empty']['rps']:,.0f} req/s | "
        f"ratio {worst['ratio']:.2f}-{best['ratio']:.2f} |"
    )
    print(
        f"| /score at {paced['rps']:,.0f} req/s | p50 {paced['p50_ms']:.2f} ms, "
        f"p99 {paced['p99_ms']:.2f} ms (empty: p50 {paced_empty['p50_ms']:.2f}, "
        f"p99 {paced_empty['p99_ms']:.2f}) |"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
