"""Duration clamping: every limit wins when it is the smallest; under 15 minutes is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.errors import BadRequest, Conflict
from broker.sts import DurationTooShort, clamp_duration

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def clamp(**overrides: Any) -> int:
    args: dict[str, Any] = {
        "requested": None,
        "entitlement_max": 43_200,
        "role_max": 43_200,
        "grant_expires_at": None,
        "valid_until": None,
        "now": NOW,
    }
    args.update(overrides)
    return clamp_duration(**args)


def test_requested_duration_when_nothing_is_smaller() -> None:
    assert clamp(requested=1800) == 1800


def test_no_request_means_as_long_as_allowed() -> None:
    assert clamp() == 43_200


def test_entitlement_max_caps() -> None:
    assert clamp(requested=7200, entitlement_max=3600) == 3600


def test_role_max_caps() -> None:
    assert clamp(requested=7200, role_max=3600) == 3600


def test_grant_end_caps() -> None:
    assert clamp(requested=7200, grant_expires_at=NOW + timedelta(minutes=40)) == 2400


def test_contractor_end_date_caps() -> None:
    assert clamp(requested=7200, valid_until=NOW + timedelta(minutes=30, seconds=5)) == 1805


def test_role_chaining_caps_at_one_hour() -> None:
    assert clamp(requested=7200, chaining=True) == 3600
    assert clamp(requested=1800, chaining=True) == 1800


def test_remaining_time_is_rounded_down() -> None:
    assert clamp(grant_expires_at=NOW + timedelta(seconds=1000, milliseconds=999)) == 1000


def test_smallest_of_several_limits_wins() -> None:
    seconds = clamp(
        requested=10_000,
        entitlement_max=8000,
        role_max=7200,
        grant_expires_at=NOW + timedelta(hours=3),
        valid_until=NOW + timedelta(hours=1, minutes=30),
        chaining=False,
    )
    assert seconds == 5400


def test_exactly_fifteen_minutes_left_is_issued() -> None:
    assert clamp(grant_expires_at=NOW + timedelta(seconds=900)) == 900


def test_grant_with_under_fifteen_minutes_left_is_refused() -> None:
    with pytest.raises(DurationTooShort) as info:
        clamp(requested=3600, grant_expires_at=NOW + timedelta(seconds=899))
    err = info.value
    assert isinstance(err, Conflict)
    assert err.status == 409
    assert err.code == "duration_too_short"
    assert "grant" in err.message and "899 seconds" in err.message
    assert err.hint is not None and "new grant" in err.hint


def test_engagement_with_under_fifteen_minutes_left_is_refused() -> None:
    with pytest.raises(DurationTooShort) as info:
        clamp(valid_until=NOW + timedelta(minutes=10))
    assert "engagement" in info.value.message
    assert info.value.hint is not None and "sponsor" in info.value.hint


def test_grant_already_over_is_refused() -> None:
    with pytest.raises(DurationTooShort) as info:
        clamp(grant_expires_at=NOW - timedelta(minutes=5))
    assert "0 seconds" in info.value.message


def test_entitlement_max_under_fifteen_minutes_is_refused() -> None:
    with pytest.raises(DurationTooShort, match="entitlement maximum"):
        clamp(entitlement_max=600)


@pytest.mark.parametrize("requested", [0, 899, 43_201, -1])
def test_requested_outside_sts_range_is_a_bad_request(requested: int) -> None:
    with pytest.raises(BadRequest) as info:
        clamp(requested=requested)
    assert not isinstance(info.value, DurationTooShort)
    assert info.value.status == 400
