"""API keys and scopes through the Flask test client; `risk keys create`; `risk serve` refusals."""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from flask import Flask, jsonify
from flask.testing import FlaskClient

from risk_service import auth, web
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)
KEYS = {scope: auth.new_key() for scope in auth.SCOPES}  # one key per scope
ALL = auth.new_key()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_at(app: Flask, address: str) -> FlaskClient:
    """A test client whose requests come from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def payment(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "timestamp": (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "account_id": "acct-auth",
        "event_type": "payment",
        "amount": 10.0,
    }


def _add_stand_ins(app: Flask) -> None:
    """Stand-ins for routes another change adds (/feedback, /decisions/<id>, /admin/...)."""
    rules = {r.rule for r in app.url_map.iter_rules()}

    def ok(**_: Any) -> Any:
        return jsonify({"ok": True})

    if "/feedback" not in rules:
        app.add_url_rule("/feedback", "stand_in_feedback", ok, methods=["POST"])
    if not any(r.startswith("/decisions/") for r in rules):
        app.add_url_rule("/decisions/<event_id>", "stand_in_decision", ok, methods=["GET"])
    app.add_url_rule("/admin/stand-in", "stand_in_admin", ok, methods=["GET", "POST"])


@pytest.fixture
def edge(make_app: AppFactory) -> Callable[..., Flask]:
    """An app with the edge hooks (web.init_app is a no-op once create_app calls it)."""

    def build(**config: Any) -> Flask:
        app = make_app(**config)
        _add_stand_ins(app)
        web.init_app(app)
        return app

    return build


def keyed_app(edge: Callable[..., Flask], **config: Any) -> Flask:
    keys = [f"{key}:{scope}" for scope, key in KEYS.items()] + [ALL]
    return edge(API_KEYS=",".join(keys), **config)


# -- no key configured -------------------------------------------------------------------------
def test_without_keys_loopback_clients_are_served_and_others_get_403(
    edge: Callable[..., Flask],
) -> None:
    app = edge()
    local = app.test_client()
    assert local.post("/score", json=payment("nk-1")).status_code == 200
    assert local.get("/admin/stand-in").status_code == 200
    for address in ("10.0.0.8", "192.0.2.1", "2001:db8::1"):
        remote = client_at(app, address)
        for response in (remote.post("/score", json=payment("nk-2")), remote.get("/health")):
            assert response.status_code == 403
            assert response.get_json()["field"] == "Authorization"
    ipv6_local = client_at(app, "::1")
    assert ipv6_local.get("/health").status_code == 200


def test_without_keys_one_warning_at_start(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app()
    web.init_app(app)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "no API keys" in warnings[0].getMessage()


# -- 401 / 403 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed"),
        ({"Authorization": "Bearer"}, "malformed"),
        ({"Authorization": "Bearer " + "x" * 600}, "malformed"),
        (bearer(auth.new_key()), "unknown"),
        (bearer(ALL[:-1]), "unknown"),
    ],
)
def test_missing_malformed_and_unknown_keys_get_401(
    edge: Callable[..., Flask], headers: dict[str, str], reason: str
) -> None:
    client = keyed_app(edge).test_client()
    response = client.post("/score", json=payment("u-1"), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert set(body) == {"error", "field", "message"}
    assert body["error"] == "unauthorized" and body["field"] == "Authorization"
    if reason == "unknown":
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


ENDPOINTS = [
    ("POST", "/score", "score"),
    ("POST", "/feedback", "feedback"),
    ("GET", "/decisions/evt-1", "read"),
    ("GET", "/models", "read"),
    ("GET", "/admin/stand-in", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
def test_each_endpoint_needs_its_scope(
    edge: Callable[..., Flask], method: str, path: str, scope: str
) -> None:
    client = keyed_app(edge).test_client()
    body = payment("s-1") if path == "/score" else {"event_id": "s-1"}

    def call(headers: dict[str, str]) -> Any:
        return client.open(path, method=method, json=body, headers=headers)

    assert call({}).status_code == 401
    for other, key in KEYS.items():
        response = call(bearer(key))
        if other == scope:
            assert response.status_code not in (401, 403, 429), (other, response.get_json())
        else:
            assert response.status_code == 403, other
            assert response.get_json()["field"] == "Authorization"
            assert f'scope="{scope}"' in response.headers["WWW-Authenticate"]
    assert call(bearer(ALL)).status_code not in (401, 403, 429)
    if path == "/score":
        assert call(bearer(KEYS["score"])).status_code == 200


def test_every_route_needs_a_key_except_the_open_ones(edge: Callable[..., Flask]) -> None:
    app = keyed_app(edge)
    client = app.test_client()
    open_rules = set(auth.OPEN_ENDPOINTS.values())
    for rule in app.url_map.iter_rules():
        need = auth.requirement(rule.rule, auth.OPEN_ENDPOINTS)
        if rule.rule in open_rules:
            assert need is None
        else:
            assert need is not None, rule.rule
        if rule.rule.startswith("/admin/"):
            assert need == auth.ADMIN, rule.rule
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
    # unknown routes do not reveal themselves to anonymous callers
    assert client.get("/nope").status_code == 401
    assert client.get("/nope", headers=bearer(KEYS["read"])).status_code == 404


def test_open_endpoints_can_be_closed(edge: Callable[..., Flask]) -> None:
    client = keyed_app(edge, OPEN_ENDPOINTS="health").test_client()
    assert client.get("/health").status_code == 200
    for path in ("/metrics", "/ready", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=bearer(KEYS["feedback"])).status_code == 200, path


def test_unknown_open_endpoint_name_is_refused(edge: Callable[..., Flask]) -> None:
    with pytest.raises(auth.KeyConfigError, match="helth"):
        keyed_app(edge, OPEN_ENDPOINTS=["helth"])


# -- where keys come from ----------------------------------------------------------------------
def _created(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert main(["keys", "create", *argv, "--quiet"]) == 0
    key, *entry = capsys.readouterr().out.strip().splitlines()
    return key, "\n".join(entry)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_keys_file_holds_hashes_made_by_risk_keys_create(
    edge: Callable[..., Flask], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    made = {
        name: _created(capsys, "--id", name, "--scopes", scopes, "--format", fmt)
        for name, scopes in (("checkout", "score,read"), ("ops", "admin"))
    }
    (scorer_key, scorer_entry), (admin_key, admin_entry) = made["checkout"], made["ops"]
    assert scorer_key.startswith("rsk_") and len(scorer_key) == 4 + 43
    assert scorer_key not in scorer_entry and admin_key not in admin_entry
    path = tmp_path / f"keys.{fmt}"
    if fmt == "toml":
        path.write_text(scorer_entry + "\n\n" + admin_entry + "\n")
    else:
        path.write_text(json.dumps({"keys": [json.loads(scorer_entry), json.loads(admin_entry)]}))
    client = edge(API_KEYS_FILE=str(path)).test_client()
    assert client.post("/score", json=payment("f-1"), headers=bearer(scorer_key)).status_code == 200
    assert client.get("/models", headers=bearer(scorer_key)).status_code == 200
    assert client.get("/admin/stand-in", headers=bearer(scorer_key)).status_code == 403
    assert client.get("/admin/stand-in", headers=bearer(admin_key)).status_code == 200
    assert client.post("/score", json=payment("f-2"), headers=bearer(admin_key)).status_code == 403


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_a_keys_file_without_extension_is_read_as_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    key, entry = _created(capsys, "--id", "mounted", "--scopes", "score", "--format", fmt)
    path = tmp_path / "risk_api_keys"  # as Docker mounts a secret
    path.write_text(entry if fmt == "toml" else json.dumps({"keys": [json.loads(entry)]}))
    ring = auth.load_keys({"API_KEYS_FILE": str(path)})
    found = ring.authenticate(key)
    assert found is not None and found.id == "mounted"
    path.write_text("id = ")
    with pytest.raises(auth.KeyConfigError, match=r"not valid TOML.* nor JSON"):
        auth.load_keys({"API_KEYS_FILE": str(path)})


def test_keys_are_held_hashed_and_the_clear_text_is_dropped(edge: Callable[..., Flask]) -> None:
    app = keyed_app(edge)
    ring: auth.KeyRing = app.extensions["risk_web"].keys
    assert len(ring) == 5
    for entry in ring.keys:
        assert set(vars(entry)) == {"id", "digest", "scopes"} and len(entry.digest) == 32
    assert ALL not in str(dict(app.config))
    assert ring.authenticate(ALL) is not None and ring.authenticate(ALL).scopes == set(auth.SCOPES)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("short-key", "32-512 characters"),
        ("k" * 40 + ":score+bogus", "bogus"),
        ("k" * 40 + ":", "none given"),
        ("k" * 40 + ",k" + "k" * 39, "configured twice"),
        ("k" * 39 + "!", "32-512 characters"),
    ],
)
def test_bad_env_keys_are_refused_at_start(
    edge: Callable[..., Flask], value: str, match: str
) -> None:
    with pytest.raises(auth.KeyConfigError, match=match):
        edge(API_KEYS=value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[keys]]\nid = "a"\nsha256 = "zz"\nscopes = ["score"]\n', "64 hex digits"),
        ('[[keys]]\nid = "a b"\nsha256 = "' + "0" * 64 + '"\nscopes = ["score"]\n', "id must"),
        ('[[keys]]\nid = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = ["root"]\n', "root"),
        ('[[keys]]\nid = "a"\nkey = "x"\nsha256 = "' + "0" * 64 + '"\nscopes = []\n', "key"),
        ("keys = 3\n", "list of keys"),
        ("[[keys]\n", "not valid"),
    ],
)
def test_bad_keys_files_are_refused_naming_the_entry(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(auth.KeyConfigError, match=match):
        auth.load_keys({"API_KEYS_FILE": str(path)})
    with pytest.raises(auth.KeyConfigError, match="No such file"):
        auth.load_keys({"API_KEYS_FILE": str(tmp_path / "missing.toml")})


def test_every_entry_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [auth.new_key() for _ in range(6)]
    ring = auth.KeyRing(
        [auth.ApiKey(f"k{i}", auth.key_digest(k), frozenset({"score"})) for i, k in enumerate(keys)]
    )
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented, expected in ((keys[0], "k0"), (keys[5], "k5"), (auth.new_key(), None)):
        calls.clear()
        found = ring.authenticate(presented)
        assert (found.id if found else None) == expected
        assert len(calls) == len(keys)  # no early exit on a match
        assert all(a == auth.key_digest(presented) for a, _ in calls)  # digests, not keys


# -- failed attempts ---------------------------------------------------------------------------
def test_failed_attempts_are_rate_limited_per_address(
    edge: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = keyed_app(edge, AUTH_FAILURE_LIMIT=3, AUTH_BLOCK_SECONDS=30)
    attacker = client_at(app, "198.51.100.9")
    neighbour = client_at(app, "198.51.100.10")
    guesses = [auth.new_key() for _ in range(3)]
    for guess in guesses:
        assert attacker.post("/score", json=payment("r"), headers=bearer(guess)).status_code == 401
    caplog.clear()
    for headers in (bearer(auth.new_key()), {}, {"Authorization": "Basic x"}):
        blocked = attacker.post("/score", json=payment("r-1"), headers=headers)
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["Retry-After"]) <= 31
        assert blocked.get_json()["field"] == "Authorization"
    # refused quietly: no failure lines, only the access lines
    assert [r.name for r in caplog.records] == ["risk_service.access"] * 3
    # a valid key from the same address is still served: behind a NAT, a load balancer or
    # Docker's port proxy that address is every client's
    served = attacker.post("/score", json=payment("r-2"), headers=bearer(KEYS["score"]))
    assert served.status_code == 200
    assert attacker.get("/health").status_code == 200  # open endpoints stay open
    ok = neighbour.post("/score", json=payment("r-3"), headers=bearer(KEYS["score"]))
    assert ok.status_code == 200
    later = auth.time.monotonic() + 31
    monkeypatch.setattr(auth.time, "monotonic", lambda: later)
    again = attacker.post("/score", json=payment("r-4"), headers=bearer(auth.new_key()))
    assert again.status_code == 401


def test_failures_are_logged_with_a_fingerprint_never_the_key_or_address(
    edge: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    attacker = client_at(keyed_app(edge, AUTH_FAILURE_LIMIT=3), "198.51.100.9")
    guesses = [auth.new_key() for _ in range(3)]
    for guess in guesses:
        attacker.post("/score", json=payment("l"), headers=bearer(guess))
    failures = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert [getattr(r, "key_fingerprint", None) for r in failures] == [
        auth.fingerprint(g) for g in guesses
    ]
    assert auth.fingerprint(guesses[0]) == auth.key_digest(guesses[0]).hex()[:12]
    blocked = [r for r in caplog.records if "client blocked" in r.getMessage()]
    assert len(blocked) == 1 and len(getattr(blocked[0], "client", "")) == 12
    assert not any(
        g in r.getMessage() or g in str(vars(r)) or "198.51.100" in str(vars(r))
        for r in caplog.records
        for g in guesses
    )


def test_a_blocked_address_can_lose_its_valid_keys_too(edge: Callable[..., Flask]) -> None:
    app = keyed_app(edge, AUTH_FAILURE_LIMIT=2, AUTH_BLOCK_VALID_KEYS=True)
    attacker = client_at(app, "198.51.100.9")
    for _ in range(2):
        attacker.post("/score", json=payment("v"), headers=bearer(auth.new_key()))
    blocked = attacker.post("/score", json=payment("v-1"), headers=bearer(KEYS["score"]))
    assert blocked.status_code == 429


def test_trusted_proxies_name_the_client_address(edge: Callable[..., Flask]) -> None:
    app = keyed_app(edge, AUTH_FAILURE_LIMIT=2, TRUSTED_PROXIES=1)
    proxy = client_at(app, "10.0.0.2")

    def via(client_address: str, key: str) -> int:
        headers = {**bearer(key), "X-Forwarded-For": f"127.0.0.1, {client_address}"}
        return int(proxy.post("/score", json=payment("p"), headers=headers).status_code)

    assert [via("203.0.113.1", auth.new_key()) for _ in range(3)] == [401, 401, 429]
    assert via("203.0.113.2", auth.new_key()) == 401  # another client behind the same proxy
    # with no keys, the forwarded address is what must be on this machine (spoofing the
    # first X-Forwarded-For entry does not help)
    open_app = edge(TRUSTED_PROXIES=1)
    local_proxy = open_app.test_client()
    forwarded = {"X-Forwarded-For": "127.0.0.1, 203.0.113.1"}
    assert local_proxy.get("/health", headers=forwarded).status_code == 403
    assert local_proxy.get("/health", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_the_failure_limiter_is_bounded_and_forgets_old_failures() -> None:
    limiter = auth.FailureLimiter(limit=2, window=60, block=10, max_clients=100)
    for i in range(1000):
        limiter.failure(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(limiter) == 100
    assert not limiter.failure("a", now=0.0)
    assert not limiter.failure("a", now=61.0)  # the first failure left the window
    assert limiter.failure("a", now=62.0)  # two within the window: blocked now
    assert limiter.blocked_for("a", now=63.0) == pytest.approx(9.0)
    assert limiter.blocked_for("a", now=72.5) == 0.0
    assert not limiter.failure("a", now=73.0)  # a fresh window after the block
    assert auth.FailureLimiter(limit=0, window=60, block=10).failure("b") is False


# -- loopback and `risk serve` -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("::ffff:127.0.0.1", True),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert auth.is_loopback_host(host) is loopback
    if host[0].isdigit() or host.startswith(":"):
        assert auth.is_loopback_client(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_risk_serve_refuses_a_public_address_without_keys(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RISK_API_KEYS", raising=False)
    monkeypatch.delenv("RISK_API_KEYS_FILE", raising=False)
    monkeypatch.setattr(os, "execvpe", _no_exec)
    assert main(["serve", "--host", host, "--models", str(ROOT / "models")]) == 2
    err = capsys.readouterr().err
    assert f"--host {host}" in err and "no API keys" in err and len(err.strip().splitlines()) == 1


def _no_exec(*_: Any) -> None:
    raise AssertionError("gunicorn must not start")


def test_risk_serve_with_keys_listens_anywhere_and_runs_the_metrics_hooks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execvpe", lambda _f, argv, env: started.append((argv, env)))
    monkeypatch.setenv("RISK_API_KEYS", ALL)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--models", str(ROOT / "models"), "--quiet"]) == 0
    argv, env = started[0]
    assert argv[argv.index("--config") + 1] == "python:risk_service.gunicorn_conf"
    assert "0.0.0.0:8000" in argv
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir() and env["RISK_METRICS_DIR_OWNED"] == "1"
    shutil.rmtree(metrics_dir)
    # a directory the operator chose is used as is, and a broken key is a usage error
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert main(["serve", "--models", str(ROOT / "models"), "--quiet"]) == 0
    assert started[1][1]["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert "RISK_METRICS_DIR_OWNED" not in started[1][1]
    monkeypatch.setenv("RISK_API_KEYS", "too-short")
    assert main(["serve", "--host", "0.0.0.0", "--models", str(ROOT / "models")]) == 2
    assert "RISK_API_KEYS item 1" in capsys.readouterr().err


def test_risk_keys_create_refuses_unknown_scopes_and_bad_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "create", "--id", "x", "--scopes", "score,root"]) == 2
    assert "root" in capsys.readouterr().err
    assert main(["keys", "create", "--id", "a b", "--scopes", "score"]) == 2
    assert "--id" in capsys.readouterr().err
