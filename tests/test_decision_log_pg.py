"""The decision log on the machine's PostgreSQL: parity with SQLite, labels, migration, threads,
the spool when the server is away or hung, flushing when it is back, orphan spools."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import AppFactory, wait_for
from test_decision_log import KEY, ROOT, SHADOW, label, record

from risk_service.decision_log import DecisionLogError, SQLiteDecisionLog, open_decision_log
from risk_service.decision_log_pg import PostgresDecisionLog
from risk_service.decision_log_pg_sql import MIGRATIONS
from risk_service.decision_log_spool import SpoolDir
from risk_service.decision_records import (
    DECISION_COLUMNS,
    Pseudonymiser,
    decision_row,
    key_check,
)
from risk_service.errors import Conflict

pytestmark = pytest.mark.integration

FAST = {"timeout_ms": 500, "flush_interval_s": 0.05, "breaker_cooldown_s": 0.3}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def pg_log(pg_url: str, spool: Path) -> Iterator[PostgresDecisionLog]:
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as log:  # type: ignore[arg-type]
        yield log


def rows_in_pg(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


class Proxy:
    """A TCP proxy to PostgreSQL that the test can pause (a hung server) or stop (gone)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = 0
        self.paused = threading.Event()
        self.delay_s = 0.0  # added to every chunk forwarded either way (a slow server)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.start()

    def url(self, pg_url: str) -> str:
        return pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.paused.is_set():
                    time.sleep(0.01)
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        for s in sockets:
            s.close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.paused.clear()
    p.stop()


# -- the same log as SQLite ------------------------------------------------------------------
def test_round_trip_equals_sqlite(pg_log: PostgresDecisionLog, tmp_path: Path) -> None:
    samples = [record("e1", shadow=SHADOW), record("e2", decision="approve", response=None)]
    samples.append(record("e3", degraded=True, fraud_probability=None, fraud_score=None))
    with SQLiteDecisionLog(tmp_path / "ref.db", KEY) as ref:
        for r in samples:
            pg_log.append(r)
            ref.append(r)
        for r in samples:
            assert pg_log.get(r.event_id) == ref.get(r.event_id)
    got = pg_log.get("e1")
    assert got is not None and got.shadow == SHADOW
    assert got.request["event"]["account_id"] == pg_log.pseudonymise("acct-SECRET-4711")
    assert got.features["km_from_home"] is None
    assert pg_log.get("missing") is None
    assert pg_log.count() == 3
    status = pg_log.status()
    assert status["backend"] == "postgresql" and status["breaker"] == "closed"
    assert (status["connected"], status["spooled"]) == (True, 0)


def test_no_identifier_in_the_clear_in_postgresql(pg_log: PostgresDecisionLog, pg_url: str) -> None:
    pg_log.append(record("e1"))
    dump = str(rows_in_pg(pg_url, "SELECT * FROM decisions"))
    for secret in ("acct-SECRET-4711", "device-SECRET-0815", "203.0.113.77", "31.234567"):
        assert secret not in dump


def test_conflict_and_same_body(pg_log: PostgresDecisionLog) -> None:
    pg_log.append(record("e1"))
    pg_log.append(record("e1"))
    with pytest.raises(Conflict) as info:
        pg_log.append(record("e1", body_hash="c" * 64))
    assert (info.value.status, info.value.field) == (409, "event_id")
    assert pg_log.count() == 1


def test_one_batch_with_the_same_event_twice(pg_log: PostgresDecisionLog) -> None:
    from risk_service.group_commit import Pending

    p = pg_log.pseudonymise
    batch = [
        Pending(decision_row(p, record("d1"))),
        Pending(decision_row(p, record("d1"))),
        Pending(decision_row(p, record("d1", body_hash="c" * 64))),
        Pending(decision_row(p, record("d2"))),
    ]
    pg_log._commit(batch)
    assert [type(b.error).__name__ if b.error else None for b in batch] == [
        None,
        None,
        "Conflict",
        None,
    ]
    assert pg_log.count() == 2


def test_labels(pg_log: PostgresDecisionLog) -> None:
    first = label(value=1, label_time_ms=2_000, received_at_ms=2_100)
    reversal = label(value=0, label_time_ms=5_000, source="analyst", received_at_ms=5_100)
    pg_log.add_label(reversal)
    pg_log.add_label(first)
    pg_log.add_label(first)
    pg_log.add_label(label(value=1, label_time_ms=2_000, received_at_ms=9_999))  # redelivery
    assert pg_log.labels("e1") == [first, reversal]
    assert pg_log.labels("nobody") == []


def test_an_event_id_postgresql_cannot_hold_is_simply_not_logged(
    make_app: AppFactory, pg_url: str
) -> None:
    """PostgreSQL's text cannot hold NUL, so no decision has such an id (`/score` refuses
    it); asking for one is a 404, not a failed read answered 503 ("retry") every time."""
    app = make_app(DECISION_LOG_URL=pg_url)
    log = app.extensions["risk"].log
    assert log.get("a\x00b") is None
    assert log.labels("a\x00b") == [] and log.other_answers("a\x00b") == []
    answer = app.test_client().get("/decisions/a%00b")
    assert answer.status_code == 404 and answer.get_json()["field"] == "event_id"


def test_a_version_1_schema_is_migrated(pg_url: str, spool: Path) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO meta VALUES ('key_check', %s)", (key_check(KEY),))
        row = list(decision_row(Pseudonymiser(KEY), record("old"))[:17])  # v1 had no shadow
        row[8] = bool(row[8])
        columns = ", ".join(DECISION_COLUMNS[:17])
        conn.execute(f"INSERT INTO decisions ({columns}) VALUES ({', '.join(['%s'] * 17)})", row)
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as log:  # type: ignore[arg-type]
        old = log.get("old")
        assert old is not None and old.shadow is None and old.decision == "challenge"
        log.append(record("new", shadow=SHADOW))
        log.add_label(label("old"))
        assert log.labels("old") == [label("old")] and log.count() == 2
    assert rows_in_pg(pg_url, "SELECT version FROM schema_version") == [(2,)]


def test_newer_schema_and_other_key_are_refused(pg_url: str, spool: Path) -> None:
    PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST).close()  # type: ignore[arg-type]
    with pytest.raises(DecisionLogError, match="hash_key differs"):
        PostgresDecisionLog(pg_url, b"another-key-0123456789", spool_path=spool, **FAST)  # type: ignore[arg-type]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(DecisionLogError, match="newer"):
        PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST)  # type: ignore[arg-type]
    assert not list(spool.glob("spool-*"))  # refused opens leave no spool behind


def test_workers_starting_together_migrate_once(pg_url: str, tmp_path: Path) -> None:
    logs: list[PostgresDecisionLog] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(6)

    def start(i: int) -> None:
        gate.wait()
        try:
            logs.append(PostgresDecisionLog(pg_url, KEY, spool_path=tmp_path / "s", **FAST))  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert not errors and len(logs) == 6
    assert rows_in_pg(pg_url, "SELECT version FROM schema_version") == [(2,)]


def test_sixteen_threads_all_durable_and_counted(pg_log: PostgresDecisionLog) -> None:
    batches: list[int] = []
    write = pg_log._write

    def counting(conn: Any, batch: list[Any]) -> Any:
        batches.append(len(batch))
        return write(conn, batch)

    pg_log._write = counting  # type: ignore[method-assign]
    threads, per = 16, 40
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per):
                pg_log.append(record(f"t{t}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    assert pg_log.count() == threads * per == sum(batches)
    assert max(batches) > 1  # appends shared commits
    assert all(pg_log.get(f"t{t}-{per - 1}") is not None for t in range(threads))


def test_factory_opens_postgresql(pg_url: str, tmp_path: Path) -> None:
    log = open_decision_log(
        pg_url, path=tmp_path / "d.db", hash_key=KEY, spool_dir=tmp_path / "sp", timeout_ms=800
    )
    try:
        assert isinstance(log, PostgresDecisionLog)
        assert log.status()["backend"] == "postgresql"
        assert list((tmp_path / "sp").glob("spool-*.sqlite"))
    finally:
        log.close()
    assert not list((tmp_path / "sp").glob("spool-*"))  # an empty spool is removed on close


# -- when PostgreSQL is away -----------------------------------------------------------------
def test_unreachable_server_spools_and_nothing_is_lost(pg_url: str, spool: Path) -> None:
    dead = pg_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    started = time.monotonic()
    log = PostgresDecisionLog(dead, KEY, spool_path=spool, **FAST)  # type: ignore[arg-type]
    for i in range(20):
        log.append(record(f"s{i}"))
    log.add_label(label("s1"))
    assert time.monotonic() - started < 5
    assert log.get("s3") is not None  # read back from the spool
    with pytest.raises(DecisionLogError):
        log.labels("s1")  # PostgreSQL's half is unknown: an error, not half an answer
    wait_for(lambda: log.status()["breaker"] == "open", "the breaker to open")
    status = log.status()
    assert (status["connected"], status["spooled"], status["spool_files"]) == (False, 21, 1)
    assert "OperationalError" in str(status["last_error"])
    with pytest.raises(DecisionLogError):
        log.count()  # PostgreSQL cannot be counted: an honest error, not a wrong number
    log.close()
    files = list(spool.glob("spool-*.sqlite"))
    assert len(files) == 1  # a non-empty spool stays for the next process

    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as back:  # type: ignore[arg-type]
        wait_for(lambda: back.status()["spooled"] == 0, "the orphan spool to flush")
        assert back.count() == 20
        assert back.labels("s1") == [label("s1")]
        wait_for(lambda: len(list(spool.glob("spool-*.sqlite"))) == 1, "the orphan to go")
    assert rows_in_pg(pg_url, "SELECT count(*), count(DISTINCT event_id) FROM decisions") == [
        (20, 20)
    ]


def test_server_gone_then_back_flushes_everything_once(
    pg_url: str, spool: Path, proxy: Proxy
) -> None:
    with PostgresDecisionLog(proxy.url(pg_url), KEY, spool_path=spool, **FAST) as log:  # type: ignore[arg-type]
        for i in range(10):
            log.append(record(f"a{i}"))
        assert log.status()["spooled"] == 0
        proxy.stop()
        for i in range(10, 30):
            log.append(record(f"a{i}"))
            log.append(record(f"a{i}"))  # a retry while spooled is a no-op
        with pytest.raises(Conflict):
            log.append(record("a12", body_hash="c" * 64))  # conflicts are caught in the spool too
        assert log.status()["spooled"] == 20
        assert all(log.get(f"a{i}") is not None for i in range(10, 30))  # from the spool
        proxy.start()
        wait_for(lambda: log.status()["spooled"] == 0, "the spool to flush")
        wait_for(lambda: log.status()["connected"], "the writer to reconnect")
        for i in range(30, 40):
            log.append(record(f"a{i}"))
        assert log.count() == 40
        assert log.status()["breaker"] == "closed"
    assert rows_in_pg(pg_url, "SELECT count(*), count(DISTINCT event_id) FROM decisions") == [
        (40, 40)
    ]


def test_a_hung_server_cannot_hold_an_append(pg_url: str, spool: Path, proxy: Proxy) -> None:
    with PostgresDecisionLog(proxy.url(pg_url), KEY, spool_path=spool, **FAST) as log:  # type: ignore[arg-type]
        log.append(record("before"))
        proxy.paused.set()  # the server accepts bytes and never answers
        started = time.monotonic()
        log.append(record("during"))
        assert time.monotonic() - started < 0.5 * 1.25 + 0.5  # timeout + watchdog tick + slack
        started = time.monotonic()
        for i in range(5):
            log.append(record(f"during{i}"))  # no connection now: straight to the spool
        assert time.monotonic() - started < 0.5
        with pytest.raises(DecisionLogError):
            log.count()
        proxy.paused.clear()
        wait_for(lambda: log.status()["spooled"] == 0, "the spool to flush")
        assert log.count() == 7
    assert rows_in_pg(pg_url, "SELECT count(*), count(DISTINCT event_id) FROM decisions") == [
        (7, 7)
    ]


def test_a_slow_server_delays_an_append_by_one_hedge_at_most(
    pg_url: str, spool: Path, proxy: Proxy
) -> None:
    """PostgreSQL answering, but 200 ms a round trip (under the 500 ms timeout): an append
    waits one hedge (150 ms: far above a commit on a busy test machine), then its batch is
    committed in the spool; the next ones go there straight away; the write that outlived its
    hedge lands anyway, and the flush afterwards adds nothing twice."""
    hedge = 0.15
    settings = {**FAST, "hedge_ms": hedge * 1000, "slow_cooldown_s": 1.0}
    with PostgresDecisionLog(proxy.url(pg_url), KEY, spool_path=spool, **settings) as log:  # type: ignore[arg-type]
        log.append(record("before"))
        proxy.delay_s = 0.1  # each way
        started = time.monotonic()
        log.append(record("slow0"))
        first = time.monotonic() - started
        assert hedge <= first < hedge + 0.3, first  # the hedge, then a spool commit
        started = time.monotonic()
        for i in range(1, 6):
            log.append(record(f"slow{i}"))
        assert time.monotonic() - started < 0.5  # spool commits only, within the cool-down
        assert log.get("slow0") is not None and log.get("slow5") is not None
        status = log.status()
        assert status["breaker"] == "closed" and status["connected"]  # slow is not down
        proxy.delay_s = 0.0
        wait_for(lambda: log.status()["spooled"] == 0, "the spool to flush")
        time.sleep(1.0)  # the rest of the cool-down after a hedge
        started = time.monotonic()
        log.append(record("after"))
        assert time.monotonic() - started < hedge  # PostgreSQL again: no hedge,
        assert log.status()["spooled"] == 0  # and not the spool (the cool-down is over)
    assert rows_in_pg(pg_url, "SELECT count(*), count(DISTINCT event_id) FROM decisions") == [
        (8, 8)
    ]
    assert rows_in_pg(pg_url, "SELECT count(*) FROM decision_conflicts") == [(0,)]


def test_a_decision_in_postgresql_and_in_the_spool_counts_once(pg_url: str, spool: Path) -> None:
    """A hedged commit that landed is in PostgreSQL and in the spool until the flush (made
    rare here: one flush a minute): `count` counts it once, and a spooled-only one too."""
    settings = {**FAST, "flush_interval_s": 60.0}
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **settings) as log:  # type: ignore[arg-type]
        log.append(record("landed"))
        log.append(record("other"))
        own = log.spool.own.log
        own.append(record("landed"))  # what a hedge leaves behind
        own.append(record("spooled-only"))
        assert log.status()["spooled"] == 2
        assert rows_in_pg(pg_url, "SELECT count(*) FROM decisions") == [(2,)]
        assert log.count() == 3


def test_a_hung_server_cannot_hold_a_read_nor_the_reads_after_it(
    pg_url: str, spool: Path, proxy: Proxy
) -> None:
    """A retry reads the log: against a hung server each read gives up within the timeout,
    the next ones never wait for a reconnection (libpq's 2 s minimum: the background thread
    reconnects), and a failed read counts towards the breaker as a failed write does."""

    def read_back() -> bool:
        try:
            return log.get("before") is not None
        except DecisionLogError:
            return False

    with PostgresDecisionLog(proxy.url(pg_url), KEY, spool_path=spool, **FAST) as log:  # type: ignore[arg-type]
        log.append(record("before"))
        assert log.get("before") is not None  # from PostgreSQL: nothing is spooled
        proxy.paused.set()
        for _ in range(6):
            started = time.monotonic()
            with pytest.raises(DecisionLogError):
                log.get("before")
            assert time.monotonic() - started < 0.5 * 1.25 + 0.5  # timeout + watchdog tick
        assert log.status()["consecutive_failures"] >= 1  # the first read's
        proxy.paused.clear()
        wait_for(read_back, "reads to come back once the server answers")


_SPOOLER = """
import sys
from risk_service.decision_log_pg import PostgresDecisionLog
from risk_service.decision_records import DecisionRecord
log = PostgresDecisionLog(sys.argv[1], b"test-key-0123456789abcdef", spool_path=sys.argv[2],
                          timeout_ms=300)
for i in range(int(sys.argv[3])):
    log.append(DecisionRecord(f"o{i}", "approve", "h" * 64, {"event": {"account_id": "a"}}))
    print(f"ack o{i}", flush=True)
print("done", flush=True)
sys.stdin.read()
"""


def test_orphan_spool_of_a_killed_process_is_adopted_once(pg_url: str, spool: Path) -> None:
    dead = pg_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-c", _SPOOLER, dead, str(spool), "25"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        acked = []
        for line in proc.stdout:
            if line.startswith("done"):
                break
            acked.append(line.split()[1])
        assert len(acked) == 25
        with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as live:  # type: ignore[arg-type]
            assert live.spool.adopted == []  # its owner is alive: hands off
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert live.spool.adopt_orphans() != []
            wait_for(lambda: live.status()["spool_files"] == 1, "the orphan to be flushed")
            assert all(live.get(eid) is not None for eid in acked)
            assert live.count() == 25
    assert rows_in_pg(pg_url, "SELECT count(*) FROM decisions") == [(25,)]
    assert not list(spool.glob("spool-*"))


def test_two_processes_never_adopt_the_same_orphan(spool: Path) -> None:
    orphan = spool / "spool-999999-dead.sqlite"
    spool.mkdir()
    with SQLiteDecisionLog(orphan, KEY) as old:
        old.append(record("x"))
    first, second = SpoolDir(spool, KEY), SpoolDir(spool, KEY)
    try:
        assert first.adopt_orphans() == [orphan]
        assert second.adopt_orphans() == []  # first holds its lock, and each other's own file
        found: list[object] = []  # from another thread too (the request threads of a worker)
        reader = threading.Thread(target=lambda: found.append(second.get("x")))
        reader.start()
        reader.join()
        assert found and found[0] is not None
        assert orphan in [f.path for f in first.files()]
        assert orphan not in [f.path for f in second.files()]  # only ever one adopter ...
        assert first.get("x") is not None and second.get("x") is not None  # ... both can read
    finally:
        first.close()
        second.close()
    assert orphan.exists()  # not empty: left for the next adopter


def measure_appends(url: str, spool_dir: Path, threads: int, total: int) -> dict[str, float]:
    """Appends per second and latency percentiles (ms) with `threads` appending at once."""
    latencies: list[float] = []
    with PostgresDecisionLog(url, KEY, spool_path=spool_dir) as log:
        per = total // threads
        tag = f"bench-{threads}-{time.time_ns()}"

        def work(t: int) -> None:
            for i in range(per):
                started = time.perf_counter()
                log.append(record(f"{tag}-{t}-{i}"))
                latencies.append(time.perf_counter() - started)

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        started = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        elapsed = time.perf_counter() - started
        assert log.status()["spooled"] == 0
    latencies.sort()
    return {
        "appends_per_s": per * threads / elapsed,
        "mean_ms": 1000 * sum(latencies) / len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


if __name__ == "__main__":  # python tests/test_decision_log_pg.py [URL]: the docstring's numbers
    import tempfile
    import uuid

    base = sys.argv[1] if len(sys.argv) > 1 else "postgresql://127.0.0.1:5432/test"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            url = f"{base}?options=-csearch_path%3D{schema}"
            for n in (1, 8):
                figures = measure_appends(url, Path(tempfile.mkdtemp()), n, 4000)
                print(n, "threads:", {k: round(v, 2) for k, v in figures.items()})
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_damaged_or_foreign_orphan_is_left_alone(spool: Path) -> None:
    spool.mkdir()
    (spool / "spool-1-garbage.sqlite").write_bytes(b"not a database" * 100)
    with SQLiteDecisionLog(spool / "spool-2-otherkey.sqlite", b"another-key-0123456789") as other:
        other.append(record("x"))
    dirs = SpoolDir(spool, KEY)
    try:
        assert dirs.adopt_orphans() == []
        assert dirs.adopt_orphans() == []  # refused once, not retried every scan
    finally:
        dirs.close()
    assert (spool / "spool-1-garbage.sqlite").exists()
    assert (spool / "spool-2-otherkey.sqlite").exists()


def test_a_spooled_decision_meeting_another_body_is_kept_aside(pg_url: str, spool: Path) -> None:
    dead = pg_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    with PostgresDecisionLog(dead, KEY, spool_path=spool, **FAST) as away:  # type: ignore[arg-type]
        away.append(record("c1"))  # answered while PostgreSQL was away
        away.append(record("c2"))
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool / "other", **FAST) as elsewhere:  # type: ignore[arg-type]
        elsewhere.append(record("c1", body_hash="c" * 64))  # another worker, another body
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as back:  # type: ignore[arg-type]
        wait_for(lambda: back.status()["spooled"] == 0, "the orphan spool to flush")
        assert back.get("c1").body_hash == "c" * 64  # type: ignore[union-attr]
        assert back.count() == 2
    assert rows_in_pg(pg_url, "SELECT event_id, body_hash FROM decision_conflicts") == [
        ("c1", "b" * 64)
    ]


def test_a_spooled_retry_with_another_answer_is_kept_aside(pg_url: str, spool: Path) -> None:
    """The same body answered twice differently (a retry answered degraded while the first
    answer waited in another worker's spool): both answers were acknowledged, both stay."""
    dead = pg_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    with PostgresDecisionLog(dead, KEY, spool_path=spool, **FAST) as away:  # type: ignore[arg-type]
        away.append(record("r1", decision="review", degraded=True))  # the retry, spooled
        away.append(record("r2"))  # a flush repeated after a crash: same body, same answer
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool / "other", **FAST) as first:  # type: ignore[arg-type]
        first.append(record("r1"))  # the first answer, logged by another worker
        first.append(record("r2"))
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as back:  # type: ignore[arg-type]
        wait_for(lambda: back.status()["spooled"] == 0, "the orphan spool to flush")
        assert back.get("r1").decision == "challenge"  # type: ignore[union-attr]
        assert back.count() == 2
    assert rows_in_pg(
        pg_url, "SELECT event_id, decision, degraded FROM decision_conflicts ORDER BY event_id"
    ) == [("r1", "review", True)]
    with PostgresDecisionLog(pg_url, KEY, spool_path=spool, **FAST) as reader:  # type: ignore[arg-type]
        others = reader.other_answers("r1")  # what GET /decisions/r1 shows beside the decision
        assert [(o.decision, o.degraded) for o in others] == [("review", True)]
        assert reader.other_answers("r2") == []


def test_a_retry_on_another_worker_finds_the_answer_in_its_spool(pg_url: str, spool: Path) -> None:
    """PostgreSQL away: worker A spools its answer; worker B (same host, same spool directory)
    reads it from A's live file, so a retry B must answer without Redis gets A's answer."""
    dead = pg_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    with (
        PostgresDecisionLog(dead, KEY, spool_path=spool, **FAST) as a,  # type: ignore[arg-type]
        PostgresDecisionLog(dead, KEY, spool_path=spool, **FAST) as b,  # type: ignore[arg-type]
    ):
        a.append(record("s1"))
        found = b.get("s1")
        assert found is not None and found.decision == "challenge"
        with pytest.raises(DecisionLogError):  # in no spool: PostgreSQL is asked, and is away
            b.get("s2")
        assert a.spool.own.path not in [f.path for f in b.spool.files()]  # read, not adopted
