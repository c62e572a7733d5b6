"""Prometheus metrics and structured logs at the edge of every request."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import AppFactory
from flask import Flask, jsonify
from prometheus_client.parser import text_string_to_metric_families

from risk_service import auth, gunicorn_conf, logs, metrics, web
from risk_service.logs import REQUEST_ID

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)
KEY = auth.new_key()
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def payment(event_id: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "timestamp": iso(NOW - timedelta(minutes=10)),
        "account_id": "acct-ml-1",
        "event_type": "payment",
        "amount": 20.0,
        "channel": "app",
        "device_id": "dev-ml-1",
        "ip_address": "10.0.0.1",
    }
    event.update(fields)
    return event


@pytest.fixture
def edge(make_app: AppFactory) -> Callable[..., Flask]:
    """An app with the edge hooks (web.init_app is a no-op once create_app calls it)."""

    def build(**config: Any) -> Flask:
        app = make_app(**config)
        rules = {r.rule for r in app.url_map.iter_rules()}
        if not any(r.startswith("/decisions/") for r in rules):
            app.add_url_rule(
                "/decisions/<event_id>", "stand_in_decision", lambda event_id: jsonify({})
            )

        def logs_inside() -> Any:
            logging.getLogger("risk_service.scoring").warning("inside", extra={"step": 2})
            return jsonify({"request_id": REQUEST_ID.get()})

        app.add_url_rule("/_logs_inside", "logs_inside", logs_inside)
        web.init_app(app)
        return app

    return build


def scrape(client: Any) -> Samples:
    text = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).get_data(True)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- metrics -----------------------------------------------------------------------------------
def test_requests_are_timed_and_counted_per_route_rule(edge: Callable[..., Flask]) -> None:
    client = edge().test_client()
    before = scrape(client)
    for i in range(3):
        assert client.post("/score", json=payment(f"m-{i}")).status_code == 200
    assert client.post("/score", json=payment("m-bad", amount=-1)).status_code == 400
    assert client.get("/decisions/evt-secret-1").status_code in (200, 404)
    assert client.get("/no/such/acct-ml-1").status_code == 404
    after = scrape(client)
    hist = "risk_http_request_duration_seconds"
    assert delta(before, after, hist + "_count", endpoint="/score") == 4
    assert delta(before, after, hist + "_count", endpoint="/decisions/<event_id>") == 1
    assert delta(before, after, hist + "_count", endpoint="unmatched") == 1
    requests = "risk_http_requests_total"
    assert delta(before, after, requests, endpoint="/score", method="POST", status="200") == 3
    assert delta(before, after, requests, endpoint="/score", method="POST", status="400") == 1
    fast = value(after, hist + "_bucket", endpoint="/score", le="0.05")
    assert fast >= 4 and value(after, hist + "_bucket", endpoint="/score", le="0.0005") >= 0
    buckets = {dict(labels)["le"] for name, labels in after if name == hist + "_bucket"}
    assert {"0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05"} <= buckets
    # no identifiers in any label
    text = client.get("/metrics").get_data(True)
    for secret in ("evt-secret-1", "acct-ml-1", "dev-ml-1", "10.0.0.1", "127.0.0.1", "m-bad"):
        assert secret not in text


def _answer(decision: str = "approve", score: int | None = 12, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "decision": decision,
        "fraud": None if score is None else {"probability": 0.01, "score": score},
        "credit": None,
        "degraded": False,
        "late": False,
        "model_versions": {"fraud": "fraud-a", "credit": "credit-a"},
        "policy_version": "policy-a",
    }
    body.update(fields)
    return body


def test_observe_score_counts_decisions_scores_and_flags() -> None:
    def count(name: str, **labels: str) -> float:
        return metrics.sample(name, labels)

    names = [
        ("risk_decisions_total", {"kind": "payment", "decision": "approve"}),
        ("risk_decisions_total", {"kind": "payment", "decision": "review"}),
        ("risk_decisions_total", {"kind": "credit_application", "decision": "decline"}),
        ("risk_fraud_score_count", {}),
        ("risk_fraud_score_bucket", {"le": "14.0"}),
        ("risk_fraud_score_bucket", {"le": "74.0"}),
        ("risk_degraded_answers_total", {"kind": "payment"}),
        ("risk_late_events_total", {}),
        ("risk_idempotent_replays_total", {}),
    ]
    before = [count(n, **labels) for n, labels in names]
    metrics.observe_score(_answer())
    metrics.observe_score(_answer("review", 70, late=True))
    metrics.observe_score(_answer("review", None, degraded=True), kind="payment")
    application = {"probability_of_default": 0.5, "limit_check": {"requested_limit": 900.0}}
    metrics.observe_score(_answer("decline", None, credit=application))
    metrics.observe_score(_answer(), replayed=True)  # counted once, as a replay
    after = [count(n, **labels) for n, labels in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 2, 1, 2, 1, 2, 1, 1, 1]


def test_served_versions_are_a_gauge_that_follows_swaps() -> None:
    metrics.set_versions({"fraud": "fraud-v1", "credit": None}, "policy-v1")
    assert metrics.sample("risk_model_info", {"kind": "fraud", "version": "fraud-v1"}) == 1
    metrics.observe_score(_answer(model_versions={"fraud": "fraud-v2", "credit": None}))
    assert metrics.sample("risk_model_info", {"kind": "fraud", "version": "fraud-v1"}) == 0
    assert metrics.sample("risk_model_info", {"kind": "fraud", "version": "fraud-v2"}) == 1
    assert metrics.sample("risk_policy_info", {"version": "policy-a"}) == 1
    assert metrics.sample("risk_policy_info", {"version": "policy-v1"}) == 0


def test_store_latency_and_errors() -> None:
    labels = {"store": "redis", "operation": "get"}
    count_before = metrics.sample("risk_store_duration_seconds_count", labels)
    errors_before = metrics.sample("risk_store_errors_total", labels)
    metrics.observe_store("redis", "get", 0.0002)
    metrics.store_error("redis", "get")
    with metrics.timed_store("redis", "get"):
        pass
    with pytest.raises(ConnectionError), metrics.timed_store("redis", "get"):
        raise ConnectionError("down")
    assert metrics.sample("risk_store_duration_seconds_count", labels) - count_before == 3
    assert metrics.sample("risk_store_errors_total", labels) - errors_before == 2
    assert metrics.sample("risk_store_duration_seconds_bucket", {**labels, "le": "0.00025"}) >= 1


def test_auth_failures_are_counted_by_reason(edge: Callable[..., Flask]) -> None:
    app = edge(API_KEYS=f"{KEY}:read")
    client = app.test_client()
    before = scrape(client)
    client.post("/score", json=payment("a-1"))
    client.post("/score", json=payment("a-1"), headers={"Authorization": "Bearer " + "z" * 40})
    client.post("/score", json=payment("a-1"), headers={"Authorization": f"Bearer {KEY}"})
    after = scrape(client)
    for reason in ("missing", "unknown", "scope"):
        assert delta(before, after, "risk_auth_failures_total", reason=reason) == 1, reason


def test_scored_requests_move_the_decision_metrics(edge: Callable[..., Flask]) -> None:
    client = edge().test_client()
    before = scrape(client)
    bodies = [client.post("/score", json=payment(f"d-{i}")).get_json() for i in range(3)]
    client.post("/score", json=payment("d-0"))  # a replay
    after = scrape(client)
    for decision in metrics.DECISIONS:
        made = sum(b["decision"] == decision for b in bodies)
        labels = {"kind": "payment", "decision": decision}
        assert delta(before, after, "risk_decisions_total", **labels) == made
    assert delta(before, after, "risk_fraud_score_count") == 3
    assert delta(before, after, "risk_idempotent_replays_total") == 1


_CHILD = """
import json, os, sys
from risk_service import metrics
assert metrics.MULTIPROCESS
for body in json.loads(sys.argv[1]):
    metrics.observe_score(body)
metrics.set_versions({"fraud": sys.argv[2], "credit": None}, "policy-mp")
print(os.getpid())
"""
_SCRAPE = (
    "import sys; from risk_service import metrics; sys.stdout.write(metrics.render()[0].decode())"
)


def test_multiprocess_mode_adds_up_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", *argv], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def scraped() -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(run(_SCRAPE)):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    first = int(run(_CHILD, json.dumps([_answer(), _answer()]), "fraud-one"))
    run(_CHILD, json.dumps([_answer("decline", 95)]), "fraud-two")
    samples = scraped()
    approve = {"kind": "payment", "decision": "approve"}
    assert value(samples, "risk_decisions_total", **approve) == 2
    assert value(samples, "risk_decisions_total", kind="payment", decision="decline") == 1
    assert value(samples, "risk_fraud_score_count") == 3
    assert value(samples, "risk_model_info", kind="fraud", version="fraud-one") == 1
    # gunicorn's child_exit hook: a dead worker's live gauges go, its counters stay
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gunicorn_conf.child_exit(None, SimpleNamespace(pid=first))
    samples = scraped()
    assert value(samples, "risk_model_info", kind="fraud", version="fraud-one") == 0
    assert value(samples, "risk_model_info", kind="fraud", version="fraud-two") == 1
    assert value(samples, "risk_decisions_total", **approve) == 2
    # on_starting clears a previous run's files
    gunicorn_conf.on_starting(None)
    assert not list(tmp_path.glob("*.db"))


_FORKS = """
import os
from risk_service import metrics
metrics.observe_request("/score", "POST", 200, 0.001)
child = os.fork()
if child == 0:  # a worker forked from the arbiter, or a scoring process from its worker
    metrics.observe_request("/score", "POST", 200, 0.001)
    os._exit(0 if metrics.process_id() == os.getpid() else 1)
assert os.waitpid(child, 0)[1] == 0
metrics._pid = 424242  # where the id comes from: the cache, not a system call
metrics.observe_request("/score", "POST", 200, 0.001)
print(os.getpid(), child)
"""


def test_multiprocess_files_follow_the_cached_process_id(tmp_path: Path) -> None:
    """Values are written to files of the process that wrote them, the id read from a cache
    renewed at every fork (`metrics.process_id`), not from `os.getpid()` at every
    observation (a system call, three a request)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _FORKS], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    parent, child = done.stdout.split()
    written = {p.stem.rsplit("_", 1)[1] for p in tmp_path.glob("*.db")}
    assert written == {parent, child, "424242"}


# -- logs ----------------------------------------------------------------------------------------
def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_every_log_line_is_json_with_the_request_id(
    edge: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    client = edge(API_KEYS=KEY).test_client()
    capsys.readouterr()
    auth_header = {"Authorization": f"Bearer {KEY}"}
    scored = client.post("/score", json=payment("j-1"), headers=auth_header)
    refused = client.post("/score", json=payment("j-2"))
    inside = client.get("/_logs_inside", headers=auth_header)
    lines = json_lines(capsys.readouterr().err)
    for line in lines:
        assert {"ts", "level", "logger", "message", "request_id"} <= set(line)
        assert line["ts"].endswith("Z") and line["request_id"]
    access = [line for line in lines if line["logger"] == "risk_service.access"]
    assert [(a["method"], a["path"], a["status"], a["key_id"]) for a in access] == [
        ("POST", "/score", 200, "env-1"),
        ("POST", "/score", 401, None),
        ("GET", "/_logs_inside", 200, "env-1"),
    ]
    assert all(a["latency_ms"] > 0 for a in access)
    ids = [r.headers["X-Request-ID"] for r in (scored, refused, inside)]
    assert [a["request_id"] for a in access] == ids and len(set(ids)) == 3
    logged_inside = next(line for line in lines if line["message"] == "inside")
    assert logged_inside["request_id"] == ids[2] == inside.get_json()["request_id"]
    assert logged_inside["step"] == 2 and logged_inside["logger"] == "risk_service.scoring"
    assert REQUEST_ID.get() is None  # reset after the request


def test_the_direct_access_line_equals_the_logging_one(
    edge: Callable[..., Flask], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on the chain (production) the access line skips `logging`; same line either way."""
    client = edge().test_client()
    capsys.readouterr()
    client.get("/health", headers={"X-Request-ID": "via-logging"})
    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's capture handlers: gone
    monkeypatch.setattr(logs._access_logger, "info", None)  # the direct path does not call it
    client.get("/health", headers={"X-Request-ID": "direct"})
    first, second = json_lines(capsys.readouterr().err)
    assert list(first) == list(second)
    for key in ("ts", "request_id", "latency_ms"):
        first.pop(key), second.pop(key)
    assert first == second


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123", True),
        ("A.b_C-9" * 9 + "x", True),  # 64 characters
        ("x" * 65, False),
        ("has space", False),
        ("semi;colon", False),
        ("ünïcode", False),
        ("", False),
    ],
)
def test_request_id_header_round_trip(
    edge: Callable[..., Flask], incoming: str, kept: bool
) -> None:
    client = edge().test_client()
    response = client.get("/health", headers={"X-Request-ID": incoming})
    answered = response.headers["X-Request-ID"]
    if kept:
        assert answered == incoming
    else:
        assert answered != incoming and len(answered) == 16
    assert client.get("/_logs_inside").get_json()["request_id"] != answered


def test_forked_processes_make_other_request_ids() -> None:
    """Request ids come from `random` (no system call a request), which a fork reseeds: the
    worker and its scoring process, or two workers, never make the same sequence."""
    from risk_service import web

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked child reports through the pipe
        os.write(write, " ".join(web._new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    assert os.waitpid(child, 0)[1] == 0
    theirs = os.read(read, 1024).decode().split()
    os.close(read)
    ours = [web._new_request_id() for _ in range(3)]
    assert len(theirs) == 3 and all(len(i) == 16 and int(i, 16) >= 0 for i in theirs + ours)
    assert not set(theirs) & set(ours)


def test_text_format_for_people(
    edge: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    client = edge(LOG_FORMAT="text").test_client()
    capsys.readouterr()
    response = client.get("/health", headers={"X-Request-ID": "req-text-1"})
    err = capsys.readouterr().err.strip().splitlines()
    assert response.status_code == 200
    assert len(err) == 1 and err[0].split()[1] == "INFO"
    assert "[req-text-1] request" in err[0] and "path=/health" in err[0]
    edge(LOG_FORMAT="json")  # back to the default for the tests that follow


def test_bad_log_format_is_refused(edge: Callable[..., Flask]) -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        edge(LOG_FORMAT="xml")
    edge()


def test_a_413_is_still_json_after_the_hooks(edge: Callable[..., Flask]) -> None:
    client = edge().test_client()
    big = b'{"pad": "' + b"x" * 70_000 + b'"}'
    response = client.post("/score", data=big, content_type="application/json")
    assert response.status_code == 413
    assert set(response.get_json()) == {"error", "field", "message"}
    assert response.headers["X-Request-ID"]


# -- no personal data in logs --------------------------------------------------------------------
SECRETS = {
    "account_id": "acct-Zq81-priv",
    "payee_account_id": "acct-Pq72-payee",
    "device_id": "dev-Kx93-priv",
    "ip_address": "203.0.113.77",
    "instrument_id": "tok-Wv55-priv",
    "merchant_id": "merch-Yu42-priv",
}
EVENT_IDS = ("evt-Hh11-priv", "evt-Hh12-priv", "evt-Hh13-priv")
CLIENT_ADDRESS = "198.51.100.23"
WRONG_KEY = auth.new_key()


@pytest.fixture
def captured(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[[], list[str]]]:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="risk_service")

    def lines() -> list[str]:
        err = capsys.readouterr()
        return err.err.splitlines() + err.out.splitlines() + caplog.text.splitlines()

    yield lines


def test_no_personal_data_in_any_log_line(
    edge: Callable[..., Flask], captured: Callable[[], list[str]]
) -> None:
    app = edge(API_KEYS=KEY, LOG_LEVEL="DEBUG", AUTH_FAILURE_LIMIT=3)  # every scope
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = CLIENT_ADDRESS
    good = {"Authorization": f"Bearer {KEY}"}
    full = payment(EVENT_IDS[0], **SECRETS, funding_source="credit_line", explain=True)
    full["account"] = {"created_at": "2020-01-01", "kyc_level": 2, "credit_limit": 500.0}
    requests = [
        ("POST", "/score", {"json": full}, good),
        ("POST", "/score", {"json": full}, good),  # replay
        ("POST", "/score", {"json": {**full, "amount": 99.0}}, good),  # 409
        ("POST", "/score", {"json": payment(EVENT_IDS[1], **SECRETS, amount=-5)}, good),
        ("POST", "/score", {"json": payment(EVENT_IDS[1], **SECRETS, device_idd="x")}, good),
        ("POST", "/score", {"json": {**payment(EVENT_IDS[1], **SECRETS), "account_id": 7}}, good),
        (
            "POST",
            "/score",
            {"data": json.dumps(SECRETS)[:-3], "content_type": "application/json"},
            good,
        ),
        (
            "POST",
            "/score",
            {"data": json.dumps(SECRETS) * 3000, "content_type": "application/json"},
            good,
        ),
        ("POST", "/score", {"data": json.dumps(SECRETS), "content_type": "text/plain"}, good),
        ("GET", f"/decisions/{EVENT_IDS[0]}", {}, good),
        ("GET", f"/decisions/{EVENT_IDS[2]}", {}, good),
        ("POST", "/feedback", {"json": {"event_id": EVENT_IDS[0], **SECRETS}}, good),
        ("POST", "/feedback", {"json": {"event_id": EVENT_IDS[0], "is_fraud": 1}}, good),
        ("GET", "/admin/status", {}, good),
        ("GET", f"/nope/{SECRETS['account_id']}", {}, good),
        ("POST", "/score", {"json": full}, {"Authorization": f"Bearer {WRONG_KEY}"}),
        ("POST", "/score", {"json": full}, {"Authorization": f"Basic {WRONG_KEY}"}),
        ("POST", "/score", {"json": full}, {}),
        ("POST", "/score", {"json": full}, {"Authorization": f"Bearer {WRONG_KEY}"}),  # 429
        ("POST", "/score", {"json": full}, good),  # a valid key is still served
    ]
    statuses = []
    for method, path, kwargs, headers in requests:
        statuses.append(client.open(path, method=method, headers=headers, **kwargs).status_code)
    assert statuses[:3] == [200, 200, 409] and statuses[-2:] == [429, 200]
    assert {400, 401, 404, 413, 415} <= set(statuses)
    lines = captured()
    assert sum('"risk_service.access"' in line for line in lines) == len(requests)
    forbidden = [*SECRETS.values(), KEY, WRONG_KEY, CLIENT_ADDRESS]
    for line in lines:
        for secret in forbidden:
            assert secret not in line, (secret, line)
    for line in lines:
        if "risk_service.access" in line:
            for event_id in EVENT_IDS:
                assert event_id not in line, line
