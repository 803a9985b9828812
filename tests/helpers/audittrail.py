"""Build a realistic audit trail quickly, sign checkpoints, and export it, for audit tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import AuditLog, EventContext, NewEvent
from broker.audit.checkpoints import sign_head
from broker.audit.export import ExportFilter, Format, export
from broker.db import Database

START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
PEOPLE = ("alice@example.com", "bob@example.com", "cora@contractor.example")


class StepClock:
    """A clock that moves one minute per reading."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def sample_events(i: int) -> Iterator[tuple[EventContext, NewEvent]]:
    """A few events of the kinds the broker writes, for person number `i`."""
    who = PEOPLE[i % len(PEOPLE)]
    ctx = EventContext(actor=who, ip="10.0.0.7", user_agent="broker-cli/1 ünïcode", client="cli")
    yield ctx, NewEvent("auth.sign_in", target=who, decision="allow")
    yield (
        ctx,
        NewEvent(
            "grant.request",
            target="app-read",
            decision="allow",
            reason="=deploy fix #" + str(i),
            details={"grant_id": f"g{i:031d}", "request_reason": "on call, “urgent”"},
        ),
    )
    yield (
        ctx,
        NewEvent(
            "credentials.issued",
            target=f"arn:aws:sts::123456789012:assumed-role/read/{who.split('@')[0]}-{i}",
            decision="allow",
            details={
                "entitlement": "app-read",
                "grant_id": f"g{i:031d}",
                "session_id": f"s{i:031d}",
                "access_key_id": f"ASIA{i:016d}",
                "role_session_name": f"{who.split('@')[0]}-{i}",
                "source_identity": who,
                "expires_at": "2024-05-01T10:00:00+00:00",
            },
        ),
    )
    yield (
        EventContext(actor="system", client="scheduler"),
        NewEvent(
            "grant.expired",
            target="app-read",
            decision="end",
            details={"grant_id": f"g{i:031d}", "person": who, "revocations": []},
        ),
    )


def seed(
    database: Database,
    rounds: int,
    *,
    key: Ed25519PrivateKey | None = None,
    sign_every: int = 0,
    clock: StepClock | None = None,
) -> StepClock:
    """Append `rounds` × 4 events; sign the head after every `sign_every` rounds."""
    clock = clock or StepClock()
    log = AuditLog(clock)
    for i in range(rounds):
        with database.session() as session:
            for ctx, event in sample_events(i):
                log.append(session, ctx, event)
        if key is not None and sign_every and (i + 1) % sign_every == 0:
            with database.session() as session:
                sign_head(session, key, clock=clock)
    return clock


def export_text(database: Database, fmt: Format, flt: ExportFilter | None = None) -> str:
    """The whole export as one string."""
    with database.snapshot_session() as session:
        return "".join(export(session, fmt, flt, now=START))


def write_export(database: Database, path: Path, flt: ExportFilter | None = None) -> Path:
    """Write a JSON Lines export to `path`."""
    path.write_text(export_text(database, "jsonl", flt), encoding="utf-8")
    return path
