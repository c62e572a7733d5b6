"""Faults under load: what the client sees, and that nothing is lost or counted twice.

Starts a private Redis (append-only file on, so a Redis stopped and started again comes back
with its data; for redis-slow only, the service reaches it through a fault proxy in a process
of its own) and a private PostgreSQL cluster (bench/cluster.py; for postgres-slow only, the
service reaches it through such a proxy too, the checks directly), and `risk serve --workers 2`
on them with API keys and a copy of the committed models, afresh for each fault (what one
fault leaves behind must not show up as another's). Then, one after the other, each fault
under a steady stream of unique payment events (`--rate`, default 150 a second, 16 client
threads, 200 accounts per fault; 3% of the events are sent again after their answer, as a
client retries when it lost an answer; a failed attempt is retried with the same event_id):

- kill-worker: one gunicorn worker killed with SIGKILL (gunicorn starts another);
- redis-stop: the Redis server stopped (SIGTERM) for 10 s, then started again;
- redis-stop-kill: both: Redis stopped for 10 s and, halfway, a worker killed with degraded
  events waiting in its backlog (the new worker adopts its backlog file);
- postgres-stop: the PostgreSQL server stopped (`pg_ctl stop -m fast`) for 10 s, then
  started again (decisions go to the local spool meanwhile, and are flushed after);
- postgres-freeze: every process of the PostgreSQL cluster (the postmaster and all its
  children: backends, checkpointer, WAL writer, ...) stopped with SIGSTOP for 10 s, then
  resumed with SIGCONT: a server that accepts connections (the kernel does) and never answers,
  which only the service's own timeouts, watchdog and circuit breaker can tell from a slow one;
- redis-slow: every Redis round trip slowed to 50 ms (25 ms each way in the proxy) for 10 s;
- postgres-slow: every PostgreSQL round trip slowed to 50 ms (25 ms each way in the proxy)
  for 10 s: within the service's 200 ms timeout, so not a failure, but over its 20 ms hedge
  (`DECISION_LOG_HEDGE_MS`): a commit not confirmed by then goes to the local spool as well,
  and the next second's commits straight there (the proxy delays each chunk it forwards, so
  a message over ~8 KiB can pay 25 ms twice);
- promote: a new fraud model version (the champion's files under a new version, as
  tests/test_lifecycle.py's clone_fraud makes it) promoted with POST /admin/promote;
- corrupt-promote: a cloned version with one byte of its model file flipped, made champion
  by editing registry.json directly (no verification); then the registry is restored;
- impatient: no server fault; every event sent 3 times at once from 3 threads, with client
  timeouts of 20 ms, 50 ms, 100 ms, ... and retries until answered.

Each fault reports the attempts the client made before, during and after the fault window
(200, degraded, 4xx, 5xx, client timeouts, connection errors) and, for each window, the
client-side latency (p50, p99, max, from send to answer) of the attempts answered 200
(degraded ones included), separately for first attempts (an event's first send) and for
the sends of an event_id already sent (a retry after a failed attempt, a resend after a 200,
a simultaneous copy): a stall of the retries alone (say, retries of already-logged events
waiting seconds on a frozen PostgreSQL) hides in the counts; answers that took 1 s or more
get a note with the slowest one's attempts. Then, once the system has
settled (spool flushed, degraded events applied to Redis), checks that every event answered
200 is in the PostgreSQL decision log with the decision the client got (none lost), that a
final payment on each of the fault's accounts counts exactly that account's earlier events
(none lost, none counted twice), that the log has one row per event and no conflicts.

Usage: python bench/faults.py [--quick] [--rate 150] [--only NAME ...]
(--quick: 5 s fault windows and shorter windows around them). Prints a summary, rewrites
the "faults" section of docs/reliability.md (unless --no-doc) and exits non-zero if a goal
fails: zero 5xx, zero acknowledged decisions missing from the log, zero double counts,
promotions with zero failed requests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cluster
from production_stores import children, process_state

ACCOUNTS = 200
RESEND = 0.03
IMPATIENT_TIMEOUTS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Fault:
    name: str
    title: str
    apply: Callable[[], str]
    revert: Callable[[], str] | None = None
    load: dict[str, Any] = field(default_factory=dict)  # LoadSpec overrides
    zero_failures: bool = False  # promotions: not one failed request
    check: Callable[[list[cluster.Attempt], float, float], dict[str, Any]] | None = None


@dataclass
class Result:
    fault: Fault
    windows: dict[str, dict[str, Any]]
    notes: list[str]
    settled: dict[str, Any]
    logged: dict[str, Any]
    velocity: dict[str, Any]
    rows: int
    conflicts: int
    log_errors: list[str]
    extra: dict[str, Any]
    latency: dict[str, dict[str, dict[str, float]]]  # window -> first/retry -> n, p50, p99, max

    @property
    def failed_requests(self) -> int:
        return sum(w["4xx"] + w["5xx"] + w["timeout"] + w["conn"] for w in self.windows.values())

    @property
    def fivexx(self) -> int:
        return sum(w["5xx"] for w in self.windows.values())

    def goals(self) -> dict[str, bool]:
        goals = {
            "zero 5xx": self.fivexx == 0,
            "none lost": not self.logged["missing"] and not self.velocity["unlogged"],
            "every answer in the log": not self.logged["answer_differs_from_log"]
            and not self.logged["inconsistent_answers"],
            "none counted twice": not self.velocity["wrong"]
            and self.conflicts == 0
            and self.rows == self.logged["acked"],
        }
        if self.fault.zero_failures:
            goals["zero failed requests"] = self.failed_requests == 0
        goals.update(self.extra.get("goals", {}))
        return goals


class Faults:
    """The running system and the faults that can be done to it."""

    def __init__(
        self, service: cluster.Service, stores: cluster.PrivateStores, models: Path, quick: bool
    ) -> None:
        self.service = service
        self.stores = stores
        self.models = models
        self.fault_s = 5.0 if quick else 10.0
        self.notes: list[str] = []
        self.first_version = self.champion()
        self.promoted: str | None = None
        self.frozen: list[int] = []  # PostgreSQL's processes stopped by pg_freeze

    # -- kill a worker ---------------------------------------------------------------------
    def kill_worker(self) -> str:
        before = set(self.service.worker_pids())
        pid = self.service.kill_worker()
        killed_at = time.time()
        self._back: list[float] = []

        def watch() -> None:  # when the new worker has built its app (its metrics file)
            while time.time() - killed_at < 120:
                new = set(self.service.worker_pids()) - before
                if new and all(
                    (self.service.metrics_dir / f"gauge_livemax_{p}.db").exists() for p in new
                ):
                    self._back.append(time.time() - killed_at)
                    return
                time.sleep(0.05)

        self._watcher = threading.Thread(target=watch, daemon=True)
        self._watcher.start()
        return f"worker {pid} killed (SIGKILL)"

    def worker_back(self) -> str:
        self._watcher.join(timeout=120)
        self.service.wait_ready(timeout=120)
        seconds = f"{self._back[0]:.1f} s" if self._back else "? s"
        return f"gunicorn started a new worker, serving {seconds} after the kill"

    # -- Redis -----------------------------------------------------------------------------
    def redis_stop(self) -> str:
        keys = self.stores.redis_memory()["keys"]
        self.stores.redis.stop()
        return f"Redis stopped with {keys:,} keys"

    def redis_start(self) -> str:
        self.stores.redis.start()
        deadline = time.monotonic() + 30
        keys = 0
        while time.monotonic() < deadline:  # the AOF is loaded before it answers data
            try:
                keys = self.stores.redis_memory()["keys"]
                break
            except Exception:
                time.sleep(0.1)
        return f"Redis started again, {keys:,} keys loaded from its append-only file"

    def redis_stop_kill(self) -> str:
        """Both at once: a worker dies with degraded events waiting in its backlog."""
        stopped = self.redis_stop()
        time.sleep(self.fault_s / 2)  # the workers' backlogs fill meanwhile
        return f"{stopped}; {self.fault_s / 2:.0f} s later, {self.kill_worker()}"

    def redis_start_worker_back(self) -> str:
        return f"{self.redis_start()}; {self.worker_back()}"

    def redis_slow(self) -> str:
        assert self.stores.proxy is not None
        self.stores.proxy.delay_s = 0.025
        return "Redis slowed: 25 ms each way in the proxy, 50 ms per round trip"

    def redis_fast(self) -> str:
        assert self.stores.proxy is not None
        self.stores.proxy.delay_s = 0.0
        return "Redis at full speed again"

    # -- PostgreSQL ------------------------------------------------------------------------
    def pg_stop(self) -> str:
        self.stores.pg.stop("fast")
        return "PostgreSQL stopped (pg_ctl stop -m fast)"

    def pg_start(self) -> str:
        self.stores.pg.start()
        return "PostgreSQL started again"

    def postmaster(self) -> int:
        return int((self.stores.pg.data / "postmaster.pid").read_text().split()[0])

    def pg_freeze(self) -> str:
        """SIGSTOP to the postmaster first (it forks no new backend after that), then to its
        children until no new one shows up."""
        postmaster = self.postmaster()
        os.kill(postmaster, signal.SIGSTOP)
        self.frozen = [postmaster]
        for _ in range(10):
            new = [p for p in children(postmaster) if p not in self.frozen]
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                    self.frozen.append(pid)
                except ProcessLookupError:  # a backend that was exiting
                    pass
        deadline = time.monotonic() + 1.0  # a signal is delivered when the process next runs
        while time.monotonic() < deadline and any(
            process_state(p) not in ("T", "t", "") for p in self.frozen
        ):
            time.sleep(0.01)
        stopped = sum(process_state(pid) in ("T", "t") for pid in self.frozen)
        backends = sum(_cmdline(pid).startswith("postgres: postgres ") for pid in self.frozen)
        return (
            f"PostgreSQL frozen: SIGSTOP to the postmaster and its {len(self.frozen) - 1} "
            f"children ({backends} of them client backends; {stopped} of the "
            f"{len(self.frozen)} processes then stopped)"
        )

    def pg_thaw(self) -> str:
        frozen, self.frozen = self.frozen, []
        for pid in reversed(frozen):  # the children first, the postmaster last
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return f"PostgreSQL resumed (SIGCONT to its {len(frozen)} processes)"

    def pg_slow(self) -> str:
        assert self.stores.pg_proxy is not None
        self.stores.pg_proxy.delay_s = 0.025
        return "PostgreSQL slowed: 25 ms each way in the proxy, 50 ms per round trip"

    def pg_fast(self) -> str:
        assert self.stores.pg_proxy is not None
        self.stores.pg_proxy.delay_s = 0.0
        return "PostgreSQL at full speed again"

    def cleanup(self) -> None:
        """Whatever a fault interrupted by an error or Ctrl-C left stopped: resumed, so that
        the stores can be shut down."""
        if self.frozen:
            self.pg_thaw()

    # -- models ----------------------------------------------------------------------------
    def champion(self) -> str:
        return str(json.loads((self.models / "registry.json").read_text())["fraud"]["champion"])

    def clone(self, suffix: str) -> str:
        """The fraud champion's files under a new version (tests/test_lifecycle.py)."""
        from risk_service.bundles import Registry, write_manifest

        registry = Registry(self.models)
        source = registry.bundle_dir("fraud", registry.champion("fraud") or "")
        manifest = json.loads((source / "manifest.json").read_text())
        version = f"{manifest['version']}-{suffix}"
        target = source.parent / version
        shutil.copytree(source, target)
        fields = {k: v for k, v in manifest.items() if k != "files"}
        write_manifest(target, list(manifest["files"]), {**fields, "version": version})
        return version

    def promote(self) -> str:
        version = self.clone(f"reliability{int(time.time())}")
        client = cluster.Http(self.service.url)
        body = json.dumps({"kind": "fraud", "version": version}).encode()
        status, data = client.request(
            "POST", "/admin/promote", body, cluster.score_headers(cluster.ADMIN_KEY), 30
        )
        client.close()
        self.promoted = version
        self._promoted_at = time.time()
        try:
            swapped = json.loads(data).get("swapped_here")
        except ValueError:
            swapped = None
        return f"POST /admin/promote {version}: {status} (that worker swapped at once: {swapped})"

    def check_promote(self, attempts: list[cluster.Attempt], t0: float, t1: float) -> dict:
        new = self.promoted
        old_after = [a for a in attempts if a.status == 200 and a.fraud_version != new]
        last_old = max((a.t1 for a in old_after if a.t0 >= self._promoted_at), default=None)
        swap = None if last_old is None else last_old - self._promoted_at
        late = [a for a in old_after if a.t0 >= self._promoted_at + 2.0 + 2.5]
        when = (
            "no answer sent after the promotion call returned came from the old version"
            if swap is None
            else f"answers from the old version until {swap:.1f} s after the promotion call "
            "returned (the other worker's watcher: RELOAD_INTERVAL_SECONDS = 2)"
        )
        return {
            "notes": [f"{when}; then only from {new}"],
            "goals": {"every worker swapped within 4.5 s": not late},
        }

    def corrupt(self) -> str:
        bad = self.clone(f"corrupt{int(time.time())}")
        booster = self.models / "fraud" / bad / "fraud_lgbm.txt"
        data = bytearray(booster.read_bytes())
        data[len(data) // 2] ^= 0x01
        booster.write_bytes(bytes(data))
        path = self.models / "registry.json"
        self._registry = path.read_text()
        registry = json.loads(self._registry)
        registry["fraud"]["history"] = [
            *registry["fraud"]["history"],
            registry["fraud"]["champion"],
        ]
        registry["fraud"]["champion"] = bad
        _replace(path, json.dumps(registry, indent=2))
        self._corrupt = bad
        self._corrupt_at = time.time()
        return f"{bad} (one byte flipped in fraud_lgbm.txt) made champion in registry.json"

    def restore(self) -> str:
        ready = self.service.ready_samples(8)
        refused = {r["version"] for s in ready for r in s["details"].get("refused_versions", [])}
        self._refused = refused
        _replace(self.models / "registry.json", self._registry)
        return (
            f"/ready listed as refused: {', '.join(sorted(refused)) or 'nothing'}; "
            "registry.json restored"
        )

    def check_corrupt(self, attempts: list[cluster.Attempt], t0: float, t1: float) -> dict:
        served = {a.fraud_version for a in attempts if a.status == 200}
        lines = [
            line for line in self.service.log_lines() if self._corrupt in line and "SHA-256" in line
        ]
        return {
            "notes": [
                f"versions answering: {', '.join(sorted(served))}; "
                f"{len(lines)} log line(s) name the refused bundle and its SHA-256 mismatch"
            ],
            "goals": {
                "the corrupted bundle never served": self._corrupt not in served,
                "the refusal shows in /ready": self._corrupt in self._refused,
            },
        }

    def nothing(self) -> str:
        return "no server fault: the client sends every event 3 times at once, impatiently"


def _cmdline(pid: int) -> str:
    """A process's command line (a PostgreSQL backend's title: "postgres: user db host...")."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _replace(path: Path, text: str) -> None:
    """Write a file the way an operator's careful edit does: a temporary file, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_fault(
    fault: Fault,
    faults: Faults,
    work: Path,
    rate: float,
    windows: tuple[float, float, float],
) -> Result:
    service = faults.service
    before_s, fault_s, after_s = windows
    log_offset = service.log_path.stat().st_size
    spec_fields: dict[str, Any] = {
        "url": service.url,
        "run": cluster.new_run_id(fault.name),
        "accounts": ACCOUNTS,
        "threads": 16,
        "rate": rate,
        "seconds": before_s + fault_s + after_s,
        "resend_fraction": RESEND,
        "timeouts": (5.0,),
        "max_attempts": 8,
    }
    spec_fields.update(fault.load)
    spec = cluster.LoadSpec(**spec_fields)
    print(f"\n== {fault.name}: {fault.title} ({spec.run})", flush=True)
    load = cluster.LoadProcess(spec, work)
    notes: list[str] = []
    try:
        time.sleep(before_s)
        t_fault = time.time()
        notes.append(fault.apply())
        time.sleep(max(0.0, t_fault + fault_s - time.time()))
        if fault.revert is not None:
            notes.append(fault.revert())
        t_back = time.time()
        attempts = load.wait(timeout=before_s + fault_s + after_s + 300)
    finally:
        load.close()
    for note in notes:
        print("  " + note, flush=True)
    bounds = {"before": (0.0, t_fault), "during": (t_fault, t_back), "after": (t_back, math.inf)}
    windows_seen = {name: cluster.window_counts(attempts, *b) for name, b in bounds.items()}
    latency = {name: window_latency(attempts, *b) for name, b in bounds.items()}
    stalls = stalled(attempts)
    events = cluster.by_event(attempts)
    db = cluster.DecisionLogDb(faults.stores.pg.url)
    try:
        settled = cluster.settle(service, db, [e for e, o in events.items() if o.acked])
        logged = cluster.check_logged(db, events)
        rows = db.count(spec.run + "-%")
        velocity = cluster.probe_velocity(service, db, events, spec.run)
        conflicts = db.conflicts()
        examples = diagnose(attempts, events, logged, velocity, db)
    finally:
        db.close()
    extra = fault.check(attempts, t_fault, t_back) if fault.check else {}
    notes += extra.get("notes", [])
    notes.append(f"settled {settled['seconds']} s after the load stopped")
    if settled["missing"]:
        notes.append(
            f"still missing from PostgreSQL after {settled['seconds']} s: "
            f"{len(settled['missing'])}, with {settled['spooled']} decisions in spool files"
        )
    velocity_examples = [x for x in examples if x.startswith("velocity")]
    unlogged = [x for x in examples if "not in PostgreSQL" in x]
    notes += list(dict.fromkeys(examples[:1] + velocity_examples[:1] + unlogged))
    notes += stalls
    with service.log_path.open("rb") as handle:
        handle.seek(log_offset)
        new_lines = handle.read().decode(errors="replace").splitlines()
    log_errors = [line for line in new_lines if '"level":"ERROR"' in line or "[ERROR]" in line]
    pg_log = [line for line in new_lines if '"logger":"risk_service.decision_log"' in line]
    spooling = sum("failed, spooling" in line for line in pg_log)
    reconnected = sum("reachable again" in line for line in pg_log)
    if spooling or reconnected:
        notes.append(
            f'the service\'s log: {spooling} decision-log writer failure(s) ("failed, spooling")'
            f' and {reconnected} reconnection(s) ("reachable again")'
        )
    result = Result(
        fault,
        windows_seen,
        notes,
        settled,
        logged,
        velocity,
        rows,
        conflicts,
        log_errors,
        extra,
        latency,
    )
    for name, window in windows_seen.items():
        print(f"  {name:>6}: {_counts(window)}", flush=True)
    for name, groups in latency.items():
        print(
            f"  {name:>6} latency of the 200s, ms: "
            + "; ".join(f"{g} {_latency(groups[g])}" for g in LATENCY_GROUPS),
            flush=True,
        )
    print(f"  goals: {result.goals()}", flush=True)
    print(
        "  velocity: "
        + ", ".join(f"{k}: {v if isinstance(v, int) else len(v)}" for k, v in velocity.items()),
        flush=True,
    )
    return result


def diagnose(
    attempts: list[cluster.Attempt],
    events: dict[str, cluster.EventOutcome],
    logged: dict[str, Any],
    velocity: dict[str, Any],
    db: cluster.DecisionLogDb,
    limit: int = 4,
) -> list[str]:
    """What happened to the events behind a failed check (their attempts, the log row)."""
    lines = []
    for event_id in logged["answer_differs_from_log"][:limit]:
        row = db.rows([event_id]).get(event_id)
        lines.append(
            f"answer not in the log: {event_id} logged {row[:2] if row else None}; client saw: "
            f"{cluster.explain_event(attempts, event_id)}"
        )
    for event_id in logged["answered_twice"][:limit]:
        row = db.rows([event_id]).get(event_id)
        lines.append(
            f"answered twice, both logged: {event_id} logged {row[:2] if row else None}, "
            f"the other answer in decision_conflicts; client saw: "
            f"{cluster.explain_event(attempts, event_id)}"
        )
    for account, expected, counted in velocity["wrong"][:limit]:
        mine = [e for e, o in events.items() if o.account == account]
        rows = db.rows(mine)
        degraded = [e for e in mine if rows.get(e, ("", False))[1]]
        lines.append(
            f"velocity: {account} counted {counted} of its {expected} earlier events; "
            f"{len(degraded)} of them answered degraded ({', '.join(degraded[:6])})"
        )
    if velocity["unlogged"]:
        lines.append(
            f"{len(velocity['unlogged'])} final payments answered 200 but not in PostgreSQL"
            f" 30 s later (e.g. {velocity['unlogged'][0]})"
        )
    for line in lines:
        print("  " + line, flush=True)
    return lines


LATENCY_GROUPS = ("first", "retry")
STALL_S = 1.0  # an answer this slow gets a note of its own


def window_latency(
    attempts: list[cluster.Attempt], t_from: float, t_to: float
) -> dict[str, dict[str, float]]:
    """Client-side latency (ms, send to answer) of the attempts sent in [t_from, t_to) and
    answered 200 (degraded included): "first", an event's first send (kind new, attempt 0);
    "retry", every other send of its event_id (after a failed attempt, a resend after a
    200, a copy sent at once). Each: n, p50, p99, max (NaN when there are none)."""
    groups: dict[str, list[float]] = {g: [] for g in LATENCY_GROUPS}
    for a in attempts:
        if a.status == 200 and t_from <= a.t0 < t_to:
            first = a.kind == "new" and a.n == 0
            groups["first" if first else "retry"].append(1000 * (a.t1 - a.t0))
    return {
        g: {"n": float(len(values)), **cluster.percentiles(values, (50, 99))}
        for g, values in groups.items()
    }


def stalled(attempts: list[cluster.Attempt]) -> list[str]:
    """A note on the answers (200) that took STALL_S or more, with the slowest one's event."""
    slow = [a for a in attempts if a.status == 200 and a.t1 - a.t0 >= STALL_S]
    if not slow:
        return []
    first = sum(a.kind == "new" and a.n == 0 for a in slow)
    worst = max(slow, key=lambda a: a.t1 - a.t0)
    mine = sorted((a for a in attempts if a.event == worst.event), key=lambda a: a.t0)
    timeline = "; ".join(
        f"{a.kind}#{a.n} sent +{a.t0 - mine[0].t0:.3f} s, {a.outcome} after {a.t1 - a.t0:.3f} s"
        for a in mine
    )
    line = (
        f"{len(slow)} answer(s) took {STALL_S:.0f} s or more ({first} first attempts, "
        f"{len(slow) - first} retries); the slowest, {worst.event}: {timeline}"
    )
    print("  " + line, flush=True)
    return [line]


def _ms(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _latency(stats: dict[str, float]) -> str:
    if not stats["n"]:
        return "n=0"
    return (
        f"n={stats['n']:,.0f} p50 {_ms(stats['p50'])} p99 {_ms(stats['p99'])} "
        f"max {_ms(stats['max'])}"
    )


def _counts(w: dict[str, Any]) -> str:
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(w["codes"].items()))
    return (
        f"{w['attempts']:,} attempts: {w['200']:,} 200, {w['degraded']:,} degraded, "
        f"{w['4xx']} 4xx, {w['5xx']} 5xx, {w['timeout']} timeouts, {w['conn']} connection errors"
        + (f" ({codes})" if codes else "")
    )


# The fault proxy (a Python process forwarding every Redis call) itself pushes some calls over
# the 5 ms Redis timeout: it stands in front of Redis only where the fault needs it. In front
# of PostgreSQL (200 ms timeout) it matters less, but is there only where needed too.
PROXIED = {"redis-slow"}
PG_PROXIED = {"postgres-slow"}
NAMES = (
    "kill-worker",
    "redis-stop",
    "redis-stop-kill",
    "postgres-stop",
    "postgres-freeze",
    "redis-slow",
    "postgres-slow",
    "promote",
    "corrupt-promote",
    "impatient",
)


def catalogue(f: Faults, rate: float, windows: tuple[float, float, float]) -> dict[str, Fault]:
    seconds = f"{windows[1]:.0f} s"
    impatient = {
        "copies": 3,
        "copy_fraction": 1.0,
        "rate": rate / 3,
        "resend_fraction": 0.0,
        "timeouts": IMPATIENT_TIMEOUTS,
        "max_attempts": len(IMPATIENT_TIMEOUTS),
    }
    faults = [
        Fault("kill-worker", "a gunicorn worker killed with SIGKILL", f.kill_worker, f.worker_back),
        Fault("redis-stop", f"Redis stopped for {seconds}, then started", f.redis_stop,
              f.redis_start),
        Fault("redis-stop-kill", f"Redis stopped for {seconds} and a worker killed meanwhile",
              f.redis_stop_kill, f.redis_start_worker_back),
        Fault("postgres-stop", f"PostgreSQL stopped for {seconds}, then started", f.pg_stop,
              f.pg_start),
        Fault("postgres-freeze", f"PostgreSQL frozen (SIGSTOP) for {seconds}, then resumed",
              f.pg_freeze, f.pg_thaw),
        Fault("redis-slow", f"Redis slowed to 50 ms per call for {seconds}", f.redis_slow,
              f.redis_fast),
        Fault("postgres-slow", f"PostgreSQL slowed to 50 ms per round trip for {seconds}",
              f.pg_slow, f.pg_fast),
        Fault("promote", "a new fraud model promoted (POST /admin/promote)", f.promote,
              zero_failures=True, check=f.check_promote),
        Fault("corrupt-promote", "a corrupted bundle made champion in registry.json", f.corrupt,
              f.restore, zero_failures=True, check=f.check_corrupt),
        Fault("impatient", "the same events retried by an impatient client", f.nothing,
              load=impatient),
    ]  # fmt: skip
    return {x.name: x for x in faults}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=150.0, help="new events per second")
    parser.add_argument("--quick", action="store_true", help="5 s faults, short windows")
    parser.add_argument("--only", nargs="*", default=None, help="run only these faults")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/reliability.md")
    args = parser.parse_args()
    command = cluster.script_command("bench/faults.py")
    windows = (2.0, 5.0, 4.0) if args.quick else (5.0, 10.0, 10.0)
    cluster.exit_on_signals()
    started_at = datetime.now(UTC)
    before = cluster.other_load()
    t_start = time.time()
    results: list[Result] = []
    workers_at_end: dict[str, int] = {}
    chosen = [name for name in NAMES if args.only is None or name in args.only]
    with cluster.tmpdir("risk-faults-") as work:
        for name in chosen:  # each fault on a system of its own: no fault leaks into the next
            proxies = {"proxy": name in PROXIED, "pg_proxy": name in PG_PROXIED}
            with cluster.PrivateStores(persistent_redis=True, **proxies) as stores:
                models = cluster.copy_models(work / f"models-{name}")
                env = cluster.production_env(state_url=stores.state_url, pg_url=stores.log_url)
                with cluster.Service(work / f"service-{name}", env, models=models) as service:
                    f = Faults(service, stores, models, args.quick)
                    fault = catalogue(f, args.rate, windows)[name]
                    try:
                        results.append(run_fault(fault, f, work, args.rate, windows))
                    finally:
                        f.cleanup()
                    workers_at_end[name] = len(service.worker_pids())
    ok = all(all(r.goals().values()) for r in results)
    text = render(results, command, started_at, time.time() - t_start, before, args.rate, windows)
    print()
    print(text)
    if any(n != 2 for n in workers_at_end.values()):
        print(f"workers at the end of each fault: {workers_at_end}")
        ok = False
    if not args.no_doc:
        cluster.write_section("faults", text)
    return 0 if ok else 1


def render(
    results: list[Result],
    command: list[str],
    started: datetime,
    seconds: float,
    before: str,
    rate: float,
    windows: tuple[float, float, float],
) -> str:
    seen_rows = []
    for r in results:
        for name, w in r.windows.items():
            codes = ", ".join(f"{k} ×{v}" for k, v in sorted(w["codes"].items()))
            seen_rows.append(
                (
                    r.fault.name if name == "before" else "",
                    name,
                    f"{w['attempts']:,}",
                    f"{w['200']:,}",
                    f"{w['degraded']:,}",
                    w["4xx"],
                    w["5xx"],
                    w["timeout"],
                    w["conn"],
                    codes,
                )
            )
    latency_rows = []
    for r in results:
        for name, groups in r.latency.items():
            cells: list[Any] = [r.fault.name if name == "before" else "", name]
            for g in LATENCY_GROUPS:
                stats = groups[g]
                cells += [f"{stats['n']:,.0f}", *(_ms(stats[k]) for k in ("p50", "p99", "max"))]
            latency_rows.append(cells)
    check_rows = []
    for r in results:
        goals = r.goals()
        v = r.velocity
        check_rows.append(
            (
                r.fault.name,
                f"{r.logged['acked']:,}",
                f"{r.rows:,}",
                len(r.logged["missing"]),
                len(r.logged["answer_differs_from_log"]) + len(r.logged["inconsistent_answers"]),
                len(r.logged["answered_twice"]),
                f"{v['exact']}/{v['accounts']}"
                + (f", {v['unsure_accounts']} unsure" if v["unsure_accounts"] else "")
                + (f", {len(v['wrong'])} wrong" if v["wrong"] else "")
                + (f", {len(v['unlogged'])} probes not logged" if v["unlogged"] else "")
                + (f", {len(v['unanswered'])} probes always degraded" if v["unanswered"] else ""),
                r.conflicts,
                len(r.log_errors),
                ", ".join(f"{k}: {cluster.verdict(ok)}" for k, ok in goals.items()),
            )
        )
    notes = []
    for r in results:
        notes.append(f"- **{r.fault.name}** ({r.fault.title}): " + "; ".join(r.notes) + ".")
        if r.log_errors:
            sample = r.log_errors[0][:300]
            notes.append(f"  First ERROR line of the service's log then: `{sample}`")
    before_s, fault_s, after_s = windows
    lines = [
        "## Faults under load",
        "",
        cluster.header(command, started, seconds, before),
        f"Each fault: {before_s:.0f} s of load before it, a {fault_s:.0f} s fault window, "
        f"{after_s:.0f} s after; {rate:.0f} new events a second ({ACCOUNTS} accounts per fault, "
        f"{RESEND:.0%} of the events sent again after their answer); a failed attempt is "
        "retried with the same event_id. Degraded answers are intended (they say so). Each"
        " fault runs on a fresh system (its own Redis, PostgreSQL, models copy and service),"
        " so that what one fault leaves behind does not show up in the next. Only for"
        " redis-slow does the service reach Redis through the fault proxy (a Python process"
        " that adds a few milliseconds of its own to some calls: its before and after windows"
        " show more degraded answers than the others), and only for postgres-slow does it"
        " reach PostgreSQL through one (the checks below read PostgreSQL directly).",
        "",
        "What the client saw (attempts sent in each window):",
        "",
        cluster.table(
            [
                "fault",
                "window",
                "attempts",
                "200",
                "degraded",
                "4xx",
                "5xx",
                "timeout",
                "conn. error",
                "non-200 codes",
            ],
            seen_rows,
        ),
        "",
        "Latency of the attempts answered 200 (degraded ones included), from send to answer as"
        " the client measured it, in ms, by the window the attempt was sent in; first attempts"
        " (an event's first send) apart from the sends of an event_id already sent (a retry"
        " after a failed attempt, a resend after a 200 answer, impatient's simultaneous"
        " copies). A client gives an attempt up after 5 s (impatient: 20 ms, then longer): a"
        " longer stall shows as timeouts above, not here.",
        "",
        cluster.table(
            [
                "fault",
                "window",
                "first attempts",
                "p50",
                "p99",
                "max",
                "retries",
                "p50",
                "p99",
                "max",
            ],
            latency_rows,
        ),
        "",
        "After the system settled (spool flushed, degraded events applied to Redis):",
        "",
        cluster.table(
            [
                "fault",
                "events answered 200",
                "rows in the log",
                "lost",
                "answer not in the log",
                "answered twice, both logged",
                "velocities exact",
                "conflicts",
                "ERROR log lines",
                "goals",
            ],
            check_rows,
        ),
        "",
        *notes,
        "",
        '"rows in the log" must equal the events answered (one row each, retries add none);'
        ' "lost": answered 200 but not in PostgreSQL; "answer not in the log": a 200 answer'
        ' that is neither the logged decision nor one kept in decision_conflicts; "answered'
        ' twice, both logged": a retry answered (degraded) while neither Redis nor'
        " PostgreSQL could tell the event was known, e.g. its first answer waiting in another"
        " worker's spool, the second answer kept in decision_conflicts (docs/operations.md);"
        ' "velocities exact": a final payment per account whose logged account_events_24h'
        " equals that account's earlier events.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
