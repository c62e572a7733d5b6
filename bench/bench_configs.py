"""Benchmark: several `risk serve` configurations side by side, taking turns under one load.

On this shared two-core machine the speed of the same server moves by up to 1.7x from one
minute to the next (docs/benchmarks.md), so two configurations measured one after the other
cannot be compared. Here every configuration runs at once (each its own server, port,
decision log and warm online state), and wrk loads them in turns: per round, each one's
empty route then its /score, the order rotating from round to round. The medians over rounds
are compared; a drift of the machine reaches every configuration alike.

A configuration is ``NAME:THREADS`` or ``NAME:THREADS:SOURCE`` where SOURCE is a checkout
of the project (a ``git worktree`` of another commit) whose code that server runs, with
this virtualenv, either followed by ``,VAR=VALUE`` items for its environment (e.g.
``alone:1,RISK_REASONS_BESIDE=0``). The embedded default otherwise, as `bench_service.py`
runs it.

``--production``: every server on the machine's Redis and PostgreSQL, each with a fresh key
prefix and schema of its own (`production_stores.ProductionStores`, removed after), the
profiles loaded into its Redis space, ``--workers 2``, one API key for all (wrk sends it).
CPU per request is then also given for the whole machine (workers, Redis, PostgreSQL).

Then the latency at one offered load (``--paced-connections`` connections each pausing
``--paced-delay-ms`` after an answer, the same for every configuration), in turns too.

Usage: python bench/bench_configs.py inline:1 pool4:4 [--rounds 5] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import production_stores
from bench_service import (
    LUA,
    free_port,
    parse_wrk,
    server_env,
    wait_ready,
    write_bodies,
    wrk_command,
)


@dataclass
class Server:
    name: str
    threads: int
    source: Path
    work: Path
    port: int = 0
    process: subprocess.Popen | None = None
    offset: int = 0  # where this server's event stream continues
    runs: list[dict] = field(default_factory=list)
    paced: list[dict] = field(default_factory=list)
    stores: production_stores.ProductionStores | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the server's environment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, data: Path, models: str, api_key: str | None) -> None:
        """``api_key``: on the production stores (see the module docstring), else embedded."""
        (self.work / "metrics").mkdir(parents=True)
        self.port = free_port()
        env = {**server_env(self.work, data), "PYTHONPATH": str(self.source), **self.env}
        workers = 1
        if api_key is not None:
            self.stores = production_stores.ProductionStores()
            env.update(self.stores.env(), RISK_API_KEYS=api_key)
            del env["RISK_ACCOUNTS_FILE"]
            self.stores.load_profiles(data / "accounts.parquet", env["RISK_HASH_KEY"].encode())
            workers = 2
        command = [sys.executable, "-m", "training.cli", "serve", "--quiet"]
        command += ["--port", str(self.port), "--threads", str(self.threads)]
        command += ["--workers", str(workers)]
        command += ["--models", str(Path(models).resolve())]
        with (self.work / "server.log").open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=self.source,
                start_new_session=True,
                stdout=log,
                stderr=log,
            )

    def load(self, route: str, script: Path, *, connections: int, seconds: int, delay_ms: int):
        env = {**os.environ, "BENCH_DELAY_MS": str(delay_ms), "BENCH_OFFSET": str(self.offset)}
        assert self.process is not None
        cpu = production_stores.cpu_snapshot(self.process.pid)
        started = time.perf_counter()
        out = subprocess.run(
            wrk_command(self.url + route, script, connections=connections, seconds=seconds),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        elapsed = time.perf_counter() - started
        result = parse_wrk(self.url + route, out, connections=connections, delay_ms=delay_ms)
        if route == "/score":
            self.offset += result["requests"]
        cores = production_stores.cpu_used(
            cpu, production_stores.cpu_snapshot(self.process.pid), elapsed
        )
        result["service_cores"] = cores["service"]
        result["cpu_ms_per_request"] = 1000 * cores["service"] / max(result["rps"], 1e-9)
        result["loop_ms_per_request"] = 1000 * cores["loop"] / max(result["rps"], 1e-9)
        result["machine_ms_per_request"] = 1000 * cores["machine"] / max(result["rps"], 1e-9)
        result["scoring_ms_per_request"] = 1000 * cores["scoring"] / max(result["rps"], 1e-9)
        result["wrk_ms_per_request"] = 1000 * cores["wrk"] / max(result["rps"], 1e-9)
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)
        if self.stores is not None:
            self.stores.close()


def parse_config(spec: str, here: Path, root: Path) -> Server:
    head, *assignments = spec.split(",")
    parts = head.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or not all("=" in a for a in assignments):
        raise SystemExit(f"a configuration is NAME:THREADS[:SOURCE][,VAR=VALUE...], got {spec!r}")
    source = Path(parts[2]).resolve() if len(parts) == 3 else here
    env = dict(a.split("=", 1) for a in assignments)
    return Server(parts[0], int(parts[1]), source, root / parts[0], env=env)


def median(runs: list[dict], key: str) -> float:
    """The median of one figure over runs; NaN when there were none (``--paced-rounds 0``)."""
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+", help="NAME:THREADS[:SOURCE][,VAR=VALUE...]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=20, help="seconds of /score per server")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--paced-connections", type=int, default=4)
    parser.add_argument("--paced-delay-ms", type=int, default=9)
    parser.add_argument("--paced-rounds", type=int, default=2)
    parser.add_argument("--models", default="models")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--bodies", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--production", action="store_true", help="Redis, PostgreSQL, 2 workers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (a benchmark tool, not a project dependency): apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="bench-configs-"))
    here = Path(__file__).resolve().parent.parent
    servers = [parse_config(spec, here, root) for spec in args.configs]
    script = root / "events.lua"
    script.write_text(LUA)
    bodies = root / "bodies.jsonl"
    write_bodies(args.data, bodies, args.bodies)
    os.environ["BENCH_BODIES"] = str(bodies)
    api_key = secrets.token_urlsafe(32) if args.production else None
    if api_key is not None:
        os.environ["BENCH_API_KEY"] = api_key  # wrk's script sends it
    try:
        for server in servers:
            server.start(args.data, args.models, api_key)
        for server in servers:
            wait_ready(server.url, timeout=180)
            server.load(
                "/score", script, connections=args.connections, seconds=args.warmup, delay_ms=0
            )
        for r in range(args.rounds):
            turn = servers[r % len(servers) :] + servers[: r % len(servers)]
            for server in turn:
                empty = server.load(
                    "/_empty",
                    script,
                    connections=args.connections,
                    seconds=args.seconds,
                    delay_ms=0,
                )
                score = server.load(
                    "/score", script, connections=args.connections, seconds=args.seconds, delay_ms=0
                )
                server.runs.append(
                    {"empty": empty, "score": score, "ratio": score["rps"] / empty["rps"]}
                )
        for r in range(args.paced_rounds):
            turn = servers[r % len(servers) :] + servers[: r % len(servers)]
            for server in turn:
                server.paced.append(
                    server.load(
                        "/score",
                        script,
                        connections=args.paced_connections,
                        seconds=args.seconds,
                        delay_ms=args.paced_delay_ms,
                    )
                )
    finally:
        for server in servers:
            server.stop()
    result = {}
    for s in servers:
        scores = [run["score"] for run in s.runs]
        empties = [run["empty"] for run in s.runs]
        result[s.name] = {
            "threads": s.threads,
            "source": str(s.source),
            "score_rps": median(scores, "rps"),
            "empty_rps": median(empties, "rps"),
            "ratio": statistics.median(run["ratio"] for run in s.runs),
            "ratios": [round(run["ratio"], 3) for run in s.runs],
            "score_cpu_ms": median(scores, "cpu_ms_per_request"),
            "score_machine_ms": median(scores, "machine_ms_per_request"),
            "score_loop_ms": median(scores, "loop_ms_per_request"),
            "score_scoring_ms": median(scores, "scoring_ms_per_request"),
            "score_wrk_ms": median(scores, "wrk_ms_per_request"),
            "empty_cpu_ms": median(empties, "cpu_ms_per_request"),
            "paced_rps": median(s.paced, "rps"),
            "paced_p50_ms": median(s.paced, "p50_ms"),
            "paced_p99_ms": median(s.paced, "p99_ms"),
            "paced_p999_ms": median(s.paced, "p999_ms"),
            "runs": s.runs,
            "paced": s.paced,
        }
    print(
        "| config | /score req/s | empty req/s | ratio (median, range) | CPU ms per /score "
        "(server; machine; workers' main threads; scoring processes; wrk) | per empty "
        "| paced: req/s, p50, p99, p99.9 "
        "(ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in result.items():
        print(
            f"| {name} ({r['threads']} thread{'s' * (r['threads'] > 1)}) | {r['score_rps']:,.0f} "
            f"| {r['empty_rps']:,.0f} | {r['ratio']:.2f} ({min(r['ratios']):.2f}-"
            f"{max(r['ratios']):.2f}) | {r['score_cpu_ms']:.2f}; {r['score_machine_ms']:.2f}; "
            f"{r['score_loop_ms']:.2f}; {r['score_scoring_ms']:.2f}; {r['score_wrk_ms']:.2f} "
            f"| {r['empty_cpu_ms']:.2f} "
            f"| {r['paced_rps']:,.0f}, {r['paced_p50_ms']:.2f}, {r['paced_p99_ms']:.2f}, "
            f"{r['paced_p999_ms']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
