"""Schemathesis against the live /openapi.json of `risk serve`: no 5xx, answers as documented.

`risk serve` (gunicorn, one buffering gthread worker) runs on a free port, on a copy of the
committed models in tmp (the admin routes may promote, roll back or name a challenger
there), with an admin key and a read-only key configured (`RISK_API_KEYS`) and the
failure limiter off, so requests without a key get 401 rather than 429 once the
generated keyless cases pile up (429 is checked in process, below).

The schemathesis CLI (pinned in pyproject.toml) reads the live document and runs, for
every operation, the coverage phase (boundary and type-violating values of every field,
missing fields, requests without or with a wrong key) and the fuzzing phase (positive
and negative data, `MAX_EXAMPLES`), derandomised (`generation.deterministic`), with
every check except the three named in `_EXCLUDED_CHECKS` (why: there). Dictionaries mix
realistic values into the generated ones (instants inside and outside the accepted
range, amounts at their limits, event ids that were scored, the bundle versions on
disk), so positive cases get past validation into scoring, feedback and the registry.

Every request and answer is recorded (HAR) and checked here again: no 5xx, and every 4xx
names the field at fault by the rule of `risk_service.openapi` (`ERRORS_WITH_FIELD`,
`ERRORS_WITHOUT_FIELD`): a field that is in the request (for a missing field: absent or
null in it), ``event_id`` for a 404 or 409 about an event, ``version`` for a refused
admin change, ``Authorization`` for 401, 403 and 429; null only for malformed JSON, a
body that is not an object or nests too deep, 413, 415, an unknown route and 405.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pytest
import requests
import schemathesis
from openapi_spec_validator import validate as validate_openapi
from werkzeug.routing import Rule

from risk_service import registry_admin
from risk_service.openapi import ERRORS_WITH_FIELD, ERRORS_WITHOUT_FIELD, openapi_document
from risk_service.requests import CREDIT_APPLICATION
from risk_service.schema import EVENT_TYPES

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[1]
ST = [sys.executable, "-m", "schemathesis.cli"]  # the `st` command of this environment
ADMIN_KEY = "fuzz-admin-" + "k" * 40  # every scope
READ_KEY = "fuzz-read-" + "r" * 40  # the read scope only
MAX_EXAMPLES = 300  # fuzzing phase, per operation; the coverage phase adds its own cases
SEED = 20261125
RUN_TIMEOUT_S = 300  # the whole schemathesis run; it takes about a minute here
_EXCLUDED_CHECKS = (
    # Schema-valid bodies may still be refused for what a schema cannot say (a timestamp
    # in the future, an event_id never scored, a label before its event): not a failure.
    "positive_data_acceptance",
    # On the open routes a keyless client sending an undeclared method gets 401 before
    # the 405 (web.py asks a key for any route or method outside OPEN_ENDPOINTS:
    # test_unknown_method_without_a_key_is_401). 405s carry Allow (test_405_...).
    "unsupported_method",
)
IDS = [f"evt-{i}" for i in range(12)] + ["0"]  # shared by /score, /feedback and /decisions


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Service:
    url: str
    models: Path
    log: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`risk serve` on a copy of the committed models; its output goes to a file."""
    tmp = tmp_path_factory.mktemp("fuzz")
    models = tmp / "models"
    shutil.copytree(ROOT / "models", models)
    # A second policy version, so promote and rollback can succeed; a renamed copy of the
    # fraud bundle, which verification must refuse (409), never serve.
    policy_dir = next((models / "policy").iterdir())
    text = (policy_dir / "policy.toml").read_text()
    second = tmp / "policy.toml"
    second.write_text(text.replace(f'version = "{policy_dir.name}"', 'version = "policy-fuzz-2"'))
    registry_admin.add_policy(models, second, "test")
    registry_admin.promote(models, "policy", "policy-fuzz-2", "test")  # a rollback can succeed
    fraud_dir = next((models / "fraud").iterdir())
    shutil.copytree(fraud_dir, models / "fraud" / "fraud-renamed-copy")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_")}
    env.update(
        {
            "RISK_DECISION_LOG_PATH": str(tmp / "decisions.sqlite"),
            "RISK_HASH_KEY": "fuzz-test-" + "h" * 32,
            "RISK_API_KEYS": f"{ADMIN_KEY},{READ_KEY}:read",
            "RISK_AUTH_FAILURE_LIMIT": "0",  # never block: keyless cases must see 401
            "RISK_ACCESS_LOG": "false",
        }
    )
    log = tmp / "server.log"
    command = [sys.executable, "-m", "training.cli", "serve", "--quiet", "--port", str(port)]
    command += ["--models", str(models)]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env=env, cwd=tmp, stdout=out, stderr=out, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield Service(url, models, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# -- the schemathesis run ---------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of them are the same in TOML


def _dictionaries(models: Path) -> dict[str, list[Any]]:
    """Realistic values mixed into generated ones at the paths (and rates) of _BINDINGS."""
    now = datetime.now(UTC)

    def iso(dt: datetime) -> str:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    versions = sorted(
        p.name for kind in ("fraud", "credit", "policy") for p in (models / kind).iterdir()
    )
    return {
        "instants": [
            iso(now - timedelta(minutes=1)),
            iso(now - timedelta(minutes=10)),  # late: beyond MAX_LATENESS_SECONDS
            iso(now + timedelta(minutes=4)),  # ahead, within MAX_FUTURE_SECONDS
            iso(now + timedelta(minutes=6)),  # refused: too far ahead
            iso(now - timedelta(days=400)),
            "1970-01-01T00:00:00Z",  # the earliest instant accepted
            "1970-01-01T00:00:00.001Z",
            "1969-12-31T23:59:59.999Z",  # refused: before 1970
            "2026-01-01",  # a date alone: midnight UTC
            "2026-01-01T08:00:00+08:00",
            "2026-01-01T00:00:00",  # naive: UTC
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+01:00",  # out of range once in UTC
        ],
        "amounts": [0.01, 0.1, 1, 2, 2.01, 99.99, 100, 123456.78, 999999999.99, 1e9],
        "bad_amounts": [0.001, 1e9 + 0.01, 1e18, 2.0**63, 1e-300],
        "ids": IDS,
        "event_types": [*EVENT_TYPES, CREDIT_APPLICATION],
        "versions": [*versions, "fraud-unknown", "../fraud", "a" * 129],
    }


_BINDINGS = {
    "body.timestamp": ("instants", 0.5),
    "body.label_time": ("instants", 0.5),
    "body.account.created_at": ("instants", 0.3),
    "body.amount": ("amounts", 0.7),
    "body.requested_limit": ("amounts", 0.7),
    "body.monthly_income": ("bad_amounts", 0.1),
    "body.event_id": ("ids", 0.5),
    "body.event_type": ("event_types", 0.5),
    "path.event_id": ("ids", 0.5),
    "body.version": ("versions", 0.5),
}


def _config_text(models: Path) -> str:
    lines = [
        f"seed = {SEED}",
        'suppress-health-check = ["too_slow", "filter_too_much", "data_too_large"]',
        "request-timeout = 30",
        "[auth.openapi.bearerAuth]",
        f"bearer = {_toml_value(ADMIN_KEY)}",
        "[output.sanitization]",
        "enabled = false",  # the HAR must show the Authorization header as sent
        "[generation]",
        'mode = "all"',  # positive and negative data
        f"max-examples = {MAX_EXAMPLES}",
        "deterministic = true",  # Hypothesis' derandomize
        'database = "none"',
        "[phases.stateful]",
        "enabled = false",
        # No learning from answers: the same requests on every run (the id dictionary
        # stands in for ids taken from answers).
        "[phases.coverage.extra-data-sources]",
        "responses = false",
        "[phases.fuzzing.extra-data-sources]",
        "responses = false",
        "[phases.fuzzing.error-feedback]",
        "enabled = false",
        "[parameters]",
    ]
    for path, (name, probability) in _BINDINGS.items():
        lines.append(f'"{path}" = {{ dictionary = "{name}", probability = {probability} }}')
    for name, values in _dictionaries(models).items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml_value(values)}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FuzzRun:
    returncode: int
    output: str
    entries: list[dict[str, Any]]  # HAR entries: every request and its answer
    seconds: float


@pytest.fixture(scope="module")
def fuzz_run(service: Service, tmp_path_factory: pytest.TempPathFactory) -> FuzzRun:
    tmp = tmp_path_factory.mktemp("schemathesis")
    config = tmp / "schemathesis.toml"
    config.write_text(_config_text(service.models))
    har = tmp / "requests.har"
    command = [
        *ST,
        "--config-file",
        str(config),
        "run",
        service.url + "/openapi.json",
        "--workers",
        "1",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(_EXCLUDED_CHECKS),
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--no-color",
    ]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=tmp, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    seconds = time.monotonic() - started
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    return FuzzRun(done.returncode, done.stdout + done.stderr, entries, seconds)


# -- reading the recorded requests ------------------------------------------------------------
def _operation_of(method: str, path: str, document: dict[str, Any]) -> str | None:
    """The documented operation a request was for (None: an undeclared method or route)."""
    for template, operations in document["paths"].items():
        if method.lower() not in operations:
            continue
        if template == path:
            return f"{method} {template}"
        prefix = template.split("{", 1)[0]
        if "{" in template and path.startswith(prefix) and len(path) > len(prefix):
            return f"{method} {template}"
    return None


def _body(entry: dict[str, Any]) -> Any:
    text = entry["request"].get("postData", {}).get("text")
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _path(entry: dict[str, Any]) -> str:
    return unquote(urlsplit(entry["request"]["url"]).path)


def _describe(entry: dict[str, Any]) -> str:
    request, response = entry["request"], entry["response"]
    headers = {h["name"]: h["value"] for h in request["headers"]}
    body = request.get("postData", {}).get("text", "")
    return (
        f"{request['method']} {request['url']} {headers.get('Content-Type', '')} "
        f"auth={headers.get('Authorization', '-')!r} body={body[:400]!r} -> "
        f"{response['status']} {response['content'].get('text', '')[:400]}"
    )


_MISSING = object()


def _lookup(body: Any, path: str) -> Any:
    """The value at a dotted path in a JSON body (a key may itself hold dots); _MISSING if none."""
    if not isinstance(body, dict):
        return _MISSING
    if path in body:
        return body[path]
    head, dot, rest = path.partition(".")
    while dot:
        if head in body:
            found = _lookup(body[head], rest)
            if found is not _MISSING:
                return found
        more, dot, rest = rest.partition(".")
        head = f"{head}.{more}"
    return _MISSING


def field_rule_violation(
    method: str, path: str, body: Any, authorization: str | None, status: int, payload: Any
) -> str | None:
    """Why a 4xx answer breaks the rule of risk_service.openapi (None: it keeps it)."""
    if not isinstance(payload, dict) or set(payload) != {"error", "field", "message"}:
        return "the body is not {error, field, message}"
    error, field = payload["error"], payload["field"]
    if field is None:
        if error not in ERRORS_WITHOUT_FIELD:
            return f"{error} must name a field"
        if error == "not_found" and path.startswith("/decisions/"):
            event_id = path[len("/decisions/") :]
            if "/" not in event_id and event_id not in ("", ".", ".."):
                return "a 404 about an event must name event_id"
        return None
    if error not in ERRORS_WITH_FIELD:
        return f"{error} must not name a field"
    if error in ("unauthorized", "forbidden", "too_many_requests"):
        if field != "Authorization" or status not in (401, 403, 429):
            return "authentication errors name Authorization, with 401, 403 or 429"
        if status == 401 and authorization == f"Bearer {ADMIN_KEY}":
            return "a valid key was refused"
        if status == 403 and authorization != f"Bearer {READ_KEY}":
            return "403 for a key that has the scope"
        return None
    if error == "refused":
        return None if status == 409 and field == "version" else "a refusal names version"
    if error in ("not_found", "conflict"):
        named = path.startswith("/decisions/") or _lookup(body, "event_id") is not _MISSING
        return None if field == "event_id" and named else "it must name the event_id sent"
    value = _lookup(body, field)
    if error == "missing_field":
        return None if value is _MISSING or value is None else "named missing, but it was sent"
    return "the field named is not in the request" if value is _MISSING else None


# -- the fuzz tests ---------------------------------------------------------------------------
def test_schemathesis_finds_nothing(fuzz_run: FuzzRun) -> None:
    """Every check of every case: no 5xx, documented statuses, content types and bodies,
    negative data refused, missing or wrong keys refused."""
    summary = fuzz_run.output[fuzz_run.output.find("FAILURES") :]
    assert fuzz_run.returncode == 0, summary[-20_000:]
    assert "Test cases:" in fuzz_run.output


def test_no_answer_is_a_server_error(fuzz_run: FuzzRun, service: Service) -> None:
    errors = [_describe(e) for e in fuzz_run.entries if e["response"]["status"] >= 500]
    tail = service.log.read_text(errors="replace")[-5000:] if errors else ""
    assert not errors, "\n".join(errors[:20]) + "\n-- server log --\n" + tail


def test_every_4xx_names_the_field_at_fault(fuzz_run: FuzzRun) -> None:
    bad = []
    for entry in fuzz_run.entries:
        status = entry["response"]["status"]
        if not 400 <= status < 500:
            continue
        headers = {h["name"].lower(): h["value"] for h in entry["request"]["headers"]}
        try:
            payload = orjson.loads(entry["response"]["content"].get("text", ""))
        except orjson.JSONDecodeError:
            payload = None
        why = field_rule_violation(
            entry["request"]["method"],
            _path(entry),
            _body(entry),
            headers.get("authorization"),
            status,
            payload,
        )
        if why is not None:
            bad.append(f"{why}: {_describe(entry)}")
    assert not bad, f"{len(bad)} answers break the field rule:\n" + "\n".join(bad[:20])


def test_every_operation_got_enough_requests(fuzz_run: FuzzRun) -> None:
    """At least MAX_EXAMPLES requests for every operation that takes input (a body, a path
    parameter or an Authorization header). The open routes without parameters (/health,
    /ready, /metrics, /docs) have one possible request: schemathesis sends it a few times;
    /openapi.json is what schemathesis reads (test_the_live_document_...)."""
    document = openapi_document(1e9)
    sent: Counter[str] = Counter()
    for entry in fuzz_run.entries:
        op = _operation_of(entry["request"]["method"], _path(entry), document)
        if op is not None:
            sent[op] += 1
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            name = f"{method.upper()} {path}"
            if path == "/openapi.json":  # schemathesis reads it, never fuzzes it
                continue
            takes_input = "requestBody" in op or "parameters" in op or op["security"]
            wanted = MAX_EXAMPLES if takes_input else 1
            assert sent[name] >= wanted, (name, dict(sent), f"{fuzz_run.seconds:.0f} s")


def test_generated_requests_reach_the_core(fuzz_run: FuzzRun) -> None:
    """Positive cases get past validation: payments and credit applications are scored,
    labels stored, decisions read, the registry changed."""
    document = openapi_document(1e9)
    ok: Counter[str] = Counter()
    for entry in fuzz_run.entries:
        if entry["response"]["status"] == 200:
            op = _operation_of(entry["request"]["method"], _path(entry), document)
            body = _body(entry)
            kind = body.get("event_type") if isinstance(body, dict) else None
            ok[f"{op} {kind}" if op == "POST /score" else str(op)] += 1
    assert ok["POST /score credit_application"] >= 1, ok
    assert sum(v for k, v in ok.items() if k.startswith("POST /score ")) >= 50, ok
    for name in (
        "POST /feedback",
        "GET /decisions/{event_id}",
        "POST /admin/promote",
        "POST /admin/rollback",
        "POST /admin/challenger",
    ):
        assert ok[name] >= 1, (name, ok)


# -- the document ------------------------------------------------------------------------------
def _flask_path(rule: Rule) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # <path:event_id> -> {event_id}


def test_the_document_covers_every_route(make_app: Any) -> None:
    """Every route the app registers, with every method, is in the document, and nothing else.

    Not compared: Flask's /static (no static folder: always 404), and HEAD and OPTIONS,
    which werkzeug answers for every GET route.
    """
    app = make_app(API_KEYS=ADMIN_KEY)
    registered = {
        (_flask_path(rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in set(rule.methods or ()) - {"HEAD", "OPTIONS"}
    }
    document = openapi_document(float(app.config["MAX_AMOUNT"]))
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert registered == documented
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "200" in codes and "403" in codes, (path, method)
            if op["security"]:  # a key is needed: its refusals are documented
                assert {"401", "429"} <= codes, (path, method)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= codes, (path, method)


def test_the_live_document_is_valid_and_is_the_one_fuzzed(service: Service) -> None:
    live = requests.get(service.url + "/openapi.json", timeout=10).json()
    validate_openapi(live)
    assert live == openapi_document(1e9)
    assert live["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    open_routes = {
        p
        for p, ops in live["paths"].items()
        if not ops["get" if "get" in ops else "post"]["security"]
    }
    assert open_routes == {"/health", "/ready", "/metrics", "/openapi.json", "/docs"}


# -- a handful of cases the generator does not make on purpose --------------------------------
@pytest.fixture(scope="module")
def live_schema(service: Service) -> Any:
    return schemathesis.openapi.from_url(service.url + "/openapi.json")


def _check(live_schema: Any, method: str, template: str, response: requests.Response) -> None:
    """Documented (status and body), and the field rule."""
    live_schema[template][method].validate_response(response)
    if 400 <= response.status_code < 500:
        request = response.request
        try:
            body = orjson.loads(request.body or b"null")  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            body = None
        authorization = request.headers.get("Authorization")
        why = field_rule_violation(
            method,
            unquote(urlsplit(str(request.url)).path),
            body,
            None if authorization is None else str(authorization),
            response.status_code,
            response.json(),
        )
        assert why is None, (why, response.status_code, response.text)


def _score_body(event_id: str) -> dict[str, Any]:
    when = datetime.now(UTC) - timedelta(minutes=1)
    return {
        "event_id": event_id,
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "account_id": "acct-fuzz",
        "event_type": "payment",
        "amount": 12.5,
    }


@pytest.mark.parametrize(
    ("authorization", "status", "reason"),
    [
        (None, 401, "missing"),
        ("Bearer " + "w" * 40, 401, "unknown"),
        ("Basic dXNlcjpwYXNz", 401, "malformed"),
        ("Bearer", 401, "malformed"),
        (f"Bearer {READ_KEY}", 403, "scope"),
    ],
)
def test_requests_without_a_valid_key_are_refused(
    service: Service, live_schema: Any, authorization: str | None, status: int, reason: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, template, path, body in (
        ("POST", "/score", "/score", _score_body("auth-1")),
        ("POST", "/admin/promote", "/admin/promote", {"kind": "fraud", "version": "x"}),
        ("GET", "/admin/status", "/admin/status", None),
    ):
        response = requests.request(
            method, service.url + path, json=body, headers=headers, timeout=10
        )
        assert response.status_code == status, (reason, path, response.text)
        assert response.json()["field"] == "Authorization"
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        _check(live_schema, method, template, response)
    assert requests.get(service.url + "/health", headers=headers, timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("data", "content_type", "status", "error"),
    [
        (b"{", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "not_an_object"),
        (b'{"a":' * 20 + b"1" + b"}" * 20, "application/json", 400, "too_deep"),
        (b'{"event_id": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"event_id": "x"}', "application/json; charset=latin-1", 415, "unsupported_media_type"),
        (b"{" + b" " * (64 * 1024) + b"}", "application/json", 413, None),
        (b"\xff\xfe{}", "application/json", 400, "malformed_json"),
    ],
)
@pytest.mark.parametrize("path", ["/score", "/feedback", "/admin/rollback"])
def test_body_level_errors_name_no_field(
    service: Service,
    live_schema: Any,
    path: str,
    data: bytes,
    content_type: str,
    status: int,
    error: str | None,
) -> None:
    response = requests.post(
        service.url + path,
        data=data,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["field"] is None
    if error is not None:
        assert payload["error"] == error
    _check(live_schema, "POST", path, response)


def test_unknown_routes_and_methods_name_no_field(service: Service) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for method, path, status in (
        ("GET", "/nope", 404),
        ("GET", "/decisions", 404),
        ("DELETE", "/score", 405),
        ("PUT", "/admin/promote", 405),
        ("POST", "/health", 405),
    ):
        response = requests.request(method, service.url + path, headers=auth, timeout=10)
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["field"] is None
        assert response.json()["error"] in ERRORS_WITHOUT_FIELD


def test_unknown_method_without_a_key_is_401(service: Service) -> None:
    """web.py asks a key for any route or method outside OPEN_ENDPOINTS, before routing
    errors: a keyless client learns nothing of the routes (so no 405 on /health for it)."""
    response = requests.request("TRACE", service.url + "/health", timeout=10)
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"


def test_405_lists_the_allowed_methods(service: Service) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = requests.delete(service.url + "/score", headers=auth, timeout=10)
    assert response.status_code == 405
    allowed = response.headers.get("Allow", "").replace(" ", "").split(",")
    assert sorted(allowed) == ["OPTIONS", "POST"]


def test_429_is_documented_and_names_authorization(make_app: Any) -> None:
    """The failure limiter (off in the fuzzed service) in process: after the limit, keyless
    requests get 429 with Retry-After; a valid key still gets through."""
    app = make_app(API_KEYS=ADMIN_KEY, AUTH_FAILURE_LIMIT=3)
    client = app.test_client()
    document = openapi_document(float(app.config["MAX_AMOUNT"]))
    schema = schemathesis.openapi.from_dict(document)
    statuses = [
        client.get("/models", headers={"Authorization": "Bearer " + "w" * 40}).status_code
        for _ in range(5)
    ]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
    blocked = client.get("/models")
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert blocked.get_json()["field"] == "Authorization"
    schema["/models"]["GET"].validate_response(blocked)
    allowed = client.get("/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status_code == 200
    schema["/models"]["GET"].validate_response(allowed)


def test_admin_changes_are_audited_under_the_key_id(service: Service) -> None:
    response = requests.post(
        service.url + "/admin/challenger",
        json={"kind": "credit", "version": None},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["actor"] == "api-key:env-1"
