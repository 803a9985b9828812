"""`broker` exits with a code scripts can act on: 1 error, 2 usage, 3 not signed in, 4 denied,
5 unavailable (docs/cli.md). Each is reached through the real command, in a subprocess."""

from __future__ import annotations

import socket
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from clibed import LiveBroker, Workspace

from broker.errors import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_NOT_SIGNED_IN,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code_for,
)
from broker.models import utcnow

HOUR = timedelta(hours=1)
EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def broker(workspace: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [workspace.broker, *args],
        env={**workspace.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_usage_error_is_2(workspace: Workspace) -> None:
    assert broker(workspace, "creds").returncode == EXIT_USAGE
    assert broker(workspace, "--no-such-flag").returncode == EXIT_USAGE


def test_not_signed_in_is_3(workspace: Workspace, live: LiveBroker) -> None:
    result = broker(workspace, "whoami", BROKER_URL=live.url)
    assert result.returncode == EXIT_NOT_SIGNED_IN, result.stderr
    assert "broker login" in result.stderr


def test_denied_is_4(workspace: Workspace, live: LiveBroker) -> None:
    workspace.sign_in(live)
    # app-admin is for the sre group; this developer is not in it
    result = broker(workspace, "creds", "app-admin", "--profile", "p", BROKER_URL=live.url)
    assert result.returncode == EXIT_DENIED, result.stderr
    assert "Error" in result.stderr


def test_unavailable_is_5(workspace: Workspace, live: LiveBroker) -> None:
    token = workspace.sign_in(live)
    down = f"http://127.0.0.1:{_closed_port()}"  # a broker that has gone away
    workspace.store().save(down, token, email="dev@example.com", expires_at=utcnow() + HOUR)
    result = broker(workspace, "whoami", BROKER_URL=down)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr


def test_admin_command_with_its_database_down_is_5_without_a_traceback(
    workspace: Workspace, tmp_path: Any
) -> None:
    bad = broker(
        workspace,
        "audit",
        "verify",
        BROKER_ENV="testing",
        BROKER_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/x",
        BROKER_POLICY_DIR=str(EXAMPLE_POLICIES),
        BROKER_DB_CONNECT_TIMEOUT_SECONDS="2",
        BROKER_INSTANCE_PATH=str(tmp_path),
    )
    assert bad.returncode == EXIT_UNAVAILABLE, bad.stderr
    assert "Traceback" not in bad.stderr and "database did not answer" in bad.stderr


def test_admin_command_refused_by_the_broker_is_1(workspace: Workspace, tmp_path: Any) -> None:
    server = {
        "BROKER_ENV": "testing",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
        "BROKER_POLICY_DIR": str(EXAMPLE_POLICIES),
        "BROKER_INSTANCE_PATH": str(tmp_path),
    }
    mint = ("token", "mint", "--email", "nobody@example.com")
    unmigrated = broker(workspace, *mint, **server)
    assert unmigrated.returncode == EXIT_ERROR, unmigrated.stderr
    assert "broker db upgrade" in unmigrated.stderr and "Traceback" not in unmigrated.stderr
    assert broker(workspace, "db", "upgrade", **server).returncode == 0
    unknown = broker(workspace, *mint, **server)
    assert unknown.returncode == EXIT_ERROR and "Nobody with email" in unknown.stderr


def test_status_to_exit_code_table() -> None:
    assert [exit_code_for(s) for s in (400, 401, 403, 404, 409, 429, 500, 502, 503)] == [
        EXIT_ERROR,
        EXIT_NOT_SIGNED_IN,
        EXIT_DENIED,
        EXIT_ERROR,
        EXIT_ERROR,
        EXIT_UNAVAILABLE,
        EXIT_ERROR,
        EXIT_UNAVAILABLE,
        EXIT_UNAVAILABLE,
    ]
