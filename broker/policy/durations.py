"""Durations as people write them in policy files: ``1h``, ``90m``, ``1h30m``, ``900s``."""

from __future__ import annotations

import functools
import re
from datetime import timedelta

MIN_SESSION = timedelta(minutes=15)  # STS refuses DurationSeconds below 900
MAX_SESSION = timedelta(hours=12)  # and above 43,200 (a role's MaxSessionDuration ceiling)

DURATION_PATTERN = r"^(?=\d)(\d+h)?(\d+m)?(\d+s)?$"
_DURATION_RE = re.compile(r"^(?=\d)(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: object) -> timedelta:
    """Parse ``1h30m``-style text (or whole seconds as an integer) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match:
            hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            return timedelta(hours=hours, minutes=minutes, seconds=seconds)
    raise ValueError(
        f"{value!r} is not a duration; write hours, minutes and seconds like 1h, 90m, 1h30m, 900s"
    )


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way policy files write it (``1h30m``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    text += f"{seconds}s" if seconds or not text else ""
    return text


def session_duration(value: object) -> timedelta:
    """Parse a duration and require it to lie within what STS allows (15m to 12h)."""
    if isinstance(value, str | int):
        return _cached_session_duration(value)  # the same few values repeat across a policy
    return _session_duration(value)


@functools.lru_cache(maxsize=256)
def _cached_session_duration(value: str | int) -> timedelta:
    return _session_duration(value)


def _session_duration(value: object) -> timedelta:
    duration = parse_duration(value)
    if duration < MIN_SESSION:
        raise ValueError(
            f"{format_duration(duration)} is shorter than the 15m minimum "
            "(STS refuses sessions under 900 seconds); use 15m or more"
        )
    if duration > MAX_SESSION:
        raise ValueError(
            f"{format_duration(duration)} is longer than the 12h maximum "
            "(STS refuses sessions over 43,200 seconds); use 12h or less"
        )
    return duration
