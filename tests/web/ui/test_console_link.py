"""broker.console: the federation sign-in link, its duration cap and its failure modes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.console import console_url, seconds_left
from broker.errors import BadRequest, UpstreamError
from broker.sts import IssuedCredentials

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CREDS = IssuedCredentials(
    access_key_id="ASIAEXAMPLE",
    secret_access_key="s3cr3t/+=",
    session_token="tok+/=",
    expiration=NOW + timedelta(minutes=50),
    assumed_role_arn="arn:aws:sts::123456789012:assumed-role/r/s",
    role_session_name="s",
    source_identity="dev@example.com",
    duration_seconds=3000,
)


def _link(duration: int, answer: Any = None) -> tuple[str, list[str]]:
    seen: list[str] = []

    def http_get(url: str) -> Any:
        seen.append(url)
        if isinstance(answer, Exception):
            raise answer
        return answer if answer is not None else {"SigninToken": "TOKEN"}

    url = console_url(
        CREDS,
        federation_endpoint="https://fed.example/federation",
        destination="https://console.example/",
        issuer_url="https://broker.example/",
        session_duration=duration,
        http_get=http_get,
    )
    return url, seen


def test_link_and_token_request() -> None:
    url, [request] = _link(seconds_left(CREDS, NOW))
    query = parse_qs(urlsplit(request).query)
    assert query["Action"] == ["getSigninToken"]
    assert query["SessionDuration"] == ["3000"]
    assert json.loads(query["Session"][0]) == {
        "sessionId": "ASIAEXAMPLE",
        "sessionKey": "s3cr3t/+=",
        "sessionToken": "tok+/=",
    }
    link = parse_qs(urlsplit(url).query)
    assert url.startswith("https://fed.example/federation?")
    assert link == {
        "Action": ["login"],
        "Issuer": ["https://broker.example/"],
        "Destination": ["https://console.example/"],
        "SigninToken": ["TOKEN"],
    }


def test_duration_is_capped_at_twelve_hours() -> None:
    _, [request] = _link(50_000)
    assert parse_qs(urlsplit(request).query)["SessionDuration"] == ["43200"]


def test_under_fifteen_minutes_left_is_refused() -> None:
    with pytest.raises(BadRequest, match="less than 15 minutes"):
        _link(899)
    assert seconds_left(CREDS, NOW + timedelta(hours=2)) == 0


def test_federation_failure_never_echoes_the_secret() -> None:
    with pytest.raises(UpstreamError) as info:
        _link(1000, RuntimeError("GET https://fed?...s3cr3t failed"))
    assert "s3cr3t" not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(UpstreamError):
        _link(1000, {"SigninToken": ""})
