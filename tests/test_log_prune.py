"""`risk log prune`: decisions older than a retention go, with their labels, on SQLite and
PostgreSQL, while a service keeps writing the same log; and `recent`, what a restarted
service reads back from the log."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_decision_log import KEY, record

from risk_service.decision_log import DecisionLog, SQLiteDecisionLog
from risk_service.labels import LabelRecord
from training.cli import main
from training.datasets import DataError
from training.log_prune import DAY_MS, MIN_DAYS, prune_log

NOW_MS = 1_795_611_540_000
AGES_DAYS = (400, 250, 181, 179, 30, 1)  # three past a 180-day retention, three within


def fill(log: DecisionLog) -> None:
    """Two decisions of each age, a fraud label on the first of each."""
    for age in AGES_DAYS:
        for k in range(2):
            created = NOW_MS - age * DAY_MS + k
            log.append(record(f"d{age}-{k}", created_at_ms=created))
        log.add_label(LabelRecord(f"d{age}-0", "is_fraud", 1, NOW_MS - 1, "chargeback", NOW_MS))


@contextmanager
def sqlite_log(tmp_path: Path) -> Iterator[tuple[SQLiteDecisionLog, str]]:
    log = SQLiteDecisionLog(tmp_path / "decisions.sqlite", hash_key=KEY, synchronous="NORMAL")
    try:
        yield log, f"sqlite:///{tmp_path / 'decisions.sqlite'}"
    finally:
        log.close()


@contextmanager
def postgres_log(tmp_path: Path, pg_url: str) -> Iterator[tuple[DecisionLog, str]]:
    from risk_service.decision_log_pg import PostgresDecisionLog

    log = PostgresDecisionLog(pg_url, KEY, spool_path=tmp_path / "spool")
    try:
        yield log, pg_url
    finally:
        log.close()


def check_prune(log: DecisionLog, url: str) -> None:
    fill(log)
    assert log.count() == 12
    counted = prune_log(url, older_than_days=MIN_DAYS, now_ms=NOW_MS, dry_run=True)
    assert (counted.decisions, counted.labels, counted.kept) == (6, 3, 6)
    assert counted.oldest_kept_ms == NOW_MS - 179 * DAY_MS
    assert log.count() == 12  # a dry run deletes nothing
    done = prune_log(url, older_than_days=MIN_DAYS, now_ms=NOW_MS, batch=4, pause_s=0)
    assert (done.decisions, done.labels, done.kept) == (6, 3, 6)
    assert done.cutoff_ms == NOW_MS - MIN_DAYS * DAY_MS and not done.dry_run
    assert done.oldest_kept_ms == NOW_MS - 179 * DAY_MS
    assert log.count() == 6
    for age in AGES_DAYS:
        gone = age > MIN_DAYS
        assert (log.get(f"d{age}-1") is None) == gone, age
        assert (log.labels(f"d{age}-0") == []) == gone, age
    again = prune_log(url, older_than_days=MIN_DAYS, now_ms=NOW_MS)
    assert (again.decisions, again.labels, again.kept) == (0, 0, 6)
    # the log goes on: a pruned event_id is a new decision again, a kept one is a duplicate
    assert log.append(record("d400-0", created_at_ms=NOW_MS)) is True
    assert log.append(record("d30-0", created_at_ms=NOW_MS - 30 * DAY_MS)) is False


def test_prune_on_sqlite(tmp_path: Path) -> None:
    with sqlite_log(tmp_path) as (log, url):
        check_prune(log, url)


@pytest.mark.integration
def test_prune_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with postgres_log(tmp_path, pg_url) as (log, url):
        check_prune(log, url)


def test_prune_beside_a_service_appending_to_the_same_sqlite_log(tmp_path: Path) -> None:
    """Small batches, each its own short transaction: the live log's appends interleave."""
    with sqlite_log(tmp_path) as (log, url):
        for i in range(3000):
            log.append(record(f"old-{i}", created_at_ms=NOW_MS - 400 * DAY_MS + i))
        appended: list[str] = []
        errors: list[BaseException] = []

        def service() -> None:
            try:
                for i in range(300):
                    log.append(record(f"new-{i}", created_at_ms=NOW_MS + i))
                    appended.append(f"new-{i}")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        writer = threading.Thread(target=service)
        writer.start()
        done = prune_log(url, older_than_days=365, now_ms=NOW_MS, batch=200, pause_s=0.001)
        writer.join(timeout=60)
        assert errors == [] and len(appended) == 300
        assert done.decisions == 3000 and log.count() == 300
        assert all(log.get(e) is not None for e in appended)


def test_a_short_retention_needs_force_and_bad_logs_are_named(tmp_path: Path) -> None:
    with sqlite_log(tmp_path) as (log, url):
        fill(log)
        with pytest.raises(DataError, match=r"under 180.*--force"):
            prune_log(url, older_than_days=90, now_ms=NOW_MS)
        forced = prune_log(url, older_than_days=90, now_ms=NOW_MS, force=True, pause_s=0)
        assert (forced.decisions, forced.labels, forced.kept) == (8, 4, 4)
    with pytest.raises(DataError, match="no decision log at"):
        prune_log(f"sqlite:///{tmp_path / 'missing.sqlite'}", older_than_days=365)
    with pytest.raises(DataError, match=re.escape("--log 'mysql://db/x': expected sqlite:///PATH")):
        prune_log("mysql://db/x", older_than_days=365)
    (tmp_path / "other.sqlite").write_bytes(b"")
    with pytest.raises(DataError, match="not a decision log"):
        prune_log(str(tmp_path / "other.sqlite"), older_than_days=365)


def test_the_cli_prunes_and_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite_log(tmp_path) as (log, url):
        fill(log)
        run: Callable[..., int] = main
        assert run(["log", "prune", "--log", url, "--older-than-days", "30"]) == 2
        assert "add --force" in capsys.readouterr().err
        args: list[Any] = ["log", "prune", "--log", url, "--older-than-days", "1000", "--dry-run"]
        assert run(args) == 0
        out = capsys.readouterr().out
        assert "would delete 0 decisions and 0 labels" in out and "12 decisions kept" in out
        assert run(["log", "prune", "--log", url, "--older-than-days", "0.5", "--force"]) == 0
        out = capsys.readouterr().out
        assert "deleted 12 decisions and 6 labels" in out and "0 decisions kept" in out
        assert "the oldest appended none" in out
        assert log.count() == 0


def check_recent(log: DecisionLog) -> None:
    """`recent`: what a restarted service recalls as idempotency records."""
    for i, age_s in enumerate((7200, 3000, 1200, 60, 1)):
        log.append(record(f"r{i}", created_at_ms=NOW_MS - age_s * 1000))
    since = NOW_MS - 3600 * 1000
    assert log.recent(since, 100) == [
        ("r4", NOW_MS - 1000),
        ("r3", NOW_MS - 60_000),
        ("r2", NOW_MS - 1_200_000),
        ("r1", NOW_MS - 3_000_000),
    ]
    assert [e for e, _ in log.recent(since, 2)] == ["r4", "r3"]  # newest first, capped


def test_recent_decisions_on_sqlite(tmp_path: Path) -> None:
    with sqlite_log(tmp_path) as (log, _):
        check_recent(log)


@pytest.mark.integration
def test_recent_decisions_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with postgres_log(tmp_path, pg_url) as (log, _):
        check_recent(log)
