"""Model and policy lifecycle: full verification, loading, hot swap in a running service.

What serving needs is named by `models/registry.json`: per kind (fraud, credit,
policy) a champion and an optional challenger. `ChampionWatcher` runs in every
service process (each gunicorn worker has its own): it re-reads the registry,
loads and fully verifies whatever changed off the request path, and only then
replaces the attributes a scorer reads once per request (`models`, `policy`,
`shadow`), each one assignment, so a request sees the old object or the new one.
A bundle that fails verification is refused: logged once at ERROR, recorded in
`errors` and `last_error`, and the previous one keeps serving.

The actions that change the registry (promote, rollback, challengers, policies)
live in `registry_admin.py`. Format and guarantees: docs/lifecycle.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from risk_service.bundles import (
    KINDS,
    MODEL_KINDS,
    POLICY_KIND,
    BundleError,
    Registry,
)
from risk_service.credit_model import CreditModel
from risk_service.fraud_model import FraudModel
from risk_service.policy import Policy
from risk_service.scoring import LoadedModels
from risk_service.verification import (
    load_serving_policy,
    no_fraud_champion,
    role_versions,
    verify_and_parse,
)

log = logging.getLogger("risk_service.lifecycle")

ROLES: tuple[str, ...] = ("champion", "challenger")
Slot = tuple[str, str]  # (kind, role)
SLOTS: tuple[Slot, ...] = tuple((kind, role) for role in ROLES for kind in KINDS)


# -- loading -----------------------------------------------------------------------------------
def load_version(
    models_dir: Path, kind: str, version: str
) -> FraudModel | CreditModel | Policy | None:
    """A verified version, loaded. None for a credit model that scores tables, not events."""
    bundle, policy = verify_and_parse(Path(models_dir), kind, version)
    if policy is not None:
        return policy
    if kind == "fraud":
        return FraudModel(bundle)
    if bundle.manifest.get("feature_source", "events") != "events":
        log.warning("credit model %s scores tables, not events: not served", version)
        return None
    return CreditModel(bundle)


def load_champions(models_dir: Path) -> LoadedModels:
    """The champion models, each fully verified before loading."""
    return _models(Path(models_dir), "champion")


def _models(models_dir: Path, role: str) -> LoadedModels:
    loaded: dict[str, Any] = {
        kind: None if version is None else load_version(models_dir, kind, version)
        for kind, version in role_versions(models_dir, role).items()
    }
    return LoadedModels(fraud=loaded["fraud"], credit=loaded["credit"])


@dataclass(frozen=True)
class Challengers:
    """The challengers alone: models holds only challenged kinds (others None)."""

    models: LoadedModels | None
    policy: Policy | None


def load_challengers(models_dir: Path) -> Challengers:
    """The challenger models and policy, fully verified; None where there is no challenger."""
    models_dir = Path(models_dir)
    data = Registry(models_dir).read()
    models = None
    if any(data[kind]["challenger"] for kind in MODEL_KINDS):
        models = _models(models_dir, "challenger")
    version = data[POLICY_KIND]["challenger"]
    policy = None if version is None else load_version(models_dir, POLICY_KIND, version)
    assert policy is None or isinstance(policy, Policy)
    return Challengers(models, policy)


# -- what serves -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shadow:
    """What the challengers decide: challenger models and policy where set, champions elsewhere."""

    models: LoadedModels
    policy: Policy
    challengers: dict[str, str]  # kind -> challenger version, only the challenged kinds


@dataclass(frozen=True)
class Serving:
    """One consistent state of a process: champions, policy, shadow, and their versions."""

    models: LoadedModels
    policy: Policy
    shadow: Shadow | None
    versions: dict[Slot, str | None]
    policy_source: str  # "file" (POLICY_FILE), "registry" or "default" (packaged)
    objects: dict[Slot, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """A version the watcher would not serve, and why."""

    kind: str
    role: str
    version: str | None
    reason: str
    at: str
    stamp: tuple[tuple[str, int, int], ...] | None = field(repr=False, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "role", "version", "reason", "at")}


class ChampionWatcher:
    """Keeps a process's models, policy and shadow in step with `models/registry.json`.

    Usage (one per process): ``serving = watcher.load()`` at start-up (raises if
    a champion cannot serve), build the scorer from it, ``watcher.attach(scorer)``,
    ``watcher.start()``. ``check_now()`` does one check at once (tests, admin).
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        policy_file: str | Path | None = None,
        interval: float = 2.0,
        on_swap: Callable[[Serving], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.policy_file = policy_file or None
        self.interval = float(interval)
        self.on_swap = on_swap
        self.serving: Serving | None = None
        self.errors: dict[Slot, Refusal] = {}
        self.last_error: Refusal | None = None
        self.last_check: str | None = None
        self.last_swap: str | None = None
        self._targets: list[object] = []
        self._base_policy: Policy | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up and the loop --------------------------------------------------------------
    def load(self) -> Serving:
        """The first state; a champion that cannot load raises (BundleError, PolicyError)."""
        with self._lock:
            if self._base_policy is None:
                self._base_policy = load_serving_policy(self.policy_file, None)
            wanted = self._wanted(Registry(self.models_dir).read())
            if wanted[("fraud", "champion")] is None:
                raise no_fraud_champion(self.models_dir)
            self.serving = self._build(wanted, None)
            return self.serving

    def attach(self, target: object) -> None:
        """Give `target` the current state now and on every swap (attributes models, policy,
        shadow)."""
        serving = self.serving or self.load()
        with self._lock:
            self._targets.append(target)
            _assign(target, serving)

    def start(self) -> None:
        """Check every `interval` seconds in a daemon thread (idempotent)."""
        if self.serving is None:
            self.load()
        if self._thread is not None or self.interval <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any surprise; it is logged, not lost
                log.exception("champion watcher: check failed")

    def check_now(self) -> bool:
        """Read the registry, load what changed, swap it in; True if anything was swapped."""
        if self.serving is None:
            self.load()
        with self._lock:
            self.last_check = _now()
            previous = self.serving
            assert previous is not None
            try:
                data = Registry(self.models_dir).read()
            except (BundleError, OSError) as exc:
                self._refuse(("registry", "file"), None, str(exc), None)
                return False
            self.errors.pop(("registry", "file"), None)
            current = self._build(self._wanted(data), previous)
            if current.versions == previous.versions and _same(current, previous):
                return False
            self.serving = current
            for slot in SLOTS:
                old, new = previous.versions[slot], current.versions[slot]
                if old != new:
                    log.info("%s %s: %s -> %s", slot[0], slot[1], old, new)
            if _same(current, previous):  # e.g. a credit champion that scores tables only
                return False
            for target in self._targets:
                _assign(target, current)
            self.last_swap = self.last_check
        if self.on_swap is not None:
            self.on_swap(current)
        return True

    # -- building a state -------------------------------------------------------------------
    def _wanted(self, data: dict[str, Any]) -> dict[Slot, str | None]:
        wanted = {(kind, role): data[kind][role] for kind, role in SLOTS}
        if self.policy_file:  # an explicit policy file always wins: no policy champion swap
            wanted[(POLICY_KIND, "champion")] = None
        return wanted

    def _build(self, wanted: dict[Slot, str | None], previous: Serving | None) -> Serving:
        objects: dict[Slot, Any] = {}
        versions: dict[Slot, str | None] = {}
        for slot in SLOTS:
            kind, role = slot
            want = wanted[slot]
            had = previous.versions[slot] if previous is not None else None
            keep = previous.objects[slot] if previous is not None else None
            if previous is not None and want == had:
                objects[slot], versions[slot] = keep, had
                self.errors.pop(slot, None)
                continue
            if want is None and slot == ("fraud", "champion"):
                self._refuse(slot, None, "the registry names no fraud champion", None)
                objects[slot], versions[slot] = keep, had
                continue
            if want is None:
                objects[slot], versions[slot] = None, None
                self.errors.pop(slot, None)
                continue
            reused = _find(previous, kind, want)
            if reused is not None:
                objects[slot], versions[slot] = reused, want
                self.errors.pop(slot, None)
                continue
            stamp = _stamp(self.models_dir / kind / want)
            known = self.errors.get(slot)
            if known is not None and known.version == want and known.stamp == stamp:
                objects[slot], versions[slot] = keep, had  # refused already; nothing new to try
                continue
            try:
                objects[slot] = load_version(self.models_dir, kind, want)
            except Exception as exc:  # anything a bundle can throw; refused, never served
                if previous is None and role == "champion":
                    raise
                self._refuse(slot, want, f"{type(exc).__name__}: {exc}", stamp)
                objects[slot], versions[slot] = keep, had
                continue
            versions[slot] = want
            self.errors.pop(slot, None)
        return self._compose(objects, versions, previous)

    def _compose(
        self, objects: dict[Slot, Any], versions: dict[Slot, str | None], previous: Serving | None
    ) -> Serving:
        fraud, credit = objects[("fraud", "champion")], objects[("credit", "champion")]
        models = LoadedModels(fraud=fraud, credit=credit)
        if previous is not None and _same_models(previous.models, models):
            models = previous.models
        assert self._base_policy is not None
        policy = _either(objects[(POLICY_KIND, "champion")], self._base_policy)
        challenged = {k: v for (k, role), v in versions.items() if role == "challenger" and v}
        shadow = None
        if challenged:
            shadow_models = LoadedModels(
                fraud=_either(objects[("fraud", "challenger")], fraud),
                credit=_either(objects[("credit", "challenger")], credit),
            )
            shadow_policy = _either(objects[(POLICY_KIND, "challenger")], policy)
            old = previous.shadow if previous is not None else None
            if (
                old is not None
                and old.challengers == challenged
                and _same_models(old.models, shadow_models)
                and old.policy is shadow_policy
            ):
                shadow = old
            else:
                shadow = Shadow(shadow_models, shadow_policy, challenged)
        source = "file" if self.policy_file else "registry"
        if objects[(POLICY_KIND, "champion")] is None and not self.policy_file:
            source = "default"
        return Serving(models, policy, shadow, versions, source, objects)

    def _refuse(self, slot: Slot, version: str | None, reason: str, stamp: Any) -> None:
        known = self.errors.get(slot)
        if known is not None and (known.version, known.reason, known.stamp) == (
            version,
            reason,
            stamp,
        ):
            return  # logged already: no log line per interval for the same bad version
        refusal = Refusal(slot[0], slot[1], version, reason, _now(), stamp)
        self.errors[slot] = self.last_error = refusal
        what = "registry.json" if slot[0] == "registry" else f"{slot[0]} {slot[1]} {version}"
        log.error("refused %s: %s; the previous one keeps serving", what, reason)

    # -- reporting --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What this process serves, what it refused, and when it last looked.

        Never waits for a check in progress: it reads a snapshot (a dict copy is atomic).
        """
        serving, errors = self.serving, dict(self.errors)
        return {
            "models_dir": str(self.models_dir),
            "interval_seconds": self.interval,
            "running": self._thread is not None and self._thread.is_alive(),
            "serving": None if serving is None else _describe(serving),
            "errors": [r.as_dict() for r in errors.values()],
            "last_error": None if self.last_error is None else self.last_error.as_dict(),
            "last_check": self.last_check,
            "last_swap": self.last_swap,
        }


def _describe(serving: Serving) -> dict[str, Any]:
    champions = {k: serving.versions[(k, "champion")] for k in KINDS}
    champions[POLICY_KIND] = serving.policy.version
    return {
        "champions": champions,
        "challengers": {k: serving.versions[(k, "challenger")] for k in KINDS},
        "policy_source": serving.policy_source,
    }


def _assign(target: object, serving: Serving) -> None:
    """One attribute assignment each: a request reading an attribute gets old or new, whole."""
    for name, value in (
        ("models", serving.models),
        ("policy", serving.policy),
        ("shadow", serving.shadow),
    ):
        if getattr(target, name, None) is not value:
            setattr(target, name, value)


def _either(value: Any, default: Any) -> Any:
    return default if value is None else value


def _same(a: Serving, b: Serving) -> bool:
    return a.models is b.models and a.policy is b.policy and a.shadow is b.shadow


def _same_models(a: LoadedModels, b: LoadedModels) -> bool:
    return a.fraud is b.fraud and a.credit is b.credit


def _find(serving: Serving | None, kind: str, version: str) -> Any:
    """An already loaded object of this version (a challenger being promoted, say)."""
    if serving is None:
        return None
    for role in ROLES:
        if serving.versions[(kind, role)] == version and serving.objects[(kind, role)] is not None:
            return serving.objects[(kind, role)]
    return None


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """Names, sizes and modification times of a bundle's files: changes when it is rewritten."""
    try:
        return tuple(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir())
        )
    except OSError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
