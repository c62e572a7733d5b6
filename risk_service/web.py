"""The edge of every request: request id, API key and scope, access log, metrics, /metrics.

`init_app(app)` loads the keys (hashed), configures the logs, and registers one before- and
one after-request hook and the ``/metrics`` route. Everything the hooks need is prepared at
init. Measured on a busy 2-core box: the two hooks take about 10 µs per request (12.5 µs with
10 keys to compare), the request id to the access line; through the Flask test client a
request costs about 25 µs more than without them. The after hook runs first among the app's
after-request functions registered before `init_app`, and forgets the request id: lines
logged after it (teardown functions) carry none.

Refusals answer the usual JSON error body ``{"error", "field": "Authorization", "message"}``:
401 (no key, or not a known key) with ``WWW-Authenticate: Bearer``, 403 (the key lacks the
route's scope, or no keys are configured and the client is not on this machine), 429 with
``Retry-After`` (the client address failed too often, `auth.FailureLimiter`: its requests
without a valid key are refused for a while, not counted or logged one by one; with
``AUTH_BLOCK_VALID_KEYS`` its valid keys too). ``TRUSTED_PROXIES`` > 0 takes the client
address from X-Forwarded-For (werkzeug's ProxyFix).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import random
import re
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

import orjson
from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from risk_service import auth, logs, metrics

log = logging.getLogger("risk_service.auth")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}").fullmatch
_UNMATCHED = "unmatched"
_CONVERTER = re.compile(r"<\w+:")


@functools.lru_cache(maxsize=256)
def route_name(rule: str) -> str:
    """A route as metrics and logs name it: its rule without converters
    (``/decisions/<event_id>`` for ``/decisions/<path:event_id>``), stable if one changes."""
    return _CONVERTER.sub("<", rule)


_REALM = 'Bearer realm="risk-service"'
_UNAUTHORIZED = {
    "missing": "an API key is required: Authorization: Bearer <key>",
    "malformed": "the Authorization header must be: Bearer <key>",
    "unknown": "the API key is not valid",
}


class _Request:
    """What the hooks keep about the request being served (one per request)."""

    __slots__ = ("key_id", "request_id", "started", "token")

    def __init__(self, started: float, request_id: str, token: Token[str | None]) -> None:
        self.started = started
        self.request_id = request_id
        self.token = token
        self.key_id: str | None = None


_CURRENT: ContextVar[_Request | None] = ContextVar("risk_edge_request", default=None)


def current_key_id() -> str | None:
    """The id of the API key that authenticated the request being served (None: no key)."""
    current = _CURRENT.get()
    return None if current is None else current.key_id


@dataclass
class EdgeState:
    """What the hooks read per request, prepared at init (`app.extensions["risk_web"]`)."""

    keys: auth.KeyRing
    open_endpoints: frozenset[str]
    limiter: auth.FailureLimiter
    block_valid_keys: bool
    client_key: bytes
    requirements: dict[str | None, str | None] = field(default_factory=dict)

    def requirement(self, rule: str | None) -> str | None:
        """What `rule` needs (memoised: rules are few and fixed)."""
        try:
            return self.requirements[rule]
        except KeyError:
            need = auth.requirement(rule, self.open_endpoints)
            self.requirements[rule] = need
            return need

    def client(self, address: str) -> str:
        """A client address as logs may show it: a keyed hash (12 hex digits)."""
        return hmac.new(self.client_key, address.encode(), hashlib.sha256).hexdigest()[:12]


def init_app(app: Flask) -> None:
    """Keys, logs, the request hooks and /metrics on `app`; a second call does nothing."""
    if "risk_web" in app.extensions:
        return
    config = app.config
    logs.configure(app)
    state = EdgeState(
        keys=auth.load_keys(config),
        open_endpoints=auth.parse_open_endpoints(config.get("OPEN_ENDPOINTS")),
        limiter=auth.FailureLimiter(
            int(config.get("AUTH_FAILURE_LIMIT", 20)),
            float(config.get("AUTH_FAILURE_WINDOW_SECONDS", 60)),
            float(config.get("AUTH_BLOCK_SECONDS", 60)),
            int(config.get("AUTH_TRACKED_CLIENTS", 10_000)),
        ),
        block_valid_keys=bool(config.get("AUTH_BLOCK_VALID_KEYS", False)),
        client_key=os.urandom(32),
    )
    proxies = int(config.get("TRUSTED_PROXIES", 0))
    if proxies > 0:  # the client address from the last `proxies` X-Forwarded-For entries
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=0)  # type: ignore[method-assign]
    app.extensions["risk_web"] = state
    if config.get("API_KEYS"):  # held hashed from here on; the clear text leaves the config
        config["API_KEYS"] = None
    if len(state.keys) == 0:
        log.warning(
            "no API keys configured (RISK_API_KEYS, RISK_API_KEYS_FILE): every endpoint is "
            "open, to clients on this machine only; other addresses get 403"
        )
    scorer = app.extensions.get("risk")
    if scorer is not None and hasattr(scorer, "models") and hasattr(scorer, "policy"):
        metrics.set_versions(scorer.models.versions(), scorer.policy.version)

    def before() -> Response | None:  # a plain function: Flask inspects each hook per request
        return _before(state)

    app.before_request_funcs.setdefault(None, []).insert(0, before)
    app.after_request_funcs.setdefault(None, []).append(_after)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def metrics_view() -> Response:
    """GET /metrics: Prometheus exposition text."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


# -- hooks -----------------------------------------------------------------------------------
def _new_request_id() -> str:
    return f"{random.getrandbits(64):016x}"


def _before(state: EdgeState) -> Response | None:
    started = time.perf_counter()
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    incoming = environ.get("HTTP_X_REQUEST_ID")
    # not a secret, only unique: `random` (reseeded in every forked child), not os.urandom,
    # a system call a request
    request_id = incoming if incoming and _SAFE_REQUEST_ID(incoming) else _new_request_id()
    current = _Request(started, request_id, logs.REQUEST_ID.set(request_id))
    _CURRENT.set(current)
    rule = req.url_rule
    need = state.requirement(None if rule is None else rule.rule)
    address = environ.get("REMOTE_ADDR") or ""
    if not state.keys.keys:
        if auth.is_loopback_client(address):
            return None
        log.warning("refused a client on another machine: no API keys are configured")
        return _refuse(
            403,
            "forbidden",
            "not_loopback",
            "no API keys are configured: this service answers clients on its own machine only",
        )
    if need is None:
        return None
    header = environ.get("HTTP_AUTHORIZATION")
    token = auth.bearer_token(header)
    key = None if token is None else state.keys.authenticate(token)
    wait = state.limiter.blocked_for(address)
    if wait and (key is None or state.block_valid_keys):
        return _refuse(
            429,
            "too_many_requests",
            "blocked",
            "too many failed authentication attempts from this address; retry later",
            {"Retry-After": str(int(wait) + 1)},
        )
    if key is None:
        reason = "missing" if not header else "malformed" if token is None else "unknown"
        _failed(state, address, reason, token)
        return _refuse(
            401,
            "unauthorized",
            reason,
            _UNAUTHORIZED[reason],
            {"WWW-Authenticate": _REALM + (', error="invalid_token"' if token else "")},
        )
    current.key_id = key.id
    if need != auth.ANY_KEY and need not in key.scopes:
        log.warning(
            "API key lacks the scope",
            extra={"reason": "scope", "key_id": key.id, "scope": need, "path": _path()},
        )
        return _refuse(
            403,
            "forbidden",
            "scope",
            f"the API key lacks the {need!r} scope",
            {"WWW-Authenticate": _REALM + f', error="insufficient_scope", scope="{need}"'},
        )
    return None


def _after(response: Response) -> Response:
    """Time, count and log the request, then forget it (lines logged after this, in teardown
    functions, have no request id)."""
    current = _CURRENT.get()
    if current is None:  # the request failed before our first hook
        return response
    try:
        seconds = time.perf_counter() - current.started
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        path = _UNMATCHED if rule is None else route_name(rule.rule)
        status = response.status_code
        response.headers[REQUEST_ID_HEADER] = current.request_id
        metrics.observe_request(path, req.method, status, seconds)
        logs.access(
            {
                "method": req.method,
                "path": path,
                "status": status,
                "latency_ms": int(seconds * 1e6) / 1000,
                "key_id": current.key_id,
            }
        )
    finally:
        _CURRENT.set(None)
        logs.REQUEST_ID.reset(current.token)
    return response


# -- helpers ---------------------------------------------------------------------------------
def _path() -> str:
    rule = request.url_rule
    return _UNMATCHED if rule is None else route_name(rule.rule)


def _failed(state: EdgeState, address: str, reason: str, token: str | None) -> None:
    """Log one failed attempt (a fingerprint of the key, never the key) and count it."""
    log.warning(
        "authentication failed",
        extra={
            "reason": reason,
            "key_fingerprint": None if token is None else auth.fingerprint(token),
            "path": _path(),
        },
    )
    if state.limiter.failure(address):
        log.warning(
            "client blocked after repeated authentication failures",
            extra={
                "client": state.client(address),
                "failures": state.limiter.limit,
                "window_s": state.limiter.window,
                "blocked_s": state.limiter.block,
            },
        )


def _refuse(
    status: int, error: str, reason: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    metrics.auth_failure(reason)
    body = orjson.dumps({"error": error, "field": "Authorization", "message": message})
    return Response(body, status=status, mimetype="application/json", headers=headers)
