"""`risk models list | show V | verify | promote V | rollback`: the registry from the shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from risk_service import features as fs
from risk_service.bundles import KINDS, BundleError, Registry, verify_bundle


def _kind_of(version: str) -> str:
    kind = version.split("-", 1)[0]
    if kind not in KINDS:
        raise BundleError(
            f"cannot tell the kind of version {version!r}; expected fraud-… or credit-…"
        )
    return kind


def verify_for_serving(registry: Registry, kind: str, version: str) -> None:
    """Verify hashes and, for models scored from events, feature compatibility with this code."""
    directory = registry.bundle_dir(kind, version)
    bundle = verify_bundle(directory, expected_kind=kind)
    if bundle.manifest.get("feature_source", "events") == "events":
        names = fs.FEATURE_NAMES if kind == "fraud" else fs.CREDIT_FEATURE_NAMES
        verify_bundle(
            directory,
            expected_kind=kind,
            feature_set_version=fs.FEATURE_SET_VERSION,
            feature_names=names,
        )


def run_models_command(
    action: str, version: str | None, models_dir: Path, kind: str | None
) -> Iterator[str]:
    registry = Registry(models_dir)
    kinds = [kind] if kind else list(KINDS)
    if action == "list":
        for k in kinds:
            champion = registry.champion(k)
            for v in registry.versions(k):
                mark = "*" if v == champion else " "
                yield f"{mark} {v}"
    elif action == "show":
        if version is None:
            raise BundleError("risk models show needs a VERSION")
        k = _kind_of(version)
        manifest = json.loads((registry.bundle_dir(k, version) / "manifest.json").read_text())
        yield json.dumps(manifest, indent=2, sort_keys=True)
    elif action == "verify":
        failures = 0
        for k in kinds:
            for v in registry.versions(k):
                try:
                    verify_for_serving(registry, k, v)
                    yield f"ok      {v}"
                except BundleError as exc:
                    failures += 1
                    yield f"FAILED  {v}: {exc}"
        if failures:
            raise BundleError(f"{failures} bundle(s) failed verification")
    elif action == "promote":
        if version is None:
            raise BundleError("risk models promote needs a VERSION")
        k = _kind_of(version)
        verify_for_serving(registry, k, version)
        registry.promote(k, version)
        yield f"{k} champion is now {version}"
    elif action == "rollback":
        for k in kinds:
            if kind is None and not registry.read()[k]["history"]:
                continue
            yield f"{k} champion is now {registry.rollback(k)}"
