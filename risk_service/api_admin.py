"""Admin routes (scope ``admin``): promote, roll back, name a challenger, reload, status.

The same functions as ``risk models`` / ``risk policies`` (registry_admin.py), so the CLI
and HTTP take one code path and both write the audit trail, with the API key's id
as the actor. After a change this process swaps at once; the other workers and
replicas follow within RELOAD_INTERVAL_SECONDS (their own watchers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from risk_service import lifecycle, registry_admin, web
from risk_service.api import read_json_body
from risk_service.bundles import KINDS, BundleError
from risk_service.errors import ApiError, InvalidField, MissingField, NotAnObject

bp = Blueprint("admin", __name__, url_prefix="/admin")


class Refused(ApiError):
    """The registry refused the change (verification failed, no such version, nothing to undo)."""

    status = 409
    error = "refused"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


def _watcher() -> lifecycle.ChampionWatcher | None:
    watcher: lifecycle.ChampionWatcher | None = current_app.extensions.get("risk_watcher")
    return watcher


def _models_dir() -> Path:
    return Path(current_app.config["MODELS_DIR"])


def _actor() -> str:
    key_id = web.current_key_id()
    return f"api-key:{key_id}" if key_id else f"loopback:{request.remote_addr}"


def _body(*required: str) -> dict[str, Any]:
    body = read_json_body()
    if not isinstance(body, dict):
        raise NotAnObject("the body must be a JSON object")
    for name in required:
        if name not in body:
            raise MissingField(f"{name} is required", field=name)
    kind = body.get("kind")
    if kind not in KINDS:
        raise InvalidField(f"kind must be one of {', '.join(KINDS)}", field="kind")
    version = body.get("version")
    if version is not None and (type(version) is not str or not 0 < len(version) <= 128):
        raise InvalidField("version must be a version name such as fraud-...", field="version")
    return body


def _after_change(result: dict[str, Any]) -> Response:
    watcher = _watcher()
    swapped = watcher.check_now() if watcher is not None else False
    return _json({**result, "swapped_here": swapped})


def _refusing(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = fn(*args)
    except BundleError as exc:
        raise Refused(str(exc), field="version") from None
    return result


@bp.get("/status")
def status() -> Response:
    return _json(registry_admin.status(_models_dir(), _watcher()))


@bp.post("/promote")
def promote() -> Response:
    body = _body("kind", "version")
    if body["version"] is None:
        raise MissingField("version is required", field="version")
    return _after_change(
        _refusing(registry_admin.promote, _models_dir(), body["kind"], body["version"], _actor())
    )


@bp.post("/rollback")
def rollback() -> Response:
    body = _body("kind")
    return _after_change(_refusing(registry_admin.rollback, _models_dir(), body["kind"], _actor()))


@bp.post("/challenger")
def challenger() -> Response:
    """``{"kind", "version"}`` names the challenger; ``"version": null`` clears it."""
    body = _body("kind", "version")
    return _after_change(
        _refusing(
            registry_admin.set_challenger, _models_dir(), body["kind"], body["version"], _actor()
        )
    )


@bp.post("/reload")
def reload() -> Response:
    """Check the registry now (instead of waiting for the watcher's next round)."""
    watcher = _watcher()
    if watcher is None:
        return _json({"swapped_here": False, "watching": False})
    return _json({"swapped_here": watcher.check_now(), "watching": True, **watcher.status()})
