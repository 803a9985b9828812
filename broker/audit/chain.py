"""The append-only, hash-chained audit trail.

Each event stores `hash = SHA-256(prev_hash || canonical_json(event))`. Appends lock the single
chain-head row (PostgreSQL `SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` write lock), so
the chain stays linear with any number of processes writing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from broker.audit.body import (
    CHAINED_FIELDS,
    GENESIS,
    body_text,
    format_ts,
    hash_body,
    row_body_text,
    stored_ts_text,
    ts_text,
)
from broker.audit.rows import bodies, stored_details, stored_row
from broker.canonical import canonical_json
from broker.errors import AuditUnavailable
from broker.models import AuditCheckpoint, AuditEvent, AuditHead, utcnow

__all__ = [
    "CHAINED_FIELDS",
    "GENESIS",
    "HEAD_ID",
    "AuditLog",
    "Break",
    "EventContext",
    "NewEvent",
    "VerifyResult",
    "chain_hash",
    "event_body",
    "format_ts",
    "verify_database",
    "verify_events",
]

HEAD_ID = 1
# Defence in depth: a detail key that looks like a secret is refused outright.
_SECRET_KEY = re.compile(r"secret|session_?token|password|private_?key", re.IGNORECASE)


@dataclass(frozen=True)
class EventContext:
    """Who asked and from where: copied onto every event of one request."""

    actor: str = "system"
    ip: str | None = None
    user_agent: str | None = None
    client: str | None = None
    policy_version: str | None = None


@dataclass(frozen=True)
class NewEvent:
    """What a caller wants recorded; the chain adds seq, time and hashes."""

    action: str
    target: str | None = None
    decision: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def event_body(event: AuditEvent) -> dict[str, Any]:
    """The chained fields of an event, as they are hashed and exported."""
    body: dict[str, Any] = {name: getattr(event, name) for name in CHAINED_FIELDS}
    body["ts"] = format_ts(event.ts)
    body["details"] = dict(event.details or {})
    return body


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical event body."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(body).encode("utf-8"))
    return digest.hexdigest()


def _check_details(details: Mapping[str, Any]) -> str:
    """The details as canonical JSON text, after refusing secret-looking keys and floats."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if _SECRET_KEY.search(str(key)):
                    raise ValueError(f"audit detail {path}{key!r} looks like a secret; refused")
                walk(inner, f"{path}{key}.")
        elif isinstance(value, list | tuple):
            for inner in value:
                walk(inner, path)
        elif isinstance(value, float):
            raise ValueError(f"audit detail {path} is a float; use int or str for stable hashing")

    walk(details, "")
    return canonical_json(details)


class AuditLog:
    """Appends events to the chain inside the caller's transaction."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock

    def append(self, session: Session, context: EventContext, event: NewEvent) -> AuditEvent:
        """Lock the head, link a new event after it, and move the head. The caller commits.

        Everything that does not need the head (checking and serializing the details) happens
        before the head is locked; the body is hashed from its text (:mod:`.body`), which is
        what ``canonical_json`` of the chained fields would give.
        """
        details = _check_details(event.details)
        ts = self.clock()
        user_agent = (context.user_agent or None) and context.user_agent[:512]
        head = _locked_head(session)
        seq = head.seq + 1
        body = body_text(
            seq,
            ts_text(ts),
            context.actor,
            event.action,
            event.target,
            event.decision,
            event.reason,
            context.ip,
            user_agent,
            context.client,
            context.policy_version,
            details,
        )
        row = AuditEvent(
            seq=seq,
            ts=ts,
            actor=context.actor,
            action=event.action,
            target=event.target,
            decision=event.decision,
            reason=event.reason,
            ip=context.ip,
            user_agent=user_agent,
            client=context.client,
            policy_version=context.policy_version,
            details=json.loads(details),
            prev_hash=head.hash,
            hash=hash_body(head.hash, body),
        )
        session.add(row)
        head.seq = seq
        head.hash = row.hash
        return row

    def append_many(
        self, session: Session, context: EventContext, events: Sequence[NewEvent]
    ) -> None:
        """Append ``events`` in order, as :meth:`append` would one by one, with the head read
        once and the rows inserted in one bulk statement (a batch of expiries)."""
        if not events:
            return
        prepared = [(_check_details(event.details), event) for event in events]
        user_agent = (context.user_agent or None) and context.user_agent[:512]
        head = _locked_head(session)
        seq, prev = head.seq, head.hash
        rows: list[dict[str, Any]] = []
        for details, event in prepared:
            seq += 1
            ts = self.clock()
            body = body_text(
                seq,
                ts_text(ts),
                context.actor,
                event.action,
                event.target,
                event.decision,
                event.reason,
                context.ip,
                user_agent,
                context.client,
                context.policy_version,
                details,
            )
            hash_ = hash_body(prev, body)
            rows.append(
                {
                    "seq": seq,
                    "ts": ts,
                    "actor": context.actor,
                    "action": event.action,
                    "target": event.target,
                    "decision": event.decision,
                    "reason": event.reason,
                    "ip": context.ip,
                    "user_agent": user_agent,
                    "client": context.client,
                    "policy_version": context.policy_version,
                    # The engine stores it with canonical_json: the very text just hashed.
                    "details": dict(event.details),
                    "prev_hash": prev,
                    "hash": hash_,
                }
            )
            prev = hash_
        # Core, not the ORM's bulk path: no per-row bookkeeping for rows nobody reads back.
        session.execute(insert(cast(Table, AuditEvent.__table__)), rows)
        head.seq = seq
        head.hash = prev


_HEAD_KEY = "broker.audit.head"
# Built once: every append in every transaction runs it.
_HEAD_FOR_UPDATE = select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()


def _locked_head(session: Session) -> AuditHead:
    """The chain head, locked for this transaction (fetched once per transaction).

    Once locked, the head stays ours until commit or rollback, so later appends in the same
    transaction reuse it instead of asking the database again (a batch of expiries appends
    hundreds of events in one transaction).
    """
    transaction = session.get_transaction()
    cached = session.info.get(_HEAD_KEY)
    if cached is not None and transaction is not None and cached[0] is transaction:
        head: AuditHead = cached[1]
        return head
    found = session.execute(_HEAD_FOR_UPDATE).scalar_one_or_none()
    if found is None:
        raise AuditUnavailable(
            "The audit chain head is missing, so nothing can be recorded.",
            hint="Run `broker db upgrade`.",
        )
    session.info[_HEAD_KEY] = (transaction, found)
    return found


@dataclass(frozen=True)
class Break:
    """Where and why the chain stops verifying."""

    seq: int
    problem: str

    def __str__(self) -> str:
        return f"audit chain broken at event {self.seq}: {self.problem}"


@dataclass
class VerifyResult:
    """Outcome of a chain verification."""

    checked: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    broken: Break | None = None
    checkpoints: int = 0
    """Signed checkpoints whose (seq, hash) match the chain."""
    signatures: int = 0
    """Of those, how many signatures were verified with a public key."""

    @property
    def ok(self) -> bool:
        """True when every event links and hashes correctly."""
        return self.broken is None


def verify_events(events: Iterator[AuditEvent] | list[AuditEvent]) -> VerifyResult:
    """Check sequence continuity, links and hashes; stop at the first break."""
    result = VerifyResult()
    expected_seq = 1
    prev = GENESIS
    for event in events:
        if event.seq != expected_seq:
            result.broken = Break(
                event.seq, f"expected event {expected_seq} here (missing or reordered events)"
            )
            return result
        if event.prev_hash != prev:
            result.broken = Break(event.seq, "does not link to the previous event")
            return result
        if chain_hash(prev, event_body(event)) != event.hash:
            result.broken = Break(event.seq, "content does not match its hash (edited)")
            return result
        prev = event.hash
        expected_seq += 1
        result.checked += 1
        result.last_seq = event.seq
        result.last_hash = event.hash
    return result


def verify_database(
    session: Session, *, check_signature: Callable[[AuditCheckpoint], str | None] | None = None
) -> VerifyResult:
    """Verify the whole chain in the database, streaming; compare with the head and with every
    signed checkpoint (and, given `check_signature`, its signature: it returns a problem or
    None). Run it in one snapshot (`Database.snapshot_session`) so concurrent appends cannot
    look like tampering.

    Each body is hashed from the stored columns' text (:mod:`.rows`, :mod:`.body`): details
    as stored, never parsed and serialized again. Details stored in another JSON form than
    the canonical one are judged by their content, as an export re-encoded by another tool is.
    """
    head = session.get(AuditHead, HEAD_ID)
    result = _verify_stored(session)
    if not result.ok:
        return result
    if head is not None and (head.seq, head.hash) != (result.last_seq, result.last_hash):
        result.broken = Break(
            result.last_seq + 1,
            f"chain head says event {head.seq} but the trail ends at {result.last_seq} "
            "(events deleted from the end)",
        )
        return result
    _verify_checkpoints(session, result, check_signature)
    return result


def _verify_stored(session: Session) -> VerifyResult:
    """`verify_events` over the stored rows, hashing their body text
    (:func:`broker.audit.rows.bodies`); a body that does not hash is rebuilt from its columns
    in Python before the event is called edited."""
    result = VerifyResult()
    expected_seq = 1
    prev = GENESIS
    sha256 = hashlib.sha256
    _, rows = bodies(session)
    for seq, prev_hash, hash_, body in rows:
        problem = None
        if seq != expected_seq:
            problem = f"expected event {expected_seq} here (missing or reordered events)"
        elif prev_hash != prev:
            problem = "does not link to the previous event"
        else:
            digest = sha256(prev.encode("ascii"))
            digest.update(body.encode("utf-8"))
            if digest.hexdigest() != hash_ and not _hashes_when_rebuilt(session, seq, prev):
                problem = "content does not match its hash (edited)"
        if problem is not None:
            result.broken = Break(seq, problem)
            break
        prev = hash_
        expected_seq += 1
    result.checked = expected_seq - 1
    result.last_seq = expected_seq - 1
    result.last_hash = prev
    return result


def _hashes_when_rebuilt(session: Session, seq: int, prev: str) -> bool:
    """Whether event ``seq`` hashes right with its body written in Python from its columns,
    or, failing that, with its details in canonical form (another tool may have re-encoded
    them: the content is what counts)."""
    row = stored_row(session, seq)
    if row is None:
        return False
    details = stored_details(row[11])
    if hash_body(prev, row_body_text(row, details, stored_ts_text(row[1]))) == row[13]:
        return True
    return _same_when_canonical(prev, row, details)


def _same_when_canonical(prev: str, row: Sequence[Any], details: str) -> bool:
    """Whether the row hashes right once its details are written canonically."""
    try:
        canonical = canonical_json(json.loads(details))
    except ValueError:
        return False
    if canonical == details:
        return False
    body = row_body_text(row, canonical, stored_ts_text(row[1]))
    return bool(hash_body(prev, body) == row[13])


def _verify_checkpoints(
    session: Session,
    result: VerifyResult,
    check_signature: Callable[[AuditCheckpoint], str | None] | None,
) -> None:
    """Every checkpoint must name an event of the chain with exactly that hash (one signed
    beyond the end means events were cut off and the head rewritten)."""
    checkpoints = session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
    ).all()
    hashes: dict[int, str] = {
        seq: hash_
        for seq, hash_ in session.execute(
            select(AuditEvent.seq, AuditEvent.hash).where(
                AuditEvent.seq.in_({c.seq for c in checkpoints})
            )
        )
    }
    for checkpoint in checkpoints:
        if hashes.get(checkpoint.seq) != checkpoint.hash:
            result.broken = Break(
                checkpoint.seq,
                f"differs from the checkpoint signed at {format_ts(checkpoint.signed_at)} "
                "(the trail was rewritten after it was signed)",
            )
            return
        if check_signature is not None:
            problem = check_signature(checkpoint)
            if problem is not None:
                result.broken = Break(checkpoint.seq, f"checkpoint {problem}")
                return
            result.signatures += 1
        result.checkpoints += 1
