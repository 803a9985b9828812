"""Durations as the engineer types them (`1h`, `90m`, `1h30m`, `900s`), read on the client.

The broker validates the same syntax (broker.policy.durations); the CLI reads it only to tell
the person when the broker issued less than they asked for, without importing the server.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?=\d)(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def seconds(text: str) -> int | None:
    """`1h30m` as 5400; a bare number as seconds; None for anything else."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not match:
        return None
    hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def short(total: int) -> str:
    """5400 as `1h30m`, 3600 as `1h`, 59 as `59s`."""
    hours, rest = divmod(max(0, total), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")
