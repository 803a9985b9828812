"""The append-only, hash-chained audit trail.

Each event stores `hash = SHA-256(prev_hash || canonical_json(event))`. Appends lock the single
chain-head row (PostgreSQL `SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` write lock), so
the chain stays linear with any number of processes writing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.canonical import canonical_json
from broker.errors import AuditUnavailable
from broker.models import AuditCheckpoint, AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64
HEAD_ID = 1
CHAINED_FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "target",
    "decision",
    "reason",
    "ip",
    "user_agent",
    "client",
    "policy_version",
    "details",
)
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


def format_ts(ts: datetime) -> str:
    """The canonical text form of an event time: UTC, microseconds, `Z`."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def _check_details(details: Mapping[str, Any]) -> dict[str, Any]:
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
    result: dict[str, Any] = json.loads(canonical_json(details))
    return result


class AuditLog:
    """Appends events to the chain inside the caller's transaction."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock

    def append(self, session: Session, context: EventContext, event: NewEvent) -> AuditEvent:
        """Lock the head, link a new event after it, and move the head. The caller commits."""
        head = _locked_head(session)
        row = AuditEvent(
            seq=head.seq + 1,
            ts=self.clock(),
            actor=context.actor,
            action=event.action,
            target=event.target,
            decision=event.decision,
            reason=event.reason,
            ip=context.ip,
            user_agent=(context.user_agent or None) and context.user_agent[:512],
            client=context.client,
            policy_version=context.policy_version,
            details=_check_details(event.details),
            prev_hash=head.hash,
            hash="",
        )
        row.hash = chain_hash(head.hash, event_body(row))
        session.add(row)
        head.seq = row.seq
        head.hash = row.hash
        return row


_HEAD_KEY = "broker.audit.head"


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
    found = session.execute(
        select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()
    ).scalar_one_or_none()
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
    look like tampering."""
    head = session.get(AuditHead, HEAD_ID)
    rows = session.execute(
        select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000)
    )
    result = verify_events(row for (row,) in rows)
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
