"""The activity settings are validated at startup like every other, with the setting named."""

from __future__ import annotations

from typing import Any

import pytest

from broker.config import validate
from broker.errors import ConfigError

BASE: dict[str, Any] = {"ENV": "testing"}


def test_lists_come_comma_separated_from_the_environment() -> None:
    settings = validate(
        {**BASE, "CLOUDTRAIL_ACCOUNTS": "111122223333, 444455556666", "NOTIFY_EVENTS": "detection"}
    )
    assert settings.CLOUDTRAIL_ACCOUNTS == ("111122223333", "444455556666")
    assert settings.NOTIFY_EVENTS == ("detection",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"NOTIFY_EVENTS": "detection,grant_expired"}, "BROKER_NOTIFY_EVENTS"),
        ({"NOTIFY_WEBHOOK_URL": "https://hooks.example.com/x"}, "BROKER_NOTIFY_WEBHOOK_SECRET"),
        (
            {"NOTIFY_WEBHOOK_URL": "ftp://hooks.example.com/x", "NOTIFY_WEBHOOK_SECRET": "s"},
            "BROKER_NOTIFY_WEBHOOK_URL",
        ),
        ({"SMTP_HOST": "mail.example.com"}, "BROKER_SMTP_FROM"),
        ({"CLOUDTRAIL_QUEUE_SECONDS": 0}, "BROKER_CLOUDTRAIL_QUEUE_SECONDS"),
    ],
)
def test_bad_settings_stop_startup_naming_the_setting(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({**BASE, **extra})


def test_a_slack_webhook_needs_no_signing_secret() -> None:
    settings = validate(
        {
            **BASE,
            "NOTIFY_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
            "NOTIFY_WEBHOOK_FORMAT": "slack",
        }
    )
    assert settings.NOTIFY_WEBHOOK_FORMAT == "slack"
