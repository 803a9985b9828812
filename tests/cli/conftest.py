"""Fixtures for the engineer's CLI: a live broker over HTTP (werkzeug on loopback) over moto
roles, an isolated CLI config directory and AWS files, and a `broker` executable for
subprocesses (the AWS CLI runs `credential_process` as one)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clibed import BROKER_SHIM, VENV_BIN, LiveBroker, Workspace, broker_app, live_broker
from click.testing import CliRunner, Result

from broker.cli.client import standalone
from broker.cli.client.state import ClientState
from broker.db import Database


@pytest.fixture
def live(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[LiveBroker]:
    """A broker over HTTP on loopback (SQLite and PostgreSQL)."""
    app, roles = broker_app(database, moto_server, tmp_path)
    with live_broker(app, roles, moto_server, tmp_path) as broker:
        yield broker


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Isolated CLI state for in-process runs (env set here) and subprocesses (`.env`)."""
    home = tmp_path / "home"
    aws = home / ".aws"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "broker"
    shim.write_text(BROKER_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    space = Workspace(
        home, home / ".config" / "broker", aws / "credentials", aws / "config", bin_dir
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "BROKER_"))
        and k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    }
    env.update(
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        BROKER_CONFIG_DIR=str(space.config_dir),
        AWS_SHARED_CREDENTIALS_FILE=str(space.credentials),
        AWS_CONFIG_FILE=str(space.config),
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    space.env = env
    for name in (
        "BROKER_URL",
        "BROKER_CREDENTIAL_CACHE_FILE",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "BROWSER",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("BROKER_CONFIG_DIR", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, env[name])
    return space


@pytest.fixture
def cli(workspace: Workspace) -> Callable[..., Result]:
    """Run `broker ...` in-process with CliRunner and a file-backed store.

    The commands run on their own group: the `broker` FlaskGroup keeps its ScriptInfo in
    `ctx.obj`, so a ClientState can only be injected below it. Subprocess tests run the
    real `broker` command tree.
    """
    group = standalone()

    def run(*args: str, state: ClientState | None = None, **kwargs: Any) -> Result:
        runner = CliRunner()
        obj = state or ClientState(store=workspace.store())
        return runner.invoke(group, list(args), obj=obj, catch_exceptions=False, **kwargs)

    return run
