"""What must hold before a bundle may serve: hashes, names, feature set, a policy that parses.

Kept apart from loading (`lifecycle.py`), and free of LightGBM and the model code, so that
`risk serve` checks every champion before gunicorn starts (a clear error beats a worker
that fails to boot) in a fraction of a second rather than the ~2 s that importing LightGBM
(and through it scikit-learn and SciPy) takes; the workers load and verify again.
"""

from __future__ import annotations

from pathlib import Path

from risk_service import features as fs
from risk_service.bundles import (
    MODEL_KINDS,
    POLICY_FILE,
    POLICY_KIND,
    BundleError,
    Registry,
    VerifiedBundle,
    check_features,
    verify_bundle,
)
from risk_service.policy import Policy, PolicyError, default_policy_path
from risk_service.requests import REQUEST_FIELDS


def policy_fields() -> frozenset[str]:
    """The names a policy's rules may use: request fields and every feature."""
    return frozenset(REQUEST_FIELDS) | set(fs.FEATURE_NAMES) | set(fs.CREDIT_FEATURE_NAMES)


def verify_version(models_dir: Path, kind: str, version: str) -> VerifiedBundle:
    """Everything checked before a version may serve; raise BundleError if anything fails.

    Hashes of every file, manifest version = directory name, and for models
    scored from events the feature-set version and ordered feature names; for a
    policy, that it parses and validates against this code's fields.
    """
    bundle, _ = verify_and_parse(Path(models_dir), kind, version)
    return bundle


def verify_and_parse(
    models_dir: Path, kind: str, version: str
) -> tuple[VerifiedBundle, Policy | None]:
    """`verify_version`, and the parsed policy for a policy bundle (None for a model)."""
    registry = Registry(models_dir)
    directory = registry.bundle_dir(kind, version)
    if not directory.is_dir():
        known = ", ".join(registry.versions(kind)) or "none"
        raise BundleError(f"no {kind} version {version!r} in {models_dir} (known: {known})")
    bundle = verify_bundle(directory, expected_kind=kind)
    if bundle.version != directory.name:
        raise BundleError(
            f"bundle {directory} says it is version {bundle.version!r}; refusing a renamed bundle"
        )
    if kind == POLICY_KIND:
        return bundle, _policy_from(bundle)
    if bundle.manifest.get("feature_source", "events") == "events":
        names = fs.FEATURE_NAMES if kind == "fraud" else fs.CREDIT_FEATURE_NAMES
        check_features(bundle.manifest, fs.FEATURE_SET_VERSION, names)
    return bundle, None


def _policy_from(bundle: VerifiedBundle) -> Policy:
    try:
        policy = Policy.load(bundle.path(POLICY_FILE), policy_fields())
    except PolicyError as exc:
        raise BundleError(f"policy {bundle.version} does not validate: {exc}") from None
    # The digest is of the bytes actually parsed: a change after the hash check is caught.
    if policy.digest != bundle.manifest["files"][POLICY_FILE]:
        raise BundleError(f"policy {bundle.version}: {POLICY_FILE} changed while being loaded")
    if policy.version != bundle.version or bundle.manifest["policy_version"] != bundle.version:
        raise BundleError(f"policy bundle {bundle.version} holds policy version {policy.version!r}")
    return policy


def role_versions(models_dir: Path, role: str) -> dict[str, str | None]:
    """The registry's model version of each kind in ``role`` (champion or challenger), None
    where there is none; a fraud champion is required (the service scores nothing without
    it)."""
    data = Registry(Path(models_dir)).read()
    versions: dict[str, str | None] = {kind: data[kind][role] for kind in MODEL_KINDS}
    if role == "champion" and versions["fraud"] is None:
        raise no_fraud_champion(models_dir)
    return versions


def verify_champions(models_dir: Path) -> None:
    """Every model champion verified as `verify_version` does, without loading it."""
    for kind, version in role_versions(models_dir, "champion").items():
        if version is not None:
            verify_version(models_dir, kind, version)


def no_fraud_champion(models_dir: Path) -> BundleError:
    return BundleError(f"no fraud champion in {models_dir}: run `risk train` first")


def load_serving_policy(policy_file: str | Path | None, models_dir: Path | None) -> Policy:
    """POLICY_FILE when set; else the registry's policy champion; else the packaged default."""
    if policy_file:
        return Policy.load(Path(policy_file), policy_fields())
    if models_dir is not None:
        version = Registry(Path(models_dir)).champion(POLICY_KIND)
        if version is not None:
            _, policy = verify_and_parse(Path(models_dir), POLICY_KIND, version)
            assert policy is not None
            return policy
    return Policy.load(default_policy_path(), policy_fields())
