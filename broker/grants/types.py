"""The small types the grant service speaks in: callers, request context, results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from broker.errors import (
    Conflict,
    PolicyDenied,
)
from broker.models import (
    Grant,
    GrantStatus,
)
from broker.policy import Decision, Person
from broker.sts import (
    IssuedCredentials,
)

LIVE = (GrantStatus.PENDING, GrantStatus.ACTIVE)
SESSION_TAG_GRANT = "broker-grant"
SESSION_TAG_KIND = "broker-kind"


class ApprovalRequired(PolicyDenied):
    """The entitlement needs an approved grant and the caller has none."""

    code = "approval_required"


class GrantExists(Conflict):
    """The person already holds a live grant for this entitlement (one at a time)."""

    code = "grant_exists"

    def __init__(self, grant: Grant) -> None:
        if grant.status == GrantStatus.PENDING:
            message = (
                f"You already have a pending request for {grant.entitlement_id} (grant {grant.id})."
            )
            hint = "Wait for an approver to decide it, or cancel it and ask again."
        else:
            until = f" until {grant.expires_at:%Y-%m-%d %H:%M} UTC" if grant.expires_at else ""
            message = (
                f"You already have an active grant for {grant.entitlement_id}{until} "
                f"(grant {grant.id})."
            )
            hint = "Get credentials under it; to change it, revoke it first and ask again."
        super().__init__(message, hint=hint)
        self.grant = grant


@dataclass(frozen=True)
class RequestMeta:
    """Where a call came from; copied into audit events and session records."""

    client: str = "api"
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Caller:
    """An authenticated person: their policy view, principal row id and SourceIdentity."""

    person: Person
    principal_id: str
    source_identity: str

    @property
    def email(self) -> str:
        """The caller's email, used as the audit actor."""
        return self.person.identity.email


@dataclass(frozen=True)
class Issued:
    """Credentials handed to the caller once, with the session recorded for them."""

    credentials: IssuedCredentials
    session_id: str
    grant_id: str
    entitlement_id: str


def main_reason(decision: Decision) -> str:
    """The first (main) reason of a decision, for messages and audit events."""
    return decision.reasons[0] if decision.reasons else decision.verdict.value


def short_duration(delta: timedelta) -> str:
    """A duration as 1h05m or 45m."""
    minutes = int(delta.total_seconds()) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def grant_summary(grants: Sequence[Grant]) -> list[dict[str, Any]]:
    """JSON-ready views of grants (for the API and pages)."""
    return [
        {
            "id": g.id,
            "entitlement": g.entitlement_id,
            "role_arn": g.role_arn,
            "status": g.status,
            "reason": g.reason,
            "created_at": g.created_at.isoformat(),
            "expires_at": g.expires_at.isoformat() if g.expires_at else None,
            "decided_by": g.decided_by,
        }
        for g in grants
    ]
