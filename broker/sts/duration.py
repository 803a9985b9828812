"""How long a session may last: the smallest of every limit, never under 15 minutes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from broker.errors import BadRequest
from broker.sts.errors import (
    DurationTooShort,
)
from broker.sts.limits import (
    CHAINING_MAX_DURATION,
    MAX_DURATION,
    MIN_DURATION,
)

log = logging.getLogger(__name__)


def clamp_duration(
    *,
    requested: int | None,
    entitlement_max: int,
    role_max: int,
    grant_expires_at: datetime | None,
    valid_until: datetime | None,
    now: datetime,
    chaining: bool = False,
) -> int:
    """Seconds to ask STS for: the smallest of every limit; refuse if under 15 minutes remain.

    `requested=None` means "as long as allowed". Raise BadRequest for a requested duration
    outside 900-43,200 s and DurationTooShort when the grant, the person's engagement or a
    configured maximum leaves less than 900 s (credentials must not outlive their permission).
    """
    if requested is not None and not MIN_DURATION <= requested <= MAX_DURATION:
        raise BadRequest(
            f"A session of {requested} seconds cannot be issued: STS accepts "
            f"{MIN_DURATION}-{MAX_DURATION} seconds (15 minutes to 12 hours).",
            hint="Ask for a duration between 15m and 12h.",
        )
    limits: dict[str, int] = {
        "requested": requested if requested is not None else MAX_DURATION,
        "entitlement": entitlement_max,
        "role": role_max,
        "sts": MAX_DURATION,
    }
    if chaining:
        limits["chaining"] = CHAINING_MAX_DURATION
    if grant_expires_at is not None:
        limits["grant"] = _seconds_until(grant_expires_at, now)
    if valid_until is not None:
        limits["valid_until"] = _seconds_until(valid_until, now)
    reason = min(limits, key=lambda k: limits[k])
    seconds = limits[reason]
    if seconds < MIN_DURATION:
        raise _too_short(reason, seconds, grant_expires_at, valid_until)
    return seconds


def _seconds_until(when: datetime, now: datetime) -> int:
    # Round down: a credential may end a fraction early, never late.
    return int((when - now).total_seconds() // 1)


def _too_short(
    reason: str, seconds: int, grant_expires_at: datetime | None, valid_until: datetime | None
) -> DurationTooShort:
    left = max(seconds, 0)
    if reason == "grant" and grant_expires_at is not None:
        return DurationTooShort(
            f"Your grant ends at {grant_expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
            f"{left} seconds from now: less than the 15 minutes STS credentials last at minimum, "
            "so the broker will not issue credentials that would outlive the grant.",
            hint="Request a new grant (or an extension) for this role.",
        )
    if reason == "valid_until" and valid_until is not None:
        return DurationTooShort(
            f"Your engagement ends at {valid_until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
            f"{left} seconds from now: less than the 15 minutes STS credentials last at minimum, "
            "so the broker will not issue credentials that would outlive it.",
            hint="Ask your sponsor to extend your engagement end date (valid_until).",
        )
    return DurationTooShort(
        f"The {reason} maximum session duration is {seconds} seconds, below STS's "
        f"{MIN_DURATION}-second minimum, so no credentials can be issued.",
        hint="Ask an admin to set max_duration to at least 15m for this entitlement.",
    )
