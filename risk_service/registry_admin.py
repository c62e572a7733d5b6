"""Changes to the model registry: promote, roll back, name a challenger, add a policy.

The `risk models` / `risk policies` commands and the HTTP admin routes (api_admin.py) call
these same functions. Each one verifies fully before it changes anything (a running service
then swaps in what changed: lifecycle.ChampionWatcher) and writes its outcome, ok or
refused, to the audit trail (audit.py). Format and guarantees: docs/lifecycle.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from risk_service import audit
from risk_service import features as fs
from risk_service.bundles import (
    KINDS,
    POLICY_FILE,
    POLICY_KIND,
    BundleError,
    Registry,
    check_version,
    sha256_file,
    write_manifest,
)
from risk_service.lifecycle import ChampionWatcher
from risk_service.policy import Policy, PolicyError
from risk_service.verification import policy_fields, verify_version


def promote(models_dir: Path, kind: str, version: str, actor: str) -> dict[str, Any]:
    """Make `version` the `kind` champion after full verification; audited either way."""
    registry = Registry(Path(models_dir))

    def act() -> str | None:
        verify_version(registry.models_dir, kind, version)
        return registry.promote(kind, version)

    return _audited(registry, "promote", kind, version, actor, "champion", act)


def rollback(models_dir: Path, kind: str, actor: str) -> dict[str, Any]:
    """Restore the previous `kind` champion (verified first); audited either way."""
    registry = Registry(Path(models_dir))
    history = registry.read().get(kind, {}).get("history", [])
    target = history[-1] if history else None

    def act() -> str | None:
        if target is None:
            raise BundleError(f"no previous {kind} champion to roll back to")
        verify_version(registry.models_dir, kind, target)
        previous = registry.champion(kind)
        registry.rollback(kind)
        return previous

    return _audited(registry, "rollback", kind, target, actor, "champion", act)


def set_challenger(models_dir: Path, kind: str, version: str | None, actor: str) -> dict[str, Any]:
    """Name the `kind` challenger (fully verified first), or clear it with None; audited."""
    registry = Registry(Path(models_dir))

    def act() -> str | None:
        if version is not None:
            if registry.champion(kind) == version:
                raise BundleError(f"{version} is the {kind} champion already; nothing to shadow")
            verify_version(registry.models_dir, kind, version)
        return registry.set_challenger(kind, version)

    action = "shadow" if version is not None else "shadow_clear"
    return _audited(registry, action, kind, version, actor, "challenger", act)


def add_policy(models_dir: Path, source: Path, actor: str) -> dict[str, Any]:
    """Validate a policy file and store it as bundle `policy/<its version>`; audited.

    Adding the same file again is a no-op; another file with an existing version
    is refused (change its `version`).
    """
    registry = Registry(Path(models_dir))
    result: dict[str, Any] = {}

    def act() -> str | None:
        try:
            policy = Policy.load(Path(source), policy_fields())
        except PolicyError as exc:
            raise BundleError(str(exc)) from None
        result["version"] = check_version(policy.version)
        result["created"] = _write_policy_bundle(registry, Path(source), policy)
        return None

    return _audited(registry, "policy_add", POLICY_KIND, None, actor, None, act, result)


def add_policy_bytes(
    models_dir: Path, data: bytes, actor: str, name: str = "upload.toml"
) -> dict[str, Any]:
    """`add_policy` for a policy received as bytes (an HTTP upload)."""
    with tempfile.TemporaryDirectory(prefix="risk-policy-") as tmp:
        source = Path(tmp) / (Path(name).name or "upload.toml")
        source.write_bytes(data)
        return add_policy(models_dir, source, actor)


def _write_policy_bundle(registry: Registry, source: Path, policy: Policy) -> bool:
    raw = source.read_bytes()
    if sha256_file(source) != policy.digest:
        raise BundleError(f"{source} changed while being added")
    final = registry.bundle_dir(POLICY_KIND, policy.version)
    if final.exists():
        existing = verify_version(registry.models_dir, POLICY_KIND, policy.version)
        if existing.manifest["digest"] == policy.digest:
            return False
        raise BundleError(
            f"policy version {policy.version} already exists with other content; "
            "give the file a new version"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".policy-", dir=final.parent))
    try:
        os.chmod(staging, 0o755)
        (staging / POLICY_FILE).write_bytes(raw)
        write_manifest(
            staging,
            [POLICY_FILE],
            {
                "kind": POLICY_KIND,
                "version": policy.version,
                "policy_version": policy.version,
                "digest": policy.digest,
                "fail_mode": policy.fail_mode,
                "rules": len(policy.rules),
                "feature_set_version": fs.FEATURE_SET_VERSION,  # validated against its names
                "source_file": source.name,
                "library_versions": {},
            },
        )
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def _audited(
    registry: Registry,
    action: str,
    kind: str,
    version: str | None,
    actor: str,
    role: str | None,
    act: Callable[[], str | None],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `act` (it returns the version replaced); append ok or refused to the audit trail.

    `role`: the registry entry whose current value is "previous" in a refusal.
    """
    previous: str | None = None
    try:
        if kind not in KINDS:
            raise BundleError(f"unknown kind {kind!r}; expected one of {KINDS}")
        if role is not None:
            previous = registry.read()[kind][role]
        previous = act()
    except (BundleError, OSError) as exc:
        _audit(registry, action, kind, version, actor, previous, extra, "refused", str(exc))
        raise
    entry = _audit(registry, action, kind, version, actor, previous, extra, "ok")
    state = registry.read()[kind]
    return {
        **entry,
        **(extra or {}),
        "champion": state["champion"],
        "challenger": state["challenger"],
    }


def _audit(
    registry: Registry,
    action: str,
    kind: str,
    version: str | None,
    actor: str,
    previous: str | None,
    extra: dict[str, Any] | None,
    outcome: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """One audit entry; the version is the one `act` settled on (a policy's own) if any."""
    return audit.append(
        registry.models_dir,
        actor=actor,
        action=action,
        kind=kind,
        version=(extra or {}).get("version", version),
        previous=previous,
        outcome=outcome,
        reason=reason,
    )


def status(models_dir: Path, watcher: ChampionWatcher | None = None) -> dict[str, Any]:
    """The registry (champions, challengers, history, versions on disk), this process's
    watcher (what it serves, what it refused), and the last audit entries."""
    registry = Registry(Path(models_dir))
    data = registry.read()
    kinds = {
        kind: {
            "champion": data[kind]["champion"],
            "challenger": data[kind]["challenger"],
            "history": list(data[kind]["history"]),
            "versions": registry.versions(kind),
        }
        for kind in KINDS
    }
    return {
        "registry": kinds,
        "watcher": None if watcher is None else watcher.status(),
        "recent_audit": audit.read(Path(models_dir))[-20:],
    }
