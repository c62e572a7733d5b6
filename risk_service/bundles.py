"""Versioned model bundles: writing manifests, verifying them, and the champion registry.

A bundle is a directory `models/<kind>/<version>/` holding model files and a
`manifest.json` with the SHA-256 of every file. Nothing is loaded from a bundle
before every hash, the feature-set version and the ordered feature names have
been checked: joblib files execute code when loaded, so an unverified one must
never be opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KINDS: tuple[str, ...] = ("fraud", "credit")
MANIFEST = "manifest.json"
REGISTRY = "registry.json"


class BundleError(Exception):
    """A bundle is missing, incomplete, tampered with or incompatible with this code."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; bundles and reports are meant to be read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Strict JSON (NaN and infinities become null), keys sorted, written atomically."""
    text = json.dumps(jsonable(payload), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def jsonable(value: Any) -> Any:
    """Plain JSON values from numpy scalars, pandas frames, datetimes; NaN becomes None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return jsonable(value.to_dict(orient="records"))
    if hasattr(value, "to_dict"):  # Series
        return jsonable(value.to_dict())
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour a bundle depends on."""
    import platform

    import joblib
    import lightgbm
    import numpy
    import pandas
    import sklearn

    return {
        "python": platform.python_version(),
        "lightgbm": lightgbm.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "joblib": joblib.__version__,
    }


def content_version(kind: str, directory: Path, files: Sequence[str], stamp: str) -> str:
    """A version id derived from the model files: same data and seed give the same id."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(sha256_file(directory / name).encode())
    return f"{kind}-{stamp}-{digest.hexdigest()[:10]}"


def write_manifest(directory: Path, files: Sequence[str], fields: Mapping[str, Any]) -> dict:
    """Hash every model file in `directory` and write manifest.json beside them."""
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise BundleError(f"cannot write manifest: files missing in {directory}: {missing}")
    manifest = dict(fields)
    manifest["files"] = {name: sha256_file(directory / name) for name in sorted(files)}
    manifest.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    manifest.setdefault("library_versions", library_versions())
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files matched their manifest when it was verified."""

    kind: str
    version: str
    directory: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.kind} bundle {self.version} has no file {name!r}")
        return self.directory / name


def verify_bundle(
    directory: Path,
    *,
    expected_kind: str | None = None,
    feature_set_version: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> VerifiedBundle:
    """Check the manifest, every file hash, and feature compatibility; raise BundleError if not."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"no {MANIFEST} in {directory}: not a model bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest {manifest_path}: {exc}") from None
    for key in ("kind", "version", "files", "feature_names", "feature_set_version"):
        if key not in manifest:
            raise BundleError(f"manifest {manifest_path} lacks {key!r}")
    kind = manifest["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise BundleError(f"bundle {directory} is a {kind} model, expected {expected_kind}")
    for name, expected in manifest["files"].items():
        file_path = directory / name
        if Path(name).name != name:
            raise BundleError(f"manifest {manifest_path} names a file outside the bundle: {name}")
        if not file_path.is_file():
            raise BundleError(f"bundle {manifest['version']}: file {name} is missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"bundle {manifest['version']}: {name} has SHA-256 {actual[:12]}…, manifest says "
                f"{expected[:12]}… (tampered or partially written); refusing to load"
            )
    if feature_set_version is not None and manifest["feature_set_version"] != feature_set_version:
        raise BundleError(
            f"bundle {manifest['version']} was trained on feature set "
            f"{manifest['feature_set_version']}, this code computes {feature_set_version}; retrain"
        )
    if feature_names is not None and list(manifest["feature_names"]) != list(feature_names):
        theirs, ours = list(manifest["feature_names"]), list(feature_names)
        diff = sorted(set(theirs) ^ set(ours))
        detail = f"differing names: {diff[:5]}" if diff else "same names in another order"
        raise BundleError(
            f"bundle {manifest['version']}: feature names do not match this code ({detail})"
        )
    return VerifiedBundle(kind, manifest["version"], directory, manifest)


class Registry:
    """`models/registry.json`: which version of each kind is champion, and the history."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.path = self.models_dir / REGISTRY

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {kind: {"champion": None, "history": []} for kind in KINDS}
        data = json.loads(self.path.read_text())
        for kind in KINDS:
            data.setdefault(kind, {"champion": None, "history": []})
        return data

    def champion(self, kind: str) -> str | None:
        return self.read()[_check_kind(kind)]["champion"]

    def versions(self, kind: str) -> list[str]:
        root = self.models_dir / _check_kind(kind)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())

    def bundle_dir(self, kind: str, version: str) -> Path:
        return self.models_dir / _check_kind(kind) / version

    def promote(self, kind: str, version: str) -> None:
        """Make `version` champion after verifying it; the previous champion goes to history."""
        verify_bundle(self.bundle_dir(kind, version), expected_kind=kind)
        data = self.read()
        entry = data[kind]
        if entry["champion"] == version:
            return
        if entry["champion"] is not None:
            entry["history"].append(entry["champion"])
        entry["champion"] = version
        atomic_write_json(self.path, data)

    def rollback(self, kind: str) -> str:
        """Return to the previous champion; raise BundleError if there is none."""
        data = self.read()
        entry = data[_check_kind(kind)]
        if not entry["history"]:
            raise BundleError(f"no previous {kind} champion to roll back to")
        entry["champion"] = entry["history"].pop()
        atomic_write_json(self.path, data)
        return str(entry["champion"])


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BundleError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    return kind
