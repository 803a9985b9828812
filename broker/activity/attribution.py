"""Joining CloudTrail records to the broker's sessions, grants and people.

A record belongs to the broker when it was made with the access key of a session the broker
issued, when it is the broker's own ``AssumeRole`` that made such a session (the key is in its
response), when its role session name is one the broker chose, or, failing those, when its
``sourceIdentity`` is a person's (a session chained from a broker session keeps it).

The :class:`Attributor` is built for volume: :meth:`Attributor.attribute_batch` fetches, for a
whole batch of records, every session, grant state and person not yet known in a few ``IN``
queries; the rest is dictionary lookups. Sessions never change once recorded, so they stay
cached; a grant's state is read again when it is older than ``grant_ttl`` (5 s: a grant may end
at any time, and files arrive minutes after the calls they record) or was forgotten (a pass
starts, a response ended grants); keys that are not the broker's are remembered until
:meth:`Attributor.forget_misses`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.activity.cloudtrail import action_of, event_time
from broker.models import Grant, IssuedSession, Principal

SESSION_NAME_PREFIX = "broker-"
CHUNK = 500
MAX_CACHED = 200_000
GRANT_TTL_SECONDS = 5.0
"""How long a grant's state read from the database is used before it is read again."""


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


def issued_key(record: Mapping[str, Any]) -> str | None:
    """The access key an ``AssumeRole`` record's response hands out."""
    if record.get("eventName") != "AssumeRole":
        return None
    response = record.get("responseElements")
    credentials = response.get("credentials") if isinstance(response, dict) else None
    key = credentials.get("accessKeyId") if isinstance(credentials, dict) else None
    return key if isinstance(key, str) else None


def _maybe_broker_key(key: object) -> bool:
    """STS session keys start ASIA; long-lived IAM user keys (AKIA) are never the broker's."""
    return isinstance(key, str) and key.startswith("ASIA")


_Hints = tuple[str | None, str | None, str | None, str | None]
"""What in one record could tie it to the broker: (access key, key its AssumeRole issued,
broker session name, source identity)."""
_NO_HINTS: _Hints = (None, None, None, None)


def _hints(record: Mapping[str, Any], known: Mapping[str, SessionFacts]) -> _Hints:
    """Read a record's hints once; the session name only when its key is not a known one."""
    identity = cast(dict[str, Any], record.get("userIdentity"))
    if identity.__class__ is not dict:
        return _NO_HINTS
    key = identity.get("accessKeyId")
    if key.__class__ is not str:
        key = None
    context = identity.get("sessionContext")
    source = context.get("sourceIdentity") if context.__class__ is dict else None
    if source.__class__ is not str or not source:
        source = None
    name = None
    if key not in known:
        arn = identity.get("arn")
        if arn.__class__ is str and ":assumed-role/" in arn:
            last = arn.rsplit("/", 1)[-1]
            if last.startswith(SESSION_NAME_PREFIX):
                name = last
    issued = issued_key(record) if record.get("eventName") == "AssumeRole" else None
    return (key, issued, name, source)


class Attributor:
    """Attributes records to sessions, grants and people (see the module docstring)."""

    def __init__(
        self,
        *,
        max_cached: int = MAX_CACHED,
        grant_ttl: float = GRANT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_cached = max_cached
        self.grant_ttl = grant_ttl
        self.monotonic = monotonic
        self._grants_read_at: dict[str, float] = {}
        self.by_key: dict[str, SessionFacts] = {}
        self.by_name: dict[str, SessionFacts] = {}
        self.people: dict[str, PersonFacts] = {}  # source identity -> person
        self.grants: dict[str, GrantState] = {}
        self._missed_keys: set[str] = set()
        self._missed_names: set[str] = set()
        self._missed_identities: set[str] = set()

    def forget_misses(self) -> None:
        """Look again for keys, names and identities that were not the broker's before, and
        read every grant's state afresh."""
        self._missed_keys.clear()
        self._missed_names.clear()
        self._missed_identities.clear()
        self.forget_grants()

    def forget_grants(self, grant_ids: Iterable[str] | None = None) -> None:
        """Read these grants' states (default: all) again before the next batch uses them."""
        if grant_ids is None:
            self._grants_read_at.clear()
        else:
            for grant_id in grant_ids:
                self._grants_read_at.pop(grant_id, None)

    def attribute_batch(
        self, session: Session, records: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Mapping[str, Any], Attribution]]:
        """Every record of the batch that belongs to the broker, with its attribution.

        Fetches first what the batch needs and is not known yet (sessions, people) and the
        current state of every grant it touches, in a few queries.
        """
        by_key, by_name, people = self.by_key, self.by_name, self.people
        hints = [_hints(r, by_key) for r in records]
        self._fetch(session, hints)
        found: list[tuple[Mapping[str, Any], SessionFacts | None, PersonFacts, str]] = []
        grant_ids: set[str] = set()
        for record, (key, issued, name, source) in zip(records, hints, strict=True):
            facts = by_key.get(key) if key is not None else None
            how = "access_key"
            if facts is None and issued is not None:
                facts, how = by_key.get(issued), "assume_role"
            if facts is None and name is not None:
                facts, how = by_name.get(name), "session_name"
            if facts is not None:
                found.append((record, facts, facts.person, how))
                grant_ids.add(facts.grant_id)
            elif source is not None and (person := people.get(source)) is not None:
                found.append((record, None, person, "source_identity"))
        self._fetch_grants(session, grant_ids)
        return [
            (record, self._attribution(record, facts, person, how))
            for record, facts, person, how in found
        ]

    def _attribution(
        self,
        record: Mapping[str, Any],
        facts: SessionFacts | None,
        person: PersonFacts,
        how: str,
    ) -> Attribution:
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

    # -- fetching ----------------------------------------------------------------------------

    def _fetch(self, session: Session, hints: Iterable[_Hints]) -> None:
        keys: set[str] = set()
        names: set[str] = set()
        identities: set[str] = set()
        by_key, by_name, people = self.by_key, self.by_name, self.people
        for key, issued, name, source in hints:
            if key is not None and key not in by_key and _maybe_broker_key(key):
                keys.add(key)
            if issued is not None and issued not in by_key:
                keys.add(issued)
            if name is not None and name not in by_name:
                names.add(name)
            if source is not None and source not in people:
                identities.add(source)
        if len(by_key) > self.max_cached:
            by_key.clear()
            by_name.clear()
            self.grants.clear()
            self._grants_read_at.clear()
        keys -= self._missed_keys
        names -= self._missed_names
        identities -= self._missed_identities
        if keys or names:
            self._load_sessions(session, keys, names)
        if identities:
            self._load_people(session, identities)

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

    def _fetch_grants(self, session: Session, grant_ids: set[str]) -> None:
        """Read the grants' states not read in the last ``grant_ttl`` seconds (a grant may end
        at any time; files arrive minutes after the calls they record)."""
        now = self.monotonic()
        read_at = self._grants_read_at
        listed = sorted(g for g in grant_ids if now - read_at.get(g, -1e18) > self.grant_ttl)
        for start in range(0, len(listed), CHUNK):
            for grant_id, status, expires_at, ended_at in session.execute(
                select(Grant.id, Grant.status, Grant.expires_at, Grant.ended_at).where(
                    Grant.id.in_(listed[start : start + CHUNK])
                )
            ):
                self.grants[grant_id] = GrantState(status, expires_at, ended_at)
            read_at.update(dict.fromkeys(listed[start : start + CHUNK], now))
