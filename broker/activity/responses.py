"""What a detection does: revoke the grant or cut the person off, the grant service's own way.

:class:`DetectionResponder` is a :class:`~broker.grants.GrantService` acting for a detection
rule instead of a person: it ends grants with the same ``_end`` step an API revoke or the
scheduler's expiry uses (the grant's live sessions get a deny queued, which the scheduler's
revocation pass puts on the role), and cuts people off as :meth:`GrantService.cut_off` does.
It works inside the caller's transaction, so a detection, its response and their audit events
commit together or not at all. The actor in the audit trail is ``detection:<rule id>``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit import NewEvent
from broker.auth.tokens import revoke_for_principals
from broker.grants import LIVE, GrantService
from broker.models import Grant, GrantStatus, Principal

REVOKED = "revoked"
CUT_OFF = "cut_off"
ALERTED = "alerted"
ALREADY_ENDED = "already_ended"
ALREADY_CUT_OFF = "already_cut_off"
NO_GRANT = "no_grant"


class DetectionResponder(GrantService):
    """Revokes grants and cuts people off for detection rules (see the module docstring)."""

    def revoke_in(self, session: Session, grant_id: str, *, actor: str, reason: str) -> str:
        """End a live grant as revoked and queue denies for its sessions; return the outcome."""
        grant = session.get(Grant, grant_id, with_for_update=True, populate_existing=True)
        if grant is None:
            return NO_GRANT
        if grant.status not in LIVE:
            return ALREADY_ENDED
        self._end(session, grant, GrantStatus.REVOKED, actor, reason, None)
        return REVOKED

    def cut_off_in(self, session: Session, principal_id: str, *, actor: str, reason: str) -> str:
        """Disable a person, end their grants, deny their live sessions, revoke their tokens.

        The same steps as :meth:`GrantService.cut_off`, without the admin check (the actor is a
        rule of the policy in force), including a broker-local identity sharing the email.
        """
        principal = session.get(Principal, principal_id, with_for_update=True)
        if principal is None:
            return NO_GRANT
        if principal.disabled:
            return ALREADY_CUT_OFF
        now = self.clock()
        rows = [principal, *self._same_email(session, principal)]
        ended = 0
        for row in rows:
            row.disabled = True
            row.disabled_reason = reason
            grants = session.scalars(
                select(Grant)
                .where(Grant.principal_id == row.id, Grant.status.in_(LIVE))
                .with_for_update()
            ).all()
            for grant in grants:
                self._end(session, grant, GrantStatus.REVOKED, actor, reason, None)
            ended += len(grants)
            self._person_revocations(session, row, cutoff=now)
        revoke_for_principals(session, [row.id for row in rows], now=now)
        self._record(
            session,
            self._ectx(actor, None),
            NewEvent(
                "principal.cut_off",
                target=principal.email,
                decision="revoke",
                reason=reason,
                details={
                    "grants_revoked": ended,
                    "principal_ids": [row.id for row in rows],
                    "source_identities": sorted({row.source_identity for row in rows}),
                },
            ),
        )
        return CUT_OFF
