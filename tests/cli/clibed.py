"""Helpers for the CLI tests: a live broker over HTTP, an isolated CLI workspace."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apibed import Bed, bed_setup

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
    database: Database, moto: Any, tmp_path: Path, **extra: Any
) -> tuple[Any, dict[str, str]]:
    """The broker app over fresh moto roles and the test policy."""
    roles, _policy_dir, base = bed_setup(database.url, moto, tmp_path)
    config = {
        **base,
        "DEVICE_POLL_INTERVAL_SECONDS": 1,
        **extra,
    }
    return create_app(config), roles


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

    def sign_in(
        self, live: LiveBroker, email: str = DEV[0], groups: tuple[str, ...] = DEV[1]
    ) -> str:
        """Save a broker token for `email` as `broker login` would; return it."""
        token = live.bed.token(email, groups)
        self.store().save(live.url, token, email=email, expires_at=utcnow() + timedelta(hours=1))
        return token


BROKER_SHIM = """#!{python}
# The `broker` console script with the engineer's commands registered (until
# broker.cli.build() registers them itself, this adds them; afterwards it is a no-op).
import sys
from broker.cli import build
from broker.cli.client import register
group = build()
if "creds" not in group.commands:
    register(group)
sys.exit(group.main(prog_name="broker"))
"""
