"""`broker dev` starts for real: roles on the embedded AWS endpoint, the dev IdP, the API."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BROKER = str(Path(sys.executable).parent / "broker")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running `broker dev` on a free port, its banner parsed."""
    instance = tmp_path_factory.mktemp("dev-instance")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    proc = subprocess.Popen(
        [BROKER, "dev", "--port", "0", "--instance", str(instance)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready: "):
            break
    banner = "".join(lines)
    if proc.poll() is not None or "ready: " not in banner:
        proc.kill()
        pytest.fail(f"broker dev did not start:\n{banner}")
    found = {
        "base": re.search(r"web UI\s+(\S+)/", banner),
        "aws": re.search(r"AWS endpoint\s+(\S+)", banner),
        "idp": re.search(r"identity\s+(\S+)", banner),
    }
    info: dict[str, Any] = {k: m.group(1) for k, m in found.items() if m}
    info.update(banner=banner, instance=instance)
    try:
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dev_mode_prints_what_a_newcomer_needs(dev: dict[str, Any]) -> None:
    assert {"base", "aws", "idp"} <= set(dev)
    for who in ("erin@example.com", "sam@example.com", "dana@contractor.example"):
        assert who in dev["banner"]
    ready = requests.get(f"{dev['base']}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    discovery = requests.get(f"{dev['idp']}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == dev["idp"]
    assert "S256" in discovery["code_challenge_methods_supported"]


def test_dev_mode_issues_working_credentials(dev: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    env.update(
        BROKER_ENV="development",
        BROKER_DATABASE_URL=f"sqlite:///{dev['instance'] / 'dev.db'}",
        BROKER_POLICY_DIR=str(ROOT / "policies"),
    )
    token = subprocess.run(
        [
            BROKER,
            *("token", "mint", "--email", "erin@example.com", "--create"),
            *("--groups", "developers"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    response = requests.post(
        f"{dev['base']}/api/v1/credentials",
        json={"entitlement": "dev-readonly"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    creds = response.json()["credentials"]
    sts = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=dev["aws"],
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    arn = sts.get_caller_identity()["Arn"]
    assert arn.startswith("arn:aws:sts::111122223333:assumed-role/dev-readonly/broker-")


def test_dev_mode_web_sign_in_through_the_dev_identity_provider(dev: dict[str, Any]) -> None:
    """The real OIDC login code (PKCE, state, nonce, ID token checks) against the dev IdP."""
    browser = requests.Session()
    picker = browser.get(f"{dev['base']}/login", timeout=10)
    assert picker.status_code == 200 and "Erin Engineer" in picker.text
    assert picker.url.startswith(f"{dev['idp']}/authorize")
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', picker.text))
    form = {k: html.unescape(v) for k, v in form.items()}
    assert form["code_challenge_method"] == "S256" and form["nonce"] and form["state"]
    home = browser.post(f"{dev['idp']}/authorize", data={**form, "user": "erin"}, timeout=30)
    assert home.status_code == 200, home.text[:500]
    assert home.url.rstrip("/") == dev["base"]
    assert "erin@example.com" in home.text and "dev-readonly" in home.text
