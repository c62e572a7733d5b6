"""Benchmark: /score latency under open-loop (Poisson) arrivals, configurations side by side.

wrk is a closed loop: a connection sends its next request only after the answer (and, paced,
a fixed pause), so the offered load falls when the server slows, and clients whose answers
come together send together again 9 ms later. Payments do not wait for each other: each is
a customer's own. Here requests arrive as a Poisson process at a set rate, each on an idle
connection of a pool (a new one while under ``--connections``), and a request's latency runs
from its scheduled arrival to the end of its answer, so time spent waiting for a connection or
a busy server counts (no coordinated omission).

A configuration is ``NAME`` or ``NAME:VAR=VALUE,VAR=VALUE`` (environment of its `risk serve`,
e.g. ``alone:RISK_TURN_COMMITS=0``); every configuration runs at once (embedded stores, one
thread, as `bench_configs.py`) and each rate loads them in turns, round after round.

Usage: python bench/bench_open_loop.py turns alone:RISK_TURN_COMMITS=0 [--rates 400 800]
       [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_configs import Server
from bench_service import wait_ready, write_bodies


def parse_config(spec: str, root: Path) -> Server:
    """``NAME[:VAR=VALUE,...]``: the code here, one thread, the environment on top."""
    name, _, assignments = spec.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return Server(name, 1, Path(__file__).resolve().parent.parent, root / name, env=env)


class Bodies:
    """The replayed default-world events, each sent once with a fresh event id."""

    def __init__(self, templates: list[str]) -> None:
        self.templates = templates
        self.sent = 0
        self.run = time.time_ns()

    def next(self) -> bytes:
        body = self.templates[self.sent % len(self.templates)]
        self.sent += 1
        body = body.replace("__ID__", f"{self.run}-{self.sent}", 1).encode()
        head = (
            f"POST /score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


async def exchange(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], request: bytes
) -> int:
    reader, writer = await pool.get()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    pool.put_nowait((reader, writer))
    return status


async def open_loop(port: int, bodies: Bodies, rate: float, seconds: float, connections: int,
                    seed: int) -> dict[str, float]:  # fmt: skip
    """Poisson arrivals at ``rate`` a second for ``seconds``; latencies from scheduled times."""
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    errors = 0

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal opened, errors
        if pool.empty() and opened < connections:
            opened += 1
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        if await exchange(pool, request) != 200:
            errors += 1
        latencies.append(loop.time() - scheduled)

    for _ in range(8):  # a few connections ready before the clock starts
        opened += 1
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    rng = random.Random(seed)
    start = loop.time()
    due = start
    tasks = []
    while due < start + seconds:
        now = loop.time()
        while due <= now and due < start + seconds:  # every arrival already due goes now
            tasks.append(asyncio.create_task(one(bodies.next(), due)))
            due += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, due - loop.time()))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / elapsed,
        "errors": errors,
        "connections": opened,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[int(n * 0.99)] * 1000,
        "p999_ms": latencies[int(n * 0.999)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+", help="NAME[:VAR=VALUE,...]")
    parser.add_argument("--rates", type=float, nargs="+", default=[400.0, 800.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20_000, help="/score requests per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--models", default="models")
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-open-loop-"))
    servers = [parse_config(spec, root) for spec in args.configs]
    results: dict[str, dict[int, list[dict[str, float]]]] = {s.name: {} for s in servers}
    per_server = args.warmup + int(sum(args.rates) * args.seconds * args.rounds * 1.2)
    write_bodies(args.data, root / "bodies.jsonl", min(per_server, 400_000))
    templates = (root / "bodies.jsonl").read_text().splitlines()
    try:
        for server in servers:
            server.start(args.data, args.models, api_key=None)
        for server in servers:
            wait_ready(server.url)
        streams = {s.name: Bodies(templates) for s in servers}
        for server in servers:  # warm state: the same events, at the highest rate
            asyncio.run(
                open_loop(server.port, streams[server.name], max(args.rates), args.warmup
                          / max(args.rates), args.connections, seed=0)
            )  # fmt: skip
        for r in range(args.rounds):
            for rate in args.rates:
                turn = servers[r % len(servers) :] + servers[: r % len(servers)]
                for server in turn:
                    result = asyncio.run(
                        open_loop(server.port, streams[server.name], rate, args.seconds,
                                  args.connections, seed=1000 * r + int(rate))
                    )  # fmt: skip
                    results[server.name].setdefault(int(rate), []).append(result)
                    print(server.name, int(rate), json.dumps(result), flush=True)
    finally:
        for server in servers:
            server.stop()
    print("\n| config | offered req/s | served req/s | p50 ms | p99 ms | p99.9 ms |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for server in servers:
        for rate, runs in results[server.name].items():
            med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            summary[f"{server.name}@{rate}"] = med
            print(f"| {server.name} | {rate} | {med['rps']:.0f} | {med['p50_ms']:.2f} | "
                  f"{med['p99_ms']:.2f} | {med['p999_ms']:.2f} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
