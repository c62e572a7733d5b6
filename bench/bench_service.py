"""Benchmark: POST /score against an empty JSON endpoint on the same gunicorn server, with wrk.

Starts `risk serve` with the benchmark-only `/_empty` route enabled, then loads both routes
from the same machine with wrk (Debian package `wrk`, a benchmark tool, not a project
dependency). Every request is a distinct event: real default-world events replayed in time
order with a fresh event_id, so the decision mix is realistic. The empty endpoint gets the
same bodies, so the ratio isolates the server's work. The server's stderr (the JSON access
log) goes to a file.

Two configurations:

* default: the README's (one gunicorn worker with `risk serve`'s default threads, the embedded
  in-memory state and SQLite decision log, the default world's account profiles loaded, no API
  key: loopback only);
* ``--production``: the machine's Redis (``redis://127.0.0.1:6379/0``, a fresh key prefix,
  deleted after) and PostgreSQL (``postgresql://127.0.0.1:5432/test``, a fresh schema, dropped
  after), ``--workers 2`` by default, an API key sent by wrk on both routes (``/_empty`` is
  outside the scope table, so it needs a valid key too), the profiles loaded into Redis
  before the start (``--profiles``). Each /score run also reports what /metrics saw (degraded
  answers, Redis calls and their times), the scoring core's latency from the decision log, and
  the cores every process used; at the end the decision log is counted against the 200s of
  the access log and of wrk. ``--profile N`` samples one worker with py-spy (``pip install
  py-spy``, not a project dependency) for N seconds under full /score load.

Latency "at about 1,000 req/s": wrk cannot hold a rate, so each connection pauses
``--paced-delay-ms`` after every answer and the number of connections is calibrated to the
rate; when /score cannot reach it, the latency is also measured at half its maximum.

Usage: python bench/bench_service.py [--production] [--workers N] [--threads N]
       [--connections 8] [--seconds 10] [--rounds 2] [--profile 15] [--out FILE]
Prints throughput of each route, the ratio, and latency at the paced rates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import production_stores

from training.cli import default_threads

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
local key = os.getenv("BENCH_API_KEY") or ""
if key ~= "" then headers["Authorization"] = "Bearer " .. key end
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
function done(summary, latency, requests)
  -- wrk's --latency table stops at p99: the tail in microseconds, parsed by the script
  io.write(string.format("BENCH_LATENCY_US p50=%d p99=%d p999=%d max=%d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
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


def server_env(work: Path, data: Path) -> dict[str, str]:
    """The environment of a benchmarked `risk serve` (embedded stores): the /_empty route on,
    its decision log and metrics files in `work`, the default world's profiles, no lateness
    limit (replayed events keep their real spacing)."""
    return {
        **os.environ,
        "RISK_BENCH_EMPTY_ENDPOINT": "true",
        "RISK_DECISION_LOG_PATH": str(work / "decisions.sqlite"),
        "RISK_HASH_KEY": "bench-" + "k" * 32,
        "RISK_MAX_LATENESS_SECONDS": str(10**9),
        "RISK_ACCOUNTS_FILE": str(data.resolve() / "accounts.parquet"),
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
    }


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


def wait_workers(
    server: subprocess.Popen, metrics_dir: Path, workers: int, timeout: float = 180.0
) -> None:
    """Until every gunicorn worker has finished create_app (profiles loaded, hooks in place):
    its last step sets the version gauges, whose multiprocess file is named by its pid.

    /ready answers as soon as one worker is up; loading traffic on it while the next worker
    still loads the accounts file into Redis makes that load miss its 5 ms Redis timeout, and
    the failed boot stops gunicorn altogether."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("gauge_livemax_*.db")}
        if len(pids) >= workers:
            return
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}: see its log")
        time.sleep(0.2)
    raise RuntimeError(f"{workers} workers did not all start within {timeout:.0f} s")


OFFSET = {"score": 0}
MAX_PACED_CONNECTIONS = 32
SCORE_200 = {"wrk": 0}  # /score answers wrk saw with a 2xx status, warm-up included


def wrk_command(url: str, script: Path, *, connections: int, seconds: int) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]


def wrk_env(delay_ms: int) -> dict[str, str]:
    return {**os.environ, "BENCH_DELAY_MS": str(delay_ms), "BENCH_OFFSET": str(OFFSET["score"])}


def run_wrk(url: str, script: Path, *, connections: int, seconds: int, delay_ms: int = 0) -> dict:
    """One wrk run; /score runs continue the event stream where the previous one stopped.
    Also how wrk's keep-alive connections were spread over the workers, 2 s in."""
    load = subprocess.Popen(
        wrk_command(url, script, connections=connections, seconds=seconds),
        stdout=subprocess.PIPE,
        text=True,
        env=wrk_env(delay_ms),
    )
    time.sleep(min(2.0, seconds / 2))
    spread = production_stores.connections_per_process(int(url.split(":")[2].split("/")[0]))
    out, _ = load.communicate()
    if load.returncode != 0:
        raise RuntimeError(f"wrk failed with status {load.returncode}")
    result = parse_wrk(url, out, connections=connections, delay_ms=delay_ms)
    result["connections_per_worker"] = spread
    return result


def parse_wrk(url: str, out: str, *, connections: int, delay_ms: int) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    if url.endswith("/score"):
        OFFSET["score"] += done
        SCORE_200["wrk"] += done - bad
    tail = re.search(r"BENCH_LATENCY_US p50=(\d+) p99=(\d+) p999=(\d+) max=(\d+)", out)
    p50, p99, p999, worst = (int(v) / 1000 for v in tail.groups()) if tail else (float("nan"),) * 4
    return {
        "rps": rps,
        "requests": done,
        "connections": connections,
        "delay_ms": delay_ms,
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": worst,
        "non_2xx": bad,
        "socket_errors": errors.group(1) if errors else "",
    }


def decision_mix(log_path: Path, after: int) -> dict[str, int]:
    """Decisions made after the warm-up (the log's seq is the arrival order)."""
    import sqlite3

    with sqlite3.connect(log_path) as conn:
        query = "SELECT decision, COUNT(*) FROM decisions WHERE seq > ? GROUP BY 1"
        return dict(conn.execute(query, (after,)).fetchall())


class Run:
    """The server under test and what is measured on it (stores, metrics, CPU) per wrk run."""

    def __init__(
        self,
        url: str,
        script: Path,
        master: int,
        stores: production_stores.ProductionStores | None,
    ) -> None:
        self.url = url
        self.script = script
        self.master = master
        self.stores = stores

    def load(self, route: str, *, connections: int, seconds: int, delay_ms: int = 0) -> dict:
        """One wrk run on `route`, with the cores each process used meanwhile; on the
        production stores also what /metrics and the decision log saw of /score runs
        (degraded answers, Redis calls, the scoring core's latency)."""
        scored = self.stores is not None and route == "/score"
        if scored:
            before, seq = production_stores.scrape(self.url), self.stores.max_seq()  # type: ignore[union-attr]
            lsn = self.stores.wal_lsn()  # type: ignore[union-attr]
        cpu = production_stores.cpu_snapshot(self.master)
        started = time.perf_counter()
        result = run_wrk(
            self.url + route,
            self.script,
            connections=connections,
            seconds=seconds,
            delay_ms=delay_ms,
        )
        elapsed = time.perf_counter() - started
        result["cores"] = production_stores.cpu_used(
            cpu, production_stores.cpu_snapshot(self.master), elapsed
        )
        if scored:
            time.sleep(0.5)  # the last in-flight answers reach /metrics and the log
            result["server"] = production_stores.delta(before, production_stores.scrape(self.url))
            result["core"] = self.stores.core_latency(seq, self.stores.max_seq())  # type: ignore[union-attr]
            result["core"]["wal_bytes"] = self.stores.wal_bytes_since(lsn)  # type: ignore[union-attr]
        return result

    def paced(self, target: float, delay_ms: int, seconds: int) -> dict:
        """/score, then /_empty, at about `target` req/s: wrk cannot hold a rate, so each
        connection pauses `delay_ms` after every answer, and the number of connections is
        calibrated on /score with short runs until the rate is within 5% of the target."""
        connections = max(1, round(target * (delay_ms + 1) / 1000))
        for _ in range(4):
            trial = run_wrk(
                self.url + "/score",
                self.script,
                connections=connections,
                seconds=5,
                delay_ms=delay_ms,
            )
            wanted = min(MAX_PACED_CONNECTIONS, round(connections * target / trial["rps"]))
            if abs(trial["rps"] / target - 1) < 0.05 or wanted == connections:
                break  # on target, or the server cannot go faster at this pacing
            connections = max(1, wanted)
        score = self.load("/score", connections=connections, seconds=seconds, delay_ms=delay_ms)
        empty = self.load("/_empty", connections=connections, seconds=seconds, delay_ms=delay_ms)
        return {"score": score, "empty": empty}


def profile_worker(run: Run, master: int, seconds: int, connections: int, work: Path) -> dict:
    """py-spy on one worker while wrk loads /score at full speed: wall-clock samples of every
    thread (--idle: waits count), then only the GIL holder (CPU spent in Python)."""
    pid = production_stores.children(master)[0]
    shares = {}
    for mode in ("wall", "gil"):
        load = subprocess.Popen(
            wrk_command(
                run.url + "/score", run.script, connections=connections, seconds=seconds + 4
            ),
            stdout=subprocess.PIPE,
            text=True,
            env=wrk_env(0),
        )
        time.sleep(2)
        raw = production_stores.profile(
            pid, seconds, work / f"py-spy-{mode}.txt", gil=mode == "gil"
        )
        out, _ = load.communicate()
        parse_wrk(run.url + "/score", out, connections=connections, delay_ms=0)
        if raw is None:
            return {}
        shares[mode] = production_stores.attribute(raw)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--production",
        action="store_true",
        help="Redis state, PostgreSQL decision log, API keys, JSON access log (the machine's "
        "redis://127.0.0.1:6379/0 and postgresql://127.0.0.1:5432/test)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (production: 2, else 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="gunicorn threads per worker (default: risk serve's, 1 embedded, 4 production)",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=30, help="seconds of warm-up traffic")
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=1000.0,
        help="latency runs: req/s (0: none, for quick A/B runs of throughput)",
    )
    parser.add_argument(
        "--paced-delay-ms", type=int, default=9, help="latency runs: pause per connection"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="seconds of py-spy on one worker (--keep keeps the raw samples)",
    )
    parser.add_argument(
        "--profiles",
        choices=("bench", "service"),
        default="bench",
        help="production: who loads the accounts table into Redis before the run: this script "
        "(with the service's code and a 10 s timeout) or every worker at start (ACCOUNTS_FILE)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="gunicorn --reuse-port (through GUNICORN_CMD_ARGS): a listening socket per worker, "
        "so the kernel spreads connections over the workers instead of the first one awake "
        "taking most of them",
    )
    parser.add_argument("--models", default="models")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--bodies", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server log, py-spy stacks)"
    )
    args = parser.parse_args()
    workers = args.workers or (2 if args.production else 1)
    if workers > 1 and not args.production:
        sys.exit("--workers above 1 needs --production (the in-memory state is per process)")
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (a benchmark tool, not a project dependency): apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    script = work / "events.lua"
    script.write_text(LUA)
    bodies = work / "bodies.jsonl"
    write_bodies(args.data, bodies, args.bodies)
    os.environ["BENCH_BODIES"] = str(bodies)
    (work / "metrics").mkdir()
    port = free_port()
    env = server_env(work, args.data)
    stores = production_stores.ProductionStores() if args.production else None
    if stores is not None:
        # a key with every scope; /_empty is outside the scope table, so it needs a valid key
        # too: both routes pay the same authentication
        key = secrets.token_urlsafe(32)
        os.environ["BENCH_API_KEY"] = key
        env.update(stores.env(), RISK_API_KEYS=key)
        if args.profiles == "bench":  # see ProductionStores.load_profiles
            del env["RISK_ACCOUNTS_FILE"]
            loaded = stores.load_profiles(
                args.data / "accounts.parquet", env["RISK_HASH_KEY"].encode()
            )
            print(f"{loaded} account profiles loaded into Redis", file=sys.stderr)
    if args.reuse_port:
        env["GUNICORN_CMD_ARGS"] = "--reuse-port"
    command = [sys.executable, "-m", "training.cli", "serve", "--quiet", "--port", str(port)]
    command += ["--workers", str(workers), "--models", args.models]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    threads = args.threads if args.threads is not None else default_threads(env)
    server_log = work / "server.log"  # the JSON access log (stderr): a file, as in production
    with server_log.open("wb") as log_file:
        server = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=log_file, stderr=log_file
        )
    url = f"http://127.0.0.1:{port}"
    run = Run(url, script, server.pid, stores)
    try:
        try:
            wait_ready(url)
            wait_workers(server, work / "metrics", workers)
            # warm up: the first events of the stream fill the online state (cold state is all
            # "new"); with several workers every one of them has loaded the profiles by its end
            warm = run.load("/score", connections=args.connections, seconds=args.warmup)
            warm_events = OFFSET["score"]
            warm_seq = stores.max_seq() if stores is not None else warm_events
            rounds = []
            for _ in range(args.rounds):
                empty = run.load("/_empty", connections=args.connections, seconds=args.seconds)
                score = run.load("/score", connections=args.connections, seconds=args.seconds)
                rounds.append(
                    {"empty": empty, "score": score, "ratio": score["rps"] / empty["rps"]}
                )
            paced = []
            if args.paced_rate > 0:
                paced.append(run.paced(args.paced_rate, args.paced_delay_ms, args.seconds))
                most = max(r["score"]["rps"] for r in rounds)
                if most < 1.1 * args.paced_rate:  # the target saturates /score: also at half
                    paced.append(run.paced(most / 2, args.paced_delay_ms, args.seconds))
            profile = (
                profile_worker(run, server.pid, args.profile, args.connections, work)
                if args.profile
                else {}
            )
            if stores is not None:
                time.sleep(1)
                counters = production_stores.delta({}, production_stores.scrape(url))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        if stores is not None:
            mix = stores.decisions_after(warm_seq)
            logged = stores.decisions()
            logged["spooled"] = production_stores.spooled_decisions(work / "spool")
            footprint = stores.redis_footprint()
        else:
            mix = decision_mix(work / "decisions.sqlite", after=warm_events)
    finally:
        if stores is not None:
            stores.close()
    lines = server_log.read_text(errors="replace").splitlines()
    access_200 = sum('"path":"/score","status":200' in line for line in lines)
    result: dict = {
        "config": {
            "production": args.production,
            "profiles_loaded_by": args.profiles if args.production else "service",
            "reuse_port": args.reuse_port,
            "workers": workers,
            "threads": threads,
            "connections": args.connections,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "commit": subprocess.run(
                ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "warmup": warm,
        "rounds": rounds,
        "paced": paced,
        "decision_mix": mix,
        "server_log": {"lines": len(lines), "score_200_access_lines": access_200},
    }
    if profile:
        result["profile"] = profile
    if stores is not None:
        result["decision_log"] = {
            "score_2xx_seen_by_wrk": SCORE_200["wrk"],
            "score_200_in_access_log": access_200,
            "decisions_counted_by_metrics": counters["decisions"],
            **logged,
        }
        result["server_totals"] = counters
        result["redis"] = footprint
    print(json.dumps(result, indent=2))
    name = "production" if args.production else "embedded"
    best = max(rounds, key=lambda r: r["ratio"])
    worst = min(rounds, key=lambda r: r["ratio"])
    print(
        f"| /score vs empty, {name}, {workers} worker(s) x {threads} threads | "
        f"{rounds[-1]['score']['rps']:,.0f} vs {rounds[-1]['empty']['rps']:,.0f} req/s | "
        f"ratio {worst['ratio']:.2f}-{best['ratio']:.2f} |"
    )
    for pace in paced:
        s, e = pace["score"], pace["empty"]
        print(
            f"| /score at {s['rps']:,.0f} req/s ({s['connections']} connections, "
            f"{s['delay_ms']} ms pause) | p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
            f"p99.9 {s['p999_ms']:.2f} ms (empty at {e['rps']:,.0f} req/s: p50 "
            f"{e['p50_ms']:.2f}, p99 {e['p99_ms']:.2f}, p99.9 {e['p999_ms']:.2f}) |"
        )
    if stores is not None:
        log, totals = result["decision_log"], result["server_totals"]
        print(
            f"| decision log | {log['rows']:,} rows (+{log['spooled']} spooled) for "
            f"{log['score_200_in_access_log']:,} /score 200s in the access log, "
            f"{log['score_2xx_seen_by_wrk']:,} seen by wrk | degraded "
            f"{totals['degraded']:,.0f} of {totals['decisions']:,.0f} answers |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.keep:
        print(f"server log and profiles kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
