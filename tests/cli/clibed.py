"""Helpers for the CLI tests: a live broker over HTTP, an isolated CLI workspace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apibed import Bed, bed_setup
from liveserver import serve

from broker import create_app
from broker.cli.client.store import Store
from broker.db import Database, get_database
from broker.models import AuditEvent, utcnow

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEV = ("dev@example.com", ("developers",))


@dataclass
class LiveBroker:
    """A broker served over real HTTP on 127.0.0.1, plus the API test bed over the same app."""

    url: str
    bed: Bed
    roles: dict[str, str]

    def events(self, action: str) -> list[AuditEvent]:
        """Audit events with this action, oldest first."""
        with self.bed.app.app_context(), get_database().session() as session:
            return list(
                session.scalars(
                    sa.select(AuditEvent)
                    .where(AuditEvent.action == action)
                    .order_by(AuditEvent.seq)
                )
            )


def broker_app(
    database: Database,
    moto: Any,
    tmp_path: Path,
    *,
    policy_files: Mapping[str, str] | None = None,
    **extra: Any,
) -> tuple[Any, dict[str, str]]:
    """The broker app over fresh moto roles and the test policy.

    `policy_files` are added to the policy directory; `{read}`/`{admin}` in them become the
    role ARNs.
    """
    roles, policy_dir, base = bed_setup(database.url, moto, tmp_path)
    for name, text in (policy_files or {}).items():
        (policy_dir / name).write_text(text.format(**roles))
    config = {
        **base,
        "DEVICE_POLL_INTERVAL_SECONDS": 1,
        **extra,
    }
    return create_app(config), roles


@contextmanager
def live_broker(app: Any, roles: dict[str, str], moto: Any, tmp_path: Path) -> Iterator[LiveBroker]:
    """Serve `app` over HTTP on loopback for the length of the block."""
    server, thread = serve(app)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield LiveBroker(
            url, Bed(app, app.test_client(), moto, roles, tmp_path / "policies"), roles
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        app.extensions["broker.db"].dispose()


@dataclass
class Workspace:
    """An isolated home for the CLI: its config dir, AWS files, and a `broker` on PATH."""

    home: Path
    config_dir: Path
    credentials: Path
    config: Path
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def broker(self) -> str:
        """The `broker` executable subprocesses run."""
        return str(self.bin_dir / "broker")

    def store(self) -> Store:
        """The CLI's store (file-backed: no keyring)."""
        return Store(self.config_dir, None)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a program (`self.broker`, `aws`, ...) in this workspace's environment."""
        return subprocess.run(
            list(args),
            env=dict(env if env is not None else self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sign_in(
        self, live: LiveBroker, email: str = DEV[0], groups: tuple[str, ...] = DEV[1]
    ) -> str:
        """Save a broker token for `email` as `broker login` would; return it."""
        token = live.bed.token(email, groups)
        self.store().save(live.url, token, email=email, expires_at=utcnow() + timedelta(hours=1))
        return token


BROKER_SHIM = """#!{python}
# The `broker` console script, run by this test's Python.
from broker.cli import main
main()
"""
