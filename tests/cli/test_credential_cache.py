"""`credential_process` reuses credentials and refreshes them once: the real `aws` CLI called
again and again, and in parallel, mints one STS session (counted as `credentials.issued`)."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clibed import LiveBroker, Workspace
from click.testing import Result

from broker.cli.client.cache import (
    CACHE_DIR,
    AwsCredentials,
    DirectoryCache,
    lock_path,
    reuse_or_issue,
)
from broker.cli.client.state import ClientState
from broker.cli.client.store import Store

Cli = Callable[..., Result]


class SlowIssuance:
    """WSGI middleware: POST /api/v1/credentials waits, so parallel callers surely overlap."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/api/v1/credentials":
            self.calls += 1
            time.sleep(self.seconds)
        return self.app(environ, start_response)  # type: ignore[no-any-return]


def caller_arn(workspace: Workspace, live: LiveBroker, profile: str) -> str:
    """The ARN `aws sts get-caller-identity --profile P` reports."""
    result = workspace.run(
        "aws",
        "sts",
        "get-caller-identity",
        "--profile",
        profile,
        "--endpoint-url",
        live.bed.moto.endpoint_url,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["Arn"])


@pytest.mark.slow
def test_repeated_aws_calls_mint_one_session(live: LiveBroker, workspace: Workspace) -> None:
    workspace.sign_in(live)
    configured = workspace.run(workspace.broker, "configure", "app-read", "--profile", "proc")
    assert configured.returncode == 0, configured.stderr
    arns = {caller_arn(workspace, live, "proc") for _ in range(4)}
    assert len(arns) == 1
    assert len(live.events("credentials.issued")) == 1
    entries = list((workspace.config_dir / CACHE_DIR).glob("*.json"))
    assert len(entries) == 1 and stat.S_IMODE(entries[0].stat().st_mode) == 0o600


@pytest.mark.slow
def test_parallel_aws_calls_share_one_refresh(live: LiveBroker, workspace: Workspace) -> None:
    slow = SlowIssuance(live.bed.app.wsgi_app, seconds=3)
    live.bed.app.wsgi_app = slow  # type: ignore[method-assign]
    workspace.sign_in(live)
    configured = workspace.run(workspace.broker, "configure", "app-read", "--profile", "proc")
    assert configured.returncode == 0, configured.stderr
    with ThreadPoolExecutor(max_workers=10) as pool:
        arns = list(pool.map(lambda _: caller_arn(workspace, live, "proc"), range(10)))
    assert len(set(arns)) == 1  # every call got the same session
    assert slow.calls == 1 and len(live.events("credentials.issued")) == 1


def test_credentials_are_refreshed_shortly_before_they_expire(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    workspace.sign_in(live)
    offset = timedelta()
    state = ClientState(store=workspace.store(), clock=lambda: datetime.now(UTC) + offset)

    def key_id() -> str:
        result = cli("credential-process", "app-read", state=state)
        assert result.exit_code == 0, result.output
        return str(json.loads(result.stdout)["AccessKeyId"])

    first = key_id()
    offset = timedelta(minutes=40)  # one-hour credentials, 20 minutes left: reused
    assert key_id() == first
    offset = timedelta(minutes=46)  # under 15 minutes left, when AWS SDKs start refreshing
    second = key_id()
    assert second != first
    assert len(live.events("credentials.issued")) == 2


def test_logout_deletes_cached_credentials(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    workspace.sign_in(live)
    assert cli("credential-process", "app-read").exit_code == 0
    cache = workspace.config_dir / CACHE_DIR
    assert list(cache.glob("*.json"))
    assert cli("logout").exit_code == 0
    assert list(cache.glob("*.json")) == []


def test_the_keyring_is_used_when_there_is_one(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    class Keyring:
        def __init__(self) -> None:
            self.items: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, name: str) -> str | None:
            return self.items.get((service, name))

        def set_password(self, service: str, name: str, value: str) -> None:
            self.items[(service, name)] = value

    keyring = Keyring()
    workspace.sign_in(live)
    store = Store(workspace.config_dir, keyring)
    first = cli("credential-process", "app-read", state=ClientState(store=store))
    second = cli("credential-process", "app-read", state=ClientState(store=store))
    assert first.exit_code == 0 and second.stdout == first.stdout
    assert [s for s, _ in keyring.items] == ["broker-credentials"]
    assert not list((workspace.config_dir / CACHE_DIR).glob("*.json"))
    assert len(live.events("credentials.issued")) == 1


def test_threads_racing_on_a_cold_cache_issue_once(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / CACHE_DIR)
    lock = lock_path(tmp_path / CACHE_DIR, "https://b.example", "app-read", None)
    issued: list[AwsCredentials] = []
    start = threading.Barrier(10)

    def issue() -> AwsCredentials:
        time.sleep(0.3)  # everyone else is waiting on the lock by now
        now = datetime.now(UTC)
        issued.append(AwsCredentials(f"ASIA{len(issued)}", "s", "t", now + timedelta(hours=1), now))
        return issued[-1]

    def one(_: int) -> tuple[str, bool]:
        start.wait()
        got, reused = reuse_or_issue(
            cache, "k", lock=lock, clock=lambda: datetime.now(UTC), issue=issue
        )
        return got.access_key_id, reused

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(10)))
    assert len(issued) == 1
    assert {key for key, _ in results} == {"ASIA0"}
    assert sorted(reused for _, reused in results) == [False] + [True] * 9


def test_refresh_margin_follows_the_lifetime() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)

    def lasting(minutes: int, issued: bool = True) -> AwsCredentials:
        return AwsCredentials(
            "ASIA1", "wJalrSECRET", "t", now + timedelta(minutes=minutes), now if issued else None
        )

    assert lasting(60).refresh_margin() == timedelta(minutes=15)
    assert lasting(30).refresh_margin() == timedelta(minutes=10)
    assert lasting(15).refresh_margin() == timedelta(minutes=5)
    assert lasting(60, issued=False).refresh_margin() == timedelta(minutes=5)
    assert lasting(15).fresh(now + timedelta(minutes=9))
    assert not lasting(15).fresh(now + timedelta(minutes=10))
    assert "SECRET" not in repr(lasting(60)) and "ASIA1" in repr(lasting(60))
