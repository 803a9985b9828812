"""deploy/entrypoint.sh as the image runs it: non-root, read-only root, writable mounts only.

There is no container engine here, so the test lays out what deploy/Dockerfile builds: a venv
at <root>/opt/broker holding the broker package (its dependencies come from the project's venv
through a .pth file), the instance folder linked to a separate writable directory, and the
entrypoint and gunicorn settings where the Dockerfile copies them. Each mode then runs in a
private mount namespace where / (this checkout and that venv included) is read-only and only
<root>/tmp, <root>/home and <root>/instance are writable, as uid 10001, the image's USER.
Making / read-only and changing uid need root; CI runs as root.

Settings are production ones; the identity provider and AWS endpoints are closed loopback
ports, so nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UID = 10001
"""The image's USER (deploy/Dockerfile)."""


@dataclass(frozen=True)
class Image:
    """The image's layout under `root`, and how to run a command inside it."""

    root: Path

    @property
    def venv(self) -> Path:
        """/opt/broker: the venv the image installs the wheels into."""
        return self.root / "opt" / "broker"

    @property
    def entrypoint(self) -> Path:
        """Where the Dockerfile copies deploy/entrypoint.sh."""
        return self.venv / "deploy" / "entrypoint.sh"

    @property
    def instance(self) -> Path:
        """Where the instance folder link points: /var/lib/broker in the image (a mount)."""
        return self.root / "instance"

    @property
    def writable(self) -> tuple[Path, ...]:
        """The mounts of a container run: the instance folder, /tmp, and a HOME inside /tmp."""
        return (self.instance, self.root / "tmp", self.root / "home")

    def env(self, **extra: str) -> dict[str, str]:
        """The image's ENV plus production settings whose outside parts are closed ports."""
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "BROKER_SECRET_KEY": "s" * 48,
            "BROKER_BASE_URL": "https://broker.example.test",
            "BROKER_OIDC_ISSUER": "https://127.0.0.1:9",
            "BROKER_OIDC_CLIENT_ID": "broker",
            "BROKER_POLICY_DIR": str(ROOT / "policies"),
            "BROKER_AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        env.update(extra)
        return env

    def command(self, *argv: str | Path) -> list[str]:
        """`argv` in a mount namespace where only `writable` can be written, as UID."""
        # Read-only: the mounts holding /, /tmp, this checkout and the image (often all just /).
        held = sorted({"/", tempfile.gettempdir(), str(ROOT), str(self.root)})
        script = ["set -e"]
        for path in held:
            quoted = shlex.quote(path)
            script.append(f'mount -o remount,bind,ro "$(findmnt -n -o TARGET -T {quoted})"')
        for path in self.writable:
            quoted = shlex.quote(str(path))
            script += [f"mount --bind {quoted} {quoted}", f"mount -o remount,bind,rw {quoted}"]
        script.append(
            f'exec setpriv --reuid={UID} --regid={UID} --clear-groups --no-new-privs -- "$@"'
        )
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"] + [
            "\n".join(script),
            "sandbox",
            *map(str, argv),
        ]

    def run(
        self, *argv: str | Path, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr as text."""
        return subprocess.run(
            self.command(*argv),
            env=self.env(**env),
            cwd=self.instance,  # WORKDIR /var/lib/broker
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _console_script(venv: Path, name: str) -> None:
    """What pip writes for a console script, from the installed distribution's entry point."""
    (ep,) = entry_points(group="console_scripts", name=name)
    module, _, attr = ep.value.partition(":")
    script = venv / "bin" / name
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {attr}\n"
        f"sys.exit({attr}())\n"
    )
    script.chmod(0o755)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user with no special rights can run `path` (every parent searchable)."""
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in real.parents) and bool(real.stat().st_mode & 0o001)


def _base_python() -> Path | None:
    """A Python of this version that uid 10001 can run (a pyenv build under /root is not one)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        Path(sys.executable).resolve(),
        Path("/usr/local/bin", version),
        Path("/usr/bin", version),
    ]
    return next((c for c in candidates if c.exists() and _reachable_by_others(c)), None)


def _build_image(root: Path, python: Path) -> Image:
    image = Image(root)
    subprocess.run([python, "-m", "venv", "--without-pip", image.venv], check=True)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(image.venv), "platbase": str(image.venv)})
    )
    shutil.copytree(ROOT / "broker", site / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    # pip compiles at install; the read-only image cannot write __pycache__ at run time.
    subprocess.run([python, "-m", "compileall", "-q", site / "broker"], check=True)
    (site / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for name in ("broker", "gunicorn"):
        _console_script(image.venv, name)
    (image.venv / "deploy").mkdir()
    shutil.copy2(DEPLOY / "entrypoint.sh", image.entrypoint)
    shutil.copy2(DEPLOY / "gunicorn.conf.py", image.venv / "deploy" / "gunicorn.conf.py")
    # As in the Dockerfile: ln -s /var/lib/broker /opt/broker/var/broker-instance
    (image.venv / "var").mkdir()
    (image.venv / "var" / "broker-instance").symlink_to(image.instance)
    for path in image.writable:
        path.mkdir()
        os.chown(path, UID, UID)
        path.chmod(0o700)
    return image


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The image's layout in a fresh directory uid 10001 can reach (pytest's are 0700 root)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv to run as the image does (CI has them)")
    python = _base_python()
    if python is None:
        pytest.skip(f"no Python {sys.version_info[:2]} that a non-root user may run")
    root = Path(tempfile.mkdtemp(prefix="broker-image-"))
    root.chmod(0o755)
    try:
        yield _build_image(root, python)
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def migrated(image: Image) -> subprocess.CompletedProcess[str]:
    """`entrypoint.sh migrate` on the default database: SQLite in the instance folder."""
    return image.run(image.entrypoint, "migrate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class Started:
    """A long-running mode under the sandbox; stopped with SIGTERM like a container runtime."""

    def __init__(self, image: Image, logs: Path, mode: str, **env: str) -> None:
        self.stdout_path, self.stderr_path = logs / f"{mode}.out", logs / f"{mode}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                image.command(image.entrypoint, mode),
                env=image.env(**env),
                cwd=image.instance,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def output(self) -> tuple[str, str]:
        return self.stdout_path.read_text(), self.stderr_path.read_text()

    def wait_for(self, check: Any, what: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode} before {what}: {self.output()}"
                )
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {seconds} s: {self.output()}")

    def stop(self) -> int:
        """SIGTERM, then the exit code; SIGKILL to its process group if it does not stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
            raise


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on any plain-text line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sandbox_is_unprivileged_with_a_read_only_root(image: Image) -> None:
    probe = """
import errno, os, sys, tempfile, flask
print(os.getuid())
print(flask.Flask("broker", instance_relative_config=True).instance_path)
for path in sys.argv[1:]:
    try:
        with open(os.path.join(path, "probe"), "w"):
            pass
        print("writable", path)
    except OSError as exc:
        print("refused" if exc.errno in (errno.EROFS, errno.EACCES) else exc, path)
"""
    places = [*image.writable, image.venv, ROOT, Path(tempfile.gettempdir())]
    result = image.run("python", "-c", probe, *places)

    assert result.returncode == 0, result.stderr
    uid, instance_path, *verdicts = result.stdout.splitlines()
    assert uid == str(UID)
    # The Dockerfile's link is where Flask looks for an installed package's instance folder.
    assert instance_path == str(image.venv / "var" / "broker-instance")
    assert verdicts == [f"writable {p}" for p in image.writable] + [
        f"refused {p}" for p in places[len(image.writable) :]
    ]


def test_migrate_mode_creates_the_database_in_the_instance_folder(
    migrated: subprocess.CompletedProcess[str], image: Image
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout
    assert (image.instance / "broker.db").is_file()


def test_web_mode_serves_with_json_logs_until_sigterm(
    migrated: subprocess.CompletedProcess[str], image: Image, tmp_path: Path
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # As systemd's Type=notify (broker-web.service) would: READY=1 on NOTIFY_SOCKET once booted.
    notify_path = image.root / "tmp" / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o666)
    notify.settimeout(20)
    web = Started(
        image,
        tmp_path,
        "web",
        WEB_HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        NOTIFY_SOCKET=str(notify_path),
    )
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        web.wait_for(lambda: _reachable(base + "/healthz"), "an answer on /healthz")
        status, body, headers = _get(
            base + "/healthz?code=never-logged", **{"X-Request-Id": "deploy-test-0001"}
        )
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["X-Request-Id"] == "deploy-test-0001"

        # The HEALTHCHECK: exit 0 exactly when /readyz answers 200 (whatever /readyz checks).
        ready_status, ready_body, _ = _get(base + "/readyz")
        check = image.run(image.entrypoint, "healthcheck", PORT=str(port))
        assert (check.returncode == 0) == (ready_status == 200), (ready_body, check.stderr)
        assert json.loads(ready_body)["checks"]  # the named parts, for the operator
    finally:
        code = web.stop()
        notify.close()
        notify_path.unlink()

    assert code == 0
    stdout, stderr = web.output()
    access = [e for e in _json_lines(stdout) if e["logger"] == "gunicorn.access"]
    asked = next(e for e in access if e["request_id"] == "deploy-test-0001")
    assert asked["event"] == "http.request"
    assert (asked["method"], asked["path"], asked["status"]) == ("GET", "/healthz", 200)
    assert asked["client"] == "127.0.0.1"
    assert asked["duration_ms"] >= 0
    messages = [e["msg"] for e in _json_lines(stderr)]
    assert any(m.startswith("Listening at: http://127.0.0.1:") for m in messages)
    assert any(m.startswith("Booting worker") for m in messages)
    assert "never-logged" not in stdout + stderr  # query strings carry authorization codes


def _reachable(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def test_scheduler_mode_runs_until_sigterm(
    migrated: subprocess.CompletedProcess[str], image: Image, tmp_path: Path
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    scheduler = Started(image, tmp_path, "scheduler")
    try:
        scheduler.wait_for(lambda: "scheduler started" in scheduler.output()[1], "a start")
    finally:
        code = scheduler.stop()
    assert code == 0, scheduler.output()
    assert "scheduler stopped" in scheduler.output()[1]


def test_doctor_mode_is_broker_doctor(image: Image) -> None:
    result = image.run(image.entrypoint, "doctor", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: broker doctor")


def test_broker_mode_runs_any_command_on_the_read_only_policies(image: Image) -> None:
    result = image.run(image.entrypoint, "broker", "policy", "check", ROOT / "policies")
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_mode_is_refused_with_the_list_of_modes(image: Image) -> None:
    result = image.run(image.entrypoint, "serve")
    assert result.returncode == 64
    assert "web|scheduler|migrate|doctor|healthcheck" in result.stderr
    assert "'serve'" in result.stderr
