"""Training configuration: costs, budgets and split lengths, from TOML with packaged defaults."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from training.datasets import DataError


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The packaged defaults, overridden key by key by the file at `path`."""
    config = tomllib.loads(resources.files(__package__).joinpath("default.toml").read_text())
    if path is None:
        return config
    try:
        override = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"--config {path}: {exc}") from None
    for section, values in override.items():
        if section not in config or not isinstance(values, dict):
            raise DataError(f"--config {path}: unknown section [{section}]")
        unknown = set(values) - set(config[section])
        if unknown:
            raise DataError(f"--config {path}: unknown key(s) in [{section}]: {sorted(unknown)}")
        config[section].update(values)
    return config
