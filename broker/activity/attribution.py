"""Joining CloudTrail records to the broker's sessions, grants and people.

A record belongs to the broker when it was made with the access key of a session the broker
issued, when it is the broker's own ``AssumeRole`` that made such a session (the key is in its
response), when its role session name is one the broker chose, or, failing those, when its
``sourceIdentity`` is a person's (a session chained from a broker session keeps it).

The :class:`Attributor` is built for volume: :meth:`Attributor.load` fetches, for a whole batch
of records, every session, grant state and person not yet known in a few ``IN`` queries; after
that :meth:`Attributor.attribute` is dictionary lookups. Sessions never change once recorded,
so they stay cached; grant states are fetched fresh for every batch (a grant may end at any
time); keys that are not the broker's are remembered until :meth:`Attributor.forget_misses`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.activity.cloudtrail import action_of, event_time
from broker.models import Grant, IssuedSession, Principal

SESSION_NAME_PREFIX = "broker-"
CHUNK = 500
MAX_CACHED = 200_000
SUMMARY_KEYS = (
    "instanceType",
    "roleArn",
    "roleSessionName",
    "userName",
    "groupName",
    "policyArn",
    "policyName",
    "bucketName",
    "name",
    "trailName",
    "functionName",
    "dBInstanceIdentifier",
)
"""Top-level request parameters kept in the compact row (scalars, cut to 256 characters)."""
_SECRET_KEY = re.compile(r"secret|sessiontoken|session_token|password|privatekey", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PersonFacts:
    """The person a record is attributed to, as the policy's `who` matches see them."""

    principal_id: str
    email: str
    kind: str
    groups: frozenset[str]
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """A broker-issued session, with its grant and person."""

    session_id: str
    grant_id: str
    entitlement_id: str
    role_arn: str
    access_key_id: str
    role_session_name: str
    person: PersonFacts


@dataclass(frozen=True, slots=True)
class GrantState:
    """Whether a grant was still running, as read for the current batch."""

    status: str
    expires_at: datetime | None
    ended_at: datetime | None

    def over_at(self, moment: datetime) -> bool:
        """True when ``moment`` is after the grant ended (revoked, expired) or expired."""
        if self.ended_at is not None and moment > self.ended_at:
            return True
        return self.expires_at is not None and moment > self.expires_at


@dataclass(frozen=True, slots=True)
class Attribution:
    """One record joined to the broker's facts: who, under which grant and session."""

    person: PersonFacts
    session: SessionFacts | None
    matched_by: str
    """``access_key``, ``assume_role``, ``session_name`` or ``source_identity``."""
    action: str
    event_time: datetime
    after_grant_end: bool
    grant_ended_at: datetime | None


def _identity(record: Mapping[str, Any]) -> Mapping[str, Any]:
    found = record.get("userIdentity")
    return found if isinstance(found, dict) else {}


def _issued_key(record: Mapping[str, Any]) -> str | None:
    """The access key an ``AssumeRole`` record's response hands out."""
    if record.get("eventName") != "AssumeRole":
        return None
    response = record.get("responseElements")
    credentials = response.get("credentials") if isinstance(response, dict) else None
    key = credentials.get("accessKeyId") if isinstance(credentials, dict) else None
    return key if isinstance(key, str) else None


def _session_name(identity: Mapping[str, Any]) -> str | None:
    arn = identity.get("arn")
    if isinstance(arn, str) and ":assumed-role/" in arn:
        name = arn.rsplit("/", 1)[-1]
        return name if name.startswith(SESSION_NAME_PREFIX) else None
    return None


def _source_identity(record: Mapping[str, Any], identity: Mapping[str, Any]) -> str | None:
    context = identity.get("sessionContext")
    found = context.get("sourceIdentity") if isinstance(context, dict) else None
    return found if isinstance(found, str) and found else None


def _maybe_broker_key(key: object) -> bool:
    """STS session keys start ASIA; long-lived IAM user keys (AKIA) are never the broker's."""
    return isinstance(key, str) and key.startswith("ASIA")


class Attributor:
    """Attributes records to sessions, grants and people (see the module docstring)."""

    def __init__(self, *, max_cached: int = MAX_CACHED) -> None:
        self.max_cached = max_cached
        self.by_key: dict[str, SessionFacts] = {}
        self.by_name: dict[str, SessionFacts] = {}
        self.people: dict[str, PersonFacts] = {}  # source identity -> person
        self.grants: dict[str, GrantState] = {}
        self._missed_keys: set[str] = set()
        self._missed_names: set[str] = set()
        self._missed_identities: set[str] = set()

    def forget_misses(self) -> None:
        """Look again for keys, names and identities that were not the broker's before."""
        self._missed_keys.clear()
        self._missed_names.clear()
        self._missed_identities.clear()

    # -- loading ---------------------------------------------------------------------------------

    def load(self, session: Session, records: Iterable[Mapping[str, Any]]) -> None:
        """Fetch what attributing these records needs: unknown sessions and people, and the
        current state of every grant they touch."""
        keys: set[str] = set()
        names: set[str] = set()
        identities: set[str] = set()
        for record in records:
            identity = _identity(record)
            key = identity.get("accessKeyId")
            if _maybe_broker_key(key) and key not in self.by_key:
                keys.add(key)  # type: ignore[arg-type]
            issued = _issued_key(record)
            if issued is not None and issued not in self.by_key:
                keys.add(issued)
            name = _session_name(identity)
            if name is not None and name not in self.by_name:
                names.add(name)
            source = _source_identity(record, identity)
            if source is not None and source not in self.people:
                identities.add(source)
        if len(self.by_key) > self.max_cached:
            self.by_key.clear()
            self.by_name.clear()
        self._load_sessions(session, keys - self._missed_keys, names - self._missed_names)
        self._load_people(session, identities - self._missed_identities)
        self._load_grants(session, records)

    def _load_sessions(self, session: Session, keys: set[str], names: set[str]) -> None:
        for column, wanted, missed in (
            (IssuedSession.access_key_id, keys, self._missed_keys),
            (IssuedSession.role_session_name, names, self._missed_names),
        ):
            listed = sorted(wanted)
            for start in range(0, len(listed), CHUNK):
                chunk = listed[start : start + CHUNK]
                rows = session.execute(
                    select(IssuedSession, Grant.entitlement_id, Principal)
                    .join(Grant, Grant.id == IssuedSession.grant_id)
                    .join(Principal, Principal.id == IssuedSession.principal_id)
                    .where(column.in_(chunk))
                ).all()
                for issued, entitlement_id, principal in rows:
                    self._remember(issued, entitlement_id, principal)
                found = {self._column_value(column, r[0]) for r in rows}
                missed.update(k for k in chunk if k not in found)

    @staticmethod
    def _column_value(column: Any, row: IssuedSession) -> str:
        return row.access_key_id if column is IssuedSession.access_key_id else row.role_session_name

    def _remember(self, issued: IssuedSession, entitlement_id: str, principal: Principal) -> None:
        person = self._person(principal)
        facts = SessionFacts(
            session_id=issued.id,
            grant_id=issued.grant_id,
            entitlement_id=entitlement_id,
            role_arn=issued.role_arn,
            access_key_id=issued.access_key_id,
            role_session_name=issued.role_session_name,
            person=person,
        )
        self.by_key[issued.access_key_id] = facts
        self.by_name[issued.role_session_name] = facts

    def _person(self, principal: Principal) -> PersonFacts:
        known = self.people.get(principal.source_identity)
        if known is not None and known.principal_id == principal.id:
            return known
        person = PersonFacts(
            principal_id=principal.id,
            email=principal.email,
            kind=principal.kind,
            groups=frozenset(principal.groups or ()),
            claims=dict(principal.claims or {}),
        )
        self.people[principal.source_identity] = person
        return person

    def _load_people(self, session: Session, identities: set[str]) -> None:
        listed = sorted(identities)
        for start in range(0, len(listed), CHUNK):
            chunk = listed[start : start + CHUNK]
            found = set()
            for principal in session.scalars(
                select(Principal).where(Principal.source_identity.in_(chunk))
            ):
                self._person(principal)
                found.add(principal.source_identity)
            self._missed_identities.update(i for i in chunk if i not in found)

    def _load_grants(self, session: Session, records: Iterable[Mapping[str, Any]]) -> None:
        wanted: set[str] = set()
        for record in records:
            facts = self._session_of(record)[0]
            if facts is not None:
                wanted.add(facts.grant_id)
        listed = sorted(wanted)
        for start in range(0, len(listed), CHUNK):
            for grant_id, status, expires_at, ended_at in session.execute(
                select(Grant.id, Grant.status, Grant.expires_at, Grant.ended_at).where(
                    Grant.id.in_(listed[start : start + CHUNK])
                )
            ):
                self.grants[grant_id] = GrantState(status, expires_at, ended_at)

    # -- attributing -----------------------------------------------------------------------------

    def _session_of(self, record: Mapping[str, Any]) -> tuple[SessionFacts | None, str]:
        identity = _identity(record)
        key = identity.get("accessKeyId")
        if isinstance(key, str):
            found = self.by_key.get(key)
            if found is not None:
                return found, "access_key"
        issued = _issued_key(record)
        if issued is not None:
            found = self.by_key.get(issued)
            if found is not None:
                return found, "assume_role"
        name = _session_name(identity)
        if name is not None:
            found = self.by_name.get(name)
            if found is not None:
                return found, "session_name"
        return None, ""

    def attribute(self, record: Mapping[str, Any]) -> Attribution | None:
        """The record's person, grant and session, or None when it is not the broker's."""
        facts, how = self._session_of(record)
        person: PersonFacts | None
        if facts is not None:
            person = facts.person
        else:
            source = _source_identity(record, _identity(record))
            person = self.people.get(source) if source is not None else None
            if person is None:
                return None
            how = "source_identity"
        when = event_time(record)
        state = self.grants.get(facts.grant_id) if facts is not None else None
        # The AssumeRole that made a session is never "after" its own grant.
        after = state is not None and how != "assume_role" and state.over_at(when)
        return Attribution(
            person=person,
            session=facts,
            matched_by=how,
            action=action_of(record),
            event_time=when,
            after_grant_end=after,
            grant_ended_at=state.ended_at if state is not None else None,
        )


def activity_row(
    record: Mapping[str, Any],
    attribution: Attribution,
    *,
    file_id: int | None,
    keep_record: bool,
) -> dict[str, Any]:
    """The compact row stored for an attributed record (whole record only when asked)."""
    identity = _identity(record)
    session = attribution.session
    return {
        "event_id": str(record["eventID"])[:64],
        "event_time": attribution.event_time,
        "action": attribution.action[:160],
        "aws_region": _text(record.get("awsRegion"), 32),
        "account_id": _text(record.get("recipientAccountId"), 12),
        "source_ip": _text(record.get("sourceIPAddress"), 64),
        "user_agent": _text(record.get("userAgent"), 256),
        "error_code": _text(record.get("errorCode"), 128),
        # The session's key: for the AssumeRole that made it, not the broker's own caller key.
        "access_key_id": session.access_key_id
        if session
        else _text(identity.get("accessKeyId"), 128),
        "matched_by": attribution.matched_by,
        "principal_id": attribution.person.principal_id,
        "grant_id": session.grant_id if session else None,
        "session_id": session.session_id if session else None,
        "entitlement_id": session.entitlement_id if session else None,
        "role_arn": session.role_arn if session else None,
        "after_grant_end": attribution.after_grant_end,
        "resources": resources_of(record),
        "summary": summary_of(record),
        "file_id": file_id,
        "record": redact(record) if keep_record else None,
    }


def resources_of(record: Mapping[str, Any]) -> list[str]:
    """The ARNs a record names in ``resources`` (at most 20)."""
    found = record.get("resources")
    if not isinstance(found, list):
        return []
    arns = [r["ARN"] for r in found if isinstance(r, dict) and isinstance(r.get("ARN"), str)]
    return arns[:20]


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A few request parameters people ask about (instance type, user name, role ARN...)."""
    params = record.get("requestParameters")
    if not isinstance(params, dict):
        return {}
    out: dict[str, Any] = {}
    for name in SUMMARY_KEYS:
        value = params.get(name)
        if isinstance(value, str):
            out[name] = value[:256]
        elif isinstance(value, bool | int):
            out[name] = value
    return out


def redact(value: Any) -> Any:
    """A copy of a record without anything secret-looking (session tokens, passwords)."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def attribute_all(
    attributor: Attributor, records: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Attribution]]:
    """Every record of a loaded batch that belongs to the broker, with its attribution."""
    out = []
    for record in records:
        found = attributor.attribute(record)
        if found is not None:
            out.append((record, found))
    return out
