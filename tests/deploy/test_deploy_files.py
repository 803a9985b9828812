"""The deployment files as files: Dockerfile, compose, the env example, systemd units, names.

What runs here: the Dockerfile is parsed (no engine to build it: see test_deploy_entrypoint.py
for its runtime layout exercised by hand); compose.yaml is resolved by `docker-compose config`
(Debian's docker-compose 1.29, which validates against its Compose Specification schema;
nothing is started); the units go through `systemd-analyze verify` and `security --offline`
in a scratch root. The Helm chart has its own module.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import Settings, validate
from broker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


# --- names ----------------------------------------------------------------------------------


def test_every_broker_variable_named_in_deploy_files_is_a_setting() -> None:
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for name in re.findall(r"\bBROKER_([A-Z][A-Z0-9_]*)", path.read_text())
        if name not in Settings.model_fields
    }
    assert not unknown, "an unknown BROKER_* variable stops the broker at start"


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    """A small parser: comments dropped, `\\` continuations joined, stages counted by FROM."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), " ".join(args.split()), stage))
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_dockerfile_builds_a_wheel_then_a_slim_runtime() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("# syntax=docker/dockerfile:1")
    froms = [i.args for i in dockerfile() if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim", text, re.MULTILINE)
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(map(int, base)) >= tuple(map(int, required.removeprefix(">=").split(".")))
    build = [i.args for i in dockerfile() if i.keyword == "RUN" and i.stage == 0]
    assert any("pip wheel" in r and "gunicorn" in r for r in build)
    runtime = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert "--find-links /wheels" in runtime and "--no-index" in runtime


def test_dockerfile_runs_as_a_numeric_non_root_user_to_the_end() -> None:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit()
    last_user = max(n for n, i in enumerate(final_stage()) if i.keyword == "USER")
    assert not [i for i in final_stage()[last_user:] if i.keyword == "RUN"]


def _ignored(relative: str) -> bool:
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(
        fnmatch.fnmatch(relative, p.removeprefix("**/")) or relative.startswith(p + "/")
        for p in patterns
    )


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    result = []
    for instruction in dockerfile():
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    assert copies()
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _ignored(source), f"{source} is excluded by Dockerfile.dockerignore"


def test_dockerfile_entrypoint_and_healthcheck_are_the_copied_entrypoint() -> None:
    destinations = {src[0]: dest for src, dest in copies()}
    entrypoint = destinations["deploy/entrypoint.sh"]
    # entrypoint.sh finds gunicorn.conf.py beside itself.
    assert Path(destinations["deploy/gunicorn.conf.py"]).parent == Path(entrypoint).parent
    final = {i.keyword: i.args for i in final_stage()}
    assert final["ENTRYPOINT"] == f'["{entrypoint}"]'
    assert final["CMD"] == '["web"]'
    assert final["HEALTHCHECK"].endswith(f'CMD ["{entrypoint}", "healthcheck"]')
    assert "/readyz" in (DEPLOY / "entrypoint.sh").read_text()
    assert (DEPLOY / "entrypoint.sh").stat().st_mode & 0o111


def test_dockerfile_keeps_the_root_filesystem_read_only() -> None:
    runtime = " ".join(i.args for i in final_stage())
    # The instance folder is a mount (test_deploy_entrypoint.py checks Flask looks there).
    assert "ln -s /var/lib/broker /opt/broker/var/broker-instance" in runtime
    env = " ".join(i.args for i in final_stage() if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env


def test_wheel_carries_every_file_the_package_needs() -> None:
    """The image installs the wheel: a data file missing from package-data is missing there."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = tool["package-data"]["broker"]
    # In pyproject.toml, packages.find also finds folders without __init__.py unless told not to.
    namespaces = tool["packages"]["find"].get("namespaces", True)
    package = ROOT / "broker"
    data = {path for pattern in patterns for path in package.glob(pattern)}  # setuptools' globs
    missing = []
    for path in package.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        if path.suffix == ".py" and (namespaces or _in_package(path, package)):
            continue  # a module of a package setuptools finds
        if path not in data:
            missing.append(path.relative_to(package).as_posix())
    assert not missing, "add these to [tool.setuptools.package-data] in pyproject.toml"


def _in_package(path: Path, package: Path) -> bool:
    directory = path.parent
    while True:
        if not (directory / "__init__.py").exists():
            return False
        if directory == package:
            return True
        directory = directory.parent


# --- compose --------------------------------------------------------------------------------


def compose(env_lines: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on a copy of deploy/ whose broker.env sets `env_lines`."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is installed by scripts/setup --test")
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("helm", "systemd"))
    (tmp_path / "policies").mkdir()
    env = [
        line
        for line in (DEPLOY / "broker.env.example").read_text().splitlines()
        if line.split("=", 1)[0] not in env_lines
    ]
    env += [f"{k}={v}" for k, v in env_lines.items()]
    (copy / "broker.env").write_text("\n".join(env) + "\n")
    return subprocess.run(
        [binary, "--env-file", "broker.env", "-f", "compose.yaml", "config"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )


def test_compose_runs_migrations_first_then_web_and_scheduler(tmp_path: Path) -> None:
    result = compose({"POSTGRES_PASSWORD": "compose0test"}, tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    assert sorted(services) == ["migrate", "postgres", "scheduler", "web"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "scheduler"):
        service = services[name]
        assert service["command"] == [name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["web"]["healthcheck"]["test"][-1] == "healthcheck"
    assert services["web"]["ports"][0].startswith("127.0.0.1:8000:8000")


def test_compose_containers_are_read_only_non_root_and_get_settings_from_the_env_file(
    tmp_path: Path,
) -> None:
    result = compose({"POSTGRES_PASSWORD": "compose0test"}, tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    for name in ("migrate", "web", "scheduler"):
        service = services[name]
        assert service["read_only"] is True
        assert set(service["tmpfs"]) == {"/tmp", "/var/lib/broker"}
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        (policies,) = service["volumes"]
        assert (policies["target"], policies["read_only"]) == ("/etc/broker/policies", True)
        env = service["environment"]
        assert env["BROKER_DATABASE_URL"] == (
            "postgresql+psycopg://broker:compose0test@postgres:5432/broker"
        )
        assert env["BROKER_BASE_URL"] == "https://broker.example.com"  # from broker.env
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "compose0test"
    assert "SECRET" not in (DEPLOY / "compose.yaml").read_text().replace("# ", "")


def test_compose_refuses_to_start_without_the_database_password(tmp_path: Path) -> None:
    result = compose({"POSTGRES_PASSWORD": ""}, tmp_path)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in broker.env" in result.stderr


# --- the env example --------------------------------------------------------------------------


def example_env() -> dict[str, str]:
    lines = (DEPLOY / "broker.env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_env_example_is_plain_key_value_for_docker_and_systemd() -> None:
    for key, value in example_env().items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), key
        assert not value.startswith(("'", '"')), f"{key}: docker would keep the quotes"


def test_env_example_holds_no_secret_and_never_starts_a_broker() -> None:
    env = example_env()
    for key in ("BROKER_SECRET_KEY", "BROKER_OIDC_CLIENT_SECRET", "POSTGRES_PASSWORD"):
        assert env[key] == "", f"{key} must stay empty in the example"
    config = {k.removeprefix("BROKER_"): v for k, v in env.items() if k.startswith("BROKER_")}
    with pytest.raises(ConfigError, match="BROKER_SECRET_KEY"):
        validate(config)


# --- systemd ----------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat (Environment=, SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_units_are_the_three_processes() -> None:
    assert [u.name for u in UNITS] == [
        "broker-migrate.service",
        "broker-scheduler.service",
        "broker-web.service",
    ]
    for path in UNITS:
        mode = path.stem.removeprefix("broker-")
        service = unit(path)["Service"]
        assert service["ExecStart"] == [f"/opt/broker/deploy/entrypoint.sh {mode}"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.stem)
def test_unit_runs_unprivileged_with_its_settings_and_one_writable_place(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["User"] == ["broker"]
    assert service["EnvironmentFile"] == ["/etc/broker/broker.env"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ReadWritePaths"] == ["/var/lib/broker"]
    assert service["StateDirectory"] == ["broker"]
    assert service["CapabilityBoundingSet"] == [""]
    env = " ".join(service["Environment"])
    assert "PATH=/opt/broker/bin:" in env and "PYTHONDONTWRITEBYTECODE=1" in env


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for systemd-analyze: the units, systemd's own units, the binaries they run."""
    root = tmp_path_factory.mktemp("systemd-root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "opt/broker/deploy").mkdir(parents=True)
    shutil.copy2(DEPLOY / "entrypoint.sh", root / "opt/broker/deploy/entrypoint.sh")
    (root / "etc/systemd/system").mkdir(parents=True)
    for path in UNITS:
        shutil.copy2(path, root / "etc/systemd/system" / path.name)
    return root


def _systemd_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze is part of Debian's systemd package")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_units_verify_cleanly(scratch_root: Path) -> None:
    result = _systemd_analyze("verify", f"--root={scratch_root}", *(u.name for u in UNITS))
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.stem)
def test_units_rate_ok_in_systemds_security_review(path: Path, scratch_root: Path) -> None:
    # --threshold is in tenths: 20 means an overall exposure of at most 2.0 ("OK").
    result = _systemd_analyze(
        "security", "--offline=true", f"--root={scratch_root}", "--threshold=20", path.name
    )
    assert result.returncode == 0, result.stdout[-600:] + result.stderr
