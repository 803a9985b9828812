"""How the pages word things: one duration format, countdowns, and what each reader may see.

Every page renders durations the same way (`1h 30m`), grant ends as a time plus a separate
countdown (`7h 59m 59s left`, the same words `broker.js` keeps updating), and policy reasons
without the policy file locations (`entitlements.yaml:69`) for anyone but admins: engineers
get the plain-language reason, admins (and `broker policy explain`) the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from flask import Flask
from jinja2 import pass_context
from jinja2.runtime import Context

from broker.policy import parse_duration

# The evaluator cites a rule as " (file.yaml:LINE)"; nothing else in a reason looks like that.
_POLICY_LOCATION = re.compile(r" \([^()\s]+\.ya?ml:\d+\)")


@dataclass(frozen=True)
class Notice:
    """A one-line message at the top of a page; `kind` picks its style (and its meaning)."""

    text: str
    kind: Literal["success", "info", "warning"] = "success"


def human_duration(value: timedelta | int | float | str) -> str:
    """A duration as the pages show it: `4h`, `1h 30m`, `45m`, `30s` (never `240 minutes`).

    Takes a timedelta, seconds, or the policy files' notation (`1h30m`).
    """
    if isinstance(value, str):
        value = parse_duration(value)
    total = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if total < 60:
        return f"{max(total, 0)}s"
    hours, rest = divmod(total, 3600)
    minutes = rest // 60
    parts = ([f"{hours}h"] if hours else []) + ([f"{minutes}m"] if minutes else [])
    return " ".join(parts)


def time_left(end: datetime, now: datetime) -> str:
    """The countdown's words, as `broker.js` writes them: `7h 05m 09s left`, or `expired`."""
    seconds = int((end - now).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s left"
    return f"{minutes}m {secs:02d}s left"


def utc_minute(when: datetime) -> str:
    """A time to the minute, as every page writes it: `2025-06-01 17:00 UTC`."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


def without_policy_locations(text: str) -> str:
    """A policy reason without the file and line it came from (for non-admin readers)."""
    return _POLICY_LOCATION.sub("", text)


@pass_context
def policy_reason(context: Context, text: str) -> str:
    """A policy reason as this page's reader may see it: with file and line for admins only."""
    return text if context.get("is_admin") else without_policy_locations(text)


def init_app(app: Flask) -> None:
    """Make the helpers available to every template."""
    app.add_template_filter(human_duration, "duration")
    app.add_template_filter(utc_minute, "utc_minute")
    app.add_template_filter(policy_reason, "policy_reason")
    app.add_template_global(time_left, "time_left")
