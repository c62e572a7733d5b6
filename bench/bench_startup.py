"""Benchmark: how long `risk serve` takes to be ready, and to be ready again after its worker
is killed, for checkouts side by side.

A start is timed from the command to the first `GET /ready` answered 200 (polled every 20
ms); a recovery from a SIGKILL to the gunicorn worker (its scoring process exits with it) to
the next 200 from `/ready`. The checkouts take turns round after round (the machine's speed
drifts by the minute), each with its own port, decision log and state; the medians are
compared, and each checkout's ratio to the first one's.

A checkout is ``NAME`` (this one) or ``NAME:SOURCE``, SOURCE a checkout of the project (a
``git worktree`` of another commit), run with this virtualenv.

Usage: python bench/bench_startup.py head base:/tmp/x [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_service import free_port
from production_stores import children, process_state

ROOT = Path(__file__).resolve().parents[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_ready(port: int, proc: subprocess.Popen[bytes], since: float) -> float:
    while not ready(port):
        if proc.poll() is not None:
            raise RuntimeError(f"risk serve exited with {proc.returncode}")
        if time.monotonic() - since > 120:
            raise TimeoutError("not ready in 120 s")
        time.sleep(0.02)
    return time.monotonic() - since


def one_round(source: Path, work: Path) -> tuple[float, float]:
    """(seconds to ready, seconds to ready again after the worker is killed)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "RISK_DECISION_LOG_PATH": str(work / f"decisions-{port}.sqlite"),
        "RISK_HASH_KEY": "bench-startup-" + "k" * 32,
        "RISK_STATE_SNAPSHOT_PATH": "",
    }
    command = [sys.executable, "-m", "training.cli", "serve", "--quiet", "--port", str(port)]
    command += ["--models", str(ROOT / "models")]
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        start = wait_ready(port, proc, started)
        time.sleep(1.0)
        (worker,) = children(proc.pid)  # the gunicorn master is the command, exec'd
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        while process_state(worker) not in ("Z", ""):
            time.sleep(0.005)  # gone: what answers next is the new worker
        recovery = wait_ready(port, proc, killed)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return start, recovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="NAME or NAME:SOURCE")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sources: dict[str, Path] = {}
    for spec in args.checkouts:
        name, _, source = spec.partition(":")
        sources[name] = Path(source).resolve() if source else ROOT
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sources}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for i in range(args.rounds):
            names = list(sources)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                times[name].append(one_round(sources[name], Path(tmp)))
                start, recovery = times[name][-1]
                print(f"round {i + 1} {name}: ready {start:.2f} s, again {recovery:.2f} s")
    first = next(iter(sources))
    base = [statistics.median(t[k] for t in times[first]) for k in (0, 1)]
    print("\ncheckout  ready (median, range)  after a killed worker  ratios to " + first)
    for name, rows in times.items():
        med = [statistics.median(t[k] for t in rows) for k in (0, 1)]
        lo = [min(t[k] for t in rows) for k in (0, 1)]
        hi = [max(t[k] for t in rows) for k in (0, 1)]
        print(
            f"{name:9} {med[0]:.2f} s ({lo[0]:.2f}-{hi[0]:.2f})    "
            f"{med[1]:.2f} s ({lo[1]:.2f}-{hi[1]:.2f})    "
            f"{med[0] / base[0]:.2f}, {med[1] / base[1]:.2f}"
        )


if __name__ == "__main__":
    main()
