"""Helpers of bench_service.py --production: the stores, /metrics, and a py-spy profile.

`ProductionStores` gives one benchmark run its own space on the machine's Redis (a fresh key
prefix, its keys deleted after) and PostgreSQL (a fresh schema in the search path of the
decision-log URL, dropped after), and counts what the run left in the decision log before
cleaning up. `scrape` reads the service's /metrics; `delta` is what one load run added.
`cpu_snapshot` and `cpu_used` give the cores each process used during a run (the service,
Redis, PostgreSQL, wrk, and everything else on a shared machine). `profile` samples one
gunicorn worker with py-spy (a profiler, not a project dependency: `pip install py-spy`) and
`attribute` sorts the /score samples into the stages of the production path.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_URL = "postgresql://127.0.0.1:5432/test"


class ProductionStores:
    """A fresh Redis key prefix and PostgreSQL schema for one run; `close` removes both."""

    def __init__(self, redis_url: str = REDIS_URL, pg_url: str = PG_URL) -> None:
        import psycopg
        import redis

        tag = uuid.uuid4().hex[:10]
        self.prefix = f"bench-{tag}:"
        self.schema = f"bench_{tag}"
        self.redis_url = redis_url
        self.pg_admin_url = pg_url
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.redis.ping()
        self.pg = psycopg.connect(pg_url, autocommit=True, connect_timeout=5)
        self.pg.execute(f"CREATE SCHEMA {self.schema}")
        self.pg_url = f"{pg_url}?options=-csearch_path%3D{self.schema}"

    def env(self) -> dict[str, str]:
        """The service's RISK_* settings that put it on these stores."""
        return {
            "RISK_STATE_URL": self.redis_url,
            "RISK_STATE_PREFIX": self.prefix,
            "RISK_DECISION_LOG_URL": self.pg_url,
        }

    def load_profiles(self, accounts: Path, hash_key: bytes) -> int:
        """The accounts table into this run's Redis space with the service's own code
        (`service.load_accounts` -> `RedisState.put_profiles`), with a 10 s timeout instead of
        the request path's 5 ms: on a busy machine the service's own start-up load of 1,000
        SETs per pipeline misses 5 ms, and the worker fails to boot (docs/benchmarks.md)."""
        from risk_service.features.online import profile_from_row
        from risk_service.redis_state import RedisState
        from risk_service.service import load_accounts

        class _Loader:  # what load_accounts needs of a Scorer: ingest_profiles
            def __init__(self, state: RedisState) -> None:
                self.state = state

            def ingest_profiles(self, rows: Any, marker: str | None = None) -> int:
                pairs = ((r["account_id"], profile_from_row(r)) for r in rows)
                return self.state.put_profiles(pairs, marker=marker)

        state = RedisState(self.redis_url, hash_key, prefix=self.prefix, timeout_ms=10_000)
        try:
            return load_accounts(_Loader(state), str(accounts))  # type: ignore[arg-type]
        finally:
            state.close()

    def decisions(self) -> dict[str, int]:
        """Rows in the run's decisions table: all, degraded, and per decision."""
        table = f"{self.schema}.decisions"
        total, degraded = self.pg.execute(
            f"SELECT COUNT(*), COUNT(*) FILTER (WHERE degraded) FROM {table}"
        ).fetchone()  # type: ignore[misc]
        rows = self.pg.execute(f"SELECT decision, COUNT(*) FROM {table} GROUP BY 1").fetchall()
        return {"rows": int(total), "degraded": int(degraded), **{d: int(n) for d, n in rows}}

    def decisions_after(self, seq: int) -> dict[str, int]:
        rows = self.pg.execute(
            f"SELECT decision, COUNT(*) FROM {self.schema}.decisions WHERE seq > %s GROUP BY 1",
            (seq,),
        ).fetchall()
        return {d: int(n) for d, n in rows}

    def max_seq(self) -> int:
        row = self.pg.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.schema}.decisions")
        return int(row.fetchone()[0])  # type: ignore[index]

    def core_latency(self, after_seq: int, last_seq: int) -> dict[str, float | None]:
        """Percentiles of the records' latency_ms in a seq range: the scoring core up to the
        log append (Redis round trips and lock waits, features, models, policy, reasons; no
        HTTP, no log append)."""
        row = self.pg.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99, 0.999]) WITHIN GROUP (ORDER BY latency_ms),"
            " AVG(latency_ms), AVG(pg_column_size(d.*))"
            f" FROM {self.schema}.decisions d WHERE seq > %s AND seq <= %s",
            (after_seq, last_seq),
        ).fetchone()
        if row is None or row[0] is None:
            return {}
        p50, p99, p999 = row[0]
        return {
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "mean_ms": float(row[1]),
            "row_bytes": float(row[2]),
        }

    def wal_lsn(self) -> str:
        """The server's WAL position (every database's writes: others' too on a shared box)."""
        return str(self.pg.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]

    def wal_bytes_since(self, lsn: str) -> int:
        row = self.pg.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,))
        return int(row.fetchone()[0])  # type: ignore[index]

    def redis_footprint(self, sample: int = 2000) -> dict[str, Any]:
        """Keys under the prefix, and the mean blob size per key kind (a sample of keys)."""
        sizes: dict[str, list[int]] = defaultdict(list)
        n = 0
        for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
            n += 1
            if n <= sample:
                parts = key.decode()[len(self.prefix) :].split(":")
                kind = parts[-2] if len(parts) > 1 else parts[0]  # e.g. the watermark
                sizes[kind].append(int(self.redis.strlen(key)))
        return {
            "keys": n,
            "mean_bytes": {k: round(sum(v) / len(v)) for k, v in sorted(sizes.items())},
        }

    def close(self) -> None:
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.redis.delete(*keys[i : i + 500])
        self.redis.close()
        self.pg.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.pg.close()


def spooled_decisions(spool_dir: Path) -> int:
    """Decisions left in the local spool files (PostgreSQL did not take them in time)."""
    total = 0
    for path in spool_dir.glob("spool-*.sqlite"):
        with sqlite3.connect(path) as conn:
            total += int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    return total


# -- /metrics ------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(_LABEL.findall(match.group(2) or ""))
        out[(match.group(1), labels)] = float(match.group(3))
    return out


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def delta(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """What one load run added: answers, degraded answers, Redis calls and their times."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    store: dict[str, dict[str, float | None]] = {}
    pairs = sorted(
        {
            (dict(lab)["store"], dict(lab)["operation"])
            for (n, lab), v in d.items()
            if n == "risk_store_duration_seconds_count" and v > 0
        }
    )
    for name, op in pairs:  # redis begin/commit/get, postgres commit (a batch), spool commit
        count = total(d, "risk_store_duration_seconds_count", store=name, operation=op)
        seconds = total(d, "risk_store_duration_seconds_sum", store=name, operation=op)
        store[f"{name} {op}"] = {
            "calls": count,
            "mean_ms": 1000 * seconds / count,
            "p50_ms": _quantile(d, 0.5, store=name, operation=op),
            "p99_ms": _quantile(d, 0.99, store=name, operation=op),
        }
    answered = total(d, "risk_http_request_duration_seconds_count", endpoint="/score")
    served = total(d, "risk_http_request_duration_seconds_sum", endpoint="/score")
    return {
        "decisions": total(d, "risk_decisions_total"),
        "degraded": total(d, "risk_degraded_answers_total"),
        "late": total(d, "risk_late_events_total"),
        "replays": total(d, "risk_idempotent_replays_total"),
        "store_errors": {
            f"{dict(lab)['store']} {dict(lab)['operation']}": v
            for (n, lab), v in d.items()
            if n == "risk_store_errors_total" and v > 0
        },
        "auth_failures": total(d, "risk_auth_failures_total"),
        "score_hook_mean_ms": 1000 * served / answered if answered else None,
        "stores": store,
    }


def _quantile(d: dict[Any, float], q: float, **labels: str) -> float | None:
    """The upper bound of the histogram bucket holding quantile q (bucket resolution)."""
    buckets = sorted(
        (float(dict(lab)["le"]), v)
        for (n, lab), v in d.items()
        if n == "risk_store_duration_seconds_bucket" and set(labels.items()) <= lab
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    need = q * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= need:
            return bound * 1000
    return None


# -- py-spy --------------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """A process's children (a gunicorn master's workers, a worker's scoring process, the
    postmaster's backends): from /proc, so no `ps` child of ours counts as wrk's CPU; `ps`
    where the kernel has no such file."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        text = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:  # unreadable: its children cannot be told
        return []
    return [int(p) for p in text.split()]


def process_state(pid: int) -> str:
    """A process's state letter in /proc (T: stopped, Z: a zombie), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def profile(pid: int, seconds: int, out: Path, *, gil: bool = False) -> Path | None:
    """Sample one process with py-spy for `seconds` (collapsed stacks, idle threads included
    unless `gil`: then only the thread holding the GIL). None when py-spy is missing."""
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy is needed for --profile: pip install py-spy (not a project dependency)")
        return None
    command = [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking", "--threads"]
    command += ["--gil"] if gil else ["--idle"]
    subprocess.run(command, check=True, capture_output=True)
    return out


def _lock_line() -> str:
    """`score_shared`'s line that takes the scorer lock: a sample stopped there is waiting."""
    source = Path(__file__).resolve().parent.parent / "risk_service" / "scoring_shared.py"
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if line.strip() == "with scorer.lock:":
            return f"score_shared (risk_service/scoring_shared.py:{number})"
    return "score_shared (risk_service/scoring_shared.py:?)"


# (stage, pattern): a /score sample goes to the first stage (in this order) with a pattern
# found in any frame of its stack; frames read "function (file:line)".
STAGES: tuple[tuple[str, str], ...] = (
    ("PostgreSQL append: waiting for another thread's group commit", r"^$"),  # see _stage
    ("PostgreSQL append: own commit (INSERT round trip, COMMIT)", r"decision_log_pg\.py"),
    ("SQLite append (embedded decision log)", r"decision_log\.py"),
    ("Redis begin (MGET round trip)", r"^RedisState\.begin "),
    ("Redis commit (Lua script round trip)", r"^RedisState\.commit "),
    ("Redis other calls", r"redis_state\.py"),
    ("TreeSHAP reasons (non-approve decisions)", r"(_fraud_reasons|\.contributions )"),
    ("state blobs: decode JSON", r"codec\.py"),
    ("idempotency record: encode", r"^encode_stored "),
    ("fraud and credit models", r"(forest\.py|fraud_model\.py|credit_model\.py)"),
    ("policy", r"policy\.py"),
    ("features + state update (engine)", r"risk_service/features/"),
    ("request validation and JSON parsing", r"requests\.py"),
    ("decision record, response dict", r"scoring\.py"),
    ("response JSON", r"^_json .*api\.py"),
    ("access log line", r"logs\.py"),
    ("metrics", r"metrics\.py"),
    ("auth and request-id hooks", r"web\.py"),
)


def attribute(raw: Path) -> dict[str, Any]:
    """Shares of the /score samples (those under `api.score`) by stage of the request path."""
    lock_line = _lock_line()
    counts: Counter[str] = Counter()
    all_samples = 0
    score_samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        weight = int(n)
        all_samples += weight
        frames = stack.split(";")
        if not any(re.match(r"score \(risk_service/api\.py", f) for f in frames):
            continue
        score_samples += weight
        counts[_stage(frames, lock_line)] += weight
    return {
        "samples": all_samples,
        "score_samples": score_samples,
        "shares": {k: v / score_samples for k, v in counts.most_common()} if score_samples else {},
    }


def _stage(frames: list[str], lock_line: str) -> str:
    project = [f for f in frames if "risk_service/" in f]
    if project and project[-1] == lock_line:
        return "wait for the worker's scorer lock (another thread's Redis transaction)"
    if any(f.startswith("PostgresDecisionLog._submit") for f in frames) and frames[-1].startswith(
        "Condition.wait"
    ):
        return STAGES[0][0]
    for stage, pattern in STAGES[1:]:
        if any(re.search(pattern, f) for f in frames):
            return stage
    return "Flask, werkzeug, gunicorn (rest of the request)"


def connections_per_process(port: int) -> list[int]:
    """How many established connections to `port` each server process holds, largest first:
    a keep-alive connection stays with the gunicorn worker that accepted it."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted(Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


# -- CPU accounting ------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, which: tuple[int, ...] = (11, 12), *, main_thread: bool = False) -> float:
    """CPU seconds of a process: user and system time (fields 14 and 15 of its stat); of its
    main thread alone with `main_thread` (a one-thread worker's event loop)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in which) / _TICK


def _named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def cpu_snapshot(master: int) -> dict[str, float]:
    """CPU seconds so far: the machine (busy), the service (gunicorn master and workers), the
    workers' main threads (`loop`: where a one-thread worker answers), their scoring processes
    (`scoring`: a worker's children, `risk_service/scoring_process.py`), Redis, PostgreSQL (all
    its processes) and this script's finished children (wrk)."""
    import resource

    ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(t) for i, t in enumerate(ticks) if i not in (3, 4)) / _TICK  # not idle, iowait
    workers = children(master)
    service = [master, *workers]
    return {
        "machine": busy,
        "service": sum(_proc_cpu(p) for p in service),
        "loop": sum(_proc_cpu(p, main_thread=True) for p in workers),
        "scoring": sum(_proc_cpu(c) for p in workers for c in children(p)),
        "service_kernel": sum(_proc_cpu(p, (12,)) for p in service),
        "redis": sum(_proc_cpu(p) for p in _named("redis-server")),
        "postgres": sum(_proc_cpu(p) for p in _named("postgres")),
        "wrk": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
    }


def cpu_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used on average between two snapshots; `other` is the rest of the machine
    (other people's work on a shared box, the kernel's softirq time, this script)."""
    cores = {k: round((after[k] - before[k]) / seconds, 2) for k in before}
    known = (
        cores["service"] + cores["scoring"] + cores["redis"] + cores["postgres"] + cores["wrk"]
    )  # kernel: in service
    cores["other"] = round(cores["machine"] - known, 2)
    return cores
