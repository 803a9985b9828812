"""Sessions AWS may have made that the broker never recorded, and the deny that covers each.

A lost AssumeRole answer (read timeout, dropped connection, a gateway's 5xx) or a database that
fails between AWS's answer and the session record would leave a live session nobody accounts
for. So every AssumeRole is preceded, in the transaction that audits the decision, by a
*standby* deny naming the one session the call may make: its role, RoleSessionName, grant and
person. Standby rows never reach AWS.

- The session is recorded: the standby row is deleted in the same transaction.
- AWS answered with an error (no session exists): it is deleted, and the failure audited.
- The outcome is unknown, or the session could not be recorded: it is *armed* at once, becoming
  a pending session-scope deny (``aws:userid`` like ``*:<RoleSessionName>``, see
  :mod:`broker.revocation`) that the scheduler writes to the role on its next pass, with a
  ``credentials.outcome_unknown`` or ``credentials.unrecorded`` audit event.
- Nobody could arm it (database down, process killed): the scheduler arms every standby row
  older than :data:`IN_FLIGHT_MAX` and audits ``credentials.unrecorded``. The deny was in the
  database before AWS was called, so no outcome leaves a session uncovered, and the audit trail
  never ends on ``credentials.issue`` for a session.

The deny targets that one session by name, not the grant or the person: their other live
sessions keep working, and a new request simply makes a new session. It stays until the session
has surely expired: armed at ``t``, it is kept until ``t`` + the requested duration (AWS never
makes a session longer) + :data:`CLOCK_MARGIN` for the difference between our clock and AWS's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from broker.audit import NewEvent
from broker.errors import ServiceUnavailable
from broker.models import Revocation, RevocationStatus, new_id
from broker.sts import AssumeRequest

IN_FLIGHT_MAX = timedelta(minutes=15)
"""An issuance that has neither recorded nor armed its deny this long after its decision is
presumed dead. The default STS settings bound an issuance to under 2 minutes (4 attempts of
10 s connect + 10 s read, plus backoff); one that still finishes later finds its deny armed and
withholds the credentials, so a late answer is never handed out for a denied session."""

CLOCK_MARGIN = timedelta(minutes=5)
"""How far AWS's clock and ours may disagree when deciding that a session has expired."""


class SessionNotRecorded(ServiceUnavailable):
    """AWS issued credentials the broker could not record: they were withheld and denied."""

    code = "session_not_recorded"


def standby_deny(
    request: AssumeRequest, *, grant_id: str, principal_id: str, now: datetime
) -> Revocation:
    """The deny held in standby for the session ``request`` may make (not yet on AWS).

    ``drop_after - cutoff`` is the session's longest life plus the margin; :func:`arm` keeps
    that span from the moment it is armed.
    """
    return Revocation(
        id=new_id(),
        role_arn=request.role_arn,
        scope="session",
        source_identity=request.source_identity,
        grant_id=grant_id,
        principal_id=principal_id,
        role_session_name=request.role_session_name,
        cutoff=now,
        drop_after=now + timedelta(seconds=request.duration_seconds) + CLOCK_MARGIN,
        status=RevocationStatus.STANDBY,
        created_at=now,
    )


def arm(row: Revocation, now: datetime, *, expires_at: datetime | None = None) -> None:
    """Put a standby deny in the queue for AWS, kept until its session has surely expired.

    ``expires_at`` is AWS's own expiration when the answer arrived (the session could not be
    recorded); an already armed row only has its end pushed out to cover it.
    """
    if row.status == RevocationStatus.STANDBY:
        life = row.drop_after - row.cutoff
        row.status = RevocationStatus.PENDING
        row.cutoff = now
        row.drop_after = now + life
        row.next_attempt_at = now
    if expires_at is not None and row.drop_after < expires_at + CLOCK_MARGIN:
        row.drop_after = expires_at + CLOCK_MARGIN
        if row.status == RevocationStatus.DROPPED:
            row.status = RevocationStatus.PENDING
            row.next_attempt_at = now


def lost_session_event(action: str, row: Revocation, reason: str) -> NewEvent:
    """The audit event saying which session may exist and which deny covers it."""
    details: dict[str, Any] = {
        "grant_id": row.grant_id,
        "role_session_name": row.role_session_name,
        "source_identity": row.source_identity,
        "revocation": row.id,
        "deny": {"aws:userid": f"*:{row.role_session_name}"},
        "deny_until": row.drop_after.isoformat(),
    }
    return NewEvent(action, target=row.role_arn, decision="revoke", reason=reason, details=details)
