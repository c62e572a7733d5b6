"""A short load test on a real server: `risk serve --workers 2` on Redis and PostgreSQL, with
4 threads a worker, and with one (answering in its event loop, one commit a turn) where 30% of
the events ask for their reasons, whose TreeSHAP runs beside the loop.

3,000 unique payment events over 100 known accounts, from 16 client threads with keep-alive
connections (bench/cluster.py's load generator); 5% of the events are sent twice at once
from two threads, and 5% again after their answer, always with the same event_id. The
machine's Redis (a key prefix of this test's own, deleted after) and PostgreSQL (a fresh
schema, dropped after) hold the state and the decision log; API keys are on.

Required: every answer a 200 and none degraded; every event in the decision log in
PostgreSQL, once, with the decision its answers gave; and a final payment per account,
sent afterwards, whose logged `account_events_24h` equals the number of that account's
earlier events (retries counted once).

Redis calls get a 2 s timeout and the request deadline is 30 s here (production: 5 ms and
50 ms), so a busy CI machine cannot turn answers degraded: this test checks correctness
under concurrency; latency is measured by bench/soak.py and bench/bench_service.py.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from conftest import RedisTarget

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 3000
ACCOUNTS = 100

pytestmark = pytest.mark.integration


def _cluster() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster", ROOT / "bench" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cluster", module)
    spec.loader.exec_module(module)
    return module


cluster = _cluster()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("threads", "explain_fraction"),
    [(4, 0.0), (1, 0.3)],
    ids=["4 threads", "1 thread, reasons beside the loop"],
)
def test_thousands_of_events_from_concurrent_clients_all_logged_and_counted_once(
    tmp_path: Path, redis_target: RedisTarget, pg_url: str, threads: int, explain_fraction: float
) -> None:
    """With one thread a worker answers in its event loop with one commit a turn; 30% of the
    events then ask for their reasons, whose TreeSHAP runs beside the loop (turns.beside,
    forced on: two workers on two cores leave it off), copies and resends of them included."""
    env = cluster.production_env(
        state_url=redis_target.url,
        prefix=redis_target.prefix,
        pg_url=pg_url,
        STATE_TIMEOUT_MS=2000,
        REQUEST_DEADLINE_MS=30000,
    )
    if threads == 1:
        env["RISK_REASONS_BESIDE"] = "1"
    run = f"load-{uuid.uuid4().hex[:8]}"
    with cluster.Service(tmp_path / "service", env, workers=2, threads=threads) as service:
        assert len(service.worker_pids()) == 2
        spec = cluster.LoadSpec(
            url=service.url,
            run=run,
            accounts=ACCOUNTS,
            threads=16,
            events=EVENTS,
            seconds=240,
            copy_fraction=0.05,
            copies=2,
            resend_fraction=0.05,
            explain_fraction=explain_fraction,
            timeouts=(30.0,),
            max_attempts=1,  # no client retry: any failure shows
        )
        attempts = cluster.drive(spec)
        db = cluster.DecisionLogDb(pg_url)
        try:
            outcomes = {a.outcome for a in attempts}
            failures = [a for a in attempts if a.outcome != "200"][:5]
            assert outcomes == {"200"}, failures
            events = cluster.by_event(attempts)
            assert len(events) == EVENTS
            retried = [e for e, o in events.items() if o.sends > 1]
            assert len(retried) > EVENTS * 0.05  # copies and resends happened
            assert max(len(o.answers) for o in events.values()) == 1  # retries answer the same

            logged = cluster.check_logged(db, events)
            assert logged["acked"] == EVENTS and logged["not_acked"] == 0
            assert logged["missing"] == []
            assert logged["answer_differs_from_log"] == []
            assert db.count() == EVENTS  # one row per event: retries added none
            assert db.conflicts() == 0

            velocity = cluster.probe_velocity(service, db, events, run, tries=1)
            assert velocity["accounts"] == ACCOUNTS
            assert velocity["wrong"] == [] and velocity["degraded_probes"] == 0
            assert velocity["exact"] == ACCOUNTS
            assert db.count() == EVENTS + ACCOUNTS
        finally:
            db.close()
