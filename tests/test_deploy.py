"""The deployment files stay in step with the code: no Docker engine runs here, so these checks
(plus hadolint in `make lint`) are what keeps the Dockerfile and docker-compose.yml honest."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from risk_service.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_installs_exactly_as_make_install_does() -> None:
    """CI runs `make install`; the image must take the same steps, so CI exercises them: the
    pinned requirements, then the project without dependencies (`make install` with uv,
    pinned itself; the image with pip, which installs the same pins)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    uv = re.search(r"^UV := \$\(BIN\)/uv pip install .*$", makefile, re.M)
    assert uv is not None and re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.M)
    assert "pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)" in makefile
    assert "\t$(UV) -r requirements.lock\n\t$(UV) --no-deps -e .\n" in makefile
    assert "RUN pip install -r requirements.lock" in dockerfile
    # the project's install compiles its C extension: the compiler comes and goes in one step
    step = re.search(r"^RUN apt-get update(?:.*\\\n)*.*$", dockerfile, re.M)
    assert step is not None
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in step.group(0)
    assert "&& pip install --no-deps . " in step.group(0)
    assert "apt-get purge -y --auto-remove gcc libc6-dev" in step.group(0)
    assert re.search(r"^USER 10001$", dockerfile, re.M)  # not root
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert "COPY models models" in dockerfile  # models baked in (or mounted over /app/models)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None and '"risk", "serve"' in cmd.group(1)


def test_compose_runs_several_workers_only_on_the_shared_stores() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"risk", "redis", "postgres"} <= set(services)
    risk = services["risk"]
    command = risk["command"]
    assert command[:2] == ["risk", "serve"]
    workers = int(command[command.index("--workers") + 1])
    env = risk["environment"]
    assert workers > 1 and env["RISK_STATE_URL"].startswith("redis://redis:")
    assert env["RISK_DECISION_LOG_URL"].startswith("postgresql://")
    assert "--host" in command and "RISK_API_KEYS_FILE" in env  # keys: required off loopback
    for name in env:
        assert name.startswith("RISK_") and name[len("RISK_") :] in DEFAULTS, name
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./var/")  # never committed (/var/ is git-ignored)
    assert set(risk["depends_on"]) == {"redis", "postgres"}


def test_the_readme_says_how_to_run_it_in_production() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up" in readme
    for line in readme.splitlines():
        if line.startswith("risk keys create"):
            shlex.split(line)  # a command a reader can paste
    assert "RISK_STATE_URL" in readme and "RISK_DECISION_LOG_URL" in readme


def test_operations_doc_names_only_real_settings_and_metrics() -> None:
    """docs/operations.md tables: every setting is in config.DEFAULTS, every metric exists."""
    from risk_service import metrics

    text = (ROOT / "docs" / "operations.md").read_text()
    settings = set(re.findall(r"^\| `([A-Z_]+)`", text, re.M))
    settings |= set(re.findall(r"^\| `[A-Z_]+`, `([A-Z_]+)`", text, re.M))
    assert len(settings) > 15
    assert settings <= set(DEFAULTS), sorted(settings - set(DEFAULTS))
    scraped = metrics.render()[0].decode()
    for name in re.findall(r"^\| `(risk_[a-z_]+)`", text, re.M):
        base = name.removesuffix("_total")
        assert f"# HELP {base}" in scraped or f"# HELP {name}" in scraped, name
