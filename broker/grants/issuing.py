"""Issuing credentials under a grant: audit first, AssumeRole, record; secrets never kept."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from broker.audit import EventContext, NewEvent
from broker.errors import (
    BrokerError,
    PolicyDenied,
)
from broker.grants.core import GrantCore
from broker.grants.types import (
    SESSION_TAG_GRANT,
    SESSION_TAG_KIND,
    ApprovalRequired,
    Caller,
    Issued,
    RequestMeta,
    main_reason,
)
from broker.models import (
    Grant,
    IssuedSession,
)
from broker.policy import Verdict
from broker.sts import (
    AssumeRequest,
    IssuedCredentials,
    NetworkBinding,
    clamp_duration,
    role_session_name,
)


class IssuingMixin(GrantCore):
    """Issuing credentials: decide and audit first, then AssumeRole, then record the session."""

    def issue(
        self,
        caller: Caller,
        entitlement_id: str,
        *,
        duration: timedelta | None,
        meta: RequestMeta,
        reason: str | None = None,
    ) -> Issued:
        """Issue credentials under the caller's active grant (creating one if auto-approved)."""
        request, grant_id, ectx = self._prepare_issue(
            caller, entitlement_id, duration, reason, meta
        )
        try:
            credentials = self.issuer.assume(request)
        except BrokerError as exc:
            self._best_effort_record(
                ectx,
                NewEvent(
                    "credentials.failed",
                    target=request.role_arn,
                    decision="error",
                    reason=exc.message,
                    details={"grant_id": grant_id, "role_session_name": request.role_session_name},
                ),
            )
            raise
        return self._record_issue(caller, entitlement_id, grant_id, credentials, meta, ectx)

    def _prepare_issue(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
    ) -> tuple[AssumeRequest, str, EventContext]:
        with self._denials_audited(caller, meta, "credentials.issue", entitlement_id):
            return self._prepare_issue_tx(caller, entitlement_id, duration, reason, meta)

    def _prepare_issue_tx(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
    ) -> tuple[AssumeRequest, str, EventContext]:
        now = self.clock()
        ectx = self._ectx(caller.email, meta)
        with self._tx() as session:
            principal = self._live_principal(session, caller)
            decision = self.policy.evaluator.decide(caller.person, entitlement_id, self._ctx(meta))
            if decision.verdict is Verdict.DENY:
                raise PolicyDenied(main_reason(decision))
            grant = self._active_grant(session, principal.id, entitlement_id, now)
            if grant is None:
                if decision.verdict is Verdict.APPROVAL:
                    raise ApprovalRequired(
                        f"{entitlement_id} needs an approved grant and you have none active.",
                        hint="Request access first; an approver must approve it.",
                    )
                self._check_request(decision, reason, None)
                grant = self._new_grant(
                    session, principal, caller, decision, reason, None, meta, now
                )
            entitlement = decision.entitlement
            if entitlement is None:  # an allowed decision always names its entitlement
                raise PolicyDenied(main_reason(decision))
            seconds = clamp_duration(
                requested=int(duration.total_seconds()) if duration else None,
                entitlement_max=int(decision.max_duration.total_seconds()),
                role_max=self.role_limits.max_session_duration(entitlement.role_arn),
                grant_expires_at=grant.expires_at,
                valid_until=caller.person.valid_until,
                now=now,
            )
            network = entitlement.network
            request = AssumeRequest(
                role_arn=entitlement.role_arn,
                role_session_name=role_session_name(grant.id),
                source_identity=principal.source_identity,
                duration_seconds=seconds,
                tags={SESSION_TAG_GRANT: grant.id, SESSION_TAG_KIND: caller.person.kind},
                session_policy=entitlement.session_policy,
                managed_policy_arns=tuple(entitlement.managed_policy_arns),
                network=NetworkBinding(tuple(network.source_ip), tuple(network.source_vpc))
                if network
                else None,
            )
            self.issuer.check(request)
            self._record(
                session,
                ectx,
                NewEvent(
                    "credentials.issue",
                    target=entitlement.role_arn,
                    decision="allow",
                    reason=main_reason(decision),
                    details={
                        "entitlement": entitlement_id,
                        "grant_id": grant.id,
                        "role_session_name": request.role_session_name,
                        "source_identity": request.source_identity,
                        "duration_seconds": seconds,
                    },
                ),
            )
            return request, grant.id, ectx

    def _record_issue(
        self,
        caller: Caller,
        entitlement_id: str,
        grant_id: str,
        credentials: IssuedCredentials,
        meta: RequestMeta,
        ectx: EventContext,
    ) -> Issued:
        now = self.clock()
        with self._tx() as session:
            row = IssuedSession(
                grant_id=grant_id,
                principal_id=caller.principal_id,
                role_arn=_role_arn(credentials.assumed_role_arn, session, grant_id),
                role_session_name=credentials.role_session_name,
                source_identity=credentials.source_identity,
                access_key_id=credentials.access_key_id,
                assumed_role_arn=credentials.assumed_role_arn,
                issued_at=now,
                expires_at=credentials.expiration,
                client=meta.client,
                source_ip=meta.ip,
                user_agent=(meta.user_agent or None) and meta.user_agent[:512],
            )
            session.add(row)
            session.flush()
            self._record(
                session,
                ectx,
                NewEvent(
                    "credentials.issued",
                    target=credentials.assumed_role_arn,
                    decision="allow",
                    details={
                        "entitlement": entitlement_id,
                        "grant_id": grant_id,
                        "session_id": row.id,
                        "access_key_id": credentials.access_key_id,
                        "role_session_name": credentials.role_session_name,
                        "source_identity": credentials.source_identity,
                        "expires_at": credentials.expiration.isoformat(),
                    },
                ),
            )
            return Issued(credentials, row.id, grant_id, entitlement_id)


def _role_arn(assumed_role_arn: str, session: Session, grant_id: str) -> str:
    grant = session.get(Grant, grant_id)
    return grant.role_arn if grant is not None else assumed_role_arn
