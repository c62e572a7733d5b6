"""Bundles: a tampered or partial bundle and a feature mismatch are refused; the registry works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from risk_service.bundles import (
    BundleError,
    Registry,
    content_version,
    verify_bundle,
    write_manifest,
)


def make_bundle(root: Path, kind: str = "fraud", payload: bytes = b"model-a") -> str:
    staging = root / kind / "staging"
    staging.mkdir(parents=True)
    (staging / "model.txt").write_bytes(payload)
    (staging / "calibrator.joblib").write_bytes(b"not really joblib")
    files = ["model.txt", "calibrator.joblib"]
    version = content_version(kind, staging, files, "20260101")
    write_manifest(
        staging,
        files,
        {
            "kind": kind,
            "version": version,
            "feature_set_version": "fs-test",
            "feature_names": ["a", "b", "c"],
        },
    )
    staging.rename(root / kind / version)
    return version


def test_verified_bundle_lists_its_files(tmp_path: Path) -> None:
    version = make_bundle(tmp_path)
    bundle = verify_bundle(
        tmp_path / "fraud" / version,
        expected_kind="fraud",
        feature_set_version="fs-test",
        feature_names=["a", "b", "c"],
    )
    assert bundle.version == version
    assert set(bundle.manifest["files"]) == {"model.txt", "calibrator.joblib"}
    assert len(bundle.manifest["files"]["model.txt"]) == 64
    assert bundle.path("model.txt").read_bytes() == b"model-a"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    version = make_bundle(tmp_path)
    (tmp_path / "fraud" / version / "calibrator.joblib").write_bytes(b"evil pickle")
    with pytest.raises(BundleError, match=r"calibrator\.joblib has SHA-256 .*tampered"):
        verify_bundle(tmp_path / "fraud" / version)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    version = make_bundle(tmp_path)
    (tmp_path / "fraud" / version / "model.txt").unlink()
    with pytest.raises(BundleError, match=r"model\.txt is missing"):
        verify_bundle(tmp_path / "fraud" / version)


def test_manifest_pointing_outside_is_refused(tmp_path: Path) -> None:
    version = make_bundle(tmp_path)
    manifest_path = tmp_path / "fraud" / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../escape"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(tmp_path / "fraud" / version)


def test_feature_mismatch_is_refused(tmp_path: Path) -> None:
    version = make_bundle(tmp_path)
    directory = tmp_path / "fraud" / version
    with pytest.raises(BundleError, match="differing names"):
        verify_bundle(directory, feature_names=["a", "b", "d"])
    with pytest.raises(BundleError, match="another order"):
        verify_bundle(directory, feature_names=["c", "b", "a"])
    with pytest.raises(BundleError, match="feature set fs-test"):
        verify_bundle(directory, feature_set_version="fs-other")
    with pytest.raises(BundleError, match="is a fraud model, expected credit"):
        verify_bundle(directory, expected_kind="credit")


def test_version_is_derived_from_content(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "one", payload=b"same")
    b = make_bundle(tmp_path / "two", payload=b"same")
    c = make_bundle(tmp_path / "three", payload=b"different")
    assert a == b != c


def test_registry_promote_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = make_bundle(tmp_path, payload=b"first")
    assert registry.champion("fraud") is None
    registry.promote("fraud", first)
    staging_root = tmp_path / "fraud"
    second_root = tmp_path / "second"
    second = make_bundle(second_root, payload=b"second")
    (second_root / "fraud" / second).rename(staging_root / second)
    registry.promote("fraud", second)
    assert registry.champion("fraud") == second
    assert registry.versions("fraud") == sorted([first, second])
    assert registry.rollback("fraud") == first
    assert registry.champion("fraud") == first
    with pytest.raises(BundleError, match="no previous fraud champion"):
        registry.rollback("fraud")


def test_promoting_a_tampered_bundle_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    version = make_bundle(tmp_path)
    (tmp_path / "fraud" / version / "model.txt").write_bytes(b"changed")
    with pytest.raises(BundleError):
        registry.promote("fraud", version)
    assert registry.champion("fraud") is None
