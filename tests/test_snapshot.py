"""The in-memory state across a graceful restart (risk_service/snapshot.py)."""

from __future__ import annotations

import logging
import stat
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import AppFactory, RedisTarget
from flask import Flask
from flask.testing import FlaskClient
from test_api import NOW, iso, logged, payment

from risk_service import metrics
from risk_service.service import save_snapshot
from risk_service.snapshot import PeriodicSnapshots


def score_history(client: FlaskClient, n: int, t0: datetime) -> None:
    for i in range(n):
        body = payment(f"h-{i}", timestamp=iso(t0 + timedelta(minutes=i)), merchant_id="m-s")
        assert client.post("/score", json=body).status_code == 200


def test_a_graceful_stop_keeps_the_state_for_the_next_start(
    make_app: AppFactory, tmp_path: Path
) -> None:
    # written only at the stop, so read once (with periodic snapshots the file stays)
    kept = {
        "DECISION_LOG_PATH": str(tmp_path / "kept.sqlite"),
        "STATE_SNAPSHOT_INTERVAL_SECONDS": 0,
    }
    t0 = NOW - timedelta(hours=2)
    before = make_app(**kept)
    assert "risk_snapshots" not in before.extensions
    client = before.test_client()
    score_history(client, 4, t0)
    label = {"event_id": "h-0", "is_fraud": 1, "label_time": iso(t0 + timedelta(minutes=30))}
    first = client.post("/feedback", json={**label, "source": "chargeback"}).get_json()
    assert first["online_state"] == "applied"
    assert save_snapshot(before) > 0
    state_file = tmp_path / "state.snapshot"  # "auto": beside the decision log
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    after = make_app(**kept)
    assert not state_file.exists()  # read once: a later start cannot bring it back
    client = after.test_client()
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert client.post("/score", json=later).status_code == 200
    features = logged(after, "h-later").features
    assert features["account_events_24h"] == 4  # every velocity kept across the restart
    assert features["merchant_known_frauds_30d"] == 1
    again = client.post("/feedback", json={**label, "source": "chargeback"}).get_json()
    assert again["online_state"] == "duplicate"  # applied once, across the restart too


def test_a_snapshot_from_before_the_compiled_rolling_sums_is_read(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots written before 2026-12-05 pickled the Python class under the name
    `aggregates.RollingSums`; an upgrade reads them, as compiled sums, rather than start empty."""
    from risk_service.features import aggregates, online

    kept = {
        "DECISION_LOG_PATH": str(tmp_path / "kept.sqlite"),
        "STATE_SNAPSHOT_INTERVAL_SECONDS": 0,
    }
    t0 = NOW - timedelta(hours=2)
    with monkeypatch.context() as old_code:  # the engine and the pickle as they were
        old_code.setattr(aggregates, "RollingSums", aggregates.PyRollingSums)
        old_code.setattr(online, "RollingSums", aggregates.PyRollingSums)
        old_code.setattr(online, "read_into", aggregates.py_read_into)
        old_code.setattr(online, "update_from", aggregates.py_update_from)
        aggregates.PyRollingSums.__qualname__ = "RollingSums"
        try:
            before = make_app(**kept)
            score_history(before.test_client(), 4, t0)
            assert save_snapshot(before) > 0
        finally:
            aggregates.PyRollingSums.__qualname__ = "PyRollingSums"
    written = (tmp_path / "state.snapshot").read_bytes()
    assert b"RollingSums" in written and b"PyRollingSums" not in written
    assert b"_rolling" not in written  # no compiled sums in it
    after = make_app(**kept)
    store = after.extensions["risk"].engine.store
    rolling = [r for _, st in store.states("account") for r in st.rolling]
    assert rolling and all(type(r) is aggregates.RollingSums for r in rolling)
    client = after.test_client()
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert client.post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 4


def test_without_a_snapshot_the_start_is_empty(make_app: AppFactory, tmp_path: Path) -> None:
    kept = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=2)
    score_history(make_app(**kept).test_client(), 4, t0)  # then a crash: nothing written
    after = make_app(**kept)
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert after.test_client().post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 0


@pytest.mark.parametrize("spoiled", ["other key", "garbage"])
def test_a_snapshot_of_another_key_or_a_broken_one_is_refused(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, spoiled: str
) -> None:
    state_file = tmp_path / "shared.snapshot"
    t0 = NOW - timedelta(hours=2)
    before = make_app(STATE_SNAPSHOT_PATH=str(state_file))
    score_history(before.test_client(), 4, t0)
    assert save_snapshot(before) > 0
    config = {"STATE_SNAPSHOT_PATH": str(state_file)}
    if spoiled == "other key":
        config["HASH_KEY"] = "another-key-" + "y" * 32
    else:
        state_file.write_bytes(state_file.read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING, logger="risk_service.snapshot"):
        after = make_app(**config)
    assert "starting empty" in caplog.text
    assert not state_file.exists()
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)), merchant_id="m-s")
    assert after.test_client().post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 0


def periodic(app: Flask) -> PeriodicSnapshots:
    snapshots = app.extensions["risk_snapshots"]
    assert isinstance(snapshots, PeriodicSnapshots)
    return snapshots


def test_after_a_crash_the_start_reads_the_last_periodic_snapshot(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A forked child writes the state while the worker goes on; a crash then loses only the
    events scored since (undercounted, never counted twice), and the file stays for the next
    start."""
    kept = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=2)
    before = make_app(**kept)  # the default interval (300 s): the test writes one itself
    client = before.test_client()
    score_history(client, 4, t0)
    ok = metrics.sample("risk_state_snapshots_total", {"result": "ok"})
    assert periodic(before).write_now()
    assert metrics.sample("risk_state_snapshots_total", {"result": "ok"}) == ok + 1
    assert periodic(before).last_fork_ms < 1000  # requests wait only for the fork
    state_file = tmp_path / "state.snapshot"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    for i in (4, 5):  # scored after the snapshot, then the process dies: no graceful stop
        body = payment(f"h-{i}", timestamp=iso(t0 + timedelta(minutes=i)), merchant_id="m-s")
        assert client.post("/score", json=body).status_code == 200
    for start in ("after the crash", "after a second crash"):
        after = make_app(**kept)
        assert state_file.exists(), start  # kept: another crash reads it again
        retry = payment("h-5", timestamp=iso(t0 + timedelta(minutes=5)), merchant_id="m-s")
        replays = metrics.sample("risk_idempotent_replays_total")
        assert after.test_client().post("/score", json=retry).status_code == 200
        assert metrics.sample("risk_idempotent_replays_total") == replays + 1  # from the log
        later = payment(f"late-{start}", timestamp=iso(t0 + timedelta(hours=1)))
        assert after.test_client().post("/score", json=later).status_code == 200
        # h-4 and h-5 are lost from the state; the retry of h-5 was not counted either
        assert logged(after, f"late-{start}").features["account_events_24h"] == 4


def test_periodic_snapshots_run_on_their_own_and_stop_before_the_last_one(
    make_app: AppFactory, tmp_path: Path
) -> None:
    kept = {"DECISION_LOG_PATH": str(tmp_path / "kept.sqlite")}
    t0 = NOW - timedelta(hours=2)
    before = make_app(**kept, STATE_SNAPSHOT_INTERVAL_SECONDS=0.2)
    client = before.test_client()
    score_history(client, 3, t0)
    snapshots = periodic(before)
    deadline = time.monotonic() + 30
    while snapshots.written < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshots.written >= 2
    body = payment("h-3", timestamp=iso(t0 + timedelta(minutes=3)), merchant_id="m-s")
    assert client.post("/score", json=body).status_code == 200
    assert save_snapshot(before) > 0  # stops the periodic ones first: this one is the newest
    written = snapshots.written
    time.sleep(0.5)
    assert snapshots.written == written and not snapshots.write_now()
    after = make_app(**kept)
    later = payment("h-later", timestamp=iso(t0 + timedelta(hours=1)))
    assert after.test_client().post("/score", json=later).status_code == 200
    assert logged(after, "h-later").features["account_events_24h"] == 4


def test_a_failed_periodic_snapshot_keeps_the_previous_file(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(DECISION_LOG_PATH=str(tmp_path / "kept.sqlite"))
    score_history(app.test_client(), 2, NOW - timedelta(hours=2))
    snapshots = periodic(app)
    assert snapshots.write_now()
    state_file = tmp_path / "state.snapshot"
    good = state_file.read_bytes()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    snapshots.path = blocker / "state.snapshot"  # the child cannot write there
    failed = metrics.sample("risk_state_snapshots_total", {"result": "failed"})
    with caplog.at_level(logging.WARNING, logger="risk_service.snapshot"):
        assert not snapshots.write_now()
    assert "exited with 1" in caplog.text
    assert metrics.sample("risk_state_snapshots_total", {"result": "failed"}) == failed + 1
    assert state_file.read_bytes() == good


def test_no_periodic_snapshots_without_a_path(make_app: AppFactory) -> None:
    assert "risk_snapshots" not in make_app(STATE_SNAPSHOT_PATH="").extensions
    with pytest.raises(ValueError, match="interval must be > 0"):
        PeriodicSnapshots(None, Path("x"), "k", 0)  # type: ignore[arg-type]


@pytest.mark.integration
def test_no_periodic_snapshots_on_redis(make_app: AppFactory, redis_target: RedisTarget) -> None:
    """Redis keeps the state outside the process: nothing to fork for."""
    app = make_app(STATE_URL=redis_target.url, STATE_PREFIX=redis_target.prefix)
    assert "risk_snapshots" not in app.extensions


def test_a_closed_scorer_ends_its_periodic_snapshots(make_app: AppFactory) -> None:
    app = make_app(STATE_SNAPSHOT_INTERVAL_SECONDS=0.05)
    snapshots = periodic(app)
    thread = snapshots._thread
    assert thread is not None and thread.is_alive()
    app.extensions["risk"].close()
    assert not snapshots.write_now()
    thread.join(timeout=5)
    assert not thread.is_alive()
