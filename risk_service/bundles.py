"""Versioned bundles: writing manifests, verifying them, and the champion registry.

A bundle is a directory `models/<kind>/<version>/` holding files and a
`manifest.json` with the SHA-256 of every file. Kinds are the models (`fraud`,
`credit`) and the decision policy (`policy`: one `policy.toml`). Nothing is
loaded from a bundle before every hash, the feature-set version and the ordered
feature names have been checked: joblib files execute code when loaded, so an
unverified one must never be opened.

`models/registry.json` names, per kind, the `champion` (serving), an optional
`challenger` (scored in shadow) and the `history` of previous champions.
Changes to it are atomic (readers see the old file or the new one) and
serialised between processes by a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_KINDS: tuple[str, ...] = ("fraud", "credit")
POLICY_KIND = "policy"
# Every kind the registry holds. Code about models iterates MODEL_KINDS, not this.
KINDS: tuple[str, ...] = (*MODEL_KINDS, POLICY_KIND)
MANIFEST = "manifest.json"
REGISTRY = "registry.json"
POLICY_FILE = "policy.toml"
# What a manifest must hold besides "kind", "version" and "files".
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    POLICY_KIND: ("policy_version", "digest"),
}
_MODEL_FIELDS = ("feature_names", "feature_set_version")
# A version names a directory: no separators, no leading dot.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
    for key in ("kind", "version", "files"):
        if key not in manifest:
            raise BundleError(f"manifest {manifest_path} lacks {key!r}")
    kind = manifest["kind"]
    for key in _REQUIRED_FIELDS.get(kind, _MODEL_FIELDS):
        if key not in manifest:
            raise BundleError(f"manifest {manifest_path} lacks {key!r}")
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
    check_features(manifest, feature_set_version, feature_names)
    return VerifiedBundle(kind, manifest["version"], directory, manifest)


def check_features(
    manifest: Mapping[str, Any],
    feature_set_version: str | None,
    feature_names: Sequence[str] | None,
) -> None:
    """Raise BundleError unless the manifest's feature set and ordered names are these."""
    version = manifest.get("version")
    if (
        feature_set_version is not None
        and manifest.get("feature_set_version") != feature_set_version
    ):
        raise BundleError(
            f"bundle {version} was trained on feature set {manifest.get('feature_set_version')}, "
            f"this code computes {feature_set_version}; retrain"
        )
    theirs = list(manifest.get("feature_names", []))
    if feature_names is not None and theirs != list(feature_names):
        diff = sorted(set(theirs) ^ set(feature_names))
        detail = f"differing names: {diff[:5]}" if diff else "same names in another order"
        raise BundleError(f"bundle {version}: feature names do not match this code ({detail})")


class Registry:
    """`models/registry.json`: per kind the champion, an optional challenger, and the history."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.path = self.models_dir / REGISTRY

    def read(self) -> dict[str, Any]:
        """Every kind's entry, with missing kinds and keys filled in (older files lack them)."""
        data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise BundleError(f"unreadable registry {self.path}: {exc}") from None
            if not isinstance(data, dict):
                raise BundleError(f"registry {self.path} is not a JSON object")
        for kind in KINDS:
            entry = data.setdefault(kind, {})
            entry.setdefault("champion", None)
            entry.setdefault("challenger", None)
            entry.setdefault("history", [])
        return data

    def champion(self, kind: str) -> str | None:
        return self.read()[_check_kind(kind)]["champion"]

    def challenger(self, kind: str) -> str | None:
        return self.read()[_check_kind(kind)]["challenger"]

    def versions(self, kind: str) -> list[str]:
        root = self.models_dir / _check_kind(kind)
        if not root.is_dir():
            return []
        return sorted(
            p.name
            for p in root.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def bundle_dir(self, kind: str, version: str) -> Path:
        return self.models_dir / _check_kind(kind) / check_version(version)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock between processes; write what was yielded.

        Readers never take the lock: the file is replaced atomically.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        # The lock is on the directory: registry.json itself is replaced, not rewritten.
        fd = os.open(self.models_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            before = self.read()
            data = json.loads(json.dumps(before))
            yield data
            if data != before:
                atomic_write_json(self.path, data)
        finally:
            os.close(fd)  # releases the lock

    def promote(self, kind: str, version: str) -> str | None:
        """Make `version` champion after verifying its hashes; return the previous champion.

        The previous champion goes to history. A challenger that is promoted stops
        being the challenger (it won).
        """
        verify_bundle(self.bundle_dir(kind, version), expected_kind=kind)
        with self.locked() as data:
            entry = data[kind]
            previous: str | None = entry["champion"]
            if previous == version:
                return previous
            if previous is not None:
                entry["history"].append(previous)
            entry["champion"] = version
            if entry["challenger"] == version:
                entry["challenger"] = None
        return previous

    def rollback(self, kind: str) -> str:
        """Return to the previous champion; raise BundleError if there is none."""
        with self.locked() as data:
            entry = data[_check_kind(kind)]
            if not entry["history"]:
                raise BundleError(f"no previous {kind} champion to roll back to")
            entry["champion"] = entry["history"].pop()
        return str(entry["champion"])

    def set_challenger(self, kind: str, version: str | None) -> str | None:
        """Name the challenger (hashes verified first), or clear it (None); return the old one."""
        if version is not None:
            verify_bundle(self.bundle_dir(kind, version), expected_kind=kind)
        with self.locked() as data:
            entry = data[_check_kind(kind)]
            previous: str | None = entry["challenger"]
            entry["challenger"] = version
        return previous


def check_version(version: str) -> str:
    """A version that can name a directory (it may come from an HTTP request)."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or ".." in version:
        raise BundleError(
            f"invalid version {version!r}: letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit"
        )
    return version


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BundleError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return kind
