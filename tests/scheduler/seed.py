"""Bulk test data for the scheduler: people, active grants and their live sessions.

Rows are inserted directly (not through the API) so a test can have a thousand grants expire
in the same minute; the scheduler then runs for real over them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert

from broker.db import Database
from broker.models import Grant, IssuedSession, Principal


@dataclass(frozen=True)
class Seeded:
    """One seeded grant and (when it has one) its live session."""

    grant_id: str
    principal_id: str
    source_identity: str
    role_arn: str
    issued_at: datetime | None


def seed_grants(
    database: Database,
    count: int,
    roles: Sequence[str],
    *,
    expires_at: Callable[[int], datetime],
    now: datetime,
    with_session: Callable[[int], bool] = lambda i: True,
    session_lifetime: timedelta = timedelta(hours=1),
    prefix: str = "",
) -> list[Seeded]:
    """Insert ``count`` people, each with one active grant on ``roles[i % len(roles)]``."""
    tag = prefix or uuid.uuid4().hex[:6]
    people: list[dict[str, object]] = []
    grants: list[dict[str, object]] = []
    sessions: list[dict[str, object]] = []
    seeded: list[Seeded] = []
    issued = now - timedelta(minutes=10)
    for i in range(count):
        pid, gid = uuid.uuid4().hex, uuid.uuid4().hex
        who = f"p{i:05d}-{tag}@example.com"
        role = roles[i % len(roles)]
        people.append(
            {
                "id": pid,
                "issuer": "urn:test",
                "subject": who,
                "email": who,
                "source_identity": who,
                "groups": ["developers"],
                "kind": "staff",
                "disabled": False,
                "created_at": now,
                "last_seen_at": now,
            }
        )
        grants.append(
            {
                "id": gid,
                "principal_id": pid,
                "entitlement_id": "app-read",
                "role_arn": role,
                "status": "active",
                "duration_seconds": 3600,
                "policy_version": "seed",
                "client": "api",
                "created_at": now - timedelta(hours=1),
                "starts_at": now - timedelta(hours=1),
                "expires_at": expires_at(i),
            }
        )
        live = with_session(i)
        if live:
            sessions.append(
                {
                    "id": uuid.uuid4().hex,
                    "grant_id": gid,
                    "principal_id": pid,
                    "role_arn": role,
                    "role_session_name": f"s-{gid}",
                    "source_identity": who,
                    "access_key_id": "ASIA" + gid[:16].upper(),
                    "assumed_role_arn": role.replace(":iam:", ":sts:").replace(
                        ":role/", ":assumed-role/"
                    )
                    + f"/s-{gid}",
                    "issued_at": issued,
                    "expires_at": issued + session_lifetime,
                    "client": "api",
                }
            )
        seeded.append(Seeded(gid, pid, who, role, issued if live else None))
    with database.session() as session:
        for start in range(0, count, 2000):
            session.execute(insert(Principal), people[start : start + 2000])
            session.execute(insert(Grant), grants[start : start + 2000])
        for start in range(0, len(sessions), 2000):
            session.execute(insert(IssuedSession), sessions[start : start + 2000])
    return seeded
