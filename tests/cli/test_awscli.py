"""The real `aws` CLI reading what `broker creds` and `broker configure` wrote, against moto."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clibed import LiveBroker, Workspace

from broker.cli.client.awsfiles import sections

pytestmark = pytest.mark.slow

EXISTING = (
    "# my hand-written credentials\r\n"
    "[default]\r\n"
    "aws_access_key_id = AKIAEXAMPLEDEFAULT\r\n"
    "aws_secret_access_key = keep-me\r\n"
    "\r\n"
    "; a comment between sections\r\n"
    "[other]  # trailing comment\r\n"
    "aws_access_key_id=AKIAOTHER\r\n"
    "aws_secret_access_key=other-secret\r\n"
    "region = eu-west-1\r\n"
)


def run(workspace: Workspace, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=workspace.env, capture_output=True, text=True, timeout=timeout, check=False
    )


def caller_identity(workspace: Workspace, live: LiveBroker, profile: str) -> dict[str, str]:
    endpoint = live.bed.moto.endpoint_url
    result = run(
        workspace,
        "aws",
        "sts",
        "get-caller-identity",
        "--profile",
        profile,
        "--endpoint-url",
        endpoint,
    )
    assert result.returncode == 0, result.stderr
    identity: dict[str, str] = json.loads(result.stdout)
    return identity


def role_name(live: LiveBroker) -> str:
    return live.roles["read"].rsplit("/", 1)[1]


def test_creds_then_aws_cli(live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    workspace.credentials.parent.mkdir(mode=0o700)
    workspace.credentials.write_bytes(EXISTING.encode())

    result = run(
        workspace, workspace.broker, "creds", "app-read", "--profile", "work", "--duration", "30m"
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote profile [work]" in result.stdout

    identity = caller_identity(workspace, live, "work")
    assert f":assumed-role/{role_name(live)}/" in identity["Arn"]

    data = workspace.credentials.read_bytes()
    assert data.startswith(EXISTING.encode())  # every other byte untouched, CRLF kept
    added = data[len(EXISTING.encode()) :].decode()
    assert added.startswith("\r\n[work]\r\n")
    assert "x_broker_managed = true\r\n" in added and "x_broker_expiration = " in added
    assert stat.S_IMODE(workspace.credentials.stat().st_mode) == 0o600

    # A second run replaces only its own keys, in place.
    again = run(workspace, workspace.broker, "creds", "app-read", "--profile", "work")
    assert again.returncode == 0, again.stderr
    data2 = workspace.credentials.read_bytes()
    assert data2.startswith(EXISTING.encode())
    assert data2.count(b"[work]") == 1 and data2 != data
    assert len(live.events("credentials.issued")) == 2


def test_refuses_profiles_it_did_not_write(live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    workspace.credentials.parent.mkdir(mode=0o700)
    workspace.credentials.write_bytes(EXISTING.encode())
    refused = run(workspace, workspace.broker, "creds", "app-read", "--profile", "other")
    assert refused.returncode == 1
    assert "was not written by the broker" in refused.stderr and "--force" in refused.stderr
    assert refused.stdout == ""
    assert workspace.credentials.read_bytes() == EXISTING.encode()
    assert live.events("credentials.issued") == []  # refused before asking AWS

    forced = run(workspace, workspace.broker, "creds", "app-read", "--profile", "other", "--force")
    assert forced.returncode == 0, forced.stderr
    text = workspace.credentials.read_bytes().decode()
    assert "region = eu-west-1" in text and "AKIAOTHER" not in text and "other-secret" not in text
    assert text.startswith(EXISTING.split("[other]")[0])
    assert f":assumed-role/{role_name(live)}/" in caller_identity(workspace, live, "other")["Arn"]


def test_new_aws_dir_is_private(live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    result = run(workspace, workspace.broker, "creds", "app-read")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(workspace.credentials.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(workspace.credentials.stat().st_mode) == 0o600


def test_configure_credential_process_reuses_cached_credentials(
    live: LiveBroker, workspace: Workspace, tmp_path: Path
) -> None:
    workspace.sign_in(live)
    cache = tmp_path / "cache" / "creds.json"
    result = run(
        workspace,
        workspace.broker,
        "configure",
        "app-read",
        "--profile",
        "proc",
        "--cache-file",
        str(cache),
    )
    assert result.returncode == 0, result.stderr
    config = workspace.config.read_text()
    assert "[profile proc]\n" in config
    assert (
        f"credential_process = {workspace.broker} credential-process app-read --cache-file {cache}"
        in config
    )

    first = caller_identity(workspace, live, "proc")
    assert f":assumed-role/{role_name(live)}/" in first["Arn"]
    second = caller_identity(workspace, live, "proc")
    assert second["Arn"] == first["Arn"]  # the same session: reused, not re-issued
    assert len(live.events("credentials.issued")) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def test_credential_process_output_and_errors(live: LiveBroker, workspace: Workspace) -> None:
    nothing = run(workspace, workspace.broker, "credential-process", "app-read")
    assert nothing.returncode != 0
    assert nothing.stdout == ""
    assert "broker login" in nothing.stderr

    workspace.sign_in(live)
    ok = run(workspace, workspace.broker, "credential-process", "app-read")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert set(doc) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert doc["Version"] == 1 and doc["Expiration"].endswith("Z")
    # No keyring and no --cache-file: reused through the config directory's private cache,
    # the only place on disk that holds the secret.
    again = run(workspace, workspace.broker, "credential-process", "app-read")
    assert json.loads(again.stdout) == doc
    assert len(live.events("credentials.issued")) == 1
    cache_dir = workspace.config_dir / "credential-cache"
    holding = [
        p
        for p in workspace.home.rglob("*")
        if p.is_file() and doc["SecretAccessKey"] in p.read_text(errors="ignore")
    ]
    assert [p.parent for p in holding] == [cache_dir]
    assert stat.S_IMODE(holding[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    # --no-cache: fresh every time.
    fresh = run(workspace, workspace.broker, "credential-process", "app-read", "--no-cache")
    assert json.loads(fresh.stdout)["AccessKeyId"] != doc["AccessKeyId"]
    assert len(live.events("credentials.issued")) == 2

    denied = run(workspace, workspace.broker, "credential-process", "prod-nothing")
    assert denied.returncode != 0 and denied.stdout == ""
    assert denied.stderr.startswith("Error: ")


def test_four_concurrent_creds_runs_keep_all_profiles(
    live: LiveBroker, workspace: Workspace
) -> None:
    workspace.sign_in(live)
    workspace.credentials.parent.mkdir(mode=0o700)
    workspace.credentials.write_text("# mine\n[default]\naws_access_key_id = A\n")
    profiles = [f"p{i}" for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda p: run(
                    workspace, workspace.broker, "creds", "app-read", "--profile", p, timeout=120
                ),
                profiles,
            )
        )
    for result in results:
        assert result.returncode == 0, result.stderr
    text = workspace.credentials.read_text()
    assert text.startswith("# mine\n[default]\naws_access_key_id = A\n")
    lines = text.splitlines(keepends=True)
    assert sorted(s.name for s in sections(lines)) == ["default", *profiles]
    for profile in profiles:
        assert (
            f":assumed-role/{role_name(live)}/" in caller_identity(workspace, live, profile)["Arn"]
        )
    leftovers = [p.name for p in workspace.credentials.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_exec_puts_credentials_in_the_child_only(live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    env = dict(workspace.env, AWS_PROFILE="something-else")
    script = (
        "import os, sys; "
        "print(os.environ['AWS_ACCESS_KEY_ID'], os.environ.get('AWS_PROFILE')); sys.exit(7)"
    )
    result = subprocess.run(
        [workspace.broker, "exec", "app-read", "--", "python3", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 7, result.stderr
    key, profile = result.stdout.split()
    assert key.startswith(("ASIA", "AKIA")) and profile == "None"
    assert "AWS_ACCESS_KEY_ID" not in os.environ or os.environ["AWS_ACCESS_KEY_ID"] == "testing"

    endpoint = live.bed.moto.endpoint_url
    through = run(
        workspace,
        workspace.broker,
        "exec",
        "app-read",
        "--",
        "aws",
        "sts",
        "get-caller-identity",
        "--endpoint-url",
        endpoint,
    )
    assert through.returncode == 0, through.stderr
    assert f":assumed-role/{role_name(live)}/" in json.loads(through.stdout)["Arn"]
