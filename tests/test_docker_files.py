"""Dockerfile, docker-compose.yml and the README's docker lines, checked by reading them (Docker cannot
run here): pinned images, no VOLUME, stdout-only logs, an HTTP health check for mcp, a bounded Redis
that never evicts sessions, and a `docker run` line that works as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from msev15 import ROOT
from msev15.settings import Settings, load_settings
from tests.helpers import free_port
from tests.mcp_fixtures import make_orders_db, wait_for_port
from tests.test_env_example import docker_env_file

EXACT_TAG = re.compile(r"^[a-z0-9./_-]+(:v?[0-9]+\.[0-9]+\.[0-9]+[A-Za-z0-9._-]*)?(@sha256:[0-9a-f]{64})?$")
# PostgreSQL numbers its releases major.minor (17.6): two parts are its exact version.
EXACT_POSTGRES = re.compile(r"^postgres:[0-9]+\.[0-9]+(-[A-Za-z0-9._-]+)?$")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def compose() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return found


def pinned(image: str) -> bool:
    """An exact version tag (`redis:7.4.6-alpine`) or a digest; `redis:7-alpine` or `latest` move."""
    if EXACT_POSTGRES.match(image):
        return True
    return bool(EXACT_TAG.match(image)) and (":" in image.split("/")[-1] or "@sha256:" in image)


def test_pinned_means_an_exact_version() -> None:
    assert pinned("python:3.11.14-slim-trixie") and pinned("redis:7.4.6-alpine")
    assert pinned("prom/prometheus:v3.5.0")  # a `v` before an exact version is still exact
    assert not any(pinned(i) for i in ("python:3.11-slim", "redis:7-alpine", "redis", "redis:latest"))
    assert not any(pinned(i) for i in ("prom/prometheus:v3", "grafana/grafana:latest"))
    assert pinned("postgres:17.6-alpine") and not any(pinned(i) for i in ("postgres:17-alpine", "postgres"))


def test_dockerfile_pins_its_base_images_and_declares_no_volume() -> None:
    steps = dockerfile()
    bases = [args.split()[0] for keyword, args in steps if keyword == "FROM"]
    assert bases and all(pinned(image) for image in bases), bases
    assert "VOLUME" not in {keyword for keyword, _ in steps}
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "LOG_TO_FILE=false" in env and "LOG_FILE_PATH" not in env  # stdout only
    assert "/app/logs" not in (ROOT / "Dockerfile").read_text()
    [check] = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:9080/health/liveness" in check
    [user] = [args for keyword, args in steps if keyword == "USER"]
    assert user == "app"
    assert [args for keyword, args in steps if keyword == "CMD"] == [
        '["hypercorn", "--config", "hypercorn.toml", "app:app"]'
    ]


def test_compose_pins_images_keeps_logs_on_stdout_and_bounds_redis() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if "build" not in service:
            assert pinned(service["image"]), (name, service["image"])
        for volume in service.get("volumes", []):
            assert not str(volume).endswith("/app/logs"), (name, volume)
    assert "logs" not in (compose().get("volumes") or {})

    command = [str(part) for part in services["redis"]["command"]]
    memory = command[command.index("--maxmemory") + 1]
    assert re.fullmatch(r"[0-9]+(mb|gb)", memory), memory
    policy = command[command.index("--maxmemory-policy") + 1]
    assert policy == "noeviction"  # sessions are never evicted silently: writes fail loudly instead
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_compose_runs_two_api_replicas_on_redis_and_one_postgres() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert pinned(postgres["image"]) and postgres["image"].startswith("postgres:")
    assert "postgres:/var/lib/postgresql/data" in postgres["volumes"] and "postgres" in compose()["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres  # reachable by the services only
    api, mcp = services["api"], services["mcp"]
    assert api["deploy"]["replicas"] == 2 and api["ports"] == ["9080-9081:9080"]  # a host port each
    assert api["environment"]["SESSION_STORE"] == "redis"
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    url = api["environment"]["DATABASE_URL"]
    assert url == mcp["environment"]["DATABASE_URL"]  # the catalog comes from the same database
    user, db = postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]
    assert url.startswith(f"postgresql://{user}:") and url.endswith(f"@postgres:5432/{db}")
    secret = postgres["environment"]["POSTGRES_PASSWORD"]
    assert secret.startswith("${POSTGRES_PASSWORD") and secret in url  # one password, from the environment
    settings = Settings(
        _env_file=None,
        database_url=url.replace(secret, "pw"),
        db_pool_size=api["environment"]["DB_POOL_SIZE"],
    )
    assert settings.database_label == "postgresql://postgres:5432/shop"


def test_compose_env_file_is_read_literally_and_valid() -> None:
    [env_file] = {str(s.get("env_file")) for s in compose()["services"].values() if s.get("env_file")}
    values = docker_env_file(ROOT / env_file)
    assert set(values) <= {name.upper() for name in Settings.model_fields}
    assert values["LOG_TO_FILE"] == "false" and "LOG_FILE_PATH" not in values
    assert all("#" not in value for value in values.values())
    settings = load_settings(_env_file=None, **{k.lower(): v for k, v in values.items() if v != ""})
    assert settings.model_provider == "offline" and settings.session_store == "redis"


def test_the_mcp_health_check_is_http_and_passes_against_the_real_server(tmp_path: Path) -> None:
    mcp = compose()["services"]["mcp"]
    test = mcp["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and "http://127.0.0.1:8000/health" in test[-1]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "msev15.mcp_server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--db", str(make_orders_db(tmp_path / "orders.db"))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        check = [sys.executable, *test[2:-1], test[-1].replace(":8000/", f":{port}/")]
        assert subprocess.run(check, timeout=20).returncode == 0  # noqa: S603 - the compose check itself
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "healthy"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def readme_commands(program: str) -> list[list[str]]:
    """Every `program ...` command in the README's sh blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == [program, "run"]:
                commands.append(words)
    return commands


def test_the_readme_docker_run_line_works_as_written() -> None:
    [run] = readme_commands("docker")
    assert "..." not in " ".join(run)
    image = run[-1]
    assert f"docker build -t {image} ." in (ROOT / "README.md").read_text()
    env: dict[str, str] = {}
    flags = iter(run[2:-1])
    for flag in flags:
        if flag in ("-e", "--env"):
            name, _, value = next(flags).partition("=")
            env[name] = value
        elif flag in ("-v", "--volume"):
            source, target = next(flags).split(":")[:2]
            assert target == "/app/data" and "/" not in source  # a named volume, writable by `app`
        elif flag in ("-p", "--publish"):
            assert next(flags).endswith(":9080")
        else:
            assert flag == "--rm", flag
    assert set(env) <= {name.upper() for name in Settings.model_fields}
    load_settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # every value is valid


def test_the_build_context_keeps_the_page_and_its_vendored_files() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not {"static", "static/vendor", "templates"} & ignored
