"""Fixed-window rate limits counted in the database, so they hold across every worker.

One row per limited key counts the hits of the current window (an upsert that restarts the
count when the window moved on). :func:`count_hit` runs inside the caller's transaction, so a
request that writes anyway (issuing credentials) pays no transaction of its own for its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.errors import TooManyRequests
from broker.models import RateLimitBucket


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` hits per ``window_seconds`` for ``key`` (e.g. ``issue:<person>``)."""

    key: str
    limit: int
    window_seconds: int = 60


class RateLimited(TooManyRequests):
    """Too many attempts in the current window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "Too many attempts in a short time, so the broker is pausing this for a moment.",
            hint=f"Wait {retry_after} seconds and try again.",
        )
        self.retry_after = retry_after


def count_hit(session: Session, limit: RateLimit, *, now: datetime | None = None) -> int:
    """Count one hit in the current window (in the session's transaction); the count so far."""
    now = now or datetime.now(UTC)
    window = limit.window_seconds
    start = datetime.fromtimestamp(int(now.timestamp()) // window * window, tz=UTC)
    statement = _upsert(session.get_bind().dialect.name)
    return int(session.execute(statement, {"key": limit.key[:255], "start": start}).scalar_one())


@cache
def _upsert(dialect: str) -> Any:
    """The counting statement for a dialect, built once (it runs on every issuance)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = RateLimitBucket.__table__.c
    new_row = insert(RateLimitBucket).values(
        key=bindparam("key"), window_start=bindparam("start"), count=1
    )
    same_window = table.window_start == new_row.excluded.window_start
    return new_row.on_conflict_do_update(
        index_elements=[table.key],
        set_={
            "count": case((same_window, table.count + 1), else_=1),
            "window_start": new_row.excluded.window_start,
        },
    ).returning(table.count)


def check(session: Session, limit: RateLimit, *, now: datetime | None = None) -> None:
    """Count one hit; RateLimited (with the seconds until the next window) past the limit."""
    now = now or datetime.now(UTC)
    if count_hit(session, limit, now=now) > limit.limit:
        window = limit.window_seconds
        raise RateLimited(window - int(now.timestamp()) % window)
