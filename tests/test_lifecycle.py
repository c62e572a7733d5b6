"""Lifecycle: policy bundles, challengers, hot swap in a running service, the audit trail."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, AppFactory
from flask import Flask
from test_api import payment as api_payment

from risk_service import audit, lifecycle, registry_admin, service, verification
from risk_service.bundles import BundleError, Registry, write_manifest
from risk_service.lifecycle import ChampionWatcher
from risk_service.policy import default_policy_path
from training.cli import main

NOW = datetime.now(UTC).replace(microsecond=0)
DEFAULT_POLICY = "policy-2026-11-1"


def payment(event_id: str, account: str = "acct-1") -> dict[str, Any]:
    return api_payment(event_id, account_id=account)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A copy of the committed models, free to promote and tamper with."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target, ignore=shutil.ignore_patterns("audit.jsonl"))
    return target


def clone_fraud(models_dir: Path, suffix: str) -> str:
    """A second fraud version: the champion's files under a manifest with another version."""
    registry = Registry(models_dir)
    source = registry.bundle_dir("fraud", registry.champion("fraud") or "")
    manifest = json.loads((source / "manifest.json").read_text())
    version = f"{manifest['version']}-{suffix}"
    target = source.parent / version
    shutil.copytree(source, target)
    fields = {k: v for k, v in manifest.items() if k != "files"}
    write_manifest(target, list(manifest["files"]), {**fields, "version": version})
    return version


def policy_file(tmp_path: Path, version: str, extra: str = "") -> Path:
    text = default_policy_path().read_text().replace(DEFAULT_POLICY, version) + extra
    path = tmp_path / f"{version}.toml"
    path.write_text(text)
    return path


def watched(
    make_app: AppFactory, models_dir: Path, interval: float = 0.0, **config: Any
) -> tuple[Flask, ChampionWatcher]:
    """An app on `models_dir` and its own watcher; interval 0: no thread, check_now() only."""
    app = make_app(MODELS_DIR=str(models_dir), RELOAD_INTERVAL_SECONDS=interval, **config)
    watcher: ChampionWatcher = app.extensions["risk_watcher"]
    return app, watcher


def score(app: Flask, event_id: str) -> dict[str, Any]:
    response = app.test_client().post("/score", json=payment(event_id))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def set_registry(models_dir: Path, kind: str, **entry: Any) -> None:
    """Edit registry.json by hand, bypassing every check the admin functions make."""
    path = models_dir / "registry.json"
    data = json.loads(path.read_text())
    data[kind].update(entry)
    path.write_text(json.dumps(data))


# -- hot swap -------------------------------------------------------------------------------
def test_promote_and_rollback_while_serving_from_several_threads(
    make_app: AppFactory, models_dir: Path
) -> None:
    first = Registry(models_dir).champion("fraud")
    second = clone_fraud(models_dir, "b")
    app, watcher = watched(make_app, models_dir)
    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def hammer(n: int) -> None:
        client = app.test_client()
        i = 0
        while not stop.is_set():
            try:
                r = client.post("/score", json=payment(f"load-{n}-{i}", account=f"acct-{n}"))
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.get_data(as_text=True)[:200]}")
                else:
                    answered.append(r.get_json()["model_versions"]["fraud"])
            except Exception as exc:  # a failed request of any kind fails the test, below
                failures.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        registry_admin.promote(models_dir, "fraud", second, actor="test")
        assert watcher.check_now()
        assert score(app, "after-promote")["model_versions"]["fraud"] == second
        time.sleep(0.3)
        registry_admin.rollback(models_dir, "fraud", actor="test")
        assert watcher.check_now()
        assert score(app, "after-rollback")["model_versions"]["fraud"] == first
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    assert len(answered) > 20
    assert set(answered) == {first, second}
    assert not watcher.check_now()  # nothing changed since


def test_the_watcher_thread_picks_up_a_promotion(make_app: AppFactory, models_dir: Path) -> None:
    second = clone_fraud(models_dir, "b")
    app, watcher = watched(make_app, models_dir, interval=0.05)  # create_app starts it
    try:
        assert watcher.status()["running"]
        registry_admin.promote(models_dir, "fraud", second, actor="test")
        deadline = time.monotonic() + 10
        while app.extensions["risk"].models.fraud.version != second:
            assert time.monotonic() < deadline, "the watcher did not swap within 10 s"
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert not watcher.status()["running"]
    assert score(app, "after")["model_versions"]["fraud"] == second


def test_a_tampered_bundle_is_refused_logged_once_and_the_old_one_serves(
    make_app: AppFactory, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Registry(models_dir).champion("fraud")
    bad = clone_fraud(models_dir, "bad")
    booster = models_dir / "fraud" / bad / "fraud_lgbm.txt"
    original = booster.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    booster.write_bytes(bytes(tampered))
    app, watcher = watched(make_app, models_dir)
    set_registry(models_dir, "fraud", champion=bad, history=[first])  # no CLI verification

    with caplog.at_level(logging.INFO, logger="risk_service.lifecycle"):
        for _ in range(3):
            assert not watcher.check_now()
    errors = [
        r
        for r in caplog.records
        if r.name == "risk_service.lifecycle" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 1
    assert bad in errors[0].getMessage() and "SHA-256" in errors[0].getMessage()
    assert watcher.last_error is not None and watcher.last_error.version == bad
    assert [e["version"] for e in watcher.status()["errors"]] == [bad]
    assert app.extensions["risk"].models.fraud.version == first
    assert score(app, "during")["model_versions"]["fraud"] == first

    # Repaired in place (new mtime): tried again, and served.
    booster.write_bytes(original)
    later = time.time() + 5
    os.utime(booster, (later, later))
    assert watcher.check_now()
    assert score(app, "repaired")["model_versions"]["fraud"] == bad
    assert watcher.status()["errors"] == []
    assert watcher.last_error is not None  # the history of the last refusal stays visible


def test_a_partial_bundle_and_a_broken_registry_are_refused(
    make_app: AppFactory, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Registry(models_dir).champion("fraud")
    partial = clone_fraud(models_dir, "partial")
    (models_dir / "fraud" / partial / "fraud_calibrator.joblib").unlink()
    app, watcher = watched(make_app, models_dir)
    set_registry(models_dir, "fraud", champion=partial)
    with caplog.at_level(logging.ERROR, logger="risk_service.lifecycle"):
        assert not watcher.check_now()
        assert "is missing" in (watcher.last_error.reason if watcher.last_error else "")
        registry = models_dir / "registry.json"
        good = registry.read_text()
        registry.write_text("{")  # what a hand edit can leave behind
        assert not watcher.check_now()
        assert not watcher.check_now()
        assert "unreadable registry" in (watcher.last_error.reason if watcher.last_error else "")
        registry.write_text(good.replace(partial, first))
        assert not watcher.check_now()
    assert len([r for r in caplog.records if r.name == "risk_service.lifecycle"]) == 2
    assert watcher.status()["errors"] == []
    assert app.extensions["risk"].models.fraud.version == first


def test_policy_hot_swap_and_an_explicit_policy_file_wins(
    make_app: AppFactory, models_dir: Path, tmp_path: Path
) -> None:
    registry_admin.add_policy(models_dir, policy_file(tmp_path, "policy-test-2"), actor="test")
    app, watcher = watched(make_app, models_dir)
    assert score(app, "before")["policy_version"] == DEFAULT_POLICY
    assert watcher.status()["serving"]["policy_source"] == "registry"
    registry_admin.promote(models_dir, "policy", "policy-test-2", actor="test")
    assert watcher.check_now()
    assert score(app, "promoted")["policy_version"] == "policy-test-2"
    registry_admin.rollback(models_dir, "policy", actor="test")
    assert watcher.check_now()
    assert score(app, "rolled-back")["policy_version"] == DEFAULT_POLICY

    pinned = policy_file(tmp_path, "policy-pinned")
    app, watcher = watched(make_app, models_dir, POLICY_FILE=str(pinned))
    assert score(app, "pinned")["policy_version"] == "policy-pinned"
    registry_admin.promote(models_dir, "policy", "policy-test-2", actor="test")
    assert not watcher.check_now()
    assert score(app, "still-pinned")["policy_version"] == "policy-pinned"
    assert watcher.status()["serving"]["policy_source"] == "file"


def test_a_challenger_is_loaded_for_shadow_and_reused_when_promoted(
    make_app: AppFactory, models_dir: Path, tmp_path: Path
) -> None:
    second = clone_fraud(models_dir, "b")
    app, watcher = watched(make_app, models_dir)
    scorer = app.extensions["risk"]
    assert scorer.shadow is None
    registry_admin.set_challenger(models_dir, "fraud", second, actor="test")
    registry_admin.add_policy(models_dir, policy_file(tmp_path, "policy-shadow"), actor="test")
    registry_admin.set_challenger(models_dir, "policy", "policy-shadow", actor="test")
    assert watcher.check_now()
    shadow = scorer.shadow
    assert shadow.challengers == {"fraud": second, "policy": "policy-shadow"}
    assert shadow.models.fraud.version == second
    assert shadow.models.credit is scorer.models.credit  # not challenged: the champion
    assert shadow.policy.version == "policy-shadow"
    assert scorer.models.fraud.version != second  # the champion still decides

    challengers = lifecycle.load_challengers(models_dir)
    assert challengers.models is not None and challengers.models.fraud is not None
    assert challengers.models.fraud.version == second and challengers.models.credit is None
    assert challengers.policy is not None and challengers.policy.version == "policy-shadow"

    registry_admin.promote(models_dir, "fraud", second, actor="test")
    assert Registry(models_dir).challenger("fraud") is None  # the challenger won
    assert watcher.check_now()
    assert scorer.models.fraud is shadow.models.fraud  # already loaded: not loaded twice
    assert scorer.shadow.challengers == {"policy": "policy-shadow"}
    registry_admin.set_challenger(models_dir, "policy", None, actor="test")
    assert watcher.check_now()
    assert scorer.shadow is None
    assert lifecycle.load_challengers(models_dir) == lifecycle.Challengers(None, None)


def test_a_bad_challenger_does_not_stop_the_service(make_app: AppFactory, models_dir: Path) -> None:
    bad = clone_fraud(models_dir, "bad")
    (models_dir / "fraud" / bad / "fraud_meta.json").write_text("{}")
    set_registry(models_dir, "fraud", challenger=bad)
    app, watcher = watched(make_app, models_dir)
    assert app.extensions["risk"].shadow is None
    assert watcher.status()["errors"][0]["role"] == "challenger"
    assert score(app, "ok")["model_versions"]["fraud"] != bad


# -- loading at start-up ----------------------------------------------------------------------
def test_the_serving_policy_file_then_registry_then_packaged_default(
    models_dir: Path, tmp_path: Path
) -> None:
    registry_admin.add_policy(models_dir, policy_file(tmp_path, "policy-test-2"), actor="test")
    registry_admin.promote(models_dir, "policy", "policy-test-2", actor="test")
    assert service.load_policy(None, models_dir).version == "policy-test-2"
    assert service.load_policy(None).version == DEFAULT_POLICY
    pinned = policy_file(tmp_path, "policy-pinned")
    assert service.load_policy(str(pinned), models_dir).version == "policy-pinned"
    set_registry(models_dir, "policy", champion=None, history=[])
    assert service.load_policy(None, models_dir).version == DEFAULT_POLICY
    del_policy = json.loads((models_dir / "registry.json").read_text())
    del del_policy["policy"]  # a models dir from before policies were bundles
    (models_dir / "registry.json").write_text(json.dumps(del_policy))
    assert service.load_policy(None, models_dir).version == DEFAULT_POLICY
    assert service.load_champions(models_dir).fraud is not None


def test_a_tampered_policy_champion_stops_start_up(models_dir: Path) -> None:
    path = models_dir / "policy" / DEFAULT_POLICY / "policy.toml"
    path.write_text(path.read_text().replace('"challenge"', '"review"', 1))
    with pytest.raises(BundleError, match="tampered"):
        service.load_policy(None, models_dir)
    with pytest.raises(BundleError, match="tampered"):
        ChampionWatcher(models_dir).load()


def test_a_renamed_bundle_is_refused(models_dir: Path) -> None:
    champion = Registry(models_dir).champion("fraud") or ""
    renamed = models_dir / "fraud" / "fraud-20990101-0000000000"
    shutil.copytree(models_dir / "fraud" / champion, renamed)
    with pytest.raises(BundleError, match="renamed"):
        registry_admin.promote(models_dir, "fraud", renamed.name, actor="test")


# -- admin functions, CLI and audit -----------------------------------------------------------
def test_policy_add_is_validated_and_never_overwrites(models_dir: Path, tmp_path: Path) -> None:
    source = policy_file(tmp_path, "policy-test-2")
    result = registry_admin.add_policy(models_dir, source, actor="ana")
    assert result["version"] == "policy-test-2" and result["created"]
    assert not registry_admin.add_policy(models_dir, source, actor="ana")["created"]  # same file
    other = policy_file(tmp_path, "policy-test-2", "\n# another byte, another digest\n")
    with pytest.raises(BundleError, match="already exists with other content"):
        registry_admin.add_policy(models_dir, other, actor="ana")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = "policy-bad"\n[[rules]]\nname = "r"\nwhen = [["ammount", ">", 1]]\n'
        'action = "review"\nreason = "x"\n'
    )
    with pytest.raises(BundleError, match="unknown field 'ammount'"):
        registry_admin.add_policy(models_dir, bad, actor="ana")
    same = policy_file(tmp_path, "policy-test-2").read_bytes()  # `other` overwrote the file
    upload = registry_admin.add_policy_bytes(models_dir, same, actor="key-1")
    assert upload["version"] == "policy-test-2" and not upload["created"]
    assert Registry(models_dir).versions("policy") == [DEFAULT_POLICY, "policy-test-2"]
    outcomes = [(e["action"], e["version"], e["outcome"]) for e in audit.read(models_dir)]
    assert outcomes == [
        ("policy_add", "policy-test-2", "ok"),
        ("policy_add", "policy-test-2", "ok"),
        ("policy_add", "policy-test-2", "refused"),
        ("policy_add", None, "refused"),
        ("policy_add", "policy-test-2", "ok"),
    ]


def test_every_admin_action_is_audited_with_its_actor(models_dir: Path) -> None:
    first = Registry(models_dir).champion("fraud")
    second = clone_fraud(models_dir, "b")
    registry_admin.promote(models_dir, "fraud", second, actor="key-ops")
    registry_admin.rollback(models_dir, "fraud", actor="key-ops")
    registry_admin.set_challenger(models_dir, "fraud", second, actor="key-ops")
    registry_admin.set_challenger(models_dir, "fraud", None, actor="key-ops")
    with pytest.raises(BundleError, match="no previous credit champion"):
        registry_admin.rollback(models_dir, "credit", actor="key-ops")
    with pytest.raises(BundleError, match="invalid version"):
        registry_admin.promote(models_dir, "fraud", "../../etc", actor="key-ops")
    with pytest.raises(BundleError, match="unknown kind"):
        registry_admin.promote(models_dir, "weather", "x", actor="key-ops")
    entries = audit.read(models_dir)
    assert [
        (e["action"], e["kind"], e["version"], e["previous"], e["outcome"]) for e in entries
    ] == [
        ("promote", "fraud", second, first, "ok"),
        ("rollback", "fraud", first, second, "ok"),
        ("shadow", "fraud", second, None, "ok"),
        ("shadow_clear", "fraud", None, second, "ok"),
        ("rollback", "credit", None, Registry(models_dir).champion("credit"), "refused"),
        ("promote", "fraud", "../../etc", first, "refused"),
        ("promote", "weather", "x", None, "refused"),
    ]
    assert {e["actor"] for e in entries} == {"key-ops"}
    assert all(e["ts"].endswith("Z") and e["host"] for e in entries)
    assert entries[4]["reason"].startswith("no previous credit champion")
    lines = (models_dir / "audit.jsonl").read_text().splitlines()
    assert len(lines) == len(entries) and json.loads(lines[0])["action"] == "promote"


def test_a_tampered_version_cannot_be_promoted_and_the_refusal_is_audited(
    models_dir: Path,
) -> None:
    bad = clone_fraud(models_dir, "bad")
    (models_dir / "fraud" / bad / "fraud_lgbm.txt").write_text("tree\n")
    with pytest.raises(BundleError, match="tampered"):
        registry_admin.promote(models_dir, "fraud", bad, actor="ops")
    with pytest.raises(BundleError, match="tampered"):
        registry_admin.set_challenger(models_dir, "fraud", bad, actor="ops")
    assert Registry(models_dir).champion("fraud") != bad
    assert [e["outcome"] for e in audit.read(models_dir)] == ["refused", "refused"]


def test_status_reports_registry_watcher_and_audit(make_app: AppFactory, models_dir: Path) -> None:
    second = clone_fraud(models_dir, "b")
    _, watcher = watched(make_app, models_dir)
    registry_admin.set_challenger(models_dir, "fraud", second, actor="ops")
    watcher.check_now()
    state = registry_admin.status(models_dir, watcher)
    assert state["registry"]["fraud"]["challenger"] == second
    assert second in state["registry"]["fraud"]["versions"]
    assert state["registry"]["policy"]["champion"] == DEFAULT_POLICY
    serving = state["watcher"]["serving"]
    assert serving["challengers"]["fraud"] == second
    assert serving["champions"]["policy"] == DEFAULT_POLICY
    assert state["watcher"]["errors"] == [] and state["watcher"]["last_check"]
    assert state["recent_audit"][-1]["action"] == "shadow"
    json.dumps(state)  # what an admin route returns as JSON


def test_models_verify_load_fails_a_bundle_that_verifies_but_does_not_load(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second fraud version whose booster names a feature the manifest does not (its hash
    updated, so the hashes verify): `models verify` passes it, `--load` loads it as a worker
    would and fails it; the others load. `--load` with another action is a usage error."""
    m = ["--models", str(models_dir)]
    broken = clone_fraud(models_dir, "renamed-feature")
    directory = Registry(models_dir).bundle_dir("fraud", broken)
    booster = directory / "fraud_lgbm.txt"
    text = booster.read_text()
    first = json.loads((directory / "manifest.json").read_text())["feature_names"][0]
    booster.write_text(text.replace(f"feature_names={first} ", "feature_names=renamed ", 1))
    manifest = json.loads((directory / "manifest.json").read_text())
    write_manifest(directory, list(manifest["files"]), {**manifest, "files": None})
    assert main(["models", "verify", *m]) == 0
    assert f"ok      {broken}\n" in capsys.readouterr().out
    assert main(["models", "verify", "--load", *m]) == 2
    captured = capsys.readouterr()
    assert f"FAILED  {broken}: fraud bundle {broken}: booster features differ" in captured.out
    champion = Registry(models_dir).champion("fraud")
    assert f"ok      {champion}  (loaded)" in captured.out
    assert "1 bundle(s) failed verification" in captured.err
    assert main(["models", "list", "--load", *m]) == 2
    assert "--load goes with verify" in capsys.readouterr().err


def test_cli_policies_and_models_commands(
    models_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    m = ["--models", str(models_dir)]
    second = clone_fraud(models_dir, "b")
    source = policy_file(tmp_path, "policy-test-2")
    assert main(["policies", "add", str(source), *m]) == 0
    assert main(["policies", "promote", "policy-test-2", *m]) == 0
    assert main(["policies", "list", *m]) == 0
    out = capsys.readouterr().out
    assert "policy added policy-test-2" in out and "* policy-test-2" in out
    assert f"  {DEFAULT_POLICY}" in out

    assert main(["models", "shadow", second, *m]) == 0
    assert main(["models", "list", *m]) == 0
    out = capsys.readouterr().out
    assert f"~ {second}" in out and "policy" not in out  # models list never lists policies
    assert main(["models", "verify", *m]) == 0
    assert "policy" not in capsys.readouterr().out
    assert main(["models", "shadow", "--clear", "--kind", "fraud", *m]) == 0
    assert main(["policies", "rollback", *m]) == 0
    assert main(["policies", "verify", *m]) == 0
    assert main(["policies", "show", DEFAULT_POLICY, *m]) == 0
    out = capsys.readouterr().out
    assert "policy champion is now policy-2026-11-1" in out and "ok      policy-test-2" in out
    assert '"policy_version": "policy-2026-11-1"' in out and "[[rules]]" in out

    assert main(["policies", "rollback", *m]) == 2
    assert "no previous policy champion" in capsys.readouterr().err
    assert main(["models", "audit", *m]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and all("alice@" in line for line in out)
    assert "policy_add policy policy-test-2" in out[0]
    assert out[-1].endswith("refused: no previous policy champion to roll back to")
    assert main(["policies", "audit", *m]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_the_committed_models_have_the_default_policy_as_champion() -> None:
    registry = Registry(MODELS)
    assert registry.champion("policy") == DEFAULT_POLICY
    policy = verification.load_serving_policy(None, MODELS)
    assert policy.digest == verification.load_serving_policy(default_policy_path(), None).digest
