"""`risk serve`: gunicorn on the committed models, and its refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from training.cli import default_threads, main

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_more_than_one_worker_is_refused_with_the_memory_store(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RISK_STATE_URL", raising=False)
    assert main(["serve", "--workers", "2", "--models", str(ROOT / "models")]) == 2
    err = capsys.readouterr().err
    assert "--workers 2" in err and "in-memory" in err and len(err.strip().splitlines()) == 1


def test_one_thread_by_default_only_where_requests_never_wait() -> None:
    """In memory and SQLite without an fsync per commit: the event loop answers (1 thread);
    Redis, PostgreSQL or an fsync per commit: threads overlap the waits (4)."""
    assert default_threads({}) == 1
    assert default_threads({"RISK_DECISION_LOG_SYNC": "NORMAL"}) == 1
    assert default_threads({"RISK_DECISION_LOG_URL": "sqlite:///var/d.sqlite"}) == 1
    assert default_threads({"RISK_STATE_URL": "redis://127.0.0.1:6379/0"}) == 4
    assert default_threads({"RISK_DECISION_LOG_URL": "postgresql://h/db"}) == 4
    assert default_threads({"RISK_DECISION_LOG_SYNC": "FULL"}) == 4
    assert default_threads({"RISK_DECISION_LOG_SYNC": '"full"'}) == 4


def test_missing_models_are_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--models", str(tmp_path)]) == 2
    assert "no fraud champion" in capsys.readouterr().err


def test_a_tampered_champion_stops_risk_serve_before_gunicorn_without_loading_models(
    tmp_path: Path,
) -> None:
    """The check before gunicorn verifies hashes, feature names and the policy, as the workers
    will, without importing LightGBM (seconds of every start): gunicorn's exec is replaced by a
    report of what was imported."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    probe = (
        "import os, sys\n"
        "from training import cli\n"
        "def exec_(*args):\n"
        "    print('exec', 'lightgbm' in sys.modules, 'sklearn' in sys.modules, flush=True)\n"
        "    os._exit(0)\n"
        "cli.os.execvpe = exec_\n"
        "sys.exit(cli.main(['serve', '--quiet', '--models', sys.argv[1]]))\n"
    )

    def serve_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe, str(models)], capture_output=True, text=True, timeout=60
        )

    ok = serve_check()
    assert (ok.returncode, ok.stdout.strip()) == (0, "exec False False"), ok.stderr
    booster = next((models / "fraud").glob("*/fraud_lgbm.txt"))
    booster.write_text(booster.read_text().replace("tree", "tree ", 1))
    refused = serve_check()
    assert refused.returncode == 2 and "exec" not in refused.stdout
    assert "fraud_lgbm.txt has SHA-256" in refused.stderr and "refusing" in refused.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`risk serve` on the committed models, as the README starts it: its URL and log."""
    tmp_path = tmp_path_factory.mktemp("served")
    port = free_port()
    log = tmp_path / "decisions.sqlite"
    env = {
        **os.environ,
        "RISK_DECISION_LOG_PATH": str(log),
        "RISK_HASH_KEY": "serve-test-" + "k" * 32,
    }
    command = [
        sys.executable,
        "-m",
        "training.cli",
        "serve",
        "--quiet",
        "--port",
        str(port),
        "--models",
        str(ROOT / "models"),
    ]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=1) as response:
                    assert json.load(response)["status"] == "ready"
                    break
            except (OSError, urllib.error.URLError):
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield url, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_risk_serve_answers_under_gunicorn(served: tuple[str, Path]) -> None:
    url, _ = served
    when = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "event_id": "srv-1",
        "timestamp": when,
        "account_id": "a1",
        "event_type": "payment",
        "amount": 12.5,
    }
    request = urllib.request.Request(
        url + "/score",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    assert body["event_id"] == "srv-1"
    assert body["decision"] in {"approve", "challenge", "review", "decline"}
    bad = urllib.request.Request(
        url + "/score", data=b"[]", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(bad, timeout=10)
    assert error.value.code == 400
    error.value.close()


def test_the_open_loop_benchmark_client_counts_every_answer(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """bench/openloop.c, which docs/benchmarks.md's latencies come from, against the real
    server: every request it sends is a distinct event, answered and logged, and it tells
    approvals from the other decisions by the answers themselves."""
    import sqlite3

    url, log = served
    binary = tmp_path / "openloop"
    source = ROOT / "bench" / "openloop.c"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source), "-lm"], check=True)
    when = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    bodies = tmp_path / "bodies.jsonl"
    lines = []
    for i, amount in enumerate((12.5, 30.0, 4999.0)):
        event = {"event_id": "__ID__", "timestamp": when, "account_id": f"ol-{i}"}
        lines.append(json.dumps({**event, "event_type": "payment", "amount": amount}))
    bodies.write_text("\n".join(lines) + "\n")
    port = url.rsplit(":", 1)[1]
    with sqlite3.connect(log) as db:  # the server is running: this reads its WAL too
        (before,) = db.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()
    db.close()
    command = [str(binary), port, "/score", str(bodies), "200", "1", "4", "7", "0"]
    trace = tmp_path / "trace.txt"  # every answer: arrival µs, latency µs, approved
    env = {**os.environ, "OPENLOOP_TRACE": str(trace)}
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=60, env=env
    ).stdout
    result = json.loads(out)
    sent = result["all"]["requests"]
    assert 120 <= sent <= 300  # Poisson arrivals at 200 a second for a second
    assert result["errors"] == 0
    assert result["approve"]["requests"] + result["other"]["requests"] == sent
    assert 0 < result["all"]["p50_ms"] <= result["all"]["p99_ms"] <= result["all"]["max_ms"]
    answers = [tuple(int(v) for v in line.split()) for line in trace.read_text().splitlines()]
    assert len(answers) == sent
    assert sum(approved for _, _, approved in answers) == result["approve"]["requests"]
    assert all(0 <= arrival < 1_000_000 and latency > 0 for arrival, latency, _ in answers)
    slowest = max(latency for _, latency, _ in answers)
    assert abs(slowest - result["all"]["max_ms"] * 1000) <= 1  # µs here, ms to 4 places there
    with sqlite3.connect(log) as db:
        decisions = dict(
            db.execute(
                "SELECT decision, count(*) FROM decisions WHERE seq > ? GROUP BY 1", (before,)
            ).fetchall()
        )
    db.close()
    assert sum(decisions.values()) == sent  # one decision logged a request: every id was new
    assert sent - decisions.get("approve", 0) == result["other"]["requests"]


def test_an_answer_reaches_the_client_in_one_segment(served: tuple[str, Path]) -> None:
    """The worker sends a response's head and body together (`risk_service.http_response`):
    the client's socket counts one TCP segment in per answer, where gunicorn's two sends made
    two (Linux's TCP_INFO ``tcpi_segs_in``; the server's ACK of the request rides on it)."""
    import struct

    def segments_in(sock: socket.socket) -> int:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return int(struct.unpack_from("I", info, 140)[0])  # after 140 bytes of older fields

    host, port = served[0].removeprefix("http://").split(":")
    counts = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for _ in range(12):
            before = segments_in(sock)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            data = b""
            while not data.endswith(b"}"):
                data += sock.recv(65536)
            time.sleep(0.01)  # nothing more comes
            counts.append(segments_in(sock) - before)
    assert counts[3:] == [1] * 9, counts  # the first few: the connection's quick ACKs


def test_the_gunicorn_master_imports_the_libraries_and_not_the_service() -> None:
    """`on_starting` (in the master, before any fork) imports LightGBM and the other libraries,
    so a replaced worker starts without importing them again; none of the service's modules,
    whose metrics are per process and which a SIGHUP reload loads anew."""
    probe = (
        "import sys, threading\n"
        "from risk_service import gunicorn_conf\n"
        "gunicorn_conf.on_starting(None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('risk_service')),\n"
        "      all(m in sys.modules for m in gunicorn_conf.LIBRARIES),\n"
        "      'prometheus_client' in sys.modules, threading.active_count())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "['risk_service',",
        "'risk_service.gunicorn_conf']",
        "True",
        "False",
        "1",
    ]
