"""URL matching (`risk_service.routing`): werkzeug's answers, without a garbage cycle a request."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from conftest import AppFactory, RedisTarget
from flask import Flask
from test_api import payment
from werkzeug.routing.matcher import StateMachineMatcher
from werkzeug.test import create_environ

from risk_service import routing
from risk_service.routing import StaticRouteMatcher

Request = tuple[dict[str, Any], int]  # a WSGI environ and the status expected


def request(method: str, path: str, body: bytes = b"", status: int = 200) -> Request:
    """A WSGI environ built now (werkzeug's builder makes cycles of its own), for `call`."""
    environ = create_environ(
        path,
        method=method,
        data=body,
        content_type="application/json",
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    return environ, status


def call(app: Flask, requests: list[Request]) -> None:
    """Each request straight into the WSGI app (the test client makes cycles of its own)."""
    for environ, expected in requests:
        status: list[str] = []
        out = app.wsgi_app(environ, lambda s, h, exc=None, seen=status: seen.append(s))
        b"".join(out)
        getattr(out, "close", lambda: None)()
        assert int(status[0][:3]) == expected, (environ["PATH_INFO"], status)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collection (and gc.garbage emptied after)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def assert_no_cycles_made(app: Flask) -> None:
    """Scoring (new events, retries, explained approvals), the empty route and /health, with
    the collector off: no object ends in a reference cycle (which `tune_gc`, collecting young
    objects only, could leave unfreed)."""
    bodies = [
        orjson.dumps(payment(f"gc-{i}", amount=10.0 + i, explain=i % 5 == 0)) for i in range(80)
    ]

    def requests(some: list[bytes]) -> list[Request]:
        return [
            r
            for body in some
            for r in (
                request("POST", "/score", body),
                request("POST", "/score", body),  # a retry
                request("POST", "/_empty", body),
                request("GET", "/health"),
            )
        ]

    warm, measured = requests(bodies[:20]), requests(bodies[20:])
    call(app, warm)  # the first matches (werkzeug's), lazy imports, numba's compilations
    gc.collect()
    call(app, measured)
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collection finds stays in gc.garbage
    found = gc.collect()
    kinds = sorted({type(o).__qualname__ for o in gc.garbage})
    # werkzeug's own matcher left 8 objects a request here (its recursive closure)
    assert found == 0, f"{found} objects in reference cycles: {kinds}"


def test_scoring_requests_leave_no_garbage_cycle(make_app: AppFactory, collector_off: None) -> None:
    assert_no_cycles_made(make_app(BENCH_EMPTY_ENDPOINT=True))


@pytest.mark.integration
def test_scoring_on_redis_and_postgresql_leaves_no_garbage_cycle(
    make_app: AppFactory, redis_target: RedisTarget, pg_url: str, collector_off: None
) -> None:
    app = make_app(
        STATE_URL=redis_target.url,
        STATE_PREFIX=redis_target.prefix,
        STATE_TIMEOUT_MS=2000.0,
        DECISION_LOG_URL=pg_url,
        BENCH_EMPTY_ENDPOINT=True,
    )
    assert_no_cycles_made(app)


def test_dynamic_routes_still_match_through_werkzeug(make_app: AppFactory) -> None:
    client = make_app().test_client()
    assert client.post("/score", json=payment("routed-1")).status_code == 200
    found = client.get("/decisions/routed-1")
    assert found.status_code == 200
    assert found.get_json()["event_id"] == "routed-1"
    missing = client.get("/decisions/nobody")
    assert missing.status_code == 404
    assert missing.get_json()["field"] == "event_id"


def _answer(matcher: StateMachineMatcher, path: str, method: str) -> Any:
    """What a matcher says: the rule and values, or the exception with its details."""
    try:
        rule, values = matcher.match("", path, method, False)
    except Exception as exc:  # NoMatch, RequestPath, ...
        return (type(exc).__name__, sorted(getattr(exc, "have_match_for", ()) or ()),
                getattr(exc, "path_info", None))  # fmt: skip
    return rule.endpoint, rule.rule, dict(values)


def with_rules(matcher: StateMachineMatcher, app: Flask) -> StateMachineMatcher:
    """``matcher`` holding the app's rules, as `routing.install` fills its own."""
    for rule in app.url_map.iter_rules():
        matcher.add(rule)
    matcher.update()
    return matcher


def test_answers_equal_werkzeugs_on_every_route(app: Flask) -> None:
    rules = list(app.url_map.iter_rules())
    ours = app.url_map._matcher
    assert isinstance(ours, StaticRouteMatcher)
    theirs = with_rules(StateMachineMatcher(ours.merge_slashes), app)
    paths = {"/", "/nowhere", "/score/", "//score", "/decisions/", "/decisions/x/y"}
    for rule in rules:
        path = rule.rule.replace("<event_id>", "e-1").replace("<", "").replace(">", "")
        paths |= {path, path + "/", path.rstrip("/") + "x"}
    methods = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS")
    compared = 0
    for _ in range(2):  # the second time from the remembered answers
        for path in sorted(paths):
            for method in methods:
                assert _answer(ours, path, method) == _answer(theirs, path, method), (path, method)
                compared += 1
    assert compared > 200
    remembered = ours._remembered
    assert ("", "/score", "POST", False) in remembered
    assert all(not rule.arguments for rule in remembered.values())


def test_a_rule_added_after_the_matcher_is_matched(app: Flask) -> None:
    app.add_url_rule("/late-route", "late", lambda: {"late": True})
    client = app.test_client()
    assert client.get("/late-route").get_json() == {"late": True}
    assert client.get("/late-route").get_json() == {"late": True}  # remembered
    assert client.get("/late-route/x").status_code == 404


def test_remembers_no_more_than_its_limit(app: Flask) -> None:
    matcher = with_rules(StaticRouteMatcher(merge_slashes=True, limit=2), app)
    assert isinstance(matcher, StaticRouteMatcher)
    for path in ("/health", "/ready", "/metrics", "/models"):
        rule, values = matcher.match("", path, "GET", False)
        assert rule.rule == path
        assert values == {}
    assert len(matcher._remembered) == 2


def test_an_unknown_matcher_is_left_in_place_with_a_warning(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    class OtherMatcher(StateMachineMatcher):  # what another werkzeug might put there
        pass

    other = OtherMatcher(merge_slashes=True)
    app.url_map._matcher = other
    assert routing.install(app) is False
    assert app.url_map._matcher is other
    assert "stays werkzeug's (OtherMatcher" in caplog.text
