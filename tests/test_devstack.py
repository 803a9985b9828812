"""`broker dev` starts for real: roles on the embedded AWS endpoint, the dev IdP, the API, the
console link through the dev federation endpoint; other commands find its settings; a second
one on the same instance folder, or on taken ports, stops with a clear message."""

from __future__ import annotations

import html
import os
import re
import shlex
import socket
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
AWS = str(Path(sys.executable).parent / "aws")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's AWS and broker settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running `broker dev` on a free port, its banner parsed."""
    instance = tmp_path_factory.mktemp("dev-instance")
    env = _clean_env()
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
        "console": re.search(r"console\s+(\S+)", banner),
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
    # The dev settings are in the instance folder's broker.toml: naming the folder is enough.
    env = _clean_env(BROKER_INSTANCE_PATH=str(dev["instance"]))
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


def _sign_in(dev: dict[str, Any], user: str) -> tuple[requests.Session, str]:
    """Sign in through the dev identity provider as a demo user; (browser, home page)."""
    browser = requests.Session()
    picker = browser.get(f"{dev['base']}/login", timeout=10)
    assert picker.status_code == 200 and "Erin Engineer" in picker.text
    assert picker.url.startswith(f"{dev['idp']}/authorize")
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', picker.text))
    form = {k: html.unescape(v) for k, v in form.items()}
    assert form["code_challenge_method"] == "S256" and form["nonce"] and form["state"]
    home = browser.post(f"{dev['idp']}/authorize", data={**form, "user": user}, timeout=30)
    assert home.status_code == 200, home.text[:500]
    assert home.url.rstrip("/") == dev["base"]
    return browser, home.text


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_dev_mode_web_sign_in_through_the_dev_identity_provider(dev: dict[str, Any]) -> None:
    """The real OIDC login code (PKCE, state, nonce, ID token checks) against the dev IdP."""
    _browser, home = _sign_in(dev, "erin")
    assert "erin@example.com" in home and "dev-readonly" in home


def test_dev_mode_credentials_work_with_the_aws_cli_and_open_the_dev_console(
    dev: dict[str, Any],
) -> None:
    """The banner's walk-through: one click for credentials, the pasted exports with the real
    `aws` CLI (region included), and the console link through the dev federation endpoint."""
    browser, home = _sign_in(dev, "erin")
    page = browser.post(
        f"{dev['base']}/request/dev-readonly",
        data={"csrf_token": _csrf(home), "duration": "1h"},
        headers={"Origin": dev["base"]},
        timeout=60,
    )
    assert page.status_code == 200, page.text[:500]
    text = html.unescape(page.text)
    exports = re.search(r'<pre id="snippet-bash"[^>]*><code>(.*?)</code></pre>', text, re.S)
    assert exports, "no bash exports on the credentials page"
    env = _clean_env()
    for line in exports.group(1).splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    assert env["AWS_REGION"] == "us-east-1"
    ran = subprocess.run(
        [AWS, "--endpoint-url", dev["aws"], "sts", "get-caller-identity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ":assumed-role/dev-readonly/broker-" in ran.stdout

    link = re.search(r'id="console-link" class="button" href="([^"]+)"', text)
    assert link, "no console link: " + text[text.find("AWS console") :][:300]
    assert link.group(1).startswith(dev["console"] + "?Action=login")
    console = requests.get(link.group(1), timeout=10)
    assert console.status_code == 200
    assert "AWS console (dev)" in console.text
    assert "assumed-role/dev-readonly/broker-" in console.text
    forged = requests.get(f"{dev['console']}?Action=login&SigninToken=made-up", timeout=10)
    assert forged.status_code == 400 and "expired" in forged.text


def test_dev_federation_refuses_what_aws_refuses(dev: dict[str, Any]) -> None:
    session = '{"sessionId": "AKIDEXAMPLE", "sessionKey": "x", "sessionToken": "y"}'
    for query, status in (
        ({"Action": "getSigninToken", "Session": session, "SessionDuration": "60"}, 400),
        ({"Action": "getSigninToken", "Session": "not json"}, 400),
        ({"Action": "getSigninToken", "Session": session, "SessionDuration": "3600"}, 403),
    ):
        answer = requests.get(dev["console"], params=query, timeout=30)
        assert answer.status_code == status, (query, answer.text)


def test_audit_verify_after_dev_mode_finds_the_dev_database(dev: dict[str, Any]) -> None:
    """`broker dev` wrote its settings to the instance folder; `broker audit verify` reads them."""
    settings = (dev["instance"] / "broker.toml").read_text()
    assert settings.startswith("# Written by `broker dev`") and "dev.db" in settings
    assert "secret" not in settings.lower().replace("secret_key", "")  # no secrets in the file
    _browser, _home = _sign_in(dev, "audrey")  # at least one event
    ran = subprocess.run(
        [BROKER, "audit", "verify"],
        cwd=ROOT,
        env=_clean_env(BROKER_INSTANCE_PATH=str(dev["instance"])),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"audit chain OK: [1-9]\d* events", ran.stdout), ran.stdout
    assert not (dev["instance"] / "broker.db").exists()  # no stray empty database


def test_audit_verify_without_a_database_says_so(tmp_path: Path) -> None:
    ran = subprocess.run(
        [BROKER, "audit", "verify"],
        cwd=ROOT,
        env=_clean_env(BROKER_INSTANCE_PATH=str(tmp_path), BROKER_ENV="development"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    assert f"There is no broker database at {tmp_path / 'broker.db'}" in ran.stderr
    assert "broker db upgrade" in ran.stderr
    assert not (tmp_path / "broker.db").exists()


def test_a_second_dev_mode_on_the_same_instance_is_told_so(dev: dict[str, Any]) -> None:
    ran = subprocess.run(
        [BROKER, "dev", "--port", "0", "--instance", str(dev["instance"])],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr and "SchedulerAlreadyRunning" not in ran.stderr
    assert "Another `broker dev` is already running on the instance folder" in ran.stderr
    assert dev["base"] in ran.stderr  # where the running one answers
    assert requests.get(f"{dev['base']}/readyz", timeout=10).status_code == 200  # untouched


def test_dev_mode_on_a_taken_port_names_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run(
            [BROKER, "dev", "--port", str(port), "--instance", str(tmp_path)],
            cwd=ROOT,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert f"{port} (the broker's web UI)" in ran.stderr and "--port N" in ran.stderr
    assert not (tmp_path / "dev.db").exists()  # nothing was started


def test_dev_ports_are_fixed_from_the_base_port() -> None:
    from broker.devstack import DevPorts

    assert DevPorts.from_base(8000) == DevPorts(8000, 8001, 8002, 8003)
    assert DevPorts.from_base(0) == DevPorts(0, 0, 0, 0)
