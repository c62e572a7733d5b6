"""Harness of the reliability scripts (soak, faults, attacks) and of tests/test_load.py.

- `Service`: `risk serve --workers N` as a subprocess on a free 127.0.0.1 port, configured by
  RISK_* variables (`production_env`: Redis state, PostgreSQL decision log, API keys); ready
  once /ready answers and every worker has booted; its worker pids, their RSS, a SIGKILL to
  one of them, its log lines. It is stopped (its process group: SIGTERM, then SIGKILL) when
  the `with` block ends, on an exception and on Ctrl-C; `exit_on_signals` turns SIGTERM and
  SIGHUP into the same clean exit.
- `PrivateStores`: a Redis and a PostgreSQL of the run's own (tests/servers.py), never the
  machine's shared ones, optionally a fault proxy (in its own process) in front of Redis,
  and another in front of PostgreSQL.
- `LoadSpec`, `drive`, `LoadProcess`: a load generator of unique payment events over a known
  set of accounts, closed loop or at a fixed rate, from threads with keep-alive
  `http.client` connections, retrying a failed attempt with the same event_id (as a payment
  client does), optionally sending some events several times at once (`copy_fraction`) or
  again after their answer (`resend_fraction`). `drive` runs in the calling process (the CI
  test); `LoadProcess` runs it in a child process (`python bench/cluster.py drive SPEC`), so
  that the caller's own threads never delay it (or it them).
- `Attempt`, `window_counts`, `by_event`: what the client saw, attempt by attempt.
- `DecisionLogDb`, `settle`, `check_logged`, `probe_velocity`: the checks. Every event that
  got a 200 must be in the decision log (PostgreSQL) with the decision the client was told,
  and a final event per account, sent once everything has settled, must count exactly the
  account's earlier events (`account_events_24h`): none lost, none counted twice.
- `write_section`: each script's section of docs/reliability.md, between markers, with the
  date, the machine and the exact command; the figures come from the run.

Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
# tests/servers.py: private Redis, PostgreSQL, proxy; bench/production_stores.py: process listing.
# Both put on the path here, so the module loads the same whether run as a script or imported
# by a test (tests/test_load.py loads it by file, with only tests/ on the path).
for _directory in (ROOT / "tests", ROOT / "bench"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from production_stores import children  # noqa: E402
from servers import (  # noqa: E402
    PrivatePostgres,
    PrivateRedis,
    ProxyProcess,
    free_port,
)

# `snapshot` (below) runs a script on a clean copy of a commit and sets these two
RELIABILITY = Path(os.environ.get("RISK_RELIABILITY_DOC", ROOT / "docs" / "reliability.md"))
SNAPSHOT_OF = os.environ.get("RISK_RELIABILITY_SNAPSHOT")
SCORE_KEY = "reliability-score-" + "s" * 32  # scopes score, feedback, read
ADMIN_KEY = "reliability-admin-" + "a" * 32  # every scope
HASH_KEY = "reliability-hash-" + "h" * 32


# -- the service ----------------------------------------------------------------------------------
def production_env(
    *, state_url: str, pg_url: str, prefix: str = "risk:", **settings: Any
) -> dict[str, str]:
    """RISK_* variables of the production configuration: Redis state, PostgreSQL log, keys.

    Extra settings are passed by name without the prefix (STATE_TIMEOUT_MS=2000)."""
    env = {
        "RISK_STATE_URL": state_url,
        "RISK_STATE_PREFIX": prefix,
        "RISK_DECISION_LOG_URL": pg_url,
        "RISK_API_KEYS": f"{SCORE_KEY}:score+feedback+read,{ADMIN_KEY}",
        "RISK_HASH_KEY": HASH_KEY,
    }
    env.update({f"RISK_{k}": str(v) for k, v in settings.items()})
    return env


class Service:
    """`risk serve` as a subprocess: `with Service(...) as s:` starts it and waits until ready."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        workers: int = 2,
        threads: int = 4,
        models: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workers = workers
        self.threads = threads
        self.models = Path(models) if models is not None else ROOT / "models"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "server.log"
        self.metrics_dir = self.workdir / "metrics"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_")}
        self.env.update(
            {
                "RISK_DECISION_LOG_PATH": str(self.workdir / "decisions.sqlite"),
                "RISK_HASH_KEY_FILE": str(self.workdir / "hash.key"),
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                **env,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "training.cli",
            "serve",
            "--quiet",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--models",
            str(self.models),
        ]

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        _LIVE.add(self)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until /ready answers 200 and every worker has built its app (each writes its
        version gauges to a metrics file named by its pid; gunicorn lets a worker accept
        connections only after that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"risk serve exited; its log: {self.log_path}\n{self.tail()}")
            pids = set(self.worker_pids())
            booted = {
                int(p.stem.rsplit("_", 1)[-1]) for p in self.metrics_dir.glob("gauge_livemax_*.db")
            }
            if len(pids) == self.workers and pids <= booted and self.ready() is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"risk serve not ready in {timeout:.0f} s; log: {self.log_path}")

    def ready(self) -> dict[str, Any] | None:
        """One /ready answer (a new connection: any worker may take it), or None."""
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=2) as response:
                body: dict[str, Any] = json.load(response)
                return body
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        with suppress(ProcessLookupError, PermissionError):  # orphaned workers keep the port
            os.killpg(proc.pid, signal.SIGKILL)

    @property
    def master(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return children(self.proc.pid)

    def rss_kb(self) -> dict[int, int]:
        """Resident memory of every worker (kB), by pid."""
        return {pid: rss_kb(pid) for pid in self.worker_pids()}

    def kill_worker(self, sig: int = signal.SIGKILL) -> int:
        pid = self.worker_pids()[0]
        os.kill(pid, sig)
        return pid

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_lines()[-n:])
        except OSError:
            return ""

    def ready_samples(self, n: int = 12) -> list[dict[str, Any]]:
        return [r for r in (self.ready() for _ in range(n)) if r is not None]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O)."""
    ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(t) for i, t in enumerate(ticks) if i not in (3, 4)) / _TICK


class CpuMeter:
    """Cores used between `start` and `stop`: by the whole machine, and by the given processes
    and their children (the run's own: service, stores, load generator, this script), so
    that what other people's work took is visible."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)

    def _ours(self) -> float:
        seen: set[int] = set()
        total = 0.0
        stack = list(self.pids)
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += cpu_seconds(pid)
            stack += children(pid)
        return total + sum(os.times()[:2])

    def start(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), machine_busy_seconds(), self._ours()

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self.t0
        busy = (machine_busy_seconds() - self.busy0) / seconds
        ours = (self._ours() - self.ours0) / seconds
        return {"machine": busy, "run": ours, "others": max(0.0, busy - ours)}


# -- private stores --------------------------------------------------------------------------------
class PrivateStores:
    """A Redis and a PostgreSQL of this run's own, on free ports; closed on exit.

    ``persistent_redis``: Redis keeps an append-only file, so a Redis stopped and started
    again comes back with its data (a restarted Redis without it would be empty: every
    velocity would restart from zero). ``proxy``: the service reaches Redis through a
    fault proxy (`ProxyProcess`) that can slow it down; ``pg_proxy``: the service reaches
    PostgreSQL through one (`log_url`), while the checks still use `pg.url` directly."""

    def __init__(
        self, *, persistent_redis: bool = False, proxy: bool = False, pg_proxy: bool = False
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="risk-stores-"))
        self.redis = PrivateRedis(self.dir, persistent=persistent_redis)
        self.pg = PrivatePostgres()
        self.proxy: ProxyProcess | None = None
        self.pg_proxy: ProxyProcess | None = None
        self._proxied = proxy
        self._pg_proxied = pg_proxy

    def __enter__(self) -> PrivateStores:
        _LIVE.add(self)
        try:
            self.redis.start()
            self.pg.start()
            if self._proxied:
                self.proxy = ProxyProcess(self.redis.port)
            if self._pg_proxied:
                self.pg_proxy = ProxyProcess(self.pg.port)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state_url(self) -> str:
        return self.proxy.url if self.proxy is not None else self.redis.url

    @property
    def log_url(self) -> str:
        """The decision log's URL as the service reaches it (through `pg_proxy` if any)."""
        if self.pg_proxy is None:
            return self.pg.url
        return self.pg.url.replace(f":{self.pg.port}/", f":{self.pg_proxy.port}/")

    def pids(self) -> list[int]:
        """The Redis server and the PostgreSQL postmaster (its children are found from it)."""
        out = [self.redis.pid] if self.redis.pid else []
        with suppress(OSError, ValueError, IndexError):
            out.append(int((self.pg.data / "postmaster.pid").read_text().split()[0]))
        return out

    def redis_memory(self) -> dict[str, int]:
        """INFO memory used_memory and the number of keys of the private Redis."""
        import redis

        client = redis.Redis.from_url(self.redis.url, socket_timeout=10)
        try:
            info = client.info("memory")
            return {"used_memory": int(info["used_memory"]), "keys": int(client.dbsize())}
        finally:
            client.close()

    def close(self) -> None:
        _LIVE.discard(self)
        for step in (
            lambda: self.proxy.close() if self.proxy is not None else None,
            lambda: self.pg_proxy.close() if self.pg_proxy is not None else None,
            self.redis.stop,
            self.pg.close,
            lambda: shutil.rmtree(self.dir, ignore_errors=True),
        ):
            try:
                step()
            except Exception as exc:  # clean up the rest whatever one step says
                print(f"cleanup: {exc}", file=sys.stderr)


_LIVE: set[Any] = set()


def _cleanup_live() -> None:
    for thing in list(_LIVE):
        with suppress(Exception):
            thing.stop() if isinstance(thing, Service) else thing.close()


atexit.register(_cleanup_live)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP exit like Ctrl-C does: `with` blocks stop what they started."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def copy_models(target: Path) -> Path:
    """A copy of the committed models (promotions happen there, never in models/)."""
    shutil.copytree(ROOT / "models", target, ignore=shutil.ignore_patterns("audit.jsonl"))
    return target


# -- events --------------------------------------------------------------------------------------
def now_iso(offset_s: float = 0.0) -> str:
    when = datetime.fromtimestamp(time.time() + offset_s, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_id(run: str, k: int) -> str:
    return f"{run}-acct-{k}"


def payment(event_id: str, account: str, rng: random.Random, merchants: int) -> dict[str, Any]:
    """A payment now, from `account` (its own device, instrument and address, a profile)."""
    n = zlib.crc32(account.encode()) % 62500
    return {
        "event_id": event_id,
        "timestamp": now_iso(),
        "account_id": account,
        "event_type": "payment",
        "amount": round(rng.uniform(5, 400), 2),
        "channel": rng.choice(("app", "app", "web", "qr")),
        "merchant_id": f"m-{rng.randrange(merchants)}",
        "merchant_category": rng.choice(("grocery", "electronics", "transport", "restaurant")),
        "instrument_id": f"tok-{account}",
        "funding_source": "debit_card",
        "device_id": f"dev-{account}",
        "ip_address": f"10.{n // 250}.{n % 250}.{7 + n % 200}",
        "auth_method": "fingerprint",
        "account": {
            "created_at": "2024-03-01T00:00:00Z",
            "kyc_level": 2,
            "monthly_income": 6000.0,
            "credit_limit": 3000.0,
        },
    }


# -- the client ----------------------------------------------------------------------------------
class Http:
    """One keep-alive HTTP/1.1 connection to the service, reopened when needed."""

    IDLE_S = 1.0  # gunicorn closes an idle keep-alive connection after 2 s

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None
        self.last = 0.0

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        if self.conn is not None and time.monotonic() - self.last > self.IDLE_S:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        else:
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        self.last = time.monotonic()
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def score_headers(key: str = SCORE_KEY) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


@dataclass
class LoadSpec:
    url: str
    run: str  # event ids f"{run}-{i}", accounts f"{run}-acct-{k}"
    key: str = SCORE_KEY
    accounts: int = 100
    merchants: int = 200
    threads: int = 16
    rate: float = 0.0  # new events per second in all; 0: closed loop, as fast as answered
    seconds: float = 10.0  # new events stop after this
    events: int = 0  # or after this many (0: no limit)
    copy_fraction: float = 0.0  # events sent `copies` times at once, from different threads
    copies: int = 2
    resend_fraction: float = 0.0  # events sent again after their first 200 (a retry)
    explain_fraction: float = 0.0  # events that ask for their reasons ("explain": true)
    timeouts: tuple[float, ...] = (5.0,)  # per attempt, the last one repeated
    max_attempts: int = 8
    seed: int = 0


class Attempt(NamedTuple):
    event: str
    account: str
    kind: str  # new, copy (sent at once with another), resend (again after a 200)
    n: int  # attempt number within its job, from 0
    sched: float  # when the job was due (epoch seconds)
    t0: float  # sent
    t1: float  # answered or failed
    status: int  # HTTP status, 0 for none
    error: str  # "", "timeout", "conn"
    degraded: bool
    decision: str
    score: int
    fraud_version: str
    error_code: str  # the JSON error body's "error" of a non-200
    message: str  # and its message (first 200 characters)

    @property
    def outcome(self) -> str:
        if self.error:
            return self.error
        if self.status == 200:
            return "degraded" if self.degraded else "200"
        return f"{self.status // 100}xx"


class _Job(NamedTuple):
    event: str
    account: str
    body: bytes
    kind: str
    sched: float


class _Load:
    def __init__(self, spec: LoadSpec, stop: threading.Event) -> None:
        self.spec = spec
        self.stop = stop
        self.rng = random.Random(spec.seed)
        self.lock = threading.Lock()
        self.extra: list[_Job] = []  # resends, taken before new events
        self.created = 0
        self.started = time.time()
        self.attempts: list[Attempt] = []
        self.helpers: list[threading.Thread] = []
        self.headers = score_headers(spec.key)

    def new_job(self) -> tuple[_Job | None, list[_Job]]:
        """The next job (None: no more) and copies of it to send at the same time."""
        spec = self.spec
        with self.lock:
            if self.extra:
                return self.extra.pop(0), []
            if self.stop.is_set():
                return None, []
            i = self.created
            due = self.started + i / spec.rate if spec.rate else time.time()
            if (spec.events and i >= spec.events) or due - self.started >= spec.seconds:
                return None, []
            self.created += 1
            account = account_id(spec.run, self.rng.randrange(spec.accounts))
            event_id = f"{spec.run}-{i}"
            event = payment(event_id, account, self.rng, spec.merchants)
            if spec.explain_fraction and self.rng.random() < spec.explain_fraction:
                event["explain"] = True  # reasons by TreeSHAP, as a flagged payment gets
            body = json.dumps(event).encode()
            copies = spec.copies - 1 if self.rng.random() < spec.copy_fraction else 0
        if spec.rate:
            while not self.stop.is_set() and time.time() < due:
                self.stop.wait(min(0.05, max(0.0, due - time.time())))
        job = _Job(event_id, account, body, "new", due)
        # a payment's timestamp is when it happens: now, not when the job was planned
        return job, [job._replace(kind="copy") for _ in range(copies)]

    def run_job(self, job: _Job, client: Http) -> None:
        spec = self.spec
        for n in range(spec.max_attempts):
            timeout = spec.timeouts[min(n, len(spec.timeouts) - 1)]
            t0 = time.time()
            status, error, payload = 0, "", b""
            try:
                status, payload = client.request("POST", "/score", job.body, self.headers, timeout)
            except TimeoutError:
                error = "timeout"
            except (OSError, http.client.HTTPException):
                error = "conn"
            t1 = time.time()
            answer: dict[str, Any] = {}
            if payload:
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = {}
            fraud = answer.get("fraud") or {}
            attempt = Attempt(
                job.event,
                job.account,
                job.kind,
                n,
                job.sched,
                t0,
                t1,
                status,
                error,
                bool(answer.get("degraded")),
                str(answer.get("decision", "")),
                int(fraud.get("score", -1)) if fraud else -1,
                str((answer.get("model_versions") or {}).get("fraud", "")),
                "" if status == 200 else str(answer.get("error", "")),
                "" if status == 200 else str(answer.get("message", payload[:200]))[:200],
            )
            with self.lock:
                self.attempts.append(attempt)
                if (
                    status == 200
                    and job.kind == "new"
                    and self.rng.random() < spec.resend_fraction
                    and not self.stop.is_set()
                ):
                    self.extra.append(job._replace(kind="resend", sched=time.time()))
            if status == 200 or (400 <= status < 500 and status != 429):
                return
            if self.stop.is_set() and n >= 2:
                return
            time.sleep(min(0.02 * 2**n, 1.0))

    def run_copy(self, job: _Job) -> None:
        client = Http(self.spec.url)  # another connection, as another client thread has
        try:
            self.run_job(job, client)
        finally:
            client.close()

    def worker(self) -> None:
        client = Http(self.spec.url)
        try:
            while True:
                job, copies = self.new_job()
                if job is None:
                    return
                for copy in copies:  # the same request from other threads, at the same time
                    helper = threading.Thread(target=self.run_copy, args=(copy,))
                    helper.start()
                    with self.lock:
                        self.helpers.append(helper)
                self.run_job(job, client)
        finally:
            client.close()


def drive(spec: LoadSpec, stop: threading.Event | None = None) -> list[Attempt]:
    """Run the load in this process until it is done (or `stop` is set); every attempt."""
    load = _Load(spec, stop or threading.Event())
    threads = [threading.Thread(target=load.worker) for _ in range(spec.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in list(load.helpers):
        t.join()
    return sorted(load.attempts, key=lambda a: a.t0)


class LoadProcess:
    """`drive` in a child process; `stop()` ends it early (in-flight jobs finish)."""

    def __init__(self, spec: LoadSpec, workdir: Path) -> None:
        self.spec = spec
        self.spec_path = workdir / f"load-{spec.run}.json"
        self.out_path = workdir / f"load-{spec.run}.jsonl"
        self.spec_path.write_text(json.dumps(asdict(spec)))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "drive", str(self.spec_path)],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / f"load-{spec.run}.err").open("wb"),
        )
        _LIVE.add(self)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> list[Attempt]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            _LIVE.discard(self)
        if self.proc.returncode != 0:
            raise RuntimeError(f"load generator failed ({self.proc.returncode})")
        with self.out_path.open() as handle:
            return [Attempt(*json.loads(line)) for line in handle]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _drive_main(spec_path: str) -> None:
    raw = json.loads(Path(spec_path).read_text())
    raw["timeouts"] = tuple(raw["timeouts"])
    spec = LoadSpec(**raw)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    attempts = drive(spec, stop)
    out = Path(spec_path).with_suffix(".jsonl")
    with out.open("w") as handle:
        for a in attempts:
            handle.write(json.dumps(list(a)) + "\n")


# -- what the client saw -------------------------------------------------------------------------
OUTCOMES = ("200", "degraded", "4xx", "5xx", "timeout", "conn")


def window_counts(attempts: Iterable[Attempt], t_from: float, t_to: float) -> dict[str, Any]:
    """Attempts sent in [t_from, t_to): counts by outcome, and the non-200 statuses by code."""
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for a in attempts:
        if t_from <= a.t0 < t_to:
            counts[a.outcome] += 1
            if a.status and a.status != 200:
                codes[f"{a.status} {a.error_code}".strip()] += 1
    return {"attempts": sum(counts.values()), **{k: counts[k] for k in OUTCOMES}, "codes": codes}


@dataclass
class EventOutcome:
    account: str
    sends: int = 0  # jobs: the first send, copies and resends
    acked: bool = False
    answers: set[tuple[str, int, bool]] = field(default_factory=set)  # decision, score, degraded


def by_event(attempts: Iterable[Attempt]) -> dict[str, EventOutcome]:
    events: dict[str, EventOutcome] = {}
    for a in sorted(attempts, key=lambda a: a.t1):
        e = events.setdefault(a.event, EventOutcome(a.account))
        if a.n == 0:
            e.sends += 1
        if a.status == 200:
            e.acked = True
            e.answers.add((a.decision, a.score, a.degraded))
    return events


def percentiles(values: list[float], qs: Iterable[float] = (50, 99, 99.9)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    ordered = sorted(values)
    out = {}
    for q in qs:
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
        out[f"p{q:g}"] = ordered[index]
    out["max"] = ordered[-1]
    return out


# -- the decision log ------------------------------------------------------------------------------
class DecisionLogDb:
    """Read-only checks on the service's PostgreSQL decision log."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)

    def reconnect(self) -> None:
        import psycopg

        with suppress(Exception):
            self.conn.close()
        self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def rows(self, event_ids: Iterable[str]) -> dict[str, tuple[str, bool, str | None]]:
        """event_id -> (decision, degraded, logged account_events_24h) of the logged ones."""
        ids = list(event_ids)
        out: dict[str, tuple[str, bool, str | None]] = {}
        for i in range(0, len(ids), 5000):
            cursor = self.conn.execute(
                "SELECT event_id, decision, degraded, features->>'account_events_24h'"
                " FROM decisions WHERE event_id = ANY(%s)",
                (ids[i : i + 5000],),
            )
            for event_id, decision, degraded, count in cursor.fetchall():
                out[event_id] = (decision, bool(degraded), count)
        return out

    def count(self, like: str = "%") -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM decisions WHERE event_id LIKE %s", (like,)
        ).fetchone()
        return int(row[0]) if row else 0

    def conflicts(self) -> int:
        """Decisions kept aside because their event_id was logged with another body."""
        row = self.conn.execute(
            "SELECT count(*) FROM decision_conflicts c LEFT JOIN decisions d USING (event_id)"
            " WHERE d.body_hash IS DISTINCT FROM c.body_hash"
        ).fetchone()
        return int(row[0]) if row else 0

    def other_answers(self, event_ids: Iterable[str]) -> dict[str, set[tuple[str, bool]]]:
        """event_id -> (decision, degraded) of the answers kept in decision_conflicts with the
        logged body: a retry answered while neither Redis nor PostgreSQL knew the event."""
        out: dict[str, set[tuple[str, bool]]] = {}
        cursor = self.conn.execute(
            "SELECT c.event_id, c.decision, c.degraded FROM decision_conflicts c"
            " JOIN decisions d USING (event_id)"
            " WHERE c.body_hash = d.body_hash AND c.event_id = ANY(%s)",
            (list(event_ids),),
        )
        for event_id, decision, degraded in cursor.fetchall():
            out.setdefault(event_id, set()).add((decision, bool(degraded)))
        return out

    def close(self) -> None:
        self.conn.close()


def spooled_on_disk(service: Service) -> int:
    """Decisions waiting in every spool file of the service (read-only: the files' own
    count, whichever worker owns them)."""
    import sqlite3

    total = 0
    for path in (service.workdir / "spool").glob("spool-*.sqlite"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                total += int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])
        except sqlite3.Error:
            total += 0  # a file being created or retired
    return total


def backlog(service: Service, samples: int = 12) -> int:
    """Degraded events waiting for Redis, as several /ready answers report them (each from
    whichever worker took the connection)."""
    answers = service.ready_samples(samples)
    if not answers:
        return -1
    return sum(a["details"].get("state_store", {}).get("backlog", 0) for a in answers)


def settle(
    service: Service,
    db: DecisionLogDb,
    event_ids: Iterable[str],
    timeout: float = 120.0,
    spool_grace: float = 15.0,
) -> dict[str, Any]:
    """Wait until every given event is in PostgreSQL and no worker holds degraded events
    waiting for Redis (three checks in a row), then up to `spool_grace` seconds more for the
    spool files to empty; what is left of each is reported."""
    missing = set(event_ids)
    started = time.monotonic()
    quiet = 0
    waiting = -1
    while time.monotonic() - started < timeout:
        try:
            missing = missing - set(db.rows(missing))
        except Exception:
            db.reconnect()
            time.sleep(0.5)
            continue
        waiting = backlog(service)
        quiet = quiet + 1 if (not missing and not waiting) else 0
        if quiet >= 3:
            break
        time.sleep(0.5)
    grace = time.monotonic() + spool_grace
    spooled = spooled_on_disk(service)
    while spooled and time.monotonic() < grace:
        time.sleep(0.5)
        spooled = spooled_on_disk(service)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "missing": sorted(missing),
        "spooled": spooled,
        "backlog": waiting,
    }


def check_logged(db: DecisionLogDb, events: dict[str, EventOutcome]) -> dict[str, Any]:
    """Every acknowledged event in the log, with the decision (and degraded flag) that every
    one of its 200 answers gave; all 200 answers of one event the same, or else each of them
    logged ("answered twice": a retry answered degraded while neither Redis nor PostgreSQL
    knew the event, its answer kept in decision_conflicts)."""
    acked = [e for e, o in events.items() if o.acked]
    rows = db.rows(acked)
    others = db.other_answers([e for e in acked if e in rows])
    missing = [e for e in acked if e not in rows]

    def logged(e: str) -> set[tuple[str, bool]]:
        return {rows[e][:2]} | others.get(e, set())

    differs = [  # some 200 answer the client got is not in the log
        e
        for e in acked
        if e in rows and any((d, g) not in logged(e) for d, _, g in events[e].answers)
    ]
    inconsistent = [e for e in acked if len({(d, s) for d, s, _ in events[e].answers}) > 1]
    twice = [e for e in inconsistent if e in others and e not in differs]
    return {
        "acked": len(acked),
        "not_acked": len(events) - len(acked),
        "missing": missing,
        "answer_differs_from_log": differs,
        "inconsistent_answers": [e for e in inconsistent if e not in twice],
        "answered_twice": twice,
    }


def probe_velocity(
    service: Service,
    db: DecisionLogDb,
    events: dict[str, EventOutcome],
    run: str,
    *,
    tries: int = 10,
) -> dict[str, Any]:
    """A final payment per account once everything settled: its logged `account_events_24h`
    must equal the number of the account's earlier events (each counted once).

    A probe answered degraded is applied to Redis later (the worker's backlog): the next
    probe waits for that and counts it too. Accounts with an event never answered 200 are
    left out ("unsure": whether such an event counted is unknown)."""
    per_account: Counter[str] = Counter(o.account for o in events.values())
    unsure = {o.account for o in events.values() if not o.acked}
    client = Http(service.url)
    rng = random.Random(1)
    wrong: list[tuple[str, int, int]] = []
    unanswered: list[str] = []
    unlogged: list[str] = []
    degraded_probes = 0
    exact = 0
    for n, (account, expected) in enumerate(sorted(per_account.items())):
        event_id = ""
        for attempt in range(tries):
            event_id = f"{run}-probe-{n}-{attempt}"
            body = json.dumps(payment(event_id, account, rng, 10)).encode()
            status, data = client.request("POST", "/score", body, score_headers(), 30)
            answer = json.loads(data) if status == 200 else {}
            if status == 200 and not answer.get("degraded"):
                break
            if status == 200:  # counts once the backlog has applied it
                degraded_probes += 1
                expected += 1
            deadline = time.monotonic() + 30
            while backlog(service) != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            unanswered.append(account)
            continue
        row = None
        deadline = time.monotonic() + 30
        while row is None and time.monotonic() < deadline:  # it may wait in a spool
            row = db.rows([event_id]).get(event_id)
            if row is None:
                time.sleep(0.2)
        if row is None:
            unlogged.append(event_id)
            continue
        counted = int(float(row[2])) if row[2] is not None else -1
        if account in unsure:
            continue
        if counted == expected:
            exact += 1
        else:
            wrong.append((account, expected, counted))
    client.close()
    return {
        "accounts": len(per_account),
        "exact": exact,
        "wrong": wrong,  # (account, expected, counted)
        "unsure_accounts": len(unsure),
        "degraded_probes": degraded_probes,
        "unanswered": unanswered,  # no 200 answer that was not degraded in `tries`
        "unlogged": unlogged,  # answered, but not in PostgreSQL 30 s later
    }


def explain_event(attempts: Iterable[Attempt], event_id: str) -> str:
    """One event's attempts, for a report: kind/attempt outcome decision, in time order."""
    mine = sorted((a for a in attempts if a.event == event_id), key=lambda a: a.t0)
    t0 = mine[0].t0 if mine else 0.0
    return "; ".join(
        f"{a.kind}#{a.n} +{a.t0 - t0:.3f}s {a.outcome}"
        + (f" {a.decision}/{a.score}" if a.status == 200 else f" {a.error_code}")
        for a in mine
    )


# -- docs/reliability.md ---------------------------------------------------------------------------
SECTIONS = ("soak", "faults", "attacks")
_INTRO = """# Reliability

Evidence that the service keeps answering, loses nothing and lets nobody in under load,
failures and hostile input (issue 7). Every figure below is written by the script named in
its section (`python bench/<name>.py`); nothing here is typed in. Each script rewrites only
its own section, between its markers, with the date, the machine and the exact command.
The CI part (zero errors, every answer logged, exact velocities, on a real `risk serve
--workers 2` with Redis and PostgreSQL) is `tests/test_load.py`, run by `make test`.

The service under test is always the production configuration: `risk serve --workers 2`
(gthread, 4 threads each) on Redis state (`RISK_STATE_URL`) and a PostgreSQL decision log
(`RISK_DECISION_LOG_URL`), API keys on (`RISK_API_KEYS`), default timeouts (Redis 5 ms per
call, request deadline 50 ms, PostgreSQL 200 ms before the spool). The scripts start their
own Redis (`redis-server` on a free port) and their own PostgreSQL cluster (`initdb` and
`pg_ctl` in a temporary directory, run as the `postgres` user when the script runs as root),
never the machine's shared ones, and remove them when they stop (also on Ctrl-C). Clients
are Python threads with keep-alive `http.client` connections in a separate process; a
failed attempt (timeout, connection error, 5xx) is retried with the same event_id, as a
payment client would.

The results below were made with `python bench/cluster.py snapshot bench/<name>.py`, which
runs the script on a clean copy of HEAD (`git archive`) instead of a working tree that may
hold someone's unfinished changes; each section names that commit. The machine has two
cores shared with everything else running on it: each header says whether another
benchmark (wrk) was running, and the soak measures the cores other processes took.
"""


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return (
        f"{os.cpu_count()} cores ({model or platform.processor()}), "
        f"{mem_kb / 2**20:.0f} GiB, Python {platform.python_version()}"
    )


def commit() -> str:
    if SNAPSHOT_OF:
        return f"{SNAPSHOT_OF} (a clean snapshot of it: `python bench/cluster.py snapshot`)"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}{' + uncommitted changes' if dirty else ''}"


def other_load() -> str:
    """What else was running: another benchmark (wrk) shares the two cores."""
    wrk = subprocess.run(["pgrep", "-x", "wrk"], capture_output=True, check=False).returncode == 0
    load = os.getloadavg()[0]
    return f"1-minute load average {load:.2f} (this run's own processes included), " + (
        "wrk (another benchmark) running" if wrk else "no other benchmark (wrk) running"
    )


def script_command(script: str) -> list[str]:
    """The command as run: through `snapshot` when it was."""
    prefix = ["python", "bench/cluster.py", "snapshot"] if SNAPSHOT_OF else ["python"]
    return [*prefix, script, *sys.argv[1:]]


def header(command: list[str], started: datetime, seconds: float, before: str) -> str:
    return (
        f"Run {started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s; machine: {machine()}; "
        f"commit {commit()}; at the start: {before}; at the end: {other_load()}.\n\n"
        f"Command: `{' '.join(command)}`\n"
    )


def write_section(name: str, text: str, path: Path = RELIABILITY) -> None:
    """Replace the section `name` of docs/reliability.md (creating the file if needed)."""
    assert name in SECTIONS
    if path.exists():
        doc = path.read_text()
    else:
        doc = _INTRO + "".join(
            f"\n<!-- {s}: begin -->\n(not run yet)\n<!-- {s}: end -->\n" for s in SECTIONS
        )
    first = doc.find("<!-- ")
    doc = _INTRO + (doc[first - 1 :] if first > 0 else "")  # the introduction as it is now
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else f"{doc}\n{block}\n"
    path.write_text(doc)


def table(header_row: list[str], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


@contextmanager
def tmpdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def new_run_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def snapshot(argv: list[str]) -> int:
    """`python bench/cluster.py snapshot bench/faults.py [ARGS]`: run a reliability script on
    a clean copy of HEAD (`git archive`), not on the working tree, which may hold someone's
    unfinished changes; its results still go to this checkout's docs/reliability.md."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tmpdir("risk-snapshot-") as copy:
        archive = subprocess.run(
            ["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(copy),  # risk_service and training from the copy
            "RISK_RELIABILITY_DOC": str(RELIABILITY),
            "RISK_RELIABILITY_SNAPSHOT": sha,
        }
        try:
            return subprocess.run(
                [sys.executable, str(copy / argv[0]), *argv[1:]], env=env
            ).returncode
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "drive":
        _drive_main(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "snapshot":
        sys.exit(snapshot(sys.argv[2:]))
    else:
        sys.exit(
            "usage: python bench/cluster.py snapshot bench/SCRIPT.py [ARGS] (on a clean copy of"
            " HEAD), or drive SPEC.json (the load generator's child)"
        )
