"""The production configuration end to end: Redis state, PostgreSQL decision log, keys."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import AppFactory, RedisTarget
from flask import Flask
from servers import FaultProxy
from test_api import NOW, iso, payment

KEY = "k" * 40
READER = "r" * 40
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.integration


@pytest.fixture
def production(make_app: AppFactory, redis_target: RedisTarget, pg_url: str) -> Flask:
    return make_app(
        STATE_URL=redis_target.url,
        STATE_PREFIX=redis_target.prefix,
        STATE_TIMEOUT_MS=2000.0,
        DECISION_LOG_URL=pg_url,
        API_KEYS=f"{KEY},{READER}:read",
        REQUEST_DEADLINE_MS=30_000,
    )


def test_scoring_feedback_and_reads_on_redis_and_postgresql(production: Flask, pg_url: str) -> None:
    client = production.test_client()
    base = NOW - timedelta(hours=3)
    bodies = [
        payment(
            f"p{i}",
            timestamp=iso(base + timedelta(seconds=i)),
            account_id="carol-account",
            merchant_id="m-5",
        )
        for i in range(30)
    ]

    def send(body: dict[str, Any]) -> int:
        return production.test_client().post("/score", json=body, headers=AUTH).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(send, bodies + bodies))  # each event twice, concurrently
    assert codes == [200] * 60
    assert client.post("/score", json=payment("p-x")).status_code == 401  # no key
    reader = {"Authorization": f"Bearer {READER}"}
    assert client.post("/score", json=payment("p-x"), headers=reader).status_code == 403

    label = {
        "event_id": "p0",
        "is_fraud": 1,
        "label_time": iso(base + timedelta(minutes=2)),
        "source": "chargeback",
    }
    answer = client.post("/feedback", json=label, headers=AUTH)
    assert answer.status_code == 200 and answer.get_json()["online_state"] == "applied"
    final = payment(
        "p-final",
        timestamp=iso(base + timedelta(minutes=10)),
        account_id="carol-account",
        merchant_id="m-5",
    )
    assert client.post("/score", json=final, headers=AUTH).status_code == 200
    record = client.get("/decisions/p-final", headers=reader).get_json()
    assert record["features"]["account_events_24h"] == 30
    assert record["features"]["merchant_known_frauds_30d"] == 1
    assert client.get("/decisions/p0", headers=reader).get_json()["labels"][0]["source"] == (
        "chargeback"
    )

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (31,)
        assert conn.execute("SELECT count(*) FROM labels").fetchone() == (1,)
        dump = conn.execute("SELECT d::text FROM decisions d").fetchall()
    assert not any("carol" in row[0] for row in dump)  # identifiers only as keyed hashes

    ready = client.get("/ready").get_json()
    assert ready["status"] == "ready"
    assert ready["details"]["decision_log"]["backend"] == "postgresql"
    assert ready["details"]["decision_log"]["connected"] is True
    assert ready["details"]["state_store"] == {
        "backend": "redis",
        "breaker": "closed",
        "backlog": 0,
    }


def test_postgresql_down_spools_decisions_and_flushes_them_when_back(
    make_app: AppFactory, pg_url: str
) -> None:
    """A fault proxy in front of PostgreSQL cuts it off: /score keeps answering (decisions go
    to the local durable spool), and when PostgreSQL is back every decision lands once."""
    proxy = FaultProxy(5432)
    try:
        proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        app = make_app(DECISION_LOG_URL=proxied, DECISION_LOG_TIMEOUT_MS=300)
        client = app.test_client()
        for i in range(3):
            assert client.post("/score", json=payment(f"g{i}")).status_code == 200
        proxy.set_down(True)
        for i in range(3, 8):
            started = time.perf_counter()
            response = client.post("/score", json=payment(f"g{i}"))
            assert response.status_code == 200 and response.get_json()["degraded"] is False
            assert time.perf_counter() - started < 1.5
        status = client.get("/ready").get_json()
        assert status["status"] == "ready" and status["details"]["decision_log"]["spooled"] >= 5
        proxy.set_down(False)
        deadline = time.monotonic() + 30
        rows: list[tuple[str]] = []
        while time.monotonic() < deadline:
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute("SELECT event_id FROM decisions ORDER BY event_id").fetchall()
            if len(rows) == 8:
                break
            time.sleep(0.2)
        assert [r[0] for r in rows] == [f"g{i}" for i in range(8)]  # all, each once
    finally:
        proxy.close()


def test_another_answer_to_the_same_request_shows_beside_the_decision(
    production: Flask, pg_url: str
) -> None:
    """A retry answered degraded while its first answer waited in another worker's spool is
    kept in decision_conflicts at the flush (move_rows); GET /decisions shows it."""
    import dataclasses

    from risk_service.decision_log_pg_sql import move_rows
    from risk_service.decision_records import Pseudonymiser, decision_row

    client = production.test_client()
    first = client.post("/score", json=payment("twice-1"), headers=AUTH).get_json()
    log = production.extensions["risk"].log
    logged = log.get("twice-1")
    again = dataclasses.replace(
        logged, decision="review", degraded=True, response={**first, "decision": "review"}
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the other worker's spool, flushed
        kept = move_rows(conn, [decision_row(Pseudonymiser(b"x" * 32), again)], [])
        assert kept == ["twice-1"]
        assert move_rows(conn, [decision_row(Pseudonymiser(b"x" * 32), logged)], []) == []
    record = client.get("/decisions/twice-1", headers=AUTH).get_json()
    assert record["decision"] == first["decision"] and record["degraded"] is False
    assert [(o["decision"], o["degraded"]) for o in record["other_answers"]] == [("review", True)]
    assert record["other_answers"][0]["response"]["decision"] == "review"
    # both answers in one flushed batch: the first is the decision, the second kept aside
    pair = [dataclasses.replace(r, event_id="pair-1") for r in (logged, again)]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = [decision_row(Pseudonymiser(b"x" * 32), r) for r in pair]
        assert move_rows(conn, rows, []) == ["pair-1"]
        assert move_rows(conn, rows, []) == ["pair-1"]  # flushed again: kept aside once
    record = client.get("/decisions/pair-1", headers=AUTH).get_json()
    assert record["decision"] == first["decision"]
    assert [(o["decision"], o["degraded"]) for o in record["other_answers"]] == [("review", True)]
