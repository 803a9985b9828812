"""GrantService: the one domain API for requesting, approving, issuing, revoking and expiring.

Every state change and its audit event commit in one transaction, so neither exists without the
other. Issuing credentials writes the decision's audit event *before* calling AWS: if that write
fails, AWS is never called (fail closed). Secrets returned by STS pass through and are never
stored, logged or audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.audit import NewEvent
from broker.auth.identity import LOCAL_ISSUER, StaleClaims, attributes_of, identity_of
from broker.auth.principals import find_principal, record_claims
from broker.auth.tokens import revoke_for_principals
from broker.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unauthenticated,
)
from broker.grants.ending import EndingMixin
from broker.grants.issuing import IssuingMixin
from broker.grants.types import (
    LIVE,
    Caller,
    RequestMeta,
    short_duration,
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

    def sign_in(
        self,
        identity: Identity,
        meta: RequestMeta,
        *,
        claims_at: datetime | None = None,
        idp_tokens: str | None = None,
    ) -> Caller:
        """Record what the provider just stated about a person (as of `claims_at`) and return
        them as a Caller; the identity's attributes must already have passed `person_claims`.

        `idp_tokens` (sealed) replace the provider tokens kept for refreshing these claims.
        """
        now = self.clock()
        person = self.policy.evaluator.resolve(identity)
        with self._tx() as session:
            before = find_principal(session, identity.issuer, identity.subject)
            old_email = before.email if before is not None else None
            principal = record_claims(
                session, person, attributes_of(identity), claims_at=claims_at or now, now=now
            )
            if idp_tokens is not None:
                principal.idp_tokens = idp_tokens
            if old_email is not None and old_email != principal.email:
                self._record(
                    session,
                    self._ectx(principal.email, meta),
                    NewEvent(
                        "principal.email_change",
                        target=principal.email,
                        decision="allow",
                        reason="the identity provider now states another email for this person",
                        details={
                            "principal_id": principal.id,
                            "previous_email": old_email,
                            "source_identity": principal.source_identity,
                        },
                    ),
                )
            return self._caller(principal, identity.amr, identity.acr)

    def caller_for(self, principal_id: str, auth: Mapping[str, Any], meta: RequestMeta) -> Caller:
        """The person behind a session or token (`auth` holds that sign-in's amr/acr)."""
        with self.db.read_session() as session:
            principal = session.get(Principal, principal_id)
            if principal is None:
                raise Unauthenticated("This sign-in belongs to nobody the broker knows.")
            return self.caller_of(principal, auth)

    def caller_of(self, principal: Principal, auth: Mapping[str, Any]) -> Caller:
        """:meth:`caller_for` for a principal row the caller has already read."""
        amr = auth.get("amr") or []
        acr = auth.get("acr")
        return self._caller(
            principal, tuple(str(a) for a in amr), str(acr) if acr is not None else None
        )

    def _caller(self, principal: Principal, amr: tuple[str, ...], acr: str | None) -> Caller:
        """Refuse a cut-off person or stale claims; else the person as the policy sees them."""
        if principal.disabled:
            raise Forbidden(
                "Your access to the broker has been cut off by an administrator.",
                hint="Contact your security team.",
            )
        if self.claims_stale(principal):
            raise StaleClaims(
                "What the broker knows of your groups and email is older than "
                f"{short_duration(self.claims_max_age)} and could not be refreshed.",
                hint="Sign in again (`broker login` for the CLI).",
            )
        auth = {"amr": list(amr), "acr": acr} if acr is not None else {"amr": list(amr)}
        identity = identity_of(principal.issuer, principal.subject, principal.claims, auth)
        person = self.policy.evaluator.resolve(identity)
        return Caller(person, principal.id, principal.source_identity)

    def claims_stale(self, principal: Principal) -> bool:
        """True when the provider's claims about this person are past the freshness bound.

        People an admin declared in the broker itself (LOCAL_ISSUER) have no provider to ask.
        """
        if principal.issuer == LOCAL_ISSUER:
            return False
        stated = principal.claims_at
        return stated is None or self.clock() - stated > self.claims_max_age

    def record_best_effort(self, actor: str, meta: RequestMeta, event: NewEvent) -> None:
        """Audit an event that accompanies a refusal; the refusal stands if this cannot be."""
        self._best_effort_record(self._ectx(actor, meta), event)

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
        """Kill switch: disable a person, end all their grants, revoke their tokens and sessions.

        A broker-local identity sharing the person's email is cut off with them: the switch
        acts on the person, whichever rows their tokens belong to.
        """
        with self._tx() as session:
            principal = self._person_for_admin(session, admin, principal_id)
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
                    self._end(session, grant, GrantStatus.REVOKED, admin.email, reason, meta)
                ended += len(grants)
                self._person_revocations(session, row, cutoff=now)
            revoke_for_principals(session, [row.id for row in rows], now=now)
            self._record(
                session,
                self._ectx(admin.email, meta),
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
            return ended

    @staticmethod
    def _same_email(session: Session, principal: Principal) -> list[Principal]:
        """Other rows with this person's email (a broker-local identity beside a provider one)."""
        return list(
            session.scalars(
                select(Principal)
                .where(
                    func.lower(Principal.email) == principal.email.lower(),
                    Principal.id != principal.id,
                )
                .with_for_update()
            ).all()
        )

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
            if not _same_person(g.principal, approver)
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
            if _same_person(grant.principal, approver):
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
        identity = identity_of(principal.issuer, principal.subject, principal.claims, {})
        return self.policy.evaluator.resolve(identity)


def _same_person(requester: Principal, approver: Caller) -> bool:
    """True when the approver is the requester: the same row, or the same email on another."""
    return (
        requester.id == approver.principal_id or requester.email.lower() == approver.email.lower()
    )
