"""Bundles: a tampered or partial bundle and a feature mismatch are refused; the registry works
(champions, challengers, history, safe version names, no lost update between writers)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from risk_service.bundles import (
    KINDS,
    MODEL_KINDS,
    BundleError,
    Registry,
    check_version,
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


def test_registry_challenger_is_set_cleared_and_won_by_promotion(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = make_bundle(tmp_path / "a", payload=b"first")
    second = make_bundle(tmp_path / "b", payload=b"second")
    for root, version in ((tmp_path / "a", first), (tmp_path / "b", second)):
        (tmp_path / "fraud").mkdir(exist_ok=True)
        (root / "fraud" / version).rename(tmp_path / "fraud" / version)
    registry.promote("fraud", first)
    assert registry.set_challenger("fraud", second) is None
    assert registry.challenger("fraud") == second
    assert registry.set_challenger("fraud", None) == second
    assert registry.challenger("fraud") is None
    registry.set_challenger("fraud", second)
    assert registry.promote("fraud", second) == first
    assert (registry.champion("fraud"), registry.challenger("fraud")) == (second, None)
    (tmp_path / "fraud" / first / "model.txt").write_bytes(b"changed")
    with pytest.raises(BundleError, match="tampered"):
        registry.set_challenger("fraud", first)
    assert registry.challenger("fraud") is None


def test_an_older_registry_file_gains_the_new_entries(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text(
        json.dumps({"fraud": {"champion": "fraud-x", "history": []}})
    )
    data = Registry(tmp_path).read()
    assert data["fraud"] == {"champion": "fraud-x", "challenger": None, "history": []}
    assert data["policy"] == {"champion": None, "challenger": None, "history": []}
    assert Registry(tmp_path).champion("policy") is None
    (tmp_path / "registry.json").write_text("[1, 2")
    with pytest.raises(BundleError, match="unreadable registry"):
        Registry(tmp_path).read()


def test_kinds_and_versions_are_checked(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert MODEL_KINDS == ("fraud", "credit") and set(KINDS) == {*MODEL_KINDS, "policy"}
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200, "a..b"):
        with pytest.raises(BundleError, match="invalid version"):
            registry.bundle_dir("fraud", bad)
    with pytest.raises(BundleError, match="unknown kind"):
        registry.champion("weather")
    assert check_version("policy-2026-11-1") == "policy-2026-11-1"
    version = make_bundle(tmp_path)
    (tmp_path / "fraud" / ".fraud-staging").mkdir()
    (tmp_path / "fraud" / ".fraud-staging" / "manifest.json").write_text("{}")
    assert registry.versions("fraud") == [version]  # a bundle being written is not a version


def test_a_policy_manifest_needs_policy_fields_not_feature_names(tmp_path: Path) -> None:
    directory = tmp_path / "policy" / "p-1"
    directory.mkdir(parents=True)
    (directory / "policy.toml").write_text('version = "p-1"\n')
    write_manifest(directory, ["policy.toml"], {"kind": "policy", "version": "p-1"})
    with pytest.raises(BundleError, match="lacks 'policy_version'"):
        verify_bundle(directory, expected_kind="policy")
    write_manifest(
        directory,
        ["policy.toml"],
        {"kind": "policy", "version": "p-1", "policy_version": "p-1", "digest": "d"},
    )
    assert verify_bundle(directory, expected_kind="policy").version == "p-1"
    model = tmp_path / "fraud" / "m"
    model.mkdir(parents=True)
    (model / "model.txt").write_text("x")
    write_manifest(model, ["model.txt"], {"kind": "fraud", "version": "m"})
    with pytest.raises(BundleError, match="lacks 'feature_names'"):
        verify_bundle(model)


def test_concurrent_promotions_lose_no_update(tmp_path: Path) -> None:
    versions = []
    for i in range(8):
        version = make_bundle(tmp_path / f"s{i}", payload=f"model-{i}".encode())
        (tmp_path / "fraud").mkdir(exist_ok=True)
        (tmp_path / f"s{i}" / "fraud" / version).rename(tmp_path / "fraud" / version)
        versions.append(version)
    registry = Registry(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: registry.promote("fraud", v), versions))
    entry = registry.read()["fraud"]
    assert sorted([entry["champion"], *entry["history"]]) == sorted(versions)
