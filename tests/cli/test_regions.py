"""Regions: the entitlement's (or the broker's default) region reaches every profile, export
and `exec` child, checked with the real `aws` CLI and no region in its environment."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clibed import DEV, LiveBroker, Workspace, broker_app, live_broker

from broker import create_app
from broker.cli.client.cache import AwsCredentials, parse_time
from broker.cli.client.environment import credential_variables, exports
from broker.db import Database
from broker.errors import ConfigError

pytestmark = pytest.mark.slow

EU_POLICY = """\
version: 1
entitlements:
  - id: eu-read
    description: Read in Ireland
    role_arn: {read}
    allow: {{groups: [developers]}}
    max_duration: 1h
    region: eu-west-1
"""
DEFAULT_REGION = "ap-southeast-2"


@pytest.fixture
def regional(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[LiveBroker]:
    """A live broker with an entitlement in eu-west-1 and a broker-wide default region."""
    app, roles = broker_app(
        database,
        moto_server,
        tmp_path,
        policy_files={"eu.yaml": EU_POLICY},
        DEFAULT_CLIENT_REGION=DEFAULT_REGION,
    )
    with live_broker(app, roles, moto_server, tmp_path) as broker:
        yield broker


def no_region(workspace: Workspace, **extra: str) -> dict[str, str]:
    """The workspace's environment without AWS_REGION or AWS_DEFAULT_REGION."""
    env = {k: v for k, v in workspace.env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    return {**env, **extra}


def aws(workspace: Workspace, live: LiveBroker, *args: str, **env: str) -> str:
    """Run the real `aws` against moto without a region in the environment; its stdout."""
    result = workspace.run(
        "aws", *args, "--endpoint-url", live.bed.moto.endpoint_url, env=no_region(workspace, **env)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def zone(workspace: Workspace, live: LiveBroker, *args: str, **env: str) -> str:
    """The first availability zone EC2 names: it starts with the region the tool used."""
    return aws(
        workspace,
        live,
        "ec2",
        "describe-availability-zones",
        "--query",
        "AvailabilityZones[0].ZoneName",
        "--output",
        "text",
        *args,
        **env,
    )


def test_the_api_names_each_entitlements_region(regional: LiveBroker) -> None:
    token = regional.bed.token(*DEV)
    listed = regional.bed.call("GET", "/entitlements", token).json["entitlements"]
    regions = {e["id"]: e["region"] for e in listed}
    assert regions["eu-read"] == "eu-west-1"
    assert regions["app-read"] == DEFAULT_REGION  # the broker-wide default
    issued = regional.bed.call("POST", "/credentials", token, json={"entitlement": "eu-read"})
    assert issued.status_code == 201 and issued.json["region"] == "eu-west-1"


def test_without_a_default_the_brokers_own_region(live: LiveBroker) -> None:
    listed = live.bed.call("GET", "/entitlements", live.bed.token(*DEV)).json["entitlements"]
    assert {e["region"] for e in listed} == {"us-east-1"}


def test_a_malformed_default_region_stops_startup(db_url: str) -> None:
    base = {"ENV": "testing", "DATABASE_URL": db_url, "POLICY_DIR": "policies"}
    with pytest.raises(ConfigError, match="BROKER_DEFAULT_CLIENT_REGION"):
        create_app({**base, "DEFAULT_CLIENT_REGION": "Ireland"})


def test_creds_profile_carries_the_region(regional: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(regional)
    written = workspace.run(workspace.broker, "creds", "eu-read", "--profile", "eu")
    assert written.returncode == 0, written.stderr
    assert "Region eu-west-1 in [profile eu]" in written.stdout
    assert aws(workspace, regional, "configure", "get", "region", "--profile", "eu") == "eu-west-1"
    identity = json.loads(aws(workspace, regional, "sts", "get-caller-identity", "--profile", "eu"))
    assert ":assumed-role/" in identity["Arn"]
    assert zone(workspace, regional, "--profile", "eu") == "eu-west-1a"

    # The broker-wide default, and --region over both.
    assert workspace.run(workspace.broker, "creds", "app-read", "--profile", "app").returncode == 0
    assert aws(workspace, regional, "configure", "get", "region", "--profile", "app") == (
        DEFAULT_REGION
    )
    again = workspace.run(
        workspace.broker, "creds", "eu-read", "--profile", "eu", "--region", "ca-central-1"
    )
    assert again.returncode == 0, again.stderr
    assert zone(workspace, regional, "--profile", "eu") == "ca-central-1a"
    assert workspace.config.read_text().count("[profile eu]") == 1


def test_a_profile_of_your_own_keeps_its_region(regional: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(regional)
    workspace.config.parent.mkdir(mode=0o700, parents=True)
    mine = "[profile mine]\nregion = us-west-2\noutput = table\n"
    workspace.config.write_text(mine)
    result = workspace.run(workspace.broker, "creds", "eu-read", "--profile", "mine")
    assert result.returncode == 0, result.stderr
    assert "its region (us-west-2) was kept" in result.stderr and "eu-west-1" in result.stderr
    assert workspace.config.read_text() == mine
    assert zone(workspace, regional, "--profile", "mine") == "us-west-2a"


def test_configure_profile_carries_the_region(regional: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(regional)
    result = workspace.run(workspace.broker, "configure", "eu-read", "--profile", "proc")
    assert result.returncode == 0, result.stderr
    assert "region = eu-west-1" in result.stdout
    assert aws(workspace, regional, "configure", "get", "region", "--profile", "proc") == (
        "eu-west-1"
    )
    identity = json.loads(
        aws(workspace, regional, "sts", "get-caller-identity", "--profile", "proc")
    )
    assert ":assumed-role/" in identity["Arn"]
    assert zone(workspace, regional, "--profile", "proc") == "eu-west-1a"

    # An id the broker does not know is refused before anything is written.
    before = workspace.config.read_text()
    typo = workspace.run(workspace.broker, "configure", "eu-raed", "--profile", "typo")
    assert typo.returncode == 1
    assert "There is no entitlement 'eu-raed'" in typo.stderr and "eu-read" in typo.stderr
    assert workspace.config.read_text() == before


def test_configure_without_a_sign_in_says_the_profile_has_no_region(
    workspace: Workspace,
) -> None:
    env = dict(workspace.env, BROKER_URL="http://127.0.0.1:9")
    result = workspace.run(workspace.broker, "configure", "eu-read", "--profile", "p", env=env)
    assert result.returncode == 0, result.stderr
    assert "names none" in result.stderr and "--region" in result.stderr
    assert "region" not in workspace.config.read_text()
    given = workspace.run(
        workspace.broker, "configure", "eu-read", "--profile", "p", "--region", "eu-north-1"
    )
    assert given.returncode == 0, given.stderr
    assert "region = eu-north-1" in workspace.config.read_text()
    bad = workspace.run(workspace.broker, "configure", "eu-read", "--region", "Stockholm")
    assert bad.returncode == 2 and "not an AWS region name" in bad.stderr


def test_shell_exports_carry_the_region(regional: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(regional)
    endpoint = regional.bed.moto.endpoint_url
    script = (
        'eval "$(broker creds eu-read --export --shell sh)" && '
        f"aws sts get-caller-identity --endpoint-url {endpoint} >/dev/null && "
        'printf "%s %s %s" "$AWS_REGION" "$AWS_DEFAULT_REGION" "${AWS_PROFILE-unset}"'
    )
    env = no_region(workspace, AWS_PROFILE="someone-else")
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "eu-west-1 eu-west-1 unset"
    assert not workspace.credentials.exists()  # exports write no file


def test_exports_for_fish_and_powershell_quote_their_own_way() -> None:
    credentials = AwsCredentials("AKIA1", "se'cr\\et", "tok", parse_time("2030-01-01T00:00:00Z"))
    variables = credential_variables(credentials, "eu-west-1")
    fish = exports(variables, "fish")
    assert "set -e AWS_PROFILE\n" in fish
    assert "set -gx AWS_SECRET_ACCESS_KEY 'se\\'cr\\\\et'\n" in fish
    assert "set -gx AWS_REGION 'eu-west-1'\n" in fish
    powershell = exports(variables, "powershell")
    assert "$Env:AWS_SECRET_ACCESS_KEY = 'se''cr\\et'\n" in powershell
    assert "$Env:AWS_DEFAULT_REGION = 'eu-west-1'\n" in powershell
    assert "Remove-Item Env:AWS_PROFILE -ErrorAction SilentlyContinue\n" in powershell
    sh = exports(variables, "sh")
    assert "export AWS_SECRET_ACCESS_KEY='se'\"'\"'cr\\et'\n" in sh
    assert "export AWS_CREDENTIAL_EXPIRATION=2030-01-01T00:00:00Z\n" in sh


def test_exec_child_gets_the_region(regional: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(regional)
    show = "import os; print(os.environ['AWS_REGION'], os.environ['AWS_DEFAULT_REGION'])"
    env = no_region(workspace)
    ran = workspace.run(workspace.broker, "exec", "eu-read", "--", "python3", "-c", show, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["eu-west-1", "eu-west-1"]
    chosen = workspace.run(
        workspace.broker, "exec", "eu-read", "--region", "eu-north-1", "--", "python3", "-c", show
    )
    assert chosen.stdout.split() == ["eu-north-1", "eu-north-1"]
    endpoint = regional.bed.moto.endpoint_url
    through = workspace.run(
        workspace.broker,
        "exec",
        "eu-read",
        "--",
        "aws",
        "ec2",
        "describe-availability-zones",
        "--query",
        "AvailabilityZones[0].ZoneName",
        "--output",
        "text",
        "--endpoint-url",
        endpoint,
        env=env,
    )
    assert through.returncode == 0, through.stderr
    assert through.stdout.strip() == "eu-west-1a"
