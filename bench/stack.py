"""The processes a benchmark runs against, each as users run it, and stopped afterwards.

- moto server (``python -m moto.server``) as its own process on a free loopback port;
- the broker's web app under gunicorn (``deploy/gunicorn.conf.py``, ``wsgi:app``), configured
  only through ``BROKER_*`` variables, as the deployment does;
- the scheduler process (``broker scheduler``);
- the ``broker`` command for migrations and tokens (``broker db upgrade``, ``broker token mint``);
- databases of their own: a temporary SQLite file, or a schema in a PostgreSQL database created
  for this run (``broker_bench_<pid>``) and dropped afterwards; never the tests' ``test``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BROKER = str(VENV_BIN / "broker")
GUNICORN = str(VENV_BIN / "gunicorn")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(port: int, path: str, *, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``GET path`` answers on the port, or fail naming the process' last words."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not answer GET {path} within {timeout:.0f} s")


@dataclass
class Processes:
    """Every process a bench run started, stopped in reverse order (SIGTERM, then SIGKILL)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Remember a process to stop."""
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
        """Stop one process (and forget it)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        """Stop everything still running."""
        for proc in reversed(list(self.started)):
            self.stop(proc)


class Moto:
    """moto server in its own process."""

    def __init__(self, procs: Processes, logdir: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        log = open(logdir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = procs.add(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_ENV},
            )
        )
        wait_http(self.port, "/moto-api/", timeout=30, proc=self.proc)

    def client(self, service: str) -> Any:
        """A boto3 client for this moto (dummy credentials, one attempt, keep-alive pool)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, max_pool_connections=32),
        )


def create_role(iam: Any, name: str, *, path: str = "/bench/") -> str:
    """A role the broker may assume (source identity and tags allowed); its ARN."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
            }
        ],
    }
    role = iam.create_role(
        RoleName=name,
        Path=path,
        AssumeRolePolicyDocument=json.dumps(trust),
        MaxSessionDuration=3600,
    )
    iam.put_role_policy(
        RoleName=name,
        PolicyName="Read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )
    arn: str = role["Role"]["Arn"]
    return arn


# -- databases --------------------------------------------------------------------------------


class PostgresDatabase:
    """``broker_bench_<pid>`` on 127.0.0.1:5432, created for this run and dropped after it."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"broker_bench_{os.getpid()}"
        self._admin = PG_ADMIN_URL
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        base = self._admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        self.url = f"{base}/{self.name}"

    def schema_url(self, label: str) -> str:
        """A URL whose tables live in a fresh schema of their own (one per scenario)."""
        import psycopg

        schema = f"{label}_{uuid.uuid4().hex[:6]}"
        plain = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return f"{self.url}?options=-csearch_path%3D{schema}"

    def drop(self) -> None:
        """Drop the database (any connection still open is ended)."""
        import psycopg

        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @staticmethod
    def available() -> bool:
        """Whether PostgreSQL answers at the admin URL."""
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
                return True
        except Exception:  # noqa: BLE001 - any failure means "not here"
            return False


@dataclass(frozen=True)
class Backend:
    """Where one scenario keeps its data: ``url(label)`` gives a fresh, empty database."""

    name: str  # sqlite | postgresql
    tmp: Path
    pg: PostgresDatabase | None = None

    def url(self, label: str) -> str:
        """A fresh database URL for one scenario."""
        if self.pg is not None:
            return self.pg.schema_url(label)
        return f"sqlite:///{self.tmp / f'{label}-{uuid.uuid4().hex[:6]}.db'}"


# -- the broker, as deployed --------------------------------------------------------------------


def broker_env(
    database_url: str, policy_dir: Path, moto: Moto | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a broker process runs with: BROKER_* settings only (plus AWS dummies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(AWS_ENV)
    env.update(
        {
            "BROKER_ENV": "testing",
            "BROKER_DATABASE_URL": database_url,
            "BROKER_POLICY_DIR": str(policy_dir),
            "BROKER_SECRET_KEY": "b" * 40,
        }
    )
    if moto is not None:
        env["BROKER_AWS_ENDPOINT_URL"] = moto.endpoint_url
    env.update(extra or {})
    return env


def broker_cli(env: Mapping[str, str], *args: str, timeout: float = 120) -> str:
    """Run the ``broker`` command; its standard output (raises with stderr on failure)."""
    done = subprocess.run(
        [BROKER, *args], env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"broker {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def mint_tokens(env: Mapping[str, str], people: Mapping[str, str]) -> dict[str, str]:
    """``broker token mint --create`` for each email -> comma-separated groups, in parallel."""
    running = {
        email: subprocess.Popen(
            [BROKER, "token", "mint", "--email", email, "--create", "--groups", groups],
            env=dict(env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for email, groups in people.items()
    }
    tokens: dict[str, str] = {}
    for email, proc in running.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"broker token mint --email {email} failed: {err[-2000:]}")
        tokens[email] = out.strip().splitlines()[-1]
    return tokens


class Gunicorn:
    """The web app under gunicorn with the deployment's config file, on a free loopback port."""

    def __init__(
        self, procs: Processes, env: Mapping[str, str], logdir: Path, *, workers: int, label: str
    ) -> None:
        self.port = free_port()
        metrics_dir = logdir / f"prometheus-{label}"
        metrics_dir.mkdir(exist_ok=True)
        self.access_log = logdir / f"gunicorn-{label}.access.log"
        self.error_log = logdir / f"gunicorn-{label}.error.log"
        run_env = dict(env)
        run_env.update(
            {
                "WEB_HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WEB_CONCURRENCY": str(workers),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
        )
        self.proc = procs.add(
            subprocess.Popen(
                [GUNICORN, "--config", str(ROOT / "deploy" / "gunicorn.conf.py"), "wsgi:app"],
                env=run_env,
                cwd=ROOT,
                stdout=open(self.access_log, "wb"),  # noqa: SIM115 - the process owns it
                stderr=open(self.error_log, "wb"),  # noqa: SIM115
            )
        )
        wait_http(self.port, "/healthz", timeout=120, proc=self.proc)
        self._ready_workers(workers)

    def _ready_workers(self, workers: int) -> None:
        """Touch the app until every worker has served (each imports the app on its own)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = self.error_log.read_text(errors="replace")
            if text.count("Booting worker") >= workers:
                break
            time.sleep(0.1)
        for _ in range(workers * 4):
            request(self.port, "GET", "/healthz")

    def access_durations_ms(self, path: str) -> list[float]:
        """Server-side durations of every request to ``path`` (gunicorn's access log)."""
        found: list[float] = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("path") == path and "duration_ms" in entry:
                found.append(float(entry["duration_ms"]))
        return found


def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Mapping[str, Any] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    """One HTTP request to the broker; (status, decoded JSON or text)."""
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        if response.getheader("Connection", "").lower() == "close" and not own:
            connection.close()
    finally:
        if own:
            connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


class Scheduler:
    """``broker scheduler`` in its own process."""

    def __init__(self, procs: Processes, env: Mapping[str, str], logdir: Path, label: str) -> None:
        self.log = logdir / f"scheduler-{label}.log"
        self.procs = procs
        self.proc = procs.add(
            subprocess.Popen(
                [BROKER, "scheduler"],
                env=dict(env),
                cwd=ROOT,
                stdout=open(self.log, "wb"),  # noqa: SIM115 - the process owns it
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 60
        while "scheduler running" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"broker scheduler did not start: {self.log.read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as an operator would."""
        self.procs.stop(self.proc, grace=30)


@contextlib.contextmanager
def started(procs: Processes) -> Iterator[Processes]:
    """Stop every process on the way out, whatever happened."""
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield procs
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
