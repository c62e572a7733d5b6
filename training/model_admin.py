"""`risk models …` and `risk policies …`: the registry from the shell.

Promote, rollback, shadow and policy add go through `risk_service.registry_admin`,
the same code path as the HTTP admin routes, and are audited with the OS user
as actor (`models/audit.jsonl`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from risk_service import audit, registry_admin, verification
from risk_service.bundles import KINDS, MODEL_KINDS, POLICY_FILE, POLICY_KIND, BundleError, Registry


def _kind_of(version: str) -> str:
    kind = version.split("-", 1)[0]
    if kind not in MODEL_KINDS:
        raise BundleError(
            f"cannot tell the kind of version {version!r}; expected fraud-… or credit-…"
        )
    return kind


def verify_for_serving(registry: Registry, kind: str, version: str) -> None:
    """Verify hashes and, for models scored from events, feature compatibility with this code."""
    verification.verify_version(registry.models_dir, kind, version)


def _list(registry: Registry, kinds: list[str]) -> Iterator[str]:
    """`*` marks the champion, `~` the challenger."""
    data = registry.read()
    for k in kinds:
        for v in registry.versions(k):
            mark = "*" if v == data[k]["champion"] else "~" if v == data[k]["challenger"] else " "
            yield f"{mark} {v}"


def _verify_all(registry: Registry, kinds: list[str], *, load: bool = False) -> Iterator[str]:
    """Every version's hashes and compatibility; with `load`, each also loaded as a worker
    loads it (a bundle that verifies but does not load fails here, not in `risk serve`)."""
    failures = 0
    for k in kinds:
        for v in registry.versions(k):
            try:
                if load:  # load_version verifies as verify_for_serving does, then loads;
                    # LightGBM's import (seconds) only when asked
                    from risk_service.lifecycle import load_version

                    load_version(registry.models_dir, k, v)
                else:
                    verify_for_serving(registry, k, v)
                yield f"ok      {v}" + ("  (loaded)" if load else "")
            except (BundleError, ValueError) as exc:
                failures += 1
                yield f"FAILED  {v}: {exc}"
    if failures:
        raise BundleError(f"{failures} bundle(s) failed verification")


def _audit_lines(models_dir: Path, kinds: list[str]) -> Iterator[str]:
    for entry in audit.read(models_dir):
        if entry.get("kind", kinds[0]) in kinds:
            yield audit.format_entry(entry)


def _shadow(models_dir: Path, kind: str, version: str | None, actor: str) -> str:
    result = registry_admin.set_challenger(models_dir, kind, version, actor)
    if version is None:
        return f"{kind} challenger cleared (was {result['previous']})"
    return f"{kind} challenger is now {version}"


def run_models_command(
    action: str,
    version: str | None,
    models_dir: Path,
    kind: str | None,
    *,
    clear: bool = False,
    actor: str | None = None,
    load: bool = False,
) -> Iterator[str]:
    registry = Registry(models_dir)
    kinds = [kind] if kind else list(MODEL_KINDS)
    who = actor or audit.cli_actor()
    if action == "list":
        yield from _list(registry, kinds)
    elif action == "show":
        if version is None:
            raise BundleError("risk models show needs a VERSION")
        k = _kind_of(version)
        manifest = json.loads((registry.bundle_dir(k, version) / "manifest.json").read_text())
        yield json.dumps(manifest, indent=2, sort_keys=True)
    elif action == "verify":
        yield from _verify_all(registry, kinds, load=load)
    elif action == "promote":
        if version is None:
            raise BundleError("risk models promote needs a VERSION")
        k = _kind_of(version)
        registry_admin.promote(models_dir, k, version, who)
        yield f"{k} champion is now {version}"
    elif action == "rollback":
        for k in kinds:
            if kind is None and not registry.read()[k]["history"]:
                continue
            result = registry_admin.rollback(models_dir, k, who)
            yield f"{k} champion is now {result['champion']}"
    elif action == "shadow":
        if clear == (version is not None):
            raise BundleError("risk models shadow needs a VERSION, or --kind K --clear")
        if version is not None:
            yield _shadow(models_dir, _kind_of(version), version, who)
        elif kind is None:
            raise BundleError("risk models shadow --clear needs --kind fraud|credit")
        else:
            yield _shadow(models_dir, kind, None, who)
    elif action == "audit":  # every kind, policies included, unless --kind
        yield from _audit_lines(models_dir, [kind] if kind else list(KINDS))
    else:
        raise BundleError(f"unknown action {action!r}")


def run_policies_command(
    action: str,
    target: str | None,
    models_dir: Path,
    *,
    clear: bool = False,
    actor: str | None = None,
) -> Iterator[str]:
    """`target` is a FILE for add, a VERSION for show, promote and shadow."""
    registry = Registry(models_dir)
    who = actor or audit.cli_actor()
    if action in ("add", "show", "promote") and target is None:
        raise BundleError(
            f"risk policies {action} needs a {'FILE' if action == 'add' else 'VERSION'}"
        )
    if action == "add":
        assert target is not None
        result = registry_admin.add_policy(models_dir, Path(target), who)
        verb = "added" if result["created"] else "already present:"
        yield f"policy {verb} {result['version']}"
    elif action == "list":
        yield from _list(registry, [POLICY_KIND])
    elif action == "show":
        assert target is not None
        directory = registry.bundle_dir(POLICY_KIND, target)
        if not directory.is_dir():
            raise BundleError(f"no policy version {target!r} in {models_dir}")
        yield json.dumps(json.loads((directory / "manifest.json").read_text()), indent=2)
        yield f"--- {POLICY_FILE}"
        yield (directory / POLICY_FILE).read_text().rstrip("\n")
    elif action == "verify":
        yield from _verify_all(registry, [POLICY_KIND])
    elif action == "promote":
        assert target is not None
        registry_admin.promote(models_dir, POLICY_KIND, target, who)
        yield f"policy champion is now {target}"
    elif action == "rollback":
        result = registry_admin.rollback(models_dir, POLICY_KIND, who)
        yield f"policy champion is now {result['champion']}"
    elif action == "shadow":
        if clear == (target is not None):
            raise BundleError("risk policies shadow needs a VERSION, or --clear")
        yield _shadow(models_dir, POLICY_KIND, target, who)
    elif action == "audit":
        yield from _audit_lines(models_dir, [POLICY_KIND])
    else:
        raise BundleError(f"unknown action {action!r}")
