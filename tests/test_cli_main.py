"""The `broker` command works on a laptop with no server configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BROKER = str(Path(sys.executable).parent / "broker")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run(
        [BROKER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_command_without_loading_an_app() -> None:
    result = _run("--help")
    assert result.returncode == 0 and result.stderr == ""
    for command in ("login", "creds", "configure", "policy", "audit", "scheduler", "dev"):
        assert f"  {command} " in result.stdout


def test_a_server_command_without_configuration_says_what_is_missing() -> None:
    result = _run("db", "upgrade")
    assert result.returncode != 0
    assert "BROKER_SECRET_KEY" in result.stderr and "Traceback" not in result.stderr
