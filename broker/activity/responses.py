"""What a detection does: revoke the grant or cut the person off, the grant service's own way.

:class:`DetectionResponder` is a :class:`~broker.grants.GrantService` acting for a detection
rule instead of a person: it ends grants with the same ``_end`` step an API revoke or the
scheduler's expiry uses (the grant's live sessions get a deny queued, which the scheduler's
revocation pass puts on the role), and cuts people off as :meth:`GrantService.cut_off` does.
It works inside the caller's transaction, so a detection, its response and their audit events
commit together or not at all. The actor of a response in the audit trail is
``detection:<rule id>``; ``detection.fired`` itself is the scheduler's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.activity.attribution import Attribution
from broker.activity.detections import Hit
from broker.activity.ledger import insert_for
from broker.activity.records import detection_facts
from broker.audit import NewEvent
from broker.auth.tokens import revoke_for_principals
from broker.grants import LIVE, GrantService
from broker.models import Detection, Grant, GrantStatus, Principal, new_id

log = logging.getLogger(__name__)

REVOKED = "revoked"
CUT_OFF = "cut_off"
ALERTED = "alerted"
ALREADY_ENDED = "already_ended"
ALREADY_CUT_OFF = "already_cut_off"
NO_GRANT = "no_grant"
FAILED = "failed"


class DetectionResponder(GrantService):
    """Revokes grants and cuts people off for detection rules (see the module docstring)."""

    def fire(
        self,
        session: Session,
        hit: Hit,
        found: Attribution,
        record: Mapping[str, Any],
        *,
        now: datetime,
    ) -> str | None:
        """Record a detection, respond and audit both, in the caller's transaction.

        Returns the outcome (``revoked``, ``cut_off``, ``alerted``...), or None when this rule
        already fired on this CloudTrail event (the same event delivered in another file).
        """
        rule = hit.rule
        event_id = str(record["eventID"])[:64]
        detection_id = new_id()
        facts = detection_facts(record, found)
        inserted = session.execute(
            insert_for(self.db, Detection)
            .values(
                id=detection_id,
                rule_id=rule.id,
                severity=rule.severity,
                response=rule.response,
                outcome="pending",
                event_id=event_id,
                event_time=found.event_time,
                action=found.action[:160],
                detected_at=now,
                principal_id=found.person.principal_id,
                grant_id=found.session.grant_id if found.session else None,
                session_id=found.session.session_id if found.session else None,
                details={"reasons": list(hit.reasons), **facts},
            )
            .on_conflict_do_nothing(index_elements=["rule_id", "event_id"])
            .returning(Detection.id)
        ).scalar()
        if inserted is None:
            return None
        result = self._respond(session, hit, found)
        session.execute(
            update(Detection).where(Detection.id == detection_id).values(outcome=result)
        )
        self._record(
            session,
            self._ectx("scheduler", None),
            NewEvent(
                "detection.fired",
                target=found.person.email,
                decision="alert" if rule.response == "alert" else "revoke",
                reason=f"{rule.id}: {rule.description or '; '.join(hit.reasons)}"[:1000],
                details={
                    "detection_id": detection_id,
                    "rule": rule.id,
                    "severity": rule.severity,
                    "response": rule.response,
                    "outcome": result,
                    "notify": rule.notify,
                    "reasons": list(hit.reasons),
                    "event_id": event_id,
                    "event_time": found.event_time.isoformat(),
                    "person": found.person.email,
                    **facts,
                },
            ),
        )
        return result

    def _respond(self, session: Session, hit: Hit, found: Attribution) -> str:
        rule = hit.rule
        actor = f"detection:{rule.id}"
        reason = f"detection {rule.id}: {'; '.join(hit.reasons)}"[:1000]
        if rule.response == "alert":
            return ALERTED
        try:
            with session.begin_nested():  # a failed response never loses the detection
                if rule.response == "cut_off":
                    return self.cut_off_in(
                        session, found.person.principal_id, actor=actor, reason=reason
                    )
                if found.session is None:
                    return NO_GRANT  # matched by source identity only: no grant to name
                return self.revoke_in(session, found.session.grant_id, actor=actor, reason=reason)
        except SQLAlchemyError as exc:
            log.error("detection %s could not %s: %s", rule.id, rule.response, exc)
            return FAILED

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
