"""Benchmark: latency under open-loop (Poisson) arrivals, configurations side by side.

wrk is a closed loop: a connection sends its next request only after the answer (and, paced,
a fixed pause), so the offered load falls when the server slows, and clients whose answers
come together send together again 9 ms later. Payments do not wait for each other: each is
a customer's own. Here requests arrive as a Poisson process at a set rate, each on an idle
keep-alive connection of a pool, and a request's latency runs from its scheduled arrival to
the end of its answer, so time spent waiting for a connection or a busy server counts (no
coordinated omission).

The client is `bench/openloop.c`, compiled here with the machine's C compiler: the Python
client used before took a growing share of the same two cores (and added its own scheduling
delays to what it measured): p99 at 1,000 /score req/s 7.8 ms with it, 6.4 ms with this one,
on the same server minutes apart. It reports the latency of all requests and separately of
approvals and of the other decisions (challenge, review, decline: the ones with TreeSHAP
reasons), and every rate is also run against the empty route of the same server, the
baseline of the service's latency (`--no-empty` skips it).

A configuration is ``NAME`` or ``NAME:VAR=VALUE,VAR=VALUE`` (environment of its `risk serve`,
e.g. ``alone:RISK_TURN_COMMITS=0``); every configuration runs at once (embedded stores, one
thread, as `bench_configs.py`; ``--production``: each on the machine's Redis and PostgreSQL,
2 workers x 4 threads, an API key) and each rate loads them in turns, round after round.

``--gaps``: also the approvals' latency by the time since the arrival before them (the client
writes every answer's arrival and latency, `openloop.c`'s OPENLOOP_TRACE): on these machines a
request after a longer pause costs more (docs/benchmarks.md, "A pause costs").

Usage: python bench/bench_open_loop.py on off:RISK_SCORING_PROCESS=0 [--rates 700 1000]
       [--seconds 8] [--rounds 3] [--production] [--gaps] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_configs import Server
from bench_service import wait_ready, write_bodies

HERE = Path(__file__).resolve().parent
CLASSES = ("all", "approve", "other")


def parse_config(spec: str, root: Path, *, production: bool) -> Server:
    """``NAME[:VAR=VALUE,...]``: the code here, the environment on top; one thread embedded
    (`risk serve`'s default there), four on the production stores (its default there)."""
    name, _, assignments = spec.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return Server(name, 4 if production else 1, HERE.parent, root / name, env=env)


def build_client(root: Path) -> Path:
    """`openloop.c` compiled into ``root`` (cc, as on every machine of this kind)."""
    binary = root / "openloop"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "openloop.c"), "-lm"], check=True)
    return binary


def open_loop(
    client: Path,
    server: Server,
    route: str,
    bodies: Path,
    *,
    rate: float,
    seconds: float,
    connections: int,
    seed: int,
    api_key: str | None,
    trace: Path | None = None,
) -> dict:
    """One run of the C client: Poisson arrivals at ``rate`` for ``seconds``; /score bodies
    continue the server's event stream (fresh events, in time order). ``trace``: where the
    client writes each answer's arrival, latency and kind."""
    command = [str(client), str(server.port), route, str(bodies), str(rate), str(seconds)]
    command += [str(connections), str(seed), str(server.offset)]
    if api_key is not None:
        command.append(f"Authorization: Bearer {api_key}")
    env = {**os.environ, "OPENLOOP_TRACE": str(trace) if trace is not None else ""}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    result = json.loads(out)
    if route == "/score":
        server.offset += result["all"]["requests"]
    if result["errors"]:
        print(f"{server.name} {route}: {result['errors']} answers were not 200", file=sys.stderr)
    return result


GAP_BINS_MS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, math.inf)


def approvals_by_gap(trace: Path) -> list[tuple[float, float]]:
    """(ms since the arrival before it, latency ms) of every approval in a client trace."""
    rows = sorted(tuple(int(v) for v in line.split()) for line in trace.read_text().splitlines())
    return [
        ((arrival - before) / 1000, latency / 1000)
        for (before, _, _), (arrival, latency, approved) in itertools.pairwise(rows)
        if approved
    ]


def gap_table(pairs: dict[str, list[tuple[float, float]]]) -> None:
    """The approvals' latency, p50 and p90, by the pause before their arrival."""
    print("\n| config, rate | pause before the arrival | approvals | p50 ms | p90 ms |")
    print("|---|---|---|---|---|")
    for key, got in pairs.items():
        for low, high in itertools.pairwise(GAP_BINS_MS):
            latencies = sorted(lat for gap, lat in got if low <= gap < high)
            if len(latencies) < 10:
                continue
            p50 = latencies[len(latencies) // 2]
            p90 = latencies[int(len(latencies) * 0.9)]
            span = f"{low:g}-{high:g} ms" if high < math.inf else f"{low:g} ms or more"
            print(f"| {key} | {span} | {len(latencies)} | {p50:.2f} | {p90:.2f} |")


def summarise(runs: list[dict]) -> dict[str, float]:
    """Medians over rounds: served req/s, and p50/p99/p99.9 of each class of answers."""
    summary = {"rps": statistics.median(run["rps"] for run in runs)}
    for cls in CLASSES:
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            values = [run[cls][key] for run in runs if key in run[cls]]
            if values:
                summary[f"{cls}_{key}"] = statistics.median(values)
        summary[f"{cls}_share"] = statistics.median(
            run[cls]["requests"] / max(1, run["all"]["requests"]) for run in runs
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+", help="NAME[:VAR=VALUE,...]")
    parser.add_argument("--rates", type=float, nargs="+", default=[700.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20_000, help="/score requests per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--production", action="store_true")
    parser.add_argument("--no-empty", action="store_true", help="skip the empty route's runs")
    parser.add_argument(
        "--gaps", action="store_true", help="approvals' latency by the pause before them"
    )
    parser.add_argument("--models", default="models")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-open-loop-"))
    client = build_client(root)
    servers = [parse_config(spec, root, production=args.production) for spec in args.configs]
    routes = ["/score"] if args.no_empty else ["/_empty", "/score"]
    results: dict[str, list[dict]] = {}
    gaps: dict[str, list[tuple[float, float]]] = {}
    per_server = args.warmup + int(sum(args.rates) * args.seconds * args.rounds * 1.2)
    bodies = root / "bodies.jsonl"
    write_bodies(args.data, bodies, min(per_server, 400_000))
    api_key = secrets.token_urlsafe(32) if args.production else None
    try:
        for server in servers:
            server.start(args.data, args.models, api_key=api_key)
        for server in servers:
            wait_ready(server.url)
        for server in servers:  # warm state: the first events, at the highest rate
            rate = max(args.rates)
            open_loop(
                client,
                server,
                "/score",
                bodies,
                rate=rate,
                seconds=args.warmup / rate,
                connections=args.connections,
                seed=0,
                api_key=api_key,
            )
        for r in range(args.rounds):
            for rate in args.rates:
                turn = servers[r % len(servers) :] + servers[: r % len(servers)]
                for server in turn:
                    for route in routes:
                        trace = root / "trace.txt" if args.gaps and route == "/score" else None
                        result = open_loop(
                            client,
                            server,
                            route,
                            bodies,
                            rate=rate,
                            seconds=args.seconds,
                            connections=args.connections,
                            seed=1000 * r + int(rate),
                            api_key=api_key,
                            trace=trace,
                        )
                        key = f"{server.name}{route}@{int(rate)}"
                        if trace is not None:
                            pairs = approvals_by_gap(trace)
                            gaps.setdefault(f"{server.name}, {rate:g} req/s", []).extend(pairs)
                        results.setdefault(key, []).append(result)
                        brief = {c: round(result[c].get("p99_ms", 0), 2) for c in CLASSES}
                        print(key, f"rps {result['rps']:.0f} p99 {brief}", flush=True)
    finally:
        for server in servers:
            server.stop()
    print(
        "\n| config | route | offered req/s | served req/s | p50 ms | p99 ms | p99.9 ms "
        "| approvals p99 ms | others: share, p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {key: summarise(runs) for key, runs in results.items()}
    for key, med in summary.items():
        name, _, rest = key.partition("/")
        route, _, rate = rest.partition("@")
        others = "-"
        if route == "score":
            others = (
                f"{med['other_share']:.1%}, {med.get('other_p50_ms', 0):.2f} / "
                f"{med.get('other_p99_ms', 0):.2f}"
            )
        approvals = f"{med['approve_p99_ms']:.2f}" if route == "score" else "-"
        print(
            f"| {name} | /{route} | {rate} | {med['rps']:.0f} | {med['all_p50_ms']:.2f} | "
            f"{med['all_p99_ms']:.2f} | {med['all_p999_ms']:.2f} | {approvals} | {others} |"
        )
    if gaps:
        gap_table(gaps)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
