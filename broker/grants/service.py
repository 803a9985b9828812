"""GrantService: the one domain API for requesting, approving, issuing, revoking and expiring.

Every state change and its audit event commit in one transaction, so neither exists without the
other. Issuing credentials writes the decision's audit event *before* calling AWS: if that write
fails, AWS is never called (fail closed). Secrets returned by STS pass through and are never
stored, logged or audited.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit import NewEvent
from broker.auth.principals import sync_principal
from broker.auth.tokens import revoke_for_principals
from broker.errors import (
    Conflict,
    Forbidden,
    NotFound,
)
from broker.grants.ending import EndingMixin
from broker.grants.issuing import IssuingMixin
from broker.grants.types import (
    LIVE,
    Caller,
    RequestMeta,
)
from broker.models import (
    Grant,
    GrantStatus,
    Principal,
)
from broker.policy import Decision, Identity, Person


class GrantService(IssuingMixin, EndingMixin):
    """Request, approve, issue, revoke and expire grants under the policy in force."""

    # -- people -----------------------------------------------------------------------------

    def sign_in(self, identity: Identity, meta: RequestMeta) -> Caller:
        """Resolve an authenticated identity against the policy and record the principal."""
        person = self.policy.evaluator.resolve(identity)
        with self._tx() as session:
            principal = sync_principal(session, person, now=self.clock())
            if principal.disabled:
                raise Forbidden(
                    "Your access to the broker has been cut off by an administrator.",
                    hint="Contact your security team.",
                )
            return Caller(person, principal.id)

    def entitlements(self, caller: Caller, meta: RequestMeta) -> list[Decision]:
        """Every entitlement and the decision for this caller (allowed ones and why not)."""
        return self.policy.evaluator.decide_all(caller.person, self._ctx(meta))

    # -- grants -----------------------------------------------------------------------------

    def request_grant(
        self,
        caller: Caller,
        entitlement_id: str,
        *,
        reason: str | None,
        duration: timedelta | None,
        meta: RequestMeta,
    ) -> Grant:
        """Create a grant: active at once when the policy allows, pending when it needs approval."""
        now = self.clock()
        with self._denials_audited(caller, meta, "grant.request", entitlement_id):
            with self._tx() as session:
                principal = self._live_principal(session, caller)
                decision = self.policy.evaluator.decide(
                    caller.person, entitlement_id, self._ctx(meta)
                )
                self._check_request(decision, reason, duration)
                return self._new_grant(
                    session, principal, caller, decision, reason, duration, meta, now
                )

    def approve(
        self, approver: Caller, grant_id: str, *, comment: str | None, meta: RequestMeta
    ) -> Grant:
        """Approve a pending grant; never one's own, only as a named approver."""
        return self._decide_pending(approver, grant_id, comment, meta, approve=True)

    def deny(
        self, approver: Caller, grant_id: str, *, comment: str | None, meta: RequestMeta
    ) -> Grant:
        """Deny a pending grant."""
        return self._decide_pending(approver, grant_id, comment, meta, approve=False)

    def revoke(
        self, actor: Caller, grant_id: str, *, reason: str | None, meta: RequestMeta
    ) -> Grant:
        """End a grant early: its owner or an admin may; live sessions get a deny on AWS."""
        with self._tx() as session:
            grant = self._lock_grant(session, grant_id)
            if grant.principal_id != actor.principal_id and not self.policy.evaluator.is_admin(
                actor.person
            ):
                raise NotFound(f"No grant {grant_id} of yours.")
            if grant.status not in LIVE:
                raise Conflict(f"Grant {grant_id} is already {grant.status}.")
            self._end(session, grant, GrantStatus.REVOKED, actor.email, reason, meta)
            return grant

    def cut_off(self, admin: Caller, principal_id: str, *, reason: str, meta: RequestMeta) -> int:
        """Kill switch: disable a person, end all their grants, revoke their tokens and sessions."""
        with self._tx() as session:
            principal = self._person_for_admin(session, admin, principal_id)
            principal.disabled = True
            principal.disabled_reason = reason
            now = self.clock()
            grants = session.scalars(
                select(Grant)
                .where(Grant.principal_id == principal_id, Grant.status.in_(LIVE))
                .with_for_update()
            ).all()
            for grant in grants:
                self._end(session, grant, GrantStatus.REVOKED, admin.email, reason, meta)
            revoke_for_principals(session, [principal_id], now=now)
            self._person_revocations(session, principal, cutoff=now)
            self._record(
                session,
                self._ectx(admin.email, meta),
                NewEvent(
                    "principal.cut_off",
                    target=principal.email,
                    decision="revoke",
                    reason=reason,
                    details={"grants_revoked": len(grants)},
                ),
            )
            return len(grants)

    def restore(self, admin: Caller, principal_id: str, *, meta: RequestMeta) -> None:
        """Re-enable a person who was cut off."""
        with self._tx() as session:
            principal = self._person_for_admin(session, admin, principal_id)
            principal.disabled = False
            principal.disabled_reason = None
            self._record(
                session,
                self._ectx(admin.email, meta),
                NewEvent("principal.restore", target=principal.email, decision="allow"),
            )

    def _person_for_admin(self, session: Session, admin: Caller, principal_id: str) -> Principal:
        """The person row, locked, when the caller is a broker admin."""
        if not self.policy.evaluator.is_admin(admin.person):
            raise Forbidden("Only broker admins may cut a person off or re-enable them.")
        principal = session.get(Principal, principal_id, with_for_update=True)
        if principal is None:
            raise NotFound(f"No person {principal_id}.")
        return principal

    def list_grants(self, caller: Caller, *, include_ended: bool = False) -> list[Grant]:
        """The caller's grants, newest first."""
        with self.db.read_session() as session:
            query = select(Grant).where(Grant.principal_id == caller.principal_id)
            if not include_ended:
                query = query.where(Grant.status.in_(LIVE))
            return list(session.scalars(query.order_by(Grant.created_at.desc())).all())

    def pending_for_approver(self, approver: Caller) -> list[Grant]:
        """Pending grants this person may decide (never their own)."""
        with self.db.read_session() as session:
            rows = session.scalars(
                select(Grant).where(Grant.status == GrantStatus.PENDING).order_by(Grant.created_at)
            ).all()
        return [
            g
            for g in rows
            if g.principal_id != approver.principal_id
            and self.policy.evaluator.can_approve(approver.person, g.entitlement_id)
        ]

    def _decide_pending(
        self,
        approver: Caller,
        grant_id: str,
        comment: str | None,
        meta: RequestMeta,
        *,
        approve: bool,
    ) -> Grant:
        now = self.clock()
        with self._tx() as session:
            grant = self._lock_grant(session, grant_id)
            if grant.principal_id == approver.principal_id:
                raise Forbidden("You cannot approve or deny your own request.")
            if not self.policy.evaluator.can_approve(approver.person, grant.entitlement_id):
                raise Forbidden(f"You are not an approver for {grant.entitlement_id}.")
            if grant.status != GrantStatus.PENDING:
                raise Conflict(f"Grant {grant_id} is {grant.status}, not pending.")
            grant.decided_at = now
            grant.decided_by = approver.email
            grant.decision_comment = comment
            if approve:
                requester = self._requester(session, grant)
                self._activate(grant, requester, now)
            else:
                grant.status = GrantStatus.DENIED
                grant.ended_at = now
            self._record(
                session,
                self._ectx(approver.email, meta),
                NewEvent(
                    "grant.approve" if approve else "grant.deny",
                    target=grant.entitlement_id,
                    decision="allow" if approve else "deny",
                    reason=comment,
                    details={"grant_id": grant.id, "requester": grant.principal.email},
                ),
            )
            return grant

    def _requester(self, session: Session, grant: Grant) -> Person:
        """The requester as the policy sees them now (their end date still caps the grant)."""
        principal = grant.principal
        if principal.disabled:
            raise Conflict("The requester has been cut off; the request cannot be approved.")
        identity = Identity(
            issuer=principal.issuer,
            subject=principal.subject,
            email=principal.email,
            groups=frozenset(principal.groups or []),
        )
        return self.policy.evaluator.resolve(identity)
