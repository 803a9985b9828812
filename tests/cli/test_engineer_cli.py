"""The engineer's CLI is light and says what it does: no server libraries, admin commands apart,
`--version`, JSON output, did-you-mean, capped durations, a subshell from `exec`, completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from clibed import ROOT, LiveBroker, Workspace
from click.testing import CliRunner, Result

from broker.cli import ADMIN_COMMANDS, build
from broker.cli.group import ADMIN_SECTION

Cli = Callable[..., Result]

SERVER_LIBRARIES = (
    "flask",
    "werkzeug",
    "jinja2",
    "sqlalchemy",
    "alembic",
    "authlib",
    "psycopg",
    "apscheduler",
    "prometheus_client",
)
# Installed before anything runs: any import of a server library fails, as in a client-only
# install where they are absent.
BLOCK = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {SERVER_LIBRARIES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (client-only install)")
        return None
sys.meta_path.insert(0, _Absent())
"""


def python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_help_and_engineer_commands_load_no_server_library() -> None:
    script = (
        "import json, sys\n"
        "from broker.cli import build\n"
        "group = build()\n"
        "try:\n"
        "    group.main(['--help'], prog_name='broker')\n"
        "except SystemExit:\n"
        "    pass\n"
        "after_help = sorted(m for m in sys.modules if m.partition('.')[0] in "
        f"{(*SERVER_LIBRARIES, 'requests', 'boto3', 'botocore')!r})\n"
        "import pkgutil, importlib, broker.cli.client as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('broker.cli.client.' + m.name)\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] in "
        f"{SERVER_LIBRARIES!r})\n"
        "print(json.dumps([after_help, loaded]))\n"
    )
    result = python(script)
    assert result.returncode == 0, result.stderr
    after_help, loaded = json.loads(result.stdout.splitlines()[-1])
    assert after_help == []  # not even requests: `broker --help` only needs click
    assert loaded == []


@pytest.mark.slow
def test_client_commands_run_without_server_libraries(
    live: LiveBroker, workspace: Workspace
) -> None:
    workspace.sign_in(live)
    client_only = workspace.bin_dir / "broker-client-only"
    client_only.write_text(f"#!{sys.executable}\n{BLOCK}\nfrom broker.cli import main\nmain()\n")
    client_only.chmod(0o755)
    broker = str(client_only)

    def run(*args: str) -> str:
        result = workspace.run(broker, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "credential-process" in run("--help")
    assert json.loads(run("whoami", "--format", "json"))["email"] == "dev@example.com"
    assert "app-read" in run("roles")
    assert json.loads(run("credential-process", "app-read"))["Version"] == 1
    assert "Wrote profile [light]" in run("creds", "app-read", "--profile", "light")
    assert "credential_process" in run("configure", "app-read", "--profile", "light-proc")
    assert run("exec", "app-read", "--", "python3", "-c", "print('ran')").strip() == "ran"
    # The blocker works: an admin command needs the server's libraries.
    admin = workspace.run(broker, "db", "upgrade")
    assert admin.returncode != 0 and "client-only install" in admin.stderr


def test_help_puts_admin_commands_apart() -> None:
    result = CliRunner().invoke(build(), ["--help"])
    assert result.exit_code == 0, result.output
    engineer, _, admin = result.output.partition(ADMIN_SECTION)
    for name in ("login", "whoami", "roles", "request", "creds", "configure", "exec", "console"):
        assert f"  {name} " in engineer and f"  {name} " not in admin
    for name in ADMIN_COMMANDS:
        assert f"  {name} " in admin and f"  {name} " not in engineer


@pytest.mark.parametrize("name", sorted(ADMIN_COMMANDS))
def test_admin_summaries_are_the_commands_own(name: str) -> None:
    command = ADMIN_COMMANDS[name].load()
    assert command.name == name
    assert ADMIN_COMMANDS[name].summary == command.get_short_help_str(500)


def test_version() -> None:
    result = CliRunner().invoke(build(), ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"broker, version {version('broker')}"


@pytest.mark.slow
def test_admin_commands_keep_their_names_and_find_the_app(
    workspace: Workspace, tmp_path: Path
) -> None:
    env = dict(
        workspace.env,
        BROKER_ENV="testing",
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path / 'admin.db'}",
        BROKER_POLICY_DIR=str(ROOT / "policies"),
    )
    upgraded = workspace.run(workspace.broker, "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    verified = workspace.run(workspace.broker, "audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert "audit chain OK" in verified.stdout


def test_roles_and_whoami_as_json(cli: Cli, live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    roles = cli("roles", "--format", "json")
    assert roles.exit_code == 0, roles.output
    listed = {e["id"]: e for e in json.loads(roles.stdout)["entitlements"]}
    assert listed["app-read"]["verdict"] == "allow" and listed["app-read"]["region"]
    assert "app-admin" not in listed  # like the table: only what you may use, unless --all
    every = json.loads(cli("roles", "--all", "--format", "json").stdout)["entitlements"]
    assert "app-admin" in {e["id"] for e in every}
    me = json.loads(cli("whoami", "--format", "json").stdout)
    assert me["email"] == "dev@example.com" and me["broker"] == live.url
    assert me["sign_in_expires_at"]


def test_unknown_entitlement_gets_a_did_you_mean(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    workspace.sign_in(live)
    for args in (("creds", "app-raed"), ("request", "app-raed"), ("exec", "app-raed", "--", "x")):
        result = cli(*args)
        assert result.exit_code == 1
        assert "There is no entitlement 'app-raed'" in result.stderr, args
        assert "Did you mean app-read" in result.stderr
    far = cli("creds", "zzz")
    assert "There is no entitlement 'zzz'" in far.stderr and "Did you mean" not in far.stderr
    # One that exists but is refused keeps the policy's reason.
    denied = cli("creds", "app-admin")
    assert denied.exit_code == 4  # EXIT_DENIED (docs/cli.md)
    assert "Denied by policy" in denied.stderr and "There is no" not in denied.stderr


def test_a_capped_duration_is_said(cli: Cli, live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    capped = cli("creds", "app-read", "--duration", "10h")
    assert capped.exit_code == 0, capped.output
    assert "Note: asked for 10h, got 1h" in capped.stderr  # the role allows one hour
    exact = cli("creds", "app-read", "--duration", "30m")
    assert exact.exit_code == 0 and "Note:" not in exact.stderr


@pytest.mark.slow
def test_exec_without_a_command_opens_your_shell(
    live: LiveBroker, workspace: Workspace, tmp_path: Path
) -> None:
    workspace.sign_in(live)
    record = tmp_path / "shell-env.json"
    shell = tmp_path / "fake-shell"
    shell.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], **os.environ}}))\n"
        "sys.exit(3)\n"
    )
    shell.chmod(0o755)
    env = dict(workspace.env, SHELL=str(shell), FLASK_RUN_FROM_CLI="true", AWS_PROFILE="other")
    for args in (("exec", "app-read"), ("exec", "app-read", "--")):
        record.unlink(missing_ok=True)
        result = workspace.run(workspace.broker, *args, env=env)
        assert result.returncode == 3, result.stderr  # the shell's exit code
        assert f"Starting {shell} with app-read's credentials" in result.stderr
        seen = json.loads(record.read_text())
        assert seen["argv"] == []
        assert seen["AWS_ACCESS_KEY_ID"].startswith("ASIA")
        assert seen["AWS_REGION"] == seen["AWS_DEFAULT_REGION"] == "us-east-1"
        assert "FLASK_RUN_FROM_CLI" not in seen and "AWS_PROFILE" not in seen
    # Nor does the broker command itself set it for a command's child.
    plain = dict(workspace.env)
    shown = workspace.run(
        workspace.broker,
        "exec",
        "app-read",
        "--",
        "python3",
        "-c",
        "import os; print(os.environ.get('FLASK_RUN_FROM_CLI'))",
        env=plain,
    )
    assert shown.stdout.strip() == "None", shown.stderr


def test_shell_completion_as_documented(workspace: Workspace) -> None:
    source = workspace.run(
        workspace.broker, env=dict(workspace.env, _BROKER_COMPLETE="bash_source")
    )
    assert source.returncode == 0 and "_broker_completion" in source.stdout
    words = dict(
        workspace.env, _BROKER_COMPLETE="bash_complete", COMP_WORDS="broker cr", COMP_CWORD="1"
    )
    completed = workspace.run(workspace.broker, env=words)
    assert {"creds", "credential-process"} <= {
        line.split(",")[-1] for line in completed.stdout.splitlines()
    }
    assert "_BROKER_COMPLETE=bash_source broker" in (ROOT / "docs" / "cli.md").read_text()
    assert os.environ.get("_BROKER_COMPLETE") is None
