"""Deployment files: docker-compose.yml is valid and sets only known settings; the Dockerfile is
multi-stage, non-root, and starts the documented command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KNOWN = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def our_services(data: dict) -> dict[str, dict]:
    """The services that run our image (the others are postgres and the mail catcher)."""
    return {name: service for name, service in data["services"].items()
            if service.get("image", "").startswith("communique") or "build" in service}


def test_compose_sets_only_variables_the_settings_know():
    """Every COMMUNIQUE_* variable in docker-compose.yml, commented examples included, is a Settings field."""
    services = our_services(compose())
    assert set(services) == {"app", "worker"}
    for name, service in services.items():
        environment = service["environment"]
        assert isinstance(environment, dict), name
        unknown = set(environment) - KNOWN
        assert not unknown, f"{name} sets variables Settings does not know: {unknown}"
        assert environment["COMMUNIQUE_ENV"] == "production"
        assert environment["COMMUNIQUE_DATABASE_URL"].startswith("postgresql://")
    commented = set(re.findall(r"#\s*(COMMUNIQUE_[A-Z_]+):", COMPOSE.read_text()))
    assert commented and not commented - KNOWN, commented - KNOWN


def test_compose_services_and_volumes():
    """app, a scalable worker, postgres with a named volume and healthcheck, and Mailpit on 1025."""
    data = compose()
    services = data["services"]
    assert {"app", "worker", "postgres", "mailpit"} <= set(services)
    assert services["worker"]["command"] == ["communique", "worker"]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]
    assert "command" not in services["app"]  # the image's default: the documented gunicorn line
    postgres = services["postgres"]
    assert "healthcheck" in postgres
    assert any(v.startswith("postgres:") for v in postgres["volumes"])
    assert "postgres" in data["volumes"]
    assert services["app"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["app"]["environment"]["COMMUNIQUE_SMTP_HOST"] == "mailpit"
    assert services["app"]["environment"]["COMMUNIQUE_SMTP_PORT"] == "1025"


def test_docker_compose_config_accepts_the_file():
    """`docker-compose config -q` accepts the file, and refuses it without a secret key."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("SKIPPED LOUDLY: docker-compose is not installed (apt-get install docker-compose)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("COMMUNIQUE_", "POSTGRES_"))}
    command = [binary, "-f", str(COMPOSE), "config", "-q"]
    ok = subprocess.run(command, env={**environ, "COMMUNIQUE_SECRET_KEY": "k" * 48,
                                                 "COMMUNIQUE_METRICS_TOKEN": "m" * 32}, cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(command, env=environ, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0
    assert "COMMUNIQUE_SECRET_KEY" in missing.stderr


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions, split by stage (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root():
    """The final stage is a slim Python 3.11 image, runs as a non-root user, installs no build tools."""
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert "PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert any(line.startswith("COPY --from=build") for line in final)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final_text
    for line in final:
        if line.startswith("ENV "):
            for name in re.findall(r"(COMMUNIQUE_[A-Z_]+)=", line):
                assert name in KNOWN, name


def test_image_starts_the_command_the_readme_documents():
    """The image's CMD is the gunicorn line README.md gives for production."""
    [cmd] = [line for line in _stages()[-1] if line.startswith("CMD ")]
    command = shlex.join(json.loads(cmd[len("CMD "):]))
    assert command.startswith("gunicorn ") and "'service:create_app()'" in command
    readme = (ROOT / "README.md").read_text()
    documented = command.replace("'service:create_app()'", '"service:create_app()"')
    assert documented in readme, f"README.md should show: {documented}"


def test_operations_guide_lists_every_setting_as_the_readme_does():
    """docs/operations.md carries README.md's settings table, row for row, and names every setting."""
    readme_rows = [line for line in (ROOT / "README.md").read_text().splitlines()
                   if line.startswith("| `COMMUNIQUE_")]
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert readme_rows
    missing = [row for row in readme_rows if row not in guide]
    assert not missing, f"docs/operations.md is out of sync with README.md: {missing}"
    table = "\n".join(readme_rows)
    for name in sorted(KNOWN):
        # README abbreviates pairs: `COMMUNIQUE_SMTP_HOST` / `_PORT`
        parts = name.split("_")
        shorthands = [f"`_{'_'.join(parts[i:])}`" for i in range(1, len(parts))]
        assert name in table or any(s in table for s in shorthands), f"{name} is not documented"
