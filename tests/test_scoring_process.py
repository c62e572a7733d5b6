"""The scoring process (risk_service/scoring_process.py): the worker keeps HTTP, a process of
its own scores. Its messages and errors on their own, then a real `risk serve --threads 1`:
the same answers as a worker scoring in its own loop, every other route answered by the
scoring process, and what happens when either process dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_worker import (
    event,
    one_thread_env,
    process_state,
    read_response,
    scoring_pid,
    serve_one_thread,
    stop,
    with_length,
    worker_pids,
)

from risk_service.decision_records import DecisionLogError
from risk_service.errors import Conflict, InvalidField
from risk_service.requests import ScoreRequest
from risk_service.scoring_process import frame, pack_error, take_frames, unpack_error
from risk_service.worker import scoring_process, scoring_stall


# -- messages and errors -------------------------------------------------------------------------
def test_messages_arrive_whole_however_the_bytes_are_split() -> None:
    messages = [("score", [(1, {"a": 1.5})]), ("answers", [(1, ("ok", ({"x": None}, False)))])]
    data = b"".join(frame(m) for m in messages)
    for cut in range(len(data) + 1):
        buf = bytearray(data[:cut])
        got = take_frames(buf)
        buf += data[cut:]
        got += take_frames(buf)
        assert got == messages and buf == b"", cut


def test_a_validated_request_crosses_whole() -> None:
    request = ScoreRequest(
        "payment", {"event_id": "e", "amount": 1.5}, {"account_id": "a"}, True, "ab" * 32
    )
    (message,) = take_frames(bytearray(frame(("score", [(7, request)]))))
    assert message == ("score", [(7, request)])
    assert message[1][0][1].event_id == "e" and message[1][0][1].explain is True


def test_errors_cross_with_their_status_field_and_type() -> None:
    for exc in (
        Conflict("event_id 'e' was already scored with a different body", field="event_id"),
        InvalidField("amount must be positive", field="amount"),
    ):
        back = unpack_error(pack_error(exc))
        assert type(back) is type(exc)
        assert (back.status, back.error, back.field, back.message) == (
            exc.status,
            exc.error,
            exc.field,
            exc.message,
        )
    log_error = unpack_error(pack_error(DecisionLogError("disk full")))
    assert type(log_error) is DecisionLogError and str(log_error) == "disk full"
    unknown = unpack_error(("no.such.module", "Gone", ("x",), {}))
    assert type(unknown) is RuntimeError and "Gone" in str(unknown)


def test_the_setting() -> None:
    assert scoring_process({}, workers=1, cores=2)
    assert not scoring_process({}, workers=1, cores=1)  # no core left for it
    assert not scoring_process({"RISK_SCORING_PROCESS": "0"}, workers=1, cores=8)
    assert scoring_process({"RISK_SCORING_PROCESS": "on"}, workers=1, cores=1)
    assert not scoring_process(  # on Redis each worker scores its own requests
        {"RISK_SCORING_PROCESS": "1", "RISK_STATE_URL": "redis://x"}, workers=1, cores=8
    )
    with pytest.raises(RuntimeError, match="RISK_SCORING_PROCESS"):
        scoring_process({"RISK_SCORING_PROCESS": "maybe"})
    assert scoring_stall({}) == 30.0 and scoring_stall({"RISK_SCORING_STALL_SECONDS": "2.5"}) == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(RuntimeError, match="RISK_SCORING_STALL_SECONDS"):
            scoring_stall({"RISK_SCORING_STALL_SECONDS": bad})


# -- through risk serve --------------------------------------------------------------------------
def post(port: int, body: dict[str, Any] | bytes, path: str = "/score") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        status, _, answer = read_response(sock, bytearray())
    return status, json.loads(answer)


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def events(start: datetime = START) -> list[dict[str, Any]]:
    """Payments of three accounts a minute apart (velocities), one asking for its reasons,
    credit-line payments, and a credit application."""
    out: list[dict[str, Any]] = []
    for i in range(24):
        when = (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        payment: dict[str, Any] = {
            "event_id": f"p-{i}",
            "timestamp": when,
            "account_id": f"acct-{i % 3}",
            "event_type": "payment",
            "amount": [12.5, 980.0, 45.0, 3100.0][i % 4],
            "merchant_id": f"m-{i % 5}",
            "device_id": f"dev-{i % 2}",
            "channel": "app",
            "funding_source": "credit_line" if i % 6 == 0 else "balance",
            "account": {"created_at": "2026-01-01", "kyc_level": 1, "credit_limit": 2000},
        }
        if i == 7:
            payment["explain"] = True
        out.append(payment)
    out.append(
        {
            "event_id": "c-1",
            "timestamp": out[-1]["timestamp"],
            "account_id": "acct-1",
            "event_type": "credit_application",
            "requested_limit": 1500.0,
        }
    )
    return out


def answers_of(port: int) -> list[tuple[int, Any]]:
    got = []
    bodies = events()
    for body in bodies:
        got.append(post(port, body))
    got.append(post(port, bodies[3]))  # a retry
    got.append(post(port, {**bodies[3], "amount": 1.0}))  # the same event_id, another body
    got.append(post(port, {**bodies[4], "event_id": "bad", "amount": -5}))  # refused by the front
    for status, answer in got:
        if status == 200:
            answer.pop("timing_ms")
    return got


def test_the_scoring_process_answers_as_the_worker_scoring_itself(tmp_path: Path) -> None:
    """The same events, retry, conflict and refusal through a worker with a scoring process
    and through one without: the same answers, the same logged features."""
    results = {}
    for mode in ("1", "0"):
        work = tmp_path / f"mode-{mode}"
        work.mkdir()
        proc, port = serve_one_thread(work, one_thread_env(work, RISK_SCORING_PROCESS=mode))
        try:
            (worker,) = worker_pids(proc)
            assert (scoring_pid(worker) != worker) == (mode == "1")
            answers = answers_of(port)
            logged = [get(port, f"/decisions/{body['event_id']}")[1] for body in events()]
        finally:
            stop(proc)
        results[mode] = answers, [(x["features"], x["decision"], x["reasons"]) for x in logged]
    assert results["1"] == results["0"]
    answers = results["1"][0]
    assert [status for status, _ in answers[-3:]] == [200, 409, 400]
    assert answers[-2][1]["field"] == "event_id" and answers[-1][1]["field"] == "amount"
    assert answers[-3][1] == answers[3][1]  # the retry: the stored answer
    assert 3 <= len(answers[7][1]["fraud"]["reasons"]) <= 5  # asked for its reasons
    assert answers[24][1]["credit"]["probability_of_default"] > 0  # the credit application
    assert results["1"][1][5][0]["account_events_24h"] == 1  # acct-2's second event
    assert results["1"][1][23][0]["account_events_24h"] == 7


def test_every_other_route_is_answered_by_the_scoring_process(tmp_path: Path) -> None:
    """Feedback, decisions, readiness, models, admin and unknown routes go to the scoring
    process whole; /health and /metrics are the worker's own (/health answers with the
    scoring process stopped), and /metrics adds up both processes' metrics."""
    env = one_thread_env(tmp_path, RISK_SCORING_PROCESS="1")
    proc, port = serve_one_thread(tmp_path, env)
    try:
        body = events()[0]
        assert post(port, body)[0] == 200
        label = {
            "event_id": body["event_id"],
            "is_fraud": 1,
            "label_time": body["timestamp"],
            "source": "chargeback",
        }
        status, stored = post(port, label, "/feedback")
        assert status == 200 and stored["stored"] is True, stored
        status, refused = post(port, {**label, "source": "rumour"}, "/feedback")
        assert (status, refused["field"]) == (400, "source")
        status, decision = get(port, f"/decisions/{body['event_id']}")
        assert status == 200 and [x["label"] for x in decision["labels"]] == ["is_fraud"]
        assert get(port, "/decisions/never")[0] == 404
        status, missing = get(port, "/no-such-route")
        assert (status, missing["error"], missing["field"]) == (404, "not_found", None)
        status, ready = get(port, "/ready")
        assert status == 200 and ready["checks"] == {"fraud_model": True, "decision_log": True}
        status, models = get(port, "/models")
        assert status == 200 and models["models"]["fraud"]["feature_names"]
        status, _ = post(port, {"version": "no-such-version"}, "/admin/promote")
        assert status in (400, 404)  # answered by the scoring process's admin route
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert "risk_decision_log_commit_rows_count" in metrics  # the scoring process's
        assert 'risk_http_requests_total{endpoint="/feedback"' in metrics  # its too
        assert 'risk_http_requests_total{endpoint="/score"' in metrics  # the worker's
        (worker,) = worker_pids(proc)
        scorer = scoring_pid(worker)
        os.kill(int(scorer), signal.SIGSTOP)
        try:
            assert get(port, "/health") == (200, {"status": "ok"})
        finally:
            os.kill(int(scorer), signal.SIGCONT)
    finally:
        stop(proc)


def test_when_the_scoring_process_dies_waiting_requests_get_503_and_the_worker_restarts(
    tmp_path: Path,
) -> None:
    """A request waiting for a scoring process that dies gets a 503 naming it (nothing was
    acknowledged); gunicorn starts a new worker and scoring process, which answers the retry
    and remembers what was answered before (the log's recent decisions)."""
    env = one_thread_env(tmp_path, RISK_SCORING_PROCESS="1")
    proc, port = serve_one_thread(tmp_path, env)
    try:
        first, during = json.loads(event("before")), event("during")
        before = post(port, first)
        assert before[0] == 200
        (worker,) = worker_pids(proc)
        scorer = scoring_pid(worker)
        os.kill(int(scorer), signal.SIGSTOP)
        wait_for(lambda: process_state(scorer) == "T", "the scoring process stopped")
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        with sock:
            sock.sendall(with_length(during))
            time.sleep(0.2)  # the worker hands it over, then waits
            os.kill(int(scorer), signal.SIGKILL)
            status, _, answer = read_response(sock, bytearray())
        assert status == 503
        assert json.loads(answer)["error"] == "scoring_unavailable"
        wait_for(lambda: worker_pids(proc) not in ([], [worker]), "a new worker", seconds=30)
        deadline = time.monotonic() + 60
        while True:  # the new worker answers once its scoring process has loaded
            status, retried = post(port, during)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200 and retried["event_id"] == "during"
        again = post(port, first)
        assert again[0] == 200
        for answer in (again[1], before[1]):
            answer.pop("timing_ms")
        assert again[1] == before[1]  # recalled from the log, not scored anew
        (new_worker,) = worker_pids(proc)
        assert scoring_pid(new_worker) != new_worker
    finally:
        stop(proc)


def test_a_hung_scoring_process_is_killed_and_replaced(tmp_path: Path) -> None:
    """gunicorn's timeout watches only the worker, which a hung scoring process leaves alive
    and answering /health: the worker kills one that keeps requests waiting
    RISK_SCORING_STALL_SECONDS without any answer (here stopped with SIGSTOP), they get
    503, and a new worker with a new scoring process takes over."""
    env = one_thread_env(tmp_path, RISK_SCORING_PROCESS="1", RISK_SCORING_STALL_SECONDS="2")
    proc, port = serve_one_thread(tmp_path, env)
    try:
        time.sleep(3)  # idle longer than the stall time: no request waits, nothing is killed
        (worker,) = worker_pids(proc)
        scorer = scoring_pid(worker)
        assert process_state(scorer) != "Z" and worker_pids(proc) == [worker]
        os.kill(int(scorer), signal.SIGSTOP)
        wait_for(lambda: process_state(scorer) == "T", "the scoring process stopped")
        started = time.monotonic()
        status, answer = post(port, json.loads(event("hung")))
        waited = time.monotonic() - started
        assert (status, answer["error"]) == (503, "scoring_unavailable")
        assert 2.0 <= waited < 5.0, waited
        assert "answered nothing for" in (tmp_path / "server.log").read_text()
        wait_for(lambda: worker_pids(proc) not in ([], [worker]), "a new worker", seconds=30)
        deadline = time.monotonic() + 60
        while (status := post(port, json.loads(event("after")))[0]) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    finally:
        stop(proc)


def test_when_the_worker_dies_its_scoring_process_exits_without_a_snapshot(
    tmp_path: Path,
) -> None:
    """SIGKILL to the worker: its scoring process sees the socket close and exits, writing no
    snapshot (as a killed worker wrote none); gunicorn's new worker has a new one."""
    env = one_thread_env(tmp_path, RISK_SCORING_PROCESS="1")
    proc, port = serve_one_thread(tmp_path, env)
    try:
        assert post(port, json.loads(event("one")))[0] == 200
        (worker,) = worker_pids(proc)
        scorer = scoring_pid(worker)
        os.kill(int(worker), signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{scorer}").exists(), "the scoring process gone")
        assert not (tmp_path / "state.snapshot").exists()
        assert (
            "the worker is gone: the scoring process exits" in (tmp_path / "server.log").read_text()
        )
        wait_for(lambda: worker_pids(proc) not in ([], [worker]), "a new worker", seconds=30)
    finally:
        stop(proc)
    assert (tmp_path / "state.snapshot").exists()  # the graceful stop's, by the new one
