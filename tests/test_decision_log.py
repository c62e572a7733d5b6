"""The decision log: round trip, keyed hashing, no identifiers in the clear, durability, threads."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from risk_service import decision_log
from risk_service.decision_log import (
    SCHEMA_VERSION,
    DecisionLog,
    DecisionLogError,
    DecisionRecord,
    Pseudonymiser,
    SQLiteDecisionLog,
    open_decision_log,
)
from risk_service.decision_records import decision_row, key_check
from risk_service.errors import Conflict
from risk_service.labels import LabelRecord, latest_label

ROOT = Path(__file__).resolve().parents[1]
KEY = b"test-key-0123456789abcdef"
ACCOUNT = "acct-SECRET-4711"
DEVICE = "device-SECRET-0815"
IP = "203.0.113.77"


def record(event_id: str = "e1", **changes: Any) -> DecisionRecord:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "decision": "challenge",
        "body_hash": "b" * 64,
        "request": {
            "event": {
                "event_id": event_id,
                "account_id": ACCOUNT,
                "device_id": DEVICE,
                "ip_address": IP,
                "instrument_id": "inst-SECRET-1",
                "merchant_id": "merch-SECRET-2",
                "payee_account_id": "payee-SECRET-3",
                "amount": 1500.0,
                "latitude": 31.234567,
                "longitude": 121.456789,
                "timestamp": "2026-11-25T12:00:00Z",
            },
            "account": {"account_id": ACCOUNT, "kyc_level": 2, "home_latitude": 31.111111},
            "explain": False,
        },
        "features": {"amount": 1500.0, "is_new_device_for_account": 1.0, "km_from_home": math.nan},
        "fraud_probability": 0.02,
        "fraud_score": 57,
        "credit_pd": None,
        "rules_fired": [{"name": "new_device", "action": "challenge", "reason": "new device"}],
        "reasons": [{"feature": "amount", "value": 1500.0, "contribution": 0.4, "text": "big"}],
        "model_versions": {"fraud": "fraud-abc", "credit": None},
        "policy_version": "policy-2026-11-1",
        "degraded": False,
        "latency_ms": 1.25,
        "created_at_ms": 1_795_611_540_000,
        "response": {"event_id": event_id, "decision": "challenge"},
    }
    fields.update(changes)
    return DecisionRecord(**fields)


@pytest.fixture
def log(tmp_path: Path) -> Any:
    with SQLiteDecisionLog(tmp_path / "decisions.db", KEY) as opened:
        yield opened


def test_satisfies_the_protocol(log: SQLiteDecisionLog) -> None:
    proto: DecisionLog = log
    assert proto.count() == 0


def test_round_trip_with_identifiers_hashed(log: SQLiteDecisionLog) -> None:
    log.append(record())
    assert log.count() == 1
    got = log.get("e1")
    assert got is not None
    assert got.event_id == "e1"
    assert (got.decision, got.body_hash, got.fraud_score, got.credit_pd) == (
        "challenge",
        "b" * 64,
        57,
        None,
    )
    assert got.fraud_probability == pytest.approx(0.02)
    assert got.features == {
        "amount": 1500.0,
        "is_new_device_for_account": 1.0,
        "km_from_home": None,
    }
    assert got.rules_fired == record().rules_fired
    assert got.reasons == record().reasons
    assert got.model_versions == {"fraud": "fraud-abc", "credit": None}
    assert (got.policy_version, got.degraded, got.latency_ms) == ("policy-2026-11-1", False, 1.25)
    assert got.created_at_ms == 1_795_611_540_000
    assert got.response == {"event_id": "e1", "decision": "challenge"}
    event = got.request["event"]
    h = log.pseudonymise
    assert event["account_id"] == h(ACCOUNT)
    assert event["device_id"] == h(DEVICE)
    assert event["ip_address"] == h(IP)
    assert event["payee_account_id"] == h("payee-SECRET-3")
    assert event["event_id"] == "e1"  # the idempotency key is kept
    assert event["amount"] == 1500.0
    assert (event["latitude"], event["longitude"]) == (31.23, 121.46)
    assert got.request["account"] == {
        "account_id": h(ACCOUNT),
        "kyc_level": 2,
        "home_latitude": 31.11,
    }
    assert log.get("missing") is None


def test_created_at_defaults_to_now(log: SQLiteDecisionLog) -> None:
    before = time.time_ns() // 1_000_000
    log.append(record(created_at_ms=None))
    got = log.get("e1")
    assert got is not None and got.created_at_ms is not None
    assert before <= got.created_at_ms <= time.time_ns() // 1_000_000


def test_pseudonymise_is_keyed_hmac_sha256() -> None:
    import hashlib
    import hmac

    p = Pseudonymiser(KEY)
    assert p(ACCOUNT) == hmac.new(KEY, ACCOUNT.encode(), hashlib.sha256).hexdigest()
    assert p(ACCOUNT) == p(ACCOUNT) and len(p(ACCOUNT)) == 64
    assert p(ACCOUNT) != Pseudonymiser(KEY + b"x")(ACCOUNT)
    assert p("a") != p("A")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonymiser(b"short")


def test_pseudonymise_remembers_recent_values_and_stays_exact_past_its_memory() -> None:
    import hashlib
    import hmac

    p = Pseudonymiser(KEY)
    values = [f"acct-{i}" for i in range(Pseudonymiser.MEMO + 500)]
    for round_ in range(2):  # the second round: the first 500 were forgotten, the rest hit
        for v in values[:: 1 + round_ * 7]:
            assert p(v) == hmac.new(KEY, v.encode(), hashlib.sha256).hexdigest(), v
    other = Pseudonymiser(KEY + b"x")  # its own memory: the same value, another key
    assert other(values[-1]) != p(values[-1])
    info = p._hash.cache_info()
    assert info.maxsize == Pseudonymiser.MEMO and info.currsize == Pseudonymiser.MEMO
    assert info.hits > 0


def _scrub_reference(p: Pseudonymiser, obj: Any) -> Any:
    """What `scrub` must return, spelled out: every personal key's string hashed, every
    location key's float rounded, at any depth; tuples become lists; the rest unchanged."""
    from collections.abc import Mapping

    from risk_service.decision_records import LOCATION_DECIMALS, LOCATION_FIELDS, PERSONAL_FIELDS

    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if key in PERSONAL_FIELDS and isinstance(value, str):
                out[key] = p(value)
            elif key in LOCATION_FIELDS and isinstance(value, float):
                out[key] = round(value, LOCATION_DECIMALS)
            else:
                out[key] = _scrub_reference(p, value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_scrub_reference(p, x) for x in obj]
    return obj


def test_scrub_hashes_and_coarsens_at_any_depth_as_the_reference_does() -> None:
    import random
    from types import MappingProxyType

    import numpy as np

    class Tag(str):
        pass

    p = Pseudonymiser(KEY)
    rng = random.Random(7)
    keys = ["account_id", "device_id", "ip_address", "latitude", "home_longitude", "amount",
            "note", "reasons", 3]  # fmt: skip
    leaves = [ACCOUNT, Tag(DEVICE), 31.234567, np.float64(121.98765), 7, True, None, "x",
              float("nan"), 2.5]  # fmt: skip

    def make(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice(leaves)
        items = {rng.choice(keys): make(depth + 1) for _ in range(rng.randint(0, 6))}
        if roll < 0.55:
            return [make(depth + 1) for _ in range(rng.randint(0, 3))]
        if roll < 0.65:
            return tuple(make(depth + 1) for _ in range(rng.randint(0, 3)))
        return MappingProxyType(items) if roll < 0.75 else items

    checked = hashed = 0
    for _ in range(2000):
        obj = make(0)
        before = repr(obj)
        got, want = p.scrub(obj), _scrub_reference(p, obj)
        assert repr(got) == repr(want), before
        assert repr(obj) == before  # the input is never changed
        checked += 1
        hashed += repr(got).count(p(ACCOUNT))
    assert checked == 2000 and hashed > 100
    flat = {"account_id": ACCOUNT, "latitude": 31.234567, "amount": 3.5, "channel": "app"}
    assert p.scrub(flat) == {
        "account_id": p(ACCOUNT), "latitude": 31.23, "amount": 3.5, "channel": "app"
    }  # fmt: skip


def test_no_personal_identifier_in_the_clear_anywhere_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    log = SQLiteDecisionLog(path, KEY)
    for i in range(50):
        log.append(record(f"e{i}"))
    secrets = [ACCOUNT, DEVICE, IP, "inst-SECRET-1", "merch-SECRET-2", "payee-SECRET-3"]

    def scan() -> None:
        files = [f for f in tmp_path.iterdir() if f.name.startswith("decisions.db")]
        assert files
        for f in files:
            raw = f.read_bytes()
            for s in secrets:
                assert s.encode() not in raw, (f.name, s)
            assert b"31.234567" not in raw  # locations are coarsened

    scan()  # while open: the WAL holds the data
    log.close()
    scan()  # after the checkpoint: the main file holds it
    assert b"e49" in path.read_bytes()  # the data is really there


def test_same_event_same_body_is_a_no_op_and_different_body_is_409(log: SQLiteDecisionLog) -> None:
    log.append(record())
    log.append(record())
    assert log.count() == 1
    with pytest.raises(Conflict) as info:
        log.append(record(body_hash="c" * 64))
    assert (info.value.status, info.value.field) == (409, "event_id")
    assert log.count() == 1


def test_wal_mode_full_sync_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    SQLiteDecisionLog(path, KEY).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()
    log = SQLiteDecisionLog(path, KEY)  # reopening migrates nothing and keeps the data
    assert log._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.append(record())
    log.close()
    with SQLiteDecisionLog(path, KEY, synchronous="NORMAL") as again:
        assert again.count() == 1
        assert again._writer.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_newer_schema_and_other_key_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    SQLiteDecisionLog(path, KEY).close()
    with pytest.raises(DecisionLogError, match="hash_key differs"):
        SQLiteDecisionLog(path, b"another-key-0123456789")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(DecisionLogError, match="newer"):
        SQLiteDecisionLog(path, KEY)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteDecisionLog(tmp_path / "x.db", KEY, synchronous="OFF")
    with pytest.raises(ValueError, match="hash_key"):
        SQLiteDecisionLog(tmp_path / "x.db", b"")


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db", KEY)
    log.close()
    log.close()  # idempotent
    with pytest.raises(DecisionLogError, match="closed"):
        log.append(record())


def test_a_failed_write_raises_and_the_log_recovers(log: SQLiteDecisionLog) -> None:
    good = log._writer
    broken = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    log._writer = broken  # no decisions table: every insert fails
    with pytest.raises(DecisionLogError, match="write failed"):
        log.append(record("lost"))
    log._writer = good
    broken.close()
    log.append(record("kept"))
    assert log.get("lost") is None and log.get("kept") is not None


def test_many_threads_share_commits_and_lose_nothing(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db", KEY, synchronous="NORMAL", max_batch=16)
    batches: list[int] = []
    commit = log._commit

    def counting(batch: list[Any]) -> None:
        batches.append(len(batch))
        commit(batch)

    log._commit = counting  # type: ignore[method-assign]
    threads, per = 16, 60
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per):
                log.append(record(f"t{t}-{i}"))
                if i % 20 == 0:
                    assert log.get(f"t{t}-{i}") is not None  # visible once acknowledged
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    assert log.count() == threads * per
    assert sum(batches) == threads * per
    assert max(batches) > 1  # appends really shared commits
    assert max(batches) <= 16
    log.close()


_WRITER = """
import sys, threading
from risk_service.decision_log import DecisionRecord, SQLiteDecisionLog
log = SQLiteDecisionLog(sys.argv[1], b"test-key-0123456789abcdef")
out = threading.Lock()
def work(t):
    i = 0
    while True:
        eid = f"t{t}-{i}"
        log.append(DecisionRecord(eid, "approve", "h" * 64, {"event": {"account_id": "a"}}))
        with out:
            sys.stdout.write(f"ack {eid} ok\\n")
            sys.stdout.flush()
        i += 1
for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        acked: list[str] = []
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            acked.append(line)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().decode()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines = acked + rest.splitlines(keepends=True)
    ids = [ln.split()[1] for ln in lines if ln.endswith(" ok\n")]
    assert len(ids) >= 100, "the writer did not get going"
    with SQLiteDecisionLog(path, KEY) as log:
        missing = [eid for eid in ids if log.get(eid) is None]
        assert not missing
        assert log.count() >= len(ids)


# -- shadow results, labels, schema version 2, the factory -----------------------------------
SHADOW = {"model_versions": {"fraud": "fraud-new"}, "probability": 0.2, "decision": "review"}


def label(event_id: str = "e1", **changes: Any) -> LabelRecord:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "label": "is_fraud",
        "value": 1,
        "label_time_ms": 1_795_700_000_000,
        "source": "chargeback",
        "received_at_ms": 1_795_700_000_500,
    }
    fields.update(changes)
    return LabelRecord(**fields)


def test_shadow_result_round_trips(log: SQLiteDecisionLog) -> None:
    log.append(record("with", shadow=SHADOW))
    log.append(record("without"))
    got = log.get("with")
    assert got is not None and got.shadow == SHADOW
    assert log.get("without").shadow is None  # type: ignore[union-attr]


def test_labels_keep_history_in_label_time_order_and_drop_redeliveries(
    log: SQLiteDecisionLog,
) -> None:
    first = label(value=1, label_time_ms=2_000, received_at_ms=2_100)
    reversal = label(value=0, label_time_ms=5_000, source="analyst", received_at_ms=5_100)
    early = label(label="defaulted", value=0, label_time_ms=1_000, source="collections")
    for item in (reversal, first, early):
        log.add_label(item)
    log.add_label(first)  # exact duplicate
    log.add_label(label(value=1, label_time_ms=2_000, received_at_ms=9_999))  # redelivery
    assert log.labels("e1") == [early, first, reversal]
    assert log.labels("other") == []
    assert log.count_labels() == 3
    assert latest_label(log.labels("e1"), "is_fraud") == reversal
    assert latest_label(log.labels("e1"), "is_fraud", known_by_ms=4_999) == first
    assert latest_label(log.labels("e1"), "defaulted") == early


def test_label_fields_are_checked() -> None:
    for changes, message in (
        ({"label": "fraud"}, "label must be one of is_fraud, defaulted"),
        ({"value": 2}, "value must be 0 or 1"),
        ({"source": "rumour"}, "source must be one of"),
        ({"label_time_ms": -1}, "label_time_ms must be"),
        ({"received_at_ms": 1.5}, "received_at_ms must be"),
        ({"event_id": ""}, "event_id must be"),
    ):
        with pytest.raises(ValueError, match=message):
            label(**changes)
    assert label(value=True).value == 1 and type(label(value=True).value) is int


_V1_DDL = [
    """CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, created_at_ms INTEGER NOT NULL,
        account_hash TEXT, body_hash TEXT NOT NULL, decision TEXT NOT NULL,
        fraud_probability REAL, fraud_score INTEGER, credit_pd REAL, degraded INTEGER NOT NULL,
        latency_ms REAL NOT NULL, policy_version TEXT NOT NULL, model_versions TEXT NOT NULL,
        rules_fired TEXT NOT NULL, reasons TEXT NOT NULL, features TEXT NOT NULL,
        request TEXT NOT NULL, response TEXT)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
]


def write_v1_log(path: Path, records: list[DecisionRecord]) -> None:
    """A log file exactly as version 1 of the code wrote it (its DDL, its 17-column rows)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in _V1_DDL:
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (key_check(KEY),))
    p = Pseudonymiser(KEY)
    for r in records:
        row = decision_row(p, r)[:17]  # v1 had no shadow column
        conn.execute(f"INSERT INTO decisions VALUES (NULL, {', '.join('?' * 17)})", row)
    conn.close()


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_v1_log(path, [record("old-1"), record("old-2", decision="approve")])
    with SQLiteDecisionLog(path, KEY) as log:
        assert log.count() == 2
        old = log.get("old-1")
        assert old is not None and old.shadow is None
        assert old.request["event"]["account_id"] == log.pseudonymise(ACCOUNT)
        log.append(record("new", shadow=SHADOW))
        log.add_label(label("old-2", value=0, source="analyst"))
        assert log.labels("old-2") == [label("old-2", value=0, source="analyst")]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    conn.close()
    with SQLiteDecisionLog(path, KEY) as again:  # reopening migrates nothing
        assert again.count() == 3 and again.get("new").shadow == SHADOW  # type: ignore[union-attr]
        assert again.get("old-2").decision == "approve"  # type: ignore[union-attr]


def test_a_failed_label_write_raises(log: SQLiteDecisionLog) -> None:
    good = log._writer
    broken = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    log._writer = broken
    with pytest.raises(DecisionLogError, match="write failed"):
        log.add_label(label())
    log._writer = good
    broken.close()
    assert log.labels("e1") == []


def test_status_and_factory(tmp_path: Path) -> None:
    plain = open_decision_log(None, path=tmp_path / "a" / "d.db", hash_key=KEY)
    assert isinstance(plain, SQLiteDecisionLog)
    assert plain.status() == {
        "backend": "sqlite",
        "path": str(tmp_path / "a" / "d.db"),
        "spooled": 0,
    }
    plain.close()
    url = f"sqlite:///{tmp_path / 'b.db'}"
    other = open_decision_log(url, path="ignored.db", hash_key=KEY, synchronous="NORMAL")
    assert isinstance(other, SQLiteDecisionLog) and other.path == tmp_path / "b.db"
    other.close()
    with pytest.raises(ValueError, match="scheme 'mysql' is not supported"):
        open_decision_log("mysql://x/y", path="x.db", hash_key=KEY)


def test_checkpoints_run_on_the_logs_own_thread_not_in_the_commits(tmp_path: Path) -> None:
    """The service's log: SQLite's automatic checkpoint (a 5-9 ms sync inside whichever commit
    crosses 1,000 WAL pages) is off on the writer; a thread checkpoints every interval."""
    path = tmp_path / "decisions.sqlite"
    log = SQLiteDecisionLog(path, KEY, synchronous="NORMAL", checkpoint_interval_s=0.05)
    assert log._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(400):  # ~1,000 pages or more of WAL: SQLite alone would have checkpointed
        log.append(record(f"ck-{i}"))
    done = log.checkpoints
    deadline = time.monotonic() + 10
    while log.checkpoints < done + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.checkpoints >= done + 2
    # the rows reached the database file itself (only a checkpoint writes there: ~20 KB before)
    assert path.stat().st_size > 200 * 1024
    checkpointer = log._checkpointer
    assert checkpointer is not None and checkpointer.is_alive()
    log.close()
    assert not checkpointer.is_alive()
    with SQLiteDecisionLog(path, KEY) as reopened:  # SQLite's own checkpoints: the spool's way
        assert reopened.count() == 400 and reopened._checkpointer is None
        assert reopened._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    with pytest.raises(ValueError, match="checkpoint_interval_s must be > 0"):
        SQLiteDecisionLog(tmp_path / "other.sqlite", KEY, checkpoint_interval_s=0)


def test_the_wal_stays_bounded_under_steady_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PASSIVE checkpoint alone never lets SQLite start the WAL over while commits keep
    coming, so the WAL grew by every decision (350 MB after 20,000). The checkpoint rounds
    catch up and restart it: the file stays near one interval of decisions."""
    monkeypatch.setattr(decision_log, "RESTART_FRAMES", 256)  # 1 MB of 4 KB pages
    path = tmp_path / "decisions.sqlite"
    wal = tmp_path / "decisions.sqlite-wal"
    log = SQLiteDecisionLog(path, KEY, synchronous="NORMAL", checkpoint_interval_s=0.05)
    largest = appended = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # thousands a second, as a busy service
        log.append(record(f"steady-{appended}", response={"pad": "x" * 3000}))
        appended += 1
        time.sleep(0.0001)  # the service waits for its clients: the checkpointer gets the GIL
        if appended % 50 == 0:
            largest = max(largest, wal.stat().st_size)
    restarts = log.wal_restarts
    log.close()
    written = appended * 4096  # at least a page per decision of ~3 KB
    assert appended > 1000 and written > 4 * 1024 * 1024
    # without the restarts the WAL holds every page of every decision: over 4x ``written``
    assert largest < min(written, 16 * 1024 * 1024), (largest, written)
    assert restarts >= 3, restarts
    with SQLiteDecisionLog(path, KEY) as reopened:
        assert reopened.count() == appended  # nothing lost to the restarts


def test_the_service_log_checkpoints_in_the_background(tmp_path: Path) -> None:
    log = open_decision_log(None, path=tmp_path / "d.sqlite", hash_key=KEY)
    try:
        assert isinstance(log, SQLiteDecisionLog) and log._checkpointer is not None
    finally:
        log.close()
